//! `unpack`: writes an image's tree as a tar (a file or a FIFO).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use nydus_image::reader::{is_inline_blob, Image};
use nydus_image::storage::backend;
use nydus_image::storage::blobs::BlobSource;

use crate::args::{BackendArgs, CacheArgs, LogLevel};

/// Flags as upstream 2.2.0's `unpack` takes them, plus our backend flags.
#[derive(clap::Args)]
pub struct UnpackArgs {
    /// Bootstrap of the image, or a data blob with inline metadata.
    #[arg(value_name = "BOOTSTRAP")]
    bootstrap_pos: Option<PathBuf>,
    /// Bootstrap of the image, or a data blob with inline metadata.
    #[arg(short = 'B', long, conflicts_with = "bootstrap_pos")]
    bootstrap: Option<PathBuf>,
    /// The image's data blob (a blob with inline metadata given as the bootstrap needs
    /// none).
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    /// Directory holding the image's blobs, named by blob id (every layer's, for a merged
    /// image).
    #[arg(short = 'D', long = "blob-dir", conflicts_with = "blob")]
    blob_dir: Option<PathBuf>,
    /// Storage backend type: localfs, registry or oss (with --backend-config-file).
    #[arg(long = "backend-type", conflicts_with_all = ["blob", "blob_dir"])]
    backend_type: Option<String>,
    /// The backend's configuration file (upstream's shape, e.g. {"dir": "/blobs"}).
    #[arg(long = "backend-config-file", requires = "backend_type")]
    backend_config_file: Option<PathBuf>,
    /// Upstream's form: a configuration file whose `backend` holds `type` and, under
    /// that type's name, its configuration.
    #[arg(long = "backend-config", conflicts_with_all = ["blob", "blob_dir", "backend_type"])]
    backend_config: Option<PathBuf>,
    #[command(flatten)]
    cache: CacheArgs,
    /// Where to write the tar: a file (written whole or not at all) or a FIFO.
    #[arg(long)]
    output: PathBuf,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `unpack` request.
pub struct UnpackOptions {
    bootstrap: PathBuf,
    blobs: BlobSource,
    output: PathBuf,
}

impl UnpackArgs {
    /// Checks the flags and sets up where blobs come from.
    pub fn options(self) -> Result<UnpackOptions> {
        let bootstrap = self
            .bootstrap
            .or(self.bootstrap_pos)
            .ok_or_else(|| anyhow!("give the image: BOOTSTRAP or --bootstrap"))?;
        if self.output.as_os_str().is_empty() {
            bail!("--output is empty");
        }
        let blobs = if let Some(file) = &self.backend_config {
            BlobSource::Backend(Arc::from(upstream_backend_config(file)?))
        } else if self.backend_type.is_some() {
            let backend = BackendArgs {
                backend_type: self.backend_type,
                backend_config_file: self.backend_config_file,
                backend_config: None,
            }
            .backend()?
            .expect("a backend type was given");
            BlobSource::Backend(Arc::from(backend))
        } else if let Some(dir) = self.blob_dir {
            BlobSource::Dir(dir)
        } else if let Some(blob) = self.blob {
            BlobSource::Files(vec![blob])
        } else if is_inline_blob(&bootstrap)
            .with_context(|| format!("cannot read {}", bootstrap.display()))?
        {
            BlobSource::None
        } else {
            bail!(
                "give the image's blobs: --blob FILE, --blob-dir DIR, or --backend-type with \
                 --backend-config-file (or give a blob with inline metadata as the bootstrap)"
            );
        };
        Ok(UnpackOptions {
            blobs: self.cache.apply(blobs)?,
            bootstrap,
            output: self.output,
        })
    }
}

/// Upstream's `--backend-config FILE`: `{"backend": {"type": T, T: {...}}}` (its
/// configuration version 2), or `{"type": T, "config": {...}}` (version 1's backend part).
fn upstream_backend_config(file: &std::path::Path) -> Result<Box<dyn backend::Backend>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read backend configuration {}", file.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("backend configuration {} is not JSON", file.display()))?;
    let backend = value.get("backend").unwrap_or(&value);
    let kind = backend
        .get("type")
        .and_then(|t| t.as_str())
        .with_context(|| format!("{}: no backend type", file.display()))?;
    let config = backend
        .get(kind)
        .or_else(|| backend.get("config"))
        .with_context(|| {
            format!(
                "{}: no configuration for the {kind} backend",
                file.display()
            )
        })?;
    backend::from_config(kind, config)
        .with_context(|| format!("backend configuration {}", file.display()))
}

/// Unpacks and reports.
pub fn run(opts: UnpackOptions) -> Result<ExitCode> {
    let mut image = Image::open_any(&opts.bootstrap, opts.blobs)?;
    // Chunk-sized buffers come and go all the time: keep them in one heap.
    nydus_image::heap::tune_for_build(image.super_block().chunk_size);
    // Each chunk is read once, in order: a chunk's worth of cache is enough for the
    // duplicates that follow each other.
    image.set_cache_bytes(image.super_block().chunk_size as usize);
    let report = nydus_image::ops::unpack::unpack(&mut image, &opts.output)
        .with_context(|| format!("cannot unpack into {}", opts.output.display()))?;
    log::info!(
        "wrote {} members, {} bytes of file data, to {}",
        report.members,
        report.data_bytes,
        opts.output.display()
    );
    if !report.sockets_skipped.is_empty() {
        log::warn!(
            "{} socket(s) left out: tar cannot hold sockets",
            report.sockets_skipped.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
