//! Entries only root can make: device nodes (and, alike, FIFOs and sockets) and files of
//! other owners. Each panics naming the path on failure.

use std::path::Path;

use super::attrs::cstr;

/// Makes a device node, FIFO or socket (`mode` holds the type).
pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) {
    let dev = libc::makedev(major, minor);
    // SAFETY: the path is NUL terminated.
    let rc = unsafe { libc::mknod(cstr(path).as_ptr(), mode, dev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Changes the owner of `path` itself.
pub fn lchown(path: &Path, uid: u32, gid: u32) {
    // SAFETY: the path is NUL terminated.
    let rc = unsafe { libc::lchown(cstr(path).as_ptr(), uid, gid) };
    assert_eq!(rc, 0, "lchown {}", path.display());
}
