//! `export --block`: one raw EROFS image holding an image's metadata and file data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use nydus_image::storage::blobs::BlobSource;

use crate::args::{BlobArgs, LogLevel};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Write a raw EROFS block image (metadata and all file data, uncompressed), for the
    /// kernel's EROFS over one loop device (upstream's flag; the only export here).
    #[arg(long)]
    block: bool,
    /// Bootstrap of the image, or a data blob with inline metadata.
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    #[command(flatten)]
    blobs: BlobArgs,
    /// Upstream's name for --blob-dir here (upstream HEAD's `export -D`).
    #[arg(long = "localfs-dir", value_name = "DIR", conflicts_with = "blob_dir")]
    localfs_dir: Option<PathBuf>,
    /// The block image to write (under a temporary name, renamed when complete).
    #[arg(short = 'O', long)]
    output: PathBuf,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `export` request.
pub struct ExportOptions {
    bootstrap: PathBuf,
    blobs: BlobSource,
    output: PathBuf,
}

impl ExportArgs {
    /// Checks the flags and opens the blob source.
    pub fn options(mut self) -> Result<ExportOptions> {
        if let Some(dir) = self.localfs_dir.take() {
            self.blobs.blob_dir = Some(dir);
        }
        if !self.block {
            bail!("give --block: a raw EROFS block image is the only export");
        }
        Ok(ExportOptions {
            blobs: self.blobs.source_for(&self.bootstrap)?,
            bootstrap: self.bootstrap,
            output: self.output,
        })
    }
}

/// Exports and prints what was written.
pub fn run(opts: ExportOptions) -> Result<ExitCode> {
    let s = nydus_image::ops::export::export_block(&opts.bootstrap, opts.blobs, &opts.output)?;
    println!(
        "block image {}: {} bytes, {} distinct chunks for {} chunk indexes",
        s.output.display(),
        s.size,
        s.chunks,
        s.chunk_indexes
    );
    Ok(ExitCode::SUCCESS)
}
