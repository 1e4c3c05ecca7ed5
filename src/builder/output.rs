//! Output files that appear whole or not at all: written under a temporary name in the
//! destination directory and renamed into place once complete. A FIFO is written in place.

use std::fs::{self, File, OpenOptions};
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
        use std::io::Write;
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

impl Drop for PendingFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}
