//! A RAFS v5 inode record: the 128-byte inode, then its name and symlink target (each
//! padded to 8 bytes), then its xattrs (when flagged), then a regular file's chunk infos.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{align, ChunkInfo, CHUNK_INFO_SIZE};
use crate::format::FormatError;

/// Size of the fixed part of a record.
pub const INODE_SIZE: u64 = 128;

/// `i_flags` bits (upstream `RafsV5InodeFlags`).
pub mod flags {
    /// A symlink (set with the target size).
    pub const SYMLINK: u64 = 0x1;
    /// A hard link (written by upstream's tar and eStargz builders only).
    pub const HARDLINK: u64 = 0x2;
    /// Xattrs follow the name and symlink.
    pub const XATTR: u64 = 0x4;
    /// The chunk list has holes: chunks are placed by their file offsets.
    pub const HAS_HOLE: u64 = 0x8;
}

/// Inode, 128 bytes (upstream `RafsV5Inode`).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct InodeRaw {
    /// Inode digest: of the chunk digests (regular file), of the children's inode digests
    /// in order (directory), of the target (symlink), of nothing (others).
    pub digest: [u8; 32],
    /// Inode number of the parent directory (0 for the root).
    pub parent: U64,
    /// Inode number: the inode-table index of the inode's first record.
    pub ino: U64,
    /// Owner.
    pub uid: U32,
    /// Group.
    pub gid: U32,
    /// Project id (0).
    pub projid: U32,
    /// Type and permissions.
    pub mode: U32,
    /// Size in bytes (directories: a made-up size, see the builder).
    pub size: U64,
    /// 512-byte blocks.
    pub blocks: U64,
    /// [`flags`].
    pub flags: U64,
    /// Link count.
    pub nlink: U32,
    /// Directory: inode-table index of the first child.
    pub child_index: U32,
    /// Directory: children; regular file: chunks.
    pub child_count: U32,
    /// Bytes of the name.
    pub name_size: U16,
    /// Bytes of the symlink target.
    pub symlink_size: U16,
    /// Device number of device nodes.
    pub rdev: U32,
    /// Modification time, nanoseconds.
    pub mtime_nsec: U32,
    /// Modification time, seconds.
    pub mtime: U64,
    /// Zero.
    pub reserved: [u8; 8],
}

const _: () = {
    assert!(size_of::<InodeRaw>() == INODE_SIZE as usize);
    assert!(std::mem::offset_of!(InodeRaw, parent) == 32);
    assert!(std::mem::offset_of!(InodeRaw, mode) == 60);
    assert!(std::mem::offset_of!(InodeRaw, flags) == 80);
    assert!(std::mem::offset_of!(InodeRaw, child_index) == 92);
    assert!(std::mem::offset_of!(InodeRaw, name_size) == 100);
    assert!(std::mem::offset_of!(InodeRaw, rdev) == 104);
    assert!(std::mem::offset_of!(InodeRaw, mtime) == 112);
};

/// The decoded fixed part of a record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inode {
    /// Inode digest.
    pub digest: [u8; 32],
    /// Parent's inode number.
    pub parent: u64,
    /// Inode number.
    pub ino: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Type and permissions.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// [`flags`] bits.
    pub flags: u64,
    /// Link count.
    pub nlink: u32,
    /// First child's table index.
    pub child_index: u32,
    /// Children or chunks.
    pub child_count: u32,
    /// Name bytes.
    pub name_size: u16,
    /// Symlink target bytes.
    pub symlink_size: u16,
    /// Device number.
    pub rdev: u32,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
}

impl Inode {
    /// Bytes of the inode with its padded name and symlink target.
    pub fn head_size(&self) -> u64 {
        INODE_SIZE + align(self.name_size as u64) + align(self.symlink_size as u64)
    }

    /// The file type bits of the mode.
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// Encodes the inode followed by `name` and `symlink` (each padded to 8 bytes); the
    /// sizes recorded are those of the slices.
    pub fn encode(&self, name: &[u8], symlink: &[u8], out: &mut Vec<u8>) {
        let raw = InodeRaw {
            digest: self.digest,
            parent: self.parent.into(),
            ino: self.ino.into(),
            uid: self.uid.into(),
            gid: self.gid.into(),
            projid: 0.into(),
            mode: self.mode.into(),
            size: self.size.into(),
            blocks: self.blocks.into(),
            flags: self.flags.into(),
            nlink: self.nlink.into(),
            child_index: self.child_index.into(),
            child_count: self.child_count.into(),
            name_size: (name.len() as u16).into(),
            symlink_size: (symlink.len() as u16).into(),
            rdev: self.rdev.into(),
            mtime_nsec: self.mtime_nsec.into(),
            mtime: self.mtime.into(),
            reserved: [0; 8],
        };
        out.extend_from_slice(raw.as_bytes());
        for part in [name, symlink] {
            out.extend_from_slice(part);
            out.resize(
                out.len() + (align(part.len() as u64) as usize - part.len()),
                0,
            );
        }
    }

    /// Decodes the inode at the start of `bytes`, found at bootstrap offset `offset`.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, FormatError> {
        let raw = bytes
            .get(..INODE_SIZE as usize)
            .and_then(|b| InodeRaw::read_from_bytes(b).ok())
            .ok_or(FormatError::Truncated {
                offset,
                need: INODE_SIZE,
                have: bytes.len() as u64,
                what: "RAFS v5 inode",
            })?;
        Ok(Inode {
            digest: raw.digest,
            parent: raw.parent.get(),
            ino: raw.ino.get(),
            uid: raw.uid.get(),
            gid: raw.gid.get(),
            mode: raw.mode.get(),
            size: raw.size.get(),
            blocks: raw.blocks.get(),
            flags: raw.flags.get(),
            nlink: raw.nlink.get(),
            child_index: raw.child_index.get(),
            child_count: raw.child_count.get(),
            name_size: raw.name_size.get(),
            symlink_size: raw.symlink_size.get(),
            rdev: raw.rdev.get(),
            mtime: raw.mtime.get(),
            mtime_nsec: raw.mtime_nsec.get(),
        })
    }
}

/// Xattr pairs in stored order.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Bytes the xattr area takes: a u64 size, then per pair a u32 size, the name, a NUL and
/// the value, padded to 8. No pairs take no bytes (and the inode has no xattr flag).
pub fn xattr_area_size(pairs: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    if pairs.is_empty() {
        return 0;
    }
    8 + align(xattr_payload_size(pairs))
}

/// Bytes of the pairs after the u64 size (what the size field records).
fn xattr_payload_size(pairs: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    pairs
        .iter()
        .map(|(k, v)| 4 + k.len() as u64 + 1 + v.len() as u64)
        .sum()
}

/// Appends the xattr area of `pairs` (nothing when there are none).
pub fn encode_xattrs(pairs: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) {
    if pairs.is_empty() {
        return;
    }
    let start = out.len();
    out.extend_from_slice(&xattr_payload_size(pairs).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&((k.len() + 1 + v.len()) as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
    }
    let end = start + xattr_area_size(pairs) as usize;
    out.resize(end, 0);
}

/// Decodes an xattr area at the start of `bytes` (found at `offset`): the pairs and the
/// bytes the area takes, padding included.
pub fn decode_xattrs(bytes: &[u8], offset: u64) -> Result<(Xattrs, u64), FormatError> {
    let truncated = |at: u64, need: u64, have: usize| FormatError::Truncated {
        offset: offset + at,
        need,
        have: have as u64,
        what: "RAFS v5 xattrs",
    };
    let size = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| truncated(0, 8, bytes.len()))?;
    let body = bytes
        .get(8..)
        .and_then(|b| b.get(..usize::try_from(size).ok()?))
        .ok_or_else(|| truncated(8, size, bytes.len().saturating_sub(8)))?;
    let mut pairs = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let pair_at = offset + 8 + at as u64;
        let len = body
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| truncated(8 + at as u64, 4, body.len() - at))?;
        let pair = body
            .get(at + 4..)
            .and_then(|b| b.get(..len))
            .ok_or_else(|| truncated(8 + at as u64 + 4, len as u64, body.len() - at - 4))?;
        let nul = pair
            .iter()
            .position(|&b| b == 0)
            .filter(|&n| n > 0)
            .ok_or_else(|| FormatError::Invalid {
                offset: pair_at,
                what: "xattr pair without a name ended by NUL".into(),
            })?;
        pairs.push((pair[..nul].to_vec(), pair[nul + 1..].to_vec()));
        at += 4 + len;
    }
    Ok((pairs, 8 + align(size)))
}

/// Appends a regular file's chunk infos.
pub fn encode_chunks(chunks: &[ChunkInfo], out: &mut Vec<u8>) {
    for c in chunks {
        c.encode(out);
    }
}

/// Bytes of `count` chunk infos.
pub fn chunks_size(count: u32) -> u64 {
    count as u64 * CHUNK_INFO_SIZE as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trips_with_its_tails() {
        let inode = Inode {
            digest: [3; 32],
            parent: 1,
            ino: 7,
            uid: 1000,
            gid: 100,
            mode: libc::S_IFLNK | 0o777,
            size: 3,
            blocks: 1,
            flags: flags::SYMLINK,
            nlink: 1,
            child_index: 0,
            child_count: 0,
            name_size: 5,
            symlink_size: 3,
            rdev: 0,
            mtime: 1 << 33,
            mtime_nsec: 999,
        };
        let mut out = Vec::new();
        inode.encode(b"hello", b"d/a", &mut out);
        assert_eq!(out.len() as u64, inode.head_size());
        assert_eq!(out.len(), 128 + 8 + 8);
        assert_eq!(Inode::decode(&out, 0).unwrap(), inode);
        assert_eq!(&out[128..133], b"hello");
        assert_eq!(&out[136..139], b"d/a");
        assert!(Inode::decode(&out[..127], 0).is_err());
    }

    #[test]
    fn xattrs_round_trip() {
        let pairs = vec![
            (b"user.a".to_vec(), b"".to_vec()),
            (b"trusted.b".to_vec(), vec![0, 1, 2]),
        ];
        let mut out = Vec::new();
        encode_xattrs(&pairs, &mut out);
        assert_eq!(out.len() as u64, xattr_area_size(&pairs));
        assert_eq!(out.len() % 8, 0);
        assert_eq!(decode_xattrs(&out, 0).unwrap(), (pairs, out.len() as u64));
    }

    #[test]
    fn bad_xattrs_are_errors() {
        let pairs = vec![(b"user.a".to_vec(), b"v".to_vec())];
        let mut good = Vec::new();
        encode_xattrs(&pairs, &mut good);
        for cut in 0..good.len() {
            let _ = decode_xattrs(&good[..cut], 0);
        }
        let mut big = good.clone();
        big[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_xattrs(&big, 0).is_err());
        let mut pair = good.clone();
        pair[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert!(decode_xattrs(&pair, 0).is_err());
        let mut nameless = good;
        nameless[12] = 0;
        assert!(decode_xattrs(&nameless, 0)
            .unwrap_err()
            .to_string()
            .contains("without a name"));
    }
}
