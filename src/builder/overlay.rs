//! Layers: applying an upper layer onto a lower tree with OCI or overlayfs whiteouts, the
//! way container runtimes and the kernel's overlayfs do.
//!
//! Trees are merged in a nested form ([`Entry`]) and flattened back into the breadth-first
//! [`Tree`] the bootstrap writer takes. Hard links are tracked by a link key (layer, inode
//! identity) so that a group keeps one inode and its link count follows what survives.
//!
//! Rules (upper entry at path P):
//! - OCI: `.wh.NAME` removes NAME from the lower layers; `.wh..wh..opq` in a directory
//!   hides all of that directory's lower entries. overlayfs: a character device 0/0 named
//!   NAME removes NAME; a directory with `trusted.overlay.opaque=y` hides its lower
//!   entries (the xattr itself is dropped, as overlayfs hides it). `none`: no whiteouts.
//! - Whiteouts apply before the upper layer's own entries, so `.wh.x` and a new `x` in one
//!   layer leave the new `x`. A whiteout naming nothing is ignored. Markers never appear
//!   in the result. An OCI whiteout that carries data is still a whiteout (the data is
//!   ignored, with a warning).
//! - A directory over a directory merges: the upper one's metadata, both sets of
//!   children. Anything else over anything replaces it.
//!
//! Nothing here recurses: walks keep their own stack, and dropping an [`Entry`] takes its
//! tree apart level by level, so a tree as deep as a layer can make it (a TOC's names are
//! bounded only by the reader's depth limit) needs no more of the thread's stack than a
//! flat one.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::tree::{Kind, Node, NodeId, Tree};

/// How whiteouts are spelled in upper layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WhiteoutSpec {
    /// `.wh.NAME` and `.wh..wh..opq` files (OCI image spec).
    #[default]
    Oci,
    /// Character devices 0/0 and `trusted.overlay.opaque=y` (kernel overlayfs).
    Overlayfs,
    /// Names are taken literally.
    None,
}

/// OCI whiteout prefix.
pub const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker.
pub const OCI_OPAQUE: &[u8] = b".wh..wh..opq";
/// overlayfs opaque xattr.
pub const OVERLAY_OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// A tree node with its children by name.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The node (its name, its `kind` children list, `parent` and `hardlink_of` are
    /// ignored here: the name is the key in the parent's `children`).
    pub node: Node,
    /// Hard-link identity: entries sharing a key are one inode.
    pub link: Option<(u32, u64)>,
    /// Children by name.
    pub children: BTreeMap<Vec<u8>, Entry>,
}

/// An entry's children by name.
type Children = BTreeMap<Vec<u8>, Entry>;

impl Entry {
    fn is_dir(&self) -> bool {
        matches!(self.node.kind, Kind::Dir(_))
    }

    /// The node and the children, taken out (an `Entry` cannot be taken apart by a
    /// pattern: it implements `Drop`).
    fn into_parts(mut self) -> (Node, Option<(u32, u64)>, Children) {
        let children = std::mem::take(&mut self.children);
        let node = std::mem::replace(&mut self.node, placeholder_node());
        (node, self.link, children)
    }
}

/// A node that owns no memory, left behind in an `Entry` whose node was taken.
pub(crate) fn placeholder_node() -> Node {
    Node {
        name: Vec::new(),
        source: std::path::PathBuf::new(),
        parent: 0,
        kind: Kind::Fifo,
        mode: 0,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        mtime_nsec: 0,
        rdev: 0,
        xattrs: Vec::new(),
        hardlink_of: None,
        nlink: 0,
        data: super::tree::FileData::Source,
    }
}

impl Drop for Entry {
    /// Takes the tree apart level by level: the derived drop would recurse once per level
    /// (several stack frames each) and overflow the stack on a deep enough tree.
    fn drop(&mut self) {
        let mut pending: Vec<Children> = vec![std::mem::take(&mut self.children)];
        while let Some(children) = pending.pop() {
            for (_, mut child) in children {
                if !child.children.is_empty() {
                    pending.push(std::mem::take(&mut child.children));
                }
                // `child` drops here with no children left: no recursion.
            }
        }
    }
}

/// Converts a flat tree into nested form; hard links get keys in `layer`. The nodes are
/// moved, not copied: copying them was a tenth of a second of the Linux source tree's
/// build, with nothing else running.
pub fn nest(tree: Tree, layer: u32) -> Entry {
    let Tree { nodes } = tree;
    let links: Vec<Option<(u32, u64)>> = nodes
        .iter()
        .enumerate()
        .map(|(id, own)| {
            let primary = own.hardlink_of.unwrap_or(id);
            let linked = !matches!(nodes[primary].kind, Kind::Dir(_))
                && (own.hardlink_of.is_some() || nodes[primary].nlink > 1);
            linked.then_some((layer, primary as u64))
        })
        .collect();
    // Later names of hard-linked inodes, copied before the nodes are moved out.
    let copies: Vec<(NodeId, Node)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(id, own)| Some((id, later_name(own, &nodes[own.hardlink_of?]))))
        .collect();
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    for (id, node) in copies {
        slots[id] = Some(node);
    }
    /// A directory being nested: its node, its children still to nest, and those done.
    struct Nesting {
        id: NodeId,
        node: Node,
        kids: std::vec::IntoIter<NodeId>,
        done: Vec<(Vec<u8>, Entry)>,
    }
    let start = |slots: &mut [Option<Node>], id: NodeId| {
        let mut node = slots[id].take().expect("each node is nested once");
        let kids = match &mut node.kind {
            Kind::Dir(kids) => std::mem::take(kids),
            _ => Vec::new(),
        };
        Nesting {
            id,
            node,
            kids: kids.into_iter(),
            done: Vec::new(),
        }
    };
    // Depth first with a stack of the directories on the current path.
    let mut stack = vec![start(&mut slots, 0)];
    loop {
        let top = stack
            .last_mut()
            .expect("the walk ends when the stack empties");
        if let Some(k) = top.kids.next() {
            let next = start(&mut slots, k);
            stack.push(next);
            continue;
        }
        let Nesting {
            id, mut node, done, ..
        } = stack.pop().expect("not empty");
        let name = std::mem::take(&mut node.name);
        let entry = Entry {
            node,
            link: links[id],
            // Children come in name order: the map is built from sorted input in one go.
            children: done.into_iter().collect(),
        };
        match stack.last_mut() {
            Some(parent) => parent.done.push((name, entry)),
            None => return entry,
        }
    }
}

enum Whiteout<'a> {
    Remove(&'a [u8]),
    Opaque,
}

fn whiteout_of<'a>(name: &'a [u8], e: &Entry, spec: WhiteoutSpec) -> Option<Whiteout<'a>> {
    whiteout_named(name, &e.node, spec)
}

fn whiteout_named<'a>(name: &'a [u8], node: &Node, spec: WhiteoutSpec) -> Option<Whiteout<'a>> {
    match spec {
        WhiteoutSpec::Oci => {
            if name == OCI_OPAQUE {
                Some(Whiteout::Opaque)
            } else {
                name.strip_prefix(OCI_WHITEOUT_PREFIX).map(Whiteout::Remove)
            }
        }
        WhiteoutSpec::Overlayfs => {
            (node.kind == Kind::CharDevice && node.rdev == 0).then_some(Whiteout::Remove(name))
        }
        WhiteoutSpec::None => None,
    }
}

fn is_overlay_opaque(e: &Entry, spec: WhiteoutSpec) -> bool {
    spec == WhiteoutSpec::Overlayfs
        && e.is_dir()
        && e.node
            .xattrs
            .iter()
            .any(|(n, v)| n == OVERLAY_OPAQUE_XATTR && v == b"y")
}

/// Removes whiteout markers (which name nothing here) and overlayfs opaque xattrs from an
/// upper entry that lands without anything below it.
fn clean(e: &mut Entry, spec: WhiteoutSpec) {
    let mut pending = vec![e];
    while let Some(e) = pending.pop() {
        if spec == WhiteoutSpec::Overlayfs {
            e.node.xattrs.retain(|(n, _)| n != OVERLAY_OPAQUE_XATTR);
        }
        e.children
            .retain(|name, child| match whiteout_of(name, child, spec) {
                Some(w) => {
                    warn_if_data(name, child, &w);
                    false
                }
                None => true,
            });
        pending.extend(e.children.values_mut());
    }
}

fn warn_if_data(name: &[u8], e: &Entry, w: &Whiteout) {
    if matches!(w, Whiteout::Remove(_) | Whiteout::Opaque)
        && e.node.kind == Kind::File
        && e.node.size > 0
    {
        log::warn!(
            "{}: whiteout {:?} carries {} bytes of data; treated as a whiteout, data ignored",
            e.node.source.display(),
            String::from_utf8_lossy(name),
            e.node.size
        );
    }
}

/// Applies `upper` (a directory) onto `lower` (the directory at the same path).
pub fn apply(lower: &mut Entry, upper: Entry, spec: WhiteoutSpec) {
    /// A directory being merged: the lower one (taken out of its parent until done),
    /// the upper one's entries still to place, and its name in the parent.
    struct Merging {
        lower: Entry,
        rest: std::vec::IntoIter<(Vec<u8>, Entry)>,
        name: Vec<u8>,
    }
    let mut root_rest = merge_dir(lower, upper, spec);
    let mut stack: Vec<Merging> = Vec::new();
    loop {
        let (below, rest) = match stack.last_mut() {
            Some(m) => (&mut m.lower, &mut m.rest),
            None => (&mut *lower, &mut root_rest),
        };
        let Some((name, mut child)) = rest.next() else {
            // This directory is done: back into its parent.
            let Some(done) = stack.pop() else {
                break;
            };
            let parent = match stack.last_mut() {
                Some(m) => &mut m.lower,
                None => &mut *lower,
            };
            parent.children.insert(done.name, done.lower);
            continue;
        };
        let merge = child.is_dir()
            && !is_overlay_opaque(&child, spec)
            && below.children.get(&name).is_some_and(Entry::is_dir);
        if merge {
            let mut dir = below.children.remove(&name).expect("checked above");
            let rest = merge_dir(&mut dir, child, spec);
            stack.push(Merging {
                lower: dir,
                rest,
                name,
            });
        } else {
            clean(&mut child, spec);
            below.children.insert(name, child);
        }
    }
}

/// Applies the upper directory's own metadata and whiteouts onto `lower`; returns its
/// other entries, still to be placed.
fn merge_dir(
    lower: &mut Entry,
    upper: Entry,
    spec: WhiteoutSpec,
) -> std::vec::IntoIter<(Vec<u8>, Entry)> {
    let (mut node, _, children) = upper.into_parts();
    if spec == WhiteoutSpec::Overlayfs {
        node.xattrs.retain(|(n, _)| n != OVERLAY_OPAQUE_XATTR);
    }
    lower.node = node;
    // Whiteouts first.
    let mut rest = Vec::new();
    for (name, child) in children {
        match whiteout_of(&name, &child, spec) {
            Some(w) => {
                warn_if_data(&name, &child, &w);
                match w {
                    Whiteout::Remove(target) => {
                        lower.children.remove(target);
                    }
                    Whiteout::Opaque => lower.children.clear(),
                }
            }
            None => rest.push((name, child)),
        }
    }
    rest.into_iter()
}

/// The tree of a first layer, with nothing below it: what applying `upper` onto an empty
/// root gives. That is `upper` itself unless it holds whiteout markers or overlayfs opaque
/// xattrs to drop, which is the usual case: nesting and flattening a tree that changes
/// nothing took a fifth of a second on 200,000 files, with nothing else running.
pub fn first_layer(mut upper: Tree, spec: WhiteoutSpec) -> Tree {
    let marked = upper.nodes.iter().enumerate().any(|(id, node)| {
        (id != 0 && whiteout_named(&node.name, node, spec).is_some())
            || (spec == WhiteoutSpec::Overlayfs
                && node.xattrs.iter().any(|(n, _)| n == OVERLAY_OPAQUE_XATTR))
    });
    if marked {
        return onto_empty_root(upper, spec);
    }
    // Later names of hard-linked inodes as `nest` gives them.
    for id in 0..upper.nodes.len() {
        if let Some(first) = upper.nodes[id].hardlink_of {
            upper.nodes[id] = later_name(&upper.nodes[id], &upper.nodes[first]);
        }
    }
    upper
}

/// `upper` applied onto an empty root, nested and flattened back.
fn onto_empty_root(upper: Tree, spec: WhiteoutSpec) -> Tree {
    let mut root = empty_root(&upper.nodes[0]);
    apply(&mut root, nest(upper, 1), spec);
    flatten(root)
}

/// A later name `own` of a hard-linked inode: the first name's metadata, with its own name,
/// source path and place in the tree.
fn later_name(own: &Node, first: &Node) -> Node {
    Node {
        name: own.name.clone(),
        source: own.source.clone(),
        parent: own.parent,
        hardlink_of: own.hardlink_of,
        nlink: own.nlink,
        ..first.clone()
    }
}

/// An empty root to build a first layer on.
pub fn empty_root(template: &Node) -> Entry {
    Entry {
        node: template.clone(),
        link: None,
        children: BTreeMap::new(),
    }
}

/// Flattens a nested tree breadth first (children in name order), rebuilding parents,
/// hard-link groups and link counts.
pub fn flatten(root: Entry) -> Tree {
    let mut tree = Tree::default();
    let mut first_of: HashMap<(u32, u64), NodeId> = HashMap::new();
    let mut queue: VecDeque<(Entry, NodeId, Vec<u8>)> = VecDeque::new();
    queue.push_back((root, 0, Vec::new()));
    while let Some((entry, parent, name)) = queue.pop_front() {
        let id = tree.nodes.len();
        let subdirs = entry.children.values().filter(|c| c.is_dir()).count();
        let (mut node, link, children) = entry.into_parts();
        node.name = name;
        node.parent = if id == 0 { 0 } else { parent };
        node.hardlink_of = None;
        node.nlink = 1;
        if let Some(key) = link {
            match first_of.get(&key) {
                Some(&first) => {
                    node.hardlink_of = Some(first);
                    tree.nodes[first].nlink += 1;
                }
                None => {
                    first_of.insert(key, id);
                }
            }
        }
        let is_dir = matches!(node.kind, Kind::Dir(_));
        if is_dir {
            node.kind = Kind::Dir(Vec::new());
            node.nlink = 2 + subdirs as u32;
        }
        tree.nodes.push(node);
        if let Some(p) = (id != 0).then_some(parent) {
            if let Kind::Dir(kids) = &mut tree.nodes[p].kind {
                kids.push(id);
            }
        }
        for (n, child) in children {
            queue.push_back((child, id, n));
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root, `depth` nested directories `d`, and in the deepest a fifo named `leaf`.
    fn chain(depth: usize, leaf: &[u8]) -> Tree {
        let mut tree = Tree::default();
        let mut node = placeholder_node();
        node.kind = Kind::Dir(Vec::new());
        node.mode = libc::S_IFDIR | 0o755;
        for id in 0..=depth + 1 {
            let mut n = node.clone();
            n.parent = id.saturating_sub(1);
            if id > 0 {
                n.name = b"d".to_vec();
                if let Kind::Dir(kids) = &mut tree.nodes[id - 1].kind {
                    kids.push(id);
                }
            }
            if id == depth + 1 {
                n.name = leaf.to_vec();
                n.kind = Kind::Fifo;
                n.mode = libc::S_IFIFO | 0o644;
            }
            tree.nodes.push(n);
        }
        tree
    }

    /// Trees far deeper than the stack allows recursion for (the test thread has 2 MiB)
    /// nest, merge directory into directory all the way down, clean, flatten and drop.
    /// Each of those recursed once per level, and overflowed the stack.
    #[test]
    fn deep_trees_are_walked_without_recursion() {
        let depth = 100_000;
        let mut merged = nest(chain(depth, b"old"), 0);
        apply(
            &mut merged,
            nest(chain(depth, b".wh.old"), 1),
            WhiteoutSpec::Oci,
        );
        let tree = flatten(merged);
        assert_eq!(tree.nodes.len(), depth + 1, "the whiteout removed old");
        let first = onto_empty_root(chain(depth, b".wh.x"), WhiteoutSpec::Oci);
        assert_eq!(first.nodes.len(), depth + 1, "the marker is gone");
        drop(nest(chain(depth, b"f"), 0));
    }

    /// A first layer without markers is taken as read, and that is the tree nesting,
    /// applying and flattening gives: same nodes in the same order, parents, children,
    /// hard-link groups and link counts. With a marker, the marker is dropped.
    #[test]
    fn first_layer_is_the_tree_nesting_and_flattening_gives() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["a/b/c", "a/e", "z", "m/n"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (f, data) in [
            ("a/one", "1"),
            ("a/b/two", "22"),
            ("z/three", ""),
            ("m/n/four", "4"),
        ] {
            std::fs::write(root.join(f), data).unwrap();
        }
        // One inode under three names in three directories, and a hard-linked symlink.
        std::fs::hard_link(root.join("a/one"), root.join("z/one-again")).unwrap();
        std::fs::hard_link(root.join("a/one"), root.join("a/b/c/once-more")).unwrap();
        std::os::unix::fs::symlink("two", root.join("a/b/link")).unwrap();
        std::fs::hard_link(root.join("a/b/link"), root.join("m/link-again")).unwrap();

        let read = || crate::builder::source::dir::read_tree(root).unwrap();
        let shown = |t: &Tree| format!("{:#?}", t.nodes);
        for spec in [
            WhiteoutSpec::Oci,
            WhiteoutSpec::Overlayfs,
            WhiteoutSpec::None,
        ] {
            let fast = first_layer(read(), spec);
            assert!(
                fast.nodes
                    .iter()
                    .filter(|n| n.hardlink_of.is_some())
                    .count()
                    == 3
            );
            assert_eq!(
                shown(&fast),
                shown(&onto_empty_root(read(), spec)),
                "{spec:?}"
            );
        }

        std::fs::write(root.join("a/e/.wh.gone"), "").unwrap();
        let oci = first_layer(read(), WhiteoutSpec::Oci);
        assert!(oci.nodes.iter().all(|n| n.name != b".wh.gone"));
        assert_eq!(
            shown(&oci),
            shown(&onto_empty_root(read(), WhiteoutSpec::Oci))
        );
        let literal = first_layer(read(), WhiteoutSpec::None);
        assert!(literal.nodes.iter().any(|n| n.name == b".wh.gone"));
    }
}
