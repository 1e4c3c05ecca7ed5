//! Reads a parent bootstrap back into a nested tree for layering: every entry with its
//! metadata, and regular files with the chunks they already have in the parent's blobs.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::overlay::Entry;
use super::tree::{FileData, Kind, Node};
use super::BuildError;
use crate::reader::{Image, Nid, ReadError, MAX_DEPTH};

fn read_err(path: &Path, source: ReadError) -> BuildError {
    BuildError::ParentRead {
        path: path.to_path_buf(),
        source,
    }
}

/// The whole tree of `image`; hard links keyed in `layer` by nid.
pub fn load(image: &Image, layer: u32) -> Result<Entry, BuildError> {
    let path = image.path().to_path_buf();
    let root = image.root();
    load_entry(image, &path, root, Vec::new(), PathBuf::from("/"), layer, 0)
}

/// The entry at `nid` and everything below it, depth first in directory order. The walk
/// keeps its own stack: a recursive one took several KiB of the thread's stack per level,
/// and a parent nested a few thousand deep (which the reader accepts) overflowed it.
fn load_entry(
    image: &Image,
    boot: &Path,
    nid: Nid,
    name: Vec<u8>,
    shown: PathBuf,
    layer: u32,
    depth: usize,
) -> Result<Entry, BuildError> {
    /// A directory being loaded: its entry so far, its name and path, and its entries
    /// still to load.
    struct Loading {
        entry: Entry,
        name: Vec<u8>,
        shown: PathBuf,
        rest: std::vec::IntoIter<crate::reader::DirEntry>,
    }
    let too_deep = |shown: &Path| BuildError::Parent {
        path: boot.to_path_buf(),
        what: format!(
            "directories nested deeper than {MAX_DEPTH} at {}",
            shown.display()
        ),
    };
    if depth > MAX_DEPTH {
        return Err(too_deep(&shown));
    }
    let (entry, listing) = load_node(image, boot, nid, name.clone(), &shown, layer)?;
    let Some(listing) = listing else {
        return Ok(entry);
    };
    let mut stack = vec![Loading {
        entry,
        name,
        shown,
        rest: listing.into_iter(),
    }];
    loop {
        let level = stack.len();
        let top = stack
            .last_mut()
            .expect("the walk ends when the stack empties");
        let Some(e) = top.rest.next() else {
            let done = stack.pop().expect("not empty");
            match stack.last_mut() {
                Some(parent) => {
                    parent.entry.children.insert(done.name, done.entry);
                    continue;
                }
                None => return Ok(done.entry),
            }
        };
        let shown = top.shown.join(std::ffi::OsStr::from_bytes(&e.name));
        // The root of this walk is at `depth`, the stack holds its path down to `top`.
        if depth + level > MAX_DEPTH {
            return Err(too_deep(&shown));
        }
        let (entry, listing) = load_node(image, boot, e.nid, e.name.clone(), &shown, layer)?;
        match listing {
            Some(listing) => stack.push(Loading {
                entry,
                name: e.name,
                shown,
                rest: listing.into_iter(),
            }),
            None => {
                top.entry.children.insert(e.name, entry);
            }
        }
    }
}

/// The entry at `nid` without its children, and for a directory the entries to load
/// into it.
fn load_node(
    image: &Image,
    boot: &Path,
    nid: Nid,
    name: Vec<u8>,
    shown: &Path,
    layer: u32,
) -> Result<(Entry, Option<Vec<crate::reader::DirEntry>>), BuildError> {
    let st = image.stat(nid).map_err(|e| read_err(boot, e))?;
    let xattrs = image.xattrs(nid).map_err(|e| read_err(boot, e))?;
    let fmt = st.mode & libc::S_IFMT;
    let mut listing = None;
    let mut data = FileData::Source;
    let kind = match fmt {
        libc::S_IFDIR => {
            listing = Some(image.read_dir(nid).map_err(|e| read_err(boot, e))?);
            Kind::Dir(Vec::new())
        }
        libc::S_IFREG => {
            let mut chunks = Vec::new();
            for (i, addr) in image
                .chunk_addrs(nid)
                .map_err(|e| read_err(boot, e))?
                .into_iter()
                .enumerate()
            {
                let addr = addr.ok_or_else(|| BuildError::Parent {
                    path: boot.to_path_buf(),
                    what: format!(
                        "{}: chunk {i} is a hole, which RAFS images do not use",
                        shown.display()
                    ),
                })?;
                let info = image.chunk_info(addr.blob(), addr.chunk()).ok_or_else(|| {
                    BuildError::Parent {
                        path: boot.to_path_buf(),
                        what: format!(
                            "{}: chunk {i} is missing from the chunk table",
                            shown.display()
                        ),
                    }
                })?;
                chunks.push(info);
            }
            data = FileData::Chunks(chunks);
            Kind::File
        }
        libc::S_IFLNK => Kind::Symlink(image.readlink(nid).map_err(|e| read_err(boot, e))?),
        libc::S_IFCHR => Kind::CharDevice,
        libc::S_IFBLK => Kind::BlockDevice,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFSOCK => Kind::Socket,
        other => {
            return Err(BuildError::Parent {
                path: boot.to_path_buf(),
                what: format!("{}: unknown file type 0o{other:o}", shown.display()),
            })
        }
    };
    let node = Node {
        name,
        source: boot.join(shown.strip_prefix("/").unwrap_or(shown)),
        parent: 0,
        kind,
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        size: st.size,
        mtime: st.mtime,
        mtime_nsec: st.mtime_nsec,
        rdev: st.rdev,
        xattrs,
        hardlink_of: None,
        nlink: st.nlink,
        data,
    };
    let linked = fmt != libc::S_IFDIR && st.nlink > 1;
    let entry = Entry {
        node,
        link: linked.then_some((layer, nid.0)),
        children: BTreeMap::new(),
    };
    Ok((entry, listing))
}
