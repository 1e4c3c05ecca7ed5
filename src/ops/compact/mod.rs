//! Compaction: rewrites an image's sparsely used and small blobs into fewer, fuller ones.
//!
//! After many layered or deduplicated builds an image references blobs it barely uses.
//! For each blob the bootstrap references:
//! - used ratio = compressed bytes of the distinct chunks the bootstrap references in it /
//!   the blob's compressed data size;
//! - a blob no file references is dropped from the blob table;
//! - a blob whose used ratio is below `min_used_ratio` (percent) is rebuilt with only its
//!   used chunks;
//! - blobs smaller than `compact_blob_size` (and rebuilt blobs whose used data is) are
//!   merged, smallest first, into new blobs of at most `max_compact_size` bytes of chunk
//!   data; a candidate that fits with nothing stays as it is;
//! - nothing happens unless the image references at least `layers_to_compact` blobs.
//!
//! These rules are `plan`'s, a pure function of the blobs' sizes and use.
//!
//! New blobs are written in our blob format (chunk data, chunk-info array, meta header),
//! named by their sha256 in `blobs_dir`; chunks are copied as stored, after their digest
//! is checked. The bootstrap's chunk records are input: each is checked against the
//! blob's size and the image's chunk size before anything is allocated or read for it.
//! Blobs that need no change stay referenced as they are. The result is a new
//! bootstrap describing the same tree; the original bootstrap and blobs are not touched.
//! Only blobs this tool can write are rewritten: eStargz layers (gzip) and blobs of
//! another compressor or chunk size than the merge group are left alone.

mod plan;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::builder::output::PendingFile;
use crate::builder::tree::{FileData, Tree};
use crate::builder::{bootstrap, overlay, parent, BuildError};
use crate::format::v6::tables::{BlobEntry, ChunkInfo};
use crate::format::Compressor;
use crate::reader::{Image, ReadError};
use crate::storage::backend::{Backend, BackendError};
use crate::storage::compress::DecompressError;
use plan::{percent, plan, BlobFacts, Plan};
use write::{remap, write_group, NewBlob, Source};

/// Why compaction failed. Blobs are named by id; the reader's, builder's and backend's
/// errors are kept as causes.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// The settings cannot be used.
    #[error("compaction settings")]
    Config(#[source] ConfigError),
    /// Neither the settings nor the command line say where new blobs go.
    #[error("say where new blobs go: blobs_dir in the compaction config or a blob directory")]
    NoBlobDir,
    /// The directory for new blobs does not exist.
    #[error("blob directory {}: does not exist", path.display())]
    BlobDirMissing {
        /// The directory.
        path: PathBuf,
    },
    /// The image's bootstrap cannot be read.
    #[error("bootstrap {}: cannot read it", path.display())]
    Bootstrap {
        /// The bootstrap.
        path: PathBuf,
        /// Why, with the offset where it is bad.
        #[source]
        source: ReadError,
    },
    /// The image's tree holds what the builder cannot write back.
    #[error("bootstrap {}: {what}", path.display())]
    Tree {
        /// The bootstrap.
        path: PathBuf,
        /// What the tree holds, and where.
        what: String,
    },
    /// The chunk dictionary cannot be used (its error names it).
    #[error(transparent)]
    Dict(Box<BuildError>),
    /// The backend cannot tell a blob's size.
    #[error("blob {blob_id}: cannot get its size")]
    BlobSize {
        /// The blob.
        blob_id: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// The backend cannot read a chunk.
    #[error("blob {blob_id}: cannot read chunk {chunk} at 0x{offset:x}+0x{size:x}")]
    ReadChunk {
        /// The blob.
        blob_id: String,
        /// The chunk's index in the blob.
        chunk: u32,
        /// Its offset in the blob.
        offset: u64,
        /// Its stored size.
        size: u32,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// The bootstrap places a chunk past the blob's end.
    #[error(
        "blob {blob_id}: chunk {chunk} at 0x{offset:x}+0x{size:x} lies past the blob's end \
         0x{blob_size:x} ({backend}): the blob is shorter than the bootstrap says"
    )]
    ChunkPastEnd {
        /// The blob.
        blob_id: String,
        /// The chunk's index in the blob.
        chunk: u32,
        /// Its offset in the blob, as the bootstrap says.
        offset: u64,
        /// Its stored size, as the bootstrap says.
        size: u32,
        /// The blob's size, as the backend says.
        blob_size: u64,
        /// The backend.
        backend: String,
    },
    /// The bootstrap records a chunk larger than the image's chunks can be.
    #[error(
        "blob {blob_id}: chunk {chunk} holds 0x{uncompressed_size:x} bytes stored in \
         0x{compressed_size:x}, more than a chunk of this image (at most 0x{chunk_size:x} \
         bytes, stored in at most 0x{stored_limit:x}): the bootstrap is corrupt"
    )]
    ChunkTooLarge {
        /// The blob.
        blob_id: String,
        /// The chunk's index in the blob.
        chunk: u32,
        /// Its uncompressed size, as the bootstrap says.
        uncompressed_size: u32,
        /// Its stored size, as the bootstrap says.
        compressed_size: u32,
        /// The image's chunk size.
        chunk_size: u32,
        /// The largest stored size a chunk may have.
        stored_limit: u64,
    },
    /// A chunk's stored bytes do not decompress.
    #[error("blob {blob_id}: chunk {chunk} at 0x{offset:x} does not decompress")]
    Decompress {
        /// The blob.
        blob_id: String,
        /// The chunk's index in the blob.
        chunk: u32,
        /// Its offset in the blob.
        offset: u64,
        /// The codec's complaint.
        #[source]
        source: DecompressError,
    },
    /// A chunk's data does not match its digest.
    #[error(
        "blob {blob_id}: chunk {chunk} at 0x{offset:x} does not match its digest: the blob is \
         corrupt"
    )]
    Digest {
        /// The blob.
        blob_id: String,
        /// The chunk's index in the blob.
        chunk: u32,
        /// Its offset in the blob.
        offset: u64,
    },
    /// A new blob cannot be written.
    #[error("{}: {what}", path.display())]
    Write {
        /// The directory it is written in.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A new blob cannot be created or put in place, or the new bootstrap cannot be
    /// written (the error names the file).
    #[error(transparent)]
    Output(Box<BuildError>),
}

/// compact.json: upstream's keys and defaults.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CompactConfig {
    /// Rebuild blobs whose used ratio (percent) is below this; 0 disables.
    #[serde(default)]
    pub min_used_ratio: u64,
    /// Merge blobs whose compressed size is below this (bytes).
    #[serde(default = "default_compact_blob_size")]
    pub compact_blob_size: u64,
    /// A merged blob holds at most this many bytes of chunk data.
    #[serde(default = "default_max_compact_size")]
    pub max_compact_size: u64,
    /// Compact only when the image references at least this many blobs; 0: always.
    #[serde(default)]
    pub layers_to_compact: u64,
    /// Where new blobs are written.
    #[serde(default)]
    pub blobs_dir: Option<PathBuf>,
    /// Accepted and ignored: upstream 2.2.0 also reads this file as a storage
    /// configuration, which wants `"version": 2`.
    #[serde(default, skip_serializing)]
    pub version: Option<u32>,
}

fn default_compact_blob_size() -> u64 {
    10 << 20
}

fn default_max_compact_size() -> u64 {
    100 << 20
}

impl Default for CompactConfig {
    fn default() -> Self {
        CompactConfig {
            min_used_ratio: 0,
            compact_blob_size: default_compact_blob_size(),
            max_compact_size: default_max_compact_size(),
            layers_to_compact: 0,
            blobs_dir: None,
            version: None,
        }
    }
}

/// Compaction settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// compact.json could not be read.
    #[error("compaction config {}: cannot read it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// compact.json is not JSON, or has unknown keys or wrong types.
    #[error("{}: invalid compaction config", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, naming the key.
        #[source]
        source: serde_json::Error,
    },
    /// A value is out of range (names the file when it came from one).
    #[error("{}{what}", path.as_ref().map(|p| format!("compaction config {}: ", p.display())).unwrap_or_default())]
    Value {
        /// The file the value came from.
        path: Option<PathBuf>,
        /// What is wrong.
        what: String,
    },
}

impl CompactConfig {
    /// Reads compact.json, refusing unknown keys and values out of range.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let c: CompactConfig =
            serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        c.validate().map_err(|e| match e {
            ConfigError::Value { what, .. } => ConfigError::Value {
                path: Some(path.to_path_buf()),
                what,
            },
            other => other,
        })?;
        Ok(c)
    }

    /// Checks the values before any work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: String| Err(ConfigError::Value { path: None, what });
        if self.min_used_ratio > 99 {
            return bad(format!(
                "min_used_ratio {} is out of range: give a percentage 0-99 (0 disables rebuilding)",
                self.min_used_ratio
            ));
        }
        if self.max_compact_size == 0 {
            return bad("max_compact_size must be above 0".into());
        }
        if self.compact_blob_size > self.max_compact_size {
            return bad(format!(
                "compact_blob_size {} exceeds max_compact_size {}: no merged blob could hold two such blobs",
                self.compact_blob_size, self.max_compact_size
            ));
        }
        if let Some(v) = self.version.filter(|&v| v != 2) {
            return bad(format!("version {v}: only 2 is known"));
        }
        Ok(())
    }
}

/// What compaction did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompactSummary {
    /// The new bootstrap, if one was written.
    pub bootstrap: Option<PathBuf>,
    /// Blob ids before, in table order.
    pub blobs_before: Vec<String>,
    /// Blob ids after, in table order.
    pub blobs_after: Vec<String>,
    /// Blobs dropped because no file uses them.
    pub unused_blobs: Vec<String>,
    /// Blobs rewritten (rebuilt or merged).
    pub rewritten_blobs: Vec<String>,
    /// New blobs written.
    pub new_blobs: Vec<String>,
    /// Bytes read from the backend.
    pub bytes_read: u64,
    /// Bytes found in the chunk cache instead (`cache`): not read from the backend.
    pub bytes_from_cache: u64,
    /// Bytes of new blobs written.
    pub bytes_written: u64,
    /// Compressed bytes of the blobs no longer referenced, minus the new blobs' bytes.
    pub bytes_reclaimed: i64,
    /// Why nothing was done, when nothing was.
    pub unchanged_because: Option<String>,
}

/// Per blob: which of its chunks the tree uses.
#[derive(Default)]
struct Usage {
    /// Used chunks by chunk index.
    chunks: BTreeMap<u32, ChunkInfo>,
    /// Their compressed bytes.
    used_bytes: u64,
}

/// Compressed bytes of a blob's chunk data: up to its chunk-info array where it has one
/// (the array and header are metadata), else the whole blob.
fn blob_data_size(b: &BlobEntry) -> u64 {
    if b.ci_offset > 0 && (b.ci_offset <= b.compressed_size || b.compressed_size == 0) {
        b.ci_offset
    } else {
        b.compressed_size
    }
}

/// Where compaction reads blobs from and writes new ones to.
#[derive(Debug)]
pub struct BlobPlaces {
    /// Where the image's blobs are read.
    pub backend: Box<dyn Backend>,
    /// Where new blobs are written.
    pub out_dir: PathBuf,
}

impl BlobPlaces {
    /// Upstream's rules: new blobs go to the config's `blobs_dir`, else to `blob_dir`;
    /// blobs are read from `backend`, else from `blob_dir` (or the output directory).
    pub fn choose(
        cfg: &CompactConfig,
        backend: Option<Box<dyn Backend>>,
        blob_dir: Option<&Path>,
    ) -> Result<Self, CompactError> {
        let out_dir = cfg
            .blobs_dir
            .clone()
            .or_else(|| blob_dir.map(Path::to_path_buf))
            .ok_or(CompactError::NoBlobDir)?;
        let backend = backend.unwrap_or_else(|| {
            Box::new(crate::storage::backend::LocalFs::dir(
                blob_dir.unwrap_or(&out_dir),
            ))
        });
        Ok(BlobPlaces { backend, out_dir })
    }
}

/// Compacts the image at `bootstrap`, reading blobs from `backend` (through the chunk
/// cache `cache`, the one `mount --cache-dir` keeps, if given), writing new blobs to
/// `blobs_dir` and the new bootstrap to `output`. With a chunk dictionary, chunks the
/// dictionary holds are referenced from its blobs first (those blobs are shared with
/// other images: they are kept as they are, never rewritten).
pub fn compact(
    bootstrap: &Path,
    backend: &dyn Backend,
    cache: Option<&crate::storage::cache::CacheOptions>,
    blobs_dir: &Path,
    output: &Path,
    cfg: &CompactConfig,
    chunk_dict: Option<&Path>,
) -> Result<CompactSummary, CompactError> {
    cfg.validate().map_err(CompactError::Config)?;
    if !blobs_dir.is_dir() {
        return Err(CompactError::BlobDirMissing {
            path: blobs_dir.to_path_buf(),
        });
    }
    let image =
        Image::open(bootstrap, crate::storage::blobs::BlobSource::None).map_err(|source| {
            CompactError::Bootstrap {
                path: bootstrap.to_path_buf(),
                source,
            }
        })?;
    let mut blobs = image.blobs().to_vec();
    let mut summary = CompactSummary {
        blobs_before: blobs.iter().map(|b| b.blob_id.clone()).collect(),
        ..CompactSummary::default()
    };
    if cfg.layers_to_compact > 0 && (blobs.len() as u64) < cfg.layers_to_compact {
        summary.blobs_after = summary.blobs_before.clone();
        summary.unchanged_because = Some(format!(
            "the image references {} blob(s), fewer than layers_to_compact {}",
            blobs.len(),
            cfg.layers_to_compact
        ));
        return Ok(summary);
    }
    let root = parent::load(&image, 0).map_err(|e| tree_error(bootstrap, e))?;
    let mut tree = overlay::flatten(root);
    let mut shared = vec![false; blobs.len()];
    if let Some(path) = chunk_dict {
        let sb = image.super_block();
        let opts = crate::builder::BuildOptions {
            chunk_size: sb.chunk_size,
            digester: sb.digester,
            compressor: sb.compressor,
            ..crate::builder::BuildOptions::default()
        };
        let dict = crate::builder::dict::ChunkDict::load(path, &opts)
            .map_err(|e| CompactError::Dict(Box::new(e)))?;
        use_dictionary(&mut tree, &mut blobs, &mut shared, &dict);
    }

    // Which chunks of which blob the tree uses.
    let mut usage: Vec<Usage> = blobs.iter().map(|_| Usage::default()).collect();
    for node in &tree.nodes {
        if let (FileData::Chunks(list), None) = (&node.data, node.hardlink_of) {
            for c in list {
                let u = &mut usage[c.blob_index as usize];
                if u.chunks.insert(c.index, c.clone()).is_none() {
                    u.used_bytes = u.used_bytes.saturating_add(c.compressed_size as u64);
                }
            }
        }
    }

    let facts: Vec<BlobFacts> = blobs
        .iter()
        .zip(&usage)
        .zip(&shared)
        .map(|((b, u), &shared)| BlobFacts {
            data_size: blob_data_size(b),
            used_bytes: u.used_bytes,
            used: !u.chunks.is_empty(),
            shared,
            writable: matches!(
                b.compressor,
                Compressor::None | Compressor::Lz4Block | Compressor::Zstd
            ),
            kind: (b.compressor as u32, b.digester as u32, b.chunk_size),
        })
        .collect();
    for ((b, u), f) in blobs.iter().zip(&usage).zip(&facts) {
        log::info!(
            "blob {}: {} bytes, {} used by {} chunk(s) ({}%)",
            b.blob_id,
            f.data_size,
            u.used_bytes,
            u.chunks.len(),
            percent(u.used_bytes, f.data_size)
        );
    }
    let Plan { dropped, groups } = plan(&facts, cfg);
    for &i in &dropped {
        summary.unused_blobs.push(blobs[i].blob_id.clone());
    }

    if groups.is_empty() && dropped.is_empty() {
        summary.blobs_after = summary.blobs_before.clone();
        summary.unchanged_because =
            Some("no blob is unused, sparsely used or small enough to merge".into());
        return Ok(summary);
    }

    // Write the new blobs; map (old blob, old chunk index) to the new chunk.
    let mut moved: HashMap<(u32, u32), (usize, ChunkInfo)> = HashMap::new();
    let mut new_entries: Vec<BlobEntry> = Vec::new();
    let mut written_paths: Vec<PathBuf> = Vec::new();
    let cleanup = |paths: &[PathBuf]| {
        for p in paths {
            let _ = std::fs::remove_file(p);
        }
    };
    let source = Source {
        blobs: &blobs,
        usage: &usage,
        backend,
        chunk_size: image.super_block().chunk_size,
        layout: if image.fs_version() == 5 {
            crate::builder::blob::Layout::Dense
        } else {
            crate::builder::blob::Layout::Blocks
        },
        cache: cache.map(crate::storage::cache::CacheDir::open),
    };
    for group in &groups {
        let first = &blobs[group[0]];
        let NewBlob {
            entry,
            moves,
            size,
            path: final_path,
        } = match write_group(&source, group, blobs_dir, first, &mut summary) {
            Ok(v) => v,
            Err(e) => {
                cleanup(&written_paths);
                return Err(e);
            }
        };
        written_paths.push(final_path);
        summary.bytes_written += size;
        summary.new_blobs.push(entry.blob_id.clone());
        for &i in group {
            summary.rewritten_blobs.push(blobs[i].blob_id.clone());
        }
        for (old, new) in moves {
            moved.insert(old, (new_entries.len(), new));
        }
        new_entries.push(entry);
    }

    // The new blob table: kept blobs in their order, then the new ones.
    let mut gone = vec![false; blobs.len()];
    for &i in groups.iter().flatten().chain(&dropped) {
        gone[i] = true;
    }
    let mut table: Vec<BlobEntry> = Vec::new();
    let mut kept_index: HashMap<u32, u32> = HashMap::new();
    for (i, b) in blobs.iter().enumerate() {
        if !gone[i] {
            kept_index.insert(i as u32, table.len() as u32);
            table.push(b.clone());
        }
    }
    let new_base = table.len() as u32;
    table.extend(new_entries);
    let tree = remap(tree, &kept_index, &moved, new_base);

    let sb = image.super_block();
    let written = crate::builder::stored_tree_bootstrap(
        &tree,
        table,
        bootstrap::v6::BootstrapOptions {
            chunk_size: sb.chunk_size,
            compressor: sb.compressor,
            digester: sb.digester,
        },
        // A v5 image stays v5 (upstream 2.2.0's compact writes only v5).
        match image.fs_version() {
            5 => crate::builder::FsVersion::V5,
            _ => crate::builder::FsVersion::V6,
        },
    );
    let (bytes, blobs_out) = match written {
        Ok(v) => v,
        Err(e) => {
            cleanup(&written_paths);
            return Err(CompactError::Output(Box::new(e)));
        }
    };
    let path = match PendingFile::write_whole(output, &bytes, "bootstrap") {
        Ok(p) => p,
        Err(e) => {
            cleanup(&written_paths);
            return Err(CompactError::Output(Box::new(e)));
        }
    };
    let removed = blobs
        .iter()
        .zip(&gone)
        .filter(|(_, &gone)| gone)
        .fold(0u64, |sum, (b, _)| sum.saturating_add(blob_data_size(b)));
    let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    summary.bytes_reclaimed = signed(removed).saturating_sub(signed(summary.bytes_written));
    summary.blobs_after = blobs_out.iter().map(|b| b.blob_id.clone()).collect();
    summary.bootstrap = Some(path);
    Ok(summary)
}

/// The error of loading the image's tree, which the loader words for a parent bootstrap.
fn tree_error(bootstrap: &Path, e: BuildError) -> CompactError {
    let path = bootstrap.to_path_buf();
    match e {
        BuildError::ParentRead { source, .. } => CompactError::Bootstrap { path, source },
        BuildError::Parent { what, .. } => CompactError::Tree { path, what },
        // The loader returns only the two above.
        other => CompactError::Tree {
            path,
            what: crate::error::Chain(&other).to_string(),
        },
    }
}

/// Points chunks the dictionary holds at the dictionary's blobs (added to `blobs`, marked
/// `shared`), unless they already are in one of them.
fn use_dictionary(
    tree: &mut Tree,
    blobs: &mut Vec<BlobEntry>,
    shared: &mut Vec<bool>,
    dict: &crate::builder::dict::ChunkDict,
) {
    let mut index_of: HashMap<String, u32> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| (b.blob_id.clone(), i as u32))
        .collect();
    for b in &dict.blobs {
        if let Some(&i) = index_of.get(&b.blob_id) {
            shared[i as usize] = true;
        }
    }
    let mut moved = 0u64;
    for node in &mut tree.nodes {
        let FileData::Chunks(list) = &mut node.data else {
            continue;
        };
        for c in list.iter_mut() {
            if shared[c.blob_index as usize] {
                continue;
            }
            let Some(d) = dict.get(&c.digest) else {
                continue;
            };
            if d.uncompressed_size != c.uncompressed_size {
                continue;
            }
            let entry = &dict.blobs[d.blob_index as usize];
            let at = *index_of.entry(entry.blob_id.clone()).or_insert_with(|| {
                blobs.push(entry.clone());
                shared.push(true);
                blobs.len() as u32 - 1
            });
            *c = ChunkInfo {
                blob_index: at,
                file_offset: c.file_offset,
                ..d
            };
            moved += 1;
        }
    }
    log::info!("chunk dictionary: {moved} chunk reference(s) now point at its blobs");
}

/// Upstream's default output path: the bootstrap's extension replaced by
/// `bootstrap.compact`.
pub fn default_output(bootstrap: &Path) -> PathBuf {
    bootstrap.with_extension("bootstrap.compact")
}
