//! `nydus-image` as a library: build RAFS v6 images, operate on them, and read them back.
//!
//! Data flows one way: a [`builder::source`] (a directory, an eStargz TOC) produces a
//! [`builder::tree`], the [`builder::chunker`] cuts its files into chunks that
//! [`builder::blob`] stores once each, and [`builder::bootstrap`] writes the metadata.
//! [`ops`] holds what works on whole images (check, merge, compact, verify); [`reader`]
//! opens what was written (or what upstream wrote), and [`mount`] serves it to FUSE and
//! the verifier; [`kernel`] mounts an image with the kernel's EROFS. Layouts live in [`format`]; codecs and blob access in [`storage`].
#![deny(missing_docs)]

pub mod access_log;
pub mod builder;
pub mod error;
pub mod format;
pub mod heap;
pub mod kernel;
pub mod mount;
pub mod ops;
pub mod reader;
pub mod storage;
