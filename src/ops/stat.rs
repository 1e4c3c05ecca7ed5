//! `stat`: file and chunk statistics of images, and what deduplicating chunks across them
//! would save, as upstream 2.2.0's `nydus-image stat` computes them (same JSON fields,
//! same meanings).
//!
//! Base images (one bootstrap, or every bootstrap of a directory) are summed into one
//! [`ImageInfo`]; their distinct chunks (by digest) form a dictionary. A target image is
//! summed on its own, and each of its distinct chunks is either found in that dictionary
//! (`ref_*`: what deduplication against the bases saves) or not (`own_*`). Everything is
//! read through [`crate::reader::Image`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::format::Digester;
use crate::reader::{Image, Nid, ReadError};
use crate::storage::blobs::BlobSource;

/// Number of file size classes: bit lengths 0 to 44 (larger sizes count in the last).
const FILE_SIZE_CLASSES: usize = 45;

/// Why `stat` failed.
#[derive(Debug, Error)]
pub enum StatError {
    /// An image could not be read.
    #[error("stat of {}", path.display())]
    Read {
        /// The bootstrap.
        path: PathBuf,
        /// What failed.
        #[source]
        source: ReadError,
    },
    /// The blob directory could not be listed.
    #[error("cannot list {}", dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Figures for one image, or the sum of the base images (upstream's `ImageInfo`; field
/// order is upstream's JSON order).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// Directories, the root included.
    pub dirs: u32,
    /// Regular files, each name of a hard link counted.
    pub files: u32,
    /// Symbolic links.
    pub symlinks: u32,
    /// Chunks of the files (a hard-linked file once).
    pub chunks: u32,
    /// Bytes of file data (a hard-linked file once).
    pub file_size: u64,
    /// Compressed bytes of those chunks.
    pub comp_size: u64,
    /// Uncompressed bytes of those chunks, plus `padding_size`.
    pub uncomp_size: u64,
    /// Bytes rounding each file up to 4 KiB would add.
    pub padding_size: u64,
    /// For chunk sizes 2^12 to 2^20: chunks the files would be cut into.
    pub chunk_sizes: [u32; 9],
    /// Files by the bit length of their size (index 44 holds larger ones too).
    pub file_sizes: Vec<u64>,
    /// Distinct chunks over all base images (with a blob directory).
    pub dedup_chunks: u64,
    /// Their compressed bytes.
    pub dedup_comp_size: u64,
    /// Their uncompressed bytes.
    pub dedup_uncomp_size: u64,
    /// Base: distinct chunks of each image, summed; target: its chunks not in any base.
    pub own_chunks: u64,
    /// Their compressed bytes.
    pub own_comp_size: u64,
    /// Their uncompressed bytes.
    pub own_uncomp_size: u64,
    /// Target: its distinct chunks a base image has too.
    pub ref_chunks: u64,
    /// Their compressed bytes.
    pub ref_comp_size: u64,
    /// Their uncompressed bytes.
    pub ref_uncomp_size: u64,
}

impl Default for ImageInfo {
    fn default() -> Self {
        ImageInfo {
            dirs: 0,
            files: 0,
            symlinks: 0,
            chunks: 0,
            file_size: 0,
            comp_size: 0,
            uncomp_size: 0,
            padding_size: 0,
            chunk_sizes: [0; 9],
            file_sizes: vec![0; FILE_SIZE_CLASSES],
            dedup_chunks: 0,
            dedup_comp_size: 0,
            dedup_uncomp_size: 0,
            own_chunks: 0,
            own_comp_size: 0,
            own_uncomp_size: 0,
            ref_chunks: 0,
            ref_comp_size: 0,
            ref_uncomp_size: 0,
        }
    }
}

/// The whole report (upstream's `ImageStat` as its `-J` writes it).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ImageStat {
    /// Whether the bases came from a directory (then `dedup_*` are filled).
    pub dedup_enabled: bool,
    /// Whether a target was given.
    pub target_enabled: bool,
    /// The base images, summed.
    pub base_image: ImageInfo,
    /// The target image.
    pub target_image: ImageInfo,
}

/// What to compute.
#[derive(Clone, Debug)]
pub struct StatOptions {
    /// Only base chunks of this digester enter the dictionary (upstream's `--digester`).
    pub digester: Digester,
}

impl Default for StatOptions {
    fn default() -> Self {
        StatOptions {
            digester: Digester::Blake3,
        }
    }
}

/// Where the base images come from.
#[derive(Clone, Debug)]
pub enum Bases {
    /// One bootstrap (or a blob with inline metadata).
    Bootstrap(PathBuf),
    /// Every file of a directory with no extension, except the target; those that are
    /// not images are skipped (as upstream skips them).
    Dir(PathBuf),
}

/// A distinct chunk: compressed and uncompressed size.
type ChunkSizes = (u32, u32);

/// Accumulates images into a report.
pub struct StatBuilder {
    opts: StatOptions,
    stat: ImageStat,
    dict: HashMap<[u8; 32], ChunkSizes>,
}

impl StatBuilder {
    /// An empty report.
    pub fn new(opts: StatOptions) -> Self {
        StatBuilder {
            opts,
            stat: ImageStat {
                dedup_enabled: false,
                target_enabled: false,
                base_image: ImageInfo::default(),
                target_image: ImageInfo::default(),
            },
            dict: HashMap::new(),
        }
    }

    /// Adds a base image.
    pub fn add_base(&mut self, image: &Image) -> Result<(), ReadError> {
        let chunks = count(image, &mut self.stat.base_image)?;
        let info = &mut self.stat.base_image;
        let digester_matches = image.super_block().digester == self.opts.digester;
        for (digest, (comp, uncomp)) in chunks {
            info.own_chunks += 1;
            info.own_comp_size += comp as u64;
            info.own_uncomp_size += uncomp as u64;
            if digester_matches {
                self.dict.entry(digest).or_insert((comp, uncomp));
            }
        }
        Ok(())
    }

    /// Sets the target image.
    pub fn set_target(&mut self, image: &Image) -> Result<(), ReadError> {
        self.stat.target_enabled = true;
        let chunks = count(image, &mut self.stat.target_image)?;
        let info = &mut self.stat.target_image;
        for (digest, (comp, uncomp)) in chunks {
            // Upstream's dictionary also requires equal uncompressed sizes (an entry of
            // size 0 matches any).
            let found = self
                .dict
                .get(&digest)
                .is_some_and(|&(_, u)| u == 0 || u == uncomp);
            let (n, c, u) = if found {
                (
                    &mut info.ref_chunks,
                    &mut info.ref_comp_size,
                    &mut info.ref_uncomp_size,
                )
            } else {
                (
                    &mut info.own_chunks,
                    &mut info.own_comp_size,
                    &mut info.own_uncomp_size,
                )
            };
            *n += 1;
            *c += comp as u64;
            *u += uncomp as u64;
        }
        Ok(())
    }

    /// The report: padding added to the uncompressed sizes, and with `dedup` (bases from
    /// a directory) the dictionary's totals.
    pub fn finish(mut self, dedup: bool) -> ImageStat {
        let s = &mut self.stat;
        s.dedup_enabled = dedup;
        s.base_image.uncomp_size += s.base_image.padding_size;
        if s.target_enabled {
            s.target_image.uncomp_size += s.target_image.padding_size;
        }
        if dedup {
            for (comp, uncomp) in self.dict.values() {
                s.base_image.dedup_chunks += 1;
                s.base_image.dedup_comp_size += *comp as u64;
                s.base_image.dedup_uncomp_size += *uncomp as u64;
            }
        }
        self.stat
    }
}

/// The report for `bases` and an optional `target`, as upstream's `stat` makes it.
pub fn stat(
    bases: &Bases,
    target: Option<&Path>,
    opts: &StatOptions,
) -> Result<ImageStat, StatError> {
    let open = |path: &Path| {
        Image::open_any(path, BlobSource::None).map_err(|source| StatError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut b = StatBuilder::new(opts.clone());
    let dedup = match bases {
        Bases::Bootstrap(path) => {
            let image = open(path)?;
            b.add_base(&image).map_err(|source| StatError::Read {
                path: path.clone(),
                source,
            })?;
            false
        }
        Bases::Dir(dir) => {
            let list = |source| StatError::List {
                dir: dir.clone(),
                source,
            };
            let mut paths = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(list)? {
                let path = entry.map_err(list)?.path();
                if path.is_file() && path.extension().is_none() && Some(path.as_path()) != target {
                    paths.push(path);
                }
            }
            // Upstream takes them in directory (readdir) order. The counts do not depend
            // on the order, but the compressed sums can: when images store one digest with
            // different compressed sizes (built by different tools), the first image read
            // decides. Sorted paths make that choice reproducible; upstream's may differ
            // on such a mix (3,229,605 against our 3,227,544 bytes in one trial).
            paths.sort();
            for path in paths {
                let added = open(&path).and_then(|image| {
                    b.add_base(&image).map_err(|source| StatError::Read {
                        path: path.clone(),
                        source,
                    })
                });
                if let Err(e) = added {
                    log::debug!("{}: skipped: {}", path.display(), crate::error::Chain(&e));
                }
            }
            true
        }
    };
    if let Some(path) = target {
        let image = open(path)?;
        b.set_target(&image).map_err(|source| StatError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(b.finish(dedup))
}

/// Adds `image`'s entries to `info` and returns its distinct chunks (the first chunk
/// met with each digest, in walk order).
fn count(image: &Image, info: &mut ImageInfo) -> Result<Vec<([u8; 32], ChunkSizes)>, ReadError> {
    let mut linked: HashSet<Nid> = HashSet::new();
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let mut distinct = Vec::new();
    image.walk(|_, nid| {
        let st = image.stat(nid)?;
        match st.mode & libc::S_IFMT {
            libc::S_IFDIR => info.dirs += 1,
            libc::S_IFLNK => info.symlinks += 1,
            libc::S_IFREG => {
                info.files += 1;
                // Every name of a file adds its chunks to the dictionary, but its sizes
                // count once; the dictionary keeps one entry per digest anyway.
                let first_name = st.nlink <= 1 || linked.insert(nid);
                let mut chunk_count = 0u32;
                for (i, addr) in image.chunk_addrs(nid)?.into_iter().enumerate() {
                    let Some(addr) = addr else { continue };
                    let c = image.chunk_info(addr.blob(), addr.chunk()).ok_or_else(|| {
                        ReadError::Request(format!(
                            "inode {nid}: chunk {i} names chunk {} of blob {}, which the chunk table lacks",
                            addr.chunk_index, addr.blob_index
                        ))
                    })?;
                    chunk_count += 1;
                    if first_name {
                        info.comp_size += c.compressed_size as u64;
                        info.uncomp_size += c.uncompressed_size as u64;
                    }
                    if (c.blob_index as usize) < image.blobs().len() && seen.insert(c.digest) {
                        distinct.push((c.digest, (c.compressed_size, c.uncompressed_size)));
                    }
                }
                if first_name {
                    let size = st.size;
                    let class = ((64 - size.leading_zeros()) as usize).min(FILE_SIZE_CLASSES - 1);
                    info.file_sizes[class] += 1;
                    info.file_size += size;
                    info.padding_size += size.checked_next_multiple_of(4096).unwrap_or(size) - size;
                    info.chunks = info.chunks.saturating_add(chunk_count);
                    for (i, n) in info.chunk_sizes.iter_mut().enumerate() {
                        let count = u32::try_from(size.div_ceil(1 << (12 + i))).unwrap_or(u32::MAX);
                        *n = n.saturating_add(count);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(distinct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::bootstrap::v6::tests::{bootstrap_of, open};
    use crate::builder::tree::tests::Sketch;

    /// Entry counts and file sizes of a sketched tree (its files are holes: no chunks).
    #[test]
    fn entries_count_as_upstream_counts_them() {
        let mut s = Sketch::new();
        let d = s.dir(0, "d");
        let f = s.file(d, "f", 5000);
        s.hard_link(0, "g", f);
        s.file(0, "empty", 0);
        s.symlink(0, "l", b"d/f");
        let image = open(bootstrap_of(&s.tree));
        let mut b = StatBuilder::new(StatOptions::default());
        b.add_base(&image).unwrap();
        let r = b.finish(false);
        let i = &r.base_image;
        assert_eq!((i.dirs, i.files, i.symlinks), (2, 3, 1));
        // The hard-linked file once: 5000 bytes, padded to 8192.
        assert_eq!((i.file_size, i.padding_size), (5000, 3192));
        assert_eq!(
            i.uncomp_size, 3192,
            "padding is added to the uncompressed size"
        );
        assert_eq!(i.file_sizes[13], 1, "5000 has 13 bits");
        assert_eq!(i.file_sizes[0], 1, "the empty file");
        assert_eq!(i.chunk_sizes[0], 2, "5000 bytes in 4 KiB chunks");
        assert_eq!(i.chunk_sizes[8], 1);
        assert!(!r.target_enabled && !r.dedup_enabled);
        assert_eq!(r.target_image, ImageInfo::default());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["base_image"]["file_sizes"].as_array().unwrap().len(),
            45
        );
    }
}
