//! `export -C/--config FILE`: upstream HEAD's blob cache entry, the JSON object nydusd's
//! blob cache API takes, naming the bootstrap to export and the backend holding its
//! blobs. Read here into a bootstrap path and a [`Backend`]; the rest (cache type and
//! directory, prefetch, ids) is about nydusd's cache and has no effect on an export.
//!
//! Two shapes, as upstream accepts them:
//!
//! ```json
//! {"type": "bootstrap", "id": "ID", "domain_id": "D",
//!  "config_v2": {"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "BLOBS"}},
//!                "cache": {...}, "metadata_path": "BOOTSTRAP"}}
//! {"type": "bootstrap", "id": "ID",
//!  "config": {"backend_type": "localfs", "backend_config": {"dir": "BLOBS"},
//!             "cache_type": "...", "cache_config": {...}, "metadata_path": "BOOTSTRAP"}}
//! ```
//!
//! `config_v2` wins when both are there, as upstream's does.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::storage::backend::{self, Backend, ConfigError};

/// Largest configuration file read (upstream's limit too).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a blob cache entry file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The file cannot be read.
    #[error("blob cache entry {}: cannot read it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any configuration.
    #[error("blob cache entry {}: {size} bytes, more than the {MAX_CONFIG_BYTES} a configuration may have", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not JSON.
    #[error("blob cache entry {}: not JSON", path.display())]
    NotJson {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A field is missing or has a value export cannot use.
    #[error("blob cache entry {}: {what}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// Which field, what was expected and what was found.
        what: String,
    },
    /// The backend part names an unknown backend or does not describe a usable one.
    #[error("blob cache entry {}: backend {kind:?}", path.display())]
    Backend {
        /// The file.
        path: PathBuf,
        /// The backend type it names.
        kind: String,
        /// Why it cannot be used.
        #[source]
        source: ConfigError,
    },
}

/// What a blob cache entry names.
#[derive(Debug)]
pub struct Entry {
    /// The bootstrap (`metadata_path`).
    pub bootstrap: PathBuf,
    /// The backend its blobs are read from.
    pub backend: Box<dyn Backend>,
}

/// Reads the blob cache entry in the file at `path`.
pub fn read_entry(path: &Path) -> Result<Entry, EntryError> {
    let read_err = |source| EntryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(EntryError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let text = std::fs::read(path).map_err(read_err)?;
    let value: Value = serde_json::from_slice(&text).map_err(|source| EntryError::NotJson {
        path: path.to_path_buf(),
        source,
    })?;
    parse_entry(path, &value)
}

/// The entry in `value`, read from `path` (named in errors).
fn parse_entry(path: &Path, value: &Value) -> Result<Entry, EntryError> {
    let field = |what: String| EntryError::Field {
        path: path.to_path_buf(),
        what,
    };
    match value.get("type") {
        Some(Value::String(t)) if t == "bootstrap" => {}
        Some(other) => {
            return Err(field(format!(
                "\"type\" is {other}: export needs a \"bootstrap\" entry (a data blob alone \
                 has no file system)"
            )))
        }
        None => return Err(field("no \"type\" (expected \"bootstrap\")".into())),
    }
    let (config, version) = match (value.get("config_v2"), value.get("config")) {
        (Some(c), _) => (c, 2),
        (None, Some(c)) => (c, 1),
        (None, None) => {
            return Err(field(
                "neither \"config_v2\" nor \"config\": no backend and bootstrap named".into(),
            ))
        }
    };
    let key = if version == 2 { "config_v2" } else { "config" };
    if version == 2 {
        match config.get("version") {
            Some(v) if v.as_u64() == Some(2) => {}
            other => {
                return Err(field(format!(
                    "\"config_v2.version\" is {}, expected 2",
                    other.map_or("missing".to_string(), Value::to_string)
                )))
            }
        }
    }
    let bootstrap = match config.get("metadata_path") {
        Some(Value::String(p)) if !p.is_empty() => PathBuf::from(p),
        other => {
            return Err(field(format!(
                "\"{key}.metadata_path\" is {}: give the bootstrap's path",
                other.map_or("missing".to_string(), Value::to_string)
            )))
        }
    };
    // Version 2: {"type": T, T: {...}}; version 1: "backend_type" and "backend_config".
    let (kind, backend_config) = if version == 2 {
        let b = config
            .get("backend")
            .ok_or_else(|| field("no \"config_v2.backend\"".into()))?;
        let kind = b
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| field("no \"config_v2.backend.type\"".into()))?;
        let c = b.get(kind).ok_or_else(|| {
            field(format!(
                "\"config_v2.backend\" is of type {kind:?} but has no \"{kind}\" object"
            ))
        })?;
        (kind, c)
    } else {
        let kind = config
            .get("backend_type")
            .and_then(Value::as_str)
            .ok_or_else(|| field("no \"config.backend_type\"".into()))?;
        let c = config
            .get("backend_config")
            .ok_or_else(|| field("no \"config.backend_config\"".into()))?;
        (kind, c)
    };
    let backend =
        backend::from_config(kind, backend_config).map_err(|source| EntryError::Backend {
            path: path.to_path_buf(),
            kind: kind.to_string(),
            source,
        })?;
    log::debug!(
        "{}: bootstrap {}, blobs from {}",
        path.display(),
        bootstrap.display(),
        backend.describe()
    );
    Ok(Entry { bootstrap, backend })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Entry, EntryError> {
        parse_entry(Path::new("entry.json"), &v)
    }

    #[test]
    fn both_shapes_name_the_bootstrap_and_backend() {
        let v2 = json!({"type": "bootstrap", "id": "x", "domain_id": "d",
            "config_v2": {"version": 2, "id": "f",
                "backend": {"type": "localfs", "localfs": {"dir": "/blobs"}},
                "cache": {"type": "filecache", "filecache": {"work_dir": "/c"}},
                "metadata_path": "/img/boot"}});
        let e = parse(v2).unwrap();
        assert_eq!(e.bootstrap, Path::new("/img/boot"));
        assert!(e.backend.describe().contains("/blobs"), "{:?}", e.backend);
        let v1 = json!({"type": "bootstrap", "id": "x",
            "config": {"backend_type": "localfs", "backend_config": {"dir": "/b1"},
                "cache_type": "fscache", "cache_config": {"work_dir": "/c"},
                "metadata_path": "/img/boot1"}});
        let e = parse(v1).unwrap();
        assert_eq!(e.bootstrap, Path::new("/img/boot1"));
        assert!(e.backend.describe().contains("/b1"), "{:?}", e.backend);
    }

    #[test]
    fn unusable_entries_say_which_field() {
        let base = |config: Value| json!({"type": "bootstrap", "id": "x", "config_v2": config});
        for (v, want) in [
            (json!({"id": "x"}), "no \"type\""),
            (
                json!({"type": "datablob", "config_v2": {}}),
                "\"type\" is \"datablob\"",
            ),
            (json!({"type": "bootstrap"}), "neither"),
            (
                base(json!({"version": 1, "metadata_path": "/b"})),
                "version\" is 1",
            ),
            (
                base(
                    json!({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/d"}}}),
                ),
                "metadata_path\" is missing",
            ),
            (
                base(json!({"version": 2, "metadata_path": "/b",
                    "backend": {"type": "localfs"}})),
                "no \"localfs\" object",
            ),
            (
                base(json!({"version": 2, "metadata_path": "/b",
                    "backend": {"type": "ftp", "ftp": {}}})),
                "backend \"ftp\"",
            ),
        ] {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.to_string().contains(want), "{v}: {e}");
            assert!(e.to_string().contains("entry.json"), "{v}: {e}");
        }
    }
}
