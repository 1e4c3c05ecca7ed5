//! Output files that appear whole or not at all: written under a temporary name in the
//! destination directory and renamed into place once complete. A FIFO or a device is
//! written in place.
//!
//! Temporary names are `.NAME.tmp-PID-N`: the process id and a counter of this process,
//! so that builds and compactions running at once in one process (or in several) never
//! write to one file; a file a killed process left under a name is not reused.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::BuildError;

/// A file being written; removed on drop unless committed.
pub struct PendingFile {
    temp: Option<PathBuf>,
    /// Where it ends up.
    pub target: PathBuf,
}

impl PendingFile {
    /// Creates a temporary file next to `target`, or opens `target` itself if it is a FIFO
    /// or a device (`/dev/null`, `/dev/stdout` on a terminal): those are written in place,
    /// never replaced by a file renamed over them.
    pub fn create(target: &Path) -> Result<(Self, File), BuildError> {
        let in_place = fs::metadata(target).is_ok_and(|m| {
            let t = m.file_type();
            t.is_fifo() || t.is_char_device() || t.is_block_device() || t.is_socket()
        });
        if in_place {
            let file = OpenOptions::new()
                .write(true)
                .open(target)
                .map_err(|e| BuildError::output(target, "cannot open for writing", e))?;
            if fs::metadata(target).is_ok_and(|m| m.file_type().is_fifo()) {
                widen_pipe(&file);
            }
            return Ok((
                PendingFile {
                    temp: None,
                    target: target.to_path_buf(),
                },
                file,
            ));
        }
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = target.file_name().ok_or_else(|| BuildError::Output {
            path: target.to_path_buf(),
            what: "output path has no file name".into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let (temp, file) = create_temp(dir, name)
            .map_err(|e| BuildError::output(target, "cannot create output", e))?;
        Ok((
            PendingFile {
                temp: Some(temp),
                target: target.to_path_buf(),
            },
            file,
        ))
    }

    /// Creates a temporary file in `dir` for an output whose name is known only once it
    /// is written (a blob named by its digest): `.STEM.tmp-PID-N`. Its target is `dir`
    /// until [`retarget`](Self::retarget) names it.
    pub fn create_in(dir: &Path, stem: &str) -> Result<(Self, File), BuildError> {
        let (temp, file) = create_temp(dir, stem.as_ref())
            .map_err(|e| BuildError::output(dir, &format!("cannot create a {stem} in it"), e))?;
        Ok((
            PendingFile {
                temp: Some(temp),
                target: dir.to_path_buf(),
            },
            file,
        ))
    }

    /// Writes `bytes` to `target` whole: under a temporary name, synced, renamed into
    /// place; `what` names the file in errors ("bootstrap").
    pub fn write_whole(target: &Path, bytes: &[u8], what: &str) -> Result<PathBuf, BuildError> {
        let (pending, file) = PendingFile::create(target)?;
        let mut out = std::io::BufWriter::new(file);
        out.write_all(bytes)
            .and_then(|_| out.flush())
            .map_err(|e| BuildError::output(target, &format!("cannot write {what}"), e))?;
        drop(out);
        pending.commit()
    }

    /// Changes the final name (used for blobs named by their digest).
    pub fn retarget(&mut self, target: PathBuf) {
        self.target = target;
    }

    /// Syncs and renames the file into place.
    pub fn commit(mut self) -> Result<PathBuf, BuildError> {
        if let Some(temp) = self.temp.take() {
            if let Err(e) = File::open(&temp).and_then(|f| f.sync_all()) {
                let _ = fs::remove_file(&temp);
                return Err(BuildError::output(&self.target, "cannot sync output", e));
            }
            if let Err(e) = fs::rename(&temp, &self.target) {
                let _ = fs::remove_file(&temp);
                return Err(BuildError::output(
                    &self.target,
                    "cannot move output into place",
                    e,
                ));
            }
        }
        Ok(self.target.clone())
    }
}

/// Temporary files this process has named so far.
static TEMP_COUNT: AtomicU64 = AtomicU64::new(0);

/// Most names tried before giving up on a directory full of leftovers.
const TEMP_ATTEMPTS: u32 = 64;

/// Creates `dir/.NAME.tmp-PID-N`, a name no other file has: the counter makes it unique in
/// this process, the process id among live processes, and a leftover of a killed process
/// that had this id is stepped over.
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<(PathBuf, File)> {
    let mut attempt = 0;
    loop {
        let n = TEMP_COUNT.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}-{n}", std::process::id()));
        let temp = dir.join(temp_name);
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < TEMP_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The capacity asked for a pipe written or read whole (Linux's default is 64 KiB; 1 MiB
/// is what an unprivileged process may ask for by default).
const PIPE_CAPACITY: libc::c_int = 1 << 20;

/// Asks for a larger buffer on a pipe or FIFO, so that the two sides of a streamed layer
/// or tar wake each other once a MiB instead of once every 64 KiB (a 4 GiB unpack through
/// a pipe spent most of its time switching between writer and reader). Anything else,
/// or a refusal, leaves the file as it is.
pub fn widen_pipe(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl with an integer argument on a descriptor `file` owns; no memory is
    // passed.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_CAPACITY) };
    if rc < 0 {
        log::debug!(
            "pipe buffer left as it is: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Bytes of new data after which [`Writeback`] hands them to the disk.
const WRITEBACK_WINDOW: u64 = 8 << 20;

/// A file written front to back whose finished parts are handed to the disk while the rest
/// is still being produced, so that the sync in [`PendingFile::commit`] waits only for the
/// last few MiB instead of the whole file. Starting writeback does not wait for it; the
/// sync at commit still reports any write error.
pub struct Writeback {
    file: File,
    written: u64,
    submitted: u64,
    /// False once the kernel refused (a FIFO, a filesystem without it): then plain writes.
    enabled: bool,
}

impl Writeback {
    /// Wraps `file`, positioned at its start.
    pub fn new(file: File) -> Self {
        Writeback {
            file,
            written: 0,
            submitted: 0,
            enabled: true,
        }
    }

    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let len = self.written - self.submitted;
        // SAFETY: plain system call on a descriptor this struct owns; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.submitted as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc == 0 {
            self.submitted = self.written;
        } else {
            self.enabled = false;
        }
    }
}

impl std::io::Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.enabled && self.written - self.submitted >= WRITEBACK_WINDOW {
            self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    /// Two outputs for one target, pending at once, write to two temporary files, each
    /// named `.NAME.tmp-PID-N`; a dropped one leaves nothing.
    #[test]
    fn pending_outputs_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("boot");
        let (first, mut f1) = PendingFile::create(&target).unwrap();
        let (second, mut f2) = PendingFile::create(&target).unwrap();
        let (blob, _) = PendingFile::create_in(dir.path(), "blob").unwrap();
        let temps = names(dir.path());
        assert_eq!(temps.len(), 3, "{temps:?}");
        let prefix = format!(".boot.tmp-{}-", std::process::id());
        assert_eq!(
            temps.iter().filter(|n| n.starts_with(&prefix)).count(),
            2,
            "{temps:?}"
        );
        assert!(
            temps.iter().any(|n| n.starts_with(".blob.tmp-")),
            "{temps:?}"
        );
        f1.write_all(b"first").unwrap();
        f2.write_all(b"second").unwrap();
        drop(blob);
        drop(second);
        assert_eq!(first.commit().unwrap(), target);
        assert_eq!(fs::read(&target).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["boot"]);
    }
}
