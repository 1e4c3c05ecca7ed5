//! Serving FUSE requests: the INIT handshake, then several threads that each wait for
//! requests, answer them completely (blob reads included) and wait again.
//!
//! Every thread waits in its own epoll instance on the `/dev/fuse` descriptor, which is
//! non-blocking, so each request wakes all of them and the first to run takes it. That
//! is usually a thread on the CPU of the process that asked, which has just gone to
//! sleep: the request and its answer then cost no cross-CPU wake-ups. A blocking read
//! instead wakes one thread, on whichever CPU was idle, and the asking process is woken
//! back on its own CPU: two cross-CPU wake-ups per request (halved read throughput on a
//! cold `tar` of the Linux tree on a 2-vCPU machine, where a halted vCPU takes tens of
//! microseconds to wake).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::abi::{self, op, FileAttr, Request, Writer};
use crate::{Attr, Bytes, Entry, ReadOnlyFs};

/// How long the kernel may cache attributes and entries, in seconds: the image never
/// changes.
const TTL: u64 = 3600;
/// Largest write we accept (the smallest the kernel allows): the mount is read-only.
const MAX_WRITE: u32 = 4096;
/// Receive buffer of each thread: the kernel wants room for a maximal write and at
/// least 8 KiB; our requests are a header, a name or a few numbers.
const BUFFER_SIZE: usize = 16 << 10;
/// Largest read we ask the kernel to send (and readahead we allow): 1 MiB.
const MAX_READ: u32 = 1 << 20;
/// Listings kept by inode when the kernel does not open directories through us.
const RECENT_DIRS: usize = 64;

/// The file system side of a mount: turns requests into calls of a [`ReadOnlyFs`].
pub(crate) struct Server<F: ReadOnlyFs> {
    fs: Arc<F>,
    /// The kernel opens directories without asking us (`FUSE_NO_OPENDIR_SUPPORT`): half
    /// the requests of a tree walk. Listings are then kept by inode, a few at a time.
    no_opendir: AtomicBool,
    /// Listings of directories opened through OPENDIR, by handle.
    dirs: Mutex<HashMap<u64, Arc<Vec<Entry>>>>,
    next_fh: AtomicU64,
    recent_dirs: Mutex<HashMap<u64, Arc<Vec<Entry>>>>,
}

/// What a request is answered with.
enum Answer {
    /// Nothing (FORGET).
    Nothing,
    /// An error number.
    Error(i32),
    /// The body built in the thread's output buffer.
    Built,
    /// File data.
    Data(Bytes),
}

impl<F: ReadOnlyFs> Server<F> {
    pub(crate) fn new(fs: Arc<F>) -> Self {
        Server {
            fs,
            no_opendir: AtomicBool::new(false),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(0),
            recent_dirs: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the kernel's INIT from `fd` (blocking) and answers it.
    pub(crate) fn handshake(&self, fd: &OwnedFd) -> std::io::Result<()> {
        let mut buf = vec![0u8; BUFFER_SIZE];
        loop {
            let n = read(fd, &mut buf)?;
            let Some(req) = Request::parse(&buf[..n]) else {
                return Err(std::io::Error::other("short FUSE message before INIT"));
            };
            if req.opcode != op::INIT {
                return Err(std::io::Error::other(format!(
                    "FUSE request {} before INIT",
                    req.opcode
                )));
            }
            if req.body.len() < abi::INIT_IN_SIZE {
                return Err(std::io::Error::other("short FUSE INIT"));
            }
            let field = |i: usize| abi::u32_at(req.body, i * 4).unwrap_or(0);
            let (major, minor, readahead, offered) = (field(0), field(1), field(2), field(3));
            let mut out = Vec::with_capacity(abi::OUT_HEADER_SIZE + abi::INIT_OUT_SIZE);
            out.resize(abi::OUT_HEADER_SIZE, 0);
            if major > abi::KERNEL_MAJOR {
                // The kernel asks again with our major version.
                Writer(&mut out)
                    .u32(abi::KERNEL_MAJOR)
                    .u32(abi::KERNEL_MINOR)
                    .zeros(abi::INIT_OUT_SIZE - 8);
                reply(fd, req.unique, 0, &mut out, &[]);
                continue;
            }
            if major < abi::KERNEL_MAJOR || minor < abi::MIN_KERNEL_MINOR {
                reply(fd, req.unique, libc::EPROTO, &mut out, &[]);
                return Err(std::io::Error::other(format!(
                    "the kernel speaks FUSE {major}.{minor}; 7.{} or later is needed",
                    abi::MIN_KERNEL_MINOR
                )));
            }
            let wanted = abi::init::ASYNC_READ
                | abi::init::DO_READDIRPLUS
                | abi::init::PARALLEL_DIROPS
                | abi::init::MAX_PAGES
                | abi::init::CACHE_SYMLINKS;
            self.no_opendir.store(
                offered & abi::init::NO_OPENDIR_SUPPORT != 0,
                Ordering::Relaxed,
            );
            let page = 4096;
            let max_background = 64u16;
            Writer(&mut out)
                .u32(abi::KERNEL_MAJOR)
                .u32(minor.min(abi::KERNEL_MINOR))
                .u32(readahead.min(MAX_READ))
                .u32(offered & wanted)
                .u16(max_background)
                .u16(max_background * 3 / 4)
                .u32(MAX_WRITE)
                .u32(1) // time granularity: nanoseconds
                .u16((MAX_READ / page) as u16)
                .u16(0) // map_alignment
                .u32(0) // flags2
                .zeros(4 + 6 * 4);
            reply(fd, req.unique, 0, &mut out, &[]);
            return Ok(());
        }
    }

    /// One serving thread: waits for requests on `fd` (non-blocking) and answers them,
    /// until the file system is unmounted.
    pub(crate) fn serve(&self, fd: OwnedFd) -> std::io::Result<()> {
        let epoll = Epoll::watching(&fd)?;
        let mut buf = vec![0u8; BUFFER_SIZE];
        let mut out = Vec::with_capacity(4096);
        loop {
            let n = match read(&fd, &mut buf) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        epoll.wait()?;
                        continue;
                    }
                    // Interrupted, or a request the kernel withdrew: take the next.
                    Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                    // Unmounted.
                    Some(libc::ENODEV) => return Ok(()),
                    _ => return Err(e),
                },
            };
            let Some(req) = Request::parse(&buf[..n]) else {
                log::error!("malformed FUSE message of {n} bytes: stopping");
                return Err(std::io::Error::other("malformed FUSE message"));
            };
            out.clear();
            out.resize(abi::OUT_HEADER_SIZE, 0);
            match self.answer(&req, &mut out) {
                Answer::Nothing => {}
                Answer::Error(e) => {
                    out.truncate(abi::OUT_HEADER_SIZE);
                    reply(&fd, req.unique, e, &mut out, &[]);
                }
                Answer::Built => reply(&fd, req.unique, 0, &mut out, &[]),
                Answer::Data(data) => reply(&fd, req.unique, 0, &mut out, data.as_slice()),
            }
        }
    }

    fn answer(&self, req: &Request<'_>, out: &mut Vec<u8>) -> Answer {
        let ino = req.nodeid;
        let body = req.body;
        let u32_at = |at| abi::u32_at(body, at);
        let u64_at = |at| abi::u64_at(body, at);
        let result = match req.opcode {
            op::LOOKUP => match req.name_at(0) {
                None => Err(libc::EINVAL),
                Some(name) => match self.fs.lookup(self.id_of(ino), name) {
                    Ok(a) => {
                        Writer(out).entry(Some(&self.file_attr(&a)), TTL);
                        Ok(())
                    }
                    // A negative entry: the kernel remembers the name is absent.
                    Err(libc::ENOENT) => {
                        Writer(out).entry(None, TTL);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            },
            op::FORGET | op::BATCH_FORGET => return Answer::Nothing,
            op::GETATTR => self.fs.getattr(self.id_of(ino)).map(|a| {
                Writer(out).u64(TTL).u32(0).u32(0).attr(&self.file_attr(&a));
            }),
            op::READLINK => self
                .fs
                .readlink(self.id_of(ino))
                .map(|t| out.extend_from_slice(&t)),
            // ENOSYS tells the kernel that opens need no message at all ("no_open"): it
            // then opens files itself, keeps their page cache and sends no RELEASE
            // either. The mount is read-only, so the kernel refuses writes before they
            // reach us.
            op::OPEN => Err(libc::ENOSYS),
            op::READ => match (u64_at(8), u32_at(16)) {
                (Some(offset), Some(size)) if body.len() >= abi::READ_IN_SIZE => {
                    return match self.fs.read(self.id_of(ino), offset, size.min(MAX_READ)) {
                        Ok(data) => Answer::Data(data),
                        Err(e) => Answer::Error(e),
                    }
                }
                _ => Err(libc::EINVAL),
            },
            op::STATFS => {
                let s = self.fs.statfs();
                let bs = s.block_size;
                Writer(out)
                    .u64(s.blocks)
                    .u64(0)
                    .u64(0)
                    .u64(s.files)
                    .u64(0)
                    .u32(bs)
                    .u32(255)
                    .u32(bs)
                    .zeros(4 + 6 * 4);
                Ok(())
            }
            op::RELEASE => Ok(()),
            op::GETXATTR => match (u32_at(0), req.name_at(abi::GETXATTR_IO_SIZE)) {
                (Some(size), Some(name)) => self
                    .fs
                    .getxattr(self.id_of(ino), name)
                    .and_then(|v| sized(out, &v, size)),
                _ => Err(libc::EINVAL),
            },
            op::LISTXATTR => match u32_at(0) {
                Some(size) => self.fs.listxattr(self.id_of(ino)).and_then(|names| {
                    let mut list = Vec::new();
                    for n in names {
                        list.extend_from_slice(&n);
                        list.push(0);
                    }
                    sized(out, &list, size)
                }),
                None => Err(libc::EINVAL),
            },
            // The kernel stops sending FLUSH and INTERRUPT once told they are not
            // implemented.
            op::FLUSH | op::INTERRUPT => Err(libc::ENOSYS),
            op::OPENDIR => self.opendir(ino, out),
            op::READDIR | op::READDIRPLUS => match (u64_at(0), u64_at(8), u32_at(16)) {
                (Some(fh), Some(offset), Some(size)) => {
                    self.readdir(ino, fh, offset, size, req.opcode == op::READDIRPLUS, out)
                }
                _ => Err(libc::EINVAL),
            },
            op::RELEASEDIR => {
                if let Some(fh) = u64_at(0) {
                    self.dirs.lock().expect("dirs lock").remove(&fh);
                }
                Ok(())
            }
            op::ACCESS if body.len() < abi::ACCESS_IN_SIZE => Err(libc::EINVAL),
            op::ACCESS => match u32_at(0) {
                Some(mask) if mask & libc::W_OK as u32 != 0 => Err(libc::EROFS),
                _ => self.fs.getattr(self.id_of(ino)).map(|_| ()),
            },
            op::DESTROY => Ok(()),
            // A second INIT, or anything we do not implement (writes cannot reach a
            // read-only mount).
            op::INIT => Err(libc::EIO),
            _ => Err(libc::ENOSYS),
        };
        match result {
            Ok(()) => Answer::Built,
            Err(e) => Answer::Error(e),
        }
    }

    fn opendir(&self, ino: u64, out: &mut Vec<u8>) -> Result<(), i32> {
        if self.no_opendir.load(Ordering::Relaxed) {
            // With FUSE_NO_OPENDIR_SUPPORT granted, ENOSYS tells the kernel to open every
            // directory itself from now on.
            return Err(libc::ENOSYS);
        }
        let entries = self.fs.readdir(self.id_of(ino))?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed) + 1;
        self.dirs
            .lock()
            .expect("dirs lock")
            .insert(fh, Arc::new(entries));
        Writer(out)
            .u64(fh)
            .u32(abi::FOPEN_KEEP_CACHE | abi::FOPEN_CACHE_DIR)
            .u32(0);
        Ok(())
    }

    /// Entries from `offset` on ("." and ".." first), as many as fit in `size` bytes;
    /// with `plus`, each with its attributes.
    fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), i32> {
        let entries = self.listing(ino, fh)?;
        let start = out.len();
        let limit = start + size as usize;
        for i in offset as usize..entries.len() + 2 {
            let (name, id, kind) = match i {
                0 => (&b"."[..], self.id_of(ino), libc::S_IFDIR),
                1 => (&b".."[..], self.id_of(ino), libc::S_IFDIR),
                _ => {
                    let e = &entries[i - 2];
                    (e.name.as_slice(), e.id, e.kind)
                }
            };
            let len = abi::DIRENT_SIZE
                + name.len()
                + abi::dirent_padding(name.len())
                + if plus { abi::ENTRY_OUT_SIZE } else { 0 };
            if out.len() + len > limit {
                break;
            }
            if plus {
                let attr = self.fs.getattr(id)?;
                Writer(out).entry(Some(&self.file_attr(&attr)), TTL);
            }
            Writer(out).dirent(self.ino_of(id), i as u64 + 1, kind >> 12, name);
        }
        Ok(())
    }

    /// The listing a READDIR(PLUS) continues: its handle's, or (handle 0, no OPENDIR)
    /// the directory's, listed again if it is not among the recent ones.
    fn listing(&self, ino: u64, fh: u64) -> Result<Arc<Vec<Entry>>, i32> {
        if fh != 0 {
            return self
                .dirs
                .lock()
                .expect("dirs lock")
                .get(&fh)
                .cloned()
                .ok_or(libc::EBADF);
        }
        if let Some(entries) = self.recent_dirs.lock().expect("dirs lock").get(&ino) {
            return Ok(entries.clone());
        }
        let entries = Arc::new(self.fs.readdir(self.id_of(ino))?);
        let mut recent = self.recent_dirs.lock().expect("dirs lock");
        if recent.len() >= RECENT_DIRS {
            recent.clear();
        }
        recent.insert(ino, entries.clone());
        Ok(entries)
    }

    fn ino_of(&self, id: u64) -> u64 {
        if id == self.fs.root() {
            abi::ROOT_ID
        } else {
            id + 2
        }
    }

    fn id_of(&self, ino: u64) -> u64 {
        if ino == abi::ROOT_ID {
            self.fs.root()
        } else {
            ino.wrapping_sub(2)
        }
    }

    fn file_attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: self.ino_of(a.id),
            size: a.size,
            blocks: a.size.div_ceil(512),
            mtime: a.mtime,
            mtime_nsec: a.mtime_nsec,
            mode: a.mode,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: 4096,
        }
    }
}

/// An xattr answer: the value's size when asked with size 0, the value when it fits,
/// ERANGE otherwise.
fn sized(out: &mut Vec<u8>, value: &[u8], size: u32) -> Result<(), i32> {
    if size == 0 {
        Writer(out).u32(value.len() as u32).u32(0);
        Ok(())
    } else if value.len() <= size as usize {
        out.extend_from_slice(value);
        Ok(())
    } else {
        Err(libc::ERANGE)
    }
}

fn read(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends an answer: `out` holds room for the header, then the body; `data` follows it.
/// A request the kernel has withdrawn meanwhile (ENOENT) needs no answer.
fn reply(fd: &OwnedFd, unique: u64, error: i32, out: &mut [u8], data: &[u8]) {
    let len = (out.len() + data.len()) as u32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&(-error).to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    let iov = [
        libc::iovec {
            iov_base: out.as_ptr() as *mut libc::c_void,
            iov_len: out.len(),
        },
        libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        },
    ];
    let count = if data.is_empty() { 1 } else { 2 };
    // SAFETY: both buffers outlive the call; the kernel only reads them.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), count) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            log::debug!("FUSE answer to request {unique}: {e}");
        }
    }
}

/// An epoll instance watching one descriptor for input.
struct Epoll(OwnedFd);

impl Epoll {
    fn watching(fd: &OwnedFd) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system calls; the new descriptor is owned at once.
        unsafe {
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if ep < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ep = OwnedFd::from_raw_fd(ep);
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            if libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Epoll(ep))
        }
    }

    /// Waits until the descriptor is readable (or reports an error, which the next
    /// read returns).
    fn wait(&self) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one event slot, valid for the call.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut ev, 1, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Serves `server` on `fd` with `threads` threads (this one included) until unmounted.
pub(crate) fn run<F: ReadOnlyFs>(
    server: Arc<Server<F>>,
    fd: OwnedFd,
    threads: usize,
) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mut others = Vec::new();
    for i in 1..threads.max(1) {
        let server = server.clone();
        let fd = fd.try_clone()?;
        others.push(
            std::thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || server.serve(fd))?,
        );
    }
    let mut result = server.serve(fd);
    for t in others {
        let r = t
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("a FUSE thread panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    result
}
