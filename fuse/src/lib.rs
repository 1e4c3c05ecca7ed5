//! A read-only FUSE file system over a small trait, [`ReadOnlyFs`], that an image reader
//! implements. The adapter owns everything FUSE-specific: inode number mapping (the
//! trait's root becomes inode 1), attribute conversion, directory handles, long cache
//! lifetimes (the image never changes, so the kernel's page and dentry caches can keep
//! everything), and a thread pool so reads run on all cores while the session loop keeps
//! receiving requests.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, Session,
};

use fuser::SessionUnmounter;

/// How long the kernel may cache attributes and entries: the image is immutable.
const TTL: Duration = Duration::from_secs(3600);
/// `FOPEN_KEEP_CACHE`: keep page-cache data across opens.
const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FOPEN_CACHE_DIR`: let the kernel cache directory listings.
const FOPEN_CACHE_DIR: u32 = 1 << 3;

/// Attributes of one entry, in the trait's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// The entry's id in the trait's numbering.
    pub id: u64,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device number (Linux encoding) for device nodes.
    pub rdev: u64,
}

/// A directory entry, in the trait's terms ("." and ".." are not included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Name bytes.
    pub name: Vec<u8>,
    /// Target id.
    pub id: u64,
    /// File type bits of its mode (`S_IFMT` part).
    pub kind: u32,
}

/// File-system totals for `statfs`.
#[derive(Clone, Debug, Default)]
pub struct FsStats {
    /// Blocks of `block_size` in use.
    pub blocks: u64,
    /// Number of inodes.
    pub files: u64,
    /// Block size.
    pub block_size: u32,
}

/// What the adapter needs from an image. Errors are errno values; implementations log
/// the detail (which file, which chunk) themselves.
pub trait ReadOnlyFs: Send + Sync + 'static {
    /// Id of the root directory.
    fn root(&self) -> u64;
    /// Attributes of `id`.
    fn getattr(&self, id: u64) -> Result<Attr, i32>;
    /// Finds `name` in directory `parent`.
    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, i32>;
    /// Lists directory `id`.
    fn readdir(&self, id: u64) -> Result<Vec<Entry>, i32>;
    /// Reads up to `size` bytes at `offset` of file `id`.
    fn read(&self, id: u64, offset: u64, size: u32) -> Result<Bytes, i32>;
    /// The same read if it can be answered from memory at once; `None` sends it to a
    /// worker thread (through `read`). The default always defers.
    fn read_now(&self, _id: u64, _offset: u64, _size: u32) -> Option<Result<Bytes, i32>> {
        None
    }
    /// Target of symlink `id`.
    fn readlink(&self, id: u64) -> Result<Vec<u8>, i32>;
    /// Xattr names of `id`.
    fn listxattr(&self, id: u64) -> Result<Vec<Vec<u8>>, i32>;
    /// Value of xattr `name` of `id` (`ENODATA` when absent).
    fn getxattr(&self, id: u64, name: &[u8]) -> Result<Vec<u8>, i32>;
    /// Totals for `statfs`.
    fn statfs(&self) -> FsStats;
}

/// The bytes answering a read: owned, or part of a shared buffer (a cached chunk), which
/// is sent without a copy.
pub enum Bytes {
    /// A buffer of its own.
    Owned(Vec<u8>),
    /// `range` of a shared buffer.
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
}

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Shared(buf, range) => &buf[range.clone()],
        }
    }
}

/// Mount settings.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Threads serving reads.
    pub threads: usize,
    /// Let users other than the mounter access the mount.
    pub allow_other: bool,
    /// File-system name shown in /proc/mounts.
    pub fs_name: String,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            allow_other: true,
            fs_name: "rafs".into(),
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

struct Adapter<F: ReadOnlyFs> {
    fs: Arc<F>,
    pool: crossbeam_channel::Sender<Job>,
    /// Listings of directories opened through OPENDIR, by handle.
    dirs: Mutex<HashMap<u64, Arc<Vec<Entry>>>>,
    next_fh: Mutex<u64>,
    /// The kernel opens directories without asking us (`FUSE_NO_OPENDIR_SUPPORT`): half
    /// the requests of a tree walk. Listings are then kept by inode, a few at a time.
    no_opendir: bool,
    recent_dirs: Mutex<HashMap<u64, Arc<Vec<Entry>>>>,
}

/// Listings kept by inode when the kernel does not open directories through us.
const RECENT_DIRS: usize = 64;

impl<F: ReadOnlyFs> Adapter<F> {
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
            fuser::FUSE_ROOT_ID
        } else {
            id + 2
        }
    }

    fn id_of(&self, ino: u64) -> u64 {
        if ino == fuser::FUSE_ROOT_ID {
            self.fs.root()
        } else {
            ino.wrapping_sub(2)
        }
    }

    fn file_attr(&self, a: &Attr) -> FileAttr {
        // fuser sends a pre-epoch time as (-(whole seconds before), nanoseconds before),
        // not as the kernel's normalised (seconds, positive nanoseconds). Build the time so
        // that what it sends is exactly the image's (mtime, mtime_nsec).
        let mtime = if a.mtime >= 0 {
            UNIX_EPOCH + Duration::new(a.mtime as u64, a.mtime_nsec)
        } else {
            UNIX_EPOCH - Duration::new(a.mtime.unsigned_abs(), a.mtime_nsec)
        };
        FileAttr {
            ino: self.ino_of(a.id),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: kind_of(a.mode),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

impl<F: ReadOnlyFs> Filesystem for Adapter<F> {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // Ask for what helps a read-only image; the kernel grants what it supports.
        const FUSE_ASYNC_READ: u32 = 1 << 0;
        const FUSE_DO_READDIRPLUS: u32 = 1 << 13;
        const FUSE_PARALLEL_DIROPS: u32 = 1 << 18;
        const FUSE_CACHE_SYMLINKS: u32 = 1 << 23;
        const FUSE_NO_OPENDIR_SUPPORT: u32 = 1 << 24;
        for cap in [
            FUSE_ASYNC_READ,
            FUSE_DO_READDIRPLUS,
            FUSE_PARALLEL_DIROPS,
            FUSE_CACHE_SYMLINKS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        self.no_opendir = config.add_capabilities(FUSE_NO_OPENDIR_SUPPORT).is_ok();
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(self.id_of(parent), name.as_bytes()) {
            Ok(a) => reply.entry(&TTL, &self.file_attr(&a), 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.fs.getattr(self.id_of(ino)) {
            Ok(a) => reply.attr(&TTL, &self.file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.fs.readlink(self.id_of(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        // ENOSYS tells the kernel that opens need no message at all ("no_open"): it then
        // opens files itself, keeps their page cache (FOPEN_KEEP_CACHE is its default in
        // that mode) and sends no RELEASE either. The mount is read-only, so the kernel
        // refuses writes before they reach us.
        reply.error(libc::ENOSYS);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let id = self.id_of(ino);
        match self.fs.read_now(id, offset.max(0) as u64, size) {
            Some(Ok(data)) => return reply.data(data.as_slice()),
            Some(Err(e)) => return reply.error(e),
            None => {}
        }
        let fs = self.fs.clone();
        let job: Job = Box::new(move || match fs.read(id, offset.max(0) as u64, size) {
            Ok(data) => reply.data(data.as_slice()),
            Err(e) => reply.error(e),
        });
        if let Err(e) = self.pool.send(job) {
            (e.into_inner())();
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if self.no_opendir {
            // With FUSE_NO_OPENDIR_SUPPORT granted, ENOSYS tells the kernel to open every
            // directory itself from now on.
            return reply.error(libc::ENOSYS);
        }
        match self.fs.readdir(self.id_of(ino)) {
            Ok(entries) => {
                let mut next = self.next_fh.lock().expect("fh lock");
                *next += 1;
                let fh = *next;
                self.dirs
                    .lock()
                    .expect("dirs lock")
                    .insert(fh, Arc::new(entries));
                reply.opened(fh, FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR);
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.listing(ino, fh) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino, FileType::Directory, &b"."[..]),
            (ino, FileType::Directory, &b".."[..]),
        ];
        let all = dots.into_iter().chain(
            entries
                .iter()
                .map(|e| (self.ino_of(e.id), kind_of(e.kind), e.name.as_slice())),
        );
        for (i, (child, kind, name)) in all.enumerate().skip(offset.max(0) as usize) {
            if reply.add(child, i as i64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.listing(ino, fh) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let me = match self.fs.getattr(self.id_of(ino)) {
            Ok(a) => a,
            Err(e) => return reply.error(e),
        };
        let mut i = offset.max(0) as usize;
        while i < entries.len() + 2 {
            let (name, attr) = match i {
                0 => (&b"."[..], me.clone()),
                1 => (&b".."[..], me.clone()),
                _ => {
                    let e = &entries[i - 2];
                    match self.fs.getattr(e.id) {
                        Ok(a) => (e.name.as_slice(), a),
                        Err(err) => return reply.error(err),
                    }
                }
            };
            let fa = self.file_attr(&attr);
            if reply.add(fa.ino, i as i64 + 1, OsStr::from_bytes(name), &TTL, &fa, 0) {
                break;
            }
            i += 1;
        }
        reply.ok();
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().expect("dirs lock").remove(&fh);
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(s.blocks, 0, 0, s.files, 0, s.block_size, 255, s.block_size);
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        match self.fs.getxattr(self.id_of(ino), name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(libc::ERANGE),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(self.id_of(ino)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() <= size as usize {
                    reply.data(&buf)
                } else {
                    reply.error(libc::ERANGE)
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, mask: i32, reply: ReplyEmpty) {
        if mask & libc::W_OK != 0 {
            return reply.error(libc::EROFS);
        }
        match self.fs.getattr(self.id_of(ino)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted session, ready to run.
pub struct Mounted<F: ReadOnlyFs> {
    session: Session<Adapter<F>>,
    unmounter: Unmounter,
}

impl<F: ReadOnlyFs> Mounted<F> {
    /// Something another thread can call to unmount (and so end `run`).
    pub fn unmounter(&mut self) -> Unmounter {
        self.unmounter.clone()
    }

    /// Serves requests until the file system is unmounted.
    pub fn run(mut self) -> std::io::Result<()> {
        self.session.run()
    }
}

/// Unmounts a mount made by [`mount`], from any thread.
#[derive(Clone)]
pub struct Unmounter {
    mountpoint: PathBuf,
    /// Set for mounts made through `fusermount3` (unprivileged): fuser unmounts those.
    fuser: Option<Arc<Mutex<SessionUnmounter>>>,
    /// Set once unmounted, so a second call cannot hit a newer mount at the same path.
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Unmounter {
    /// Unmounts; see [`unmount`]. Unmounting twice is harmless.
    pub fn unmount(&self) -> std::io::Result<Unmounted> {
        use std::sync::atomic::Ordering;
        if self.done.load(Ordering::SeqCst) {
            return Ok(Unmounted::Cleanly);
        }
        let result = match &self.fuser {
            Some(u) => {
                u.lock().expect("unmounter lock").unmount()?;
                Ok(Unmounted::Cleanly)
            }
            None => match unmount(&self.mountpoint) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Unmounted::Cleanly),
                other => other,
            },
        };
        if result.is_ok() {
            self.done.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

/// How [`unmount`] got a file system off its mount point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// It is gone; its session has ended or is ending.
    Cleanly,
    /// It was still busy after retrying, so it was detached (`MNT_DETACH`): the path is
    /// free, but the file system lives on until its last user lets go.
    Detached,
}

/// How long [`unmount`] retries a busy file system before detaching it. A file closed
/// just before is briefly busy until its server answers the release.
const BUSY_RETRY: Duration = Duration::from_secs(3);

/// Unmounts `mountpoint`: umount(2), retried while the file system is busy for up to
/// [`BUSY_RETRY`], then detached lazily; `fusermount3 -u` for unprivileged users.
pub fn unmount(mountpoint: &Path) -> std::io::Result<Unmounted> {
    let c =
        std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let deadline = std::time::Instant::now() + BUSY_RETRY;
    loop {
        // SAFETY: c is a NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Ok(Unmounted::Cleanly);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(libc::EBUSY) => {
                log::warn!(
                    "{} is still busy after {} s: detaching it",
                    mountpoint.display(),
                    BUSY_RETRY.as_secs()
                );
                // SAFETY: as above.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                    return Ok(Unmounted::Detached);
                }
                return Err(std::io::Error::last_os_error());
            }
            Some(libc::EPERM) => {
                let status = std::process::Command::new("fusermount3")
                    .arg("-u")
                    .arg(mountpoint)
                    .status()?;
                return if status.success() {
                    Ok(Unmounted::Cleanly)
                } else {
                    Err(err)
                };
            }
            _ => return Err(err),
        }
    }
}

/// Mounts `fs` read-only at `mountpoint`. The mount exists when this returns; call
/// [`Mounted::run`] (in any thread) to serve it.
///
/// As root the mount is made here with mount(2) on our own `/dev/fuse` descriptor, so
/// only [`Unmounter`] ever unmounts it (fuser's own unmount-on-drop could otherwise hit a
/// newer mount at the same path); otherwise fuser mounts through `fusermount3`.
pub fn mount<F: ReadOnlyFs>(
    fs: Arc<F>,
    mountpoint: &Path,
    config: &MountConfig,
) -> std::io::Result<Mounted<F>> {
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    for i in 0..config.threads.max(1) {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("fuse-read-{i}"))
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
    }
    let adapter = Adapter {
        fs,
        pool: tx,
        dirs: Mutex::new(HashMap::new()),
        next_fh: Mutex::new(0),
        no_opendir: false,
        recent_dirs: Mutex::new(HashMap::new()),
    };
    let mountpoint = mountpoint.canonicalize()?;
    match mount_kernel(&mountpoint, config) {
        Ok(fd) => {
            let acl = if config.allow_other {
                fuser::SessionACL::All
            } else {
                fuser::SessionACL::Owner
            };
            Ok(Mounted {
                session: Session::from_fd(adapter, fd, acl),
                unmounter: Unmounter {
                    mountpoint,
                    fuser: None,
                    done: Default::default(),
                },
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let mut options = vec![
                MountOption::RO,
                MountOption::FSName(config.fs_name.clone()),
                MountOption::Subtype("nydus-image".into()),
                MountOption::DefaultPermissions,
                MountOption::NoDev,
                MountOption::NoSuid,
            ];
            if config.allow_other {
                options.push(MountOption::AllowOther);
            }
            let mut session = Session::new(adapter, &mountpoint, &options)?;
            let fuser = Some(Arc::new(Mutex::new(session.unmount_callable())));
            Ok(Mounted {
                session,
                unmounter: Unmounter {
                    mountpoint,
                    fuser,
                    done: Default::default(),
                },
            })
        }
        Err(e) => Err(e),
    }
}

/// mount(2) of a FUSE file system served through a new `/dev/fuse` descriptor.
fn mount_kernel(mountpoint: &Path, config: &MountConfig) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?
        .into();
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut options = format!(
        "fd={},rootmode={root_mode:o},user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if config.allow_other {
        options.push_str(",allow_other");
    }
    let cstr = |s: &[u8]| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let source = cstr(config.fs_name.as_bytes())?;
    let target = cstr(mountpoint.as_os_str().as_bytes())?;
    let fstype = cstr(b"fuse.nydus-image")?;
    let data = cstr(options.as_bytes())?;
    let flags = libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(dev)
}
