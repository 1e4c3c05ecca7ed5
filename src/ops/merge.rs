//! `merge`: combines the bootstraps of separately built layers (bottom first) into one,
//! applying each upper layer's OCI whiteouts, as upstream 2.2.0's `nydus-image merge` does
//! for containerd's nydus converter. No blob is read or written: the result references
//! every layer's blob.
//!
//! How upstream names blobs, which this module copies:
//! - a layer bootstrap references at most one blob of its own; any other blob it
//!   references must come from the chunk dictionary (`--chunk-dict`), and keeps its id;
//! - the layer's own blob is named by `--blob-digests` when given, or else by the
//!   bootstrap's file name less every extension (`sha256.boot` names blob `sha256`): the
//!   converter names each bootstrap it takes out of a blob by the blob's sha256, since
//!   such a bootstrap (`--blob-inline-meta`) holds only a placeholder id;
//! - `--blob-sizes` replaces the blob's compressed size, `--blob-toc-digests` and
//!   `--blob-toc-sizes` its TOC digest and size in the blob table;
//! - the merged table no longer marks any blob `INLINED_FS_META`: its bootstrap is the
//!   merged one, not the one inside the blob.
//!
//! A source may also be a data blob carrying its bootstrap: read directly, or (as
//! upstream) found in `--blob-dir` under the name the source path gives.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::builder::output::PendingFile;
use crate::builder::overlay::{self, Entry, WhiteoutSpec};
use crate::builder::prefetch::Prefetch;
use crate::builder::tree::FileData;
use crate::builder::{bootstrap, parent, BuildError};
use crate::format::v6::tables::blob_features::{INLINED_FS_META, SEPARATE};
use crate::format::v6::tables::BlobEntry;
use crate::format::Digester;
use crate::reader::{Image, ReadError};
use crate::storage::blobs::BlobSource;

/// Most blobs a merged image references: RAFS v6 chunk indexes address 254 besides the
/// bootstrap's own device.
const MAX_BLOBS: usize = 254;

/// Why a merge failed. Every variant names the file involved.
#[derive(Debug, Error)]
pub enum MergeError {
    /// No source bootstrap was given.
    #[error("merge needs at least one source bootstrap")]
    NoSources,
    /// A per-layer list does not give one value per source bootstrap.
    #[error(
        "{flag} lists {given} value(s) for {sources} source bootstrap(s): give one per source"
    )]
    Count {
        /// The flag, as the CLI spells it.
        flag: &'static str,
        /// Values given.
        given: usize,
        /// Source bootstraps.
        sources: usize,
    },
    /// A source (or the parent, or the chunk dictionary) is missing, is no bootstrap, or
    /// is a blob whose inline metadata is damaged.
    #[error("{role} {}: cannot read it", path.display())]
    Read {
        /// "layer bootstrap", "parent bootstrap" or "chunk dictionary".
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// Why, with the offset of what is bad (boxed: it is the largest error).
        #[source]
        source: Box<ReadError>,
    },
    /// A source does not fit the merge.
    #[error("{role} {}: {what}", path.display())]
    Layer {
        /// "layer bootstrap", "parent bootstrap" or "chunk dictionary".
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Laying out or writing the merged bootstrap failed.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Where the merged bootstrap goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeTarget {
    /// This file.
    File(PathBuf),
    /// This directory, named by the bootstrap's sha256 (upstream's `merge -D DIR`
    /// without `--bootstrap`).
    Dir(PathBuf),
}

/// Merge settings; `Default` merges the sources as they are.
#[derive(Clone, Debug, Default)]
pub struct MergeOptions {
    /// Per source: the sha256 naming the layer's own blob (`--blob-digests`).
    pub blob_digests: Option<Vec<[u8; 32]>>,
    /// Per source: the compressed size recorded for the layer's own blob, the whole
    /// blob file (`--blob-sizes`).
    pub blob_sizes: Option<Vec<u64>>,
    /// Per source: the TOC digest recorded for the layer's own blob (`--blob-toc-digests`).
    pub blob_toc_digests: Option<Vec<[u8; 32]>>,
    /// Per source: the TOC size recorded for the layer's own blob (`--blob-toc-sizes`).
    pub blob_toc_sizes: Option<Vec<u32>>,
    /// The chunk dictionary the layers were built with: its blobs may be referenced by a
    /// layer besides the layer's own, and keep their ids.
    pub chunk_dict: Option<PathBuf>,
    /// An image the layers are merged onto: its tree is the bottom, its blobs come first
    /// in the table with their ids.
    pub parent_bootstrap: Option<PathBuf>,
    /// Where a source that is no bootstrap is looked up as a blob carrying its bootstrap,
    /// by the id the source path gives (`--blob-dir`).
    pub blob_dir: Option<PathBuf>,
    /// Prefetch hints (`--prefetch-policy`): with `fs`, the merged bootstrap gets a
    /// prefetch table over the merged tree, as upstream's merge writes it. No blob is
    /// rewritten, so `blob` changes nothing here.
    pub prefetch: Prefetch,
}

impl MergeOptions {
    /// Checks that every per-layer list gives one value per source, before any work.
    pub fn check_counts(&self, sources: usize) -> Result<(), MergeError> {
        if sources == 0 {
            return Err(MergeError::NoSources);
        }
        let counts = [
            ("--blob-digests", self.blob_digests.as_ref().map(Vec::len)),
            ("--blob-sizes", self.blob_sizes.as_ref().map(Vec::len)),
            (
                "--blob-toc-digests",
                self.blob_toc_digests.as_ref().map(Vec::len),
            ),
            (
                "--blob-toc-sizes",
                self.blob_toc_sizes.as_ref().map(Vec::len),
            ),
        ];
        for (flag, given) in counts {
            if let Some(given) = given.filter(|&n| n != sources) {
                return Err(MergeError::Count {
                    flag,
                    given,
                    sources,
                });
            }
        }
        Ok(())
    }
}

/// What a merge produced.
#[derive(Clone, Debug)]
pub struct MergeSummary {
    /// The merged bootstrap.
    pub bootstrap: PathBuf,
    /// Blob ids it references, in table order.
    pub blobs: Vec<String>,
    /// Entries in the merged tree.
    pub entries: u64,
}

/// The blob id upstream derives from a bootstrap's path: its file name less every
/// extension (`a.b.boot` gives `a`), as `Path::file_stem` strips them one by one.
pub fn blob_id_from_path(path: &Path) -> Option<String> {
    let mut name = path.file_name()?;
    loop {
        let stem = Path::new(name).file_stem()?;
        if stem.is_empty() {
            return None;
        }
        if stem == name {
            return name.to_str().map(str::to_string);
        }
        name = stem;
    }
}

/// Whether `id` fits a blob table entry: 1 to 64 printable ASCII characters.
fn is_storable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The chunk settings every merged image must share.
#[derive(Clone, Copy)]
struct Settings {
    chunk_size: u32,
    digester: Digester,
    /// RAFS version (5 or 6): the merged image is written in its inputs' version.
    fs_version: u32,
}

/// Checks `image` against the settings of the first image opened.
fn check_settings(
    settings: &mut Option<Settings>,
    image: &Image,
    role: &'static str,
    path: &Path,
) -> Result<(), MergeError> {
    let sb = image.super_block();
    let these = Settings {
        chunk_size: sb.chunk_size,
        digester: sb.digester,
        fs_version: image.fs_version(),
    };
    let Some(first) = settings else {
        *settings = Some(these);
        return Ok(());
    };
    // Upstream's merge refuses a mix of versions too (nydus-rafs `check_compatibility`).
    if first.fs_version != these.fs_version {
        return Err(MergeError::Layer {
            role,
            path: path.to_path_buf(),
            what: format!(
                "is RAFS v{}, the first image is v{}: merged images share one version",
                these.fs_version, first.fs_version
            ),
        });
    }
    // Upstream checks the chunk size; one digester is recorded for the merged image, so
    // it must be the same too.
    if first.chunk_size != these.chunk_size || first.digester != these.digester {
        return Err(MergeError::Layer {
            role,
            path: path.to_path_buf(),
            what: format!(
                "chunk size 0x{:x} and digester {} differ from the first image's 0x{:x} and {}",
                these.chunk_size,
                these.digester.name(),
                first.chunk_size,
                first.digester.name()
            ),
        });
    }
    Ok(())
}

/// Opens a source: a bootstrap or a blob carrying one; failing that, the blob named by
/// the path's id in `blob_dir`, as upstream looks for inline metadata.
fn open_source(
    path: &Path,
    blob_dir: Option<&Path>,
    role: &'static str,
) -> Result<Image, MergeError> {
    let err = |source| MergeError::Read {
        role,
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    match Image::open_any(path, BlobSource::None) {
        Ok(image) => Ok(image),
        Err(first) => {
            let candidate = blob_dir
                .zip(blob_id_from_path(path))
                .map(|(dir, id)| dir.join(id))
                .filter(|c| c.as_path() != path && c.is_file());
            match candidate {
                Some(c) if crate::reader::is_inline_blob(&c).unwrap_or(false) => {
                    log::debug!(
                        "{}: reading the bootstrap in {}",
                        path.display(),
                        c.display()
                    );
                    Image::open_any(&c, BlobSource::None).map_err(|source| MergeError::Read {
                        role,
                        path: c.clone(),
                        source: Box::new(source),
                    })
                }
                _ => Err(err(first)),
            }
        }
    }
}

/// The id a blob table entry of the image at `path` goes by: an inline blob's by the
/// path's id (upstream's `BlobInfo::blob_id`), any other by the id it records.
fn entry_id(entry: &BlobEntry, path: &Path) -> String {
    if entry.features & INLINED_FS_META != 0 {
        if let Some(id) = blob_id_from_path(path) {
            return id;
        }
    }
    entry.blob_id.clone()
}

/// The merged blob table as it grows: ids map to table positions.
#[derive(Default)]
struct BlobTable {
    blobs: Vec<BlobEntry>,
    /// Each blob's v5 readahead range, kept from the image it came from (upstream's
    /// merge keeps it; 0/0 from a v6 image).
    readahead: Vec<(u32, u32)>,
    by_id: HashMap<String, u32>,
}

impl BlobTable {
    /// Adds `entry` (or finds the entry with its id) and returns its position.
    fn add(&mut self, mut entry: BlobEntry, readahead: Option<(u32, u32)>) -> u32 {
        entry.features &= !INLINED_FS_META;
        if let Some(&i) = self.by_id.get(&entry.blob_id) {
            return i;
        }
        let i = self.blobs.len() as u32;
        self.by_id.insert(entry.blob_id.clone(), i);
        self.blobs.push(entry);
        self.readahead.push(readahead.unwrap_or((0, 0)));
        i
    }
}

/// Points every chunk of the tree at its blob's position in the merged table.
fn remap(e: &mut Entry, map: &[u32]) {
    if let FileData::Chunks(list) = &mut e.node.data {
        for c in list {
            // The reader checked each chunk's blob index against the image's table.
            c.blob_index = map[c.blob_index as usize];
        }
    }
    for child in e.children.values_mut() {
        remap(child, map);
    }
}

/// The ids of the chunk dictionary's blobs, checked against the merge's settings.
fn dict_blob_ids(
    path: &Path,
    settings: &mut Option<Settings>,
) -> Result<HashSet<String>, MergeError> {
    const ROLE: &str = "chunk dictionary";
    let image = open_source(path, None, ROLE)?;
    check_settings(settings, &image, ROLE, path)?;
    Ok(image.blobs().iter().map(|b| entry_id(b, path)).collect())
}

/// Merges `layers` (bottom first) onto `opts.parent_bootstrap`, if any, into `target`.
/// Nothing appears at the target unless the merge succeeds.
pub fn merge(
    layers: &[PathBuf],
    target: &MergeTarget,
    opts: &MergeOptions,
) -> Result<MergeSummary, MergeError> {
    opts.check_counts(layers.len())?;
    if let MergeTarget::Dir(dir) = target {
        if !dir.is_dir() {
            return Err(BuildError::Output {
                path: dir.clone(),
                what: "directory for the merged bootstrap does not exist".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }
            .into());
        }
    }
    let mut settings: Option<Settings> = None;
    let dict_ids = match &opts.chunk_dict {
        Some(p) => dict_blob_ids(p, &mut settings)?,
        None => HashSet::new(),
    };
    let mut table = BlobTable::default();
    let mut merged: Option<Entry> = None;
    let mut compressor = None;
    let mut layer_index = 0u32;
    if let Some(path) = &opts.parent_bootstrap {
        const ROLE: &str = "parent bootstrap";
        let image = open_source(path, opts.blob_dir.as_deref(), ROLE)?;
        check_settings(&mut settings, &image, ROLE, path)?;
        let map: Vec<u32> = image
            .blobs()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                table.add(
                    BlobEntry {
                        blob_id: entry_id(b, path),
                        ..b.clone()
                    },
                    image.blob_readahead(i),
                )
            })
            .collect();
        let mut entry = parent::load(&image, layer_index)?;
        remap(&mut entry, &map);
        merged = Some(entry);
        compressor = Some(image.super_block().compressor);
        layer_index += 1;
    }
    for (i, path) in layers.iter().enumerate() {
        const ROLE: &str = "layer bootstrap";
        let image = open_source(path, opts.blob_dir.as_deref(), ROLE)?;
        check_settings(&mut settings, &image, ROLE, path)?;
        let bad = |what: String| MergeError::Layer {
            role: ROLE,
            path: path.clone(),
            what,
        };
        let mut own_seen = false;
        let mut map = Vec::with_capacity(image.blobs().len());
        for (bi, b) in image.blobs().iter().enumerate() {
            let id = entry_id(b, path);
            let readahead = image.blob_readahead(bi);
            if dict_ids.contains(&id) {
                map.push(table.add(
                    BlobEntry {
                        blob_id: id,
                        ..b.clone()
                    },
                    readahead,
                ));
                continue;
            }
            if own_seen {
                let ids: Vec<&str> = image.blobs().iter().map(|b| b.blob_id.as_str()).collect();
                return Err(bad(format!(
                    "references blobs {} of which more than one is not the chunk dictionary's: a layer bootstrap has at most one blob of its own (give --chunk-dict if the layers were built with one; layers built with --parent-bootstrap are not merged)",
                    ids.join(", ")
                )));
            }
            own_seen = true;
            if b.features & SEPARATE != 0 {
                return Err(bad(format!(
                    "blob {} keeps its metadata in a separate blob, which merge does not support",
                    b.blob_id
                )));
            }
            let mut own = b.clone();
            own.blob_id = match opts.blob_digests.as_ref().map(|d| d[i]) {
                Some(digest) => hex::encode(digest),
                None => blob_id_from_path(path)
                    .filter(|id| is_storable_id(id))
                    .ok_or_else(|| {
                        bad("its file name does not give a blob id (1 to 64 printable ASCII characters before the first '.'): name it by its blob's sha256, or give --blob-digests".into())
                    })?,
            };
            if let Some(sizes) = &opts.blob_sizes {
                own.compressed_size = sizes[i];
            }
            if let Some(digests) = &opts.blob_toc_digests {
                own.toc_digest = digests[i];
            }
            if let Some(sizes) = &opts.blob_toc_sizes {
                own.toc_size = sizes[i];
            }
            map.push(table.add(own, readahead));
        }
        if table.blobs.len() > MAX_BLOBS {
            return Err(bad(format!(
                "the merged image would reference more than {MAX_BLOBS} blobs"
            )));
        }
        let mut entry = parent::load(&image, layer_index)?;
        remap(&mut entry, &map);
        match &mut merged {
            None => {
                let mut root = overlay::empty_root(&entry.node);
                overlay::apply(&mut root, entry, WhiteoutSpec::Oci);
                merged = Some(root);
            }
            Some(m) => overlay::apply(m, entry, WhiteoutSpec::Oci),
        }
        // Upstream records the last layer's compressor.
        compressor = Some(image.super_block().compressor);
        layer_index += 1;
    }
    let tree = overlay::flatten(merged.expect("at least one layer"));
    let settings = settings.expect("at least one layer");
    let BlobTable {
        blobs: table_blobs,
        readahead,
        ..
    } = table;
    let (bytes, blobs) = crate::builder::stored_tree_bootstrap_with(
        &tree,
        table_blobs,
        bootstrap::v6::BootstrapOptions {
            chunk_size: settings.chunk_size,
            compressor: compressor.expect("at least one layer"),
            digester: settings.digester,
        },
        &opts.prefetch,
        match settings.fs_version {
            5 => crate::builder::FsVersion::V5,
            _ => crate::builder::FsVersion::V6,
        },
        &readahead,
    )?;
    let out = match target {
        MergeTarget::File(p) => p.clone(),
        MergeTarget::Dir(d) => d.join(hex::encode(Sha256::digest(&bytes))),
    };
    let bootstrap = PendingFile::write_whole(&out, &bytes, "bootstrap")?;
    Ok(MergeSummary {
        bootstrap,
        blobs: blobs.iter().map(|b| b.blob_id.clone()).collect(),
        entries: tree.nodes.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_come_from_file_names_less_every_extension() {
        for (path, want) in [
            ("/x/0123abcd", Some("0123abcd")),
            ("/x/layer.boot", Some("layer")),
            ("a.b.c", Some("a")),
            ("/x/.boot", Some(".boot")),
            ("/", None),
        ] {
            assert_eq!(
                blob_id_from_path(Path::new(path)).as_deref(),
                want,
                "{path}"
            );
        }
    }

    #[test]
    fn every_list_must_give_one_value_per_source() {
        let opts = MergeOptions {
            blob_sizes: Some(vec![1, 2]),
            ..MergeOptions::default()
        };
        assert!(opts.check_counts(2).is_ok());
        let err = opts.check_counts(3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--blob-sizes lists 2 value(s) for 3 source bootstrap(s): give one per source"
        );
        assert!(matches!(
            MergeOptions::default().check_counts(0),
            Err(MergeError::NoSources)
        ));
        let opts = MergeOptions {
            blob_toc_digests: Some(vec![[0; 32]]),
            ..MergeOptions::default()
        };
        assert!(matches!(
            opts.check_counts(2),
            Err(MergeError::Count {
                flag: "--blob-toc-digests",
                ..
            })
        ));
    }
}
