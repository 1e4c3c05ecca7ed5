//! RAFS v5 bootstrap layouts: nydus's own metadata format, older than v6 and still what
//! upstream 2.2.0 writes with `--fs-version 5` and what its `compact` always writes.
//!
//! File order, as upstream writes it (every part starts and ends on 8 bytes):
//!
//! ```text
//! 0      superblock (8192 bytes, mostly reserved)
//! 8192   inode table: one u32 per inode record, its byte offset / 8
//!        prefetch table: u32 inode numbers
//!        blob table: per blob two u32 (readahead offset, size) and its id, NUL between
//!        extended blob table: 64 bytes per blob (chunk count, features, sizes)
//!        inode records, in inode-table order, each followed by its tails:
//!          name, symlink target (each padded to 8), xattrs, chunk infos (80 each)
//! ```
//!
//! Unlike v6 there are no directory entries: a directory names the contiguous range of
//! inode-table indexes that are its children (sorted by name), and each child record
//! carries its own name. A hard link is a record of its own whose inode number is the
//! table index of the first name's record. Chunk infos use the same 80-byte layout as the
//! v6 chunk table ([`ChunkInfo`]), but each regular file carries its own, one per chunk.

pub mod inode;
pub mod super_block;
pub mod tables;

pub use crate::format::v6::tables::{ChunkInfo, CHUNK_INFO_SIZE};

/// Every v5 structure starts and ends on this many bytes.
pub const ALIGNMENT: u64 = 8;
/// Inode number (and inode-table index) of the root directory.
pub const ROOT_INO: u64 = 1;
/// Longest name a record may carry.
pub const NAME_MAX: usize = 255;

/// `size` rounded up to [`ALIGNMENT`].
pub const fn align(size: u64) -> u64 {
    (size + ALIGNMENT - 1) & !(ALIGNMENT - 1)
}

/// Whether `bytes` (the start of a bootstrap) carry the v5 magic and version.
pub fn is_v5(bytes: &[u8]) -> bool {
    bytes.len() >= 8
        && bytes[..4] == super_block::MAGIC.to_le_bytes()
        && bytes[4..8] == super_block::VERSION.to_le_bytes()
}
