//! `verify`: compares an image with the layer directories it was built from.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::ValueEnum;

use nydus_image::ops::verify::{Stack, Via};
use nydus_image::storage::blobs::BlobSource;

use crate::args::{self, BlobArgs, CacheArgs, LogLevel, WhiteoutArg};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum ViaArg {
    Fuse,
    Library,
    Kernel,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The source directory the image was built from; several make a layer stack,
    /// bottom first, merged with --whiteout-spec.
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// How whiteouts are spelled in the source layers.
    #[arg(long = "whiteout-spec", value_enum, default_value = "oci")]
    whiteout_spec: WhiteoutArg,
    /// Bootstrap of the image, or a data blob with inline metadata (which then needs no
    /// blob flags for its own data).
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    #[command(flatten)]
    blobs: BlobArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// Read the image through a FUSE mount (default: what a user sees), the library, or
    /// the kernel's EROFS over loop devices (uncompressed v6 images built by this tool;
    /// a v5 image through a temporary block export of it, in TMPDIR).
    #[arg(long, value_enum, default_value = "fuse")]
    via: ViaArg,
    /// Write the differences and summary as JSON here.
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Compare modification times to the second (the source's rounded), as an eStargz
    /// TOC stores them.
    #[arg(long = "mtime-seconds")]
    mtime_seconds: bool,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `verify` request.
pub struct VerifyOptions {
    stack: Stack,
    bootstrap: PathBuf,
    blobs: BlobSource,
    via: Via,
    output_json: Option<PathBuf>,
}

impl VerifyArgs {
    /// Checks the flags and opens the blob source.
    pub fn options(self) -> Result<VerifyOptions> {
        Ok(VerifyOptions {
            stack: Stack {
                parent: None,
                layers: self.sources,
                whiteouts: self.whiteout_spec.into(),
                mtime_seconds: self.mtime_seconds,
            },
            blobs: self.cache.apply(self.blobs.source_for(&self.bootstrap)?)?,
            bootstrap: self.bootstrap,
            via: match self.via {
                ViaArg::Fuse => Via::Fuse,
                ViaArg::Library => Via::Library,
                ViaArg::Kernel => Via::Kernel,
            },
            output_json: self.output_json,
        })
    }
}

/// Compares; exit 0 when identical, 1 when not (errors exit 2, in main).
pub fn run(opts: VerifyOptions) -> Result<ExitCode> {
    let report =
        nydus_image::ops::verify::verify(&opts.stack, &opts.bootstrap, opts.blobs, opts.via)?;
    if let Some(path) = &opts.output_json {
        let json = serde_json::json!({
            "sources": opts.stack.layers,
            "bootstrap": opts.bootstrap,
            "via": format!("{:?}", opts.via).to_lowercase(),
            "identical": report.identical(),
            "entries_compared": report.entries_compared,
            "bytes_compared": report.bytes_compared,
            "differences": report.differences,
        });
        args::write_json(path, &json)?;
    }
    print_report(&report);
    Ok(if report.identical() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints each difference and the summary line.
pub fn print_report(report: &nydus_verify::Report) {
    for d in &report.differences {
        println!("{d}");
    }
    println!(
        "verify: {} entries compared, {} bytes of content, {} difference(s)",
        report.entries_compared,
        report.bytes_compared,
        report.differences.len()
    );
}
