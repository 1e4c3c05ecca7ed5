//! [`FsTree`]: a directory read with plain file-system calls (std::fs and the xattr
//! system calls) and nothing else.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{Error, Facts, Tree};

/// A directory read with plain file-system calls.
pub struct FsTree {
    root: PathBuf,
    skip_phantoms: bool,
}

impl FsTree {
    /// A tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsTree {
            root: root.into(),
            skip_phantoms: false,
        }
    }

    /// Skips entries that a directory lists but that do not exist when looked up. The
    /// kernel's overlayfs lists whiteouts of a directory that only one layer has without
    /// hiding them; they then fail lookup. Only for reading such mounts.
    pub fn skipping_phantoms(mut self) -> Self {
        self.skip_phantoms = true;
        self
    }

    fn join(&self, path: &[u8]) -> PathBuf {
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(std::ffi::OsStr::from_bytes(rel))
        }
    }
}

impl Tree for FsTree {
    fn scan(&self) -> Result<BTreeMap<Vec<u8>, Facts>, Error> {
        let mut out = BTreeMap::new();
        let mut stack = vec![b"/".to_vec()];
        while let Some(path) = stack.pop() {
            let full = self.join(&path);
            let m = match fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e) if self.skip_phantoms && e.kind() == std::io::ErrorKind::NotFound => {
                    continue
                }
                Err(e) => return Err(io_err(&full, "cannot stat", e)),
            };
            let ft = m.file_type();
            let target = if ft.is_symlink() {
                Some(
                    fs::read_link(&full)
                        .map_err(|e| io_err(&full, "cannot read the link", e))?
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else {
                None
            };
            out.insert(
                path.clone(),
                Facts {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if ft.is_file() || ft.is_symlink() {
                        m.size()
                    } else {
                        0
                    },
                    mtime: m.mtime(),
                    mtime_nsec: m.mtime_nsec() as u32,
                    rdev: if ft.is_block_device() || ft.is_char_device() {
                        m.rdev()
                    } else {
                        0
                    },
                    nlink: if ft.is_dir() { 0 } else { m.nlink() },
                    target,
                    xattrs: xattrs(&full)?,
                    link_key: (!ft.is_dir() && m.nlink() > 1).then_some(m.ino()),
                },
            );
            if ft.is_dir() {
                let entries = fs::read_dir(&full).map_err(|e| io_err(&full, "cannot list", e))?;
                for e in entries {
                    let e = e.map_err(|e| io_err(&full, "cannot list", e))?;
                    let mut child = if path == b"/" {
                        Vec::new()
                    } else {
                        path.clone()
                    };
                    child.push(b'/');
                    child.extend_from_slice(e.file_name().as_bytes());
                    stack.push(child);
                }
            }
        }
        Ok(out)
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>, Error> {
        let full = self.join(path);
        let f = fs::File::open(&full).map_err(|e| io_err(&full, "cannot open", e))?;
        Ok(Box::new(f))
    }
}

fn xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Error> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Missing(format!("{}: NUL in path", path.display())))?;
    let mut out = BTreeMap::new();
    let names = sized_call(|buf| unsafe {
        // SAFETY: c is NUL terminated, buf is valid for its length (a null pointer when empty).
        libc::llistxattr(c.as_ptr(), buf_ptr(buf) as *mut libc::c_char, buf.len())
    })
    .map_err(|e| io_err(path, "cannot list xattrs", e))?;
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let n = CString::new(name).expect("split on NUL");
        let value = sized_call(|buf| unsafe {
            // SAFETY: as above.
            libc::lgetxattr(
                c.as_ptr(),
                n.as_ptr(),
                buf_ptr(buf) as *mut libc::c_void,
                buf.len(),
            )
        })
        .map_err(|e| Error::Io {
            path: path.to_path_buf(),
            what: format!("cannot get xattr {}", String::from_utf8_lossy(name)),
            source: e,
        })?;
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

fn buf_ptr(buf: &mut [u8]) -> *mut u8 {
    if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr()
    }
}

fn sized_call(mut call: impl FnMut(&mut [u8]) -> isize) -> std::io::Result<Vec<u8>> {
    loop {
        let size = call(&mut []);
        if size < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) | Some(libc::ENODATA) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(&mut buf);
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

fn io_err(path: &Path, what: &str, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        what: what.to_string(),
        source,
    }
}
