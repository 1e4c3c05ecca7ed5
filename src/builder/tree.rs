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
