//! [`OverlayTree`]: the tree a stack of layers shows, whiteouts applied, computed from the
//! layers' own entries.

use std::collections::BTreeMap;
use std::io::Read;

use crate::{Error, Facts, Tree};

/// How whiteouts are spelled in a layer stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteouts {
    /// `.wh.NAME` removes NAME; `.wh..wh..opq` hides a directory's lower entries.
    Oci,
    /// A character device 0/0 removes its name; `trusted.overlay.opaque=y` on a directory
    /// hides its lower entries.
    Overlayfs,
    /// No whiteouts: names are literal.
    None,
}

pub(crate) const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// The tree a stack of layer directories produces (bottom first), computed here from the
/// layers' own entries: what an overlay mount of them shows.
pub struct OverlayTree<'a> {
    layers: Vec<&'a dyn Tree>,
    spec: Whiteouts,
    merged: std::cell::OnceCell<BTreeMap<Vec<u8>, (Facts, usize)>>,
}

impl<'a> OverlayTree<'a> {
    /// A stack, bottom layer first.
    pub fn new(layers: Vec<&'a dyn Tree>, spec: Whiteouts) -> Self {
        OverlayTree {
            layers,
            spec,
            merged: std::cell::OnceCell::new(),
        }
    }

    /// Merged entries, each with the index of the layer that provides it.
    fn merged(&self) -> Result<&BTreeMap<Vec<u8>, (Facts, usize)>, Error> {
        if let Some(m) = self.merged.get() {
            return Ok(m);
        }
        let m = self.merge()?;
        Ok(self.merged.get_or_init(|| m))
    }

    fn merge(&self) -> Result<BTreeMap<Vec<u8>, (Facts, usize)>, Error> {
        let mut merged: BTreeMap<Vec<u8>, (Facts, usize)> = BTreeMap::new();
        let mut link_ids: BTreeMap<(usize, u64), u64> = BTreeMap::new();
        for (layer, tree) in self.layers.iter().enumerate() {
            let scan = tree.scan()?;
            // Whiteouts and opaque directories first: they act on the layers below only.
            for (path, facts) in &scan {
                let (parent, name) = split(path);
                if let Some(target) = self.whiteout_target(name, facts) {
                    match target {
                        Some(t) => {
                            let victim = join(parent, t);
                            remove_tree(&mut merged, &victim, true);
                        }
                        None => remove_tree(&mut merged, parent, false),
                    }
                } else if self.is_opaque_dir(facts) {
                    remove_tree(&mut merged, path, false);
                }
            }
            for (path, facts) in scan {
                let (_, name) = split(&path);
                if self.whiteout_target(name, &facts).is_some() {
                    continue;
                }
                // A path under a whiteout of this very layer cannot exist; a path whose
                // parent is not a directory in the merged tree replaces nothing.
                let mut facts = facts;
                if self.spec == Whiteouts::Overlayfs && facts.mode & libc::S_IFMT == libc::S_IFDIR {
                    facts.xattrs.remove(OPAQUE_XATTR);
                }
                if let Some(key) = facts.link_key {
                    let next = link_ids.len() as u64 + 1;
                    facts.link_key = Some(*link_ids.entry((layer, key)).or_insert(next));
                }
                let both_dirs = merged
                    .get(&path)
                    .is_some_and(|(old, _)| old.mode & libc::S_IFMT == libc::S_IFDIR)
                    && facts.mode & libc::S_IFMT == libc::S_IFDIR;
                if !both_dirs {
                    remove_tree(&mut merged, &path, true);
                }
                merged.insert(path, (facts, layer));
            }
        }
        // Link counts follow the links that survive.
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        for (f, _) in merged.values() {
            if let Some(k) = f.link_key {
                *counts.entry(k).or_default() += 1;
            }
        }
        for (f, _) in merged.values_mut() {
            if let Some(k) = f.link_key {
                f.nlink = counts[&k];
                if f.nlink == 1 {
                    f.link_key = None;
                }
            }
        }
        Ok(merged)
    }

    /// `Some(Some(name))`: a whiteout of `name`; `Some(None)`: an OCI opaque marker.
    fn whiteout_target<'n>(&self, name: &'n [u8], facts: &Facts) -> Option<Option<&'n [u8]>> {
        match self.spec {
            Whiteouts::Oci if name == b".wh..wh..opq" => Some(None),
            Whiteouts::Oci => name.strip_prefix(b".wh.").map(Some),
            Whiteouts::Overlayfs => (facts.mode & libc::S_IFMT == libc::S_IFCHR && facts.rdev == 0)
                .then_some(Some(name)),
            Whiteouts::None => None,
        }
    }

    fn is_opaque_dir(&self, facts: &Facts) -> bool {
        self.spec == Whiteouts::Overlayfs
            && facts.mode & libc::S_IFMT == libc::S_IFDIR
            && facts.xattrs.get(OPAQUE_XATTR).is_some_and(|v| v == b"y")
    }
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) if path.len() > 1 => (b"/", &path[1..]),
        Some(i) if i > 0 => (&path[..i], &path[i + 1..]),
        _ => (b"/", b""),
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = if parent == b"/" {
        Vec::new()
    } else {
        parent.to_vec()
    };
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Removes everything below `path` (and `path` itself when `itself`).
fn remove_tree<V>(map: &mut BTreeMap<Vec<u8>, V>, path: &[u8], itself: bool) {
    if itself {
        map.remove(path);
    }
    let mut prefix = if path == b"/" {
        Vec::new()
    } else {
        path.to_vec()
    };
    prefix.push(b'/');
    let doomed: Vec<Vec<u8>> = map
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        map.remove(&k);
    }
}

impl Tree for OverlayTree<'_> {
    fn scan(&self) -> Result<BTreeMap<Vec<u8>, Facts>, Error> {
        Ok(self
            .merged()?
            .iter()
            .map(|(p, (f, _))| (p.clone(), f.clone()))
            .collect())
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>, Error> {
        let merged = self.merged()?;
        let (_, layer) = merged.get(path).ok_or_else(|| {
            Error::Missing(format!(
                "{} is not in the layer stack",
                String::from_utf8_lossy(path)
            ))
        })?;
        self.layers[*layer].open(path)
    }
}
