//! The in-memory filesystem tree a build works on: every entry of the source with its
//! metadata, in the order the bootstrap will list the inodes (breadth first, children
//! sorted by name bytes). The source stage fills it; the chunker and the bootstrap writer
//! read it.

use std::path::PathBuf;

use crate::format::v6::tables::ChunkInfo;

/// Index of a node in `Tree::nodes`; the root is 0.
pub type NodeId = usize;

/// What kind of entry a node is, with the data that only that kind has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Directory; children in name order.
    Dir(Vec<NodeId>),
    /// Regular file.
    File,
    /// Symbolic link with its target.
    Symlink(Vec<u8>),
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// One entry of the tree.
#[derive(Clone, Debug)]
pub struct Node {
    /// Name in its parent directory (empty for the root).
    pub name: Vec<u8>,
    /// Path of the entry in the source, for reading data and for error messages.
    pub source: PathBuf,
    /// Parent directory (the root is its own parent).
    pub parent: NodeId,
    /// Entry kind.
    pub kind: Kind,
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (regular files) as seen when the tree was read.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device number for device nodes, Linux `st_rdev` encoding.
    pub rdev: u64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For the second and later names of a hard-linked inode: the first name's node.
    pub hardlink_of: Option<NodeId>,
    /// Number of names this inode has inside the tree (set on the first name).
    pub nlink: u32,
    /// Where a regular file's data comes from.
    pub data: FileData,
}

/// The data of a regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileData {
    /// Read it from `Node::source` and chunk it into the new blob.
    Source,
    /// Already stored: these chunks (of a parent image's blobs), in file order.
    Chunks(Vec<ChunkInfo>),
    /// Chunked by this build as its source was read (a tar stream): in the new blob, or
    /// found among the known chunks; in file order.
    Chunked(Vec<ChunkRef>),
}

/// Where one chunk of a file this build chunks ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkRef {
    /// This index in the new blob.
    New(u32),
    /// A chunk that already exists elsewhere (a chunk dictionary's blob).
    Known(ChunkInfo),
}

impl Node {
    /// A directory with default metadata (0755, owner 0:0, mtime 0), as upstream 2.2.0
    /// makes the root and the directories a tar or an eStargz TOC uses in a path without
    /// listing them.
    pub fn implied_dir(source: PathBuf) -> Node {
        Node {
            name: Vec::new(),
            source,
            parent: 0,
            kind: Kind::Dir(Vec::new()),
            mode: libc::S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            rdev: 0,
            xattrs: Vec::new(),
            hardlink_of: None,
            nlink: 2,
            data: FileData::Source,
        }
    }
}

/// The whole tree, breadth first.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// All nodes; `nodes[0]` is the root.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Number of distinct inodes (hard links counted once).
    pub fn inode_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.hardlink_of.is_none())
            .count()
    }

    /// Node ids in depth-first order, children in name order, starting at the root.
    pub fn depth_first(&self) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![0];
        while let Some(id) = stack.pop() {
            out.push(id);
            if let Kind::Dir(children) = &self.nodes[id].kind {
                stack.extend(children.iter().rev());
            }
        }
        out
    }

    /// Path of a node inside the image, starting with `/`.
    pub fn image_path(&self, mut id: NodeId) -> Vec<u8> {
        let mut parts = Vec::new();
        while id != 0 {
            parts.push(self.nodes[id].name.as_slice());
            id = self.nodes[id].parent;
        }
        let mut out = Vec::new();
        for part in parts.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(part);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Also a tree sketcher for the unit tests of later stages (the bootstrap writer, the
    //! reader), which need trees that no directory on disk has to hold.

    use super::*;

    /// Builds a [`Tree`] by hand, keeping its invariants: children sorted by name,
    /// directory link counts of 2 plus subdirectories, hard links counted on the first
    /// name. Nodes get fixed metadata, to be changed through [`Sketch::node`].
    pub(crate) struct Sketch {
        /// The tree so far.
        pub tree: Tree,
    }

    impl Sketch {
        /// A tree of only its root, mode 0755.
        pub fn new() -> Self {
            let mut sketch = Sketch {
                tree: Tree::default(),
            };
            sketch.push(0, b"", Kind::Dir(Vec::new()), 0o755);
            sketch
        }

        fn push(&mut self, parent: NodeId, name: &[u8], kind: Kind, perm: u32) -> NodeId {
            let file_type = match kind {
                Kind::Dir(_) => libc::S_IFDIR,
                Kind::File => libc::S_IFREG,
                Kind::Symlink(_) => libc::S_IFLNK,
                Kind::CharDevice => libc::S_IFCHR,
                Kind::BlockDevice => libc::S_IFBLK,
                Kind::Fifo => libc::S_IFIFO,
                Kind::Socket => libc::S_IFSOCK,
            };
            let (size, nlink) = match &kind {
                Kind::Symlink(target) => (target.len() as u64, 1),
                Kind::Dir(_) => (0, 2),
                _ => (0, 1),
            };
            self.tree.nodes.push(Node {
                name: name.to_vec(),
                source: PathBuf::from(String::from_utf8_lossy(name).into_owned()),
                parent,
                kind,
                mode: file_type | perm,
                uid: 1000,
                gid: 100,
                size,
                mtime: 1_700_000_000,
                mtime_nsec: 0,
                rdev: 0,
                xattrs: Vec::new(),
                hardlink_of: None,
                nlink,
                data: FileData::Source,
            });
            self.tree.nodes.len() - 1
        }

        /// Adds `name` under directory `parent`.
        pub fn add(&mut self, parent: NodeId, name: &[u8], kind: Kind, perm: u32) -> NodeId {
            let is_dir = matches!(kind, Kind::Dir(_));
            let id = self.push(parent, name, kind, perm);
            let nodes = &mut self.tree.nodes;
            if is_dir {
                nodes[parent].nlink += 1;
            }
            let mut children = match &mut nodes[parent].kind {
                Kind::Dir(children) => std::mem::take(children),
                _ => panic!("parent {parent} is not a directory"),
            };
            let at = children.partition_point(|&c| nodes[c].name.as_slice() < name);
            children.insert(at, id);
            nodes[parent].kind = Kind::Dir(children);
            id
        }

        /// Adds a directory.
        pub fn dir(&mut self, parent: NodeId, name: &str) -> NodeId {
            self.add(parent, name.as_bytes(), Kind::Dir(Vec::new()), 0o755)
        }

        /// Adds a regular file of `size` bytes.
        pub fn file(&mut self, parent: NodeId, name: &str, size: u64) -> NodeId {
            let id = self.add(parent, name.as_bytes(), Kind::File, 0o644);
            self.tree.nodes[id].size = size;
            id
        }

        /// Adds a symlink.
        pub fn symlink(&mut self, parent: NodeId, name: &str, target: &[u8]) -> NodeId {
            self.add(
                parent,
                name.as_bytes(),
                Kind::Symlink(target.to_vec()),
                0o777,
            )
        }

        /// Adds another name for the inode of `first`.
        pub fn hard_link(&mut self, parent: NodeId, name: &str, first: NodeId) -> NodeId {
            let of = self.tree.nodes[first].clone();
            let id = self.add(parent, name.as_bytes(), of.kind, of.mode & 0o7777);
            let node = &mut self.tree.nodes[id];
            (node.size, node.hardlink_of) = (of.size, Some(first));
            self.tree.nodes[first].nlink += 1;
            id
        }

        /// A node, to change its metadata.
        pub fn node(&mut self, id: NodeId) -> &mut Node {
            &mut self.tree.nodes[id]
        }
    }

    /// root: a, d/ (x, e/ (y)), b: a hard link of a.
    fn sample() -> (Tree, [NodeId; 7]) {
        let mut s = Sketch::new();
        let d = s.dir(0, "d");
        let a = s.file(0, "a", 10);
        let x = s.file(d, "x", 0);
        let e = s.dir(d, "e");
        let y = s.symlink(e, "y", b"../x");
        let b = s.hard_link(0, "b", a);
        (s.tree, [0, d, a, x, e, y, b])
    }

    #[test]
    fn depth_first_visits_children_in_name_order() {
        let (tree, [root, d, a, x, e, y, b]) = sample();
        assert_eq!(tree.depth_first(), [root, a, b, d, e, y, x]);
    }

    #[test]
    fn image_paths_join_names_from_the_root() {
        let (tree, [root, d, a, x, e, y, b]) = sample();
        let cases = [
            (root, "/"),
            (d, "/d"),
            (a, "/a"),
            (x, "/d/x"),
            (e, "/d/e"),
            (y, "/d/e/y"),
            (b, "/b"),
        ];
        for (id, path) in cases {
            assert_eq!(tree.image_path(id), path.as_bytes(), "node {id}");
        }
    }

    #[test]
    fn hard_links_count_once_and_link_counts_add_up() {
        let (tree, [root, d, a, _, e, y, b]) = sample();
        assert_eq!(tree.nodes.len(), 7);
        assert_eq!(tree.inode_count(), 6);
        assert_eq!(tree.nodes[a].nlink, 2);
        assert_eq!(tree.nodes[b].hardlink_of, Some(a));
        assert_eq!((tree.nodes[root].nlink, tree.nodes[d].nlink), (3, 3));
        assert_eq!(tree.nodes[e].nlink, 2);
        assert_eq!(tree.nodes[y].size, 4);
    }
}
