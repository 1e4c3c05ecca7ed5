//! Opens a RAFS v6 bootstrap (ours or upstream's) with its blobs and offers a read-only
//! view: walk, stat, read, readlink, xattrs. Every byte of the bootstrap and blobs is
//! untrusted: offsets and sizes are checked against the file before use, counts are
//! bounded by what the file can hold, and walks detect cycles and absurd depths.
//! [`Image::open_any`] also takes a data blob that carries its bootstrap (inline metadata).
//!
//! ```no_run
//! use nydus_image::reader::Image;
//! use nydus_image::storage::blobs::BlobSource;
//! let image = Image::open("image.boot".as_ref(), BlobSource::Dir("blobs".into()))?;
//! let root = image.root();
//! for entry in image.read_dir(root)? {
//!     println!("{}", String::from_utf8_lossy(&entry.name));
//! }
//! # Ok::<(), nydus_image::reader::ReadError>(())
//! ```

mod cache;
mod data;
mod inline;
mod lazy;
mod prefetch;
mod v5;

pub use lazy::PrefetchOptions;

pub use crate::format::v6::Nid;
pub use cache::ChunkCache;
pub use data::SharedRead;
pub use inline::{extract_section, is_inline_blob, InlineSource};
pub use v5::V5Record;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::format::v6::inode::{self, ChunkAddr, DataLayout, Inode, SLOT_SIZE};
use crate::format::v6::super_block::{DeviceSlot, SuperBlock, DEVTABLE_OFFSET};
use crate::format::v6::tables::{
    blob_features, BlobEntry, ChunkInfo, BLOB_ENTRY_SIZE, CHUNK_INFO_SIZE,
};
use crate::format::v6::{BlobIndex, ChunkIndex, BLOCK_SIZE};
use crate::format::FormatError;
use crate::storage::blobs::{BlobFile, BlobOpenError, BlobSource};

/// Largest bootstrap we load (upstream's metadata limit is 2 GiB too).
const MAX_BOOTSTRAP: u64 = 1 << 31;
/// Default bound of the decompressed chunk cache.
pub const DEFAULT_CACHE_BYTES: usize = 2 << 20;
/// Deepest directory nesting a walk accepts.
pub const MAX_DEPTH: usize = 4096;

/// Why reading an image failed. Each names the file and, where known, the offset.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The bootstrap breaks the format.
    #[error("bootstrap {}", path.display())]
    Format {
        /// The bootstrap.
        path: PathBuf,
        /// The violation, with its offset.
        #[source]
        source: FormatError,
    },
    /// A file could not be read.
    #[error("{}: {what}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A blob is missing, short, or holds bad data.
    #[error("blob {blob_id} ({}): {what}", path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "no file".into()))]
    Blob {
        /// The blob id.
        blob_id: String,
        /// The blob file, if one was found.
        path: Option<PathBuf>,
        /// What is wrong.
        what: String,
        /// What failed underneath: the blob file's OS error, the backend's, the codec's.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A data blob given as the image's bootstrap (inline metadata) has a bad tail, TOC or
    /// bootstrap section.
    #[error("blob with inline metadata {}: {what}", path.display())]
    Inline {
        /// The blob.
        path: PathBuf,
        /// What is wrong, with the blob offset.
        what: String,
        /// What failed underneath: the layout check, the read, the decompression.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The caller asked for something that is not there (wrong kind of inode, say).
    #[error("{0}")]
    Request(String),
    /// An entry of the prefetch table names no inode of the image.
    #[error("bootstrap {}: prefetch table entry {index} at 0x{offset:x}: nid {nid}", path.display())]
    Prefetch {
        /// The bootstrap.
        path: PathBuf,
        /// The entry's position in the table, from 0.
        index: usize,
        /// The entry's byte offset in the bootstrap.
        offset: u64,
        /// The nid it holds.
        nid: Nid,
        /// Why it names no inode.
        #[source]
        source: Box<ReadError>,
    },
    /// Reading one entry of the image failed (names the entry's path in the image).
    #[error("{path}")]
    Entry {
        /// The entry's path in the image.
        path: String,
        /// What went wrong.
        #[source]
        source: Box<ReadError>,
    },
}

/// A file's attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Inode number: the nid.
    pub ino: u64,
    /// Type and permissions.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device number of device nodes (Linux encoding).
    pub rdev: u64,
}

impl Stat {
    /// Attributes from an inode's stored fields, whatever the RAFS version: the stored
    /// size counts only for files, directories and symlinks, and the device number only
    /// for device nodes (other kinds may keep anything in those fields).
    fn from_stored(
        nid: Nid,
        mode: u32,
        owner: (u32, u32),
        nlink: u32,
        size: u64,
        mtime: (i64, u32),
        rdev: u64,
    ) -> Stat {
        let kind = mode & libc::S_IFMT;
        Stat {
            ino: nid.0,
            mode,
            nlink,
            uid: owner.0,
            gid: owner.1,
            size: if matches!(kind, libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK) {
                size
            } else {
                0
            },
            mtime: mtime.0,
            mtime_nsec: mtime.1,
            rdev: if matches!(kind, libc::S_IFCHR | libc::S_IFBLK) {
                rdev
            } else {
                0
            },
        }
    }
}

/// One directory entry ("." and ".." are left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name bytes.
    pub name: Vec<u8>,
    /// Target nid.
    pub nid: Nid,
    /// EROFS file type code.
    pub file_type: u8,
}

/// A regular file's chunk index array inside the bootstrap.
pub(crate) struct ChunkTable<'a> {
    /// The file's size.
    pub size: u64,
    /// Number of chunk indexes.
    pub count: usize,
    start: u64,
    bytes: &'a [u8],
    /// The entries are v5 chunk infos (80 bytes) rather than v6 chunk indexes.
    v5: bool,
}

impl ChunkTable<'_> {
    /// Byte offset of index `i` in the bootstrap.
    pub fn offset_of(&self, i: usize) -> u64 {
        self.start + (i * inode::CHUNK_ADDR_SIZE) as u64
    }

    /// Decodes index `i` (< `count`); `None` is a hole.
    pub fn get(&self, image: &Image, i: usize) -> Result<Option<ChunkAddr>, ReadError> {
        if self.v5 {
            return image.v5_chunk_addr(self.bytes, self.start, i);
        }
        let at = i * inode::CHUNK_ADDR_SIZE;
        ChunkAddr::decode(
            &self.bytes[at..at + inode::CHUNK_ADDR_SIZE],
            self.start + at as u64,
        )
        .map_err(|e| image.fmt_err(e))
    }
}

/// Bytes inside the bootstrap with their offset.
type Located<'a> = (u64, &'a [u8]);

/// Stored bytes read from a blob: (blob index, offset, bytes).
type BlobWindow = (usize, u64, std::sync::Arc<Vec<u8>>);

/// An open image.
pub struct Image {
    path: PathBuf,
    meta: Vec<u8>,
    sb: SuperBlock,
    blobs: Vec<BlobEntry>,
    devices: Vec<DeviceSlot>,
    /// The chunk table as (blob index, chunk index, byte offset of the entry), sorted:
    /// entries are decoded from `meta` when asked for (12 bytes per chunk instead of a
    /// decoded copy of every entry).
    chunks: Vec<(u32, u32, u64)>,
    blob_files: Vec<Result<BlobFile, std::sync::Arc<BlobOpenError>>>,
    blob_paths: Vec<Option<PathBuf>>,
    cache: ChunkCache,
    windows: std::sync::Mutex<std::collections::VecDeque<BlobWindow>>,
    /// How blobs behind a remote backend are fetched and cached.
    remote: lazy::RemoteState,
    /// Where the bootstrap came from, when it was taken out of a blob.
    inline: Option<InlineSource>,
    /// Verify chunk digests on every read.
    pub validate: bool,
    /// Set when the bootstrap is RAFS v5: the public methods answer from its records.
    v5: Option<v5::Meta>,
}

/// A decoded inode with where its parts are.
#[derive(Clone, Debug)]
pub struct InodeView {
    /// The nid.
    pub nid: Nid,
    /// Decoded fields.
    pub inode: Inode,
    /// Byte offset of the inode.
    pub offset: u64,
    /// Byte offset right after the inline xattrs.
    pub body_offset: u64,
}

impl Image {
    /// Opens `bootstrap` and locates its blobs. Blob files that are missing only fail the
    /// reads that need them.
    pub fn open(bootstrap: &Path, blobs: BlobSource) -> Result<Self, ReadError> {
        let io = |what: &str, e| ReadError::Io {
            path: bootstrap.to_path_buf(),
            what: what.to_string(),
            source: e,
        };
        let len = std::fs::metadata(bootstrap)
            .map_err(|e| io("cannot stat bootstrap", e))?
            .len();
        if len > MAX_BOOTSTRAP {
            return Err(ReadError::Format {
                path: bootstrap.to_path_buf(),
                source: FormatError::Invalid {
                    offset: 0,
                    what: format!("bootstrap is {len} bytes, more than the 2 GiB limit"),
                },
            });
        }
        let meta = std::fs::read(bootstrap).map_err(|e| io("cannot read bootstrap", e))?;
        Self::from_bytes(bootstrap, meta, blobs)
    }

    /// Parses bootstrap bytes already in memory; `path` is used in messages.
    pub fn from_bytes(path: &Path, meta: Vec<u8>, blobs: BlobSource) -> Result<Self, ReadError> {
        Self::from_parts(path, meta, blobs, None)
    }

    /// Parses bootstrap bytes; the blob table entries marked `INLINED_FS_META` are given
    /// `own`'s id and file when there is one (a bootstrap taken out of its blob).
    fn from_parts(
        path: &Path,
        meta: Vec<u8>,
        blobs: BlobSource,
        own: Option<inline::OwnBlob<'_>>,
    ) -> Result<Self, ReadError> {
        let fmt = |source: FormatError| ReadError::Format {
            path: path.to_path_buf(),
            source,
        };
        if crate::format::v5::is_v5(&meta) {
            return Self::from_v5(path, meta, blobs, own);
        }
        let sb = SuperBlock::decode(&meta, meta.len() as u64).map_err(fmt)?;
        if !(meta.len() as u64).is_multiple_of(BLOCK_SIZE) {
            return Err(fmt(FormatError::Invalid {
                offset: meta.len() as u64,
                what: format!("bootstrap size {} is not a multiple of 4096", meta.len()),
            }));
        }
        let blob_count = sb.blob_table_size as usize / BLOB_ENTRY_SIZE;
        if blob_count != sb.extra_devices as usize {
            return Err(fmt(FormatError::Invalid {
                offset: 1024 + 86,
                what: format!(
                    "{} devices but {} blob table entries",
                    sb.extra_devices, blob_count
                ),
            }));
        }
        if blob_count > 255 {
            return Err(fmt(FormatError::Invalid {
                offset: 1152 + 16,
                what: format!("{blob_count} blobs, chunk indexes can address 255"),
            }));
        }
        let mut devices = Vec::with_capacity(blob_count);
        for i in 0..blob_count {
            let at = DEVTABLE_OFFSET + 128 * i as u64;
            let bytes = slice(&meta, at, 128).map_err(fmt)?;
            devices.push(DeviceSlot::decode(bytes, at).map_err(fmt)?);
        }
        let mut table = Vec::with_capacity(blob_count);
        for (i, device) in devices.iter_mut().enumerate() {
            let at = sb.blob_table_offset + (BLOB_ENTRY_SIZE * i) as u64;
            let bytes = slice(&meta, at, BLOB_ENTRY_SIZE as u64).map_err(fmt)?;
            let entry = BlobEntry::decode(bytes, i as u32, at).map_err(fmt)?;
            if entry.blob_id != device.blob_id {
                return Err(fmt(FormatError::Invalid {
                    offset: at,
                    what: format!(
                        "blob {} is {} in the device table",
                        entry.blob_id, device.blob_id
                    ),
                }));
            }
            let mut entry = entry;
            if let Some(own) = &own {
                if entry.features & blob_features::INLINED_FS_META != 0 {
                    entry.blob_id = own.id.to_string();
                    device.blob_id = own.id.to_string();
                }
            }
            table.push(entry);
        }
        let chunk_count = sb.chunk_table_size / CHUNK_INFO_SIZE as u64;
        let mut chunks = Vec::with_capacity(chunk_count.min(1 << 24) as usize);
        for i in 0..chunk_count {
            let at = sb.chunk_table_offset + i * CHUNK_INFO_SIZE as u64;
            let bytes = slice(&meta, at, CHUNK_INFO_SIZE as u64).map_err(fmt)?;
            let info = ChunkInfo::decode(bytes, at).map_err(fmt)?;
            if info.blob_index as usize >= blob_count {
                return Err(fmt(FormatError::Invalid {
                    offset: at + 32,
                    what: format!("chunk {i} names blob {} of {blob_count}", info.blob_index),
                }));
            }
            chunks.push((info.blob_index, info.index, at));
        }
        chunks.sort_unstable();
        chunks.dedup_by_key(|c| (c.0, c.1)); // a repeated key: the first entry serves
        let ids: Vec<String> = table.iter().map(|b| b.blob_id.clone()).collect();
        let is_own =
            |i: usize| own.is_some() && table[i].features & blob_features::INLINED_FS_META != 0;
        let mut blob_paths = blobs.resolve(&ids);
        if let Some(own) = &own {
            for (i, p) in blob_paths.iter_mut().enumerate() {
                if is_own(i) {
                    *p = Some(own.path.to_path_buf());
                }
            }
        }
        let open_file = |p: &Option<PathBuf>| match p {
            Some(p) => BlobFile::open(p).map_err(|source| BlobOpenError::File {
                path: p.clone(),
                source,
            }),
            None => Err(BlobOpenError::NotGiven),
        };
        let blob_files = match &blobs {
            BlobSource::Backend(_) | BlobSource::CachedBackend(..) => ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    if is_own(i) {
                        open_file(&blob_paths[i])
                    } else {
                        blobs
                            .open_remote(id, table_size(&table[i]))
                            .expect("a backend source")
                            .map_err(BlobOpenError::Backend)
                    }
                })
                .collect::<Vec<_>>(),
            _ => blob_paths.iter().map(open_file).collect(),
        };
        let blob_files = blob_files
            .into_iter()
            .map(|f| f.map_err(std::sync::Arc::new))
            .collect();
        let image = Image {
            path: path.to_path_buf(),
            meta,
            sb,
            blobs: table,
            devices,
            chunks,
            blob_files,
            blob_paths,
            cache: ChunkCache::new(DEFAULT_CACHE_BYTES),
            windows: std::sync::Mutex::new(std::collections::VecDeque::new()),
            remote: lazy::RemoteState::for_source(&blobs),
            inline: None,
            validate: false,
            v5: None,
        };
        image.inode(image.root())?;
        Ok(image)
    }

    /// Replaces the chunk cache with one bounded at `bytes`.
    pub fn set_cache_bytes(&mut self, bytes: usize) {
        self.cache = ChunkCache::new(bytes);
    }

    /// The bootstrap path (for a bootstrap taken out of a blob, the blob's path followed
    /// by ` (image.boot)`: offsets in errors are the bootstrap's).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bootstrap's bytes.
    pub(crate) fn meta(&self) -> &[u8] {
        &self.meta
    }

    /// The RAFS version of the bootstrap: 5 or 6.
    pub fn fs_version(&self) -> u32 {
        if self.v5.is_some() {
            5
        } else {
            6
        }
    }

    /// The superblock (for a v5 bootstrap, its settings and counts in v6's shape; see
    /// [`Image::v5_super_block`] for the v5 fields).
    pub fn super_block(&self) -> &SuperBlock {
        &self.sb
    }

    /// The blob table.
    pub fn blobs(&self) -> &[BlobEntry] {
        &self.blobs
    }

    /// The device table.
    pub fn devices(&self) -> &[DeviceSlot] {
        &self.devices
    }

    /// The chunk table, by blob and chunk index.
    pub fn chunk_table(&self) -> impl Iterator<Item = ChunkInfo> + '_ {
        self.chunks.iter().map(|c| self.decode_chunk(c.2))
    }

    /// Decodes the chunk table entry at `at` (checked when the image was opened).
    fn decode_chunk(&self, at: u64) -> ChunkInfo {
        let bytes = &self.meta[at as usize..at as usize + CHUNK_INFO_SIZE];
        ChunkInfo::decode(bytes, at).expect("chunk entries were decoded at open")
    }

    /// Blobs whose file could not be opened: (blob id, why, causes included).
    pub fn missing_blobs(&self) -> Vec<(String, String)> {
        self.blob_files
            .iter()
            .zip(&self.blobs)
            .filter_map(|(f, b)| {
                let e: &BlobOpenError = f.as_ref().err()?;
                Some((b.blob_id.clone(), crate::error::Chain(e).to_string()))
            })
            .collect()
    }

    /// Asks the backend for the size of each remote blob whose size was taken from the
    /// blob table (`RemoteOptions::table_sizes`): the blobs it does not serve at that
    /// size, with why (their reads fail).
    pub fn confirm_blob_sizes(&self) -> Vec<(String, String)> {
        self.blob_files
            .iter()
            .zip(&self.blobs)
            .filter_map(|(f, b)| {
                let e = f.as_ref().ok()?.confirm_len().err()?;
                Some((b.blob_id.clone(), crate::error::Chain(&e).to_string()))
            })
            .collect()
    }

    /// The chunk table entry for chunk `index` of blob `blob`.
    pub fn chunk_info(&self, blob: BlobIndex, index: ChunkIndex) -> Option<ChunkInfo> {
        let at = self
            .chunks
            .binary_search_by(|c| (c.0, c.1).cmp(&(blob.0, index.0)))
            .ok()?;
        Some(self.decode_chunk(self.chunks[at].2))
    }

    /// Whether the bootstrap carries a chunk table.
    pub fn has_chunk_table(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// The root directory's nid.
    pub fn root(&self) -> Nid {
        Nid(self.sb.root_nid as u64)
    }

    fn fmt_err(&self, source: FormatError) -> ReadError {
        ReadError::Format {
            path: self.path.clone(),
            source,
        }
    }

    fn bytes(&self, offset: u64, len: u64) -> Result<&[u8], ReadError> {
        slice(&self.meta, offset, len).map_err(|e| self.fmt_err(e))
    }

    /// Decodes the inode `nid` (RAFS v6 only: a v5 inode is read through [`Image::stat`]
    /// and the other public methods).
    pub fn inode(&self, nid: Nid) -> Result<InodeView, ReadError> {
        if self.v5.is_some() {
            return Err(ReadError::Request(format!(
                "inode {nid}: the bootstrap is RAFS v5, which has no v6 inodes"
            )));
        }
        let offset = nid
            .0
            .checked_mul(SLOT_SIZE)
            .and_then(|o| o.checked_add(self.sb.meta_blkaddr as u64 * BLOCK_SIZE))
            .filter(|&o| o < self.meta.len() as u64)
            .ok_or_else(|| {
                self.fmt_err(FormatError::Invalid {
                    offset: 0,
                    what: format!("nid {nid} points outside the bootstrap"),
                })
            })?;
        let inode =
            Inode::decode(&self.meta[offset as usize..], offset).map_err(|e| self.fmt_err(e))?;
        let body_offset = offset + inode.disk_size() as u64 + inode.xattr_size() as u64;
        if body_offset > self.meta.len() as u64 {
            return Err(self.fmt_err(FormatError::Invalid {
                offset,
                what: format!("inode {nid}: xattrs run past the end of the bootstrap"),
            }));
        }
        let kind = inode.mode as u32 & libc::S_IFMT;
        let ok_layout = match kind {
            libc::S_IFREG => inode.layout == DataLayout::ChunkBased,
            libc::S_IFDIR | libc::S_IFLNK => inode.layout != DataLayout::ChunkBased,
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK => true,
            _ => false,
        };
        if !ok_layout {
            return Err(self.fmt_err(FormatError::Invalid {
                offset,
                what: format!(
                    "inode {nid}: mode 0o{:o} with layout {:?}",
                    inode.mode, inode.layout
                ),
            }));
        }
        Ok(InodeView {
            nid,
            inode,
            offset,
            body_offset,
        })
    }

    /// Attributes of `nid`.
    pub fn stat(&self, nid: Nid) -> Result<Stat, ReadError> {
        if self.v5.is_some() {
            return self.v5_stat(nid);
        }
        let i = &self.inode(nid)?.inode;
        Ok(Stat::from_stored(
            nid,
            i.mode as u32,
            (i.uid, i.gid),
            i.nlink,
            i.size,
            (i.mtime as i64, i.mtime_nsec),
            i.u as u64,
        ))
    }

    /// Inline xattrs of `nid`, in stored order.
    pub fn xattrs(&self, nid: Nid) -> Result<inode::Xattrs, ReadError> {
        if self.v5.is_some() {
            return self.v5_xattrs(nid);
        }
        let v = self.inode(nid)?;
        let size = v.inode.xattr_size();
        if size == 0 {
            return Ok(Vec::new());
        }
        let at = v.offset + v.inode.disk_size() as u64;
        let bytes = self.bytes(at, size as u64)?;
        inode::decode_xattrs(bytes, at).map_err(|e| self.fmt_err(e))
    }

    /// Where the data of a directory or symlink inode is: its whole blocks (at
    /// `raw_blkaddr`) and, for inline layouts, the tail right after the inode, each with
    /// its bootstrap offset.
    fn flat_parts(&self, v: &InodeView) -> Result<(Located<'_>, Option<Located<'_>>), ReadError> {
        let size = v.inode.size;
        if size > self.meta.len() as u64 {
            return Err(self.fmt_err(FormatError::Invalid {
                offset: v.offset,
                what: format!("inode {}: size {size} exceeds the bootstrap", v.nid),
            }));
        }
        let blkaddr = v.inode.u as u64 * BLOCK_SIZE;
        match v.inode.layout {
            DataLayout::FlatPlain => Ok(((blkaddr, self.bytes(blkaddr, size)?), None)),
            DataLayout::FlatInline => {
                let full = size / BLOCK_SIZE * BLOCK_SIZE;
                let tail = size - full;
                if v.body_offset % BLOCK_SIZE + tail > BLOCK_SIZE {
                    return Err(self.fmt_err(FormatError::Invalid {
                        offset: v.body_offset,
                        what: format!(
                            "inode {}: inline tail of {tail} bytes crosses a block",
                            v.nid
                        ),
                    }));
                }
                let tail =
                    (tail > 0).then(|| self.bytes(v.body_offset, tail).map(|b| (v.body_offset, b)));
                Ok(((blkaddr, self.bytes(blkaddr, full)?), tail.transpose()?))
            }
            DataLayout::ChunkBased => Err(self.fmt_err(FormatError::Invalid {
                offset: v.offset,
                what: format!(
                    "inode {} has file-data layout where blocks were expected",
                    v.nid
                ),
            })),
        }
    }

    /// The data of a symlink inode, blocks and inline tail joined.
    fn flat_data(&self, v: &InodeView) -> Result<Vec<u8>, ReadError> {
        let ((_, plain), tail) = self.flat_parts(v)?;
        let mut out = plain.to_vec();
        if let Some((_, t)) = tail {
            out.extend_from_slice(t);
        }
        Ok(out)
    }

    /// The blocks of directory `nid`: (bootstrap offset, bytes) each, the last one possibly
    /// short (the inline tail).
    fn dir_blocks(&self, nid: Nid) -> Result<Vec<(u64, &[u8])>, ReadError> {
        let v = self.inode(nid)?;
        if v.inode.mode as u32 & libc::S_IFMT != libc::S_IFDIR {
            return Err(ReadError::Request(format!(
                "inode {nid} is not a directory"
            )));
        }
        let ((blkaddr, plain), tail) = self.flat_parts(&v)?;
        let mut out: Vec<(u64, &[u8])> = plain
            .chunks(BLOCK_SIZE as usize)
            .enumerate()
            .map(|(i, b)| (blkaddr + i as u64 * BLOCK_SIZE, b))
            .collect();
        out.extend(tail);
        Ok(out)
    }

    fn block_entries<'a>(
        &self,
        nid: Nid,
        at: u64,
        block: &'a [u8],
    ) -> Result<Vec<inode::RawDirent<'a>>, ReadError> {
        let entries = inode::decode_dirents(block, at).map_err(|e| self.fmt_err(e))?;
        for (name, _, _) in &entries {
            if name.contains(&b'/') || name.contains(&0) {
                return Err(self.fmt_err(FormatError::Invalid {
                    offset: at,
                    what: format!(
                        "directory {nid}: entry name {:?} contains '/' or NUL",
                        String::from_utf8_lossy(name)
                    ),
                }));
            }
        }
        Ok(entries)
    }

    /// Entries of directory `nid`, "." and ".." excluded, in stored (name) order.
    pub fn read_dir(&self, nid: Nid) -> Result<Vec<DirEntry>, ReadError> {
        if self.v5.is_some() {
            return self.v5_read_dir(nid);
        }
        let mut out = Vec::new();
        for (at, block) in self.dir_blocks(nid)? {
            for (name, child, ft) in self.block_entries(nid, at, block)? {
                if name != b"." && name != b".." {
                    out.push(DirEntry {
                        name: name.to_vec(),
                        nid: Nid(child),
                        file_type: ft,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Finds `name` in directory `dir`: binary search over the blocks by their first
    /// name, then inside the block (EROFS keeps entries sorted by name bytes).
    pub fn lookup(&self, dir: Nid, name: &[u8]) -> Result<Option<Nid>, ReadError> {
        if name == b"." || name == b".." {
            return Ok(None);
        }
        if self.v5.is_some() {
            return self.v5_lookup(dir, name);
        }
        let blocks = self.dir_blocks(dir)?;
        let (mut lo, mut hi) = (0usize, blocks.len());
        // Find the last block whose first name is <= name.
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            let (at, block) = blocks[mid];
            let first = self.block_entries(dir, at, block)?;
            match first.first() {
                Some((n, _, _)) if *n <= name => lo = mid,
                _ => hi = mid,
            }
        }
        let Some(&(at, block)) = blocks.get(lo) else {
            return Ok(None);
        };
        let entries = self.block_entries(dir, at, block)?;
        Ok(entries
            .binary_search_by(|(n, _, _)| (*n).cmp(name))
            .ok()
            .map(|i| Nid(entries[i].1)))
    }

    /// Resolves an absolute path inside the image (no symlink following).
    pub fn resolve(&self, path: &[u8]) -> Result<Option<Nid>, ReadError> {
        let mut nid = self.root();
        for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            match self.lookup(nid, part)? {
                Some(n) => nid = n,
                None => return Ok(None),
            }
        }
        Ok(Some(nid))
    }

    /// Target of symlink `nid`.
    pub fn readlink(&self, nid: Nid) -> Result<Vec<u8>, ReadError> {
        if self.v5.is_some() {
            return self.v5_readlink(nid);
        }
        let v = self.inode(nid)?;
        if v.inode.mode as u32 & libc::S_IFMT != libc::S_IFLNK {
            return Err(ReadError::Request(format!("inode {nid} is not a symlink")));
        }
        self.flat_data(&v)
    }

    /// Chunk indexes of regular file `nid`, one per chunk of the superblock's chunk size.
    pub fn chunk_addrs(&self, nid: Nid) -> Result<Vec<Option<ChunkAddr>>, ReadError> {
        let table = self.chunk_table_of(nid)?;
        (0..table.count).map(|i| table.get(self, i)).collect()
    }

    /// The chunk index array of regular file `nid`, bounds checked once.
    pub(crate) fn chunk_table_of(&self, nid: Nid) -> Result<ChunkTable<'_>, ReadError> {
        if self.v5.is_some() {
            return self.v5_chunk_table(nid);
        }
        let v = self.inode(nid)?;
        if v.inode.layout != DataLayout::ChunkBased {
            return Err(ReadError::Request(format!(
                "inode {nid} is not a regular file"
            )));
        }
        let count = v.inode.size.div_ceil(self.sb.chunk_size as u64);
        let start = v.body_offset.next_multiple_of(8);
        let bytes = self.bytes(start, count.saturating_mul(8))?;
        Ok(ChunkTable {
            size: v.inode.size,
            count: count as usize,
            start,
            bytes,
            v5: false,
        })
    }

    /// Visits every entry depth first: (path, nid), the root as "/". Detects directory
    /// cycles and nesting deeper than `MAX_DEPTH`.
    pub fn walk(
        &self,
        mut visit: impl FnMut(&[u8], Nid) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        let root = self.root();
        visit(b"/", root)?;
        let mut on_path: Vec<Nid> = vec![root];
        // A directory has one name: one reached twice (a damaged image making a DAG)
        // would multiply the walk.
        let mut dirs_seen = std::collections::HashSet::from([root]);
        let mut stack: Vec<(Vec<u8>, std::vec::IntoIter<DirEntry>)> =
            vec![(Vec::new(), self.read_dir(root)?.into_iter())];
        while let Some((prefix, iter)) = stack.last_mut() {
            let Some(entry) = iter.next() else {
                stack.pop();
                on_path.pop();
                continue;
            };
            let mut path = prefix.clone();
            path.push(b'/');
            path.extend_from_slice(&entry.name);
            visit(&path, entry.nid)?;
            let st = self.stat(entry.nid)?;
            if st.mode & libc::S_IFMT == libc::S_IFDIR {
                if on_path.contains(&entry.nid) {
                    return Err(self.fmt_err(FormatError::Invalid {
                        offset: 0,
                        what: format!("directory cycle at {}", String::from_utf8_lossy(&path)),
                    }));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(self.fmt_err(FormatError::Invalid {
                        offset: 0,
                        what: format!("directories nested deeper than {MAX_DEPTH}"),
                    }));
                }
                if !dirs_seen.insert(entry.nid) {
                    return Err(self.fmt_err(FormatError::Invalid {
                        offset: 0,
                        what: format!(
                            "directory {} reached a second time at {}",
                            entry.nid,
                            String::from_utf8_lossy(&path)
                        ),
                    }));
                }
                on_path.push(entry.nid);
                let children = self.read_dir(entry.nid)?.into_iter();
                stack.push((path, children));
            }
        }
        Ok(())
    }
}

/// The size the blob table records for a remote blob, when it can stand for the blob's
/// (an eStargz layer's table size is the TOC's idea of it: the backend is asked).
fn table_size(entry: &BlobEntry) -> Option<u64> {
    let trusted = entry.compressor != crate::format::Compressor::Gzip && entry.compressed_size > 0;
    trusted.then_some(entry.compressed_size)
}

/// `bytes[offset..offset + len]`, or a truncation error naming the offset.
fn slice(bytes: &[u8], offset: u64, len: u64) -> Result<&[u8], FormatError> {
    let end = offset.checked_add(len);
    match end {
        Some(end) if end <= bytes.len() as u64 => Ok(&bytes[offset as usize..end as usize]),
        _ => Err(FormatError::Truncated {
            offset,
            need: len,
            have: (bytes.len() as u64).saturating_sub(offset),
            what: "bootstrap range",
        }),
    }
}

#[cfg(test)]
mod tests {
    //! Hostile bootstraps: each damage is an error naming what is wrong, never a panic.

    use super::*;
    use crate::builder::bootstrap::v6::tests::bootstrap_of;
    use crate::builder::tree::tests::Sketch;
    use crate::format::v6::inode::decode_dirents;

    /// root: d/ (e/ (deep), f), l -> d/f, x (xattrs), p (fifo).
    fn small() -> Vec<u8> {
        let mut s = Sketch::new();
        let d = s.dir(0, "d");
        let e = s.dir(d, "e");
        s.file(e, "deep", 0);
        s.file(d, "f", 0);
        s.symlink(0, "l", b"d/f");
        let x = s.file(0, "x", 0);
        s.node(x).xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
        s.add(0, b"p", crate::builder::tree::Kind::Fifo, 0o644);
        bootstrap_of(&s.tree)
    }

    fn open(bytes: Vec<u8>) -> Result<Image, ReadError> {
        Image::from_bytes("hostile.boot".as_ref(), bytes, BlobSource::None)
    }

    /// Opens the bootstrap and reads everything a mount would: every entry's attributes,
    /// xattrs, directory listing (each name looked up), symlink target and chunk indexes,
    /// and a RAFS v5 directory's digest. Returns the entries. Shared with `v5`'s tests.
    pub(super) fn exercise(bytes: Vec<u8>) -> Result<usize, ReadError> {
        let image = open(bytes)?;
        let mut nids = Vec::new();
        image.walk(|_, nid| {
            nids.push(nid);
            Ok(())
        })?;
        for &nid in &nids {
            let st = image.stat(nid)?;
            image.xattrs(nid)?;
            match st.mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    for e in image.read_dir(nid)? {
                        image.lookup(nid, &e.name)?;
                    }
                    if image.fs_version() == 5 {
                        image.v5_digest_mismatch(nid)?;
                    }
                }
                libc::S_IFLNK => drop(image.readlink(nid)?),
                libc::S_IFREG => drop(image.chunk_addrs(nid)?),
                _ => {}
            }
        }
        Ok(nids.len())
    }

    /// Byte offsets of the dirent for `name` in the (single-block, inline) directory
    /// `dir`, and of the name itself.
    fn dirent_offset(bytes: &[u8], dir: &[u8], name: &[u8]) -> (usize, usize) {
        let image = open(bytes.to_vec()).unwrap();
        let v = image.inode(image.resolve(dir).unwrap().unwrap()).unwrap();
        assert_eq!(v.inode.layout, DataLayout::FlatInline);
        let at = v.body_offset as usize;
        let data = &bytes[at..at + v.inode.size as usize];
        let entries = decode_dirents(data, 0).unwrap();
        let i = entries
            .iter()
            .position(|e| e.0 == name)
            .expect("name in the directory");
        let name_at = entries[i].0.as_ptr() as usize - data.as_ptr() as usize;
        (at + i * inode::DIRENT_SIZE, at + name_at)
    }

    /// Byte offset of the inode at `path`.
    fn inode_offset(bytes: &[u8], path: &[u8]) -> usize {
        let image = open(bytes.to_vec()).unwrap();
        let nid = image.resolve(path).unwrap().unwrap();
        image.inode(nid).unwrap().offset as usize
    }

    fn nid_of(bytes: &[u8], path: &[u8]) -> u64 {
        let image = open(bytes.to_vec()).unwrap();
        image.resolve(path).unwrap().unwrap().0
    }

    #[test]
    fn the_sample_reads_whole() {
        assert_eq!(exercise(small()).unwrap(), 8);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = small();
        let mut lens: Vec<usize> = vec![0, 1, 1024, 1100, 1408, 4095, full.len() - 1];
        lens.extend((1..full.len() / 4096).map(|b| b * 4096));
        for len in lens {
            let err = exercise(full[..len].to_vec()).expect_err(&format!("{len} bytes"));
            let text = crate::error::Chain(&err).to_string();
            assert!(
                text.starts_with("bootstrap hostile.boot: at 0x"),
                "{len}: {text}"
            );
            if len < 4096 {
                assert!(
                    matches!(
                        err,
                        ReadError::Format {
                            source: FormatError::Truncated { .. },
                            ..
                        }
                    ),
                    "{len}: {text}"
                );
            }
        }
    }

    #[test]
    fn each_damage_is_named() {
        type Damage = fn(&mut Vec<u8>);
        let cases: &[(&str, Damage, &str)] = &[
            ("bad magic", |b| b[1024] ^= 0xff, "magic"),
            (
                "root nid past the end",
                |b| b[1038..1040].copy_from_slice(&u16::MAX.to_le_bytes()),
                "nid 65535 points outside",
            ),
            (
                "dirent nid past the end",
                |b| {
                    let (at, _) = dirent_offset(b, b"/", b"d");
                    b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
                },
                "nid 1099511627776 points outside",
            ),
            (
                "dirent nid whose offset overflows",
                |b| {
                    let (at, _) = dirent_offset(b, b"/", b"x");
                    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
                },
                "points outside",
            ),
            (
                "directory pointing at the root",
                |b| {
                    let root = nid_of(b, b"/");
                    let (at, _) = dirent_offset(b, b"/d", b"e");
                    b[at..at + 8].copy_from_slice(&root.to_le_bytes());
                },
                "directory cycle at /d/e",
            ),
            (
                "directory pointing at itself",
                |b| {
                    let d = nid_of(b, b"/d");
                    let (at, _) = dirent_offset(b, b"/d", b"e");
                    b[at..at + 8].copy_from_slice(&d.to_le_bytes());
                },
                "directory cycle at /d/e",
            ),
            (
                "name with a slash",
                |b| {
                    let (_, name) = dirent_offset(b, b"/", b"x");
                    b[name] = b'/';
                },
                "contains '/' or NUL",
            ),
            (
                "symlink with file layout",
                |b| {
                    let at = inode_offset(b, b"/l");
                    b[at] = 1 | 4 << 1;
                },
                "mode 0o120777 with layout ChunkBased",
            ),
            (
                "unknown layout",
                |b| {
                    let at = inode_offset(b, b"/d/f");
                    b[at] = 1 | 3 << 1;
                },
                "unsupported data layout 3",
            ),
            (
                "directory larger than the bootstrap",
                |b| {
                    let at = inode_offset(b, b"/d");
                    b[at + 8..at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
                },
                "exceeds the bootstrap",
            ),
            (
                "xattrs running past the end",
                |b| {
                    let at = inode_offset(b, b"/x");
                    b[at + 2..at + 4].copy_from_slice(&u16::MAX.to_le_bytes());
                },
                "xattrs run past the end",
            ),
        ];
        for (name, damage, says) in cases {
            let mut bytes = small();
            damage(&mut bytes);
            match exercise(bytes) {
                Err(e) => {
                    let text = crate::error::Chain(&e).to_string();
                    assert!(text.contains(says), "{name}: {text:?} lacks {says:?}");
                }
                Ok(n) => panic!("{name}: read {n} entries"),
            }
        }
    }

    /// A chain of `depth` directories below the root.
    fn chain(depth: usize) -> Vec<u8> {
        let mut s = Sketch::new();
        let mut parent = 0;
        for _ in 0..depth {
            parent = s.dir(parent, "d");
        }
        bootstrap_of(&s.tree)
    }

    #[test]
    fn nesting_stops_at_the_depth_limit() {
        assert_eq!(exercise(chain(MAX_DEPTH - 1)).unwrap(), MAX_DEPTH);
        let err = exercise(chain(MAX_DEPTH)).unwrap_err();
        let err = crate::error::Chain(&err).to_string();
        assert!(err.contains("nested deeper than 4096"), "{err}");
    }

    /// Every byte of the superblock and of the metadata, set to each of a few values: an
    /// error or a readable image, never a panic.
    #[test]
    fn no_single_byte_damage_panics() {
        let base = small();
        let meta_start = open(base.clone()).unwrap().super_block().meta_blkaddr as usize * 4096;
        let offsets = (1024..1408).chain(meta_start..base.len());
        let (mut errors, mut tried) = (0, 0);
        for at in offsets {
            let was = base[at];
            for value in [0, 0xff, was ^ 0x80, was.wrapping_add(1)] {
                if value == was {
                    continue;
                }
                let mut bytes = base.clone();
                bytes[at] = value;
                let outcome = std::panic::catch_unwind(|| exercise(bytes));
                match outcome {
                    Ok(result) => errors += result.is_err() as usize,
                    Err(_) => panic!("byte {at} set to 0x{value:02x}: panic"),
                }
                tried += 1;
            }
        }
        // Damage is noticed (most bytes are padding, where it is harmless).
        assert!(errors > 100, "{errors} errors in {tried} damages");
    }
}
