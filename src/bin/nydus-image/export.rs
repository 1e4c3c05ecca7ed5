//! `export --block`: one raw EROFS image holding an image's metadata and file data,
//! with upstream HEAD's flags (`-C/--config`, `-D/--localfs-dir`, `--threads`,
//! `--verity`, `-O` optional beside `-D`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use nydus_image::ops::export::{self, ExportOptions as LibOptions};
use nydus_image::storage::blobs::BlobSource;

use crate::args::{BlobArgs, LogLevel};

/// Most worker threads used (upstream's cap too; more are accepted and clamped).
const MAX_THREADS: usize = 32;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Write a raw EROFS block image (metadata and all file data, uncompressed), for the
    /// kernel's EROFS over one loop device (upstream's flag; the only export here).
    #[arg(long)]
    block: bool,
    /// Bootstrap of the image, or a data blob with inline metadata.
    #[arg(short = 'B', long, required_unless_present = "config")]
    bootstrap: Option<PathBuf>,
    /// Upstream HEAD's blob cache entry (JSON): `{"type": "bootstrap", "config_v2":
    /// {"version": 2, "backend": {...}, "metadata_path": BOOTSTRAP}}` names the bootstrap
    /// and the backend of its blobs; its cache settings are not used.
    #[arg(
        short = 'C',
        long,
        conflicts_with_all = [
            "bootstrap",
            "blob_dir",
            "blobs",
            "backend_type",
            "backend_config_file",
            "backend_config",
            "localfs_dir"
        ]
    )]
    config: Option<PathBuf>,
    #[command(flatten)]
    blobs: BlobArgs,
    /// Upstream's name for --blob-dir here (upstream HEAD's `export -D`).
    #[arg(long = "localfs-dir", value_name = "DIR", conflicts_with = "blob_dir")]
    localfs_dir: Option<PathBuf>,
    /// The block image to write (under a temporary name, renamed when complete). With
    /// --blob-dir/--localfs-dir it defaults to DIR/BOOTSTRAP_NAME.disk, as upstream's.
    #[arg(short = 'O', long)]
    output: Option<PathBuf>,
    /// Worker threads reading and decompressing chunks: 1 to 1024, at most 32 used (as
    /// upstream takes it).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Append a dm-verity hash tree (sha256, 4 KiB blocks, no salt, no superblock) after
    /// the image and print the `veritysetup` options and root digest, as upstream's.
    #[arg(long, requires = "block")]
    verity: bool,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `export` request.
pub struct ExportOptions {
    bootstrap: PathBuf,
    blobs: BlobSource,
    output: PathBuf,
    lib: LibOptions,
}

impl ExportArgs {
    /// Checks the flags, reads the blob cache entry if given and opens the blob source.
    pub fn options(mut self) -> Result<ExportOptions> {
        if let Some(dir) = self.localfs_dir.take() {
            self.blobs.blob_dir = Some(dir);
        }
        if !self.block {
            bail!("give --block: a raw EROFS block image is the only export");
        }
        let (bootstrap, blobs) = match (&self.config, self.bootstrap.take()) {
            (Some(file), _) => {
                let entry = export::config::read_entry(file)?;
                (
                    entry.bootstrap,
                    BlobSource::Backend(Arc::from(entry.backend)),
                )
            }
            (None, Some(b)) => {
                let blobs = self.blobs.source_for(&b)?;
                (b, blobs)
            }
            (None, None) => bail!("give --bootstrap or --config"),
        };
        let output = match (self.output, &self.blobs.blob_dir) {
            (Some(o), _) => o,
            (None, Some(dir)) => {
                let name = bootstrap.file_name().with_context(|| {
                    format!("bootstrap {} has no file name", bootstrap.display())
                })?;
                let mut name = name.to_os_string();
                name.push(".disk");
                dir.join(name)
            }
            (None, None) => {
                bail!("give --output (needed unless --blob-dir/--localfs-dir is given)")
            }
        };
        Ok(ExportOptions {
            bootstrap,
            blobs,
            output,
            lib: LibOptions {
                threads: usize::from(self.threads).min(MAX_THREADS),
                verity: self.verity,
            },
        })
    }
}

/// Exports and prints what was written (and upstream's dm-verity line with --verity).
pub fn run(opts: ExportOptions) -> Result<ExitCode> {
    let s = export::export_block(&opts.bootstrap, opts.blobs, &opts.output, &opts.lib)?;
    println!(
        "block image {}: {} bytes, {} distinct chunks for {} chunk indexes",
        s.output.display(),
        s.size,
        s.chunks,
        s.chunk_indexes
    );
    if let Some(v) = &s.verity {
        println!(
            "dm-verity hash tree: {} bytes at offset {}, root {}",
            v.hash_bytes, v.hash_offset, v.root_hex
        );
        println!("{}", v.upstream_line());
    }
    Ok(ExitCode::SUCCESS)
}
