//! Where the layer's chunks are: each file's chunks checked to tile it and turned into
//! chunk table entries of the layer's blob, and every chunk checked against the layer
//! file when it is at hand.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::toc::{TocChunk, TocEntry};
use super::{bad, StargzLayer, DEFAULT_CHUNK_SIZE};
use crate::builder::BuildError;
use crate::format::v6::tables::ChunkInfo;

/// Most bytes a gzip member can take to hold `size` bytes of data, the bound upstream
/// records as a chunk's stored size: the TOC says where a chunk's member starts, not
/// where it ends (it may run on into the tar headers of the entries after it).
pub fn gzip_bound(size: u64) -> u64 {
    size + 23 + 5 * (size / 16384) + 128
}

/// Checks each file's chunks and turns them into chunk table entries. Returns the chunk
/// size, the distinct chunks in blob order, the entry name of each, and each file's list
/// of indexes into them.
#[allow(clippy::type_complexity)]
pub(super) fn place_chunks(
    path: &Path,
    entries: &[TocEntry],
    files: &[(Vec<Vec<u8>>, usize, Vec<TocChunk>)],
    want_chunk_size: Option<u32>,
    blob_index: u32,
    data_size: Option<u64>,
) -> Result<(u32, Vec<ChunkInfo>, Vec<String>, Vec<Vec<usize>>), BuildError> {
    // Resolve sizes: 0 means "to the end of the file".
    let mut resolved: Vec<Vec<TocChunk>> = Vec::with_capacity(files.len());
    let mut full_size: Option<(u64, usize)> = None;
    let mut largest = 0u64;
    for (_, at, list) in files {
        let e = &entries[*at];
        let err = |what: String| bad(path, Some(*at), &e.name, what);
        let mut list = list.clone();
        list.sort_by_key(|c| c.file_offset);
        let mut expect = 0u64;
        let n = list.len();
        for (k, c) in list.iter_mut().enumerate() {
            if c.file_offset != expect {
                return Err(err(format!(
                    "chunks do not tile the file: a chunk starts at {} where {expect} was expected",
                    c.file_offset
                )));
            }
            let rest = e.size - c.file_offset;
            if c.size == 0 || (k == n - 1 && c.size > rest) {
                if k != n - 1 {
                    return Err(err(format!(
                        "chunk at {} has no size but is not the file's last",
                        c.file_offset
                    )));
                }
                c.size = rest;
            }
            if c.size == 0 || c.size > rest {
                return Err(err(format!(
                    "chunk at {} of {} bytes overruns the file's {} bytes",
                    c.file_offset, c.size, e.size
                )));
            }
            if k + 1 < n {
                match full_size {
                    Some((s, _)) if s != c.size => {
                        return Err(err(format!(
                            "chunk size {} differs from the layer's {s}; RAFS v6 needs one chunk size per image",
                            c.size
                        )))
                    }
                    _ => full_size = Some((c.size, *at)),
                }
            }
            largest = largest.max(c.size);
            expect += c.size;
        }
        if expect != e.size && e.size > 0 {
            return Err(err(format!(
                "chunks cover {expect} of the file's {} bytes",
                e.size
            )));
        }
        resolved.push(list);
    }
    let chunk_size = match (full_size, want_chunk_size) {
        (Some((s, at)), want) => {
            if !s.is_power_of_two() || !(0x1000..=0x100_0000).contains(&s) {
                return Err(bad(
                    path,
                    Some(at),
                    &entries[at].name,
                    format!("chunk size {s} is not a power of two between 4 KiB and 16 MiB, which RAFS v6 needs"),
                ));
            }
            if let Some(w) = want.filter(|&w| w as u64 != s) {
                return Err(bad(
                    path,
                    Some(at),
                    &entries[at].name,
                    format!("chunk size 0x{s:x} differs from the parent image's 0x{w:x}"),
                ));
            }
            s as u32
        }
        (None, Some(w)) => w,
        (None, None) => DEFAULT_CHUNK_SIZE,
    };
    if largest > chunk_size as u64 {
        let (_, at, _) = files
            .iter()
            .zip(&resolved)
            .find(|(_, l)| l.iter().any(|c| c.size == largest))
            .map(|(f, _)| f)
            .expect("largest came from some file");
        return Err(bad(
            path,
            Some(*at),
            &entries[*at].name,
            format!("a single chunk of {largest} bytes exceeds the image's chunk size 0x{chunk_size:x}; rebuild the layer with a chunk size of at most 16 MiB"),
        ));
    }

    // Distinct chunks by offset, in blob order.
    let mut by_offset: BTreeMap<u64, (u64, Option<[u8; 32]>, usize)> = BTreeMap::new();
    for ((_, at, _), list) in files.iter().zip(&resolved) {
        for c in list {
            let err = |what: String| bad(path, Some(*at), &entries[*at].name, what);
            let digest = c.digest.ok_or_else(|| {
                err(format!(
                    "chunk at {} has no chunkDigest (nor a file digest covering it)",
                    c.file_offset
                ))
            })?;
            match by_offset.get(&c.offset) {
                Some((size, d, _)) if *size == c.size && *d == Some(digest) => {}
                Some((_, _, other)) => {
                    return Err(err(format!(
                        "chunk at layer offset {} is also entry {other}'s, with other contents",
                        c.offset
                    )))
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
                bad(
                    path,
                    Some(at),
                    &entries[at].name,
                    format!("chunk at offset {offset} lies beyond the layer's {end} bytes"),
                )
            })?),
            (None, None) => None,
        };
        // A gzip member holds at least a 10-byte header, a byte of data and an 8-byte
        // trailer.
        if gap.is_some_and(|g| g < 19) {
            return Err(bad(
                path,
                Some(at),
                &entries[at].name,
                format!(
                    "chunk at layer offset {offset} has only {} bytes before the next one or the layer's end",
                    gap.unwrap_or(0)
                ),
            ));
        }
        let bound = gap.map_or(gzip_bound(size), |g| g.min(gzip_bound(size)));
        let compressed_size = u32::try_from(bound)
            .map_err(|_| bad(path, Some(at), &entries[at].name, "chunk too large"))?;
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
        names.push(entries[at].name.clone());
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
    Ok((chunk_size, chunks, names, per_file))
}

/// Checks every chunk of `layer` against the eStargz file at `blob`: inside the file,
/// a gzip member that inflates to the chunk's size, with the TOC's digest. Returns the
/// file's size.
pub fn check_layer(blob: &Path, layer: &StargzLayer, toc: &Path) -> Result<u64, BuildError> {
    use sha2::Digest;
    let file = crate::storage::blobs::BlobFile::open(blob)
        .map_err(|e| BuildError::io(blob, "cannot open the eStargz layer", e))?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for (info, name) in layer.chunks.iter().zip(&layer.chunk_names) {
        let err = |what: String| {
            bad(
                toc,
                None,
                name,
                format!("{name:?}: {what} (layer {})", blob.display()),
            )
        };
        if info.compressed_offset >= file.len {
            return Err(err(format!(
                "chunk at offset {} lies beyond the layer's {} bytes",
                info.compressed_offset, file.len
            )));
        }
        let len = (info.compressed_size as u64).min(file.len - info.compressed_offset);
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, info.compressed_offset)
            .map_err(|e| BuildError::io(blob, "cannot read the eStargz layer", e))?;
        out.resize(info.uncompressed_size as usize, 0);
        crate::storage::compress::decompress(crate::format::Compressor::Gzip, &buf, &mut out)
            .map_err(|e| err(format!("chunk at offset {}: {e}", info.compressed_offset)))?;
        let got: [u8; 32] = sha2::Sha256::digest(&out).into();
        if got != info.digest {
            return Err(err(format!(
                "chunk at offset {} has sha256 {}, the TOC says {}",
                info.compressed_offset,
                hex::encode(got),
                hex::encode(info.digest)
            )));
        }
    }
    Ok(file.len)
}
