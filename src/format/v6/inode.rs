//! EROFS inodes (32-byte compact, 64-byte extended), directory entries, inline xattrs and
//! chunk indexes, as RAFS v6 uses them.

use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::format::FormatError;

/// Inode slots are 32 bytes; a nid counts slots from the metadata start.
pub const SLOT_SIZE: u64 = 32;
/// Extended attributes as (full name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A decoded directory entry: (name, nid, file type code).
pub type RawDirent<'a> = (&'a [u8], u64, u8);

/// Size of a compact inode.
pub const COMPACT_SIZE: usize = 32;
/// Size of an extended inode.
pub const EXTENDED_SIZE: usize = 64;
/// Size of a directory entry.
pub const DIRENT_SIZE: usize = 12;
/// Size of a chunk index.
pub const CHUNK_ADDR_SIZE: usize = 8;
/// Size of the inline xattr body header.
pub const XATTR_HEADER_SIZE: usize = 12;
/// Size of an xattr entry header.
pub const XATTR_ENTRY_SIZE: usize = 4;
/// `i_u` flag of chunk-based inodes: the chunk array holds 8-byte indexes.
pub const CHUNK_FORMAT_INDEXES: u32 = 0x20;

/// 32-byte compact inode (`struct erofs_inode_compact`). It has no mtime.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct InodeCompactRaw {
    /// Bit 0: extended layout; bits 1..3: data layout.
    pub format: U16,
    /// Inline xattr size in 4-byte units (12-byte header counts as 1 unit plus 2).
    pub xattr_icount: U16,
    /// File type and permission bits.
    pub mode: U16,
    /// Link count.
    pub nlink: U16,
    /// Size in bytes.
    pub size: U32,
    /// Zero.
    pub reserved: U32,
    /// raw_blkaddr, rdev, or chunk format, by file type.
    pub u: U32,
    /// Inode number.
    pub ino: U32,
    /// Owner.
    pub uid: U16,
    /// Group.
    pub gid: U16,
    /// Zero.
    pub reserved2: [u8; 4],
}

/// 64-byte extended inode (`struct erofs_inode_extended`).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct InodeExtendedRaw {
    /// Bit 0: extended layout; bits 1..3: data layout.
    pub format: U16,
    /// Inline xattr size in 4-byte units.
    pub xattr_icount: U16,
    /// File type and permission bits.
    pub mode: U16,
    /// Zero.
    pub reserved: U16,
    /// Size in bytes.
    pub size: U64,
    /// raw_blkaddr, rdev, or chunk format, by file type.
    pub u: U32,
    /// Inode number.
    pub ino: U32,
    /// Owner.
    pub uid: U32,
    /// Group.
    pub gid: U32,
    /// Modification time, seconds.
    pub mtime: U64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: U32,
    /// Link count.
    pub nlink: U32,
    /// Zero.
    pub reserved2: [u8; 16],
}

/// Directory entry, 12 bytes (`struct erofs_dirent`). Names follow the entry array.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct DirentRaw {
    /// Target inode.
    pub nid: U64,
    /// Offset of the name inside the directory block.
    pub nameoff: U16,
    /// `FileType`.
    pub file_type: u8,
    /// Zero.
    pub reserved: u8,
}

/// Chunk index, 8 bytes: which blob, which chunk of that blob, and the chunk's
/// uncompressed block address inside the blob.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ChunkAddrRaw {
    /// Low 16 bits of the chunk's index in its blob.
    pub blob_addr_lo: U16,
    /// Low byte: blob index + 1 (device id); high byte: bits 16..24 of the chunk index.
    pub blob_addr_hi: U16,
    /// Uncompressed offset of the chunk in its blob, in blocks.
    pub blk_addr: U32,
}

/// Inline xattr body header, 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct XattrHeaderRaw {
    /// Zero.
    pub reserved: U32,
    /// Shared xattr count: 0 in RAFS.
    pub shared_count: u8,
    /// Zero.
    pub reserved2: [u8; 7],
}

/// Xattr entry header, 4 bytes; the name suffix and value follow, padded to 4.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct XattrEntryRaw {
    /// Length of the name after its prefix.
    pub name_len: u8,
    /// Prefix index (`XATTR_PREFIXES`).
    pub name_index: u8,
    /// Value length.
    pub value_size: U16,
}

const _: () = {
    assert!(size_of::<InodeCompactRaw>() == COMPACT_SIZE);
    assert!(std::mem::offset_of!(InodeCompactRaw, u) == 16);
    assert!(std::mem::offset_of!(InodeCompactRaw, ino) == 20);
    assert!(size_of::<InodeExtendedRaw>() == EXTENDED_SIZE);
    assert!(std::mem::offset_of!(InodeExtendedRaw, size) == 8);
    assert!(std::mem::offset_of!(InodeExtendedRaw, mtime) == 32);
    assert!(std::mem::offset_of!(InodeExtendedRaw, nlink) == 44);
    assert!(size_of::<DirentRaw>() == DIRENT_SIZE);
    assert!(size_of::<ChunkAddrRaw>() == CHUNK_ADDR_SIZE);
    assert!(size_of::<XattrHeaderRaw>() == XATTR_HEADER_SIZE);
    assert!(size_of::<XattrEntryRaw>() == XATTR_ENTRY_SIZE);
};

/// How an inode's data is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataLayout {
    /// Data in whole blocks starting at `raw_blkaddr`.
    FlatPlain,
    /// Whole blocks at `raw_blkaddr`, the tail right after the inode and its xattrs.
    FlatInline,
    /// Regular file data in chunks, addressed by an index array after the inode.
    ChunkBased,
}

impl DataLayout {
    fn code(self) -> u16 {
        match self {
            DataLayout::FlatPlain => 0,
            DataLayout::FlatInline => 2,
            DataLayout::ChunkBased => 4,
        }
    }
}

/// A decoded inode, either form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Written as a 64-byte extended inode.
    pub extended: bool,
    /// Data layout.
    pub layout: DataLayout,
    /// Inline xattr size in 4-byte units (0: none).
    pub xattr_icount: u16,
    /// File type and permission bits.
    pub mode: u16,
    /// Link count.
    pub nlink: u32,
    /// Size in bytes (symlink: target length).
    pub size: u64,
    /// raw_blkaddr, rdev or chunk format.
    pub u: u32,
    /// Inode number.
    pub ino: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds (compact: 0).
    pub mtime: u64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
}

impl Inode {
    /// Size of the on-disk inode.
    pub fn disk_size(&self) -> usize {
        if self.extended {
            EXTENDED_SIZE
        } else {
            COMPACT_SIZE
        }
    }

    /// Bytes of inline xattrs that follow the inode.
    pub fn xattr_size(&self) -> usize {
        xattr_size_from_icount(self.xattr_icount)
    }

    /// Encodes the inode in its own form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let format = (self.extended as u16) | (self.layout.code() << 1);
        if self.extended {
            let raw = InodeExtendedRaw {
                format: format.into(),
                xattr_icount: self.xattr_icount.into(),
                mode: self.mode.into(),
                reserved: 0.into(),
                size: self.size.into(),
                u: self.u.into(),
                ino: self.ino.into(),
                uid: self.uid.into(),
                gid: self.gid.into(),
                mtime: self.mtime.into(),
                mtime_nsec: self.mtime_nsec.into(),
                nlink: self.nlink.into(),
                reserved2: [0; 16],
            };
            out.extend_from_slice(raw.as_bytes());
        } else {
            let raw = InodeCompactRaw {
                format: format.into(),
                xattr_icount: self.xattr_icount.into(),
                mode: self.mode.into(),
                nlink: (self.nlink as u16).into(),
                size: (self.size as u32).into(),
                reserved: 0.into(),
                u: self.u.into(),
                ino: self.ino.into(),
                uid: (self.uid as u16).into(),
                gid: (self.gid as u16).into(),
                reserved2: [0; 4],
            };
            out.extend_from_slice(raw.as_bytes());
        }
    }

    /// Decodes the inode at the start of `bytes`, found at bootstrap byte `offset`.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, FormatError> {
        let short = |need: usize| FormatError::Truncated {
            offset,
            need: need as u64,
            have: bytes.len() as u64,
            what: "inode",
        };
        let format = u16::from_le_bytes([
            *bytes.first().ok_or_else(|| short(2))?,
            *bytes.get(1).ok_or_else(|| short(2))?,
        ]);
        if format & !0x0f != 0 {
            return Err(FormatError::Invalid {
                offset,
                what: format!("inode format 0x{format:x} has unknown bits"),
            });
        }
        let layout = match (format >> 1) & 0x7 {
            0 => DataLayout::FlatPlain,
            2 => DataLayout::FlatInline,
            4 => DataLayout::ChunkBased,
            other => {
                return Err(FormatError::Invalid {
                    offset,
                    what: format!("unsupported data layout {other}"),
                })
            }
        };
        if format & 1 == 1 {
            let (raw, _) = InodeExtendedRaw::read_from_prefix(bytes).map_err(|_| short(64))?;
            Ok(Inode {
                extended: true,
                layout,
                xattr_icount: raw.xattr_icount.get(),
                mode: raw.mode.get(),
                nlink: raw.nlink.get(),
                size: raw.size.get(),
                u: raw.u.get(),
                ino: raw.ino.get(),
                uid: raw.uid.get(),
                gid: raw.gid.get(),
                mtime: raw.mtime.get(),
                mtime_nsec: raw.mtime_nsec.get(),
            })
        } else {
            let (raw, _) = InodeCompactRaw::read_from_prefix(bytes).map_err(|_| short(32))?;
            Ok(Inode {
                extended: false,
                layout,
                xattr_icount: raw.xattr_icount.get(),
                mode: raw.mode.get(),
                nlink: raw.nlink.get() as u32,
                size: raw.size.get() as u64,
                u: raw.u.get(),
                ino: raw.ino.get(),
                uid: raw.uid.get() as u32,
                gid: raw.gid.get() as u32,
                mtime: 0,
                mtime_nsec: 0,
            })
        }
    }
}

/// Bytes of inline xattrs for an `i_xattr_icount`.
pub const fn xattr_size_from_icount(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XATTR_HEADER_SIZE + (icount as usize - 1) * 4
    }
}

/// EROFS directory entry file types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FileType {
    /// Unknown.
    Unknown = 0,
    /// Regular file.
    Regular = 1,
    /// Directory.
    Directory = 2,
    /// Character device.
    CharDevice = 3,
    /// Block device.
    BlockDevice = 4,
    /// FIFO.
    Fifo = 5,
    /// Socket.
    Socket = 6,
    /// Symbolic link.
    Symlink = 7,
}

impl FileType {
    /// The type for a `st_mode`.
    pub fn from_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::Regular,
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFCHR => FileType::CharDevice,
            libc::S_IFBLK => FileType::BlockDevice,
            libc::S_IFIFO => FileType::Fifo,
            libc::S_IFSOCK => FileType::Socket,
            libc::S_IFLNK => FileType::Symlink,
            _ => FileType::Unknown,
        }
    }
}

/// Encodes a directory entry.
pub fn encode_dirent(nid: u64, nameoff: u16, file_type: FileType, out: &mut Vec<u8>) {
    let raw = DirentRaw {
        nid: nid.into(),
        nameoff: nameoff.into(),
        file_type: file_type as u8,
        reserved: 0,
    };
    out.extend_from_slice(raw.as_bytes());
}

/// Decodes the directory entries and names of one directory block (`block` is the valid part
/// of the block, at most 4096 bytes). Returns (name, nid, file type code) in on-disk order.
pub fn decode_dirents(block: &[u8], offset: u64) -> Result<Vec<RawDirent<'_>>, FormatError> {
    let bad = |what: String| FormatError::Invalid { offset, what };
    if block.len() < DIRENT_SIZE {
        return Err(bad(format!(
            "directory block of {} bytes holds no entry",
            block.len()
        )));
    }
    let first = DirentRaw::read_from_prefix(block)
        .expect("length checked")
        .0;
    let names_start = first.nameoff.get() as usize;
    if !names_start.is_multiple_of(DIRENT_SIZE) || names_start == 0 || names_start > block.len() {
        return Err(bad(format!(
            "first name offset {names_start} is not a valid entry table end"
        )));
    }
    let count = names_start / DIRENT_SIZE;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = i * DIRENT_SIZE;
        let raw = DirentRaw::read_from_prefix(&block[at..])
            .expect("inside names_start")
            .0;
        let start = raw.nameoff.get() as usize;
        let end = if i + 1 < count {
            DirentRaw::read_from_prefix(&block[at + DIRENT_SIZE..])
                .expect("inside names_start")
                .0
                .nameoff
                .get() as usize
        } else {
            // The last name runs to the end of the block or to the first NUL.
            let tail = block.get(start..).unwrap_or(&[]);
            start + tail.iter().position(|&b| b == 0).unwrap_or(tail.len())
        };
        if start < names_start || end > block.len() || start >= end {
            return Err(bad(format!(
                "entry {i}: name at {start}..{end} outside the name area {names_start}..{}",
                block.len()
            )));
        }
        out.push((&block[start..end], raw.nid.get(), raw.file_type));
    }
    Ok(out)
}

/// A chunk index: where one chunk of a file lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkAddr {
    /// Index of the blob in the blob table.
    pub blob_index: u8,
    /// Index of the chunk inside its blob (24 bits).
    pub chunk_index: u32,
    /// Uncompressed offset of the chunk in the blob, in blocks.
    pub block_addr: u32,
}

impl ChunkAddr {
    /// Which blob of the blob table holds the chunk.
    pub fn blob(&self) -> super::BlobIndex {
        super::BlobIndex(u32::from(self.blob_index))
    }

    /// Which chunk of that blob it is.
    pub fn chunk(&self) -> super::ChunkIndex {
        super::ChunkIndex(self.chunk_index)
    }

    /// Encodes the index.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let hi = ((self.chunk_index >> 8) as u16 & 0xff00) | (self.blob_index as u16 + 1);
        let raw = ChunkAddrRaw {
            blob_addr_lo: (self.chunk_index as u16).into(),
            blob_addr_hi: hi.into(),
            blk_addr: self.block_addr.into(),
        };
        out.extend_from_slice(raw.as_bytes());
    }

    /// Decodes an index; `None` when the device id is 0, which marks a hole.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Option<Self>, FormatError> {
        let raw = ChunkAddrRaw::read_from_prefix(bytes)
            .map_err(|_| FormatError::Truncated {
                offset,
                need: 8,
                have: bytes.len() as u64,
                what: "chunk index",
            })?
            .0;
        let hi = raw.blob_addr_hi.get();
        let device = hi & 0xff;
        if device == 0 {
            return Ok(None);
        }
        Ok(Some(ChunkAddr {
            blob_index: (device - 1) as u8,
            chunk_index: ((hi as u32 >> 8) << 16) | raw.blob_addr_lo.get() as u32,
            block_addr: raw.blk_addr.get(),
        }))
    }
}

/// Xattr name prefixes EROFS can index, with their index. Names must start with one.
pub const XATTR_PREFIXES: [(&[u8], u8); 5] = [
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
];

/// Longest name suffix an xattr entry holds (after its prefix): `name_len` is a byte.
pub const XATTR_NAME_MAX: usize = u8::MAX as usize;
/// Longest value an xattr entry holds: `value_size` is 16 bits.
pub const XATTR_VALUE_MAX: usize = u16::MAX as usize;
/// Largest inline xattr area of one inode, header included: what the 16-bit
/// `i_xattr_icount` can count.
pub const XATTR_AREA_MAX: usize = xattr_size_from_icount(u16::MAX);

/// Why an inode's xattrs cannot be stored inline in RAFS v6.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum XattrError {
    /// The name starts with none of [`XATTR_PREFIXES`].
    #[error("xattr {} is outside the namespaces RAFS v6 can store (user., trusted., security., system.posix_acl_access and _default)", shown_name(name))]
    Namespace {
        /// The xattr's name.
        name: Vec<u8>,
    },
    /// The name is too long once its prefix is taken off.
    #[error("xattr {}: its name is {found} bytes after the {:?} prefix; RAFS v6 stores at most {XATTR_NAME_MAX}", shown_name(name), String::from_utf8_lossy(prefix))]
    NameTooLong {
        /// The xattr's name.
        name: Vec<u8>,
        /// The prefix RAFS v6 stores as an index.
        prefix: &'static [u8],
        /// Bytes after it.
        found: usize,
    },
    /// The value is too long.
    #[error(
        "xattr {}: its value is {found} bytes; RAFS v6 stores at most {XATTR_VALUE_MAX}",
        shown_name(name)
    )]
    ValueTooLong {
        /// The xattr's name.
        name: Vec<u8>,
        /// The value's length.
        found: usize,
    },
    /// All of an inode's xattrs together do not fit its inline area.
    #[error("{count} xattrs take {found} bytes inline; one RAFS v6 inode holds at most {XATTR_AREA_MAX}")]
    AreaTooLarge {
        /// How many xattrs the inode has.
        count: usize,
        /// Bytes their inline area would take, header included.
        found: usize,
    },
}

/// An xattr name quoted for a message, shortened if long (a TOC can give any length).
fn shown_name(name: &[u8]) -> String {
    const SHOWN: usize = 300;
    match name.get(..SHOWN) {
        Some(start) if name.len() > SHOWN => format!(
            "{:?}... ({} bytes)",
            String::from_utf8_lossy(start),
            name.len()
        ),
        _ => format!("{:?}", String::from_utf8_lossy(name)),
    }
}

/// One xattr checked to fit an entry of the inline area: the entry header's fields, and
/// the name suffix stored after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XattrFit<'n> {
    /// Index of the name's prefix in [`XATTR_PREFIXES`].
    pub name_index: u8,
    /// The name after its prefix.
    pub suffix: &'n [u8],
    /// The suffix's length.
    pub name_len: u8,
    /// The value's length.
    pub value_size: u16,
}

/// Checks that one xattr fits an entry of the inline area: a known namespace, a name
/// suffix of at most [`XATTR_NAME_MAX`] bytes and a value of at most [`XATTR_VALUE_MAX`].
pub fn xattr_entry<'n>(name: &'n [u8], value: &[u8]) -> Result<XattrFit<'n>, XattrError> {
    let (name_index, suffix) = xattr_split(name).ok_or_else(|| XattrError::Namespace {
        name: name.to_vec(),
    })?;
    let name_len = u8::try_from(suffix.len()).map_err(|_| XattrError::NameTooLong {
        name: name.to_vec(),
        prefix: XATTR_PREFIXES
            .iter()
            .find(|(_, i)| *i == name_index)
            .map_or(&b""[..], |(p, _)| p),
        found: suffix.len(),
    })?;
    let value_size = u16::try_from(value.len()).map_err(|_| XattrError::ValueTooLong {
        name: name.to_vec(),
        found: value.len(),
    })?;
    Ok(XattrFit {
        name_index,
        suffix,
        name_len,
        value_size,
    })
}

/// Splits an xattr name into (prefix index, suffix), or `None` if EROFS cannot store it.
pub fn xattr_split(name: &[u8]) -> Option<(u8, &[u8])> {
    XATTR_PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(p, i)| (*i, &name[p.len()..]))
        .filter(|(i, s)| (*i == 2 || *i == 3) == s.is_empty())
}

/// Size in bytes of the inline xattr area for these pairs (0 when empty), after
/// checking that each pair fits an entry ([`xattr_entry`]) and that all of them fit one
/// inode ([`XATTR_AREA_MAX`]).
pub fn xattr_area_size(pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<usize, XattrError> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let mut size = XATTR_HEADER_SIZE;
    for (name, value) in pairs {
        let fit = xattr_entry(name, value)?;
        // At most 4 + 255 + 65535 per entry: no overflow before the check below.
        size += (XATTR_ENTRY_SIZE + fit.suffix.len() + value.len()).next_multiple_of(4);
        if size > XATTR_AREA_MAX {
            return Err(XattrError::AreaTooLarge {
                count: pairs.len(),
                found: xattr_area_size_unchecked(pairs),
            });
        }
    }
    Ok(size)
}

/// The inline area's size without the checks, for the message of the one that failed.
fn xattr_area_size_unchecked(pairs: &[(Vec<u8>, Vec<u8>)]) -> usize {
    pairs.iter().fold(XATTR_HEADER_SIZE, |size, (name, value)| {
        let suffix = xattr_split(name).map_or(name.len(), |(_, s)| s.len());
        size.saturating_add(
            XATTR_ENTRY_SIZE
                .saturating_add(suffix)
                .saturating_add(value.len())
                .next_multiple_of(4),
        )
    })
}

/// `i_xattr_icount` for an inline xattr area of `size` bytes (a size
/// [`xattr_area_size`] gave), or `None` if the count field cannot say it.
pub fn xattr_icount(size: usize) -> Option<u16> {
    if size == 0 {
        return Some(0);
    }
    let units = size.checked_sub(XATTR_HEADER_SIZE)? / 4 + 1;
    u16::try_from(units).ok()
}

/// Encodes the inline xattr area, refusing what does not fit it (as
/// [`xattr_area_size`] does) rather than cutting a length short.
pub fn encode_xattrs(pairs: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) -> Result<(), XattrError> {
    let size = xattr_area_size(pairs)?;
    if size == 0 {
        return Ok(());
    }
    out.reserve(size);
    out.extend_from_slice(&[0u8; XATTR_HEADER_SIZE]);
    for (name, value) in pairs {
        let fit = xattr_entry(name, value)?;
        let raw = XattrEntryRaw {
            name_len: fit.name_len,
            name_index: fit.name_index,
            value_size: fit.value_size.into(),
        };
        let start = out.len();
        out.extend_from_slice(raw.as_bytes());
        out.extend_from_slice(fit.suffix);
        out.extend_from_slice(value);
        let padded = (out.len() - start).next_multiple_of(4);
        out.resize(start + padded, 0);
    }
    Ok(())
}

/// Decodes an inline xattr area (`bytes` is exactly the area) found at `offset`.
pub fn decode_xattrs(bytes: &[u8], offset: u64) -> Result<Xattrs, FormatError> {
    let bad = |at: usize, what: String| FormatError::Invalid {
        offset: offset + at as u64,
        what,
    };
    if bytes.len() < XATTR_HEADER_SIZE {
        return Err(bad(0, "xattr area shorter than its header".into()));
    }
    let header = XattrHeaderRaw::read_from_prefix(bytes)
        .expect("length checked")
        .0;
    if header.shared_count != 0 {
        return Err(bad(4, "shared xattrs are not supported by RAFS".into()));
    }
    let mut pos = XATTR_HEADER_SIZE;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let Ok((raw, _)) = XattrEntryRaw::read_from_prefix(&bytes[pos..]) else {
            return Err(bad(pos, "truncated xattr entry".into()));
        };
        let prefix = XATTR_PREFIXES
            .iter()
            .find(|(_, i)| *i == raw.name_index)
            .map(|(p, _)| *p)
            .ok_or_else(|| bad(pos, format!("unknown xattr name index {}", raw.name_index)))?;
        let name_start = pos + XATTR_ENTRY_SIZE;
        let value_start = name_start + raw.name_len as usize;
        let end = value_start + raw.value_size.get() as usize;
        if end > bytes.len() {
            return Err(bad(pos, "xattr entry runs past the inline area".into()));
        }
        let mut name = prefix.to_vec();
        name.extend_from_slice(&bytes[name_start..value_start]);
        out.push((name, bytes[value_start..end].to_vec()));
        pos += (end - pos).next_multiple_of(4);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trips_both_forms() {
        for extended in [false, true] {
            let inode = Inode {
                extended,
                layout: DataLayout::ChunkBased,
                xattr_icount: 5,
                mode: 0o100644,
                nlink: 3,
                size: 12345,
                u: CHUNK_FORMAT_INDEXES | 8,
                ino: 77,
                uid: 1000,
                gid: 100,
                mtime: if extended { 1 << 33 } else { 0 },
                mtime_nsec: if extended { 999_999_999 } else { 0 },
            };
            let mut buf = Vec::new();
            inode.encode(&mut buf);
            assert_eq!(buf.len(), inode.disk_size());
            assert_eq!(Inode::decode(&buf, 0).unwrap(), inode);
        }
    }

    #[test]
    fn chunk_addr_round_trips_24_bit_index() {
        let addr = ChunkAddr {
            blob_index: 254,
            chunk_index: 0x00ab_cdef,
            block_addr: 0xdead_beef,
        };
        let mut buf = Vec::new();
        addr.encode(&mut buf);
        assert_eq!(ChunkAddr::decode(&buf, 0).unwrap(), Some(addr));
        assert_eq!(ChunkAddr::decode(&[0u8; 8], 0).unwrap(), None);
    }

    #[test]
    fn xattrs_round_trip_every_namespace() {
        let pairs = vec![
            (b"user.a".to_vec(), b"1".to_vec()),
            (b"trusted.overlay.opaque".to_vec(), b"y".to_vec()),
            (b"security.selinux".to_vec(), vec![0u8; 300]),
            (b"system.posix_acl_access".to_vec(), vec![2u8; 28]),
            (b"system.posix_acl_default".to_vec(), vec![3u8; 44]),
        ];
        let mut buf = Vec::new();
        encode_xattrs(&pairs, &mut buf).unwrap();
        assert_eq!(buf.len(), xattr_area_size(&pairs).unwrap());
        assert_eq!(
            xattr_size_from_icount(xattr_icount(buf.len()).unwrap()),
            buf.len()
        );
        assert_eq!(decode_xattrs(&buf, 0).unwrap(), pairs);
    }

    /// A name suffix longer than the byte `name_len` holds (an eStargz TOC can carry
    /// one: 261 to 279 bytes passed the builder's old check), a value longer than 16
    /// bits, or more xattrs than the 16-bit `i_xattr_icount` counts, are refused: they
    /// were cut short with `as`, which wrote a corrupt bootstrap. Up to the limits, they
    /// round-trip.
    #[test]
    fn xattrs_that_do_not_fit_are_refused_not_cut_short() {
        let pair = |name: Vec<u8>, len: usize| (name, vec![b'v'; len]);
        let named = |prefix: &str, len: usize| {
            let mut n = prefix.as_bytes().to_vec();
            n.resize(prefix.len() + len, b'n');
            n
        };
        let many = |last: usize| -> Xattrs {
            (0..4)
                .map(|i| {
                    pair(
                        format!("user.k{i}").into_bytes(),
                        if i < 3 { 65535 } else { last },
                    )
                })
                .collect()
        };
        // Exactly the largest area: 12 + 3 * 65544 + 65504 bytes.
        let fits: Vec<Xattrs> = vec![
            vec![pair(named("user.", 255), 1)],
            vec![pair(named("trusted.", 255), 0)],
            vec![pair(b"user.v".to_vec(), 65535)],
            many(65498),
        ];
        for pairs in fits {
            let mut buf = Vec::new();
            encode_xattrs(&pairs, &mut buf).unwrap();
            assert_eq!(buf.len(), xattr_area_size(&pairs).unwrap());
            let icount = xattr_icount(buf.len()).unwrap();
            assert_eq!(xattr_size_from_icount(icount), buf.len());
            assert_eq!(decode_xattrs(&buf, 0).unwrap(), pairs);
        }
        assert_eq!(xattr_icount(XATTR_AREA_MAX), Some(u16::MAX));
        assert_eq!(xattr_icount(XATTR_AREA_MAX + 4), None);

        let refused: Vec<(Xattrs, XattrError)> = vec![
            (
                vec![pair(named("user.", 256), 1)],
                XattrError::NameTooLong {
                    name: named("user.", 256),
                    prefix: b"user.",
                    found: 256,
                },
            ),
            (
                vec![pair(named("trusted.", 271), 1)],
                XattrError::NameTooLong {
                    name: named("trusted.", 271),
                    prefix: b"trusted.",
                    found: 271,
                },
            ),
            (
                vec![pair(b"user.v".to_vec(), 65536)],
                XattrError::ValueTooLong {
                    name: b"user.v".to_vec(),
                    found: 65536,
                },
            ),
            (
                many(65499),
                XattrError::AreaTooLarge {
                    count: 4,
                    found: XATTR_AREA_MAX + 4,
                },
            ),
            (
                vec![pair(b"system.nfs4_acl".to_vec(), 1)],
                XattrError::Namespace {
                    name: b"system.nfs4_acl".to_vec(),
                },
            ),
        ];
        for (pairs, want) in refused {
            assert_eq!(xattr_area_size(&pairs).as_ref(), Err(&want));
            let mut buf = vec![7];
            assert_eq!(encode_xattrs(&pairs, &mut buf), Err(want));
            assert_eq!(buf, [7], "nothing written");
        }
    }

    #[test]
    fn xattr_names_outside_erofs_prefixes_are_refused() {
        assert_eq!(xattr_split(b"system.nfs4_acl"), None);
        assert_eq!(xattr_split(b"system.posix_acl_accessX"), None);
        assert_eq!(xattr_split(b"user.x"), Some((1, &b"x"[..])));
    }

    #[test]
    fn dirents_decode_with_names() {
        let mut buf = Vec::new();
        encode_dirent(10, 36, FileType::Directory, &mut buf);
        encode_dirent(0, 37, FileType::Directory, &mut buf);
        encode_dirent(99, 39, FileType::Regular, &mut buf);
        buf.extend_from_slice(b"...abc");
        let got = decode_dirents(&buf, 0).unwrap();
        assert_eq!(got[0], (&b"."[..], 10, 2));
        assert_eq!(got[1], (&b".."[..], 0, 2));
        assert_eq!(got[2], (&b"abc"[..], 99, 1));
    }
}
