//! Compares an image's file tree with its source, entry by entry: type, permission bits,
//! owner, size, mtime (seconds and nanoseconds), device number, symlink target, hard-link
//! groups, xattrs of every namespace, and file content byte for byte.
//!
//! Both sides are read through the [`Tree`] trait. [`FsTree`] reads a directory with plain
//! file-system calls (std::fs and the xattr syscalls) and nothing else: when the image side
//! is a mount, no code of the image builder or reader takes part in the comparison, so a
//! builder bug cannot hide itself.
//!
//! ```no_run
//! use nydus_verify::{compare, FsTree};
//! let report = compare(&FsTree::new("rootfs"), &FsTree::new("/mnt/image")).unwrap();
//! for d in &report.differences {
//!     println!("{d}");
//! }
//! ```
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What is compared for one entry. Paths are absolute inside the tree ("/" is the root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (regular files and symlinks; 0 otherwise).
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device number of device nodes.
    pub rdev: u64,
    /// Link count (non-directories).
    pub nlink: u64,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Identity shared by hard links (inode number), for non-directories with nlink > 1.
    pub link_key: Option<u64>,
}

/// A tree to compare.
pub trait Tree {
    /// Every entry, keyed by path.
    fn scan(&self) -> Result<BTreeMap<Vec<u8>, Facts>, String>;
    /// Opens a regular file's content.
    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>, String>;
}

/// A directory read with plain file-system calls.
pub struct FsTree {
    root: PathBuf,
    skip_phantoms: bool,
}

impl FsTree {
    /// A tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsTree {
            root: root.into(),
            skip_phantoms: false,
        }
    }

    /// Skips entries that a directory lists but that do not exist when looked up. The
    /// kernel's overlayfs lists whiteouts of a directory that only one layer has without
    /// hiding them; they then fail lookup. Only for reading such mounts.
    pub fn skipping_phantoms(mut self) -> Self {
        self.skip_phantoms = true;
        self
    }

    fn join(&self, path: &[u8]) -> PathBuf {
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(std::ffi::OsStr::from_bytes(rel))
        }
    }
}

impl Tree for FsTree {
    fn scan(&self) -> Result<BTreeMap<Vec<u8>, Facts>, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![b"/".to_vec()];
        while let Some(path) = stack.pop() {
            let full = self.join(&path);
            let m = match fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e) if self.skip_phantoms && e.kind() == std::io::ErrorKind::NotFound => {
                    continue
                }
                Err(e) => return Err(format!("{}: {e}", full.display())),
            };
            let ft = m.file_type();
            let target = if ft.is_symlink() {
                Some(
                    fs::read_link(&full)
                        .map_err(|e| format!("{}: {e}", full.display()))?
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else {
                None
            };
            out.insert(
                path.clone(),
                Facts {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if ft.is_file() || ft.is_symlink() {
                        m.size()
                    } else {
                        0
                    },
                    mtime: m.mtime(),
                    mtime_nsec: m.mtime_nsec() as u32,
                    rdev: if ft.is_block_device() || ft.is_char_device() {
                        m.rdev()
                    } else {
                        0
                    },
                    nlink: if ft.is_dir() { 0 } else { m.nlink() },
                    target,
                    xattrs: xattrs(&full)?,
                    link_key: (!ft.is_dir() && m.nlink() > 1).then_some(m.ino()),
                },
            );
            if ft.is_dir() {
                let entries =
                    fs::read_dir(&full).map_err(|e| format!("{}: {e}", full.display()))?;
                for e in entries {
                    let e = e.map_err(|e| format!("{}: {e}", full.display()))?;
                    let mut child = if path == b"/" {
                        Vec::new()
                    } else {
                        path.clone()
                    };
                    child.push(b'/');
                    child.extend_from_slice(e.file_name().as_bytes());
                    stack.push(child);
                }
            }
        }
        Ok(out)
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>, String> {
        let full = self.join(path);
        let f = fs::File::open(&full).map_err(|e| format!("{}: {e}", full.display()))?;
        Ok(Box::new(f))
    }
}

fn xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: NUL in path", path.display()))?;
    let mut out = BTreeMap::new();
    let names = sized_call(|buf| unsafe {
        // SAFETY: c is NUL terminated, buf is valid for its length (a null pointer when empty).
        libc::llistxattr(c.as_ptr(), buf_ptr(buf) as *mut libc::c_char, buf.len())
    })
    .map_err(|e| format!("{}: listxattr: {e}", path.display()))?;
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let n = CString::new(name).expect("split on NUL");
        let value = sized_call(|buf| unsafe {
            // SAFETY: as above.
            libc::lgetxattr(
                c.as_ptr(),
                n.as_ptr(),
                buf_ptr(buf) as *mut libc::c_void,
                buf.len(),
            )
        })
        .map_err(|e| {
            format!(
                "{}: getxattr {}: {e}",
                path.display(),
                String::from_utf8_lossy(name)
            )
        })?;
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

fn buf_ptr(buf: &mut [u8]) -> *mut u8 {
    if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr()
    }
}

fn sized_call(mut call: impl FnMut(&mut [u8]) -> isize) -> std::io::Result<Vec<u8>> {
    loop {
        let size = call(&mut []);
        if size < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) | Some(libc::ENODATA) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(&mut buf);
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// One difference between source and image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Path of the entry.
    pub path: String,
    /// What differs.
    pub attribute: String,
    /// The source's value.
    pub source: String,
    /// The image's value.
    pub image: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: source {} image {}",
            self.path, self.attribute, self.source, self.image
        )
    }
}

/// The outcome of a comparison.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Entries compared (the union of both trees).
    pub entries_compared: u64,
    /// Bytes of file content compared.
    pub bytes_compared: u64,
    /// Every difference found.
    pub differences: Vec<Difference>,
}

impl Report {
    /// Whether the trees are identical.
    pub fn identical(&self) -> bool {
        self.differences.is_empty()
    }
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn type_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "directory",
        libc::S_IFREG => "regular file",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown",
    }
}

/// Hard-link groups: for each path in a group, the sorted list of its group's paths.
fn link_groups(facts: &BTreeMap<Vec<u8>, Facts>) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut by_key: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for (path, f) in facts {
        if let Some(k) = f.link_key {
            by_key.entry(k).or_default().push(path.clone());
        }
    }
    let mut out = BTreeMap::new();
    for group in by_key.into_values() {
        for p in &group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

/// How strictly to compare.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Compare modification times to the second: the source's rounded to the nearest
    /// second (as the eStargz writer rounds them into its TOC), the image's exactly.
    pub mtime_seconds: bool,
}

/// Compares `image` with `source`. An error means the comparison could not be made (the
/// source could not be read, say); read errors on the image side are differences.
pub fn compare(source: &dyn Tree, image: &dyn Tree) -> Result<Report, String> {
    compare_with(source, image, Options::default())
}

/// [`compare`] with options.
pub fn compare_with(source: &dyn Tree, image: &dyn Tree, opts: Options) -> Result<Report, String> {
    let src = source.scan()?;
    let img = image
        .scan()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    let src_links = link_groups(&src);
    let img_links = link_groups(&img);
    let mut report = Report::default();
    let mut diff = |path: &[u8], attribute: &str, s: String, i: String| {
        report.differences.push(Difference {
            path: String::from_utf8_lossy(path).into_owned(),
            attribute: attribute.to_string(),
            source: s,
            image: i,
        });
    };
    let mut content = Vec::new();
    let mut paths: Vec<&Vec<u8>> = src.keys().chain(img.keys()).collect();
    paths.sort();
    paths.dedup();
    let compared = paths.len() as u64;
    for path in paths {
        let (s, i) = match (src.get(path), img.get(path)) {
            (Some(s), Some(i)) => (s, i),
            (Some(s), None) => {
                diff(path, "presence", type_name(s.mode).into(), "missing".into());
                continue;
            }
            (None, Some(i)) => {
                diff(path, "presence", "missing".into(), type_name(i.mode).into());
                continue;
            }
            (None, None) => unreachable!("path came from one side"),
        };
        if s.mode & libc::S_IFMT != i.mode & libc::S_IFMT {
            diff(
                path,
                "type",
                type_name(s.mode).into(),
                type_name(i.mode).into(),
            );
            continue;
        }
        let is_dir = s.mode & libc::S_IFMT == libc::S_IFDIR;
        if s.mode & 0o7777 != i.mode & 0o7777 {
            diff(
                path,
                "permissions",
                format!("{:04o}", s.mode & 0o7777),
                format!("{:04o}", i.mode & 0o7777),
            );
        }
        if s.uid != i.uid {
            diff(path, "uid", s.uid.to_string(), i.uid.to_string());
        }
        if s.gid != i.gid {
            diff(path, "gid", s.gid.to_string(), i.gid.to_string());
        }
        if s.size != i.size {
            diff(path, "size", s.size.to_string(), i.size.to_string());
        }
        let s_mtime = if opts.mtime_seconds {
            (s.mtime + (s.mtime_nsec >= 500_000_000) as i64, 0)
        } else {
            (s.mtime, s.mtime_nsec)
        };
        if s_mtime != (i.mtime, i.mtime_nsec) {
            diff(
                path,
                "mtime",
                format!("{}.{:09}", s.mtime, s.mtime_nsec),
                format!("{}.{:09}", i.mtime, i.mtime_nsec),
            );
        }
        if s.rdev != i.rdev {
            let dev = |d: u64| format!("{}:{}", libc::major(d), libc::minor(d));
            diff(path, "rdev", dev(s.rdev), dev(i.rdev));
        }
        if s.target != i.target {
            let t = |t: &Option<Vec<u8>>| t.as_deref().map(show).unwrap_or_default();
            diff(path, "symlink target", t(&s.target), t(&i.target));
        }
        let names: std::collections::BTreeSet<&Vec<u8>> =
            s.xattrs.keys().chain(i.xattrs.keys()).collect();
        for name in names {
            let attr = format!("xattr {}", String::from_utf8_lossy(name));
            match (s.xattrs.get(name), i.xattrs.get(name)) {
                (Some(a), Some(b)) if a != b => diff(path, &attr, show_value(a), show_value(b)),
                (Some(a), None) => diff(path, &attr, show_value(a), "missing".into()),
                (None, Some(b)) => diff(path, &attr, "missing".into(), show_value(b)),
                _ => {}
            }
        }
        if !is_dir {
            let sg = src_links
                .get(path)
                .cloned()
                .unwrap_or_else(|| vec![path.clone()]);
            let ig = img_links
                .get(path)
                .cloned()
                .unwrap_or_else(|| vec![path.clone()]);
            // Report a group once, at its first member.
            if sg != ig && (sg.first() == Some(path) || ig.first() == Some(path)) {
                let list =
                    |g: &Vec<Vec<u8>>| g.iter().map(|p| show(p)).collect::<Vec<_>>().join(", ");
                diff(
                    path,
                    "hard links",
                    format!("[{}]", list(&sg)),
                    format!("[{}]", list(&ig)),
                );
            }
            // Links inside the tree are what the image can hold.
            if i.nlink != ig.len() as u64 {
                diff(path, "nlink", ig.len().to_string(), i.nlink.to_string());
            }
        }
        if s.mode & libc::S_IFMT == libc::S_IFREG && s.size == i.size {
            content.push(path.clone());
        }
    }
    report.entries_compared = compared;
    for path in content {
        match compare_content(source, image, &path) {
            Ok(Ok(n)) => report.bytes_compared += n,
            Ok(Err((attribute, s, i))) => report.differences.push(Difference {
                path: String::from_utf8_lossy(&path).into_owned(),
                attribute,
                source: s,
                image: i,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

fn show_value(v: &[u8]) -> String {
    if v.len() > 64 {
        format!("{} bytes {}...", v.len(), show(&v[..64]))
    } else {
        show(v)
    }
}

type ContentDiff = (String, String, String);

/// Streams both files; `Ok(Err(..))` is a difference, `Err` a failure on the source side.
fn compare_content(
    source: &dyn Tree,
    image: &dyn Tree,
    path: &[u8],
) -> Result<Result<u64, ContentDiff>, String> {
    let mut s = source.open(path)?;
    let mut i = match image.open(path) {
        Ok(f) => f,
        Err(e) => {
            return Ok(Err((
                "content".into(),
                "readable".into(),
                format!("cannot open: {e}"),
            )))
        }
    };
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n =
            fill(&mut *s, &mut a).map_err(|e| format!("{}: {e}", String::from_utf8_lossy(path)))?;
        let m = match fill(&mut *i, &mut b[..n.max(1)]) {
            Ok(m) => m,
            Err(e) => {
                return Ok(Err((
                    "content".into(),
                    format!("readable at offset {offset}"),
                    format!("read error at offset {offset}: {e}"),
                )))
            }
        };
        if n == 0 && m == 0 {
            return Ok(Ok(offset));
        }
        let common = n.min(m);
        if let Some(k) = (0..common).find(|&k| a[k] != b[k]) {
            return Ok(Err((
                format!("content at byte {}", offset + k as u64),
                format!("0x{:02x}", a[k]),
                format!("0x{:02x}", b[k]),
            )));
        }
        if n != m {
            return Ok(Err((
                "content length".into(),
                format!("{}", offset + n as u64),
                format!("ends at {}", offset + m as u64),
            )));
        }
        offset += n as u64;
    }
}

fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

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

const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

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
    fn merged(&self) -> Result<&BTreeMap<Vec<u8>, (Facts, usize)>, String> {
        if let Some(m) = self.merged.get() {
            return Ok(m);
        }
        let m = self.merge()?;
        Ok(self.merged.get_or_init(|| m))
    }

    fn merge(&self) -> Result<BTreeMap<Vec<u8>, (Facts, usize)>, String> {
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
    fn scan(&self) -> Result<BTreeMap<Vec<u8>, Facts>, String> {
        Ok(self
            .merged()?
            .iter()
            .map(|(p, (f, _))| (p.clone(), f.clone()))
            .collect())
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>, String> {
        let merged = self.merged()?;
        let (_, layer) = merged.get(path).ok_or_else(|| {
            format!(
                "{} is not in the layer stack",
                String::from_utf8_lossy(path)
            )
        })?;
        self.layers[*layer].open(path)
    }
}
