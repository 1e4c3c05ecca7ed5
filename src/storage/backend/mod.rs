//! Where blob data lives: one trait for every storage backend, configured from upstream's
//! backend configuration files (`--backend-type TYPE --backend-config-file FILE`).
//!
//! Each backend is a leaf module; [`from_config`] builds one from its JSON configuration.
//! `localfs` is `{"dir": DIR}` (blobs named by id) or `{"blob_file": FILE}` (one blob);
//! `registry` is an OCI distribution registry (see [`registry`]); `oss` an Alibaba
//! Cloud OSS bucket (see [`oss`]).

pub mod http;
pub mod localfs;
pub mod oss;
pub mod registry;

use std::path::{Path, PathBuf};

pub use localfs::{LocalFs, LocalFsConfig};

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

    /// A failure of this backend for `blob_id`, naming both.
    fn error(&self, blob_id: &str, what: String) -> BackendError {
        BackendError {
            blob_id: blob_id.to_string(),
            backend: self.describe(),
            what,
        }
    }
}

/// A backend configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("backend configuration {}: cannot read it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not JSON.
    #[error("backend configuration {}: not JSON", path.display())]
    NotJson {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The configuration names another backend type than the one asked for.
    #[error("the configuration describes a {found} backend, but the backend type is {wanted}")]
    WrongType {
        /// The type asked for.
        wanted: String,
        /// The type the configuration names.
        found: String,
    },
    /// A field is missing, unknown or of the wrong type.
    #[error("{kind} backend configuration")]
    Fields {
        /// The backend type.
        kind: &'static str,
        /// The parser's error, naming the field.
        #[source]
        source: serde_json::Error,
    },
    /// The fields parse, but do not describe a usable backend.
    #[error("{kind} backend configuration: {what}")]
    Invalid {
        /// The backend type.
        kind: &'static str,
        /// What is wrong.
        what: String,
    },
    /// No backend of that type exists.
    #[error("unknown backend type {0:?}: use localfs, registry or oss")]
    UnknownType(String),
    /// A configuration read from a file is unusable (names the file).
    #[error("backend configuration {}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ConfigError>,
    },
}

/// Builds the backend `kind` from its configuration: upstream's shape, either the
/// backend's own object or `{"type": KIND, "config": {...}}`.
pub fn from_config(
    kind: &str,
    config: &serde_json::Value,
) -> Result<Box<dyn Backend>, ConfigError> {
    let mut value = config;
    if let Some(inner) = config.get("config") {
        if let Some(t) = config.get("type").and_then(|t| t.as_str()) {
            if t != kind {
                return Err(ConfigError::WrongType {
                    wanted: kind.to_string(),
                    found: t.to_string(),
                });
            }
        }
        value = inner;
    }
    let value = value.clone();
    match kind {
        "localfs" => {
            let c: LocalFsConfig =
                serde_json::from_value(value).map_err(|source| ConfigError::Fields {
                    kind: "localfs",
                    source,
                })?;
            Ok(Box::new(LocalFs::new(c)?))
        }
        "registry" => {
            let c: registry::RegistryConfig =
                serde_json::from_value(value).map_err(|source| ConfigError::Fields {
                    kind: "registry",
                    source,
                })?;
            Ok(Box::new(registry::Registry::new(c)?))
        }
        "oss" => {
            let c: oss::OssConfig =
                serde_json::from_value(value).map_err(|source| ConfigError::Fields {
                    kind: "oss",
                    source,
                })?;
            Ok(Box::new(oss::Oss::new(c)?))
        }
        other => Err(ConfigError::UnknownType(other.to_string())),
    }
}

/// [`from_config`] with the configuration read from the file at `path`.
pub fn from_config_file(kind: &str, path: &Path) -> Result<Box<dyn Backend>, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| ConfigError::NotJson {
            path: path.to_path_buf(),
            source,
        })?;
    from_config(kind, &value).map_err(|e| ConfigError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}
