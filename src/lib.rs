//! `nydus-image` as a library: build RAFS v6 images from directories, and read them back.
//!
//! Data flows one way: [`builder::source`] reads a directory into a [`builder::tree`], the
//! [`builder::chunker`] cuts files into chunks that [`builder::blob`] stores once each,
//! and [`builder::bootstrap`] writes the metadata. [`reader`] opens what was written (or
//! what upstream wrote). Layouts live in [`format`]; codecs and blob access in
//! [`storage`].
#![deny(missing_docs)]

pub mod builder;
pub mod check;
pub mod format;
pub mod mount;
pub mod reader;
pub mod storage;
