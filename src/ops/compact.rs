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

use std::collections::{BTreeMap, HashMap};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::builder::blob::BlobWriter;
use crate::builder::output::PendingFile;
use crate::builder::tree::{FileData, Tree};
use crate::builder::{bootstrap, overlay, parent, BuildError};
use crate::format::v6::tables::{BlobEntry, ChunkInfo};
use crate::format::Compressor;
use crate::reader::{Image, ReadError};
use crate::storage::backend::{Backend, BackendError};
use crate::storage::compress::{self, DecompressError};

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

/// What planning needs to know of one blob.
#[derive(Clone, Debug)]
struct BlobFacts {
    /// Compressed bytes of its chunk data.
    data_size: u64,
    /// Compressed bytes of the distinct chunks the tree uses.
    used_bytes: u64,
    /// Whether the tree uses any of its chunks.
    used: bool,
    /// Shared with a chunk dictionary: referenced as it is, never rewritten.
    shared: bool,
    /// Whether its compressor is one this tool writes (not gzip, as eStargz layers are).
    writable: bool,
    /// Compressor, digester and chunk size: only blobs alike merge.
    kind: (u32, u32, u32),
}

/// What becomes of an image's blobs. Blobs in neither list stay as they are.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Blobs no file uses, dropped from the table, ascending.
    dropped: Vec<usize>,
    /// One new blob each: the blobs whose used chunks go into it, in the order they are
    /// written (least used data first); one blob alone is rebuilt, several are merged.
    /// Sorted.
    groups: Vec<Vec<usize>>,
}

/// `used` as a percentage of `size` (100 when `size` is 0).
fn percent(used: u64, size: u64) -> u128 {
    (used as u128 * 100)
        .checked_div(size as u128)
        .unwrap_or(100)
}

/// Decides, from the blobs' sizes and use alone, which blobs are dropped, rebuilt, merged
/// or left alone (the rules are in the module's note).
fn plan(blobs: &[BlobFacts], cfg: &CompactConfig) -> Plan {
    let mut out = Plan::default();
    // Rebuilt: sparsely used (used bytes below min_used_ratio percent of the data).
    let mut rebuild = vec![false; blobs.len()];
    for (i, b) in blobs.iter().enumerate() {
        if !b.used {
            out.dropped.push(i);
        } else if !b.shared
            && b.writable
            && b.data_size > 0
            && (b.used_bytes as u128) * 100 < cfg.min_used_ratio as u128 * b.data_size as u128
        {
            rebuild[i] = true;
        }
    }
    // Merge candidates, by kind: small blobs, and rebuilt ones whose used data is small,
    // each with the bytes it brings.
    let mut candidates: BTreeMap<(u32, u32, u32), Vec<(u64, usize)>> = BTreeMap::new();
    for (i, b) in blobs.iter().enumerate() {
        let small = if rebuild[i] {
            b.used_bytes < cfg.compact_blob_size
        } else {
            b.used && !b.shared && b.writable && b.data_size < cfg.compact_blob_size
        };
        if small {
            candidates
                .entry(b.kind)
                .or_default()
                .push((b.used_bytes, i));
        }
    }
    // Smallest first, into new blobs of at most max_compact_size bytes; a candidate that
    // fits with nothing stays as it is (or is rebuilt alone).
    let mut grouped = vec![false; blobs.len()];
    for (_, mut list) in candidates {
        list.sort_unstable();
        let mut current: Vec<usize> = Vec::new();
        let mut current_bytes = 0u64;
        for (bytes, i) in list {
            let together = current_bytes.saturating_add(bytes);
            if !current.is_empty() && together <= cfg.max_compact_size {
                current.push(i);
                current_bytes = together;
            } else {
                if current.len() > 1 {
                    out.groups.push(std::mem::take(&mut current));
                }
                current = vec![i];
                current_bytes = bytes;
            }
        }
        if current.len() > 1 {
            out.groups.push(current);
        }
    }
    for &i in out.groups.iter().flatten() {
        grouped[i] = true;
    }
    for i in 0..blobs.len() {
        if rebuild[i] && !grouped[i] {
            out.groups.push(vec![i]);
        }
    }
    out.groups.sort();
    out
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

/// Compacts the image at `bootstrap`, reading blobs from `backend`, writing new blobs to
/// `blobs_dir` and the new bootstrap to `output`. With a chunk dictionary, chunks the
/// dictionary holds are referenced from its blobs first (those blobs are shared with
/// other images: they are kept as they are, never rewritten).
pub fn compact(
    bootstrap: &Path,
    backend: &dyn Backend,
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
    let (bytes, blobs_out) = crate::builder::stored_tree_bootstrap(
        &tree,
        table,
        bootstrap::v6::BootstrapOptions {
            chunk_size: sb.chunk_size,
            compressor: sb.compressor,
            digester: sb.digester,
        },
    );
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

/// What new blobs are made from.
struct Source<'a> {
    /// The image's blobs.
    blobs: &'a [BlobEntry],
    /// Which of their chunks the tree uses.
    usage: &'a [Usage],
    /// Where the blobs are read.
    backend: &'a dyn Backend,
    /// The image's chunk size: no chunk holds more.
    chunk_size: u32,
}

/// The most bytes a chunk of `chunk_size` bytes may be stored in: compressed data is kept
/// only when smaller, and no codec here grows data by half.
fn stored_limit(chunk_size: u32) -> u64 {
    chunk_size as u64 + chunk_size as u64 / 2
}

/// Checks a chunk record of blob `blob_id` (of `blob_size` bytes) against the image's
/// chunk size and the blob's size, before anything is allocated or read for it: a
/// bootstrap is input, and its records could ask for gigabytes or for offsets that wrap.
fn check_chunk(
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
struct NewBlob {
    /// Its blob table entry.
    entry: BlobEntry,
    /// Where each used chunk went: (old blob index, old chunk index) -> its new record.
    moves: Vec<((u32, u32), ChunkInfo)>,
    /// Its size in bytes.
    size: u64,
    /// Its file.
    path: PathBuf,
}

/// Writes the new blob of one group into `dir`: under a temporary name of its own (removed
/// on failure), then synced and renamed to its digest, so that a crash cannot leave a
/// short file there.
fn write_group(
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
    );
    let mut moves = Vec::new();
    let mut seen: HashMap<[u8; 32], u32> = HashMap::new();
    let mut stored = Vec::new();
    for &i in group {
        let b = &blobs[i];
        let size = backend
            .size(&b.blob_id)
            .map_err(|source| CompactError::BlobSize {
                blob_id: b.blob_id.clone(),
                source,
            })?;
        for info in usage[i].chunks.values() {
            check_chunk(&b.blob_id, info, chunk_size, size, backend)?;
            stored.resize(info.compressed_size as usize, 0);
            backend
                .read_at(&b.blob_id, info.compressed_offset, &mut stored)
                .map_err(|source| CompactError::ReadChunk {
                    blob_id: b.blob_id.clone(),
                    chunk: info.index,
                    offset: info.compressed_offset,
                    size: info.compressed_size,
                    source,
                })?;
            summary.bytes_read += stored.len() as u64;
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
fn remap(
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

/// Upstream's default output path: the bootstrap's extension replaced by
/// `bootstrap.compact`.
pub fn default_output(bootstrap: &Path) -> PathBuf {
    bootstrap.with_extension("bootstrap.compact")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZSTD: (u32, u32, u32) = (3, 0, 0x10_0000);

    /// A blob of `data_size` bytes of which the tree uses `used_bytes`, of our kind.
    fn blob(data_size: u64, used_bytes: u64) -> BlobFacts {
        BlobFacts {
            data_size,
            used_bytes,
            used: used_bytes > 0,
            shared: false,
            writable: true,
            kind: ZSTD,
        }
    }

    fn shared(b: BlobFacts) -> BlobFacts {
        BlobFacts { shared: true, ..b }
    }

    fn gzip(b: BlobFacts) -> BlobFacts {
        BlobFacts {
            writable: false,
            kind: (2, 1, 0x10_0000),
            ..b
        }
    }

    fn lz4(b: BlobFacts) -> BlobFacts {
        BlobFacts {
            kind: (1, 0, 0x10_0000),
            ..b
        }
    }

    /// Which blobs are dropped, rebuilt, merged or left alone. Settings unless a case
    /// changes them: rebuild below 50% used, merge blobs under 100 bytes into new blobs of
    /// at most 250.
    #[test]
    fn planning_drops_rebuilds_merges_and_leaves_alone() {
        let base = CompactConfig {
            min_used_ratio: 50,
            compact_blob_size: 100,
            max_compact_size: 250,
            ..CompactConfig::default()
        };
        let with = |f: fn(&mut CompactConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c
        };
        let plan_of = |dropped: &[usize], groups: &[&[usize]]| Plan {
            dropped: dropped.to_vec(),
            groups: groups.iter().map(|g| g.to_vec()).collect(),
        };
        let cases: Vec<(&str, Vec<BlobFacts>, CompactConfig, Plan)> = vec![
            (
                "an unused blob is dropped",
                vec![blob(1000, 0), blob(1000, 900)],
                base.clone(),
                plan_of(&[0], &[]),
            ),
            (
                "a sparse large blob is rebuilt alone",
                vec![blob(1000, 400)],
                base.clone(),
                plan_of(&[], &[&[0]]),
            ),
            (
                "a blob used at exactly the ratio is left alone",
                vec![blob(1000, 500)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "two small blobs are merged, least used data first",
                vec![blob(90, 60), blob(50, 50)],
                base.clone(),
                plan_of(&[], &[&[1, 0]]),
            ),
            (
                "a small blob with nothing to merge with is left alone",
                vec![blob(50, 50), blob(1000, 900)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "a blob of exactly compact_blob_size is not small",
                vec![blob(100, 100), blob(50, 50)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "merged blobs hold at most max_compact_size; the rest stays",
                vec![blob(90, 90), blob(80, 80), blob(70, 70), blob(60, 60)],
                base.clone(),
                plan_of(&[], &[&[3, 2, 1]]),
            ),
            (
                "a full second merge group",
                vec![
                    blob(90, 90),
                    blob(80, 80),
                    blob(70, 70),
                    blob(60, 60),
                    blob(95, 95),
                ],
                base.clone(),
                plan_of(&[], &[&[0, 4], &[3, 2, 1]]),
            ),
            (
                "a sparse blob with little used data joins a merge",
                vec![blob(1000, 30), blob(50, 50)],
                base.clone(),
                plan_of(&[], &[&[0, 1]]),
            ),
            (
                "a sparse blob with nothing to merge with is rebuilt alone",
                vec![blob(1000, 30)],
                base.clone(),
                plan_of(&[], &[&[0]]),
            ),
            (
                "dictionary blobs are never rebuilt or merged",
                vec![shared(blob(1000, 10)), shared(blob(50, 50)), blob(60, 60)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "an unused dictionary blob is dropped",
                vec![shared(blob(50, 0)), blob(1000, 900)],
                base.clone(),
                plan_of(&[0], &[]),
            ),
            (
                "gzip (eStargz) blobs are left alone",
                vec![gzip(blob(1000, 10)), gzip(blob(50, 50)), blob(60, 60)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "only blobs of one kind merge",
                vec![
                    blob(50, 50),
                    lz4(blob(60, 60)),
                    blob(70, 70),
                    lz4(blob(40, 40)),
                ],
                base.clone(),
                plan_of(&[], &[&[0, 2], &[3, 1]]),
            ),
            (
                "min_used_ratio 0 rebuilds nothing",
                vec![blob(1000, 1)],
                with(|c| c.min_used_ratio = 0),
                plan_of(&[], &[]),
            ),
            (
                "compact_blob_size 0 merges nothing",
                vec![blob(50, 50), blob(60, 60), blob(1000, 100)],
                with(|c| c.compact_blob_size = 0),
                plan_of(&[], &[&[2]]),
            ),
            (
                "a blob of no recorded size is not rebuilt",
                vec![blob(0, 500)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "sizes near 2^64 do not overflow",
                vec![
                    blob(u64::MAX, u64::MAX / 4),
                    blob(10, u64::MAX),
                    blob(10, u64::MAX),
                ],
                with(|c| {
                    c.compact_blob_size = u64::MAX;
                    c.max_compact_size = u64::MAX;
                    c.min_used_ratio = 99;
                }),
                plan_of(&[], &[&[0, 1, 2]]),
            ),
        ];
        for (name, blobs, cfg, want) in cases {
            assert_eq!(plan(&blobs, &cfg), want, "{name}");
        }
    }

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
