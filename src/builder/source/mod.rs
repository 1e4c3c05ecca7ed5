//! Sources: what a build reads its tree from. Each produces the same
//! [`Tree`](crate::builder::tree::Tree) the later stages consume.
//!
//! - [`dir`]: an unpacked directory (a layer, or a whole root file system);
//! - [`stargz`]: an eStargz layer's table of contents, whose data stays in the layer;
//! - [`tar`]: a tar layer, plain or gzip-compressed (an eStargz layer read whole), read
//!   as a stream; its data is chunked as it is read.

pub mod dir;
pub mod stargz;
pub mod tar;
