//! Builds a RAFS image from a directory: source -> tree -> chunks -> blob + bootstrap.
//!
//! ```no_run
//! use nydus_image::builder::{build, BuildOptions, BlobTarget};
//! let opts = BuildOptions::default();
//! let summary = build(
//!     "rootfs".as_ref(),
//!     "image.boot".as_ref(),
//!     &BlobTarget::Dir("blobs".into()),
//!     &opts,
//!     &|_| {},
//! )?;
//! println!("blob {}", summary.blob_id.unwrap_or_default());
//! # Ok::<(), nydus_image::builder::BuildError>(())
//! ```

pub mod blob;
pub mod bootstrap;
pub mod chunker;
pub mod dict;
pub mod output;
pub mod overlay;
pub mod parent;
pub mod prefetch;
pub mod source;
pub mod tree;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::format::v6::tables::blob_features::INLINED_FS_META;
use crate::format::v6::tables::{BlobEntry, ChunkInfo};
use crate::format::{Compressor, Digester};
use crate::reader::ReadError;
use blob::BlobWriter;
use output::PendingFile;

/// Why a build failed. Every variant names the file involved.
#[derive(Debug, Error)]
pub enum BuildError {
    /// A source entry could not be read.
    #[error("{}: {what}", path.display())]
    Io {
        /// The source path.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A source entry cannot be represented, or changed during the build.
    #[error("{}: {what}", path.display())]
    Source {
        /// The source path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// An output could not be written.
    #[error("{}: {what}", path.display())]
    Output {
        /// The output path.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A chunk of a source file could not be compressed: the codec failed (data that
    /// does not shrink is stored raw, which is no error).
    #[error("{}: chunk {chunk} at offset {offset}: cannot compress it", path.display())]
    Compress {
        /// The source file.
        path: PathBuf,
        /// The chunk's index in the file.
        chunk: u64,
        /// The chunk's offset in the file.
        offset: u64,
        /// The codec's failure.
        #[source]
        source: crate::storage::compress::CompressError,
    },
    /// A tar layer is malformed, cannot be read, or holds what RAFS cannot.
    #[error("tar layer {}{}", path.display(), compressed_read.map(|n| format!(" ({n} compressed bytes read)")).unwrap_or_default())]
    Tar {
        /// The layer file (or FIFO).
        path: PathBuf,
        /// For a compressed layer, how far into the file decompression had read.
        compressed_read: Option<u64>,
        /// What is wrong, naming the entry and its offset in the tar stream.
        #[source]
        source: source::tar::TarError,
    },
    /// The options do not make sense.
    #[error("{0}")]
    Options(String),
    /// The chunk dictionary is unusable for this build.
    #[error("chunk dictionary {}: {what}", path.display())]
    Dict {
        /// The dictionary bootstrap.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The chunk dictionary is missing, unreadable or corrupt.
    #[error("chunk dictionary {}: cannot read it", path.display())]
    DictRead {
        /// The dictionary bootstrap.
        path: PathBuf,
        /// Why, with the offset where the bootstrap is bad.
        #[source]
        source: ReadError,
    },
    /// The parent bootstrap is missing, unreadable or corrupt.
    #[error("parent bootstrap {}: cannot read it", path.display())]
    ParentRead {
        /// The parent bootstrap.
        path: PathBuf,
        /// Why, with the offset where the bootstrap is bad.
        #[source]
        source: ReadError,
    },
    /// The parent bootstrap holds what a build cannot use, or does not fit this build.
    #[error("parent bootstrap {}: {what}", path.display())]
    Parent {
        /// The parent bootstrap.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// An eStargz layer's TOC or layer file is wrong, or cannot be represented (boxed:
    /// it is the largest error, and every build result would carry its size).
    #[error(transparent)]
    Stargz(#[from] Box<source::stargz::StargzError>),
}

impl BuildError {
    pub(crate) fn io(path: &Path, what: &str, source: std::io::Error) -> Self {
        BuildError::Io {
            path: path.to_path_buf(),
            what: what.to_string(),
            source,
        }
    }

    pub(crate) fn output(path: &Path, what: &str, source: std::io::Error) -> Self {
        BuildError::Output {
            path: path.to_path_buf(),
            what: what.to_string(),
            source,
        }
    }
}

/// Where the data blob goes.
#[derive(Clone, Debug)]
pub enum BlobTarget {
    /// This file (or FIFO).
    File(PathBuf),
    /// This directory, named by the blob's sha256 (or by `--blob-id` when given).
    Dir(PathBuf),
}

/// Build settings. `Default` gives upstream's defaults.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Chunk compressor.
    pub compressor: Compressor,
    /// Chunk digester.
    pub digester: Digester,
    /// Chunk size, a power of two in 4 KiB..=16 MiB.
    pub chunk_size: u32,
    /// Blob id to record instead of the blob's sha256.
    pub blob_id: Option<String>,
    /// Hashing and compression threads.
    pub threads: usize,
    /// Chunk dictionary: a bootstrap whose blobs' chunks are referenced instead of stored.
    pub chunk_dict: Option<PathBuf>,
    /// Bootstrap of the layers below this one.
    pub parent_bootstrap: Option<PathBuf>,
    /// How whiteouts are spelled in the source.
    pub whiteout_spec: overlay::WhiteoutSpec,
    /// Prefetch hints: the blob order of a directory build, and the bootstrap's
    /// prefetch table.
    pub prefetch: prefetch::Prefetch,
    /// RAFS version of the bootstrap.
    pub fs_version: FsVersion,
    /// RAFS v5: give chunks 4 KiB-aligned uncompressed offsets (upstream's
    /// `--aligned-chunk`) instead of packing them. RAFS v6 always aligns them.
    pub aligned_chunk: bool,
}

/// The RAFS version a build writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum FsVersion {
    /// RAFS v5: nydus's own metadata layout (`bootstrap::v5`).
    V5,
    /// RAFS v6: EROFS-compatible (`bootstrap::v6`).
    #[default]
    V6,
}

impl FsVersion {
    /// The version number.
    pub fn number(self) -> u32 {
        match self {
            FsVersion::V5 => 5,
            FsVersion::V6 => 6,
        }
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            chunk_size: 0x10_0000,
            blob_id: None,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            parent_bootstrap: None,
            chunk_dict: None,
            whiteout_spec: overlay::WhiteoutSpec::Oci,
            prefetch: prefetch::Prefetch::none(),
            fs_version: FsVersion::V6,
            aligned_chunk: false,
        }
    }
}

impl BuildOptions {
    /// How the new blob's chunks get uncompressed offsets.
    pub fn blob_layout(&self) -> blob::Layout {
        match (self.fs_version, self.aligned_chunk) {
            (FsVersion::V6, _) => blob::Layout::Blocks,
            (FsVersion::V5, false) => blob::Layout::Dense,
            (FsVersion::V5, true) => blob::Layout::Aligned,
        }
    }

    /// Checks the settings before any work starts.
    pub fn validate(&self) -> Result<(), BuildError> {
        let cs = self.chunk_size;
        if !cs.is_power_of_two() || !(0x1000..=0x100_0000).contains(&cs) {
            return Err(BuildError::Options(format!(
                "chunk size 0x{cs:x} must be a power of two between 0x1000 and 0x1000000"
            )));
        }
        if self.compressor == Compressor::Gzip {
            return Err(BuildError::Options(
                "gzip is read-only here; use none, lz4_block or zstd".into(),
            ));
        }
        if let Some(id) = &self.blob_id {
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_graphic())
                || id.contains('/')
            {
                return Err(BuildError::Options(format!(
                    "blob id {id:?} must be 1 to 64 printable ASCII characters without '/'"
                )));
            }
        }
        Ok(())
    }
}

/// What a build produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildSummary {
    /// The bootstrap path.
    pub bootstrap: PathBuf,
    /// The blob's path, if a blob was written.
    pub blob_path: Option<PathBuf>,
    /// The blob id, if a blob was written.
    pub blob_id: Option<String>,
    /// Blob size in bytes (0 when none).
    pub blob_size: u64,
    /// Bootstrap size in bytes.
    pub bootstrap_size: u64,
    /// Entries in the tree (hard links counted per name).
    pub entries: u64,
    /// Distinct inodes.
    pub inodes: u64,
    /// Chunks across all files.
    pub total_chunks: u64,
    /// Distinct chunks stored.
    pub unique_chunks: u64,
    /// Bytes of file data read.
    pub data_bytes: u64,
    /// Chunks found in the chunk dictionary instead of being stored.
    pub dict_chunks: u64,
    /// Uncompressed bytes of those chunks.
    pub dict_bytes: u64,
    /// Every blob the bootstrap references, in table order.
    pub blobs: Vec<String>,
    /// Compressor used.
    pub compressor: Compressor,
    /// Digester used.
    pub digester: Digester,
    /// Chunk size.
    pub chunk_size: u32,
}

/// A parent image as a build uses it: its nested tree, its blobs, its chunk size, and
/// each blob's v5 readahead range (0/0 for v6), which a v5 child keeps as upstream's
/// builder does.
pub(crate) type LoadedParent = (overlay::Entry, Vec<BlobEntry>, u32, Readahead);

/// Each blob's v5 readahead range (offset, bytes), by blob table position.
pub(crate) type Readahead = Vec<(u32, u32)>;

/// The parent image named in `opts` as a nested tree with its blobs; `chunk_size` and
/// `digester` are what this build uses, which the parent must share.
pub(crate) fn load_parent(
    opts: &BuildOptions,
    chunk_size: Option<u32>,
) -> Result<Option<LoadedParent>, BuildError> {
    let Some(path) = &opts.parent_bootstrap else {
        return Ok(None);
    };
    let image = crate::reader::Image::open(path, crate::storage::blobs::BlobSource::None).map_err(
        |source| BuildError::ParentRead {
            path: path.clone(),
            source,
        },
    )?;
    let sb = image.super_block();
    if image.fs_version() != opts.fs_version.number() {
        return Err(BuildError::Parent {
            path: path.clone(),
            what: format!(
                "is RAFS v{}, this build writes v{}; layers must share a version",
                image.fs_version(),
                opts.fs_version.number()
            ),
        });
    }
    if let Some(want) = chunk_size.filter(|&c| c != sb.chunk_size) {
        return Err(BuildError::Parent {
            path: path.clone(),
            what: format!(
                "chunk size 0x{:x} differs from this build's 0x{want:x}; build with --chunk-size 0x{:x}",
                sb.chunk_size, sb.chunk_size
            ),
        });
    }
    if sb.digester != opts.digester {
        return Err(BuildError::Parent {
            path: path.clone(),
            what: format!(
                "digester {} differs from this build's {}; build with --digester {}",
                sb.digester.name(),
                opts.digester.name(),
                sb.digester.name()
            ),
        });
    }
    if image.blobs().len() >= 254 {
        return Err(BuildError::Parent {
            path: path.clone(),
            what: format!(
                "already references {} blobs; RAFS v6 chunk indexes address 254",
                image.blobs().len()
            ),
        });
    }
    let readahead = (0..image.blobs().len())
        .map(|i| image.blob_readahead(i).unwrap_or((0, 0)))
        .collect();
    Ok(Some((
        parent::load(&image, 0)?,
        image.blobs().to_vec(),
        sb.chunk_size,
        readahead,
    )))
}

/// Reads the source, applies it as a layer onto the parent (or onto nothing), and returns
/// the merged tree with the parent's blobs and their readahead ranges.
fn layered_tree(
    source: &Path,
    opts: &BuildOptions,
) -> Result<(tree::Tree, Vec<BlobEntry>, Readahead), BuildError> {
    let (parent, parent_blobs, parent_readahead) = match load_parent(opts, Some(opts.chunk_size))? {
        Some((tree, blobs, _, readahead)) => (Some(tree), blobs, readahead),
        None => (None, Vec::new(), Vec::new()),
    };
    let upper = source::dir::read_tree(source)?;
    let Some(mut merged) = parent else {
        return Ok((
            overlay::first_layer(upper, opts.whiteout_spec),
            parent_blobs,
            parent_readahead,
        ));
    };
    overlay::apply(&mut merged, overlay::nest(upper, 1), opts.whiteout_spec);
    Ok((overlay::flatten(merged), parent_blobs, parent_readahead))
}

/// Builds the blob table and chunk table: the parent's blobs, then the chunk
/// dictionary's blobs this build references, then the new blob; and each file's chunk
/// list as indexes into the chunk table. A file to chunk from its source finds its
/// chunks in `new_file_chunks` (by node id); a file chunked as it was read carries them.
fn assemble_chunks(
    tree: &tree::Tree,
    new_file_chunks: &[Vec<chunker::ChunkRef>],
    new_chunks: &[ChunkInfo],
    mut blobs: Vec<BlobEntry>,
    dict_blobs: &[BlobEntry],
    new_blob: Option<BlobEntry>,
) -> (Vec<BlobEntry>, Vec<ChunkInfo>, Vec<Vec<u32>>) {
    use std::collections::HashMap;
    // Dictionary blobs actually referenced, mapped to their place in the final table.
    let mut dict_index: HashMap<u32, u32> = HashMap::new();
    // Files chunked from a stream carry their chunks.
    let carried = tree
        .nodes
        .iter()
        .filter_map(|n| match (&n.data, n.hardlink_of) {
            (tree::FileData::Chunked(refs), None) => Some(refs),
            _ => None,
        });
    for refs in new_file_chunks.iter().chain(carried) {
        for r in refs {
            if let chunker::ChunkRef::Known(info) = r {
                dict_index.entry(info.blob_index).or_insert_with(|| {
                    let entry = &dict_blobs[info.blob_index as usize];
                    match blobs.iter().position(|b| b.blob_id == entry.blob_id) {
                        Some(i) => i as u32,
                        None => {
                            blobs.push(entry.clone());
                            blobs.len() as u32 - 1
                        }
                    }
                });
            }
        }
    }
    let new_blob_index = blobs.len() as u32;
    if let Some(b) = new_blob {
        blobs.push(b);
    }
    let mut table: Vec<ChunkInfo> = Vec::new();
    let mut index: HashMap<(u32, u32), u32> = HashMap::new();
    let mut add = |info: ChunkInfo, table: &mut Vec<ChunkInfo>| -> u32 {
        *index
            .entry((info.blob_index, info.index))
            .or_insert_with(|| {
                table.push(info);
                table.len() as u32 - 1
            })
    };
    let mut files = vec![Vec::new(); tree.nodes.len()];
    for (id, node) in tree.nodes.iter().enumerate() {
        if node.kind != tree::Kind::File || node.hardlink_of.is_some() {
            continue;
        }
        files[id] = match &node.data {
            tree::FileData::Chunks(list) => {
                list.iter().map(|c| add(c.clone(), &mut table)).collect()
            }
            tree::FileData::Source | tree::FileData::Chunked(_) => {
                let refs = match &node.data {
                    tree::FileData::Chunked(refs) => refs,
                    _ => &new_file_chunks[id],
                };
                refs.iter()
                    .map(|r| {
                        let info = match r {
                            chunker::ChunkRef::New(i) => ChunkInfo {
                                blob_index: new_blob_index,
                                ..new_chunks[*i as usize].clone()
                            },
                            chunker::ChunkRef::Known(info) => ChunkInfo {
                                blob_index: dict_index[&info.blob_index],
                                ..info.clone()
                            },
                        };
                        add(info, &mut table)
                    })
                    .collect()
            }
        };
    }
    (blobs, table, files)
}

/// The bootstrap of a tree whose files all reference chunks already stored in `blobs`
/// (parent layers, merges, compaction, eStargz layers): its bytes and the blob table it
/// holds. No prefetch table: see [`stored_tree_bootstrap_with`].
pub(crate) fn stored_tree_bootstrap(
    tree: &tree::Tree,
    blobs: Vec<BlobEntry>,
    opts: bootstrap::v6::BootstrapOptions,
    fs_version: FsVersion,
) -> Result<(Vec<u8>, Vec<BlobEntry>), BuildError> {
    stored_tree_bootstrap_with(
        tree,
        blobs,
        opts,
        &prefetch::Prefetch::none(),
        fs_version,
        &[],
    )
}

/// [`stored_tree_bootstrap`] with prefetch hints: with policy `fs`, the bootstrap
/// carries the prefetch table of `tree` for `prefetch`'s patterns (the blobs are already
/// stored, so no policy changes their order), written as `fs_version`; for v5,
/// `readahead` gives each blob's readahead range by table position (see
/// [`bootstrap::v5::V5Options::readahead`]).
pub(crate) fn stored_tree_bootstrap_with(
    tree: &tree::Tree,
    blobs: Vec<BlobEntry>,
    opts: bootstrap::v6::BootstrapOptions,
    prefetch: &prefetch::Prefetch,
    fs_version: FsVersion,
    readahead: &[(u32, u32)],
) -> Result<(Vec<u8>, Vec<BlobEntry>), BuildError> {
    debug_assert!(tree
        .nodes
        .iter()
        .all(|n| n.kind != tree::Kind::File || n.data != tree::FileData::Source));
    let no_new = vec![Vec::new(); tree.nodes.len()];
    let (blobs, chunks, file_chunks) = assemble_chunks(tree, &no_new, &[], blobs, &[], None);
    let table = prefetch.table(tree);
    let input = bootstrap::v6::BootstrapInput {
        tree,
        file_chunks: &file_chunks,
        chunks: &chunks,
        blobs: &blobs,
        prefetch: table.as_ref(),
    };
    let bytes = match fs_version {
        FsVersion::V6 => bootstrap::v6::write(&input, opts)?,
        // The tree keeps no record of which names upstream's tar builder flagged as
        // later names of a hard link, so none is flagged: nydus-rafs 0.2.2 never reads
        // the flag (it tells a hard link by a regular file's link count).
        FsVersion::V5 => bootstrap::v5::write(
            &input,
            bootstrap::v5::V5Options {
                base: opts,
                hardlink_flag: false,
                readahead,
            },
        )?,
    };
    Ok((bytes, blobs))
}

/// Where the bootstrap goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapTarget {
    /// A file of its own.
    File(PathBuf),
    /// Inside the data blob, after the chunk data and blob meta (upstream's
    /// `--blob-inline-meta`), each section followed by a tar header; `toc` adds the chunk
    /// digests and a table of contents and stores the bootstrap zstd-compressed
    /// (`--features blob-toc`). The blob is always written, even without chunks.
    InBlob {
        /// Add the table of contents.
        toc: bool,
    },
}

/// Builds a RAFS v6 image of `source` with its bootstrap at `bootstrap_path`; see
/// [`build_to`].
pub fn build(
    source: &Path,
    bootstrap_path: &Path,
    blob_target: &BlobTarget,
    opts: &BuildOptions,
    progress: &(dyn Fn(&chunker::Progress) + Sync),
) -> Result<BuildSummary, BuildError> {
    let target = BootstrapTarget::File(bootstrap_path.to_path_buf());
    build_to(source, &target, blob_target, opts, progress)
}

/// Where the bootstrap is being written.
enum BootOutput {
    File(PathBuf, PendingFile, File),
    InBlob { toc: bool },
}

/// Builds a RAFS v6 image of the directory `source`; see [`build_from`].
pub fn build_to(
    source: &Path,
    bootstrap_target: &BootstrapTarget,
    blob_target: &BlobTarget,
    opts: &BuildOptions,
    progress: &(dyn Fn(&chunker::Progress) + Sync),
) -> Result<BuildSummary, BuildError> {
    let source = Source::Dir(source.to_path_buf());
    build_from(&source, bootstrap_target, blob_target, opts, progress)
}

/// What a build reads its tree from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory, read before anything is written; its files are read as they are
    /// chunked.
    Dir(PathBuf),
    /// A tar layer (a file or a FIFO), read once as a stream while the blob is written.
    Tar(PathBuf, source::tar::TarFormat),
}

/// Builds a RAFS v6 image of `source`. Outputs appear at their final paths only when all
/// are complete. `progress` hears as files are done. With the bootstrap in the blob, the
/// summary's `bootstrap` is the blob's path, and its blob id the blob's sha256 (the name
/// a reader gives the blob; the bootstrap itself records upstream's placeholder).
pub fn build_from(
    source: &Source,
    bootstrap_target: &BootstrapTarget,
    blob_target: &BlobTarget,
    opts: &BuildOptions,
    progress: &(dyn Fn(&chunker::Progress) + Sync),
) -> Result<BuildSummary, BuildError> {
    opts.validate()?;
    if let BlobTarget::Dir(dir) = blob_target {
        if !dir.is_dir() {
            return Err(BuildError::Output {
                path: dir.clone(),
                what: "blob directory does not exist".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
    }
    if matches!(bootstrap_target, BootstrapTarget::InBlob { toc: true })
        && opts.fs_version == FsVersion::V5
    {
        // Upstream 2.2.0 refuses `--features blob-toc` with v5 too.
        return Err(BuildError::Options(
            "a TOC in a blob carrying its bootstrap is RAFS v6 only; build v5 without it".into(),
        ));
    }
    if matches!(bootstrap_target, BootstrapTarget::InBlob { .. }) && opts.blob_id.is_some() {
        return Err(BuildError::Options(
            "a blob carrying its bootstrap is named by its consumer: it takes no blob id".into(),
        ));
    }
    let started = std::time::Instant::now();
    // A directory is read whole before anything is written; a tar layer is read while
    // the blob is written, onto its parent once it has been read.
    let mut parent_readahead = Vec::new();
    let (dir_tree, tar_parent) = match source {
        Source::Dir(path) => {
            let (tree, parent_blobs, readahead) = layered_tree(path, opts)?;
            parent_readahead = readahead;
            log::debug!(
                "{}: {} entries, {} inodes, read in {:.3} s",
                path.display(),
                tree.nodes.len(),
                tree.inode_count(),
                started.elapsed().as_secs_f64()
            );
            (Some((tree, parent_blobs)), None)
        }
        Source::Tar(..) => (None, load_parent(opts, Some(opts.chunk_size))?),
    };

    // Open the outputs before the long part, so an unwritable path fails early.
    let boot_out = match bootstrap_target {
        BootstrapTarget::File(p) => {
            let (pending, file) = PendingFile::create(p)?;
            BootOutput::File(p.clone(), pending, file)
        }
        BootstrapTarget::InBlob { toc } => BootOutput::InBlob { toc: *toc },
    };
    let (mut blob_pending, blob_file) = match blob_target {
        BlobTarget::File(p) => PendingFile::create(p)?,
        BlobTarget::Dir(d) => PendingFile::create_in(d, "blob")?,
    };

    let chunk_opts = chunker::ChunkOptions {
        chunk_size: opts.chunk_size,
        compressor: opts.compressor,
        digester: opts.digester,
        threads: opts.threads,
    };
    let mut writer = BlobWriter::new(
        BufWriter::with_capacity(1 << 20, output::Writeback::new(blob_file)),
        opts.compressor,
        opts.digester,
        opts.chunk_size,
    )
    .with_layout(opts.blob_layout());
    let dict = match &opts.chunk_dict {
        Some(path) => Some(dict::ChunkDict::load(path, opts)?),
        None => None,
    };
    let known = |digest: &[u8; 32]| dict.as_ref().and_then(|d| d.get(digest));
    let (tree, parent_blobs, chunked, new_file_chunks, readahead_last) = match (source, dir_tree) {
        (Source::Dir(_), Some((tree, parent_blobs))) => {
            // Prefetched files first, as upstream lays out a directory's blob; a tar
            // layer's data is stored as it streams by.
            let first = opts.prefetch.file_order(&tree);
            let mut chunked = chunker::chunk_files_first(
                &tree,
                &first,
                chunk_opts,
                &mut writer,
                &known,
                progress,
            )?;
            let by_node = std::mem::take(&mut chunked.file_chunks);
            // The last new chunk of the files stored first: with policy `blob`, upstream's
            // v5 blob table gives the blob's head up to its end as the readahead range.
            let readahead_last = (opts.prefetch.policy == prefetch::PrefetchPolicy::Blob)
                .then(|| {
                    first
                        .iter()
                        .flat_map(|&id| &by_node[tree.nodes[id].hardlink_of.unwrap_or(id)])
                        .filter_map(|r| match r {
                            chunker::ChunkRef::New(i) => Some(*i),
                            chunker::ChunkRef::Known(_) => None,
                        })
                        .max()
                })
                .flatten();
            (tree, parent_blobs, chunked, by_node, readahead_last)
        }
        (Source::Tar(path, format), _) => {
            let (upper, chunked) = source::tar::chunk_layer(
                path,
                *format,
                opts.whiteout_spec,
                chunk_opts,
                &mut writer,
                &known,
                progress,
            )?;
            // Every file of the layer carries its chunks; the parent's, theirs.
            let (tree, parent_blobs) = match tar_parent {
                Some((mut parent, blobs, _, readahead)) => {
                    parent_readahead = readahead;
                    overlay::apply(&mut parent, upper, opts.whiteout_spec);
                    (overlay::flatten(parent), blobs)
                }
                None => {
                    let mut root = overlay::empty_root(&upper.node);
                    overlay::apply(&mut root, upper, opts.whiteout_spec);
                    (overlay::flatten(root), Vec::new())
                }
            };
            let none = vec![Vec::new(); tree.nodes.len()];
            (tree, parent_blobs, chunked, none, None)
        }
        (Source::Dir(_), None) => unreachable!("a directory's tree is read first"),
    };
    log::debug!("chunked at {:.3} s", started.elapsed().as_secs_f64());
    crate::heap::release_free();
    let blob_err = |e| BuildError::output(&blob_pending.target, "cannot write blob", e);
    let (new_chunks, new_blob, finished, inline_tail) = match &boot_out {
        BootOutput::InBlob { toc } => {
            let (tail, entry, chunks) = writer
                .finish_inline(*toc, opts.fs_version == FsVersion::V6)
                .map_err(blob_err)?;
            (chunks, entry, None, Some(tail))
        }
        BootOutput::File(..) if writer.chunk_count() > 0 => {
            let (finished, chunks) = writer.finish(opts.blob_id.as_deref()).map_err(blob_err)?;
            (chunks, Some(finished.entry.clone()), Some(finished), None)
        }
        BootOutput::File(..) => {
            drop(writer);
            (Vec::new(), None, None, None)
        }
    };
    let new_blob_id = new_blob.as_ref().map(|b| b.blob_id.clone());
    let (blobs, chunks, file_chunks) = assemble_chunks(
        &tree,
        &new_file_chunks,
        &new_chunks,
        parent_blobs,
        dict.as_ref().map(|d| d.blobs.as_slice()).unwrap_or(&[]),
        new_blob,
    );
    let new_blob_index = new_blob_id
        .as_ref()
        .and_then(|id| blobs.iter().position(|b| &b.blob_id == id));
    if blobs.len() > 254 {
        return Err(BuildError::Options(format!(
            "the image would reference {} blobs; RAFS v6 chunk indexes address 254",
            blobs.len()
        )));
    }

    let table = opts.prefetch.table(&tree);
    let input = bootstrap::v6::BootstrapInput {
        tree: &tree,
        file_chunks: &file_chunks,
        chunks: &chunks,
        blobs: &blobs,
        prefetch: table.as_ref(),
    };
    let base = bootstrap::v6::BootstrapOptions {
        chunk_size: opts.chunk_size,
        compressor: opts.compressor,
        digester: opts.digester,
    };
    // The new blob's readahead range (v5, policy `blob`): the head its prefetched files
    // were stored in, as upstream records it (a u32; upstream fails past that, we clamp).
    // The parent's blobs come first in the table and keep their ranges.
    let mut readahead = parent_readahead;
    readahead.resize(blobs.len(), (0, 0));
    if let Some((c, blob)) = readahead_last
        .and_then(|i| new_chunks.get(i as usize))
        .zip(new_blob_index)
    {
        let end = c.compressed_offset + c.compressed_size as u64;
        readahead[blob] = (0, u32::try_from(end).unwrap_or(u32::MAX));
    }
    let image = match opts.fs_version {
        FsVersion::V6 => bootstrap::v6::write(&input, base)?,
        FsVersion::V5 => bootstrap::v5::write(
            &input,
            bootstrap::v5::V5Options {
                base,
                hardlink_flag: matches!(source, Source::Tar(..)),
                readahead: &readahead,
            },
        )?,
    };
    log::debug!(
        "bootstrap laid out at {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let (bootstrap, blob_final, blob_id, blob_size) = match boot_out {
        BootOutput::InBlob { .. } => {
            let tail = inline_tail.expect("an inline build finished its blob with a tail");
            let done = tail
                .finish(&image)
                .map_err(|e| BuildError::output(&blob_pending.target, "cannot write blob", e))?;
            if let BlobTarget::Dir(d) = blob_target {
                blob_pending.retarget(d.join(&done.sha256));
            }
            let path = blob_pending.commit()?;
            (path.clone(), Some(path), Some(done.sha256), done.size)
        }
        BootOutput::File(path, mut boot_pending, file) => {
            let mut boot_file = BufWriter::new(file);
            boot_file
                .write_all(&image)
                .and_then(|_| boot_file.flush())
                .map_err(|e| BuildError::output(&path, "cannot write bootstrap", e))?;
            drop(boot_file);
            let blob_final = match (&finished, blob_target) {
                (Some(f), BlobTarget::Dir(d)) => {
                    let name = opts.blob_id.clone().unwrap_or_else(|| f.sha256.clone());
                    blob_pending.retarget(d.join(name));
                    Some(blob_pending.commit()?)
                }
                (Some(_), BlobTarget::File(_)) => Some(blob_pending.commit()?),
                (None, _) => {
                    drop(blob_pending); // nothing to store: no blob file appears
                    None
                }
            };
            boot_pending.retarget(path);
            let bootstrap = match boot_pending.commit() {
                Ok(p) => p,
                Err(e) => {
                    if let Some(b) = &blob_final {
                        let _ = std::fs::remove_file(b);
                    }
                    return Err(e);
                }
            };
            let id = finished.as_ref().map(|f| f.entry.blob_id.clone());
            let size = finished.as_ref().map(|f| f.size).unwrap_or(0);
            (bootstrap, blob_final, id, size)
        }
    };
    log::debug!(
        "outputs in place at {:.3} s",
        started.elapsed().as_secs_f64()
    );
    // A reader names the blob that carries the bootstrap by its sha256.
    let named = |b: &BlobEntry| {
        if b.blob_id == blob::INLINE_PLACEHOLDER_ID && b.features & INLINED_FS_META != 0 {
            blob_id.clone().unwrap_or_default()
        } else {
            b.blob_id.clone()
        }
    };
    Ok(BuildSummary {
        bootstrap,
        blob_path: blob_final,
        blob_id: blob_id.clone(),
        blob_size,
        bootstrap_size: image.len() as u64,
        entries: tree.nodes.len() as u64,
        inodes: tree.inode_count() as u64,
        total_chunks: chunked.total_chunks,
        unique_chunks: new_chunks.len() as u64,
        data_bytes: chunked.bytes_read,
        dict_chunks: chunked.known_chunks,
        dict_bytes: chunked.known_bytes,
        blobs: blobs.iter().map(named).collect(),
        compressor: opts.compressor,
        digester: opts.digester,
        chunk_size: opts.chunk_size,
    })
}
