//! Writes a data blob strictly sequentially (it may be a FIFO): chunk data as it comes,
//! then the chunk info array and the blob meta header, as upstream 2.2.0 lays them out.
//! The blob's sha256 is computed on the way, so the blob id needs no second read.

use std::io::Write;

use sha2::{Digest, Sha256};

use crate::format::blob_meta::{ChunkLocation, Header, MAX_CHUNK_BYTES};
use crate::format::v6::tables::{blob_features, BlobEntry, ChunkInfo};
use crate::format::v6::BLOCK_SIZE;
use crate::format::{Compressor, Digester};
use crate::storage::compress;

/// Largest compressed offset a v1 chunk info entry can hold.
const MAX_COMPRESSED_OFFSET: u64 = 1 << 40;
/// Largest uncompressed offset a v1 chunk info entry can hold.
const MAX_UNCOMPRESSED_OFFSET: u64 = 1 << 44;

/// A blob being written.
pub struct BlobWriter<W: Write> {
    out: W,
    hasher: Sha256,
    compressed_offset: u64,
    uncompressed_offset: u64,
    chunks: Vec<ChunkInfo>,
    compressor: Compressor,
    digester: Digester,
    chunk_size: u32,
}

/// What a finished blob is.
#[derive(Clone, Debug)]
pub struct FinishedBlob {
    /// The blob table entry for it (blob id filled in).
    pub entry: BlobEntry,
    /// sha256 of the whole blob, hex.
    pub sha256: String,
    /// Total bytes written.
    pub size: u64,
}

impl<W: Write> BlobWriter<W> {
    /// Starts a blob on `out`.
    pub fn new(out: W, compressor: Compressor, digester: Digester, chunk_size: u32) -> Self {
        BlobWriter {
            out,
            hasher: Sha256::new(),
            compressed_offset: 0,
            uncompressed_offset: 0,
            chunks: Vec::new(),
            compressor,
            digester,
            chunk_size,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.compressed_offset += bytes.len() as u64;
        Ok(())
    }

    /// Number of chunks written so far.
    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// Appends one chunk: `stored` is its compressed form, or `None` when it is stored
    /// raw. Returns the chunk's index in this blob.
    pub fn add_chunk(
        &mut self,
        digest: [u8; 32],
        raw: &[u8],
        stored: Option<&[u8]>,
        file_offset: u64,
    ) -> std::io::Result<u32> {
        match stored {
            Some(packed) => self.add_stored(digest, raw.len(), packed, true, file_offset),
            None => self.add_stored(digest, raw.len(), raw, false, file_offset),
        }
    }

    /// Like [`add_chunk`](Self::add_chunk) for a chunk of `raw_len` bytes already in its
    /// stored form: `bytes`, compressed or not.
    pub fn add_stored(
        &mut self,
        digest: [u8; 32],
        raw_len: usize,
        bytes: &[u8],
        compressed: bool,
        file_offset: u64,
    ) -> std::io::Result<u32> {
        if self.compressed_offset + bytes.len() as u64 > MAX_COMPRESSED_OFFSET
            || self.uncompressed_offset + raw_len as u64 > MAX_UNCOMPRESSED_OFFSET
            || self.chunks.len() >= 0x00ff_ffff
        {
            return Err(std::io::Error::other(
                "blob exceeds the RAFS v6 limits (1 TiB compressed, 16 TiB uncompressed, 2^24 chunks)",
            ));
        }
        debug_assert!(raw_len as u64 <= MAX_CHUNK_BYTES && raw_len > 0);
        let info = ChunkInfo {
            digest,
            blob_index: 0,
            compressed,
            compressed_size: bytes.len() as u32,
            uncompressed_size: raw_len as u32,
            compressed_offset: self.compressed_offset,
            uncompressed_offset: self.uncompressed_offset,
            file_offset,
            index: self.chunks.len() as u32,
        };
        self.write(bytes)?;
        self.uncompressed_offset += (raw_len as u64).next_multiple_of(BLOCK_SIZE);
        self.chunks.push(info);
        Ok(self.chunks.len() as u32 - 1)
    }

    /// Writes the chunk info array and header, flushes, and returns the blob's description
    /// and the chunk table. `blob_id` overrides the default id (the blob's sha256).
    pub fn finish(
        mut self,
        blob_id: Option<&str>,
    ) -> std::io::Result<(FinishedBlob, Vec<ChunkInfo>)> {
        let data_end = self.compressed_offset;
        let mut ci = Vec::with_capacity(self.chunks.len() * 16);
        for c in &self.chunks {
            ChunkLocation {
                compressed_offset: c.compressed_offset,
                compressed_size: c.compressed_size,
                uncompressed_offset: c.uncompressed_offset,
                uncompressed_size: c.uncompressed_size,
            }
            .encode_v1(&mut ci);
        }
        let (ci_compressor, ci_stored) =
            match compress::compress(self.compressor, &ci).map_err(std::io::Error::other)? {
                Some(packed) => (self.compressor, packed),
                None => (Compressor::None, ci.clone()),
            };
        let features = blob_features::ALIGNED | blob_features::CAP_TAR_TOC;
        let header = Header {
            features,
            ci_compressor,
            ci_entries: self.chunks.len() as u32,
            ci_offset: data_end,
            ci_compressed_size: ci_stored.len() as u64,
            ci_uncompressed_size: ci.len() as u64,
        };
        self.write(&ci_stored)?;
        self.write(&header.encode())?;
        self.out.flush()?;
        let sha256 = hex::encode(self.hasher.finalize_reset());
        let entry = BlobEntry {
            blob_id: blob_id
                .map(str::to_string)
                .unwrap_or_else(|| sha256.clone()),
            chunk_size: self.chunk_size,
            chunk_count: self.chunks.len() as u32,
            compressor: self.compressor,
            digester: self.digester,
            features,
            compressed_size: self.compressed_offset,
            uncompressed_size: self.uncompressed_offset,
            toc_size: 0,
            ci_compressor,
            ci_offset: data_end,
            ci_compressed_size: ci_stored.len() as u64,
            ci_uncompressed_size: ci.len() as u64,
            toc_digest: [0; 32],
        };
        let size = self.compressed_offset;
        Ok((
            FinishedBlob {
                entry,
                sha256,
                size,
            },
            self.chunks,
        ))
    }
}
