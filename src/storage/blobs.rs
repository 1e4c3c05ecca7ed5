//! Finds and reads the data blobs an image refers to: from a blob directory (files named
//! by blob id) or from explicit blob files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
}

/// An open blob file.
#[derive(Debug)]
pub struct BlobFile {
    /// Path it was opened from.
    pub path: PathBuf,
    file: File,
    /// Its length when opened.
    pub len: u64,
}

impl BlobFile {
    /// Opens a blob file.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(BlobFile {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

impl BlobSource {
    /// Resolves a path for each blob id (in table order); `None` where no file is known.
    pub fn resolve(&self, ids: &[String]) -> Vec<Option<PathBuf>> {
        match self {
            BlobSource::None => vec![None; ids.len()],
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
