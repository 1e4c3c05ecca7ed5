//! Where blob data comes from, and the codecs applied to it.

pub mod backend;
pub mod blobs;
pub mod cache;
pub mod compress;
pub mod remote;
