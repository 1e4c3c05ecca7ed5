//! Writes a data blob strictly sequentially (it may be a FIFO): chunk data as it comes,
//! then the chunk info array and the blob meta header, as upstream 2.2.0 lays them out;
//! for a blob that carries its bootstrap (inline metadata), each section followed by its
//! tar header, then the bootstrap and optionally a table of contents
//! (`format::blob_toc`). The blob's sha256 is computed on the way, so the blob id needs
//! no second read. An uncompressed blob (`Compressor::None`) keeps each chunk at its
//! uncompressed offset, block-aligned, so that the kernel's EROFS can read it as the extra
//! device the bootstrap's chunk indexes address.
//!
//! Chunks' uncompressed offsets (where a blob cache keeps a chunk decompressed) follow
//! [`Layout`]: at 4 KiB blocks for RAFS v6, as upstream 2.2.0 always does; one after
//! another for RAFS v5, as upstream does unless `create --aligned-chunk` asks for blocks.

use std::io::Write;

use sha2::{Digest, Sha256};

use crate::format::blob_meta::{ChunkLocation, Header, HEADER_SIZE, MAX_CHUNK_BYTES};
use crate::format::blob_toc::{names, TarHeader, Toc, TocEntry};
use crate::format::v6::tables::{blob_features, BlobEntry, ChunkInfo};
use crate::format::v6::BLOCK_SIZE;
use crate::format::{Compressor, Digester};
use crate::storage::compress;

/// Largest compressed offset a v1 chunk info entry can hold.
const MAX_COMPRESSED_OFFSET: u64 = 1 << 40;
/// Largest uncompressed offset a v1 chunk info entry can hold.
const MAX_UNCOMPRESSED_OFFSET: u64 = 1 << 44;

/// How a blob's chunks are given uncompressed offsets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// RAFS v6: each chunk's uncompressed offset starts a 4 KiB block, and an
    /// uncompressed blob stores each chunk at that offset (an EROFS extra device).
    #[default]
    Blocks,
    /// RAFS v5, upstream's default: each chunk's uncompressed offset right after the
    /// previous chunk's last byte; the blob does not claim the `aligned` feature.
    Dense,
    /// RAFS v5 with `--aligned-chunk`: uncompressed offsets start 4 KiB blocks (upstream
    /// 2.2.0 rounds each chunk's uncompressed size up to 4 KiB for the next offset);
    /// stored chunks stay packed.
    Aligned,
}

impl Layout {
    /// Whether uncompressed offsets are 4 KiB aligned.
    fn aligned(self) -> bool {
        self != Layout::Dense
    }

    /// The features every blob written this way has.
    fn features(self) -> u32 {
        if self.aligned() {
            blob_features::ALIGNED | blob_features::CAP_TAR_TOC
        } else {
            blob_features::CAP_TAR_TOC
        }
    }
}

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
    layout: Layout,
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
            layout: Layout::Blocks,
        }
    }

    /// Gives chunks uncompressed offsets by `layout` (before the first chunk).
    pub fn with_layout(mut self, layout: Layout) -> Self {
        debug_assert!(self.chunks.is_empty());
        self.layout = layout;
        self
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.compressed_offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes zeros up to `offset`, when the blob is not there yet.
    fn pad_to(&mut self, offset: u64) -> std::io::Result<()> {
        const ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];
        while self.compressed_offset < offset {
            let n = (offset - self.compressed_offset).min(BLOCK_SIZE) as usize;
            self.write(&ZEROS[..n])?;
        }
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
        self.uncompressed_offset += if self.layout.aligned() {
            (raw_len as u64).next_multiple_of(BLOCK_SIZE)
        } else {
            raw_len as u64
        };
        if self.layout == Layout::Blocks && self.compressor == Compressor::None && !compressed {
            // An uncompressed blob is laid out as the kernel's EROFS reads an extra
            // device: each chunk at the block its chunk index names (its uncompressed
            // offset), so the tail of each chunk is padded to the next block.
            self.pad_to(self.uncompressed_offset)?;
        }
        self.chunks.push(info);
        Ok(self.chunks.len() as u32 - 1)
    }

    /// Writes the chunk info array and its header (both carrying `features`); returns the
    /// array's compressor and its stored and uncompressed bytes, and the header's bytes.
    fn write_meta(&mut self, features: u32) -> std::io::Result<WrittenMeta> {
        let ci_offset = self.compressed_offset;
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
        let header = Header {
            features,
            ci_compressor,
            ci_entries: self.chunks.len() as u32,
            ci_offset,
            ci_compressed_size: ci_stored.len() as u64,
            ci_uncompressed_size: ci.len() as u64,
        }
        .encode();
        self.write(&ci_stored)?;
        self.write(&header)?;
        Ok(WrittenMeta {
            ci_offset,
            ci_compressor,
            ci_stored_len: ci_stored.len() as u64,
            ci,
            header,
        })
    }

    /// The blob table entry for what has been written, with `meta`'s chunk info array.
    fn entry(&self, blob_id: String, features: u32, meta: &WrittenMeta) -> BlobEntry {
        BlobEntry {
            blob_id,
            chunk_size: self.chunk_size,
            chunk_count: self.chunks.len() as u32,
            compressor: self.compressor,
            digester: self.digester,
            features,
            compressed_size: self.compressed_offset,
            uncompressed_size: self.uncompressed_offset,
            toc_size: 0,
            ci_compressor: meta.ci_compressor,
            ci_offset: meta.ci_offset,
            ci_compressed_size: meta.ci_stored_len,
            ci_uncompressed_size: meta.ci.len() as u64,
            toc_digest: [0; 32],
        }
    }

    /// Writes the chunk info array and header, flushes, and returns the blob's description
    /// and the chunk table. `blob_id` overrides the default id (the blob's sha256).
    pub fn finish(
        mut self,
        blob_id: Option<&str>,
    ) -> std::io::Result<(FinishedBlob, Vec<ChunkInfo>)> {
        let features = self.layout.features();
        let meta = self.write_meta(features)?;
        self.out.flush()?;
        let sha256 = hex::encode(self.hasher.finalize_reset());
        let id = blob_id
            .map(str::to_string)
            .unwrap_or_else(|| sha256.clone());
        let entry = self.entry(id, features, &meta);
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

    /// Writes a tar header naming the section that ends here.
    fn write_tar_header(&mut self, name: &str, size: u64) -> std::io::Result<()> {
        self.write(&TarHeader::encode(name, size))
    }

    /// Ends the chunk data of a blob that will carry its bootstrap (upstream's
    /// `--blob-inline-meta`; with `toc`, `--features blob-toc` too): writes each section
    /// upstream writes before the bootstrap, each followed by its tar header (see
    /// `format::blob_toc`). Returns the rest of the blob to write, the blob table entry
    /// for the bootstrap (none when there are no chunks, as upstream's has none), and the
    /// chunk table. The entry's id is upstream's placeholder, 64 `x` characters: the
    /// blob's consumer names it.
    ///
    /// Without `meta` (RAFS v5, whose readers take chunk offsets from the bootstrap),
    /// there is no blob meta section: the bootstrap follows the chunk data's tar header
    /// directly, as upstream 2.2.0 lays out a v5 blob (it refuses a TOC with v5).
    pub fn finish_inline(
        mut self,
        toc: bool,
        meta: bool,
    ) -> std::io::Result<(InlineTail<W>, Option<BlobEntry>, Vec<ChunkInfo>)> {
        let mut records = Vec::new();
        if self.chunks.is_empty() {
            let tail = InlineTail {
                writer: self,
                toc: toc.then_some(records),
            };
            return Ok((tail, None, Vec::new()));
        }
        let mut features =
            self.layout.features() | blob_features::INLINED_FS_META | blob_features::HAS_TAR_HEADER;
        if toc {
            features |= blob_features::HAS_TOC | blob_features::INLINED_CHUNK_DIGEST;
        }
        let data_end = self.compressed_offset;
        self.write_tar_header(names::BLOB_DATA, data_end)?;
        // Upstream's record of the chunk data takes the digest of everything written so
        // far: the data and its tar header.
        records.push(TocEntry {
            name: names::BLOB_DATA.into(),
            compressor: Compressor::None,
            uncompressed_sha256: Some(self.hasher.clone().finalize().into()),
            compressed_offset: 0,
            compressed_size: data_end,
            uncompressed_size: self.uncompressed_offset,
        });
        if !meta {
            let none = WrittenMeta {
                ci_offset: 0,
                ci_compressor: Compressor::None,
                ci_stored_len: 0,
                ci: Vec::new(),
                header: Vec::new(),
            };
            let entry = self.entry(INLINE_PLACEHOLDER_ID.to_string(), features, &none);
            let chunks = std::mem::take(&mut self.chunks);
            let tail = InlineTail {
                writer: self,
                toc: toc.then_some(records),
            };
            return Ok((tail, Some(entry), chunks));
        }
        let meta = self.write_meta(features)?;
        let header_at = meta.ci_offset + meta.ci_stored_len;
        self.write_tar_header(names::BLOB_META, meta.ci_stored_len + HEADER_SIZE as u64)?;
        records.push(TocEntry {
            name: names::BLOB_META.into(),
            compressor: meta.ci_compressor,
            uncompressed_sha256: Some(Sha256::digest(&meta.ci).into()),
            compressed_offset: meta.ci_offset,
            compressed_size: meta.ci_stored_len,
            uncompressed_size: meta.ci.len() as u64,
        });
        records.push(TocEntry {
            name: names::BLOB_META_HEADER.into(),
            compressor: Compressor::None,
            uncompressed_sha256: Some(Sha256::digest(&meta.header).into()),
            compressed_offset: header_at,
            compressed_size: HEADER_SIZE as u64,
            uncompressed_size: HEADER_SIZE as u64,
        });
        if toc {
            let digests: Vec<u8> = self.chunks.iter().flat_map(|c| c.digest).collect();
            let at = self.compressed_offset;
            self.write(&digests)?;
            self.write_tar_header(names::CHUNK_DIGESTS, digests.len() as u64)?;
            records.push(TocEntry {
                name: names::CHUNK_DIGESTS.into(),
                compressor: Compressor::None,
                uncompressed_sha256: Some(Sha256::digest(&digests).into()),
                compressed_offset: at,
                compressed_size: digests.len() as u64,
                uncompressed_size: digests.len() as u64,
            });
        }
        // The bootstrap starts here: upstream records this as the blob's compressed size.
        let entry = self.entry(INLINE_PLACEHOLDER_ID.to_string(), features, &meta);
        let chunks = std::mem::take(&mut self.chunks);
        let tail = InlineTail {
            writer: self,
            toc: toc.then_some(records),
        };
        Ok((tail, Some(entry), chunks))
    }
}

/// The blob id upstream writes into a bootstrap stored inside its own blob: a
/// placeholder its consumer replaces (upstream: by the name it gave the blob).
pub const INLINE_PLACEHOLDER_ID: &str =
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// What [`BlobWriter::write_meta`] wrote.
struct WrittenMeta {
    ci_offset: u64,
    ci_compressor: Compressor,
    ci_stored_len: u64,
    /// The uncompressed chunk info array.
    ci: Vec<u8>,
    /// The encoded blob meta header.
    header: Vec<u8>,
}

/// The rest of a blob that carries its bootstrap: the bootstrap, then (with a TOC) the
/// table of contents.
pub struct InlineTail<W: Write> {
    writer: BlobWriter<W>,
    /// TOC records so far, when the blob gets a TOC.
    toc: Option<Vec<TocEntry>>,
}

/// A finished blob that carries its bootstrap.
#[derive(Clone, Debug)]
pub struct FinishedInline {
    /// sha256 of the whole blob, hex.
    pub sha256: String,
    /// Total bytes written.
    pub size: u64,
}

impl<W: Write> InlineTail<W> {
    /// Writes the bootstrap and its tar header: with a TOC, zstd-compressed when that
    /// makes it smaller, followed by the TOC and its header; without, as it is. Flushes.
    pub fn finish(mut self, bootstrap: &[u8]) -> std::io::Result<FinishedInline> {
        let w = &mut self.writer;
        let at = w.compressed_offset;
        let (compressor, stored) = match self.toc {
            Some(_) => match compress::zstd_whole(bootstrap).map_err(std::io::Error::other)? {
                Some(packed) => (Compressor::Zstd, std::borrow::Cow::Owned(packed)),
                None => (Compressor::None, std::borrow::Cow::Borrowed(bootstrap)),
            },
            None => (Compressor::None, std::borrow::Cow::Borrowed(bootstrap)),
        };
        w.write(&stored)?;
        w.write_tar_header(names::BOOTSTRAP, stored.len() as u64)?;
        if let Some(mut records) = self.toc.take() {
            records.push(TocEntry {
                name: names::BOOTSTRAP.into(),
                compressor,
                uncompressed_sha256: Some(Sha256::digest(bootstrap).into()),
                compressed_offset: at,
                compressed_size: stored.len() as u64,
                uncompressed_size: bootstrap.len() as u64,
            });
            let toc = Toc { entries: records }.encode();
            w.write(&toc)?;
            w.write_tar_header(names::TOC, toc.len() as u64)?;
        }
        w.out.flush()?;
        Ok(FinishedInline {
            sha256: hex::encode(w.hasher.finalize_reset()),
            size: w.compressed_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of an uncompressed blob sit at their block addresses, as the kernel reads
    /// them; a compressed blob stays dense.
    #[test]
    fn uncompressed_chunks_sit_at_their_block_addresses() {
        let sizes = [1usize, 4096, 4097, 10_000, 8192];
        for compressor in [Compressor::None, Compressor::Zstd] {
            let mut blob = Vec::new();
            let mut w = BlobWriter::new(&mut blob, compressor, Digester::Blake3, 0x10_0000);
            let mut raws = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                let raw: Vec<u8> = (0..n).map(|k| (k * 7 + i * 13) as u8 | 1).collect();
                w.add_chunk([i as u8; 32], &raw, None, 0).unwrap();
                raws.push(raw);
            }
            let (done, chunks) = w.finish(None).unwrap();
            let mut dense = 0u64;
            for (c, raw) in chunks.iter().zip(&raws) {
                assert_eq!(c.uncompressed_offset % BLOCK_SIZE, 0);
                let at = c.compressed_offset as usize;
                assert_eq!(&blob[at..at + raw.len()], &raw[..], "{compressor:?}");
                match compressor {
                    Compressor::None => assert_eq!(c.compressed_offset, c.uncompressed_offset),
                    _ => assert_eq!(c.compressed_offset, dense, "packed densely"),
                }
                dense += raw.len() as u64;
            }
            if compressor == Compressor::None {
                let end = chunks.last().unwrap().uncompressed_offset + 8192;
                assert_eq!(done.entry.uncompressed_size, end);
                // The chunk info array starts on a block; the padding is zeros.
                assert_eq!(done.entry.ci_offset, end);
                for (c, raw) in chunks.iter().zip(&raws) {
                    let from = c.compressed_offset as usize + raw.len();
                    let to = from.next_multiple_of(BLOCK_SIZE as usize);
                    assert!(blob[from..to].iter().all(|&b| b == 0), "padding at {from}");
                }
            }
        }
    }

    /// Each layout gives the uncompressed offsets, blob size and features upstream 2.2.0
    /// gives (v6; v5; v5 with --aligned-chunk), and only v6 pads an uncompressed blob.
    #[test]
    fn layouts_place_uncompressed_offsets() {
        let sizes = [1usize, 4096, 4097, 10_000];
        let dense_offsets = [0u64, 1, 4097, 8194];
        let aligned_offsets = [0u64, 4096, 8192, 16384];
        for (layout, offsets, end, aligned) in [
            (Layout::Blocks, aligned_offsets, 16384 + 12288, true),
            (Layout::Aligned, aligned_offsets, 16384 + 12288, true),
            (Layout::Dense, dense_offsets, 8194 + 10_000, false),
        ] {
            for compressor in [Compressor::None, Compressor::Lz4Block] {
                let mut blob = Vec::new();
                let mut w = BlobWriter::new(&mut blob, compressor, Digester::Blake3, 0x10_0000)
                    .with_layout(layout);
                for (i, &n) in sizes.iter().enumerate() {
                    let raw: Vec<u8> = (0..n).map(|k| (k * 7 + i * 13) as u8 | 1).collect();
                    w.add_chunk([i as u8; 32], &raw, None, 0).unwrap();
                }
                let (done, chunks) = w.finish(None).unwrap();
                let got: Vec<u64> = chunks.iter().map(|c| c.uncompressed_offset).collect();
                assert_eq!(got, offsets, "{layout:?} {compressor:?}");
                assert_eq!(done.entry.uncompressed_size, end, "{layout:?}");
                assert_eq!(
                    done.entry.features & blob_features::ALIGNED != 0,
                    aligned,
                    "{layout:?}"
                );
                let stored: Vec<u64> = chunks.iter().map(|c| c.compressed_offset).collect();
                if layout == Layout::Blocks && compressor == Compressor::None {
                    assert_eq!(stored, got, "v6 uncompressed: chunks at their blocks");
                } else {
                    assert_eq!(stored, dense_offsets, "{layout:?}: chunks packed");
                }
            }
        }
    }
}
