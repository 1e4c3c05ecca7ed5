//! Reads a source directory into a `Tree`: metadata, symlink targets, xattrs and hard-link
//! groups. File data is read later by the chunker.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::builder::tree::{FileData, Kind, Node, NodeId, Tree};
use crate::builder::BuildError;
use crate::format::v6::inode::{xattr_split, Xattrs};

/// Largest xattr value RAFS v6 can hold (its size field is 16 bits; Linux caps at 64 KiB).
const MAX_XATTR_VALUE: usize = 65535;

/// Reads `root` and everything below it into a tree, breadth first with children in name
/// order. Hard links inside the tree are grouped by (device, inode).
///
/// Directories are listed by several threads at once (listing is mostly system calls:
/// readdir, lstat, listxattr); the tree is then assembled in one pass in breadth-first
/// order, so node ids, hard-link groups and the first error reported do not depend on
/// which thread listed what.
pub fn read_tree(root: &Path) -> Result<Tree, BuildError> {
    let meta =
        fs::symlink_metadata(root).map_err(|e| BuildError::io(root, "cannot stat source", e))?;
    if !meta.is_dir() {
        return Err(BuildError::Source {
            path: root.to_path_buf(),
            what: "source is not a directory".into(),
        });
    }
    let mut tree = Tree::default();
    tree.nodes
        .push(node_from(root.to_path_buf(), Vec::new(), 0, &meta)?);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    let mut listings = list_all(root, threads);
    let mut seen: HashMap<(u64, u64), NodeId> = HashMap::new();
    let mut queue = VecDeque::from([0usize]);
    while let Some(dir) = queue.pop_front() {
        let listing = listings
            .remove(&tree.nodes[dir].source)
            .expect("every directory was listed")?;
        let mut children = Vec::with_capacity(listing.len());
        let mut subdirs = 0;
        for entry in listing {
            let id = tree.nodes.len();
            let mut node = entry.node;
            node.parent = dir;
            if entry.linked {
                match seen.get(&entry.key) {
                    Some(&first) => {
                        node.hardlink_of = Some(first);
                        tree.nodes[first].nlink += 1;
                    }
                    None => {
                        seen.insert(entry.key, id);
                    }
                }
            }
            if matches!(node.kind, Kind::Dir(_)) {
                queue.push_back(id);
                subdirs += 1;
            }
            tree.nodes.push(node);
            children.push(id);
        }
        tree.nodes[dir].nlink = 2 + subdirs;
        tree.nodes[dir].kind = Kind::Dir(children);
    }
    Ok(tree)
}

/// One entry of a directory listing.
struct Listed {
    node: Node,
    /// (device, inode).
    key: (u64, u64),
    /// A non-directory with more than one link.
    linked: bool,
}

/// A directory's entries in name order, or why it could not be listed.
type Listing = Result<Vec<Listed>, BuildError>;

/// Lists one directory.
fn list_dir(dir: &Path) -> Listing {
    let mut names = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| BuildError::io(dir, "cannot read directory", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BuildError::io(dir, "cannot read directory", e))?;
        names.push(entry.file_name().into_vec());
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        // Sized once: `join` grows the copy of `dir` it starts from.
        let mut path = PathBuf::with_capacity(dir.as_os_str().len() + 1 + name.len());
        path.push(dir);
        path.push(std::ffi::OsStr::from_bytes(&name));
        let meta =
            fs::symlink_metadata(&path).map_err(|e| BuildError::io(&path, "cannot stat", e))?;
        let node = node_from(path, name, 0, &meta)?;
        out.push(Listed {
            node,
            key: (meta.dev(), meta.ino()),
            linked: !meta.is_dir() && meta.nlink() > 1,
        });
    }
    Ok(out)
}

/// Lists `root` and every directory below it with `threads` threads: directory path ->
/// listing. A directory that fails to list has no subdirectories listed.
fn list_all(root: &Path, threads: usize) -> HashMap<PathBuf, Listing> {
    use std::sync::{Condvar, Mutex};
    // Directories waiting to be listed, and how many are being listed now.
    let work: Mutex<(Vec<PathBuf>, usize)> = Mutex::new((vec![root.to_path_buf()], 0));
    let changed = Condvar::new();
    let results: Mutex<HashMap<PathBuf, Listing>> = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let dir = {
                    let mut w = work.lock().expect("scan lock");
                    loop {
                        if let Some(d) = w.0.pop() {
                            w.1 += 1;
                            break d;
                        }
                        if w.1 == 0 {
                            return;
                        }
                        w = changed.wait(w).expect("scan lock");
                    }
                };
                let listing = list_dir(&dir);
                let subdirs: Vec<PathBuf> = match &listing {
                    Ok(entries) => entries
                        .iter()
                        .filter(|e| matches!(e.node.kind, Kind::Dir(_)))
                        .map(|e| e.node.source.clone())
                        .collect(),
                    Err(_) => Vec::new(),
                };
                results.lock().expect("results lock").insert(dir, listing);
                let mut w = work.lock().expect("scan lock");
                w.0.extend(subdirs);
                w.1 -= 1;
                changed.notify_all();
            });
        }
    });
    results.into_inner().expect("results lock")
}

fn node_from(
    source: PathBuf,
    name: Vec<u8>,
    parent: NodeId,
    meta: &fs::Metadata,
) -> Result<Node, BuildError> {
    let path = source.as_path();
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        Kind::Dir(Vec::new())
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        let target =
            fs::read_link(path).map_err(|e| BuildError::io(path, "cannot read symlink", e))?;
        Kind::Symlink(target.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        return Err(BuildError::Source {
            path: path.to_path_buf(),
            what: "unknown file type".into(),
        });
    };
    if name.len() > 255 {
        return Err(BuildError::Source {
            path: path.to_path_buf(),
            what: format!("name is {} bytes, the limit is 255", name.len()),
        });
    }
    let rdev = meta.rdev();
    if matches!(kind, Kind::CharDevice | Kind::BlockDevice) && rdev > u32::MAX as u64 {
        return Err(BuildError::Source {
            path: path.to_path_buf(),
            what: format!("device number 0x{rdev:x} does not fit RAFS v6's 32 bits"),
        });
    }
    let size = match kind {
        Kind::File => meta.len(),
        Kind::Symlink(ref t) => t.len() as u64,
        _ => 0,
    };
    let xattrs = read_xattrs(path)?;
    Ok(Node {
        name,
        source,
        parent,
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        size,
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
        rdev,
        xattrs,
        hardlink_of: None,
        nlink: 1,
        data: FileData::Source,
    })
}

/// Lists and reads the xattrs of `path` without following a symlink.
pub fn read_xattrs(path: &Path) -> Result<Xattrs, BuildError> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| BuildError::Source {
        path: path.to_path_buf(),
        what: "path contains a NUL byte".into(),
    })?;
    let names = xattr_call(path, "list xattrs", |buf| unsafe {
        // SAFETY: cpath is NUL terminated; buf is a valid writable buffer of the given length.
        libc::llistxattr(
            cpath.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    })?;
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split on NUL");
        let value = xattr_call(path, "read xattr", |buf| unsafe {
            // SAFETY: both strings are NUL terminated; buf is valid for buf.len() bytes.
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        })?;
        check_xattr(path, name, &value)?;
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Refuses an xattr RAFS v6 cannot store: outside the known namespaces, or too large.
pub(crate) fn check_xattr(path: &Path, name: &[u8], value: &[u8]) -> Result<(), BuildError> {
    match xattr_problem(name, value) {
        None => Ok(()),
        Some(what) => Err(BuildError::Source {
            path: path.to_path_buf(),
            what,
        }),
    }
}

/// What keeps RAFS v6 from storing an xattr (outside the known namespaces, or too
/// large), if anything.
pub(crate) fn xattr_problem(name: &[u8], value: &[u8]) -> Option<String> {
    let shown = String::from_utf8_lossy(name);
    if xattr_split(name).is_none() {
        return Some(format!("xattr {shown:?} is outside the namespaces RAFS v6 can store (user., trusted., security., system.posix_acl_*)"));
    }
    if name.len() > 255 + 24 || value.len() > MAX_XATTR_VALUE {
        return Some(format!(
            "xattr {shown:?} is too large ({} byte value)",
            value.len()
        ));
    }
    None
}

/// Runs an xattr syscall that fills a buffer: first into a small buffer on the stack, which
/// holds what most files have (nothing, or a capability or an ACL), so that listing a tree
/// costs one call per file; then, if that is too small, asking for the size and filling,
/// again if the size grows in between.
fn xattr_call(
    path: &Path,
    what: &str,
    mut call: impl FnMut(&mut [u8]) -> isize,
) -> Result<Vec<u8>, BuildError> {
    let mut small = [0u8; 512];
    let got = call(&mut small);
    if got >= 0 {
        return Ok(small[..got as usize].to_vec());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Some(libc::ERANGE) => {}
        _ => return Err(BuildError::io(path, what, err)),
    }
    for _ in 0..8 {
        let size = call(&mut []);
        if size < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOTSUP) {
                return Ok(Vec::new());
            }
            return Err(BuildError::io(path, what, err));
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(&mut buf);
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(BuildError::io(path, what, err));
        }
    }
    Err(BuildError::Source {
        path: PathBuf::from(path),
        what: format!("cannot {what}: it keeps changing"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(path: &Path, name: &str, value: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: both strings are NUL terminated; value is valid for its length.
        let rc = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr() as *const libc::c_void,
                value.len(),
                0,
            )
        };
        let err = std::io::Error::last_os_error();
        assert_eq!(rc, 0, "setxattr {name} on {}: {err}", path.display());
    }

    /// A list of names or a value too long for the first, stack-sized call is read whole
    /// by asking for its size; short ones and none at all take the first call.
    #[test]
    fn xattrs_of_every_length_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none");
        std::fs::write(&none, b"").unwrap();
        assert_eq!(read_xattrs(&none).unwrap(), Vec::new());

        let many = dir.path().join("many");
        std::fs::write(&many, b"").unwrap();
        let mut want = Vec::new();
        // 24 names of 25 bytes: a list of 600, past the first buffer (and all of it within
        // the 4 KiB that ext4 holds for a file's xattrs).
        for i in 0..24 {
            let name = format!("user.attribute-number-{i:02}");
            let value = match i {
                0 => vec![b'v'; 511],
                1 => vec![b'w'; 512],
                2 => vec![b'x'; 1200],
                _ => format!("value {i}").into_bytes(),
            };
            set(&many, &name, &value);
            want.push((name.into_bytes(), value));
        }
        want.sort();
        assert_eq!(read_xattrs(&many).unwrap(), want);
    }
}
