//! Serving an image: the library reader behind the FUSE adapter's [`ReadOnlyFs`] trait,
//! and behind the verifier's [`Tree`] trait (`verify --via library`).
//!
//! Read failures become EIO for the caller and one log line naming the file (its path as
//! far as lookups have revealed it) and the blob and chunk; the daemon keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex};

use nydus_fuse::{Attr, Bytes, Entry, FsStats, ReadOnlyFs};
use nydus_verify::{Facts, Tree};

use crate::access_log::AccessLog;
use crate::error::Chain;
use crate::format::v6::{Nid, BLOCK_SIZE};
use crate::reader::{Image, ReadError, SharedRead};

/// An image served over FUSE.
pub struct ImageFs {
    image: Image,
    /// Paths already found for inodes named in log messages (only failures look).
    paths: Mutex<HashMap<Nid, String>>,
    /// `mount --access-log`: the files read, in first-read order.
    access_log: Option<Arc<AccessLog>>,
}

/// Directories searched, at most, to name an inode in a log message.
const PATH_SEARCH_LIMIT: usize = 1 << 20;

impl ImageFs {
    /// Wraps an open image.
    pub fn new(image: Image) -> Self {
        ImageFs {
            image,
            paths: Mutex::new(HashMap::new()),
            access_log: None,
        }
    }

    /// Logs each regular file's first read to `log`, by the path it was looked up by.
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Self {
        self.access_log = Some(log);
        self
    }

    /// Logs a read of `nid` if it is its first: by its looked-up path, or else (an inode
    /// the kernel knew before this mount's lookups) the first path a search finds.
    fn log_read(&self, log: &AccessLog, nid: Nid) {
        if log.is_logged(nid) {
            return;
        }
        let path = log
            .name_of(nid)
            .or_else(|| self.exact_path(nid).map(String::into_bytes))
            .unwrap_or_else(|| format!("<inode {nid}>").into_bytes());
        log.read(nid, &path);
    }

    /// The path a search finds for `nid`, unless a name in it is not UTF-8 (the search
    /// shows such names lossily, and the access log must not name another file).
    fn exact_path(&self, nid: Nid) -> Option<String> {
        self.search(nid)
            .filter(|p| !p.contains(char::REPLACEMENT_CHARACTER))
    }

    /// The image served.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The path of `nid` for a log message: found by walking the tree from the root, on
    /// failures only, so serving keeps no name table in memory.
    fn path_of(&self, nid: Nid) -> String {
        if let Some(p) = self.paths.lock().expect("paths lock").get(&nid) {
            return p.clone();
        }
        let path = self.search(nid).unwrap_or_else(|| format!("<inode {nid}>"));
        let mut paths = self.paths.lock().expect("paths lock");
        if paths.len() < 4096 {
            paths.insert(nid, path.clone());
        }
        path
    }

    /// Breadth-first search for an entry naming `nid`; `None` if not found (or damaged).
    fn search(&self, nid: Nid) -> Option<String> {
        let root = self.image.root();
        if nid == root {
            return Some("/".into());
        }
        let mut queue = std::collections::VecDeque::from([(root, String::new())]);
        let mut seen = std::collections::HashSet::from([root]);
        while let Some((dir, path)) = queue.pop_front() {
            if seen.len() > PATH_SEARCH_LIMIT {
                return None;
            }
            let Ok(entries) = self.image.read_dir(dir) else {
                continue;
            };
            for e in entries {
                let child = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                if e.nid == nid {
                    return Some(child);
                }
                if e.file_type == 2 && seen.insert(e.nid) {
                    queue.push_back((e.nid, child));
                }
            }
        }
        None
    }

    fn fail(&self, nid: Nid, what: &str, e: ReadError) -> i32 {
        log::error!("{}: {what}: {}", self.path_of(nid), Chain(&e));
        match e {
            ReadError::Request(_) => libc::EINVAL,
            _ => libc::EIO,
        }
    }

    fn attr(&self, nid: Nid) -> Result<Attr, i32> {
        let st = self
            .image
            .stat(nid)
            .map_err(|e| self.fail(nid, "stat", e))?;
        Ok(Attr {
            id: nid.0,
            mode: st.mode,
            nlink: st.nlink,
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            mtime: st.mtime,
            mtime_nsec: st.mtime_nsec,
            rdev: st.rdev,
        })
    }
}

impl ReadOnlyFs for ImageFs {
    fn root(&self) -> u64 {
        self.image.root().0
    }

    fn getattr(&self, id: u64) -> Result<Attr, i32> {
        self.attr(Nid(id))
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, i32> {
        let parent = Nid(parent);
        match self.image.lookup(parent, name) {
            Ok(Some(nid)) => {
                if let Some(log) = &self.access_log {
                    log.named(self.image.root(), parent, name, nid, || {
                        self.exact_path(parent)
                    });
                }
                self.attr(nid)
            }
            Ok(None) => Err(libc::ENOENT),
            Err(e) => Err(self.fail(parent, "lookup", e)),
        }
    }

    fn readdir(&self, id: u64) -> Result<Vec<Entry>, i32> {
        let id = Nid(id);
        let entries = self
            .image
            .read_dir(id)
            .map_err(|e| self.fail(id, "readdir", e))?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let kind = match e.file_type {
                    1 => libc::S_IFREG,
                    2 => libc::S_IFDIR,
                    3 => libc::S_IFCHR,
                    4 => libc::S_IFBLK,
                    5 => libc::S_IFIFO,
                    6 => libc::S_IFSOCK,
                    7 => libc::S_IFLNK,
                    _ => 0,
                };
                Entry {
                    name: e.name,
                    id: e.nid.0,
                    kind,
                }
            })
            .collect())
    }

    fn read(&self, id: u64, offset: u64, size: u32) -> Result<Bytes, i32> {
        let id = Nid(id);
        if let Some(log) = &self.access_log {
            self.log_read(log, id);
        }
        let fail = |e| self.fail(id, &format!("read at offset {offset}"), e);
        if let SharedRead::Shared(buf, range) = self
            .image
            .read_shared(id, offset, size as u64)
            .map_err(fail)?
        {
            return Ok(Bytes::Shared(buf, range));
        }
        let mut buf = vec![0u8; size as usize];
        let n = self.image.read(id, offset, &mut buf).map_err(fail)?;
        buf.truncate(n);
        Ok(Bytes::Owned(buf))
    }

    fn readlink(&self, id: u64) -> Result<Vec<u8>, i32> {
        let id = Nid(id);
        self.image
            .readlink(id)
            .map_err(|e| self.fail(id, "readlink", e))
    }

    fn listxattr(&self, id: u64) -> Result<Vec<Vec<u8>>, i32> {
        let id = Nid(id);
        let pairs = self
            .image
            .xattrs(id)
            .map_err(|e| self.fail(id, "listxattr", e))?;
        Ok(pairs.into_iter().map(|(n, _)| n).collect())
    }

    fn getxattr(&self, id: u64, name: &[u8]) -> Result<Vec<u8>, i32> {
        let id = Nid(id);
        let pairs = self
            .image
            .xattrs(id)
            .map_err(|e| self.fail(id, "getxattr", e))?;
        pairs
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or(libc::ENODATA)
    }

    fn statfs(&self) -> FsStats {
        let data_blocks: u64 = self
            .image
            .blobs()
            .iter()
            .map(|b| b.uncompressed_size / BLOCK_SIZE)
            .sum();
        FsStats {
            blocks: data_blocks + self.image.super_block().blocks as u64,
            files: self.image.super_block().inodes,
            block_size: BLOCK_SIZE as u32,
        }
    }
}

/// An image read through the library, as a tree for the verifier.
pub struct ImageTree<'a>(pub &'a Image);

impl Tree for ImageTree<'_> {
    fn scan(&self) -> Result<BTreeMap<Vec<u8>, Facts>, nydus_verify::Error> {
        let image = self.0;
        let mut out = BTreeMap::new();
        image
            .walk(|path, nid| {
                let st = image.stat(nid)?;
                let kind = st.mode & libc::S_IFMT;
                let is_dir = kind == libc::S_IFDIR;
                out.insert(
                    path.to_vec(),
                    Facts {
                        mode: st.mode,
                        uid: st.uid,
                        gid: st.gid,
                        size: if matches!(kind, libc::S_IFREG | libc::S_IFLNK) {
                            st.size
                        } else {
                            0
                        },
                        mtime: st.mtime,
                        mtime_nsec: st.mtime_nsec,
                        rdev: st.rdev,
                        nlink: if is_dir { 0 } else { st.nlink as u64 },
                        target: if kind == libc::S_IFLNK {
                            Some(image.readlink(nid)?)
                        } else {
                            None
                        },
                        xattrs: image.xattrs(nid)?.into_iter().collect(),
                        link_key: (!is_dir && st.nlink > 1).then_some(nid.0),
                    },
                );
                Ok(())
            })
            .map_err(|e| nydus_verify::Error::Tree {
                path: self.0.path().display().to_string(),
                what: "cannot walk the image",
                source: Box::new(e),
            })?;
        Ok(out)
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>, nydus_verify::Error> {
        let shown = || String::from_utf8_lossy(path).into_owned();
        let nid = self
            .0
            .resolve(path)
            .map_err(|e| nydus_verify::Error::Tree {
                path: shown(),
                what: "cannot look it up",
                source: Box::new(e),
            })?
            .ok_or_else(|| nydus_verify::Error::Missing(format!("{} not found", shown())))?;
        Ok(Box::new(ImageFile {
            image: self.0,
            nid,
            offset: 0,
        }))
    }
}

struct ImageFile<'a> {
    image: &'a Image,
    nid: Nid,
    offset: u64,
}

impl Read for ImageFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .image
            .read(self.nid, self.offset, buf)
            .map_err(std::io::Error::other)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// A FUSE mount served by background threads; unmounted when dropped.
pub struct BackgroundMount {
    unmounter: nydus_fuse::Unmounter,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// Where it is mounted.
    pub mountpoint: std::path::PathBuf,
}

impl BackgroundMount {
    /// Mounts `image` at `mountpoint` and serves it from background threads.
    pub fn start(
        image: Image,
        mountpoint: &std::path::Path,
        threads: usize,
    ) -> std::io::Result<Self> {
        let config = nydus_fuse::MountConfig {
            threads,
            ..nydus_fuse::MountConfig::default()
        };
        let mut mounted = nydus_fuse::mount(
            std::sync::Arc::new(ImageFs::new(image)),
            mountpoint,
            &config,
        )?;
        let unmounter = mounted.unmounter();
        let thread = std::thread::Builder::new()
            .name("fuse-session".into())
            .spawn(move || mounted.run())?;
        Ok(BackgroundMount {
            unmounter,
            thread: Some(thread),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Unmounts and waits for the session to end.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        if self.unmounter.unmount()? == nydus_fuse::Unmounted::Detached {
            // Its session ends when the last user lets go; do not wait for that here.
            return Ok(());
        }
        thread
            .join()
            .map_err(|_| std::io::Error::other("FUSE session thread panicked"))?
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            log::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

/// Unmounts a mount point: umount(2) (retried while briefly busy, then detached), or
/// `fusermount3 -u` for unprivileged users.
pub fn unmount(mountpoint: &std::path::Path) -> std::io::Result<nydus_fuse::Unmounted> {
    nydus_fuse::unmount(mountpoint)
}

/// Whether `mountpoint` is currently a mount point (per /proc/self/mountinfo).
pub fn is_mounted(mountpoint: &std::path::Path) -> bool {
    // Resolve the parent only: a stat of the mount point itself would wait on its
    // server, which may not be serving yet (or ever).
    let (Some(parent), Some(name)) = (mountpoint.parent(), mountpoint.file_name()) else {
        return false;
    };
    let parent = if parent.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        parent
    };
    let Ok(canon) = std::fs::canonicalize(parent).map(|p| p.join(name)) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Starts the background work of serving remote blobs: the cache's warm-up (up to
/// `warm_up` bytes, see [`Image::warm_cache`]), prefetch (when asked), and the
/// `--metrics` file rewritten every second (under a temporary name, renamed into place)
/// until the process ends. These threads only read the image.
pub fn start_lazy_work(
    fs: &std::sync::Arc<ImageFs>,
    warm_up: u64,
    prefetch: Option<crate::reader::PrefetchOptions>,
    metrics: Option<std::path::PathBuf>,
) -> std::io::Result<()> {
    if warm_up > 0 {
        let fs = fs.clone();
        std::thread::Builder::new()
            .name("cache-warm-up".into())
            .spawn(move || {
                let bytes = fs.image.warm_cache(warm_up);
                if bytes > 0 {
                    log::info!("cache warm-up: reading {bytes} bytes of decompressed chunks ahead");
                }
            })?;
    }
    if let Some(options) = prefetch {
        let fs = fs.clone();
        std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                if let Err(e) = fs.image.prefetch(&options) {
                    log::warn!("prefetch stopped: {}", Chain(&e));
                }
            })?;
    }
    if let Some(path) = metrics {
        let fs = fs.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || loop {
                if let Err(e) = write_metrics(&fs.image, &path) {
                    log::warn!("{}: metrics stopped", Chain(&e));
                    return;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            })?;
    }
    Ok(())
}

/// Writes the image's fetch counters as JSON to `path` (see `storage::remote::Metrics`).
pub fn write_metrics(
    image: &Image,
    path: &std::path::Path,
) -> Result<(), crate::builder::BuildError> {
    let text = serde_json::to_string_pretty(&image.fetch_metrics().snapshot())
        .expect("a JSON value serialises")
        + "\n";
    crate::builder::output::PendingFile::write_whole(path, text.as_bytes(), "metrics")?;
    Ok(())
}
