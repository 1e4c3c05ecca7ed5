//! Writing compaction's new blobs: each group's used chunks are read as stored, checked
//! against their records and digests, and appended to a new blob that is renamed to its
//! digest once complete; the tree's chunk records are then pointed at their new places.

use std::collections::HashMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::{CompactError, CompactSummary, Usage};
use crate::builder::blob::BlobWriter;
use crate::builder::output::PendingFile;
use crate::builder::tree::{FileData, Tree};
use crate::format::v6::tables::{BlobEntry, ChunkInfo};
use crate::storage::backend::Backend;
use crate::storage::cache::{map_len, BlobCache, CacheDir};
use crate::storage::compress;

/// What new blobs are made from.
pub(super) struct Source<'a> {
    /// The image's blobs.
    pub(super) blobs: &'a [BlobEntry],
    /// Which of their chunks the tree uses.
    pub(super) usage: &'a [Usage],
    /// Where the blobs are read.
    pub(super) backend: &'a dyn Backend,
    /// The image's chunk size: no chunk holds more.
    pub(super) chunk_size: u32,
    /// Where new blobs place uncompressed offsets: by the image's version (a v5 image
    /// gets upstream 2.2.0's dense v5 offsets, v6 its 4 KiB blocks).
    pub(super) layout: crate::builder::blob::Layout,
    /// The chunk cache shared with mounts (`--cache-dir`): chunks found there are not
    /// read from the backend, and chunks read are put there.
    pub(super) cache: Option<std::sync::Arc<CacheDir>>,
}

/// The cache of blob `b` of `source`, if it has a cache directory that can hold it. The
/// map is sized as a mount sizes it ([`map_len`]), so that compaction and mounts share it
/// instead of resetting it.
fn blob_cache(source: &Source, b: usize, blob_size: u64) -> Option<BlobCache> {
    let cache = source.cache.as_ref()?;
    let entry = &source.blobs[b];
    let chunks = &source.usage[b].chunks;
    let known = chunks.keys().next_back().map_or(0, |&i| i as usize + 1);
    let mut extents = vec![(0u64, 0u32); map_len(entry.chunk_count, known)];
    for (&i, info) in chunks {
        extents[i as usize] = (info.compressed_offset, info.compressed_size);
    }
    cache.blob(&entry.blob_id, blob_size, &extents, entry.chunk_size)
}

/// The most bytes a chunk of `chunk_size` bytes may be stored in: compressed data is kept
/// only when smaller, and no codec here grows data by half.
pub(super) fn stored_limit(chunk_size: u32) -> u64 {
    chunk_size as u64 + chunk_size as u64 / 2
}

/// Checks a chunk record of blob `blob_id` (of `blob_size` bytes) against the image's
/// chunk size and the blob's size, before anything is allocated or read for it: a
/// bootstrap is input, and its records could ask for gigabytes or for offsets that wrap.
pub(super) fn check_chunk(
    blob_id: &str,
    info: &ChunkInfo,
    chunk_size: u32,
    blob_size: u64,
    backend: &dyn Backend,
) -> Result<(), CompactError> {
    let limit = stored_limit(chunk_size);
    if info.uncompressed_size > chunk_size || info.compressed_size as u64 > limit {
        return Err(CompactError::ChunkTooLarge {
            blob_id: blob_id.to_string(),
            chunk: info.index,
            uncompressed_size: info.uncompressed_size,
            compressed_size: info.compressed_size,
            chunk_size,
            stored_limit: limit,
        });
    }
    let end = info
        .compressed_offset
        .checked_add(info.compressed_size as u64);
    if end.is_none_or(|end| end > blob_size) {
        return Err(CompactError::ChunkPastEnd {
            blob_id: blob_id.to_string(),
            chunk: info.index,
            offset: info.compressed_offset,
            size: info.compressed_size,
            blob_size,
            backend: backend.describe(),
        });
    }
    Ok(())
}

/// A new blob, in place under its digest.
pub(super) struct NewBlob {
    /// Its blob table entry.
    pub(super) entry: BlobEntry,
    /// Where each used chunk went: (old blob index, old chunk index) -> its new record.
    pub(super) moves: Vec<((u32, u32), ChunkInfo)>,
    /// Its size in bytes.
    pub(super) size: u64,
    /// Its file.
    pub(super) path: PathBuf,
}

/// Writes the new blob of one group into `dir`: under a temporary name of its own (removed
/// on failure), then synced and renamed to its digest, so that a crash cannot leave a
/// short file there.
pub(super) fn write_group(
    source: &Source,
    group: &[usize],
    dir: &Path,
    template: &BlobEntry,
    summary: &mut CompactSummary,
) -> Result<NewBlob, CompactError> {
    let Source {
        blobs,
        usage,
        backend,
        chunk_size,
        layout,
        cache: _,
    } = *source;
    let write_err = |what: &'static str| {
        move |source| CompactError::Write {
            path: dir.to_path_buf(),
            what,
            source,
        }
    };
    let (mut pending, file) =
        PendingFile::create_in(dir, "compact").map_err(|e| CompactError::Output(Box::new(e)))?;
    let mut writer = BlobWriter::new(
        BufWriter::with_capacity(1 << 20, crate::builder::output::Writeback::new(file)),
        template.compressor,
        template.digester,
        template.chunk_size,
    )
    .with_layout(layout);
    let mut moves = Vec::new();
    let mut seen: HashMap<[u8; 32], u32> = HashMap::new();
    let mut stored = Vec::new();
    for &i in group {
        let b = &blobs[i];
        // A blob the cache holds has its size recorded there (its id is its digest).
        let cached_size = source
            .cache
            .as_ref()
            .and_then(|c| crate::storage::cache::cached_blob_size(c.path(), &b.blob_id));
        let size = match cached_size {
            Some(n) => n,
            None => backend
                .size(&b.blob_id)
                .map_err(|source| CompactError::BlobSize {
                    blob_id: b.blob_id.clone(),
                    source,
                })?,
        };
        let cache = blob_cache(source, i, size);
        for info in usage[i].chunks.values() {
            check_chunk(&b.blob_id, info, chunk_size, size, backend)?;
            let (offset, len) = (info.compressed_offset, info.compressed_size);
            if let Some(bytes) = cache.as_ref().and_then(|c| c.read(info.index, offset, len)) {
                summary.bytes_from_cache += bytes.len() as u64;
                stored = bytes;
            } else {
                stored.resize(len as usize, 0);
                backend
                    .read_at(&b.blob_id, offset, &mut stored)
                    .map_err(|source| CompactError::ReadChunk {
                        blob_id: b.blob_id.clone(),
                        chunk: info.index,
                        offset,
                        size: len,
                        source,
                    })?;
                summary.bytes_read += stored.len() as u64;
            }
            let mut raw = vec![0u8; info.uncompressed_size as usize];
            let compressed = info.compressed || info.compressed_size != info.uncompressed_size;
            if compressed {
                compress::decompress(b.compressor, &stored, &mut raw).map_err(|source| {
                    CompactError::Decompress {
                        blob_id: b.blob_id.clone(),
                        chunk: info.index,
                        offset: info.compressed_offset,
                        source,
                    }
                })?;
            } else {
                raw.copy_from_slice(&stored);
            }
            if compress::digest(b.digester, &raw) != info.digest {
                return Err(CompactError::Digest {
                    blob_id: b.blob_id.clone(),
                    chunk: info.index,
                    offset: info.compressed_offset,
                });
            }
            // Checked: worth keeping for the next mount or compaction.
            if let Some(c) = &cache {
                if !c.known_ready(info.index) {
                    c.store(offset, &stored, &[(info.index, offset, len)]);
                }
            }
            // Chunks with the same content in several merged blobs are stored once.
            let index = match seen.get(&info.digest) {
                Some(&n) => n,
                None => {
                    let n = writer
                        .add_chunk(
                            info.digest,
                            &raw,
                            compressed.then_some(stored.as_slice()),
                            info.file_offset,
                        )
                        .map_err(write_err("cannot write a new blob"))?;
                    seen.insert(info.digest, n);
                    n
                }
            };
            moves.push(((i as u32, info.index), index));
        }
    }
    let (finished, chunks) = writer
        .finish(None)
        .map_err(write_err("cannot write a new blob"))?;
    pending.retarget(dir.join(&finished.entry.blob_id));
    let path = pending
        .commit()
        .map_err(|e| CompactError::Output(Box::new(e)))?;
    let moves = moves
        .into_iter()
        .map(|(old, n)| (old, chunks[n as usize].clone()))
        .collect();
    Ok(NewBlob {
        entry: finished.entry,
        moves,
        size: finished.size,
        path,
    })
}

/// Points every file's chunks at the new blob table.
pub(super) fn remap(
    mut tree: Tree,
    kept: &HashMap<u32, u32>,
    moved: &HashMap<(u32, u32), (usize, ChunkInfo)>,
    new_base: u32,
) -> Tree {
    for node in &mut tree.nodes {
        if let FileData::Chunks(list) = &mut node.data {
            for c in list.iter_mut() {
                if let Some((n, info)) = moved.get(&(c.blob_index, c.index)) {
                    *c = ChunkInfo {
                        blob_index: new_base + *n as u32,
                        file_offset: c.file_offset,
                        ..info.clone()
                    };
                } else {
                    c.blob_index = kept[&c.blob_index];
                }
            }
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunk records at and past each limit: the image's chunk size, the stored-size
    /// limit, the blob's end, and offsets that wrap.
    #[test]
    fn chunk_records_are_checked_at_their_limits() {
        const CS: u32 = 0x1_0000;
        const BLOB: u64 = 0x10_0000;
        let limit = stored_limit(CS) as u32;
        // (name, compressed_offset, compressed_size, uncompressed_size, accepted)
        let cases: [(&str, u64, u32, u32, bool); 8] = [
            ("typical", 0x1000, 0x800, CS, true),
            ("ends at the blob's end", BLOB - 0x800, 0x800, 0x1000, true),
            ("a full chunk stored at the limit", 0, limit, CS, true),
            ("one byte past the blob", BLOB - 0x7ff, 0x800, 0x1000, false),
            ("starts past the blob", BLOB, 1, 1, false),
            ("offset wraps", u64::MAX - 1, 0x10, 0x10, false),
            ("larger than a chunk", 0, 0x800, CS + 1, false),
            ("stored past the limit", 0, limit + 1, CS, false),
        ];
        let backend = crate::storage::backend::LocalFs::dir(Path::new("/nowhere"));
        for (name, offset, stored, raw, accepted) in cases {
            let info = ChunkInfo {
                digest: [0; 32],
                blob_index: 0,
                compressed: true,
                compressed_size: stored,
                uncompressed_size: raw,
                compressed_offset: offset,
                uncompressed_offset: 0,
                file_offset: 0,
                index: 7,
            };
            let result = check_chunk("b", &info, CS, BLOB, &backend);
            assert_eq!(result.is_ok(), accepted, "{name}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().starts_with("blob b: chunk 7 "), "{name}: {e}");
            }
        }
    }
}
