//! Prefetch hints: which files a reader should fetch before they are asked for, as
//! upstream 2.2.0's `--prefetch-policy` records them for RAFS v6.
//!
//! Patterns are absolute paths in the image, read one a line (see [`read_patterns`]).
//! They act in two places of the flow:
//! - the blob: with policy `fs` or `blob`, a directory build stores the data of the files
//!   the patterns cover first, in path order ([`Prefetch::file_order`]), so that a reader
//!   fetching them reads the blob's head; a tar layer is stored in stream order, as
//!   upstream stores it;
//! - the bootstrap: with policy `fs`, a prefetch table lists, for each pattern in order,
//!   the inode it names ([`prefetch_nodes`]); the bootstrap writer turns those into nids.
//!
//! Upstream's rules, found by reading its builder and by building with it:
//! - a pattern names the entry at exactly that path (compared component by component, so
//!   `/a/b/` is `/a/b`); a directory pattern also covers every regular file below it for
//!   the blob order, and `/` covers everything;
//! - the table has one 4-byte slot per distinct pattern: the matched ones hold the nid of
//!   their entry, in pattern order, and the slots of patterns that matched nothing (a
//!   missing path, an empty regular file) are left zero at the table's end, where a
//!   reader stops;
//! - a pattern below another is kept (upstream means to drop it, but compares against
//!   the earlier line with its newline, which never matches);
//! - `blob` writes no table. RAFS v6's blob table entry has no readahead fields, so the
//!   readahead range upstream computes for `blob` is not stored: its blob entries read
//!   back 0/0, as ours do; what remains of `blob` is the blob order.

use std::io::BufRead;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use super::tree::{Kind, NodeId, Tree};

/// `--prefetch-policy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefetchPolicy {
    /// No hints: the blob in its usual order, no table.
    #[default]
    None,
    /// A prefetch table in the bootstrap, and the covered files first in the blob.
    Fs,
    /// The covered files first in the blob (for a reader prefetching the blob's head).
    Blob,
}

/// A policy with its patterns, as a build or a merge takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prefetch {
    /// What to do with the patterns.
    pub policy: PrefetchPolicy,
    /// Distinct absolute paths in the image, in the order given.
    pub patterns: Vec<PathBuf>,
}

/// Why prefetch patterns could not be read.
#[derive(Debug, Error)]
pub enum PrefetchError {
    /// The input could not be read, or a line is not UTF-8 (upstream refuses it too).
    #[error("prefetch pattern on line {line}: cannot read it")]
    Read {
        /// The line, from 1.
        line: usize,
        /// The OS or UTF-8 error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads prefetch patterns, one a line, as upstream reads them: each trimmed of white
/// space; a blank line skipped; a line that is not an absolute path skipped with a warning;
/// a path given again (component by component: `/a/` is `/a`) kept once, where it first
/// came.
pub fn read_patterns(input: impl BufRead) -> Result<Vec<PathBuf>, PrefetchError> {
    let mut patterns: Vec<PathBuf> = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|source| PrefetchError::Read {
            line: i + 1,
            source,
        })?;
        let pattern = Path::new(line.trim());
        if pattern.as_os_str().is_empty() {
            continue; // upstream warns about blank lines too; nothing is lost here
        }
        if !pattern.is_absolute() {
            log::warn!(
                "prefetch pattern on line {} ({line:?}) is not an absolute path: skipped",
                i + 1
            );
            continue;
        }
        if !patterns.iter().any(|p| p == pattern) {
            log::debug!("prefetch pattern {}", pattern.display());
            patterns.push(pattern.to_path_buf());
        }
    }
    Ok(patterns)
}

impl Prefetch {
    /// No prefetch hints.
    pub fn none() -> Self {
        Prefetch::default()
    }

    /// Whether the blob order or the bootstrap depends on this.
    pub fn is_active(&self) -> bool {
        self.policy != PrefetchPolicy::None
    }

    /// The table the bootstrap should carry: with policy `fs` and at least one pattern.
    pub fn table(&self, tree: &Tree) -> Option<PrefetchNodes> {
        (self.policy == PrefetchPolicy::Fs && !self.patterns.is_empty())
            .then(|| prefetch_nodes(tree, &self.patterns))
    }

    /// The regular files whose data goes first in the blob, in that order: every
    /// non-empty regular file a pattern names or lies below, in path order (component
    /// by component, as upstream's sorted map of paths orders them). Every name of a
    /// hard-linked file counts; a caller stores each inode at its first name's turn.
    /// Empty without an active policy.
    pub fn file_order(&self, tree: &Tree) -> Vec<NodeId> {
        if !self.is_active() || self.patterns.is_empty() {
            return Vec::new();
        }
        let mut covered = vec![false; tree.nodes.len()];
        for root in self.patterns.iter().filter_map(|p| resolve(tree, p)) {
            let mut stack = vec![root];
            while let Some(id) = stack.pop() {
                if std::mem::replace(&mut covered[id], true) {
                    continue;
                }
                if let Kind::Dir(children) = &tree.nodes[id].kind {
                    stack.extend(children.iter().copied());
                }
            }
        }
        // Children are in name order, so a depth-first walk visits paths in order
        // component by component: no sort needed.
        tree.depth_first()
            .into_iter()
            .filter(|&id| {
                let node = &tree.nodes[id];
                covered[id] && node.kind == Kind::File && node.size > 0
            })
            .collect()
    }
}

/// What the prefetch table of a tree holds before nids are known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefetchNodes {
    /// Number of table slots: one per pattern, matched or not.
    pub slots: usize,
    /// The entries patterns named, in pattern order (fewer than `slots` when some named
    /// nothing); a hard link's name stands for its inode.
    pub nodes: Vec<NodeId>,
}

/// The prefetch table of `tree` for `patterns` (distinct absolute paths, as
/// [`read_patterns`] gives them): per pattern, the entry at that path, unless there is
/// none or it is an empty regular file (upstream leaves both out).
///
/// This is what a merged tree's table is made of too: `merge --prefetch-policy fs` can
/// pass its own patterns to [`super::stored_tree_bootstrap_with`] through a [`Prefetch`].
pub fn prefetch_nodes(tree: &Tree, patterns: &[PathBuf]) -> PrefetchNodes {
    let nodes = patterns
        .iter()
        .filter_map(|p| resolve(tree, p))
        .filter(|&id| {
            let node = &tree.nodes[id];
            !(node.kind == Kind::File && node.size == 0)
        })
        .collect();
    PrefetchNodes {
        slots: patterns.len(),
        nodes,
    }
}

/// The node at absolute `path` in `tree`, if any. `.` components and repeated or
/// trailing slashes do not count; a `..` component matches nothing (no image path has
/// one).
pub fn resolve(tree: &Tree, path: &Path) -> Option<NodeId> {
    use std::os::unix::ffi::OsStrExt;
    if tree.nodes.is_empty() {
        return None;
    }
    let mut id: NodeId = 0;
    for part in path.components() {
        let name = match part {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name.as_bytes(),
            Component::ParentDir | Component::Prefix(_) => return None,
        };
        let Kind::Dir(children) = &tree.nodes[id].kind else {
            return None;
        };
        id = *children.iter().find(|&&c| tree.nodes[c].name == name)?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::tree::tests::Sketch;

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn patterns_are_read_as_upstream_reads_them() {
        let input = b"/a/b\n  /a/b/c \n\nrel/x\n/z\n/a/b/\n//a//b\n/a/./b\n/\n/\r\n".as_slice();
        assert_eq!(
            read_patterns(input).unwrap(),
            paths(&["/a/b", "/a/b/c", "/z", "/"])
        );
        assert!(read_patterns(b"".as_slice()).unwrap().is_empty());
        let err = read_patterns(b"/ok\n/\xff\n".as_slice()).unwrap_err();
        assert!(
            matches!(err, PrefetchError::Read { line: 2, .. }),
            "{err:?}"
        );
    }

    /// root: a/ (b/ (c/ (f1), g), big, empty), a-b, d/ (hl = a/b/g, sl -> a/b), z
    fn sample() -> (Tree, Vec<NodeId>) {
        let mut s = Sketch::new();
        let a = s.dir(0, "a");
        let ab = s.file(0, "a-b", 2);
        let d = s.dir(0, "d");
        let z = s.file(0, "z", 2);
        let b = s.dir(a, "b");
        let big = s.file(a, "big", 3_000_000);
        let empty = s.file(a, "empty", 0);
        let c = s.dir(b, "c");
        let g = s.file(b, "g", 2);
        let f1 = s.file(c, "f1", 6);
        let hl = s.hard_link(d, "hl", g);
        let sl = s.symlink(d, "sl", b"../a/b");
        let tree = s.tree;
        (tree, vec![a, ab, d, z, b, big, empty, c, g, f1, hl, sl])
    }

    #[test]
    fn the_table_lists_each_matched_pattern_in_order() {
        let (tree, ids) = sample();
        let [a, _ab, _d, z, b, _big, _empty, c, _g, _f1, hl, sl] = ids[..] else {
            unreachable!()
        };
        let pats = paths(&[
            "/a/b",
            "/a/b/c",
            "/missing",
            "/z",
            "/d/sl",
            "/a/empty",
            "/d/hl",
            "/a",
            "/a/b/c/f1/x",
            "/a/../z",
        ]);
        let table = prefetch_nodes(&tree, &pats);
        assert_eq!(table.slots, 10);
        assert_eq!(table.nodes, [b, c, z, sl, hl, a]);
        assert_eq!(prefetch_nodes(&tree, &paths(&["/"])).nodes, [0]);
        let fs = Prefetch {
            policy: PrefetchPolicy::Fs,
            patterns: pats.clone(),
        };
        assert_eq!(fs.table(&tree), Some(table));
        let blob = Prefetch {
            policy: PrefetchPolicy::Blob,
            patterns: pats,
        };
        assert_eq!(blob.table(&tree), None);
        let empty = Prefetch {
            policy: PrefetchPolicy::Fs,
            patterns: Vec::new(),
        };
        assert_eq!(empty.table(&tree), None);
    }

    #[test]
    fn covered_files_come_in_path_order_component_by_component() {
        let (tree, ids) = sample();
        let [_a, ab, _d, z, _b, big, _empty, _c, g, f1, hl, _sl] = ids[..] else {
            unreachable!()
        };
        let order = |policy, list: &[&str]| {
            Prefetch {
                policy,
                patterns: paths(list),
            }
            .file_order(&tree)
        };
        // "/a/..." sorts before "/a-b" by components, after it by bytes.
        assert_eq!(order(PrefetchPolicy::Fs, &["/"]), [f1, g, big, ab, hl, z]);
        assert_eq!(
            order(PrefetchPolicy::Blob, &["/z", "/a/b", "/a/b/c", "/d/sl"]),
            [f1, g, z]
        );
        assert_eq!(order(PrefetchPolicy::Blob, &["/d", "/a-b"]), [ab, hl]);
        assert!(order(PrefetchPolicy::None, &["/"]).is_empty());
        assert!(order(PrefetchPolicy::Fs, &["/a/empty", "/nothing"]).is_empty());
    }
}
