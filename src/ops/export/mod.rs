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
//! The image is streamed chunk by chunk (one chunk in memory per worker thread, besides
//! the bootstrap and one block address per distinct chunk), into a temporary file
//! renamed into place when complete. Workers take the chunks in block order from a
//! shared counter and write each at its own offset, so the result does not depend on
//! their number.
//!
//! With `verity`, a dm-verity hash tree over all the image's blocks follows them
//! ([`verity`]): the workers hash each chunk's blocks as they write them (32 bytes kept
//! per 4 KiB block), the metadata blocks are hashed once patched. The bootstrap's RAFS parts (blob and chunk tables) stay in
//! the metadata area, unused by EROFS readers; nydusd and our reader do not read the
//! result (its chunk indexes no longer name blobs).

pub mod config;
pub mod verity;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

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
    /// A chunk decompressed to another size than the file needs from it.
    #[error(
        "{}: chunk {chunk_index} of blob {blob_index} holds {found} bytes, expected {expected}",
        path.display()
    )]
    ChunkLength {
        /// The bootstrap.
        path: PathBuf,
        /// The blob's index in the blob table.
        blob_index: u8,
        /// The chunk's index in its blob.
        chunk_index: u32,
        /// The bytes the file needs.
        expected: u64,
        /// The bytes decompressed.
        found: u64,
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

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Worker threads reading and decompressing chunks (at least 1).
    pub threads: usize,
    /// Append a dm-verity hash tree after the image's blocks.
    pub verity: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            threads: 1,
            verity: false,
        }
    }
}

/// Where the dm-verity hash tree of an export is and what it certifies: the values
/// `veritysetup verify DATA HASH ROOT` takes (the image itself as both devices).
#[derive(Clone, Debug)]
pub struct VeritySummary {
    /// Data blocks of 4 KiB covered: the whole EROFS image.
    pub data_blocks: u64,
    /// Byte offset of the hash tree in the output (right after the data blocks).
    pub hash_offset: u64,
    /// Bytes of the hash tree.
    pub hash_bytes: u64,
    /// The root digest, lower-case hex.
    pub root_hex: String,
}

impl VeritySummary {
    /// The line upstream HEAD prints after `export --block --verity`: the `veritysetup`
    /// options and the root digest.
    pub fn upstream_line(&self) -> String {
        format!(
            "dm-verity options: --no-superblock --format=1 -s \"\" --hash=sha256 \
             --data-block-size={} --hash-block-size={} --data-blocks {} --hash-offset {} {}",
            verity::BLOCK_BYTES,
            verity::BLOCK_BYTES,
            self.data_blocks,
            self.hash_offset,
            self.root_hex
        )
    }
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
    /// The hash tree, when asked for.
    pub verity: Option<VeritySummary>,
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
    opts: &ExportOptions,
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
    // File data first, each chunk at its blocks; the digests of those blocks when a
    // hash tree is wanted.
    let leaves = opts
        .verity
        .then(|| Mutex::new(vec![[0u8; verity::DIGEST_BYTES]; next_block as usize]));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<(usize, ExportError)>> = Mutex::new(None);
    let work = || {
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = order.get(i) else { break };
            let done = image
                .load_chunk(p.addr, p.len)
                .map_err(read_err(format!(
                    "chunk {} of blob {}",
                    p.addr.chunk_index, p.addr.blob_index
                )))
                .and_then(|data| {
                    if data.len() as u64 != p.len {
                        return Err(ExportError::ChunkLength {
                            path: bootstrap.to_path_buf(),
                            blob_index: p.addr.blob_index,
                            chunk_index: p.addr.chunk_index,
                            expected: p.len,
                            found: data.len() as u64,
                        });
                    }
                    let at = p.blkaddr as u64 * BLOCK_SIZE;
                    file.write_all_at(&data, at)
                        .map_err(write_err("chunk data", at))?;
                    if let Some(leaves) = &leaves {
                        let digests = verity::digests_of(&data);
                        let first = p.blkaddr as usize;
                        let mut l = leaves.lock().unwrap_or_else(|e| e.into_inner());
                        // In range: the chunk's blocks were counted into `next_block`.
                        if let Some(slots) = l.get_mut(first..first + digests.len()) {
                            slots.copy_from_slice(&digests);
                        }
                    }
                    Ok(())
                });
            if let Err(e) = done {
                failed.store(true, Ordering::Relaxed);
                let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                // Of the failures seen, report the one earliest in the image.
                if first.as_ref().is_none_or(|(j, _)| i < *j) {
                    *first = Some((i, e));
                }
            }
        }
    };
    let threads = opts.threads.clamp(1, order.len().max(1));
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    if let Some((_, e)) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
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
    let verity = match leaves {
        None => None,
        Some(leaves) => {
            let mut leaves = leaves.into_inner().unwrap_or_else(|e| e.into_inner());
            let meta_digests = verity::digests_of(&meta);
            leaves[..meta_digests.len()].copy_from_slice(&meta_digests);
            let tree = verity::HashTree::from_leaves(leaves);
            file.write_all_at(&tree.bytes, size)
                .map_err(write_err("dm-verity hash tree", size))?;
            Some(VeritySummary {
                data_blocks: tree.data_blocks,
                hash_offset: size,
                hash_bytes: tree.bytes.len() as u64,
                root_hex: tree.root_hex(),
            })
        }
    };
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
        verity,
    })
}
