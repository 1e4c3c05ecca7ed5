//! Where the layer's chunks are: each file's chunks checked to tile it and turned into
//! chunk table entries of the layer's blob, and every chunk checked against the layer
//! file when it is at hand.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::error::{EntryError, LayerChunkError, StargzError};
use super::toc::{TocChunk, TocEntry};
use super::{StargzLayer, DEFAULT_CHUNK_SIZE};
use crate::format::v6::tables::ChunkInfo;

/// Most bytes a gzip member can take to hold `size` bytes of data, the bound upstream
/// records as a chunk's stored size: the TOC says where a chunk's member starts, not
/// where it ends (it may run on into the tar headers of the entries after it).
pub fn gzip_bound(size: u64) -> u64 {
    size + 23 + 5 * (size / 16384) + 128
}

/// The error for a `problem` with entry `at` of the TOC at `toc`.
fn entry_error(toc: &Path, entries: &[TocEntry], at: usize, problem: EntryError) -> StargzError {
    StargzError::Entry {
        toc: toc.to_path_buf(),
        index: at,
        name: entries[at].name.clone(),
        problem,
    }
}

/// A regular file's chunks, as its `reg` entry and the `chunk` entries after it list
/// them.
pub(super) struct FileChunks {
    /// Index of the `reg` entry in the TOC.
    pub(super) entry: usize,
    /// The file's size.
    pub(super) size: u64,
    /// Its chunks in TOC order.
    pub(super) chunks: Vec<TocChunk>,
}

/// The layer's chunks, checked and placed in its blob.
pub(super) struct Placed {
    /// Chunk size: every chunk but a file's last is exactly this long.
    pub(super) chunk_size: u32,
    /// Distinct chunks, in blob order.
    pub(super) chunks: Vec<ChunkInfo>,
    /// For each chunk, the index and name of the entry it came from (its first user).
    pub(super) chunk_entries: Vec<(usize, String)>,
    /// For each file, in the order given, its chunks as indexes into `chunks`.
    pub(super) per_file: Vec<Vec<usize>>,
}

/// Checks each file's chunks and turns them into chunk table entries of the layer's
/// blob, `blob_index`. `want_chunk_size` is the chunk size the image must have, if one
/// is set; `data_size` the layer's size, if known.
pub(super) fn place_chunks<'f>(
    path: &Path,
    entries: &[TocEntry],
    files: impl Iterator<Item = &'f FileChunks>,
    want_chunk_size: Option<u32>,
    blob_index: u32,
    data_size: Option<u64>,
) -> Result<Placed, StargzError> {
    let files: Vec<&FileChunks> = files.collect();
    // Resolve sizes: 0 means "to the end of the file".
    let mut resolved: Vec<Vec<TocChunk>> = Vec::with_capacity(files.len());
    let mut full_size: Option<(u64, usize)> = None;
    let mut largest = 0u64;
    for file in &files {
        let at = &file.entry;
        let err = |problem| entry_error(path, entries, *at, problem);
        let mut list = file.chunks.clone();
        list.sort_by_key(|c| c.file_offset);
        let mut expect = 0u64;
        let n = list.len();
        for (k, c) in list.iter_mut().enumerate() {
            if c.file_offset != expect {
                return Err(err(EntryError::ChunksNotTiling {
                    expected: expect,
                    found: c.file_offset,
                }));
            }
            let rest = file.size - c.file_offset;
            if c.size == 0 || (k == n - 1 && c.size > rest) {
                if k != n - 1 {
                    return Err(err(EntryError::ChunkWithoutSize {
                        file_offset: c.file_offset,
                    }));
                }
                c.size = rest;
            }
            if c.size == 0 || c.size > rest {
                return Err(err(EntryError::ChunkOverrun {
                    file_offset: c.file_offset,
                    size: c.size,
                    file_size: file.size,
                }));
            }
            if k + 1 < n {
                match full_size {
                    Some((s, _)) if s != c.size => {
                        return Err(err(EntryError::ChunkSizeDiffers {
                            expected: s,
                            found: c.size,
                        }))
                    }
                    _ => full_size = Some((c.size, *at)),
                }
            }
            largest = largest.max(c.size);
            expect += c.size;
        }
        if expect != file.size && file.size > 0 {
            return Err(err(EntryError::ChunksShort {
                covered: expect,
                file_size: file.size,
            }));
        }
        resolved.push(list);
    }
    let chunk_size = match (full_size, want_chunk_size) {
        (Some((s, at)), want) => {
            if !s.is_power_of_two() || !(0x1000..=0x100_0000).contains(&s) {
                return Err(entry_error(
                    path,
                    entries,
                    at,
                    EntryError::ChunkSizeInvalid { found: s },
                ));
            }
            if let Some(w) = want.filter(|&w| w as u64 != s) {
                return Err(entry_error(
                    path,
                    entries,
                    at,
                    EntryError::ChunkSizeNotImage {
                        expected: w,
                        found: s,
                    },
                ));
            }
            s as u32
        }
        (None, Some(w)) => w,
        (None, None) => DEFAULT_CHUNK_SIZE,
    };
    if largest > chunk_size as u64 {
        let at = files
            .iter()
            .zip(&resolved)
            .find(|(_, l)| l.iter().any(|c| c.size == largest))
            .map(|(f, _)| &f.entry)
            .expect("largest came from some file");
        return Err(entry_error(
            path,
            entries,
            *at,
            EntryError::ChunkTooLarge {
                found: largest,
                chunk_size,
            },
        ));
    }

    // Distinct chunks by offset, in blob order.
    let mut by_offset: BTreeMap<u64, (u64, Option<[u8; 32]>, usize)> = BTreeMap::new();
    for (file, list) in files.iter().zip(&resolved) {
        let at = &file.entry;
        for c in list {
            let err = |problem| entry_error(path, entries, *at, problem);
            let digest = c.digest.ok_or_else(|| {
                err(EntryError::ChunkWithoutDigest {
                    file_offset: c.file_offset,
                })
            })?;
            match by_offset.get(&c.offset) {
                Some((size, d, _)) if *size == c.size && *d == Some(digest) => {}
                Some((_, _, other)) => {
                    return Err(err(EntryError::ChunkConflict {
                        offset: c.offset,
                        other: *other,
                    }))
                }
                None => {
                    by_offset.insert(c.offset, (c.size, Some(digest), *at));
                }
            }
        }
    }
    let offsets: Vec<u64> = by_offset.keys().copied().collect();
    let mut chunks = Vec::with_capacity(offsets.len());
    let mut names = Vec::with_capacity(offsets.len());
    let mut index_of: HashMap<u64, usize> = HashMap::new();
    let mut uncompressed_offset = 0u64;
    for (k, (&offset, &(size, digest, at))) in by_offset.iter().enumerate() {
        let gap = match (offsets.get(k + 1), data_size) {
            (Some(next), _) => Some(next - offset),
            (None, Some(end)) => Some(end.checked_sub(offset).ok_or_else(|| {
                entry_error(
                    path,
                    entries,
                    at,
                    EntryError::ChunkBeyondLayer {
                        offset,
                        layer_size: end,
                    },
                )
            })?),
            (None, None) => None,
        };
        // A gzip member holds at least a 10-byte header, a byte of data and an 8-byte
        // trailer.
        if let Some(room) = gap.filter(|&g| g < 19) {
            return Err(entry_error(
                path,
                entries,
                at,
                EntryError::ChunkNoRoom { offset, room },
            ));
        }
        let bound = gap.map_or(gzip_bound(size), |g| g.min(gzip_bound(size)));
        let compressed_size = u32::try_from(bound).map_err(|_| {
            entry_error(
                path,
                entries,
                at,
                EntryError::ChunkStoredSize { offset, bound },
            )
        })?;
        index_of.insert(offset, chunks.len());
        chunks.push(ChunkInfo {
            digest: digest.expect("checked above"),
            blob_index,
            compressed: true,
            compressed_size,
            uncompressed_size: size as u32,
            compressed_offset: offset,
            uncompressed_offset,
            file_offset: 0,
            index: chunks.len() as u32,
        });
        names.push((at, entries[at].name.clone()));
        uncompressed_offset += size.div_ceil(0x1000) * 0x1000;
    }
    let mut seen = vec![false; chunks.len()];
    let per_file = resolved
        .iter()
        .map(|list| {
            list.iter()
                .map(|c| {
                    let i = index_of[&c.offset];
                    if !std::mem::replace(&mut seen[i], true) {
                        chunks[i].file_offset = c.file_offset; // its first user's offset
                    }
                    i
                })
                .collect()
        })
        .collect();
    Ok(Placed {
        chunk_size,
        chunks,
        chunk_entries: names,
        per_file,
    })
}

/// Checks every chunk of `layer` against the eStargz file at `blob`: inside the file,
/// a gzip member that inflates to the chunk's size, with the TOC's digest. Returns the
/// file's size.
pub fn check_layer(blob: &Path, layer: &StargzLayer) -> Result<u64, StargzError> {
    use sha2::Digest;
    let io = |what, source| StargzError::LayerIo {
        layer: blob.to_path_buf(),
        what,
        source,
    };
    let file = crate::storage::blobs::BlobFile::open(blob)
        .map_err(|e| io("cannot open the eStargz layer", e))?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for (info, (index, name)) in layer.chunks.iter().zip(&layer.chunk_entries) {
        let err = |problem| StargzError::LayerChunk {
            layer: blob.to_path_buf(),
            index: *index,
            name: name.clone(),
            offset: info.compressed_offset,
            problem,
        };
        let Some(room) = file
            .len
            .checked_sub(info.compressed_offset)
            .filter(|&r| r > 0)
        else {
            return Err(err(LayerChunkError::Beyond {
                layer_size: file.len,
            }));
        };
        // At most the chunk's bound, which is a u32.
        let len = (info.compressed_size as usize).min(usize::try_from(room).unwrap_or(usize::MAX));
        buf.resize(len, 0);
        file.read_exact_at(&mut buf, info.compressed_offset)
            .map_err(|e| io("cannot read the eStargz layer", e))?;
        out.resize(info.uncompressed_size as usize, 0);
        crate::storage::compress::decompress(crate::format::Compressor::Gzip, &buf, &mut out)
            .map_err(|reason| {
                err(LayerChunkError::Inflate {
                    size: info.uncompressed_size,
                    reason,
                })
            })?;
        let got: [u8; 32] = sha2::Sha256::digest(&out).into();
        if got != info.digest {
            return Err(err(LayerChunkError::Digest {
                expected: hex::encode(info.digest),
                found: hex::encode(got),
            }));
        }
    }
    Ok(file.len)
}
