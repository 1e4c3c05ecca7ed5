//! `export --block`: one raw EROFS image holding an image's metadata and all its file
//! data, for the kernel's EROFS (or `fsck.erofs`) with no extra devices: the bootstrap
//! as it is, then every distinct chunk decompressed at a block of its own, the chunk
//! indexes rewritten to name those blocks on the image itself (device 0) and the
//! superblock's extra devices dropped. Works from any image we read, compressed or not.
//!
//! A RAFS v5 image has no EROFS metadata to start from: its tree is read back (as a
//! parent layer would be) and laid out as a RAFS v6 bootstrap in memory over the same
//! blobs and chunk infos, which is then exported as above. Only metadata is rewritten
//! this way; file data is still read chunk by chunk from the v5 image's blobs.
//!
//! The image is streamed chunk by chunk (one chunk in memory at a time, besides the
//! bootstrap and one block address per distinct chunk), into a temporary file renamed
//! into place when complete. The bootstrap's RAFS parts (blob and chunk tables) stay in
//! the metadata area, unused by EROFS readers; nydusd and our reader do not read the
//! result (its chunk indexes no longer name blobs).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use zerocopy::IntoBytes;

use crate::builder::output::PendingFile;
use crate::builder::BuildError;
use crate::format::v6::inode::{ChunkAddr, ChunkAddrRaw, DataLayout};
use crate::format::v6::super_block;
use crate::format::v6::BLOCK_SIZE;
use crate::reader::{Image, ReadError};
use crate::storage::blobs::BlobSource;

/// The block address EROFS reads as "no data here" (a hole).
const NULL_BLKADDR: u32 = u32::MAX;

/// Why an export failed.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The image cannot be opened.
    #[error("cannot open {}", path.display())]
    Open {
        /// The bootstrap.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<ReadError>,
    },
    /// Blobs the image references are missing or unreadable.
    #[error("blobs of {} are not available: {}", path.display(), list.join("; "))]
    MissingBlobs {
        /// The bootstrap.
        path: PathBuf,
        /// Each blob with the reason.
        list: Vec<String>,
    },
    /// Reading the image's metadata or a chunk failed.
    #[error("{}: {what}", path.display())]
    Read {
        /// The bootstrap.
        path: PathBuf,
        /// What was being read (a path in the image, a chunk).
        what: String,
        /// Why.
        #[source]
        source: Box<ReadError>,
    },
    /// The image would need block addresses past 32 bits (16 TiB).
    #[error("{}: the block image would exceed 2^32 blocks of 4 KiB", path.display())]
    TooLarge {
        /// The bootstrap.
        path: PathBuf,
    },
    /// A RAFS v5 image's tree could not be restated as a v6 bootstrap.
    #[error("{}: cannot lay out the RAFS v5 image as EROFS metadata", path.display())]
    FromV5 {
        /// The bootstrap.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<BuildError>,
    },
    /// Writing the output failed.
    #[error("{}: {what} at offset 0x{offset:x}", path.display())]
    Write {
        /// The output.
        path: PathBuf,
        /// What was being written.
        what: String,
        /// Where.
        offset: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Creating or renaming the output failed.
    #[error(transparent)]
    Output(#[from] BuildError),
}

/// What an export wrote.
#[derive(Clone, Debug, Default)]
pub struct ExportSummary {
    /// The image written.
    pub output: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Chunk indexes rewritten (one per file chunk).
    pub chunk_indexes: u64,
}

/// A chunk to store: where it is read from and how long it is.
struct Placed {
    addr: ChunkAddr,
    len: u64,
    blkaddr: u32,
}

/// Why [`as_v6`] failed.
enum V6Error {
    /// Loading the tree or writing the v6 bootstrap.
    Build(BuildError),
    /// Opening what was written.
    Open(ReadError),
}

/// The RAFS v5 image `v5` as a RAFS v6 image over the same blobs (found through `blobs`
/// as before): its tree loaded the way a parent layer is, laid out as a v6 bootstrap in
/// memory with the same blob table (same order, so chunk indexes name the same blobs)
/// and the same chunk infos, and opened from those bytes under `v5`'s path, so errors
/// still name the file the user gave.
fn as_v6(v5: &Image, blobs: BlobSource) -> Result<Image, V6Error> {
    let tree = crate::builder::overlay::flatten(
        crate::builder::parent::load(v5, 0).map_err(V6Error::Build)?,
    );
    let sb = v5.super_block();
    let (bytes, _) = crate::builder::stored_tree_bootstrap(
        &tree,
        v5.blobs().to_vec(),
        crate::builder::bootstrap::v6::BootstrapOptions {
            chunk_size: sb.chunk_size,
            compressor: sb.compressor,
            digester: sb.digester,
        },
        crate::builder::FsVersion::V6,
    )
    .map_err(V6Error::Build)?;
    drop(tree);
    log::debug!(
        "{}: RAFS v5 laid out as {} bytes of v6 metadata",
        v5.path().display(),
        bytes.len()
    );
    Image::from_bytes(v5.path(), bytes, blobs).map_err(V6Error::Open)
}

/// Writes the image at `bootstrap` (blobs from `blobs`; a data blob with inline metadata
/// too; RAFS v5 or v6) as one EROFS block image at `output`.
pub fn export_block(
    bootstrap: &Path,
    blobs: BlobSource,
    output: &Path,
) -> Result<ExportSummary, ExportError> {
    let open_err = |source| ExportError::Open {
        path: bootstrap.to_path_buf(),
        source: Box::new(source),
    };
    let mut image = Image::open_any(bootstrap, blobs.clone()).map_err(open_err)?;
    // Each chunk is read once: no cache needed.
    image.set_cache_bytes(0);
    let missing = image.missing_blobs();
    if !missing.is_empty() {
        return Err(ExportError::MissingBlobs {
            path: bootstrap.to_path_buf(),
            list: missing
                .iter()
                .map(|(id, why)| format!("{id} ({why})"))
                .collect(),
        });
    }
    if image.fs_version() == 5 {
        image = as_v6(&image, blobs).map_err(|e| match e {
            V6Error::Build(source) => ExportError::FromV5 {
                path: bootstrap.to_path_buf(),
                source: Box::new(source),
            },
            V6Error::Open(source) => open_err(source),
        })?;
        image.set_cache_bytes(0);
    }
    let read_err = |what: String| {
        move |source| ExportError::Read {
            path: bootstrap.to_path_buf(),
            what,
            source: Box::new(source),
        }
    };
    let meta_len = image.meta().len() as u64;
    let first_block = meta_len.div_ceil(BLOCK_SIZE);
    let chunk_size = image.super_block().chunk_size as u64;

    // Every chunk index of every regular file: where it is, and the block it will name.
    let mut places: HashMap<(u8, u32), u32> = HashMap::new();
    let mut order: Vec<Placed> = Vec::new();
    let mut patches: Vec<(u64, u32)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut next_block = first_block;
    let mut files = Vec::new();
    image
        .walk(|path, nid| {
            files.push((path.to_vec(), nid));
            Ok(())
        })
        .map_err(read_err("walking the tree".into()))?;
    for (path, nid) in files {
        let shown = || String::from_utf8_lossy(&path).into_owned();
        let view = image.inode(nid).map_err(|e| read_err(shown())(e))?;
        if view.inode.layout != DataLayout::ChunkBased || !seen.insert(nid) {
            continue;
        }
        let table = image
            .chunk_table_of(nid)
            .map_err(|e| read_err(shown())(e))?;
        for i in 0..table.count {
            let at = table.offset_of(i);
            let Some(addr) = table.get(&image, i).map_err(|e| read_err(shown())(e))? else {
                patches.push((at, NULL_BLKADDR));
                continue;
            };
            let key = (addr.blob_index, addr.chunk_index);
            let blkaddr = match places.get(&key) {
                Some(&b) => b,
                None => {
                    let len = chunk_size.min(table.size - i as u64 * chunk_size);
                    let b = u32::try_from(next_block)
                        .ok()
                        .filter(|&b| b != NULL_BLKADDR)
                        .ok_or_else(|| ExportError::TooLarge {
                            path: bootstrap.to_path_buf(),
                        })?;
                    next_block += len.div_ceil(BLOCK_SIZE);
                    places.insert(key, b);
                    order.push(Placed {
                        addr,
                        len,
                        blkaddr: b,
                    });
                    b
                }
            };
            patches.push((at, blkaddr));
        }
    }
    if u32::try_from(next_block).is_err() {
        return Err(ExportError::TooLarge {
            path: bootstrap.to_path_buf(),
        });
    }

    let (pending, file) = PendingFile::create(output)?;
    let write_err = |what: &str, offset: u64| {
        let what = what.to_string();
        move |source| ExportError::Write {
            path: output.to_path_buf(),
            what,
            offset,
            source,
        }
    };
    // File data first, in block order, one chunk at a time.
    for p in &order {
        let data = image.load_chunk(p.addr, p.len).map_err(read_err(format!(
            "chunk {} of blob {}",
            p.addr.chunk_index, p.addr.blob_index
        )))?;
        let at = p.blkaddr as u64 * BLOCK_SIZE;
        file.write_all_at(&data, at)
            .map_err(write_err("chunk data", at))?;
    }
    let size = next_block * BLOCK_SIZE;
    file.set_len(size)
        .map_err(write_err("setting the size", size))?;

    // Then the metadata, with chunk indexes naming blocks of this image.
    let mut meta = image.meta().to_vec();
    for &(at, blkaddr) in &patches {
        let raw = ChunkAddrRaw {
            blob_addr_lo: 0.into(),
            blob_addr_hi: 0.into(),
            blk_addr: blkaddr.into(),
        };
        meta[at as usize..at as usize + 8].copy_from_slice(raw.as_bytes());
    }
    super_block::set_self_contained(&mut meta, next_block as u32);
    file.write_all_at(&meta, 0)
        .map_err(write_err("metadata", 0))?;
    drop(file);
    let output = pending.commit()?;
    log::debug!(
        "{}: {} chunks in {} blocks after {} of metadata",
        output.display(),
        order.len(),
        next_block - first_block,
        first_block
    );
    Ok(ExportSummary {
        output,
        size,
        chunks: order.len() as u64,
        chunk_indexes: patches.len() as u64,
    })
}
