//! Output files that appear whole or not at all: written under a temporary name in the
//! destination directory and renamed into place once complete. A FIFO is written in place.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::BuildError;

/// A file being written; removed on drop unless committed.
pub struct PendingFile {
    temp: Option<PathBuf>,
    /// Where it ends up.
    pub target: PathBuf,
}

impl PendingFile {
    /// Creates a temporary file next to `target` (or opens `target` itself if it is a FIFO).
    pub fn create(target: &Path) -> Result<(Self, File), BuildError> {
        let is_fifo = fs::metadata(target)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        if is_fifo {
            let file = OpenOptions::new()
                .write(true)
                .open(target)
                .map_err(|e| BuildError::output(target, "cannot open FIFO for writing", e))?;
            return Ok((
                PendingFile {
                    temp: None,
                    target: target.to_path_buf(),
                },
                file,
            ));
        }
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target.file_name().ok_or_else(|| BuildError::Output {
            path: target.to_path_buf(),
            what: "output path has no file name".into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}", std::process::id()));
        let temp = dir.join(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| BuildError::output(target, "cannot create output", e))?;
        Ok((
            PendingFile {
                temp: Some(temp),
                target: target.to_path_buf(),
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
