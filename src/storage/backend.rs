//! Where blob data lives: one trait for every storage backend, configured from upstream's
//! backend configuration files (`--backend-type TYPE --backend-config-file FILE`).
//!
//! `localfs` is `{"dir": DIR}` (blobs named by id) or `{"blob_file": FILE}` (one blob);
//! `registry` is an OCI distribution registry (see [`super::registry`]); `oss` an Alibaba
//! Cloud OSS bucket (see [`super::oss`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A backend failure, naming the blob and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("blob {blob_id} ({backend}): {what}")]
pub struct BackendError {
    /// The blob.
    pub blob_id: String,
    /// Which backend, with its location.
    pub backend: String,
    /// What went wrong.
    pub what: String,
}

/// Read access to blobs by id.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A short description for messages (`localfs DIR`).
    fn describe(&self) -> String;
    /// The blob's size in bytes.
    fn size(&self, blob_id: &str) -> Result<u64, BackendError>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<(), BackendError>;
}

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
            return Err(self.err(blob_id, "not a usable blob id".into()));
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
        first.ok_or_else(|| self.err(blob_id, "no directory configured".into()))
    }

    fn err(&self, blob_id: &str, what: String) -> BackendError {
        BackendError {
            blob_id: blob_id.to_string(),
            backend: self.describe(),
            what,
        }
    }

    fn open(&self, blob_id: &str) -> Result<(PathBuf, File), BackendError> {
        let path = self.path_of(blob_id)?;
        let file = File::open(&path)
            .map_err(|e| self.err(blob_id, format!("cannot open {}: {e}", path.display())))?;
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
            .map_err(|e| self.err(blob_id, format!("cannot stat {}: {e}", path.display())))
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
            self.err(blob_id, what)
        })
    }
}

/// Builds the backend `kind` from the configuration file at `config`: upstream's shape,
/// either the backend's own object or `{"type": KIND, "config": {...}}`.
pub fn from_config_file(kind: &str, config: &Path) -> Result<Box<dyn Backend>, String> {
    let text = std::fs::read(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not JSON: {e}", config.display()))?;
    if let Some(inner) = value.get("config").cloned() {
        if let Some(t) = value.get("type").and_then(|t| t.as_str()) {
            if t != kind {
                return Err(format!(
                    "{}: describes a {t} backend, but --backend-type is {kind}",
                    config.display()
                ));
            }
        }
        value = inner;
    }
    match kind {
        "localfs" => {
            let c: LocalFsConfig = serde_json::from_value(value)
                .map_err(|e| format!("{}: localfs configuration: {e}", config.display()))?;
            if c.dir.is_none() && c.blob_file.is_none() {
                return Err(format!(
                    "{}: localfs needs \"dir\" or \"blob_file\"",
                    config.display()
                ));
            }
            Ok(Box::new(LocalFs { config: c }))
        }
        "registry" => {
            let c: super::registry::RegistryConfig = serde_json::from_value(value)
                .map_err(|e| format!("{}: registry configuration: {e}", config.display()))?;
            let r = super::registry::Registry::new(c)
                .map_err(|e| format!("{}: {e}", config.display()))?;
            Ok(Box::new(r))
        }
        "oss" => {
            let c: super::oss::OssConfig = serde_json::from_value(value)
                .map_err(|e| format!("{}: oss configuration: {e}", config.display()))?;
            let o = super::oss::Oss::new(c).map_err(|e| format!("{}: {e}", config.display()))?;
            Ok(Box::new(o))
        }
        other => Err(format!(
            "unknown backend type {other:?}: use localfs, registry or oss"
        )),
    }
}
