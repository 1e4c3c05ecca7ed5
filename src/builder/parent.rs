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

fn load_entry(
    image: &Image,
    boot: &Path,
    nid: Nid,
    name: Vec<u8>,
    shown: PathBuf,
    layer: u32,
    depth: usize,
) -> Result<Entry, BuildError> {
    if depth > MAX_DEPTH {
        return Err(BuildError::Parent {
            path: boot.to_path_buf(),
            what: format!(
                "directories nested deeper than {MAX_DEPTH} at {}",
                shown.display()
            ),
        });
    }
    let st = image.stat(nid).map_err(|e| read_err(boot, e))?;
    let xattrs = image.xattrs(nid).map_err(|e| read_err(boot, e))?;
    let fmt = st.mode & libc::S_IFMT;
    let mut children = BTreeMap::new();
    let mut data = FileData::Source;
    let kind = match fmt {
        libc::S_IFDIR => {
            for e in image.read_dir(nid).map_err(|e| read_err(boot, e))? {
                let child = load_entry(
                    image,
                    boot,
                    e.nid,
                    e.name.clone(),
                    shown.join(std::ffi::OsStr::from_bytes(&e.name)),
                    layer,
                    depth + 1,
                )?;
                children.insert(e.name, child);
            }
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
        source: boot.join(shown.strip_prefix("/").unwrap_or(&shown)),
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
    Ok(Entry {
        node,
        link: linked.then_some((layer, nid.0)),
        children,
    })
}
