//! Chunk dictionaries: an existing bootstrap whose chunks a new build references instead
//! of storing them again. Only blobs whose chunk size, digester and compressor fit the
//! build are used; the rest are skipped with a log line saying how many chunks and why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{BuildError, BuildOptions};
use crate::format::v6::tables::{BlobEntry, ChunkInfo};
use crate::reader::Image;
use crate::storage::blobs::BlobSource;

/// A loaded dictionary.
pub struct ChunkDict {
    /// The dictionary's blob table (indexes in `ChunkInfo::blob_index` point here).
    pub blobs: Vec<BlobEntry>,
    chunks: HashMap<[u8; 32], ChunkInfo>,
}

/// Parses `--chunk-dict`: `bootstrap=PATH` or a bare path, as upstream accepts.
pub fn parse_arg(arg: &str) -> Result<PathBuf, BuildError> {
    match arg.split_once('=') {
        None => Ok(PathBuf::from(arg)),
        Some(("bootstrap", path)) if !path.is_empty() => Ok(PathBuf::from(path)),
        Some(("bootstrap", _)) => Err(BuildError::Options(
            "--chunk-dict bootstrap= needs a path".into(),
        )),
        Some((kind, _)) => Err(BuildError::Options(format!(
            "unknown --chunk-dict type {kind:?}: use bootstrap=PATH (or a bare path)"
        ))),
    }
}

impl ChunkDict {
    /// Loads the dictionary bootstrap at `path` for a build with `opts`.
    pub fn load(path: &Path, opts: &BuildOptions) -> Result<Self, BuildError> {
        let err = |what: String| BuildError::Dict {
            path: path.to_path_buf(),
            what,
        };
        let image = Image::open(path, BlobSource::None).map_err(|source| BuildError::DictRead {
            path: path.to_path_buf(),
            source,
        })?;
        let mut skipped: HashMap<String, u64> = HashMap::new();
        let mut usable = vec![false; image.blobs().len()];
        for (i, b) in image.blobs().iter().enumerate() {
            let why = if b.chunk_size != opts.chunk_size {
                Some(format!(
                    "chunk size 0x{:x} (this build: 0x{:x})",
                    b.chunk_size, opts.chunk_size
                ))
            } else if b.digester != opts.digester {
                Some(format!(
                    "digester {} (this build: {})",
                    b.digester.name(),
                    opts.digester.name()
                ))
            } else if b.compressor != opts.compressor {
                Some(format!(
                    "compressor {} (this build: {})",
                    b.compressor.name(),
                    opts.compressor.name()
                ))
            } else {
                None
            };
            match why {
                Some(w) => *skipped.entry(w).or_default() += b.chunk_count as u64,
                None => usable[i] = true,
            }
        }
        let mut chunks = HashMap::new();
        for c in image.chunk_table() {
            if usable.get(c.blob_index as usize).copied().unwrap_or(false) {
                chunks.entry(c.digest).or_insert(c);
            }
        }
        for (why, n) in &skipped {
            log::warn!(
                "chunk dictionary {}: skipping {n} chunks: {why}",
                path.display()
            );
        }
        if chunks.is_empty() && !skipped.is_empty() {
            let reasons: Vec<&str> = skipped.keys().map(String::as_str).collect();
            return Err(err(format!(
                "no chunk can be reused: {}",
                reasons.join("; ")
            )));
        }
        log::info!(
            "chunk dictionary {}: {} chunks in {} usable blob(s)",
            path.display(),
            chunks.len(),
            usable.iter().filter(|u| **u).count()
        );
        Ok(ChunkDict {
            blobs: image.blobs().to_vec(),
            chunks,
        })
    }

    /// The dictionary's chunk with this digest.
    pub fn get(&self, digest: &[u8; 32]) -> Option<ChunkInfo> {
        self.chunks.get(digest).cloned()
    }
}
