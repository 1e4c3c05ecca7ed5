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
//! New blobs are written in our blob format (chunk data, chunk-info array, meta header),
//! named by their sha256 in `blobs_dir`; chunks are copied as stored, after their digest
//! is checked. Blobs that need no change stay referenced as they are. The result is a new
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
use crate::reader::Image;
use crate::storage::backend::Backend;
use crate::storage::compress;

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
    ) -> Result<Self, BuildError> {
        let out_dir = cfg
            .blobs_dir
            .clone()
            .or_else(|| blob_dir.map(Path::to_path_buf))
            .ok_or_else(|| {
                BuildError::Options(
                    "say where new blobs go: blobs_dir in the compaction config or a blob directory"
                        .into(),
                )
            })?;
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
) -> Result<CompactSummary, BuildError> {
    cfg.validate()
        .map_err(|e| BuildError::Options(e.to_string()))?;
    if !blobs_dir.is_dir() {
        return Err(BuildError::Output {
            path: blobs_dir.to_path_buf(),
            what: "blob directory does not exist".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let image = Image::open(bootstrap, crate::storage::blobs::BlobSource::None).map_err(|e| {
        BuildError::Parent {
            path: bootstrap.to_path_buf(),
            what: e.to_string(),
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
    let root = parent::load(&image, 0)?;
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
        let dict = crate::builder::dict::ChunkDict::load(path, &opts)?;
        use_dictionary(&mut tree, &mut blobs, &mut shared, &dict);
    }

    // Which chunks of which blob the tree uses.
    let mut usage: Vec<Usage> = blobs.iter().map(|_| Usage::default()).collect();
    for node in &tree.nodes {
        if let (FileData::Chunks(list), None) = (&node.data, node.hardlink_of) {
            for c in list {
                let u = &mut usage[c.blob_index as usize];
                if u.chunks.insert(c.index, c.clone()).is_none() {
                    u.used_bytes += c.compressed_size as u64;
                }
            }
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Plan {
        Keep,
        Drop,
        Rebuild,
    }
    let writable = |b: &BlobEntry| {
        matches!(
            b.compressor,
            Compressor::None | Compressor::Lz4Block | Compressor::Zstd
        )
    };
    let mut plan: Vec<Plan> = Vec::with_capacity(blobs.len());
    for (i, b) in blobs.iter().enumerate() {
        let u = &usage[i];
        let size = blob_data_size(b);
        let p = if u.chunks.is_empty() {
            summary.unused_blobs.push(b.blob_id.clone());
            Plan::Drop
        } else if shared[i] {
            Plan::Keep
        } else if writable(b) && size > 0 && u.used_bytes * 100 < cfg.min_used_ratio * size {
            Plan::Rebuild
        } else {
            Plan::Keep
        };
        log::info!(
            "blob {}: {} bytes, {} used by {} chunk(s) ({}%)",
            b.blob_id,
            size,
            u.used_bytes,
            u.chunks.len(),
            (u.used_bytes * 100).checked_div(size).unwrap_or(100)
        );
        plan.push(p);
    }

    // Merge groups: candidates of one compressor, digester and chunk size, smallest first.
    let mut candidates: BTreeMap<(u32, u32, u32), Vec<(u64, usize)>> = BTreeMap::new();
    for (i, b) in blobs.iter().enumerate() {
        let small = match plan[i] {
            Plan::Keep if shared[i] => false,
            Plan::Keep => writable(b) && blob_data_size(b) < cfg.compact_blob_size,
            Plan::Rebuild => usage[i].used_bytes < cfg.compact_blob_size,
            Plan::Drop => false,
        };
        if small {
            let key = (b.compressor as u32, b.digester as u32, b.chunk_size);
            candidates
                .entry(key)
                .or_default()
                .push((usage[i].used_bytes, i));
        }
    }
    // Each group: blob indexes whose used chunks go into one new blob.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut grouped = vec![false; blobs.len()];
    for (_, mut list) in candidates {
        list.sort();
        let mut current: Vec<usize> = Vec::new();
        let mut current_bytes = 0u64;
        for (bytes, i) in list {
            if !current.is_empty() && current_bytes + bytes <= cfg.max_compact_size {
                current.push(i);
                current_bytes += bytes;
            } else {
                if current.len() > 1 {
                    groups.push(std::mem::take(&mut current));
                }
                current = vec![i];
                current_bytes = bytes;
            }
        }
        if current.len() > 1 {
            groups.push(current);
        }
    }
    for g in &groups {
        for &i in g {
            grouped[i] = true;
        }
    }
    for (i, p) in plan.iter().enumerate() {
        if *p == Plan::Rebuild && !grouped[i] {
            groups.push(vec![i]);
        }
    }
    groups.sort();

    if groups.is_empty() && summary.unused_blobs.is_empty() {
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
    for group in &groups {
        let first = &blobs[group[0]];
        let temp = blobs_dir.join(format!(".compact-{}", std::process::id()));
        let result = write_group(&blobs, &usage, group, backend, &temp, first, &mut summary);
        let (entry, chunks, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                cleanup(&written_paths);
                return Err(e);
            }
        };
        let final_path = blobs_dir.join(&entry.blob_id);
        if let Err(e) = std::fs::rename(&temp, &final_path) {
            let _ = std::fs::remove_file(&temp);
            cleanup(&written_paths);
            return Err(BuildError::output(
                &final_path,
                "cannot rename new blob into place",
                e,
            ));
        }
        written_paths.push(final_path);
        summary.bytes_written += size;
        summary.new_blobs.push(entry.blob_id.clone());
        for &i in group {
            summary.rewritten_blobs.push(blobs[i].blob_id.clone());
        }
        for (old, new) in chunks {
            moved.insert(old, (new_entries.len(), new));
        }
        new_entries.push(entry);
    }

    // The new blob table: kept blobs in their order, then the new ones.
    let mut rewritten = vec![false; blobs.len()];
    for g in &groups {
        for &i in g {
            rewritten[i] = true;
        }
    }
    let mut table: Vec<BlobEntry> = Vec::new();
    let mut kept_index: HashMap<u32, u32> = HashMap::new();
    for (i, b) in blobs.iter().enumerate() {
        if plan[i] != Plan::Drop && !rewritten[i] {
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
    );
    let (bytes, blobs_out) = match written {
        Ok(v) => v,
        Err(e) => {
            cleanup(&written_paths);
            return Err(e);
        }
    };
    let path = match PendingFile::write_whole(output, &bytes, "bootstrap") {
        Ok(p) => p,
        Err(e) => {
            cleanup(&written_paths);
            return Err(e);
        }
    };
    let removed: u64 = blobs
        .iter()
        .enumerate()
        .filter(|(i, _)| plan[*i] == Plan::Drop || rewritten[*i])
        .map(|(_, b)| blob_data_size(b))
        .sum();
    summary.bytes_reclaimed = removed as i64 - summary.bytes_written as i64;
    summary.blobs_after = blobs_out.iter().map(|b| b.blob_id.clone()).collect();
    summary.bootstrap = Some(path);
    Ok(summary)
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

/// The new blob of one group: its entry, the chunk moves, and its size.
#[allow(clippy::type_complexity)]
fn write_group(
    blobs: &[BlobEntry],
    usage: &[Usage],
    group: &[usize],
    backend: &dyn Backend,
    temp: &Path,
    template: &BlobEntry,
    summary: &mut CompactSummary,
) -> Result<(BlobEntry, Vec<((u32, u32), ChunkInfo)>, u64), BuildError> {
    let file = std::fs::File::create(temp)
        .map_err(|e| BuildError::output(temp, "cannot create new blob", e))?;
    // Synced before it is renamed to its digest, so a crash cannot leave a short file there.
    let to_sync = file
        .try_clone()
        .map_err(|e| BuildError::output(temp, "cannot create new blob", e))?;
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
        let backend_err = |e: crate::storage::backend::BackendError| BuildError::Source {
            path: PathBuf::from(format!("blob {}", b.blob_id)),
            what: e.what,
        };
        let size = backend.size(&b.blob_id).map_err(backend_err)?;
        for info in usage[i].chunks.values() {
            let end = info.compressed_offset + info.compressed_size as u64;
            if end > size {
                return Err(BuildError::Source {
                    path: PathBuf::from(format!("blob {}", b.blob_id)),
                    what: format!(
                        "chunk {} at 0x{:x}+0x{:x} lies past the blob's end 0x{size:x} ({}): the blob is shorter than the bootstrap says",
                        info.index,
                        info.compressed_offset,
                        info.compressed_size,
                        backend.describe()
                    ),
                });
            }
            stored.resize(info.compressed_size as usize, 0);
            backend
                .read_at(&b.blob_id, info.compressed_offset, &mut stored)
                .map_err(backend_err)?;
            summary.bytes_read += stored.len() as u64;
            let mut raw = vec![0u8; info.uncompressed_size as usize];
            let compressed = info.compressed || info.compressed_size != info.uncompressed_size;
            if compressed {
                compress::decompress(b.compressor, &stored, &mut raw).map_err(|e| {
                    BuildError::Source {
                        path: PathBuf::from(format!("blob {}", b.blob_id)),
                        what: format!(
                            "chunk {} at 0x{:x}: {e}",
                            info.index, info.compressed_offset
                        ),
                    }
                })?;
            } else {
                raw.copy_from_slice(&stored);
            }
            if compress::digest(b.digester, &raw) != info.digest {
                return Err(BuildError::Source {
                    path: PathBuf::from(format!("blob {}", b.blob_id)),
                    what: format!(
                        "chunk {} at 0x{:x} does not match its digest: the blob is corrupt",
                        info.index, info.compressed_offset
                    ),
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
                        .map_err(|e| BuildError::output(temp, "cannot write new blob", e))?;
                    seen.insert(info.digest, n);
                    n
                }
            };
            moves.push(((i as u32, info.index), index));
        }
    }
    let (finished, chunks) = writer
        .finish(None)
        .map_err(|e| BuildError::output(temp, "cannot write new blob", e))?;
    to_sync
        .sync_all()
        .map_err(|e| BuildError::output(temp, "cannot sync new blob", e))?;
    let moves = moves
        .into_iter()
        .map(|(old, n)| (old, chunks[n as usize].clone()))
        .collect();
    Ok((finished.entry, moves, finished.size))
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
