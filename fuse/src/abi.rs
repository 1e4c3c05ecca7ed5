//! The kernel's FUSE protocol, as far as a read-only file system needs it: operation
//! codes, INIT flags, and the layouts of the messages we read and write (Linux
//! `include/uapi/linux/fuse.h`, protocol 7.31 and later). Every layout is little-endian
//! on the machines we serve and is written field by field; its size is a constant here,
//! checked by the tests below against the sum of its fields.

/// Protocol major version we speak.
pub const KERNEL_MAJOR: u32 = 7;
/// Newest protocol minor version whose messages we lay out.
pub const KERNEL_MINOR: u32 = 31;
/// Oldest minor version we accept: 7.23 introduced the 64-byte INIT reply we send.
pub const MIN_KERNEL_MINOR: u32 = 23;

/// Inode number of the root directory.
pub const ROOT_ID: u64 = 1;

/// Operation codes.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const READLINK: u32 = 5;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const READDIRPLUS: u32 = 44;
}

/// INIT flags (`fuse_init_in.flags` offered by the kernel, `fuse_init_out.flags` taken).
pub mod init {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
    pub const NO_OPENDIR_SUPPORT: u32 = 1 << 24;
}

/// `FOPEN_KEEP_CACHE`: keep page-cache data across opens.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FOPEN_CACHE_DIR`: let the kernel cache directory listings.
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;

/// `fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding.
pub const IN_HEADER_SIZE: usize = 40;
/// `fuse_out_header`: len, error, unique.
pub const OUT_HEADER_SIZE: usize = 16;
/// `fuse_init_in` up to `flags`: major, minor, max_readahead, flags.
pub const INIT_IN_SIZE: usize = 16;
/// `fuse_init_out` (7.23 and later).
pub const INIT_OUT_SIZE: usize = 64;
/// `fuse_attr`.
pub const ATTR_SIZE: usize = 88;
/// `fuse_entry_out`: nodeid, generation, entry_valid, attr_valid, their nanoseconds, attr.
pub const ENTRY_OUT_SIZE: usize = 40 + ATTR_SIZE;
/// `fuse_read_in`: fh, offset, size, read_flags, lock_owner, flags, padding.
pub const READ_IN_SIZE: usize = 40;
/// `fuse_getxattr_in` (size, padding) and `fuse_getxattr_out` (size, padding).
pub const GETXATTR_IO_SIZE: usize = 8;
/// `fuse_access_in`: mask, padding.
pub const ACCESS_IN_SIZE: usize = 8;
/// `fuse_dirent` before its name: ino, off, namelen, type.
pub const DIRENT_SIZE: usize = 24;

/// Attributes as `fuse_attr` carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileAttr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    /// Seconds and nanoseconds; atime and ctime are sent equal to mtime.
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// Appends little-endian fields to a message.
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }

    /// `fuse_attr`.
    pub fn attr(&mut self, a: &FileAttr) -> &mut Self {
        let t = a.mtime as u64;
        self.u64(a.ino).u64(a.size).u64(a.blocks);
        self.u64(t).u64(t).u64(t);
        self.u32(a.mtime_nsec).u32(a.mtime_nsec).u32(a.mtime_nsec);
        self.u32(a.mode)
            .u32(a.nlink)
            .u32(a.uid)
            .u32(a.gid)
            .u32(a.rdev);
        self.u32(a.blksize).u32(0)
    }

    /// `fuse_entry_out` for `attr`, or a negative entry (node 0) when `attr` is `None`:
    /// both valid for `ttl` seconds.
    pub fn entry(&mut self, attr: Option<&FileAttr>, ttl: u64) -> &mut Self {
        let blank = FileAttr::default();
        let a = attr.unwrap_or(&blank);
        self.u64(a.ino).u64(0).u64(ttl).u64(ttl).u32(0).u32(0);
        self.attr(a)
    }

    /// `fuse_dirent` with its name, padded to 8 bytes.
    pub fn dirent(&mut self, ino: u64, next: u64, kind: u32, name: &[u8]) -> &mut Self {
        self.u64(ino).u64(next).u32(name.len() as u32).u32(kind);
        self.0.extend_from_slice(name);
        self.zeros(dirent_padding(name.len()))
    }
}

/// Bytes a dirent's name is padded with.
pub fn dirent_padding(name_len: usize) -> usize {
    (DIRENT_SIZE + name_len).next_multiple_of(8) - DIRENT_SIZE - name_len
}

/// A request as read from `/dev/fuse`: its header fields and its body.
pub struct Request<'a> {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// Splits a message; `None` when it is shorter than its header says or than a header.
    pub fn parse(msg: &'a [u8]) -> Option<Self> {
        if msg.len() < IN_HEADER_SIZE {
            return None;
        }
        let len = u32_at(msg, 0)? as usize;
        if len < IN_HEADER_SIZE || len > msg.len() {
            return None;
        }
        Some(Request {
            opcode: u32_at(msg, 4)?,
            unique: u64_at(msg, 8)?,
            nodeid: u64_at(msg, 16)?,
            body: &msg[IN_HEADER_SIZE..len],
        })
    }

    /// The body up to its first NUL (a name).
    pub fn name_at(&self, offset: usize) -> Option<&'a [u8]> {
        let rest = self.body.get(offset..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..end])
    }
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_the_kernel_sizes() {
        let mut buf = Vec::new();
        Writer(&mut buf).attr(&FileAttr::default());
        assert_eq!(buf.len(), ATTR_SIZE);
        buf.clear();
        Writer(&mut buf).entry(None, 1);
        assert_eq!(buf.len(), ENTRY_OUT_SIZE);
        assert_eq!(ENTRY_OUT_SIZE, 128);
        for len in 0..20 {
            buf.clear();
            Writer(&mut buf).dirent(1, 2, 3, &vec![b'x'; len]);
            assert_eq!(buf.len() % 8, 0);
            assert_eq!(buf.len(), DIRENT_SIZE + len + dirent_padding(len));
        }
    }

    #[test]
    fn requests_shorter_than_they_claim_are_refused() {
        let mut msg = vec![0u8; IN_HEADER_SIZE + 4];
        msg[..4].copy_from_slice(&(IN_HEADER_SIZE as u32 + 4).to_le_bytes());
        msg[4..8].copy_from_slice(&op::LOOKUP.to_le_bytes());
        msg[IN_HEADER_SIZE..].copy_from_slice(b"ab\0c");
        let req = Request::parse(&msg).expect("whole");
        assert_eq!(req.opcode, op::LOOKUP);
        assert_eq!(req.name_at(0), Some(&b"ab"[..]));
        assert!(Request::parse(&msg[..IN_HEADER_SIZE + 2]).is_none());
        assert!(Request::parse(&msg[..10]).is_none());
    }
}
