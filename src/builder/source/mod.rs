//! Sources: what a build reads its tree from. Each produces the same
//! [`Tree`](crate::builder::tree::Tree) the later stages consume.
//!
//! - [`dir`]: an unpacked directory (a layer, or a whole root file system);
//! - [`stargz`]: an eStargz layer's table of contents, whose data stays in the layer.

pub mod dir;
pub mod stargz;
