//! Reading file data: chunk index -> chunk info -> blob bytes -> decompressed chunk,
//! checked against its digest when asked.

use std::sync::Arc;

/// Bytes fetched from a blob when a small chunk is needed.
const READ_WINDOW: u64 = 256 << 10;
/// Chunks stored in fewer bytes than this are read through a window; larger ones alone.
const SMALL_STORED: u64 = 64 << 10;
/// Bytes past a window the kernel is asked to read ahead.
const AHEAD: u64 = 2 << 20;
/// Windows kept (per image, all threads).
const KEPT_WINDOWS: usize = 4;

use super::{Image, ReadError};
use crate::format::v6::inode::ChunkAddr;
use crate::format::v6::Nid;
use crate::storage::compress;

/// What [`Image::read_shared`] found for a range of a file.
pub enum SharedRead {
    /// The range lies in one stored chunk: that chunk's buffer and the range in it.
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
    /// The range spans chunks or a hole, or lies past the end: read it with a copy.
    Copy,
}

/// The chunk holding byte `pos` of a file of `size` bytes: its index, first byte, length.
fn chunk_at(pos: u64, size: u64, chunk_size: u64) -> (usize, u64, u64) {
    let index = pos / chunk_size;
    let start = index * chunk_size;
    (index as usize, start, (size - start).min(chunk_size))
}

impl Image {
    fn blob_error(&self, blob: usize, what: String) -> ReadError {
        self.blob_error_from(blob, what, None)
    }

    fn blob_error_from(
        &self,
        blob: usize,
        what: String,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ReadError {
        ReadError::Blob {
            blob_id: self
                .blobs
                .get(blob)
                .map(|b| b.blob_id.clone())
                .unwrap_or_default(),
            path: self.blob_paths.get(blob).cloned().flatten(),
            what,
            source,
        }
    }

    /// Loads and decompresses one chunk; `expect_len` is the size the file needs from it.
    pub(crate) fn load_chunk(
        &self,
        addr: ChunkAddr,
        expect_len: u64,
    ) -> Result<Arc<Vec<u8>>, ReadError> {
        match self.cache.get((addr.blob_index as u32, addr.chunk_index)) {
            Some(data) => Ok(data),
            None => self.load_uncached(addr, expect_len),
        }
    }

    /// [`Image::load_chunk`] for a chunk not in the memory cache: reads, decompresses,
    /// checks and caches it.
    fn load_uncached(&self, addr: ChunkAddr, expect_len: u64) -> Result<Arc<Vec<u8>>, ReadError> {
        let key = (addr.blob_index as u32, addr.chunk_index);
        let blob = addr.blob_index as usize;
        if blob >= self.blobs.len() {
            return Err(self.fmt_err(crate::format::FormatError::Invalid {
                offset: 0,
                what: format!("chunk index names blob {blob} of {}", self.blobs.len()),
            }));
        }
        let info = self.chunk_info(addr.blob(), addr.chunk()).ok_or_else(|| {
            self.blob_error(
                blob,
                format!(
                    "chunk {} is not in the bootstrap's chunk table",
                    addr.chunk_index
                ),
            )
        })?;
        if info.uncompressed_size as u64 != expect_len {
            return Err(self.blob_error(
                blob,
                format!(
                    "chunk {} holds {} bytes, the file needs {expect_len} there",
                    addr.chunk_index, info.uncompressed_size
                ),
            ));
        }
        let file = self.blob_files[blob].as_ref().map_err(|e| {
            self.blob_error_from(blob, "not available".into(), Some(Box::new(e.clone())))
        })?;
        // An eStargz layer's chunks (gzip, no blob meta) carry an upper bound as their
        // stored size, which may run past the layer's end: read what is there.
        let gzip_layer = self.blobs[blob].compressor == crate::format::Compressor::Gzip;
        let mut stored_len = info.compressed_size as u64;
        if gzip_layer && info.compressed_offset < file.len {
            stored_len = stored_len.min(file.len - info.compressed_offset);
        }
        let end = info.compressed_offset.checked_add(stored_len);
        if end.is_none_or(|end| end > file.len) {
            return Err(self.blob_error(
                blob,
                format!(
                    "chunk {} at 0x{:x}+0x{:x} lies past the blob's end 0x{:x}",
                    addr.chunk_index, info.compressed_offset, info.compressed_size, file.len
                ),
            ));
        }
        if info.compressed_size as u64 > 2 * crate::format::v6::super_block::MAX_CHUNK_SIZE {
            return Err(self.blob_error(
                blob,
                format!("chunk {} is implausibly large", addr.chunk_index),
            ));
        }
        let remote = self.remote_blob(blob).filter(|_| !gzip_layer);
        let (window, at) = match remote {
            // Behind a backend: planned, cached, checked before caching (lazy.rs).
            Some(remote) => {
                let data = remote.chunk(addr.chunk_index).map_err(|e| {
                    self.blob_error_from(
                        blob,
                        format!("cannot read chunk {}", addr.chunk_index),
                        Some(Box::new(e)),
                    )
                })?;
                (data, 0)
            }
            None => self
                .stored_bytes(blob, file, info.compressed_offset, stored_len)
                .map_err(|e| {
                    self.blob_error_from(
                        blob,
                        format!("cannot read chunk {}", addr.chunk_index),
                        Some(Box::new(e)),
                    )
                })?,
        };
        let stored = &window[at..at + stored_len as usize];
        let compressed = info.compressed || info.compressed_size != info.uncompressed_size;
        let data: Arc<Vec<u8>> = if !compressed && at == 0 && window.len() as u64 == stored_len {
            // Read alone and stored raw: the buffer read is the chunk.
            window
        } else if compressed {
            let mut out = vec![0u8; info.uncompressed_size as usize];
            let mut result = compress::decompress(self.blobs[blob].compressor, stored, &mut out);
            let rest = file.len - info.compressed_offset;
            if result.is_err() && gzip_layer && stored_len < rest {
                // The recorded size is only a bound, and this member needs more: read on
                // (at most twice the chunk plus 1 MiB) and try once more.
                let len = rest.min(2 * info.uncompressed_size as u64 + (1 << 20));
                let mut more = vec![0u8; len as usize];
                file.read_exact_at(&mut more, info.compressed_offset)
                    .map_err(|e| {
                        self.blob_error_from(
                            blob,
                            format!("cannot read chunk {}", addr.chunk_index),
                            Some(Box::new(e)),
                        )
                    })?;
                result = compress::decompress(self.blobs[blob].compressor, &more, &mut out);
            }
            result.map_err(|e| {
                self.blob_error_from(
                    blob,
                    format!(
                        "chunk {} at 0x{:x}",
                        addr.chunk_index, info.compressed_offset
                    ),
                    Some(Box::new(e)),
                )
            })?;
            Arc::new(out)
        } else {
            Arc::new(stored.to_vec())
        };
        if self.validate {
            let got = compress::digest(self.blobs[blob].digester, &data);
            if got != info.digest {
                return Err(self.blob_error(
                    blob,
                    format!(
                        "chunk {} at 0x{:x}: digest {} does not match the bootstrap's {}",
                        addr.chunk_index,
                        info.compressed_offset,
                        hex::encode(got),
                        hex::encode(info.digest)
                    ),
                ));
            }
        }
        if let Some(remote) = remote {
            remote.keep_decompressed(addr.chunk_index, data.clone());
        }
        self.cache.insert(key, data.clone());
        Ok(data)
    }

    /// Bytes `range` of a chunk of `chunk_len` bytes: a buffer holding them and where
    /// they start in it. From the decompressed chunk in memory; else, for a remote blob,
    /// the range alone from the cache's raw file (a page fault in a mapped program needs
    /// 4 KiB to 128 KiB of a chunk, not all of it decompressed); else the whole chunk,
    /// loaded. With `validate`, always the whole chunk: its digest is checked.
    fn chunk_part(
        &self,
        addr: ChunkAddr,
        chunk_len: u64,
        range: std::ops::Range<usize>,
    ) -> Result<(Arc<Vec<u8>>, usize), ReadError> {
        let key = (addr.blob_index as u32, addr.chunk_index);
        if let Some(data) = self.cache.get(key) {
            return Ok((data, range.start));
        }
        if !self.validate {
            let part = self
                .remote_blob(addr.blob_index as usize)
                .and_then(|r| r.cached_part(addr.chunk_index, chunk_len as u32, range.clone()));
            if let Some((buf, at)) = part {
                return Ok((Arc::new(buf), at));
            }
        }
        Ok((self.load_uncached(addr, chunk_len)?, range.start))
    }

    /// The stored bytes `[offset, offset + len)` of a blob: a buffer holding them and where
    /// they start in it. Small chunks fetch a whole window (`READ_WINDOW`) and keep the
    /// last few windows, so reading small files in blob order costs few, larger reads
    /// (the builder lays chunks out in the order `tar` and `find` walk a tree); big
    /// chunks are read alone, so a window never holds mostly someone else's data.
    fn stored_bytes(
        &self,
        blob: usize,
        file: &crate::storage::blobs::BlobFile,
        offset: u64,
        len: u64,
    ) -> std::io::Result<(Arc<Vec<u8>>, usize)> {
        {
            let windows = self.windows.lock().expect("windows lock");
            for (b, start, data) in windows.iter() {
                if *b == blob && offset >= *start && offset + len <= *start + data.len() as u64 {
                    return Ok((data.clone(), (offset - start) as usize));
                }
            }
        }
        let end = if len < SMALL_STORED {
            (offset + READ_WINDOW).min(file.len).max(offset + len)
        } else {
            offset + len
        };
        let mut data = vec![0u8; (end - offset) as usize];
        file.read_exact_at(&mut data, offset)?;
        if len < SMALL_STORED && end < file.len {
            // Small files are read in blob order: have the next stretch on its way.
            file.will_need(end, AHEAD.min(file.len - end));
        }
        let data = Arc::new(data);
        if len < SMALL_STORED {
            let mut windows = self.windows.lock().expect("windows lock");
            if windows.len() >= KEPT_WINDOWS {
                windows.pop_front();
            }
            windows.push_back((blob, offset, data.clone()));
        }
        Ok((data, 0))
    }

    /// Reads up to `buf.len()` bytes of regular file `nid` at `offset`; returns the count
    /// (0 at or past the end). Holes read as zeros.
    pub fn read(&self, nid: Nid, offset: u64, buf: &mut [u8]) -> Result<usize, ReadError> {
        let table = self.chunk_table_of(nid)?;
        let size = table.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let chunk_size = self.sb.chunk_size as u64;
        let want = (size - offset).min(buf.len() as u64) as usize;
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            let (index, chunk_start, chunk_len) = chunk_at(pos, size, chunk_size);
            let within = (pos - chunk_start) as usize;
            let n = (chunk_len as usize - within).min(want - done);
            match table.get(self, index)? {
                None => buf[done..done + n].fill(0),
                Some(addr) => {
                    let (data, at) = self.chunk_part(addr, chunk_len, within..within + n)?;
                    buf[done..done + n].copy_from_slice(&data[at..at + n]);
                }
            }
            done += n;
        }
        Ok(done)
    }

    /// The bytes of regular file `nid` at `[offset, offset + len)` (cut at its end), from
    /// the one stored chunk holding them, with no copy: see [`SharedRead`].
    pub fn read_shared(&self, nid: Nid, offset: u64, len: u64) -> Result<SharedRead, ReadError> {
        let table = self.chunk_table_of(nid)?;
        let size = table.size;
        if offset >= size || len == 0 {
            return Ok(SharedRead::Copy);
        }
        let (index, chunk_start, chunk_len) = chunk_at(offset, size, self.sb.chunk_size as u64);
        let end = (offset + len).min(size);
        if end > chunk_start + chunk_len {
            return Ok(SharedRead::Copy);
        }
        let Some(addr) = table.get(self, index)? else {
            return Ok(SharedRead::Copy);
        };
        let range = (offset - chunk_start) as usize..(end - chunk_start) as usize;
        let (data, at) = self.chunk_part(addr, chunk_len, range.clone())?;
        Ok(SharedRead::Shared(data, at..at + range.len()))
    }

    /// Reads all of regular file `nid`.
    pub fn read_all(&self, nid: Nid) -> Result<Vec<u8>, ReadError> {
        let size = self.stat(nid)?.size;
        let mut out = Vec::new();
        let mut offset = 0u64;
        let mut buf = vec![0u8; self.sb.chunk_size as usize];
        while offset < size {
            let n = self.read(nid, offset, &mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            offset += n as u64;
        }
        Ok(out)
    }
}
