//! `check`: validates a whole bootstrap (every inode, directory, xattr, symlink and chunk
//! index reachable from the root, and the prefetch table) and reports its blobs, features
//! and prefetch list.

use serde::Serialize;

use crate::format::v6::super_block::flags;
use crate::format::v6::tables::blob_features;
use crate::reader::{Image, Nid, ReadError};

/// One blob as `check` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct BlobReport {
    /// Blob id.
    pub blob_id: String,
    /// Bytes of compressed chunk data.
    pub compressed_data_size: u64,
    /// Size of the blob file.
    pub compressed_size: u64,
    /// Uncompressed (aligned) data size.
    pub uncompressed_size: u64,
    /// Chunk count.
    pub chunk_count: u32,
    /// Feature names.
    pub features: Vec<&'static str>,
    /// Chunk compressor.
    pub compressor: &'static str,
    /// Chunk digester.
    pub digester: &'static str,
}

/// One inode as `check -v` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct EntryReport {
    /// Path in the image.
    pub path: String,
    /// nid.
    pub nid: Nid,
    /// Mode bits.
    pub mode: u32,
    /// Size.
    pub size: u64,
    /// Link count.
    pub nlink: u32,
    /// Chunks the file uses.
    pub chunks: usize,
}

/// What `check` found.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Format version.
    pub fs_version: &'static str,
    /// Superblock feature names.
    pub features: Vec<&'static str>,
    /// Chunk size.
    pub chunk_size: u32,
    /// Inodes the superblock declares.
    pub inodes: u64,
    /// Entries reached from the root.
    pub entries: u64,
    /// Blobs referenced.
    pub blobs: Vec<BlobReport>,
    /// Every entry (filled when verbose).
    pub tree: Vec<EntryReport>,
    /// The prefetch table's entries, in order (always checked and filled).
    pub prefetch: Vec<PrefetchEntry>,
}

/// One prefetch table entry as `check` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct PrefetchEntry {
    /// The nid listed.
    pub nid: Nid,
    /// Its path (a hard link's first name).
    pub path: String,
}

/// Names of the superblock flag bits that are set.
pub fn flag_names(bits: u64) -> Vec<&'static str> {
    [
        (flags::COMPRESSION_NONE, "COMPRESSION_NONE"),
        (flags::COMPRESSION_LZ4, "COMPRESSION_LZ4"),
        (flags::HASH_BLAKE3, "HASH_BLAKE3"),
        (flags::HASH_SHA256, "HASH_SHA256"),
        (flags::EXPLICIT_UID_GID, "EXPLICIT_UID_GID"),
        (flags::HAS_XATTR, "HAS_XATTR"),
        (flags::COMPRESSION_GZIP, "COMPRESSION_GZIP"),
        (flags::COMPRESSION_ZSTD, "COMPRESSION_ZSTD"),
        (flags::INLINED_CHUNK_DIGEST, "INLINED_CHUNK_DIGEST"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// Names of blob feature bits, as upstream 2.2.0 prints them and in its order
/// (nydus-storage 0.6.2 `format_blob_features`).
pub fn blob_feature_names(bits: u32) -> Vec<&'static str> {
    [
        (blob_features::ALIGNED, "aligned"),
        (blob_features::CAP_TAR_TOC, "cap_toc"),
        (blob_features::INLINED_CHUNK_DIGEST, "chunk-digest"),
        (blob_features::CHUNK_INFO_V2, "chunk-v2"),
        (blob_features::INLINED_FS_META, "fs-meta"),
        (blob_features::SEPARATE, "separate"),
        (blob_features::HAS_TAR_HEADER, "tar-header"),
        (blob_features::HAS_TOC, "toc"),
        (blob_features::ZRAN, "zran"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// Bytes of chunk data in a blob, as upstream 2.2.0 reports it: up to the chunk info
/// array, less the tar header in between when the blob has them; the whole compressed
/// size when the blob has no chunk info array.
pub(crate) fn compressed_data_size(b: &crate::format::v6::tables::BlobEntry) -> u64 {
    if b.ci_compressed_size == 0 || b.ci_uncompressed_size == 0 {
        b.compressed_size
    } else if b.features & blob_features::HAS_TAR_HEADER != 0 {
        b.ci_offset
            .saturating_sub(crate::format::blob_toc::TAR_HEADER_SIZE as u64)
    } else {
        b.ci_offset
    }
}

/// Walks and validates the whole image. `verbose` fills `tree`.
pub fn check(image: &Image, verbose: bool) -> Result<CheckReport, ReadError> {
    let sb = image.super_block();
    let mut entries = 0u64;
    let mut tree = Vec::new();
    let chunk_size = sb.chunk_size as u64;
    image.walk(|path, nid| {
        entries += 1;
        let st = image.stat(nid)?;
        image.xattrs(nid)?;
        let mut chunks = 0;
        // RAFS v5 inode digests, as nydusd checks them with digest_validate.
        if st.mode & libc::S_IFMT == libc::S_IFDIR {
            if let Some((inode, what)) = image.v5_digest_mismatch(nid)? {
                return Err(ReadError::Request(format!(
                    "{}: inode {inode}: {what} does not match its contents",
                    String::from_utf8_lossy(path)
                )));
            }
        }
        match st.mode & libc::S_IFMT {
            libc::S_IFLNK => {
                image.readlink(nid)?;
            }
            libc::S_IFREG => {
                let addrs = image.chunk_addrs(nid)?;
                chunks = addrs.len();
                for (i, addr) in addrs.iter().enumerate() {
                    let Some(addr) = addr else { continue };
                    let blob = image.blobs().get(addr.blob_index as usize).ok_or_else(|| {
                        ReadError::Request(format!(
                            "{}: chunk {i} names blob {} of {}",
                            String::from_utf8_lossy(path),
                            addr.blob_index,
                            image.blobs().len()
                        ))
                    })?;
                    if addr.chunk_index >= blob.chunk_count {
                        return Err(ReadError::Request(format!(
                            "{}: chunk {i} is chunk {} of blob {}, which has {}",
                            String::from_utf8_lossy(path),
                            addr.chunk_index,
                            blob.blob_id,
                            blob.chunk_count
                        )));
                    }
                    let want = (st.size - i as u64 * chunk_size).min(chunk_size);
                    match image.chunk_info(addr.blob(), addr.chunk()) {
                        Some(info) if info.uncompressed_size as u64 == want => {}
                        Some(info) => {
                            return Err(ReadError::Request(format!(
                                "{}: chunk {i} holds {} bytes, the file needs {want}",
                                String::from_utf8_lossy(path),
                                info.uncompressed_size
                            )))
                        }
                        None if image.has_chunk_table() => {
                            return Err(ReadError::Request(format!(
                                "{}: chunk {i} (blob {}, index {}) is missing from the chunk table",
                                String::from_utf8_lossy(path),
                                addr.blob_index,
                                addr.chunk_index
                            )))
                        }
                        None => {}
                    }
                }
            }
            _ => {}
        }
        if verbose {
            tree.push(EntryReport {
                path: String::from_utf8_lossy(path).into_owned(),
                nid,
                mode: st.mode,
                size: st.size,
                nlink: st.nlink,
                chunks,
            });
        }
        Ok(())
    })?;
    let blobs = image
        .blobs()
        .iter()
        .map(|b| BlobReport {
            blob_id: b.blob_id.clone(),
            compressed_data_size: compressed_data_size(b),
            compressed_size: b.compressed_size,
            uncompressed_size: b.uncompressed_size,
            chunk_count: b.chunk_count,
            features: blob_feature_names(b.features),
            compressor: b.compressor.name(),
            digester: b.digester.name(),
        })
        .collect();
    let prefetch = image
        .prefetch_paths()?
        .into_iter()
        .map(|(nid, path)| PrefetchEntry {
            nid,
            path: String::from_utf8_lossy(&path).into_owned(),
        })
        .collect();
    Ok(CheckReport {
        fs_version: if image.fs_version() == 5 { "5" } else { "6" },
        features: flag_names(sb.flags),
        chunk_size: sb.chunk_size,
        inodes: sb.inodes,
        entries,
        blobs,
        tree,
        prefetch,
    })
}

/// Reads every regular file of the image whole, verifying each chunk's digest when the
/// image has `validate` set; returns the bytes read. A failure names the file.
pub fn read_all_files(image: &Image) -> Result<u64, ReadError> {
    let mut bytes = 0u64;
    image.walk(|path, nid| {
        if image.stat(nid)?.mode & libc::S_IFMT == libc::S_IFREG {
            let data = image.read_all(nid).map_err(|e| ReadError::Entry {
                path: String::from_utf8_lossy(path).into_owned(),
                source: Box::new(e),
            })?;
            bytes += data.len() as u64;
        }
        Ok(())
    })?;
    Ok(bytes)
}
