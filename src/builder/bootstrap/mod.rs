//! Bootstrap writers, one per format version.

pub mod v5;
pub mod v6;
