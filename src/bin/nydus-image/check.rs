//! `check`: validates a bootstrap; with a blob directory, also reads every file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};

use nydus_image::ops::check;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

use crate::args::{self, LogLevel};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Bootstrap to check, or a data blob with inline metadata.
    #[arg(value_name = "BOOTSTRAP")]
    bootstrap_pos: Option<PathBuf>,
    /// Bootstrap to check, or a data blob with inline metadata.
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    /// Blob directory: also read every file and verify every chunk digest (a blob with
    /// inline metadata serves its own chunks; the directory, any other blob's).
    #[arg(short = 'D', long = "blob-dir")]
    blob_dir: Option<PathBuf>,
    /// List every entry.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Write a JSON report here.
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `check` request.
pub struct CheckOptions {
    bootstrap: PathBuf,
    blob_dir: Option<PathBuf>,
    verbose: bool,
    output_json: Option<PathBuf>,
}

impl CheckArgs {
    /// Checks the flags.
    pub fn options(self) -> Result<CheckOptions> {
        let bootstrap = self
            .bootstrap
            .or(self.bootstrap_pos)
            .ok_or_else(|| anyhow!("give the bootstrap to check (BOOTSTRAP or --bootstrap)"))?;
        Ok(CheckOptions {
            bootstrap,
            blob_dir: self.blob_dir,
            verbose: self.verbose,
            output_json: self.output_json,
        })
    }
}

/// Checks the image and prints what upstream's `check` prints.
pub fn run(opts: CheckOptions) -> Result<ExitCode> {
    let source = match &opts.blob_dir {
        Some(d) => BlobSource::Dir(d.clone()),
        None => BlobSource::None,
    };
    let mut image = Image::open_any(&opts.bootstrap, source)?;
    image.validate = true;
    let report = check::check(&image, opts.verbose)?;
    if opts.blob_dir.is_some() {
        let bytes = check::read_all_files(&image)?;
        log::info!("read and verified {bytes} bytes of file data");
    }
    eprintln!("RAFS features: {}", report.features.join(" | "));
    if opts.verbose {
        for e in &report.tree {
            println!(
                "inode: {:?} nid {} mode 0o{:o} size {} nlink {} chunks {}",
                e.path, e.nid, e.mode, e.size, e.nlink, e.chunks
            );
        }
        for e in &report.prefetch {
            println!("prefetch: {:?} nid {}", e.path, e.nid);
        }
    }
    println!("RAFS filesystem metadata is valid, referenced data blobs: ");
    for (i, b) in report.blobs.iter().enumerate() {
        println!(
            "\t {i}: {}, compressed data size 0x{:x}, compressed file size 0x{:x}, uncompressed file size 0x{:x}, chunks: 0x{:x}, features: {}",
            b.blob_id,
            b.compressed_data_size,
            b.compressed_size,
            b.uncompressed_size,
            b.chunk_count,
            b.features.join(" ")
        );
    }
    if let Some(path) = &opts.output_json {
        let json = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "bootstrap": opts.bootstrap,
            "blobs": report.blobs.iter().map(|b| b.blob_id.clone()).collect::<Vec<_>>(),
            "fs_version": report.fs_version,
            "features": report.features,
            "chunk_size": format!("0x{:x}", report.chunk_size),
            "inodes": report.inodes,
            "entries": report.entries,
            "blob_details": report.blobs,
            "prefetch": report.prefetch,
            "tree": if opts.verbose { serde_json::to_value(&report.tree)? } else { serde_json::Value::Null },
        });
        args::write_json(path, &json)?;
    }
    Ok(ExitCode::SUCCESS)
}
