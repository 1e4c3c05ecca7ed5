//! Metadata setters for test trees (xattrs, times, permission bits), with the system
//! calls std does not offer. Each panics naming the path on failure.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `path` as a C string (test paths hold no NUL).
pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in a test path")
}

/// Sets xattr `name` of `path` itself (not a symlink's target).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: both strings are NUL terminated; value is valid for its length.
    let rc = unsafe {
        libc::lsetxattr(
            cstr(path).as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Sets the access and modification times of `path` itself.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let time = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = [time, time];
    // SAFETY: the path is NUL terminated and `times` holds two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// Sets the permission bits (setuid, setgid and sticky included).
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Drops the nanoseconds of every mtime under `root` (children before their directory,
/// whose mtime the change would not touch anyway).
// Used by tests/inline.rs and tests/tar.rs only.
#[allow(dead_code)]
pub fn whole_second_mtimes(root: &Path) {
    let mut entries = vec![root.to_path_buf()];
    let mut i = 0;
    while i < entries.len() {
        let p = entries[i].clone();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                entries.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    for p in entries.iter().rev() {
        use std::os::unix::fs::MetadataExt;
        set_mtime(p, fs::symlink_metadata(p).unwrap().mtime(), 0);
    }
}
