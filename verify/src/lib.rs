//! Compares an image's file tree with its source, entry by entry: type, permission bits,
//! owner, size, mtime (seconds and nanoseconds), device number, symlink target, hard-link
//! groups, xattrs of every namespace, and file content byte for byte.
//!
//! Both sides are read through the [`Tree`] trait. [`FsTree`] reads a directory with plain
//! file-system calls (std::fs and the xattr syscalls) and nothing else: when the image side
//! is a mount, no code of the image builder or reader takes part in the comparison, so a
//! builder bug cannot hide itself.
//!
//! [`compare_with`] takes [`Options`]; [`compare_metadata`] leaves file contents out, for
//! an image side that shows metadata it cannot serve the data of. [`OverlayTree`] merges
//! a stack of layers, whiteouts applied, into the tree an image of them must show.
//!
//! ```no_run
//! use nydus_verify::{compare, FsTree};
//! let report = compare(&FsTree::new("rootfs"), &FsTree::new("/mnt/image")).unwrap();
//! for d in &report.differences {
//!     println!("{d}");
//! }
//! ```
#![deny(missing_docs)]

mod fs;
mod overlay;
mod time;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use serde::Serialize;

pub use fs::FsTree;
pub use overlay::{OverlayTree, Whiteouts};
use time::exact_mtime;
pub use time::{parse_mtime, utc};

/// Why a tree could not be read or compared. Differences are not errors: they are the
/// [`Report`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system call on a directory tree failed.
    #[error("{}: {what}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tree's own reader failed on an entry (the library reader on the image side, say).
    #[error("{path}: {what}")]
    Tree {
        /// The entry's path in its tree.
        path: String,
        /// What was being done.
        what: &'static str,
        /// The reader's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The image side could not be read at all.
    #[error("cannot read the image")]
    Image(#[source] Box<Error>),
    /// An entry a tree should have is not there, or cannot be named.
    #[error("{0}")]
    Missing(String),
}

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
    fn scan(&self) -> Result<BTreeMap<Vec<u8>, Facts>, Error>;
    /// Opens a regular file's content.
    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>, Error>;
}

/// One difference between source and image.
///
/// `source` and `image` hold exact values, as the JSON report keeps them: an mtime is
/// `SECONDS.NANOSECONDS` since the epoch. Displayed, an mtime reads as a UTC date (see
/// [`utc`]).
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

/// The attribute name of an mtime difference.
const MTIME: &str = "mtime";

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &str| {
            if self.attribute == MTIME {
                parse_mtime(v).map_or_else(|| v.to_string(), |(s, ns)| utc(s, ns))
            } else {
                v.to_string()
            }
        };
        write!(
            f,
            "{}: {}: source {} image {}",
            self.path,
            self.attribute,
            shown(&self.source),
            shown(&self.image)
        )
    }
}

/// The outcome of a comparison.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Entries compared (the union of both trees).
    pub entries_compared: u64,
    /// Bytes of file content compared, each inode's once (as `create` counts them): a
    /// hard-link group's content is compared at every name and counted at the first.
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
pub fn compare(source: &dyn Tree, image: &dyn Tree) -> Result<Report, Error> {
    compare_with(source, image, Options::default())
}

/// [`compare`] with options.
pub fn compare_with(source: &dyn Tree, image: &dyn Tree, opts: Options) -> Result<Report, Error> {
    run(source, image, opts, true)
}

/// [`compare_with`] without file contents: for an image side that shows the metadata
/// but cannot serve the data (a kernel EROFS mount of a bootstrap alone, a daemon that
/// cannot read a blob's format). `bytes_compared` stays 0.
pub fn compare_metadata(
    source: &dyn Tree,
    image: &dyn Tree,
    opts: Options,
) -> Result<Report, Error> {
    run(source, image, opts, false)
}

fn run(
    source: &dyn Tree,
    image: &dyn Tree,
    opts: Options,
    with_content: bool,
) -> Result<Report, Error> {
    let src = source.scan()?;
    let img = image.scan().map_err(|e| Error::Image(Box::new(e)))?;
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
                MTIME,
                exact_mtime(s.mtime, s.mtime_nsec),
                exact_mtime(i.mtime, i.mtime_nsec),
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
        if with_content && s.mode & libc::S_IFMT == libc::S_IFREG && s.size == i.size {
            // Every name is read (a reader could resolve one name of a group wrongly);
            // the bytes count once per source inode.
            let counted = src_links
                .get(path)
                .is_none_or(|group| group.first() == Some(path));
            content.push((path.clone(), counted));
        }
    }
    report.entries_compared = compared;
    for (path, counted) in content {
        match compare_content(source, image, &path) {
            Ok(Ok(n)) => report.bytes_compared += if counted { n } else { 0 },
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
) -> Result<Result<u64, ContentDiff>, Error> {
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
        let n = fill(&mut *s, &mut a).map_err(|e| Error::Tree {
            path: String::from_utf8_lossy(path).into_owned(),
            what: "cannot read",
            source: Box::new(e),
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A tree held in memory: facts and content by path.
    #[derive(Clone, Default)]
    struct Mem(BTreeMap<Vec<u8>, (Facts, Vec<u8>)>);

    impl Tree for Mem {
        fn scan(&self) -> Result<BTreeMap<Vec<u8>, Facts>, Error> {
            Ok(self
                .0
                .iter()
                .map(|(p, (f, _))| (p.clone(), f.clone()))
                .collect())
        }

        fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>, Error> {
            let (_, content) = self
                .0
                .get(path)
                .ok_or_else(|| Error::Missing("no such entry".into()))?;
            Ok(Box::new(&content[..]))
        }
    }

    fn facts(mode: u32) -> Facts {
        Facts {
            mode,
            uid: 1000,
            gid: 100,
            size: 0,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            rdev: 0,
            nlink: if mode & libc::S_IFMT == libc::S_IFDIR {
                0
            } else {
                1
            },
            target: None,
            xattrs: BTreeMap::new(),
            link_key: None,
        }
    }

    impl Mem {
        fn put(mut self, path: &str, facts: Facts, content: &[u8]) -> Self {
            self.0
                .insert(path.as_bytes().to_vec(), (facts, content.to_vec()));
            self
        }

        fn dir(self, path: &str) -> Self {
            self.put(path, facts(libc::S_IFDIR | 0o755), b"")
        }

        fn file(self, path: &str, content: &[u8]) -> Self {
            let f = Facts {
                size: content.len() as u64,
                ..facts(libc::S_IFREG | 0o644)
            };
            self.put(path, f, content)
        }

        fn symlink(self, path: &str, target: &str) -> Self {
            let f = Facts {
                size: target.len() as u64,
                target: Some(target.as_bytes().to_vec()),
                ..facts(libc::S_IFLNK | 0o777)
            };
            self.put(path, f, b"")
        }

        fn node(self, path: &str, mode: u32, rdev: u64) -> Self {
            self.put(
                path,
                Facts {
                    rdev,
                    ..facts(mode)
                },
                b"",
            )
        }

        /// Names of one inode (`key`), each with the group's link count.
        fn hard_links(mut self, paths: &[&str], content: &[u8], key: u64) -> Self {
            for p in paths {
                self = self.file(p, content);
                self.edit(p, |f, _| {
                    f.nlink = paths.len() as u64;
                    f.link_key = Some(key);
                });
            }
            self
        }

        fn xattr(mut self, path: &str, name: &str, value: &[u8]) -> Self {
            self.edit(path, |f, _| {
                f.xattrs.insert(name.as_bytes().to_vec(), value.to_vec());
            });
            self
        }

        fn edit(&mut self, path: &str, change: impl FnOnce(&mut Facts, &mut Vec<u8>)) {
            let (f, c) = self.0.get_mut(path.as_bytes()).expect("path in the tree");
            change(f, c);
        }

        fn remove(&mut self, path: &str) {
            self.0.remove(path.as_bytes()).expect("path in the tree");
        }

        fn paths(&self) -> Vec<String> {
            self.0
                .keys()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        }
    }

    /// One of each kind of entry; "/a" and "/d/b" are one inode of 6 bytes.
    fn sample() -> Mem {
        Mem::default()
            .dir("/")
            .dir("/d")
            .file("/f", b"hello")
            .xattr("/f", "user.k", b"v")
            .symlink("/d/l", "../f")
            .hard_links(&["/a", "/d/b"], b"linked", 7)
            .node("/c", libc::S_IFCHR | 0o620, libc::makedev(1, 3))
            .node("/p", libc::S_IFIFO | 0o644, 0)
    }

    /// (path, attribute) of each difference.
    fn found(report: &Report) -> Vec<(String, String)> {
        report
            .differences
            .iter()
            .map(|d| (d.path.clone(), d.attribute.clone()))
            .collect()
    }

    #[test]
    fn identical_trees_count_a_hard_linked_inode_once() {
        let report = compare(&sample(), &sample()).unwrap();
        assert!(report.identical(), "{:?}", report.differences);
        assert_eq!(report.entries_compared, 8);
        // "hello" and "linked" once: `create` counts 11 bytes for this tree, not 17.
        assert_eq!(report.bytes_compared, 11);
    }

    #[test]
    fn hard_links_on_disk_are_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("f"), b"linked").unwrap();
        fs::hard_link(root.join("f"), root.join("g")).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/h"), b"hello").unwrap();
        std::os::unix::fs::symlink("../f", root.join("d/s")).unwrap();
        let tree = FsTree::new(root);
        let scan = tree.scan().unwrap();
        let (f, g) = (&scan[&b"/f"[..]], &scan[&b"/g"[..]]);
        assert_eq!((f.nlink, f.link_key.is_some()), (2, true));
        assert_eq!(f.link_key, g.link_key);
        assert_eq!(scan[&b"/d/s"[..]].target.as_deref(), Some(&b"../f"[..]));
        let report = compare(&tree, &FsTree::new(root)).unwrap();
        assert!(report.identical(), "{:?}", report.differences);
        assert_eq!((report.entries_compared, report.bytes_compared), (6, 11));
    }

    #[test]
    fn each_kind_of_difference_is_reported() {
        type Change = fn(&mut Mem);
        /// (path, attribute) of each difference expected.
        type Found = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Change, Found)] = &[
            (
                "type",
                |m| m.edit("/f", |f, _| f.mode = libc::S_IFDIR | 0o644),
                &[("/f", "type")],
            ),
            (
                "permissions",
                |m| m.edit("/f", |f, _| f.mode = libc::S_IFREG | 0o4644),
                &[("/f", "permissions")],
            ),
            ("uid", |m| m.edit("/f", |f, _| f.uid = 0), &[("/f", "uid")]),
            ("gid", |m| m.edit("/d", |f, _| f.gid = 0), &[("/d", "gid")]),
            (
                "size",
                |m| {
                    m.edit("/f", |f, c| {
                        c.push(b'!');
                        f.size += 1;
                    })
                },
                &[("/f", "size")],
            ),
            (
                "mtime nanoseconds",
                |m| m.edit("/d/l", |f, _| f.mtime_nsec = 6),
                &[("/d/l", "mtime")],
            ),
            (
                "mtime seconds",
                |m| m.edit("/", |f, _| f.mtime = 0),
                &[("/", "mtime")],
            ),
            (
                "rdev",
                |m| m.edit("/c", |f, _| f.rdev = libc::makedev(1, 5)),
                &[("/c", "rdev")],
            ),
            (
                "xattr value",
                |m| {
                    m.edit("/f", |f, _| {
                        f.xattrs.insert(b"user.k".to_vec(), b"w".to_vec());
                    })
                },
                &[("/f", "xattr user.k")],
            ),
            (
                "xattr missing",
                |m| m.edit("/f", |f, _| f.xattrs.clear()),
                &[("/f", "xattr user.k")],
            ),
            (
                "xattr extra",
                |m| {
                    m.edit("/p", |f, _| {
                        f.xattrs.insert(b"trusted.x".to_vec(), Vec::new());
                    })
                },
                &[("/p", "xattr trusted.x")],
            ),
            (
                "content",
                |m| m.edit("/f", |_, c| c[4] = b'O'),
                &[("/f", "content at byte 4")],
            ),
            (
                "content shorter than the size",
                |m| m.edit("/f", |_, c| c.truncate(3)),
                &[("/f", "content length")],
            ),
            (
                "content of a later hard link",
                |m| m.edit("/d/b", |_, c| c[0] = b'L'),
                &[("/d/b", "content at byte 0")],
            ),
            (
                "symlink target",
                |m| m.edit("/d/l", |f, _| f.target = Some(b"../g".to_vec())),
                &[("/d/l", "symlink target")],
            ),
            (
                "hard-link group split",
                |m| {
                    for p in ["/a", "/d/b"] {
                        m.edit(p, |f, _| (f.nlink, f.link_key) = (1, None));
                    }
                },
                &[("/a", "hard links"), ("/d/b", "hard links")],
            ),
            (
                "hard-link group joined",
                |m| {
                    m.edit("/f", |f, c| {
                        (f.nlink, f.link_key, f.size) = (3, Some(7), 6);
                        (f.xattrs, *c) = (BTreeMap::new(), b"linked".to_vec());
                    });
                    for p in ["/a", "/d/b"] {
                        m.edit(p, |f, _| f.nlink = 3);
                    }
                },
                &[
                    ("/a", "hard links"),
                    ("/f", "size"),
                    ("/f", "xattr user.k"),
                    ("/f", "hard links"),
                ],
            ),
            (
                "nlink",
                |m| m.edit("/f", |f, _| f.nlink = 2),
                &[("/f", "nlink")],
            ),
            (
                "missing entry",
                |m| m.remove("/d/l"),
                &[("/d/l", "presence")],
            ),
            (
                "extra entry",
                |m| {
                    *m = std::mem::take(m).node("/s", libc::S_IFSOCK | 0o755, 0);
                },
                &[("/s", "presence")],
            ),
        ];
        for (name, change, want) in cases {
            let mut image = sample();
            change(&mut image);
            let report = compare(&sample(), &image).unwrap();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(p, a)| (p.to_string(), a.to_string()))
                .collect();
            assert_eq!(found(&report), want, "{name}");
        }
    }

    #[test]
    fn differences_name_both_values() {
        let mut image = sample();
        image.remove("/d/l");
        image.edit("/f", |f, _| f.mode = libc::S_IFREG | 0o600);
        image.edit("/d/b", |_, c| c[5] = b'D');
        let shown: Vec<String> = compare(&sample(), &image)
            .unwrap()
            .differences
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "/d/l: presence: source symlink image missing",
                "/f: permissions: source 0644 image 0600",
                "/d/b: content at byte 5: source 0x64 image 0x44",
            ]
        );
    }

    #[test]
    fn mtimes_show_as_utc_and_stay_exact_in_json() {
        let mut image = sample();
        image.edit("/f", |f, _| (f.mtime, f.mtime_nsec) = (-86_400, 5));
        let report = compare(&sample(), &image).unwrap();
        let d = &report.differences[0];
        assert_eq!(
            d.to_string(),
            "/f: mtime: source 2023-11-14T22:13:20.000000005Z \
             image 1969-12-31T00:00:00.000000005Z"
        );
        let json = serde_json::to_value(d).unwrap();
        assert_eq!(json["source"], "1700000000.000000005");
        assert_eq!(json["image"], "-86400.000000005");
        // Other attributes are shown as they are.
        let other = Difference {
            attribute: "uid".into(),
            source: "1234.000005678".into(),
            ..d.clone()
        };
        assert!(other.to_string().contains("source 1234.000005678"));
    }

    #[test]
    fn utc_dates() {
        let cases: &[(i64, u32, &str)] = &[
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (1234, 5678, "1970-01-01T00:20:34.000005678Z"),
            (-1, 0, "1969-12-31T23:59:59.000000000Z"),
            (-86_400, 5, "1969-12-31T00:00:00.000000005Z"),
            (951_782_400, 0, "2000-02-29T00:00:00.000000000Z"),
            (951_868_800, 0, "2000-03-01T00:00:00.000000000Z"),
            (1_700_000_000, 123_456_789, "2023-11-14T22:13:20.123456789Z"),
            (2_500_000_000, 1, "2049-03-22T04:26:40.000000001Z"),
            (4_102_444_800, 999_999_999, "2100-01-01T00:00:00.999999999Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000000000Z"),
            (-62_135_596_800, 0, "0001-01-01T00:00:00.000000000Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000000Z"),
        ];
        for &(secs, nsec, want) in cases {
            assert_eq!(utc(secs, nsec), want, "{secs}.{nsec}");
            assert_eq!(parse_mtime(&exact_mtime(secs, nsec)), Some((secs, nsec)));
        }
        // Any stored value prints, however absurd.
        for secs in [i64::MIN, i64::MAX] {
            assert!(utc(secs, 999_999_999).ends_with(".999999999Z"));
        }
    }

    #[test]
    fn metadata_only_comparison_reads_no_content() {
        let mut image = sample();
        image.edit("/f", |_, c| c[0] = b'J');
        image.edit("/d", |f, _| f.uid = 0);
        let report = compare_metadata(&sample(), &image, Options::default()).unwrap();
        assert_eq!(found(&report), [("/d".to_string(), "uid".to_string())]);
        assert_eq!(report.bytes_compared, 0);
    }

    #[test]
    fn mtime_seconds_rounds_the_source_only() {
        type Time = (i64, u32);
        // (source, image, compare equal)
        let cases: &[(Time, Time, bool)] = &[
            ((10, 499_999_999), (10, 0), true),
            ((10, 500_000_000), (11, 0), true),
            ((10, 500_000_000), (10, 0), false),
            ((10, 0), (10, 1), false),
        ];
        let opts = Options {
            mtime_seconds: true,
        };
        for &(src, img, same) in cases {
            let (mut source, mut image) = (
                Mem::default().file("/f", b"x"),
                Mem::default().file("/f", b"x"),
            );
            source.edit("/f", |f, _| (f.mtime, f.mtime_nsec) = src);
            image.edit("/f", |f, _| (f.mtime, f.mtime_nsec) = img);
            let report = compare_with(&source, &image, opts).unwrap();
            assert_eq!(report.identical(), same, "{src:?} against {img:?}");
        }
    }

    /// Lower layer of the whiteout tests: "/k" and "/k2" are one inode.
    fn lower() -> Mem {
        Mem::default()
            .dir("/")
            .file("/a", b"a")
            .dir("/d")
            .file("/d/x", b"lower x")
            .dir("/o")
            .file("/o/y", b"y")
            .dir("/t")
            .file("/t/inside", b"i")
            .hard_links(&["/k", "/k2"], b"k", 1)
    }

    #[test]
    fn overlay_applies_whiteouts_opaque_dirs_and_replacements() {
        let whiteout = |m: Mem, p: &str| m.node(p, libc::S_IFCHR, 0);
        let cases: Vec<(&str, Whiteouts, Mem, &[&str])> = vec![
            (
                "oci",
                Whiteouts::Oci,
                Mem::default()
                    .dir("/")
                    .file("/.wh.a", b"")
                    .file("/.wh.k2", b"")
                    .dir("/o")
                    .file("/o/.wh..wh..opq", b"")
                    .file("/o/z", b"z")
                    .file("/t", b"now a file")
                    .file("/d/x", b"upper x"),
                &["/", "/d", "/d/x", "/k", "/o", "/o/z", "/t"],
            ),
            (
                "overlayfs",
                Whiteouts::Overlayfs,
                whiteout(whiteout(Mem::default().dir("/"), "/a"), "/k2")
                    .dir("/o")
                    .xattr("/o", "trusted.overlay.opaque", b"y")
                    .file("/o/z", b"z")
                    .node("/dev-not-whiteout", libc::S_IFCHR, libc::makedev(1, 3))
                    .file("/t", b"now a file")
                    .file("/d/x", b"upper x"),
                &[
                    "/",
                    "/d",
                    "/d/x",
                    "/dev-not-whiteout",
                    "/k",
                    "/o",
                    "/o/z",
                    "/t",
                ],
            ),
            (
                "no whiteouts",
                Whiteouts::None,
                Mem::default()
                    .dir("/")
                    .file("/.wh.a", b"")
                    .dir("/o")
                    .file("/o/.wh..wh..opq", b""),
                &[
                    "/",
                    "/.wh.a",
                    "/a",
                    "/d",
                    "/d/x",
                    "/k",
                    "/k2",
                    "/o",
                    "/o/.wh..wh..opq",
                    "/o/y",
                    "/t",
                    "/t/inside",
                ],
            ),
        ];
        for (name, spec, upper, want) in cases {
            let lower = lower();
            let overlay = OverlayTree::new(vec![&lower, &upper], spec);
            let merged = overlay.scan().unwrap();
            let paths: Vec<String> = merged
                .keys()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            assert_eq!(paths, *want, "{name}");
            let k = &merged[&b"/k"[..]];
            if spec == Whiteouts::None {
                assert_eq!((k.nlink, k.link_key.is_some()), (2, true), "{name}");
                continue;
            }
            // The surviving name of a hard-link pair is a plain file now.
            assert_eq!((k.nlink, k.link_key), (1, None), "{name}");
            // An opaque marker leaves no xattr behind.
            assert!(merged[&b"/o"[..]].xattrs.is_empty(), "{name}");
            // Content comes from the layer that provides the entry.
            let mut x = Vec::new();
            overlay.open(b"/d/x").unwrap().read_to_end(&mut x).unwrap();
            assert_eq!(x, b"upper x", "{name}");
            // The merged tree compares like any other.
            let mut expected = Mem::default();
            for p in want {
                let from = if upper.0.contains_key(p.as_bytes()) {
                    &upper
                } else {
                    &lower
                };
                let (mut f, c) = from.0[p.as_bytes()].clone();
                if *p == "/k" {
                    (f.nlink, f.link_key) = (1, None);
                }
                f.xattrs.remove(overlay::OPAQUE_XATTR);
                expected = expected.put(p, f, &c);
            }
            let report = compare(&overlay, &expected).unwrap();
            assert!(report.identical(), "{name}: {:?}", report.differences);
            assert_eq!(expected.paths(), *want);
        }
    }
}
