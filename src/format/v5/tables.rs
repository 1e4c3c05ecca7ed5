//! The RAFS v5 tables between the superblock and the inode records: the inode table
//! (u32 offsets / 8), the prefetch table (u32 inode numbers), the blob table (ids with
//! readahead ranges) and the extended blob table (64 bytes per blob). Each is padded to
//! 8 bytes.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::super_block::{EXT_BLOB_ENTRY_SIZE, SIZE as SUPER_SIZE};
use super::{align, ALIGNMENT};
use crate::format::FormatError;

/// Extended blob table entry, 64 bytes (upstream `RafsV5ExtBlobEntry`).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ExtBlobEntryRaw {
    /// Chunks in the blob.
    pub chunk_count: U32,
    /// Blob feature bits (as v6's `blob_features`).
    pub features: U32,
    /// Bytes of uncompressed chunk data.
    pub uncompressed_size: U64,
    /// Bytes of compressed chunk data.
    pub compressed_size: U64,
    /// Zero.
    pub reserved: [u8; 40],
}

const _: () = {
    assert!(size_of::<ExtBlobEntryRaw>() == EXT_BLOB_ENTRY_SIZE as usize);
    assert!(std::mem::offset_of!(ExtBlobEntryRaw, compressed_size) == 16);
};

/// A blob as the v5 tables describe it (the blob table entry joined with its extended
/// entry, when the image has an extended table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blob {
    /// Blob id.
    pub blob_id: String,
    /// Readahead (prefetch) range: offset and size in the blob.
    pub readahead_offset: u32,
    /// Bytes of readahead.
    pub readahead_size: u32,
    /// Chunks in the blob.
    pub chunk_count: u32,
    /// Feature bits.
    pub features: u32,
    /// Uncompressed data size.
    pub uncompressed_size: u64,
    /// Compressed data size.
    pub compressed_size: u64,
}

/// Byte size of the blob table of `blobs`: per blob 8 bytes and the id, a NUL between
/// entries, padded to 8; empty for no blobs.
pub fn blob_table_size(blobs: &[Blob]) -> u64 {
    if blobs.is_empty() {
        return 0;
    }
    let bytes: u64 = blobs.iter().map(|b| 8 + b.blob_id.len() as u64 + 1).sum();
    align(bytes - 1)
}

/// Appends the blob table.
pub fn encode_blob_table(blobs: &[Blob], out: &mut Vec<u8>) {
    let start = out.len();
    for (i, b) in blobs.iter().enumerate() {
        out.extend_from_slice(&b.readahead_offset.to_le_bytes());
        out.extend_from_slice(&b.readahead_size.to_le_bytes());
        out.extend_from_slice(b.blob_id.as_bytes());
        if i + 1 < blobs.len() {
            out.push(0);
        }
    }
    out.resize(start + blob_table_size(blobs) as usize, 0);
}

/// Appends the extended blob table.
pub fn encode_ext_blob_table(blobs: &[Blob], out: &mut Vec<u8>) {
    for b in blobs {
        let raw = ExtBlobEntryRaw {
            chunk_count: b.chunk_count.into(),
            features: b.features.into(),
            uncompressed_size: b.uncompressed_size.into(),
            compressed_size: b.compressed_size.into(),
            reserved: [0; 40],
        };
        out.extend_from_slice(raw.as_bytes());
    }
}

/// Decodes the blob table `bytes` (at `offset`) with its extended table `ext` (at
/// `ext_offset`, empty for an image without one). Ids are read as upstream reads them:
/// up to a NUL or the table's end, while more than 8 bytes remain.
pub fn decode_blobs(
    bytes: &[u8],
    offset: u64,
    ext: &[u8],
    ext_offset: u64,
) -> Result<Vec<Blob>, FormatError> {
    let mut blobs = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at > 8 {
        let entry_at = offset + at as u64;
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let (readahead_offset, readahead_size) = (word(at), word(at + 4));
        let id = &bytes[at + 8..];
        let len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
        let id = &id[..len];
        if id.is_empty() || !id.iter().all(u8::is_ascii_graphic) || id.contains(&b'/') {
            return Err(FormatError::Invalid {
                offset: entry_at + 8,
                what: format!(
                    "blob table entry {}: blob id {:?} is not printable ASCII",
                    blobs.len(),
                    String::from_utf8_lossy(id)
                ),
            });
        }
        blobs.push(Blob {
            blob_id: String::from_utf8(id.to_vec()).expect("ASCII"),
            readahead_offset,
            readahead_size,
            ..Blob::default()
        });
        at = (at + 8 + len + 1).min(bytes.len());
    }
    if !ext.is_empty() {
        let count = ext.len() as u64 / EXT_BLOB_ENTRY_SIZE;
        if count < blobs.len() as u64 {
            return Err(FormatError::Invalid {
                offset: ext_offset,
                what: format!(
                    "extended blob table has {count} entries for {} blobs",
                    blobs.len()
                ),
            });
        }
        for (i, b) in blobs.iter_mut().enumerate() {
            let at = i * EXT_BLOB_ENTRY_SIZE as usize;
            let raw = ExtBlobEntryRaw::read_from_bytes(&ext[at..at + EXT_BLOB_ENTRY_SIZE as usize])
                .expect("sized slice");
            b.chunk_count = raw.chunk_count.get();
            b.features = raw.features.get();
            b.uncompressed_size = raw.uncompressed_size.get();
            b.compressed_size = raw.compressed_size.get();
        }
    }
    Ok(blobs)
}

/// Byte size of an inode table of `entries` entries (padded to 8).
pub fn inode_table_size(entries: u32) -> u64 {
    align(entries as u64 * 4)
}

/// Appends the inode table of record offsets (each a multiple of 8 past the superblock).
pub fn encode_inode_table(offsets: &[u64], out: &mut Vec<u8>) {
    let start = out.len();
    for &o in offsets {
        debug_assert!(o > SUPER_SIZE && o.is_multiple_of(ALIGNMENT) && o >> 3 <= u32::MAX as u64);
        out.extend_from_slice(&((o >> 3) as u32).to_le_bytes());
    }
    out.resize(start + inode_table_size(offsets.len() as u32) as usize, 0);
}

/// The byte offset of record `index` (1-based) from the inode table `table` (found at
/// `offset`, holding `entries` entries), checked to lie past the superblock.
pub fn inode_offset(
    table: &[u8],
    offset: u64,
    entries: u32,
    index: u64,
) -> Result<u64, FormatError> {
    if index == 0 || index > entries as u64 {
        return Err(FormatError::Invalid {
            offset,
            what: format!("inode {index} is not in the inode table of {entries} entries"),
        });
    }
    let at = (index - 1) as usize * 4;
    let raw = table
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or(FormatError::Truncated {
            offset: offset + at as u64,
            need: 4,
            have: table.len().saturating_sub(at) as u64,
            what: "inode table entry",
        })?;
    let record = (raw as u64) << 3;
    if record <= SUPER_SIZE {
        return Err(FormatError::Invalid {
            offset: offset + at as u64,
            what: format!("inode {index}: record offset 0x{record:x} lies in the superblock"),
        });
    }
    Ok(record)
}

/// Appends the prefetch table of inode numbers (padded to 8).
pub fn encode_prefetch_table(inodes: &[u32], out: &mut Vec<u8>) {
    let start = out.len();
    for i in inodes {
        out.extend_from_slice(&i.to_le_bytes());
    }
    out.resize(start + align(inodes.len() as u64 * 4) as usize, 0);
}

/// Decodes the prefetch table (`entries` inode numbers).
pub fn decode_prefetch_table(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> Vec<Blob> {
        vec![
            Blob {
                blob_id: "ab".repeat(32),
                readahead_offset: 0,
                readahead_size: 4096,
                chunk_count: 3,
                features: 0x4000_0000,
                uncompressed_size: 100,
                compressed_size: 90,
            },
            Blob {
                blob_id: "short".into(),
                chunk_count: 1,
                ..Blob::default()
            },
        ]
    }

    #[test]
    fn blob_tables_round_trip() {
        let b = blobs();
        let mut table = Vec::new();
        encode_blob_table(&b, &mut table);
        assert_eq!(table.len() as u64, blob_table_size(&b));
        assert_eq!(table.len(), (8 + 64 + 1 + 8 + 5usize).next_multiple_of(8));
        let mut ext = Vec::new();
        encode_ext_blob_table(&b, &mut ext);
        assert_eq!(ext.len(), 128);
        assert_eq!(decode_blobs(&table, 0, &ext, 0).unwrap(), b);
        // Without the extended table: ids and readahead only.
        let bare = decode_blobs(&table, 0, &[], 0).unwrap();
        assert_eq!(bare[1].blob_id, "short");
        assert_eq!(bare[0].chunk_count, 0);
        assert!(decode_blobs(&table, 0, &ext[..64], 0).is_err());
        let mut bad = table.clone();
        bad[8] = b'\n';
        assert!(decode_blobs(&bad, 0, &ext, 0).is_err());
    }

    #[test]
    fn inode_table_entries_are_checked() {
        let mut t = Vec::new();
        encode_inode_table(&[8200, 9000, 9008], &mut t);
        assert_eq!(t.len(), 16);
        t[8..12].copy_from_slice(&2u32.to_le_bytes()); // byte 16
        assert_eq!(inode_offset(&t, 8192, 3, 2).unwrap(), 9000);
        assert!(inode_offset(&t, 8192, 3, 0).is_err());
        assert!(inode_offset(&t, 8192, 3, 4).is_err());
        assert!(inode_offset(&t, 8192, 3, 3)
            .unwrap_err()
            .to_string()
            .contains("superblock"));
        assert!(inode_offset(&t[..6], 8192, 3, 2).is_err());
    }
}
