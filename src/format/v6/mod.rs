//! RAFS v6 bootstrap layouts: an EROFS image whose regular files are chunk-based and whose
//! chunks live in blobs addressed as extra devices.
//!
//! File order, as upstream writes it: block 0 holds the superblock (byte 1024), its RAFS
//! extension (1152) and the device table (1408); the blob table starts at the next block,
//! the prefetch table (if any) right after it; inodes start one block past
//! `meta_blkaddr`, after those; the chunk info table comes last.

pub mod inode;
pub mod prefetch;
pub mod super_block;
pub mod tables;

/// log2 of the EROFS block size.
pub const BLOCK_BITS: u32 = 12;
/// EROFS block size: 4 KiB.
pub const BLOCK_SIZE: u64 = 1 << BLOCK_BITS;

/// An inode's number: where its 32-byte slot lies, counted in slots from the start of the
/// metadata area (`meta_blkaddr`). EROFS calls it the nid; FUSE and `stat` show it as
/// the inode number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Nid(pub u64);

impl std::fmt::Display for Nid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A blob's position in the bootstrap's blob table (not its id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobIndex(pub u32);

/// A chunk's position in its blob's chunk table (not its place in a file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkIndex(pub u32);

/// Reads a 64-byte blob id field: ASCII hex, possibly NUL padded for shorter ids.
pub(crate) fn blob_id_from_bytes(raw: &[u8; 64]) -> Option<String> {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(64);
    let id = &raw[..len];
    if id.is_empty() || raw[len..].iter().any(|&b| b != 0) || !id.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    String::from_utf8(id.to_vec()).ok()
}
