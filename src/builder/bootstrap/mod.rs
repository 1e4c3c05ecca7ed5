//! Bootstrap writers, one per format version.

pub mod v6;
