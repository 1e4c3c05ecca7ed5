//! The layer's names as the TOC's entries build them up, entry by entry in TOC order the
//! way extracting the layer's tar would, then flattened into the builder's
//! [`Tree`].
//!
//! Tar extraction is the model for a TOC that lists a path more than once: the later
//! entry wins. A directory listed again gets the new metadata and keeps its children; any
//! other entry replaces what the path held (a file its earlier self, with its chunks; a
//! directory of another type, with what was below it). A hard link names the inode its
//! target has when the link is listed, so a file replaced later keeps its other names
//! with its old contents, as a hard link keeps the old inode on disk.
//!
//! Directories and inodes live in vectors and refer to each other by index, never as a
//! nested tree, so that nothing here recurses or drops recursively however deep the
//! names go.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use super::error::EntryError;
use crate::builder::tree::{Kind, Node, NodeId, Tree};

/// Index of a non-directory inode: what a hard link shares.
pub(super) type InodeId = usize;

/// What a name in a directory refers to.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// A directory, by index in `Namespace::dirs`.
    Dir(usize),
    /// A name of a non-directory inode, by index in `Namespace::names`.
    Name(usize),
}

/// A directory with its children by name.
struct Dir {
    node: Node,
    children: BTreeMap<Vec<u8>, Slot>,
}

/// One name of a non-directory inode.
struct Name {
    inode: InodeId,
    /// The name's own source path, for messages.
    source: PathBuf,
}

/// The namespace so far. Directory 0 is the root.
pub(super) struct Namespace {
    toc: PathBuf,
    dirs: Vec<Dir>,
    names: Vec<Name>,
    inodes: Vec<Node>,
}

/// A directory node with default metadata, for the root and for directories the TOC
/// implies (uses in a path without listing them).
pub(super) fn dir_node(source: PathBuf) -> Node {
    Node::implied_dir(source)
}

/// `parts` joined with `/`, for messages and source paths.
pub(super) fn shown(parts: &[Vec<u8>]) -> String {
    parts
        .iter()
        .map(|c| String::from_utf8_lossy(c))
        .collect::<Vec<_>>()
        .join("/")
}

impl Namespace {
    /// An empty layer: only its root, which takes metadata from `./` if the TOC lists it.
    pub(super) fn new(toc: &Path) -> Self {
        Namespace {
            toc: toc.to_path_buf(),
            dirs: vec![Dir {
                node: dir_node(toc.to_path_buf()),
                children: BTreeMap::new(),
            }],
            names: Vec::new(),
            inodes: Vec::new(),
        }
    }

    /// The root's node.
    pub(super) fn root_mut(&mut self) -> &mut Node {
        &mut self.dirs[0].node
    }

    /// The directory at `parts`, creating the missing ones on the way.
    fn dir_at(&mut self, parts: &[Vec<u8>]) -> Result<usize, EntryError> {
        let mut at = 0;
        for (depth, part) in parts.iter().enumerate() {
            at = match self.dirs[at].children.get(part) {
                Some(Slot::Dir(d)) => *d,
                Some(Slot::Name(_)) => {
                    return Err(EntryError::NotADirectory {
                        path: format!("/{}", shown(&parts[..=depth])),
                    })
                }
                None => {
                    let source = self.toc.join(shown(&parts[..=depth]));
                    let d = self.dirs.len();
                    self.dirs.push(Dir {
                        node: dir_node(source),
                        children: BTreeMap::new(),
                    });
                    self.dirs[at].children.insert(part.clone(), Slot::Dir(d));
                    d
                }
            };
        }
        Ok(at)
    }

    /// Parent directory and last component of a name; `parts` is never empty (the root
    /// is named by no components and takes no entry here).
    fn parent_of<'p>(&mut self, parts: &'p [Vec<u8>]) -> Result<(usize, &'p [u8]), EntryError> {
        let (name, parent) = parts
            .split_last()
            .expect("components() gives the root as None, other names as parts");
        Ok((self.dir_at(parent)?, name))
    }

    /// Lists the directory `node` at `parts`: a directory already there keeps its
    /// children; anything else there is replaced by an empty directory.
    pub(super) fn put_dir(&mut self, parts: &[Vec<u8>], node: Node) -> Result<(), EntryError> {
        let (parent, name) = self.parent_of(parts)?;
        match self.dirs[parent].children.get(name).copied() {
            Some(Slot::Dir(d)) => self.dirs[d].node = node,
            _ => {
                let d = self.dirs.len();
                self.dirs.push(Dir {
                    node,
                    children: BTreeMap::new(),
                });
                self.dirs[parent]
                    .children
                    .insert(name.to_vec(), Slot::Dir(d));
            }
        }
        Ok(())
    }

    /// Puts a new non-directory inode `node` at `parts`, replacing whatever was there.
    pub(super) fn put_inode(
        &mut self,
        parts: &[Vec<u8>],
        node: Node,
    ) -> Result<InodeId, EntryError> {
        let (parent, name) = self.parent_of(parts)?;
        let inode = self.inodes.len();
        self.names.push(Name {
            inode,
            source: node.source.clone(),
        });
        self.inodes.push(node);
        let slot = Slot::Name(self.names.len() - 1);
        self.dirs[parent].children.insert(name.to_vec(), slot);
        Ok(inode)
    }

    /// The inode at `parts` now, if that is a non-directory.
    fn inode_at(&self, parts: &[Vec<u8>]) -> Option<InodeId> {
        let (last, parent) = parts.split_last()?;
        let mut at = 0;
        for part in parent {
            match self.dirs[at].children.get(part)? {
                Slot::Dir(d) => at = *d,
                Slot::Name(_) => return None,
            }
        }
        match self.dirs[at].children.get(last)? {
            Slot::Name(n) => Some(self.names[*n].inode),
            Slot::Dir(_) => None,
        }
    }

    /// Gives the inode at `target` (a non-directory listed earlier) the name `parts`,
    /// replacing whatever `parts` held.
    pub(super) fn link(
        &mut self,
        parts: &[Vec<u8>],
        target: &[Vec<u8>],
        target_shown: &str,
    ) -> Result<(), EntryError> {
        let inode = self
            .inode_at(target)
            .ok_or_else(|| EntryError::HardLinkTarget {
                target: target_shown.to_string(),
            })?;
        let source = self.toc.join(shown(parts));
        let (parent, name) = self.parent_of(parts)?;
        self.names.push(Name { inode, source });
        let slot = Slot::Name(self.names.len() - 1);
        self.dirs[parent].children.insert(name.to_vec(), slot);
        Ok(())
    }

    /// The tree breadth first, children in name order, and the tree's nodes for each
    /// inode (empty for an inode no name reaches any more). The first name of an inode
    /// met is its node; later ones are hard links to it with its metadata.
    pub(super) fn flatten(mut self) -> (Tree, Vec<Vec<NodeId>>) {
        let mut tree = Tree::default();
        let mut nodes_of: Vec<Vec<NodeId>> = vec![Vec::new(); self.inodes.len()];
        let mut queue: VecDeque<(Slot, NodeId, Vec<u8>)> = VecDeque::new();
        queue.push_back((Slot::Dir(0), 0, Vec::new()));
        while let Some((slot, parent, name)) = queue.pop_front() {
            let id = tree.nodes.len();
            let mut node = match slot {
                Slot::Dir(d) => {
                    // Each directory sits in one place: its contents can move out.
                    let dir = &mut self.dirs[d];
                    let mut node = std::mem::replace(&mut dir.node, dir_node(PathBuf::new()));
                    let children = std::mem::take(&mut dir.children);
                    let subdirs = children
                        .values()
                        .filter(|s| matches!(s, Slot::Dir(_)))
                        .count();
                    node.nlink = u32::try_from(subdirs).unwrap_or(u32::MAX).saturating_add(2);
                    node.kind = Kind::Dir(Vec::with_capacity(children.len()));
                    for (child_name, child) in children {
                        queue.push_back((child, id, child_name));
                    }
                    node
                }
                Slot::Name(n) => {
                    let Name { inode, source } = &self.names[n];
                    let mut node = self.inodes[*inode].clone();
                    node.source = source.clone();
                    node.nlink = 1;
                    node.hardlink_of = None;
                    if let Some(&first) = nodes_of[*inode].first() {
                        node.hardlink_of = Some(first);
                        tree.nodes[first].nlink = tree.nodes[first].nlink.saturating_add(1);
                    }
                    nodes_of[*inode].push(id);
                    node
                }
            };
            node.name = name;
            node.parent = parent;
            tree.nodes.push(node);
            if id != 0 {
                if let Kind::Dir(kids) = &mut tree.nodes[parent].kind {
                    kids.push(id);
                }
            }
        }
        (tree, nodes_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(path: &str) -> Vec<Vec<u8>> {
        path.split('/').map(|p| p.as_bytes().to_vec()).collect()
    }

    fn file(source: &str, size: u64) -> Node {
        Node {
            kind: Kind::File,
            mode: libc::S_IFREG | 0o644,
            size,
            ..dir_node(PathBuf::from(source))
        }
    }

    /// Paths of the flattened tree with what each is.
    fn listing(tree: &Tree) -> Vec<String> {
        (0..tree.nodes.len())
            .map(|id| {
                let n = &tree.nodes[id];
                let what = match (&n.kind, n.hardlink_of) {
                    (Kind::Dir(_), _) => format!("dir nlink {}", n.nlink),
                    (_, Some(f)) => {
                        format!("link to {}", String::from_utf8_lossy(&tree.image_path(f)))
                    }
                    _ => format!("size {} nlink {}", n.size, n.nlink),
                };
                format!("{} {what}", String::from_utf8_lossy(&tree.image_path(id)))
            })
            .collect()
    }

    /// A path listed again: a directory keeps its children, a file is replaced, a type
    /// change replaces (with what was below), and hard links keep the inode they named.
    #[test]
    fn later_entries_replace_earlier_ones_as_tar_would() {
        let mut ns = Namespace::new(Path::new("t.json"));
        ns.put_dir(&parts("d"), dir_node("t.json/d".into()))
            .unwrap();
        let old = ns.put_inode(&parts("d/f"), file("t.json/d/f", 1)).unwrap();
        ns.link(&parts("d/link"), &parts("d/f"), "d/f").unwrap();
        let gone = ns
            .put_inode(&parts("gone/x"), file("t.json/gone/x", 3))
            .unwrap();
        // Again: the directory with new metadata, the file with new contents.
        let mut again = dir_node("t.json/d".into());
        again.mode = libc::S_IFDIR | 0o700;
        ns.put_dir(&parts("d"), again).unwrap();
        let new = ns.put_inode(&parts("d/f"), file("t.json/d/f", 2)).unwrap();
        // A directory replaced by a file, and the other way round.
        ns.put_inode(&parts("gone"), file("t.json/gone", 4))
            .unwrap();
        ns.put_dir(&parts("d/link2"), dir_node("t.json/d/link2".into()))
            .unwrap();
        ns.link(&parts("d/link2"), &parts("d/link"), "d/link")
            .unwrap();

        let (tree, nodes_of) = ns.flatten();
        assert_eq!(
            listing(&tree),
            [
                "/ dir nlink 3",
                "/d dir nlink 2",
                "/gone size 4 nlink 1",
                "/d/f size 2 nlink 1",
                "/d/link size 1 nlink 2",
                "/d/link2 link to /d/link",
            ]
        );
        assert_eq!(tree.nodes[1].mode, libc::S_IFDIR | 0o700);
        assert_eq!(nodes_of[old], [4, 5]);
        assert_eq!(nodes_of[new], [3]);
        assert!(nodes_of[gone].is_empty(), "gone/x is gone");
        assert_eq!(tree.nodes[5].source, Path::new("t.json/d/link2"));
    }

    #[test]
    fn names_through_a_non_directory_and_links_to_directories_are_refused() {
        let mut ns = Namespace::new(Path::new("t.json"));
        ns.put_inode(&parts("f"), file("t.json/f", 1)).unwrap();
        assert!(matches!(
            ns.put_inode(&parts("f/x"), file("t.json/f/x", 1)),
            Err(EntryError::NotADirectory { path }) if path == "/f"
        ));
        ns.put_dir(&parts("d"), dir_node("t.json/d".into()))
            .unwrap();
        for target in ["d", "nowhere", "f/x"] {
            assert!(matches!(
                ns.link(&parts("l"), &parts(target), target),
                Err(EntryError::HardLinkTarget { .. })
            ));
        }
    }
}
