//! The RAFS v5 side of [`Image`]: opening a v5 bootstrap and answering the image's
//! questions (attributes, directory listings, lookups, symlinks, xattrs, chunk lists)
//! from its inode records. `Image` dispatches here when it was opened from a v5
//! bootstrap; everything above the reader (check, mount, verify, the builder's parent and
//! dictionary loading) sees the same API for both versions.
//!
//! Nids are v5 inode numbers: the inode-table index of an inode's first record, so hard
//! links share one. Every record is checked before use: its offset, its tails against the
//! file's end, its type, its child range against the inode table; a nid whose record
//! claims another inode number is refused, so a listing cannot alias inodes.

use std::path::{Path, PathBuf};

use super::{ChunkTable, DirEntry, Image, ReadError, Stat};
use crate::format::v5::inode::{self, flags as iflags, Inode, INODE_SIZE};
use crate::format::v5::super_block::SuperBlock;
use crate::format::v5::{tables, ChunkInfo, CHUNK_INFO_SIZE, NAME_MAX, ROOT_INO};
use crate::format::v6::inode::{ChunkAddr, FileType};
use crate::format::v6::tables::BlobEntry;
use crate::format::v6::{self, Nid};
use crate::format::{Compressor, FormatError};
use crate::storage::blobs::{BlobFile, BlobOpenError, BlobSource};

/// Where a v5 bootstrap's parts are, kept by an open [`Image`].
pub(super) struct Meta {
    sb: SuperBlock,
    /// Each blob's readahead range (offset, size) from the blob table.
    readahead: Vec<(u32, u32)>,
}

/// One decoded inode record.
pub(super) struct Record {
    /// Its inode-table index.
    index: u64,
    /// Byte offset of the record.
    offset: u64,
    /// The fixed part.
    inode: Inode,
    /// Byte offset of the xattr area (right after name and symlink).
    xattr_offset: u64,
    /// Byte offset of the chunk infos (after the xattrs).
    chunks_offset: u64,
}

/// `bytes[offset..offset + len]`, or a truncation error naming the offset.
fn range<'m>(
    bytes: &'m [u8],
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<&'m [u8], FormatError> {
    let end = offset.checked_add(len);
    match end {
        Some(end) if end <= bytes.len() as u64 => Ok(&bytes[offset as usize..end as usize]),
        _ => Err(FormatError::Truncated {
            offset,
            need: len,
            have: (bytes.len() as u64).saturating_sub(offset),
            what,
        }),
    }
}

impl Meta {
    /// Decodes record `index` of the inode table and checks it and its tails.
    fn record(&self, meta: &[u8], index: u64) -> Result<Record, FormatError> {
        let sb = &self.sb;
        let table = range(
            meta,
            sb.inode_table_offset,
            sb.inode_table_entries as u64 * 4,
            "inode table",
        )?;
        let offset =
            tables::inode_offset(table, sb.inode_table_offset, sb.inode_table_entries, index)?;
        let bad = |what: String| FormatError::Invalid {
            offset,
            what: format!("inode {index}: {what}"),
        };
        let inode = Inode::decode(meta.get(offset as usize..).unwrap_or(&[]), offset)?;
        if inode.ino == 0 || inode.ino > sb.inode_table_entries as u64 {
            return Err(bad(format!(
                "inode number {} outside the inode table",
                inode.ino
            )));
        }
        if inode.name_size == 0 || inode.name_size as usize > NAME_MAX {
            return Err(bad(format!("name of {} bytes", inode.name_size)));
        }
        let kind = inode.kind();
        if !matches!(
            kind,
            libc::S_IFREG
                | libc::S_IFDIR
                | libc::S_IFLNK
                | libc::S_IFCHR
                | libc::S_IFBLK
                | libc::S_IFIFO
                | libc::S_IFSOCK
        ) {
            return Err(bad(format!("unknown file type in mode 0o{:o}", inode.mode)));
        }
        if kind == libc::S_IFLNK && inode.symlink_size == 0 {
            return Err(bad("symlink without a target".into()));
        }
        let xattr_offset = offset + inode.head_size();
        range(meta, offset, inode.head_size(), "RAFS v5 inode record")?;
        let mut chunks_offset = xattr_offset;
        if inode.flags & iflags::XATTR != 0 {
            let size = range(meta, xattr_offset, 8, "RAFS v5 xattrs")?;
            let size = u64::from_le_bytes(size.try_into().expect("8 bytes"));
            let area = size
                .checked_add(7)
                .and_then(|s| (s & !7).checked_add(8))
                .ok_or_else(|| bad(format!("xattr size {size}")))?;
            range(meta, xattr_offset, area, "RAFS v5 xattrs")?;
            chunks_offset += area;
        }
        match kind {
            libc::S_IFREG => {
                range(
                    meta,
                    chunks_offset,
                    inode::chunks_size(inode.child_count),
                    "RAFS v5 chunk infos",
                )?;
            }
            libc::S_IFDIR if inode.child_count > 0 => {
                let last = inode.child_index as u64 + inode.child_count as u64 - 1;
                if inode.child_index == 0 || last > sb.inode_table_entries as u64 {
                    return Err(bad(format!(
                        "children {}..={last} outside the inode table of {} entries",
                        inode.child_index, sb.inode_table_entries
                    )));
                }
            }
            _ => {}
        }
        Ok(Record {
            index,
            offset,
            inode,
            xattr_offset,
            chunks_offset,
        })
    }

    /// The record that serves inode `nid`: the table entry at `nid`, which must carry
    /// that inode number.
    fn inode(&self, meta: &[u8], nid: Nid) -> Result<Record, FormatError> {
        let r = self.record(meta, nid.0)?;
        if r.inode.ino != nid.0 {
            return Err(FormatError::Invalid {
                offset: r.offset,
                what: format!(
                    "inode {nid}: its record carries inode number {}",
                    r.inode.ino
                ),
            });
        }
        Ok(r)
    }

    /// The record's name.
    fn name<'m>(&self, meta: &'m [u8], r: &Record) -> Result<&'m [u8], FormatError> {
        range(
            meta,
            r.offset + INODE_SIZE,
            r.inode.name_size as u64,
            "RAFS v5 name",
        )
    }
}

/// A v5 inode record's name, parent and block count, as [`Image::v5_record`] gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V5Record {
    /// The record's name (the root's is `/`).
    pub name: Vec<u8>,
    /// The parent inode number the record names.
    pub parent: Nid,
    /// 512-byte blocks, as the builder stored them.
    pub blocks: u64,
}

/// Each blob's file, or why it could not be opened.
type BlobFiles = Vec<Result<BlobFile, std::sync::Arc<BlobOpenError>>>;

/// Opens the blobs named by `ids` from `source` (the caller then points a blob carrying
/// the bootstrap at its own file).
fn open_blob_files(
    table: &[BlobEntry],
    ids: &[String],
    source: &BlobSource,
) -> (BlobFiles, Vec<Option<PathBuf>>) {
    let paths = source.resolve(ids);
    let files = match source {
        BlobSource::Backend(_) | BlobSource::CachedBackend(..) => ids
            .iter()
            .zip(table)
            .map(|(id, entry)| {
                source
                    .open_remote(id, super::table_size(entry))
                    .expect("a backend source")
                    .map_err(BlobOpenError::Backend)
            })
            .collect::<Vec<_>>(),
        _ => paths
            .iter()
            .map(|p| match p {
                Some(p) => BlobFile::open(p).map_err(|source| BlobOpenError::File {
                    path: p.clone(),
                    source,
                }),
                None => Err(BlobOpenError::NotGiven),
            })
            .collect(),
    };
    (
        files
            .into_iter()
            .map(|f| f.map_err(std::sync::Arc::new))
            .collect(),
        paths,
    )
}

impl Image {
    /// Opens a v5 bootstrap held in `meta`: superblock, blob tables, and every inode
    /// record, whose chunk infos make the image's chunk table (v5 has none of its own).
    ///
    /// With `own` (a bootstrap taken out of its blob), the blob table entries marked
    /// `INLINED_FS_META` are that blob, as for v6.
    pub(super) fn from_v5(
        path: &Path,
        meta: Vec<u8>,
        blobs: BlobSource,
        own: Option<super::inline::OwnBlob<'_>>,
    ) -> Result<Self, ReadError> {
        let fmt = |source: FormatError| ReadError::Format {
            path: path.to_path_buf(),
            source,
        };
        let sb = SuperBlock::decode(&meta, meta.len() as u64).map_err(fmt)?;
        let table = range(
            &meta,
            sb.blob_table_offset,
            sb.blob_table_size as u64,
            "blob table",
        )
        .map_err(fmt)?;
        let ext = range(
            &meta,
            sb.ext_blob_table_offset,
            sb.ext_blob_table_entries as u64 * 64,
            "extended blob table",
        )
        .map_err(fmt)?;
        let v5_blobs =
            tables::decode_blobs(table, sb.blob_table_offset, ext, sb.ext_blob_table_offset)
                .map_err(fmt)?;
        if v5_blobs.len() > 255 {
            return Err(fmt(FormatError::Invalid {
                offset: sb.blob_table_offset,
                what: format!(
                    "{} blobs, more than the 255 this reader addresses",
                    v5_blobs.len()
                ),
            }));
        }
        let m = Meta {
            sb: sb.clone(),
            readahead: v5_blobs
                .iter()
                .map(|b| (b.readahead_offset, b.readahead_size))
                .collect(),
        };
        // Every record is checked once here; a regular file's first record lends its
        // chunk infos to the chunk table.
        let mut chunks = Vec::new();
        let mut seen_count = vec![0u32; v5_blobs.len()];
        for index in 1..=sb.inode_table_entries as u64 {
            let r = m.record(&meta, index).map_err(fmt)?;
            if r.inode.kind() != libc::S_IFREG || r.inode.ino != index {
                continue;
            }
            for i in 0..r.inode.child_count as u64 {
                let at = r.chunks_offset + i * CHUNK_INFO_SIZE as u64;
                let bytes = range(&meta, at, CHUNK_INFO_SIZE as u64, "chunk info").map_err(fmt)?;
                let info = ChunkInfo::decode(bytes, at).map_err(fmt)?;
                let Some(count) = seen_count.get_mut(info.blob_index as usize) else {
                    return Err(fmt(FormatError::Invalid {
                        offset: at + 32,
                        what: format!(
                            "inode {index}: chunk {i} names blob {} of {}",
                            info.blob_index,
                            v5_blobs.len()
                        ),
                    }));
                };
                *count = (*count).max(info.index.saturating_add(1));
                chunks.push((info.blob_index, info.index, at));
            }
        }
        chunks.sort_unstable();
        chunks.dedup_by_key(|c| (c.0, c.1));
        let has_ext = sb.ext_blob_table_entries > 0;
        let is_own = |b: &tables::Blob| {
            own.is_some() && b.features & v6::tables::blob_features::INLINED_FS_META != 0
        };
        let table: Vec<BlobEntry> = v5_blobs
            .iter()
            .zip(&seen_count)
            .map(|(b, &seen)| BlobEntry {
                blob_id: match &own {
                    Some(o) if is_own(b) => o.id.to_string(),
                    _ => b.blob_id.clone(),
                },
                chunk_size: sb.chunk_size,
                // Old images without an extended table do not say; count what is used.
                chunk_count: if has_ext { b.chunk_count } else { seen },
                compressor: sb.compressor,
                digester: sb.digester,
                features: b.features,
                compressed_size: b.compressed_size,
                uncompressed_size: b.uncompressed_size,
                toc_size: 0,
                ci_compressor: Compressor::None,
                ci_offset: 0,
                ci_compressed_size: 0,
                ci_uncompressed_size: 0,
                toc_digest: [0; 32],
            })
            .collect();
        let ids: Vec<String> = table.iter().map(|b| b.blob_id.clone()).collect();
        let (mut blob_files, mut blob_paths) = open_blob_files(&table, &ids, &blobs);
        if let Some(o) = &own {
            for (i, b) in v5_blobs.iter().enumerate() {
                if is_own(b) {
                    blob_paths[i] = Some(o.path.to_path_buf());
                    blob_files[i] = BlobFile::open(o.path)
                        .map_err(|source| BlobOpenError::File {
                            path: o.path.to_path_buf(),
                            source,
                        })
                        .map_err(std::sync::Arc::new);
                }
            }
        }
        // The v6-shaped summary the rest of the crate reads: settings and counts; the
        // v6-only locations (metadata block, chunk table) are zero.
        let summary = v6::super_block::SuperBlock {
            root_nid: ROOT_INO as u16,
            inodes: sb.inodes,
            blocks: (meta.len() as u64).div_ceil(v6::BLOCK_SIZE) as u32,
            meta_blkaddr: 0,
            extra_devices: table.len() as u16,
            flags: sb.flags,
            compressor: sb.compressor,
            digester: sb.digester,
            chunk_size: sb.chunk_size,
            blob_table_offset: sb.blob_table_offset,
            blob_table_size: sb.blob_table_size,
            chunk_table_offset: 0,
            chunk_table_size: 0,
            prefetch_table_offset: sb.prefetch_table_offset,
            prefetch_table_size: sb.prefetch_table_entries.saturating_mul(4),
        };
        let image = Image {
            path: path.to_path_buf(),
            meta,
            sb: summary,
            blobs: table,
            devices: Vec::new(),
            chunks,
            blob_files,
            blob_paths,
            cache: super::ChunkCache::new(super::DEFAULT_CACHE_BYTES),
            windows: std::sync::Mutex::new(std::collections::VecDeque::new()),
            remote: super::lazy::RemoteState::for_source(&blobs),
            inline: None,
            validate: false,
            v5: Some(m),
        };
        image.v5_stat(image.root())?;
        Ok(image)
    }

    /// The v5 metadata; only called on a v5 image.
    fn v5_meta(&self) -> &Meta {
        self.v5.as_ref().expect("called on a v5 image")
    }

    fn v5_inode(&self, nid: Nid) -> Result<Record, ReadError> {
        self.v5_meta()
            .inode(&self.meta, nid)
            .map_err(|e| self.fmt_err(e))
    }

    /// The v5 superblock, when the image is v5.
    pub fn v5_super_block(&self) -> Option<&SuperBlock> {
        self.v5.as_ref().map(|m| &m.sb)
    }

    /// The readahead range (offset, size) the v5 blob table gives blob `index`; none for
    /// a v6 image (its blob table has no such field) or an index past the table.
    pub fn blob_readahead(&self, index: usize) -> Option<(u32, u32)> {
        self.v5.as_ref()?.readahead.get(index).copied()
    }

    /// What the record serving v5 inode `nid` says beyond [`Image::stat`] (for a hard
    /// link, its first record, which upstream names every link by); `None` on a v6
    /// image.
    pub fn v5_record(&self, nid: Nid) -> Result<Option<V5Record>, ReadError> {
        if self.v5.is_none() {
            return Ok(None);
        }
        let r = self.v5_inode(nid)?;
        let name = self
            .v5_meta()
            .name(&self.meta, &r)
            .map_err(|e| self.fmt_err(e))?;
        Ok(Some(V5Record {
            name: name.to_vec(),
            parent: Nid(r.inode.parent),
            blocks: r.inode.blocks,
        }))
    }

    pub(super) fn v5_stat(&self, nid: Nid) -> Result<Stat, ReadError> {
        let i = self.v5_inode(nid)?.inode;
        Ok(Stat::from_stored(
            nid,
            i.mode,
            (i.uid, i.gid),
            i.nlink,
            i.size,
            (i.mtime as i64, i.mtime_nsec),
            i.rdev as u64,
        ))
    }

    pub(super) fn v5_xattrs(&self, nid: Nid) -> Result<inode::Xattrs, ReadError> {
        let r = self.v5_inode(nid)?;
        if r.inode.flags & iflags::XATTR == 0 {
            return Ok(Vec::new());
        }
        let bytes = &self.meta[r.xattr_offset as usize..r.chunks_offset as usize];
        inode::decode_xattrs(bytes, r.xattr_offset)
            .map(|(pairs, _)| pairs)
            .map_err(|e| self.fmt_err(e))
    }

    /// Directory `nid`'s child records, in stored order.
    fn v5_children(&self, nid: Nid) -> Result<Vec<Record>, ReadError> {
        let r = self.v5_inode(nid)?;
        if r.inode.kind() != libc::S_IFDIR {
            return Err(ReadError::Request(format!(
                "inode {nid} is not a directory"
            )));
        }
        let m = self.v5_meta();
        let first = r.inode.child_index as u64;
        (first..first + r.inode.child_count as u64)
            .map(|i| m.record(&self.meta, i).map_err(|e| self.fmt_err(e)))
            .collect()
    }

    /// A child record's name, checked to be a plain name.
    fn v5_child_name(&self, dir: Nid, r: &Record) -> Result<&[u8], ReadError> {
        let name = self
            .v5_meta()
            .name(&self.meta, r)
            .map_err(|e| self.fmt_err(e))?;
        if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
            return Err(self.fmt_err(FormatError::Invalid {
                offset: r.offset + INODE_SIZE,
                what: format!(
                    "directory {dir}: child {} is named {:?}, which contains '/' or NUL or is a dot entry",
                    r.index,
                    String::from_utf8_lossy(name)
                ),
            }));
        }
        Ok(name)
    }

    pub(super) fn v5_read_dir(&self, nid: Nid) -> Result<Vec<DirEntry>, ReadError> {
        self.v5_children(nid)?
            .iter()
            .map(|r| {
                Ok(DirEntry {
                    name: self.v5_child_name(nid, r)?.to_vec(),
                    nid: Nid(r.inode.ino),
                    file_type: FileType::from_mode(r.inode.mode) as u8,
                })
            })
            .collect()
    }

    /// Binary search over the children by name, as upstream looks names up (the builder
    /// stores children sorted by name bytes).
    pub(super) fn v5_lookup(&self, dir: Nid, name: &[u8]) -> Result<Option<Nid>, ReadError> {
        let r = self.v5_inode(dir)?;
        if r.inode.kind() != libc::S_IFDIR {
            return Err(ReadError::Request(format!(
                "inode {dir} is not a directory"
            )));
        }
        let m = self.v5_meta();
        let (mut lo, mut hi) = (0u64, r.inode.child_count as u64);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let child = m
                .record(&self.meta, r.inode.child_index as u64 + mid)
                .map_err(|e| self.fmt_err(e))?;
            match self.v5_child_name(dir, &child)?.cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some(Nid(child.inode.ino))),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    pub(super) fn v5_readlink(&self, nid: Nid) -> Result<Vec<u8>, ReadError> {
        let r = self.v5_inode(nid)?;
        if r.inode.kind() != libc::S_IFLNK {
            return Err(ReadError::Request(format!("inode {nid} is not a symlink")));
        }
        let at = r.offset + INODE_SIZE + crate::format::v5::align(r.inode.name_size as u64);
        range(
            &self.meta,
            at,
            r.inode.symlink_size as u64,
            "RAFS v5 symlink",
        )
        .map(<[u8]>::to_vec)
        .map_err(|e| self.fmt_err(e))
    }

    /// Regular file `nid`'s chunk infos: one per chunk of the chunk size, in file order
    /// (holes, which upstream's builders never write, are refused).
    pub(super) fn v5_chunk_table(&self, nid: Nid) -> Result<ChunkTable<'_>, ReadError> {
        let r = self.v5_inode(nid)?;
        if r.inode.kind() != libc::S_IFREG {
            return Err(ReadError::Request(format!(
                "inode {nid} is not a regular file"
            )));
        }
        let want = r.inode.size.div_ceil(self.sb.chunk_size as u64);
        if r.inode.flags & iflags::HAS_HOLE != 0 || want != r.inode.child_count as u64 {
            return Err(self.fmt_err(FormatError::Invalid {
                offset: r.offset,
                what: format!(
                    "inode {nid}: {} chunks (flags 0x{:x}) for {} bytes, expected {want}",
                    r.inode.child_count, r.inode.flags, r.inode.size
                ),
            }));
        }
        let len = inode::chunks_size(r.inode.child_count);
        let bytes = &self.meta[r.chunks_offset as usize..(r.chunks_offset + len) as usize];
        Ok(ChunkTable {
            size: r.inode.size,
            count: want as usize,
            start: r.chunks_offset,
            bytes,
            v5: true,
        })
    }

    /// Decodes chunk info `i` of a v5 chunk list starting at `start`, checked to be the
    /// chunk at file offset `i * chunk_size`.
    pub(super) fn v5_chunk_addr(
        &self,
        bytes: &[u8],
        start: u64,
        i: usize,
    ) -> Result<Option<ChunkAddr>, ReadError> {
        let at = i * CHUNK_INFO_SIZE;
        let offset = start + at as u64;
        let info = ChunkInfo::decode(&bytes[at..at + CHUNK_INFO_SIZE], offset)
            .map_err(|e| self.fmt_err(e))?;
        let bad = |what: String| self.fmt_err(FormatError::Invalid { offset, what });
        if info.file_offset != i as u64 * self.sb.chunk_size as u64 {
            return Err(bad(format!(
                "chunk {i} records file offset {}, expected {}",
                info.file_offset,
                i as u64 * self.sb.chunk_size as u64
            )));
        }
        let blob_index = u8::try_from(info.blob_index)
            .ok()
            .filter(|&b| (b as usize) < self.blobs.len())
            .ok_or_else(|| {
                bad(format!(
                    "chunk {i} names blob {} of {}",
                    info.blob_index,
                    self.blobs.len()
                ))
            })?;
        Ok(Some(ChunkAddr {
            blob_index,
            chunk_index: info.index,
            block_addr: 0,
        }))
    }

    /// Whether the inode digests of directory `nid` and its regular files and symlinks
    /// match their contents, as nydusd checks them with `digest_validate`: a file's is
    /// the digest of its chunk digests, a symlink's of its target, a directory's of its
    /// children's inode digests in order, anything else's of nothing. Returns the first
    /// mismatch as (inode, what).
    pub fn v5_digest_mismatch(&self, nid: Nid) -> Result<Option<(Nid, String)>, ReadError> {
        if self.v5.is_none() {
            return Ok(None);
        }
        let digester = self.sb.digester;
        let own = |r: &Record| -> Result<[u8; 32], ReadError> {
            let mut data = Vec::new();
            match r.inode.kind() {
                libc::S_IFLNK => data = self.v5_readlink(Nid(r.inode.ino))?,
                libc::S_IFREG => {
                    for i in 0..r.inode.child_count as u64 {
                        let at = (r.chunks_offset + i * CHUNK_INFO_SIZE as u64) as usize;
                        data.extend_from_slice(&self.meta[at..at + 32]);
                    }
                }
                _ => {}
            }
            Ok(crate::storage::compress::digest(digester, &data))
        };
        let dir = self.v5_inode(nid)?;
        let mut children = Vec::new();
        if dir.inode.kind() == libc::S_IFDIR {
            for child in self.v5_children(nid)? {
                if matches!(child.inode.kind(), libc::S_IFREG | libc::S_IFLNK)
                    && own(&child)? != child.inode.digest
                {
                    return Ok(Some((Nid(child.inode.ino), "inode digest".into())));
                }
                children.extend_from_slice(&child.inode.digest);
            }
            let got = crate::storage::compress::digest(digester, &children);
            if got != dir.inode.digest {
                return Ok(Some((nid, "directory digest".into())));
            }
        } else if own(&dir)? != dir.inode.digest {
            return Ok(Some((nid, "inode digest".into())));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    //! Hostile v5 bootstraps: each damage is an error naming the inode or offset, never a
    //! panic or a hang.

    use super::*;
    use crate::builder::bootstrap::v5::tests::{bootstrap_of, sample_bootstrap};
    use crate::builder::tree::tests::Sketch;
    use crate::reader::tests::exercise;

    fn sb(bytes: &[u8]) -> SuperBlock {
        SuperBlock::decode(bytes, bytes.len() as u64).unwrap()
    }

    /// Byte offset of record `index`.
    fn record_at(bytes: &[u8], index: u64) -> usize {
        let sb = sb(bytes);
        tables::inode_offset(
            &bytes[sb.inode_table_offset as usize..],
            sb.inode_table_offset,
            sb.inode_table_entries,
            index,
        )
        .unwrap() as usize
    }

    /// Offset of `field` (a byte offset inside the 128-byte inode) of record `index`.
    fn field(bytes: &[u8], index: u64, field: usize) -> usize {
        record_at(bytes, index) + field
    }

    fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn the_sample_reads_whole() {
        assert_eq!(exercise(sample_bootstrap()).unwrap(), 9);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = sample_bootstrap();
        for len in (0..full.len()).step_by(8).chain([1, 9, full.len() - 1]) {
            let err = exercise(full[..len].to_vec()).expect_err(&format!("{len} bytes"));
            let text = crate::error::Chain(&err).to_string();
            assert!(text.starts_with("bootstrap hostile.boot"), "{len}: {text}");
        }
    }

    #[test]
    fn each_damage_is_named() {
        // Records: 1 /, 2 a, 3 b, 4 c, 5 d, 6 l, 7 a/deep, 8 a/deep/f, 9 b/hl.
        type Damage = fn(&mut Vec<u8>);
        let cases: &[(&str, Damage, &str)] = &[
            (
                "inode table entry in the superblock",
                |b| {
                    let t = sb(b).inode_table_offset as usize;
                    put_u32(b, t + 4, 16);
                },
                "inode 2: record offset 0x80 lies in the superblock",
            ),
            (
                "inode number past the table",
                |b| {
                    let at = field(b, 4, 40);
                    put_u64(b, at, 1000);
                },
                "inode 4: inode number 1000 outside the inode table",
            ),
            (
                "a name serving an inode whose record is another's",
                |b| {
                    let (a, bb) = (field(b, 2, 40), field(b, 3, 40));
                    put_u64(b, a, 3);
                    put_u64(b, bb, 2);
                },
                "inode 3: its record carries inode number 2",
            ),
            (
                "a name making a hard link to a directory",
                |b| {
                    let at = field(b, 4, 40);
                    put_u64(b, at, 5);
                },
                "directory 5 reached a second time at /d",
            ),
            (
                "children past the table",
                |b| {
                    let at = field(b, 2, 92);
                    put_u32(b, at, 9);
                    put_u32(b, at + 4, 5);
                },
                "inode 2: children 9..=13 outside the inode table of 9 entries",
            ),
            (
                "a directory whose children include its parent",
                |b| {
                    // a/deep lists records 2..=2: a itself.
                    let at = field(b, 7, 92);
                    put_u32(b, at, 2);
                },
                "directory cycle at /a/deep/a",
            ),
            (
                "two directories sharing children",
                |b| {
                    // d lists a's children: a/deep is reached twice.
                    let at = field(b, 5, 92);
                    put_u32(b, at, 7);
                    put_u32(b, at + 4, 1);
                },
                "directory 7 reached a second time at /d/deep",
            ),
            (
                "a name with a slash",
                |b| {
                    let at = record_at(b, 4) + 128;
                    b[at] = b'/';
                },
                "contains '/' or NUL",
            ),
            (
                "an empty name",
                |b| {
                    let at = field(b, 4, 100);
                    b[at..at + 2].copy_from_slice(&0u16.to_le_bytes());
                },
                "inode 4: name of 0 bytes",
            ),
            (
                "an unknown file type",
                |b| {
                    let at = field(b, 4, 60);
                    put_u32(b, at, 0o170644);
                },
                "unknown file type in mode 0o170644",
            ),
            (
                "a symlink without a target",
                |b| {
                    let at = field(b, 6, 102);
                    b[at..at + 2].copy_from_slice(&0u16.to_le_bytes());
                },
                "inode 6: symlink without a target",
            ),
            (
                "xattrs larger than the bootstrap",
                |b| {
                    let at = record_at(b, 8) + 128 + 8;
                    put_u64(b, at, 1 << 40);
                },
                "RAFS v5 xattrs needs",
            ),
            (
                "an xattr size whose padding overflows",
                |b| {
                    let at = record_at(b, 8) + 128 + 8;
                    put_u64(b, at, u64::MAX - 7);
                },
                "inode 8: xattr size 18446744073709551608",
            ),
            (
                "more chunks than the file has",
                |b| {
                    let at = field(b, 8, 96);
                    put_u32(b, at, 2);
                },
                "inode 8: 2 chunks (flags 0x4) for 12288 bytes, expected 3",
            ),
            (
                "a hole",
                |b| {
                    let at = field(b, 8, 80);
                    put_u64(b, at, 0x4 | 0x8);
                },
                "flags 0xc",
            ),
            (
                "a chunk at the wrong file offset",
                |b| {
                    // f's chunk infos follow its 128-byte inode, 8 bytes of name and 24 of
                    // xattrs; file_offset is at 64.
                    let at = record_at(b, 8) + 128 + 8 + 24 + 80 + 64;
                    put_u64(b, at, 7);
                },
                "chunk 1 records file offset 7, expected 4096",
            ),
            (
                "a chunk naming a blob past the table",
                |b| {
                    let at = record_at(b, 8) + 128 + 8 + 24 + 32;
                    put_u32(b, at, 3);
                },
                "inode 8: chunk 0 names blob 3 of 1",
            ),
            (
                "a blob id that is not printable",
                |b| {
                    let at = sb(b).blob_table_offset as usize + 8;
                    b[at] = 0x07;
                },
                "is not printable ASCII",
            ),
        ];
        for (name, damage, says) in cases {
            let mut bytes = sample_bootstrap();
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

    #[test]
    fn nesting_stops_at_the_depth_limit() {
        let chain = |depth: usize| {
            let mut s = Sketch::new();
            let mut parent = 0;
            for _ in 0..depth {
                parent = s.dir(parent, "d");
            }
            bootstrap_of(&s.tree)
        };
        assert_eq!(
            exercise(chain(super::super::MAX_DEPTH - 1)).unwrap(),
            super::super::MAX_DEPTH
        );
        let err = exercise(chain(super::super::MAX_DEPTH)).unwrap_err();
        assert!(crate::error::Chain(&err)
            .to_string()
            .contains("nested deeper than 4096"));
    }

    /// A chunk record pointing past its blob's end fails the read, naming the chunk.
    #[test]
    fn chunks_past_the_blob_end_are_errors() {
        let mut bytes = sample_bootstrap();
        let at = record_at(&bytes, 8) + 128 + 8 + 24 + 48; // chunk 0's compressed offset
        put_u64(&mut bytes, at, 1 << 40);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cd".repeat(32)), vec![0u8; 3 * 4096]).unwrap();
        let image = Image::from_bytes(
            "hostile.boot".as_ref(),
            bytes,
            BlobSource::Dir(dir.path().to_path_buf()),
        )
        .unwrap();
        let f = image.resolve(b"/a/deep/f").unwrap().unwrap();
        let err = image.read_all(f).unwrap_err();
        let text = crate::error::Chain(&err).to_string();
        assert!(text.contains("lies past the blob's end"), "{text}");
    }

    /// Every byte of the used superblock and of everything after it, set to a few values:
    /// an error or a readable image, never a panic.
    #[test]
    fn no_single_byte_damage_panics() {
        let base = sample_bootstrap();
        let (mut errors, mut tried) = (0, 0);
        for at in (0..80).chain(8192..base.len()) {
            let was = base[at];
            for value in [0, 0xff, was ^ 0x80, was.wrapping_add(1)] {
                if value == was {
                    continue;
                }
                let mut bytes = base.clone();
                bytes[at] = value;
                match std::panic::catch_unwind(|| exercise(bytes)) {
                    Ok(result) => errors += result.is_err() as usize,
                    Err(_) => panic!("byte {at} set to 0x{value:02x}: panic"),
                }
                tried += 1;
            }
        }
        // Damage is noticed (most bytes are digests, reserved or padding).
        assert!(errors > tried / 10, "{errors} errors in {tried} damages");
    }
}
