//! `mount --access-log`: the regular files a workload read through a mount, in the order
//! of their first read, one absolute path a line, as `create --prefetch-policy fs` reads
//! its patterns (see [`crate::builder::prefetch::read_patterns`]). Fed back to a build,
//! the list becomes a prefetch table and puts those files first in the blob.
//!
//! The file is written in place, not renamed into place at the end: users tail it while
//! the workload runs. Lines are buffered and flushed by a background thread at least every
//! [`FLUSH_INTERVAL`], and by [`AccessLog::flush`] at unmount.
//!
//! Paths come from the mount's lookups ([`AccessLog::named`]: a child's first path is its
//! parent's path and its name), so a hard-linked file shows under the name it was first
//! looked up by. A path that `read_patterns` could not give back as it is (not UTF-8, a
//! line break in it, white space at its end, which the reader trims) is left out, with a
//! warning.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use thiserror::Error;

use crate::format::v6::Nid;

/// How long a logged line may wait in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Why the access log could not be started or written.
#[derive(Debug, Error)]
pub enum AccessLogError {
    /// The file could not be created.
    #[error("access log {}: cannot create it", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Buffered lines could not be written.
    #[error("access log {}: cannot write it", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The flushing thread could not be started.
    #[error("access log {}: cannot start its flushing thread", path.display())]
    Thread {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The access log of one mount; share it between the file system and whoever unmounts.
pub struct AccessLog {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    out: BufWriter<File>,
    /// Lines buffered since the last flush.
    dirty: bool,
    /// A write already failed (and was reported once): stop writing.
    broken: bool,
    /// Inodes already logged (or left out).
    logged: HashSet<Nid>,
    /// The first path each inode was looked up by.
    names: HashMap<Nid, Vec<u8>>,
}

impl AccessLog {
    /// Creates (or truncates) `path` and starts the thread that flushes it every
    /// [`FLUSH_INTERVAL`] while the log lives.
    pub fn create(path: &Path) -> Result<Arc<Self>, AccessLogError> {
        let file = File::create(path).map_err(|source| AccessLogError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        let log = Arc::new(AccessLog {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                out: BufWriter::new(file),
                dirty: false,
                broken: false,
                logged: HashSet::new(),
                names: HashMap::new(),
            }),
        });
        let weak: Weak<AccessLog> = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_INTERVAL);
                let Some(log) = weak.upgrade() else { return };
                log.flush_quietly();
            })
            .map_err(|source| AccessLogError::Thread {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(log)
    }

    /// Records that `child` was looked up as `name` in `parent` (whose path is `/` when it
    /// is `root`); the first path seen for an inode is kept. `parent_path` is asked only
    /// when the parent was never looked up (an inode the kernel already knew).
    pub fn named(
        &self,
        root: Nid,
        parent: Nid,
        name: &[u8],
        child: Nid,
        parent_path: impl FnOnce() -> Option<String>,
    ) {
        let mut state = self.state.lock().expect("access log lock");
        if state.names.contains_key(&child) {
            return;
        }
        let mut path = if parent == root {
            Vec::new()
        } else if let Some(p) = state.names.get(&parent) {
            p.clone()
        } else {
            match parent_path() {
                Some(p) => p.into_bytes(),
                None => return,
            }
        };
        path.push(b'/');
        path.extend_from_slice(name);
        state.names.insert(child, path);
    }

    /// The path `nid` was first looked up by, if any.
    pub fn name_of(&self, nid: Nid) -> Option<Vec<u8>> {
        self.state
            .lock()
            .expect("access log lock")
            .names
            .get(&nid)
            .cloned()
    }

    /// Whether `nid` still needs a line: a cheap check before a caller searches for a
    /// path it has no name for.
    pub fn is_logged(&self, nid: Nid) -> bool {
        self.state
            .lock()
            .expect("access log lock")
            .logged
            .contains(&nid)
    }

    /// Logs the first read of regular file `nid`, known by `path`; later reads of it are
    /// ignored. A write failure is reported once as a warning and ends the log: serving
    /// goes on.
    pub fn read(&self, nid: Nid, path: &[u8]) {
        let mut state = self.state.lock().expect("access log lock");
        if state.broken || !state.logged.insert(nid) {
            return;
        }
        let Some(line) = as_pattern(path) else {
            log::warn!(
                "access log {}: {:?} cannot be written as a prefetch pattern: left out",
                self.path.display(),
                String::from_utf8_lossy(path)
            );
            return;
        };
        let written = state
            .out
            .write_all(line.as_bytes())
            .and_then(|()| state.out.write_all(b"\n"));
        match written {
            Ok(()) => state.dirty = true,
            Err(source) => self.broke(&mut state, source),
        }
    }

    /// Writes out buffered lines.
    pub fn flush(&self) -> Result<(), AccessLogError> {
        let mut state = self.state.lock().expect("access log lock");
        if !state.dirty || state.broken {
            return Ok(());
        }
        state.dirty = false;
        state.out.flush().map_err(|source| AccessLogError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn flush_quietly(&self) {
        let mut state = self.state.lock().expect("access log lock");
        if !state.dirty || state.broken {
            return;
        }
        state.dirty = false;
        if let Err(source) = state.out.flush() {
            self.broke(&mut state, source);
        }
    }

    fn broke(&self, state: &mut State, source: std::io::Error) {
        state.broken = true;
        let e = AccessLogError::Write {
            path: self.path.clone(),
            source,
        };
        log::warn!("{}: no more lines will be logged", crate::error::Chain(&e));
    }
}

/// `path` as a line `read_patterns` gives back unchanged, or `None`.
fn as_pattern(path: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(path).ok()?;
    let fits = s.starts_with('/') && !s.contains(['\n', '\r']) && s.trim_end() == s;
    fits.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::prefetch::read_patterns;

    #[test]
    fn patterns_read_back_as_written() {
        let cases: [(&[u8], bool); 7] = [
            (b"/usr/lib/python3.11/json/__init__.py", true),
            (b"/a b/c", true),
            (b"/tab\tinside", true),
            (b"/ends with space ", false),
            (b"/line\nbreak", false),
            (b"/not-utf8-\xff", false),
            (b"relative", false),
        ];
        for (path, fits) in cases {
            let got = as_pattern(path);
            assert_eq!(got.is_some(), fits, "{:?}", String::from_utf8_lossy(path));
            if let Some(line) = got {
                let back = read_patterns(format!("{line}\n").as_bytes()).unwrap();
                assert_eq!(back, vec![PathBuf::from(line)]);
            }
        }
    }

    #[test]
    fn first_read_order_once_each_with_looked_up_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = AccessLog::create(&path).unwrap();
        let root = Nid(1);
        let never = || -> Option<String> { panic!("parent was looked up") };
        log.named(root, root, b"usr", Nid(2), never);
        log.named(root, Nid(2), b"bin", Nid(3), never);
        log.named(root, Nid(3), b"python3", Nid(4), never);
        log.named(root, root, b"hardlink", Nid(4), never); // a second name: ignored
        log.named(root, Nid(9), b"x", Nid(10), || {
            Some("/found/by/search".into())
        });
        log.named(root, root, b"ends ", Nid(11), never);
        for nid in [4, 10, 4, 11, 10] {
            let name = log.name_of(Nid(nid)).unwrap();
            log.read(Nid(nid), &name);
        }
        // The flushing thread writes within FLUSH_INTERVAL, without an explicit flush
        // (waited for up to 20 times that, for a busy machine).
        let want = "/usr/bin/python3\n/found/by/search/x\n";
        let mut got = String::new();
        for _ in 0..40 {
            std::thread::sleep(FLUSH_INTERVAL / 2);
            got = std::fs::read_to_string(&path).unwrap();
            if got == want {
                break;
            }
        }
        assert_eq!(got, want);
        assert!(log.is_logged(Nid(11)), "left out, but only once");
        log.flush().unwrap();
    }
}
