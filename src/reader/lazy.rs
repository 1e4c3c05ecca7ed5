//! Lazy loading: the image's side of reading blobs behind a remote backend. Each such
//! blob gets a [`RemoteBlob`] (fetch planning, the persistent cache, the in-memory
//! store: see `storage::remote`) built on first use from the chunk table; this module
//! gives it the chunk layout and the digest check, and walks the prefetch table.
//!
//! Prefetch follows what nydusd's `fs_prefetch` does for users: right after mount, the
//! files the bootstrap's prefetch table names (directories recursively, each file's
//! chunks in file order), then for RAFS v5 the blob table's readahead ranges, then with
//! `prefetch_all` every chunk of every remote blob in blob order, fetched by a few
//! workers in that order, each holding back while a reader waits on the network.
//! Local blobs are not prefetched: the kernel's readahead serves them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::{Image, Nid, ReadError};
use crate::format::v6::super_block::MAX_CHUNK_SIZE;
use crate::format::Compressor;
use crate::storage::compress;
use crate::storage::remote::{BlobPlace, Checker, Metrics, RemoteBlob, RemoteOptions, Shared};

/// What a digest check needs of a chunk.
#[derive(Clone, Copy)]
struct ChunkFacts {
    digest: [u8; 32],
    size: u32,
    compressed: bool,
}

/// Size of a blob's uncompressed address space the cache's raw file covers, at most.
const MAX_RAW_FILE: u64 = 1 << 40;

/// Directory depth the prefetch walk goes to, at most.
const MAX_DEPTH: usize = 256;

/// The remote blobs of an image and how they are read.
#[derive(Debug, Default)]
pub(crate) struct RemoteState {
    options: RemoteOptions,
    shared: Arc<Shared>,
    blobs: OnceLock<Vec<Option<Arc<RemoteBlob>>>>,
}

impl RemoteState {
    fn with(options: RemoteOptions) -> Self {
        RemoteState {
            options,
            shared: Arc::default(),
            blobs: OnceLock::new(),
        }
    }

    /// The state for blobs from `source`: its remote options, or the defaults.
    pub(crate) fn for_source(source: &crate::storage::blobs::BlobSource) -> Self {
        match source {
            crate::storage::blobs::BlobSource::CachedBackend(_, options) => {
                RemoteState::with(options.clone())
            }
            _ => RemoteState::default(),
        }
    }
}

impl Drop for RemoteState {
    fn drop(&mut self) {
        // Decompressed chunks still on their way to the cache are worth the wait: the
        // next mount reads them.
        self.shared
            .finish_raw_writes(std::time::Duration::from_secs(5));
    }
}

/// What to fetch in the background after mounting ([`Image::prefetch`]).
#[derive(Clone, Debug)]
pub struct PrefetchOptions {
    /// The files of the bootstrap's prefetch table (and v5 blob readahead ranges).
    pub table: bool,
    /// Every chunk of every remote blob.
    pub all: bool,
    /// Requests in flight at once.
    pub workers: usize,
}

impl Default for PrefetchOptions {
    fn default() -> Self {
        PrefetchOptions {
            table: true,
            all: false,
            workers: 4,
        }
    }
}

impl Image {
    /// Sets how remote blobs are fetched and cached; takes effect for blobs not read yet
    /// (call it before serving).
    pub fn set_remote_options(&mut self, options: RemoteOptions) {
        self.remote = RemoteState::with(options);
    }

    /// The counters of remote reads (all zero when every blob is local).
    pub fn fetch_metrics(&self) -> &Metrics {
        &self.remote.shared.metrics
    }

    /// Waits until the decompressed chunks handed to the cache's raw files so far are
    /// written, at most `timeout` (call it before exiting: a later mount reads them).
    pub fn finish_cache_writes(&self, timeout: std::time::Duration) {
        self.remote.shared.finish_raw_writes(timeout);
    }

    /// Has the kernel read the cache's decompressed chunks into memory in the
    /// background, blob by blob, at most `budget` bytes in all; returns the bytes asked
    /// for. A mount calls it as it starts: a restart's reads are mostly of chunks that
    /// earlier mounts read, and are then served from memory instead of waiting on the
    /// disk one block at a time. Stored (compressed) chunks are not read ahead: those a
    /// mount read are in the raw files too.
    pub fn warm_cache(&self, budget: u64) -> u64 {
        let mut asked = 0;
        if self.remote.options.cache.is_none() {
            return asked;
        }
        for b in 0..self.blobs.len() {
            if asked >= budget {
                break;
            }
            if let Some(remote) = self.remote_blob(b) {
                asked += remote.read_ahead_cached(budget - asked);
            }
        }
        asked
    }

    /// The remote reader of blob `blob`, if it lives behind a backend and its chunks can
    /// be planned (not eStargz layers, whose stored sizes are only bounds).
    pub(crate) fn remote_blob(&self, blob: usize) -> Option<&Arc<RemoteBlob>> {
        self.remote
            .blobs
            .get_or_init(|| self.build_remote_blobs())
            .get(blob)?
            .as_ref()
    }

    fn build_remote_blobs(&self) -> Vec<Option<Arc<RemoteBlob>>> {
        let mut extents: Vec<Vec<(u64, u32)>> = vec![Vec::new(); self.blobs.len()];
        let mut raw_extents: Vec<Vec<(u64, u32)>> = vec![Vec::new(); self.blobs.len()];
        let remote: Vec<bool> = self
            .blob_files
            .iter()
            .zip(&self.blobs)
            .map(|(f, b)| {
                b.compressor != Compressor::Gzip && f.as_ref().is_ok_and(|f| f.backend().is_some())
            })
            .collect();
        if !remote.contains(&true) {
            return vec![None; self.blobs.len()];
        }
        for info in self.chunk_table() {
            let b = info.blob_index as usize;
            let Some(Ok(file)) = self.blob_files.get(b) else {
                continue;
            };
            if !remote[b] {
                continue;
            }
            let fits = info
                .compressed_offset
                .checked_add(info.compressed_size as u64)
                .is_some_and(|end| end <= file.len)
                && (info.compressed_size as u64) <= 2 * MAX_CHUNK_SIZE;
            if !fits {
                continue;
            }
            let list = &mut extents[b];
            let i = info.index as usize;
            if list.len() <= i {
                list.resize(i + 1, (0, 0));
            }
            list[i] = (info.compressed_offset, info.compressed_size);
            // The raw file is sparse, but not boundless: a chunk placed absurdly far is
            // not cached decompressed (its stored bytes still are).
            let raw_fits = info
                .uncompressed_offset
                .checked_add(info.uncompressed_size as u64)
                .is_some_and(|end| end <= MAX_RAW_FILE)
                && info.uncompressed_size as u64 <= MAX_CHUNK_SIZE;
            if raw_fits {
                let raw = &mut raw_extents[b];
                if raw.len() <= i {
                    raw.resize(i + 1, (0, 0));
                }
                raw[i] = (info.uncompressed_offset, info.uncompressed_size);
            }
        }
        for (list, entry) in extents.iter_mut().zip(&self.blobs) {
            list.resize(
                crate::storage::cache::map_len(entry.chunk_count, list.len()),
                (0, 0),
            );
        }
        let cache = self
            .remote
            .options
            .cache
            .as_ref()
            .map(crate::storage::cache::CacheDir::open);
        self.blob_files
            .iter()
            .zip(extents)
            .zip(raw_extents)
            .zip(remote)
            .enumerate()
            .map(|(b, (((file, extents), raw_extents), remote))| {
                let file = file.as_ref().ok().filter(|_| remote)?;
                let (backend, id) = file.backend()?;
                Some(Arc::new(RemoteBlob::new(
                    BlobPlace {
                        backend: backend.clone(),
                        blob_id: id,
                        len: file.len,
                        extents,
                        raw_extents,
                        chunk_size: self.blobs[b].chunk_size,
                    },
                    &self.remote.options,
                    cache.as_ref(),
                    self.remote.shared.clone(),
                    self.checker(b),
                )))
            })
            .collect()
    }

    /// With `validate`, the check of blob `blob`'s stored chunks against the bootstrap's
    /// digests (what it needs of the chunk table copied, so fetch threads can run it
    /// alone); without, none.
    fn checker(&self, blob: usize) -> Option<Checker> {
        if !self.validate {
            return None;
        }
        let entry = &self.blobs[blob];
        let (compressor, digester) = (entry.compressor, entry.digester);
        let mut chunks: Vec<Option<ChunkFacts>> = Vec::new();
        for info in self.chunk_table() {
            if info.blob_index as usize != blob {
                continue;
            }
            let i = info.index as usize;
            if chunks.len() <= i {
                chunks.resize(i + 1, None);
            }
            chunks[i] = Some(ChunkFacts {
                digest: info.digest,
                size: info.uncompressed_size,
                compressed: info.compressed || info.compressed_size != info.uncompressed_size,
            });
        }
        Some(Arc::new(move |index: u32, stored: &[u8]| {
            let facts = chunks
                .get(index as usize)
                .copied()
                .flatten()
                .ok_or_else(|| "not in the chunk table".to_string())?;
            let digest = if facts.compressed {
                let mut out = vec![0u8; facts.size as usize];
                compress::decompress(compressor, stored, &mut out)
                    .map_err(|e| format!("does not decompress: {}", crate::error::Chain(&e)))?;
                compress::digest(digester, &out)
            } else {
                compress::digest(digester, stored)
            };
            if digest != facts.digest {
                return Err(format!(
                    "digest {} does not match the bootstrap's {}",
                    hex::encode(digest),
                    hex::encode(facts.digest)
                ));
            }
            Ok(())
        }))
    }

    /// Fetches what `options` asks for into the cache (or the in-memory store), in
    /// order, with `options.workers` requests in flight; returns when done. Progress is
    /// in [`Image::fetch_metrics`]. Failed fetches are logged (the first few) and
    /// counted, and do not stop the rest.
    pub fn prefetch(&self, options: &PrefetchOptions) -> Result<(), ReadError> {
        let metrics = self.fetch_metrics();
        let blobs = (0..self.blobs.len())
            .filter(|&b| self.remote_blob(b).is_some())
            .count();
        if blobs == 0 {
            return Ok(());
        }
        metrics.prefetch_state.store(1, Ordering::Relaxed);
        let mut items: Vec<(usize, u32)> = Vec::new();
        let mut seen: HashSet<(usize, u32)> = HashSet::new();
        let mut push = |items: &mut Vec<(usize, u32)>, blob: usize, chunk: u32| {
            if self.remote_blob(blob).is_some() && seen.insert((blob, chunk)) {
                items.push((blob, chunk));
            }
        };
        if options.table {
            let mut files = 0u64;
            let mut visited: HashSet<Nid> = HashSet::new();
            for nid in self.prefetch_table()? {
                let mut stack = vec![(nid, 0usize)];
                while let Some((nid, depth)) = stack.pop() {
                    if !visited.insert(nid) || depth > MAX_DEPTH {
                        continue;
                    }
                    files += 1;
                    let kind = self.stat(nid)?.mode & libc::S_IFMT;
                    if kind == libc::S_IFDIR {
                        let entries = self.read_dir(nid)?;
                        // Reversed onto the stack: children come off in directory order.
                        for e in entries.iter().rev() {
                            if e.name != b"." && e.name != b".." {
                                stack.push((e.nid, depth + 1));
                            }
                        }
                    } else if kind == libc::S_IFREG {
                        for addr in self.chunk_addrs(nid)?.into_iter().flatten() {
                            push(&mut items, addr.blob_index as usize, addr.chunk_index);
                        }
                    }
                }
            }
            metrics.prefetch_files.store(files, Ordering::Relaxed);
            if self.fs_version() == 5 {
                for b in 0..self.blobs.len() {
                    let (Some(remote), Some((offset, size))) =
                        (self.remote_blob(b), self.blob_readahead(b))
                    else {
                        continue;
                    };
                    let range = offset as u64..offset as u64 + size as u64;
                    for &c in remote.chunks_in_order() {
                        if range.contains(&self.chunk_stored_offset(b, c)) {
                            push(&mut items, b, c);
                        }
                    }
                }
            }
        }
        if options.all {
            for b in 0..self.blobs.len() {
                if let Some(remote) = self.remote_blob(b) {
                    for &c in remote.chunks_in_order() {
                        push(&mut items, b, c);
                    }
                }
            }
        }
        let total_bytes: u64 = items
            .iter()
            .filter_map(|&(b, c)| Some(self.remote_blob(b)?.stored_len(c) as u64))
            .sum();
        metrics
            .prefetch_chunks_total
            .store(items.len() as u64, Ordering::Relaxed);
        metrics
            .prefetch_bytes_total
            .store(total_bytes, Ordering::Relaxed);
        log::info!(
            "prefetching {} chunk(s), {total_bytes} stored bytes, from {blobs} remote blob(s)",
            items.len()
        );
        let cursor = AtomicUsize::new(0);
        let failures = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..options.workers.max(1) {
                scope.spawn(|| loop {
                    let i = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some(&(b, c)) = items.get(i) else {
                        break;
                    };
                    let Some(remote) = self.remote_blob(b) else {
                        continue;
                    };
                    if let Err(e) = remote.prefetch(c) {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            log::warn!(
                                "prefetch of blob {}: {}",
                                remote.blob_id(),
                                crate::error::Chain(&e)
                            );
                        }
                    }
                    metrics.prefetch_chunks_done.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        metrics.prefetch_state.store(2, Ordering::Relaxed);
        log::info!(
            "prefetch done: {} request(s), {} bytes, {} failure(s)",
            metrics.prefetch_requests.load(Ordering::Relaxed),
            metrics.prefetch_bytes.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed)
        );
        Ok(())
    }

    /// Stored offset of chunk `chunk` of blob `blob` (past every blob's end if unknown).
    fn chunk_stored_offset(&self, blob: usize, chunk: u32) -> u64 {
        self.chunk_info(
            crate::format::v6::BlobIndex(blob as u32),
            crate::format::v6::ChunkIndex(chunk),
        )
        .map_or(u64::MAX, |i| i.compressed_offset)
    }
}
