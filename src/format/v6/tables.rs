//! The bootstrap's blob table (one 256-byte entry per blob) and chunk info table
//! (one 80-byte entry per distinct chunk), which follow the inodes.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::format::{Compressor, Digester, FormatError};

/// Size of a blob table entry.
pub const BLOB_ENTRY_SIZE: usize = 256;
/// Size of a chunk info entry.
pub const CHUNK_INFO_SIZE: usize = 80;

/// Blob table entry, 256 bytes (upstream `RafsV6Blob`).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlobEntryRaw {
    /// Blob id, 64 ASCII hex characters.
    pub blob_id: [u8; 64],
    /// Position in the blob table.
    pub blob_index: U32,
    /// Chunk size in bytes.
    pub chunk_size: U32,
    /// Chunks in the blob.
    pub chunk_count: U32,
    /// `Compressor` code of the chunk data.
    pub compression_algo: U32,
    /// `Digester` code of the chunk digests.
    pub digest_algo: U32,
    /// Blob feature bits (`blob_features`).
    pub features: U32,
    /// Bytes of compressed chunk data (end of the last chunk).
    pub compressed_size: U64,
    /// Bytes of uncompressed chunk data, each chunk 4 KiB aligned.
    pub uncompressed_size: U64,
    /// Size of the table of contents at the blob's end, with its tar header.
    pub blob_toc_size: U32,
    /// `Compressor` code of the chunk info array.
    pub ci_compressor: U32,
    /// Byte offset of the chunk info array in the blob.
    pub ci_offset: U64,
    /// Compressed size of the chunk info array.
    pub ci_compressed_size: U64,
    /// Uncompressed size of the chunk info array.
    pub ci_uncompressed_size: U64,
    /// sha256 of the table of contents, tar header included.
    pub blob_toc_digest: [u8; 32],
    /// sha256 of the blob's metadata part (used by ZRAN blobs; zero here).
    pub blob_meta_digest: [u8; 32],
    /// Size of the blob's metadata part (ZRAN; zero here).
    pub blob_meta_size: U64,
    /// Zero.
    pub reserved: [u8; 48],
}

/// Chunk info entry, 80 bytes (upstream `RafsV5ChunkInfo`, shared by v5 and v6).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ChunkInfoRaw {
    /// Digest of the uncompressed chunk.
    pub digest: [u8; 32],
    /// Blob table index.
    pub blob_index: U32,
    /// Bit 0: compressed.
    pub flags: U32,
    /// Bytes of the chunk in the blob.
    pub compressed_size: U32,
    /// Bytes of the chunk uncompressed.
    pub uncompressed_size: U32,
    /// Offset of the chunk in the blob.
    pub compressed_offset: U64,
    /// Offset of the chunk in the blob's uncompressed address space.
    pub uncompressed_offset: U64,
    /// Offset of the chunk in the first file that referenced it.
    pub file_offset: U64,
    /// Index of the chunk in its blob.
    pub index: U32,
    /// Zero.
    pub reserved: U32,
}

const _: () = {
    assert!(size_of::<BlobEntryRaw>() == BLOB_ENTRY_SIZE);
    assert!(std::mem::offset_of!(BlobEntryRaw, compressed_size) == 88);
    assert!(std::mem::offset_of!(BlobEntryRaw, blob_toc_size) == 104);
    assert!(std::mem::offset_of!(BlobEntryRaw, ci_offset) == 112);
    assert!(std::mem::offset_of!(BlobEntryRaw, blob_toc_digest) == 136);
    assert!(std::mem::offset_of!(BlobEntryRaw, blob_meta_size) == 200);
    assert!(size_of::<ChunkInfoRaw>() == CHUNK_INFO_SIZE);
    assert!(std::mem::offset_of!(ChunkInfoRaw, compressed_offset) == 48);
    assert!(std::mem::offset_of!(ChunkInfoRaw, index) == 72);
};

/// Blob feature bits (upstream `BlobFeatures`).
pub mod blob_features {
    /// Chunks sit at 4 KiB aligned uncompressed offsets. Required for v6.
    pub const ALIGNED: u32 = 0x1;
    /// The bootstrap is stored inside the blob.
    pub const INLINED_FS_META: u32 = 0x2;
    /// The chunk info array uses the 24-byte v2 entries.
    pub const CHUNK_INFO_V2: u32 = 0x4;
    /// Random access into gzip streams.
    pub const ZRAN: u32 = 0x8;
    /// Separate data and metadata blobs.
    pub const SEPARATE: u32 = 0x10;
    /// Chunk digests are stored in the blob.
    pub const INLINED_CHUNK_DIGEST: u32 = 0x20;
    /// Sections carry tar headers.
    pub const HAS_TAR_HEADER: u32 = 0x1000_0000;
    /// The blob ends with a table of contents.
    pub const HAS_TOC: u32 = 0x2000_0000;
    /// Reader capability bit: tar-framed TOC.
    pub const CAP_TAR_TOC: u32 = 0x4000_0000;
}

/// A blob as the bootstrap describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// Blob id (64 hex characters).
    pub blob_id: String,
    /// Chunk size.
    pub chunk_size: u32,
    /// Chunk count.
    pub chunk_count: u32,
    /// Chunk compressor.
    pub compressor: Compressor,
    /// Chunk digester.
    pub digester: Digester,
    /// Feature bits.
    pub features: u32,
    /// Compressed data size.
    pub compressed_size: u64,
    /// Uncompressed (aligned) data size.
    pub uncompressed_size: u64,
    /// TOC size, tar header included.
    pub toc_size: u32,
    /// Compressor of the chunk info array.
    pub ci_compressor: Compressor,
    /// Offset of the chunk info array.
    pub ci_offset: u64,
    /// Compressed size of the chunk info array.
    pub ci_compressed_size: u64,
    /// Uncompressed size of the chunk info array.
    pub ci_uncompressed_size: u64,
    /// sha256 of the TOC.
    pub toc_digest: [u8; 32],
}

impl BlobEntry {
    /// Encodes the entry at table position `index`.
    pub fn encode(&self, index: u32) -> [u8; BLOB_ENTRY_SIZE] {
        let mut id = [0u8; 64];
        let n = self.blob_id.len().min(64);
        id[..n].copy_from_slice(&self.blob_id.as_bytes()[..n]);
        let raw = BlobEntryRaw {
            blob_id: id,
            blob_index: index.into(),
            chunk_size: self.chunk_size.into(),
            chunk_count: self.chunk_count.into(),
            compression_algo: (self.compressor as u32).into(),
            digest_algo: (self.digester as u32).into(),
            features: self.features.into(),
            compressed_size: self.compressed_size.into(),
            uncompressed_size: self.uncompressed_size.into(),
            blob_toc_size: self.toc_size.into(),
            ci_compressor: (self.ci_compressor as u32).into(),
            ci_offset: self.ci_offset.into(),
            ci_compressed_size: self.ci_compressed_size.into(),
            ci_uncompressed_size: self.ci_uncompressed_size.into(),
            blob_toc_digest: self.toc_digest,
            blob_meta_digest: [0; 32],
            blob_meta_size: 0.into(),
            reserved: [0; 48],
        };
        let mut out = [0u8; BLOB_ENTRY_SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decodes and checks the entry expected at table position `index`, found at `offset`.
    pub fn decode(bytes: &[u8], index: u32, offset: u64) -> Result<Self, FormatError> {
        let raw = BlobEntryRaw::read_from_bytes(bytes).map_err(|_| FormatError::Truncated {
            offset,
            need: BLOB_ENTRY_SIZE as u64,
            have: bytes.len() as u64,
            what: "blob table entry",
        })?;
        let bad = |at: u64, what: String| FormatError::Invalid {
            offset: offset + at,
            what: format!("blob table entry {index}: {what}"),
        };
        let blob_id = super::blob_id_from_bytes(&raw.blob_id)
            .ok_or_else(|| bad(0, "blob id is not 64 hex characters".into()))?;
        if raw.blob_index.get() != index {
            return Err(bad(64, format!("records index {}", raw.blob_index.get())));
        }
        let compressor = Compressor::from_code(raw.compression_algo.get()).ok_or_else(|| {
            bad(
                76,
                format!("unknown compressor {}", raw.compression_algo.get()),
            )
        })?;
        let ci_compressor = Compressor::from_code(raw.ci_compressor.get()).ok_or_else(|| {
            bad(
                108,
                format!("unknown compressor {}", raw.ci_compressor.get()),
            )
        })?;
        let digester = Digester::from_code(raw.digest_algo.get())
            .ok_or_else(|| bad(80, format!("unknown digester {}", raw.digest_algo.get())))?;
        if raw.ci_compressed_size.get() > raw.ci_uncompressed_size.get() {
            return Err(bad(
                120,
                "compressed chunk info larger than uncompressed".into(),
            ));
        }
        Ok(BlobEntry {
            blob_id,
            chunk_size: raw.chunk_size.get(),
            chunk_count: raw.chunk_count.get(),
            compressor,
            digester,
            features: raw.features.get(),
            compressed_size: raw.compressed_size.get(),
            uncompressed_size: raw.uncompressed_size.get(),
            toc_size: raw.blob_toc_size.get(),
            ci_compressor,
            ci_offset: raw.ci_offset.get(),
            ci_compressed_size: raw.ci_compressed_size.get(),
            ci_uncompressed_size: raw.ci_uncompressed_size.get(),
            toc_digest: raw.blob_toc_digest,
        })
    }
}

/// One distinct chunk of file data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Digest of the uncompressed data.
    pub digest: [u8; 32],
    /// Blob table index.
    pub blob_index: u32,
    /// Stored compressed.
    pub compressed: bool,
    /// Size in the blob.
    pub compressed_size: u32,
    /// Size uncompressed.
    pub uncompressed_size: u32,
    /// Offset in the blob.
    pub compressed_offset: u64,
    /// Offset in the blob's uncompressed space (4 KiB aligned).
    pub uncompressed_offset: u64,
    /// Offset in the first file that used it.
    pub file_offset: u64,
    /// Index inside its blob.
    pub index: u32,
}

impl ChunkInfo {
    /// Encodes the entry.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let raw = ChunkInfoRaw {
            digest: self.digest,
            blob_index: self.blob_index.into(),
            flags: (self.compressed as u32).into(),
            compressed_size: self.compressed_size.into(),
            uncompressed_size: self.uncompressed_size.into(),
            compressed_offset: self.compressed_offset.into(),
            uncompressed_offset: self.uncompressed_offset.into(),
            file_offset: self.file_offset.into(),
            index: self.index.into(),
            reserved: 0.into(),
        };
        out.extend_from_slice(raw.as_bytes());
    }

    /// Decodes an entry found at `offset`.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, FormatError> {
        let raw = ChunkInfoRaw::read_from_bytes(bytes).map_err(|_| FormatError::Truncated {
            offset,
            need: CHUNK_INFO_SIZE as u64,
            have: bytes.len() as u64,
            what: "chunk info",
        })?;
        Ok(ChunkInfo {
            digest: raw.digest,
            blob_index: raw.blob_index.get(),
            compressed: raw.flags.get() & 1 != 0,
            compressed_size: raw.compressed_size.get(),
            uncompressed_size: raw.uncompressed_size.get(),
            compressed_offset: raw.compressed_offset.get(),
            uncompressed_offset: raw.uncompressed_offset.get(),
            file_offset: raw.file_offset.get(),
            index: raw.index.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_entry_round_trips() {
        let entry = BlobEntry {
            blob_id: "ab".repeat(32),
            chunk_size: 0x10_0000,
            chunk_count: 3,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            features: blob_features::ALIGNED | blob_features::HAS_TOC,
            compressed_size: 1000,
            uncompressed_size: 12288,
            toc_size: 1024,
            ci_compressor: Compressor::Zstd,
            ci_offset: 1000,
            ci_compressed_size: 20,
            ci_uncompressed_size: 48,
            toc_digest: [7; 32],
        };
        let bytes = entry.encode(2);
        assert_eq!(BlobEntry::decode(&bytes, 2, 0).unwrap(), entry);
        assert!(BlobEntry::decode(&bytes, 1, 0).is_err());
    }

    #[test]
    fn chunk_info_round_trips() {
        let info = ChunkInfo {
            digest: [9; 32],
            blob_index: 1,
            compressed: true,
            compressed_size: 100,
            uncompressed_size: 4096,
            compressed_offset: 1 << 40,
            uncompressed_offset: 8192,
            file_offset: 1 << 20,
            index: 5,
        };
        let mut buf = Vec::new();
        info.encode(&mut buf);
        assert_eq!(ChunkInfo::decode(&buf, 0).unwrap(), info);
    }
}
