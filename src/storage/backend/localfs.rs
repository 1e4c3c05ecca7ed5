//! The `localfs` backend: blobs in a local directory, named by id, or one blob file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Backend, BackendError, ConfigError};

/// Blobs in a local directory, named by id, or one explicit blob file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFsConfig {
    /// Directory holding blobs named by their id.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A single blob file, serving whatever id is asked for.
    #[serde(default)]
    pub blob_file: Option<PathBuf>,
    /// Accepted for upstream's configurations: further directories to look in.
    #[serde(default)]
    pub alt_dirs: Vec<PathBuf>,
}

/// The `localfs` backend.
#[derive(Clone, Debug)]
pub struct LocalFs {
    config: LocalFsConfig,
}

impl LocalFs {
    /// The backend `config` describes: it needs a directory or a blob file.
    pub fn new(config: LocalFsConfig) -> Result<Self, ConfigError> {
        if config.dir.is_none() && config.blob_file.is_none() {
            return Err(ConfigError::Invalid {
                kind: "localfs",
                what: "needs \"dir\" or \"blob_file\"".into(),
            });
        }
        Ok(LocalFs { config })
    }

    /// Blobs named by id in `dir`.
    pub fn dir(dir: &Path) -> Self {
        LocalFs {
            config: LocalFsConfig {
                dir: Some(dir.to_path_buf()),
                blob_file: None,
                alt_dirs: Vec::new(),
            },
        }
    }

    fn path_of(&self, blob_id: &str) -> Result<PathBuf, BackendError> {
        if let Some(f) = &self.config.blob_file {
            return Ok(f.clone());
        }
        if blob_id.is_empty() || blob_id.contains('/') || blob_id == "." || blob_id == ".." {
            return Err(self.error(blob_id, "not a usable blob id".into()));
        }
        let dirs = self.config.dir.iter().chain(&self.config.alt_dirs);
        let mut first = None;
        for d in dirs {
            let p = d.join(blob_id);
            if p.exists() {
                return Ok(p);
            }
            first.get_or_insert(p);
        }
        first.ok_or_else(|| self.error(blob_id, "no directory configured".into()))
    }

    fn open(&self, blob_id: &str) -> Result<(PathBuf, File), BackendError> {
        let path = self.path_of(blob_id)?;
        let file = File::open(&path)
            .map_err(|e| self.error(blob_id, format!("cannot open {}: {e}", path.display())))?;
        Ok((path, file))
    }
}

impl Backend for LocalFs {
    fn describe(&self) -> String {
        match (&self.config.blob_file, &self.config.dir) {
            (Some(f), _) => format!("localfs file {}", f.display()),
            (None, Some(d)) => format!("localfs {}", d.display()),
            (None, None) => "localfs".into(),
        }
    }

    fn size(&self, blob_id: &str) -> Result<u64, BackendError> {
        let (path, file) = self.open(blob_id)?;
        file.metadata()
            .map(|m| m.len())
            .map_err(|e| self.error(blob_id, format!("cannot stat {}: {e}", path.display())))
    }

    fn read_at(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let (path, file) = self.open(blob_id)?;
        file.read_exact_at(buf, offset).map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!(
                    "{} ends before 0x{:x}: the blob is shorter than the bootstrap says",
                    path.display(),
                    offset + buf.len() as u64
                )
            } else {
                format!("cannot read {}: {e}", path.display())
            };
            self.error(blob_id, what)
        })
    }
}
