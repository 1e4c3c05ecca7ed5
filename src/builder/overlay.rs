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

impl Entry {
    fn is_dir(&self) -> bool {
        matches!(self.node.kind, Kind::Dir(_))
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
    fn build(slots: &mut [Option<Node>], links: &[Option<(u32, u64)>], id: NodeId) -> Entry {
        let mut node = slots[id].take().expect("each node is nested once");
        let kids = match &mut node.kind {
            Kind::Dir(kids) => std::mem::take(kids),
            _ => Vec::new(),
        };
        // Children come in name order: the map is built from sorted input in one go.
        let children = kids
            .into_iter()
            .map(|k| {
                let mut child = build(slots, links, k);
                (std::mem::take(&mut child.node.name), child)
            })
            .collect();
        Entry {
            node,
            link: links[id],
            children,
        }
    }
    build(&mut slots, &links, 0)
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
    if spec == WhiteoutSpec::Overlayfs {
        e.node.xattrs.retain(|(n, _)| n != OVERLAY_OPAQUE_XATTR);
    }
    e.children.retain(|name, child| {
        if let Some(w) = whiteout_of(name, child, spec) {
            warn_if_data(name, child, &w);
            false
        } else {
            clean(child, spec);
            true
        }
    });
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
    let Entry { node, children, .. } = upper;
    let mut keep_lower_xattr_strip = node;
    if spec == WhiteoutSpec::Overlayfs {
        keep_lower_xattr_strip
            .xattrs
            .retain(|(n, _)| n != OVERLAY_OPAQUE_XATTR);
    }
    lower.node = keep_lower_xattr_strip;
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
    for (name, mut child) in rest {
        let merge = child.is_dir()
            && !is_overlay_opaque(&child, spec)
            && lower.children.get(&name).is_some_and(Entry::is_dir);
        if merge {
            let below = lower.children.get_mut(&name).expect("checked above");
            apply(below, child, spec);
        } else {
            clean(&mut child, spec);
            lower.children.insert(name, child);
        }
    }
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
        let mut node = entry.node;
        node.name = name;
        node.parent = if id == 0 { 0 } else { parent };
        node.hardlink_of = None;
        node.nlink = 1;
        if let Some(key) = entry.link {
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
            let subdirs = entry.children.values().filter(|c| c.is_dir()).count();
            node.nlink = 2 + subdirs as u32;
        }
        tree.nodes.push(node);
        if let Some(p) = (id != 0).then_some(parent) {
            if let Kind::Dir(kids) = &mut tree.nodes[p].kind {
                kids.push(id);
            }
        }
        for (n, child) in entry.children {
            queue.push_back((child, id, n));
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

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
