//! A read-only FUSE file system over a small trait, [`ReadOnlyFs`], that an image reader
//! implements. This crate owns everything FUSE-specific: mounting (mount(2) as root,
//! `fusermount3` otherwise), the kernel protocol, inode number mapping (the trait's root
//! becomes inode 1), attribute conversion, directory handles, long cache lifetimes (the
//! image never changes, so the kernel's page and dentry caches can keep everything), and
//! the serving threads, which answer requests on all cores.
#![deny(missing_docs)]

mod abi;
mod server;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use server::Server;

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
    /// Threads serving requests.
    pub threads: usize,
    /// Let users other than the mounter access the mount.
    pub allow_other: bool,
    /// File-system name shown in /proc/mounts.
    pub fs_name: String,
}

/// Serving threads by default: one per core, and at least 4. Every request wakes all
/// waiting threads and the first to run takes it, so spare threads make it likely that
/// one runs on the asking process's CPU (see the `server` module).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(4)
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            threads: default_threads(),
            allow_other: true,
            fs_name: "rafs".into(),
        }
    }
}

/// A mounted file system whose INIT handshake is done, ready to be served.
pub struct Mounted<F: ReadOnlyFs> {
    server: Arc<Server<F>>,
    fd: OwnedFd,
    threads: usize,
    unmounter: Unmounter,
}

impl<F: ReadOnlyFs> Mounted<F> {
    /// Something another thread can call to unmount (and so end `run`).
    pub fn unmounter(&mut self) -> Unmounter {
        self.unmounter.clone()
    }

    /// Serves requests on the configured number of threads (this one included) until
    /// the file system is unmounted.
    pub fn run(self) -> std::io::Result<()> {
        server::run(self.server, self.fd, self.threads)
    }
}

/// Unmounts a mount made by [`mount`], from any thread.
#[derive(Clone)]
pub struct Unmounter {
    mountpoint: PathBuf,
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
        let result = match unmount(&self.mountpoint) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Unmounted::Cleanly),
            other => other,
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

/// Mounts `fs` read-only at `mountpoint` and answers the kernel's INIT. The mount is
/// ready when this returns; call [`Mounted::run`] (in any thread) to serve it.
///
/// As root the mount is made with mount(2) on our own `/dev/fuse` descriptor; other
/// users mount through `fusermount3`, which hands the descriptor back over a socket.
/// Either way only [`Unmounter`] (or [`unmount`]) ever unmounts it.
pub fn mount<F: ReadOnlyFs>(
    fs: Arc<F>,
    mountpoint: &Path,
    config: &MountConfig,
) -> std::io::Result<Mounted<F>> {
    let mountpoint = mountpoint.canonicalize()?;
    let fd = match mount_kernel(&mountpoint, config) {
        Ok(fd) => fd,
        // No access to /dev/fuse, or no right to mount: leave both to fusermount3.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            mount_fusermount(&mountpoint, config)?
        }
        Err(e) => return Err(e),
    };
    let unmounter = Unmounter {
        mountpoint,
        done: Default::default(),
    };
    let server = Arc::new(Server::new(fs));
    if let Err(e) = server.handshake(&fd) {
        let _ = unmounter.unmount();
        return Err(e);
    }
    Ok(Mounted {
        server,
        fd,
        threads: config.threads,
        unmounter,
    })
}

/// Mounts through the setuid `fusermount3` (unprivileged users): it opens `/dev/fuse`,
/// mounts, and passes the descriptor back over the socket named by `_FUSE_COMMFD`.
fn mount_fusermount(mountpoint: &Path, config: &MountConfig) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut options = format!(
        "ro,nosuid,nodev,default_permissions,fsname={},subtype=nydus-image",
        config.fs_name
    );
    if config.allow_other && user_allow_other() {
        options.push_str(",allow_other");
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    // SAFETY: dup of a descriptor we own; the copy (without close-on-exec) is what
    // fusermount3 inherits, and it is owned at once.
    let inherited = unsafe {
        let fd = libc::dup(theirs.as_raw_fd());
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    let status = std::process::Command::new("fusermount3")
        .arg("-o")
        .arg(&options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", inherited.as_raw_fd().to_string())
        .status()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run fusermount3: {e}")))?;
    drop(inherited);
    drop(theirs);
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "fusermount3 could not mount {} ({status})",
            mountpoint.display()
        )));
    }
    receive_fd(&ours)
}

/// Whether /etc/fuse.conf lets unprivileged users mount with `allow_other`.
fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .map(|c| c.lines().any(|l| l.trim() == "user_allow_other"))
        .unwrap_or(false)
}

/// Receives one descriptor sent with SCM_RIGHTS.
fn receive_fd(sock: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one cmsghdr carrying one int, suitably aligned.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer in it refers to a live local buffer,
    // and the control message is read only after checking its level, type and length.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            || ((*cmsg).cmsg_len as usize) < libc::CMSG_LEN(4) as usize
        {
            return Err(std::io::Error::other(
                "fusermount3 did not pass a /dev/fuse descriptor",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
        Ok(OwnedFd::from_raw_fd(fd))
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
