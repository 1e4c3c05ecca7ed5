//! Finds and reads the data blobs an image refers to: from a blob directory (files named
//! by blob id) or from explicit blob files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::backend::BackendError;

/// Why a blob an image references cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum BlobOpenError {
    /// The blob file could not be opened or measured.
    #[error("cannot open {}", path.display())]
    File {
        /// The blob file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backend could not tell the blob's size (its error names blob and backend).
    #[error(transparent)]
    Backend(BackendError),
    /// Neither a file nor a backend was given for the blob.
    #[error("no blob file given")]
    NotGiven,
}

/// Where to look for blobs.
#[derive(Clone, Debug, Default)]
pub enum BlobSource {
    /// No blobs: metadata only (reading file data fails).
    #[default]
    None,
    /// A directory holding blobs named by their id.
    Dir(PathBuf),
    /// Explicit blob files. A file whose name is a blob id serves that blob; the others
    /// serve the remaining blobs in blob table order.
    Files(Vec<PathBuf>),
    /// A storage backend serving blobs by id.
    Backend(std::sync::Arc<dyn super::backend::Backend>),
    /// A storage backend, with how its blobs are fetched and cached (`--cache-dir`).
    CachedBackend(
        std::sync::Arc<dyn super::backend::Backend>,
        super::remote::RemoteOptions,
    ),
}

impl BlobSource {
    /// Opens blob `id` of the backend, if blobs come from one. Its size is asked of the
    /// backend only when nothing else knows it: a cache directory that holds the blob
    /// (blob ids are digests, so the size cannot change), then, with
    /// [`RemoteOptions::table_sizes`](super::remote::RemoteOptions::table_sizes),
    /// `table_size`, what the image's blob table records.
    pub fn open_remote(
        &self,
        id: &str,
        table_size: Option<u64>,
    ) -> Option<Result<BlobFile, BackendError>> {
        match self {
            BlobSource::Backend(b) => Some(BlobFile::remote(b.clone(), id)),
            BlobSource::CachedBackend(b, options) => {
                let cached = options
                    .cache
                    .as_ref()
                    .and_then(|c| super::cache::cached_blob_size(&c.dir, id));
                let from_table = table_size.filter(|_| options.table_sizes);
                Some(match (cached, from_table) {
                    (Some(len), _) => Ok(BlobFile::remote_known(b.clone(), id, len, false)),
                    (None, Some(len)) => Ok(BlobFile::remote_known(b.clone(), id, len, true)),
                    (None, None) => BlobFile::remote(b.clone(), id),
                })
            }
            _ => None,
        }
    }

    /// The backend, if blobs come from one.
    pub fn backend(&self) -> Option<&std::sync::Arc<dyn super::backend::Backend>> {
        match self {
            BlobSource::Backend(b) | BlobSource::CachedBackend(b, _) => Some(b),
            _ => None,
        }
    }
}

/// An open blob: a local file or a blob of a storage backend.
#[derive(Debug)]
pub struct BlobFile {
    /// Path it was opened from (for a backend: a description with the blob id).
    pub path: PathBuf,
    source: Source,
    /// Its length when opened.
    pub len: u64,
    /// Whether `len` is what the blob table said, not asked of the backend yet.
    unconfirmed: bool,
}

#[derive(Debug)]
enum Source {
    File(File),
    Backend(std::sync::Arc<dyn super::backend::Backend>, String),
}

impl BlobFile {
    /// Opens a blob file.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(BlobFile {
            path: path.to_path_buf(),
            source: Source::File(file),
            len,
            unconfirmed: false,
        })
    }

    /// Opens blob `id` of a backend (asks for its size).
    pub fn remote(
        backend: std::sync::Arc<dyn super::backend::Backend>,
        id: &str,
    ) -> Result<Self, BackendError> {
        let len = backend.size(id)?;
        Ok(BlobFile::remote_known(backend, id, len, false))
    }

    /// Blob `id` of a backend, `len` bytes long (`unconfirmed`: as the blob table says).
    fn remote_known(
        backend: std::sync::Arc<dyn super::backend::Backend>,
        id: &str,
        len: u64,
        unconfirmed: bool,
    ) -> Self {
        BlobFile {
            path: PathBuf::from(format!("{}/{id}", backend.describe())),
            source: Source::Backend(backend, id.to_string()),
            len,
            unconfirmed,
        }
    }

    /// For a remote blob whose length came from the blob table: asks the backend now, and
    /// says what is wrong, if anything (a cache directory's word is not checked: it
    /// recorded what the backend said, and the blob id is the digest of its bytes).
    pub fn confirm_len(&self) -> Result<(), BackendError> {
        let Source::Backend(backend, id) = &self.source else {
            return Ok(());
        };
        if !self.unconfirmed {
            return Ok(());
        }
        let len = backend.size(id)?;
        if len != self.len {
            return Err(backend.error(
                id,
                format!("{len} bytes, but the image's blob table says {}", self.len),
            ));
        }
        Ok(())
    }

    /// The backend and blob id of a remote blob; `None` for a local file.
    pub fn backend(&self) -> Option<(&std::sync::Arc<dyn super::backend::Backend>, &str)> {
        match &self.source {
            Source::Backend(b, id) => Some((b, id)),
            Source::File(_) => None,
        }
    }

    /// Asks the kernel to start reading `[offset, offset + len)` of a local blob file in
    /// the background (a hint; remote blobs ignore it).
    pub fn will_need(&self, offset: u64, len: u64) {
        if let Source::File(f) = &self.source {
            super::will_need(f, offset, len);
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match &self.source {
            Source::File(f) => f.read_exact_at(buf, offset),
            Source::Backend(b, id) => b.read_at(id, offset, buf).map_err(std::io::Error::other),
        }
    }
}

impl BlobSource {
    /// Resolves a path for each blob id (in table order); `None` where no file is known.
    pub fn resolve(&self, ids: &[String]) -> Vec<Option<PathBuf>> {
        match self {
            BlobSource::None | BlobSource::Backend(_) | BlobSource::CachedBackend(..) => {
                vec![None; ids.len()]
            }
            BlobSource::Dir(dir) => ids.iter().map(|id| Some(dir.join(id))).collect(),
            BlobSource::Files(files) => {
                let mut out: Vec<Option<PathBuf>> = vec![None; ids.len()];
                let mut rest: Vec<&PathBuf> = Vec::new();
                for f in files {
                    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    match ids.iter().position(|id| id == name) {
                        Some(i) if out[i].is_none() => out[i] = Some(f.clone()),
                        _ => rest.push(f),
                    }
                }
                let mut rest = rest.into_iter();
                for slot in out.iter_mut().filter(|s| s.is_none()) {
                    *slot = rest.next().cloned();
                }
                out
            }
        }
    }
}
