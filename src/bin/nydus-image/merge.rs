//! `merge`: joins separately built layer bootstraps into one image.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::args::{self, LogLevel};

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Layer bootstraps, bottom first.
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// Where to write the merged bootstrap.
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    /// Write a JSON report here.
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `merge` request (clap has checked everything there is).
pub struct MergeOptions(MergeArgs);

impl MergeArgs {
    /// Checks the flags.
    pub fn options(self) -> Result<MergeOptions> {
        Ok(MergeOptions(self))
    }
}

/// Merges and reports.
pub fn run(MergeOptions(args): MergeOptions) -> Result<ExitCode> {
    let summary = nydus_image::ops::merge::merge(&args.sources, &args.bootstrap)
        .with_context(|| format!("cannot merge into {}", args.bootstrap.display()))?;
    println!("meta blob path: {}", summary.bootstrap.display());
    println!("data blobs: {:?}", summary.blobs);
    if let Some(path) = &args.output_json {
        let json = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "bootstrap": summary.bootstrap,
            "blobs": summary.blobs,
            "fs_version": "6",
            "entries": summary.entries,
        });
        args::write_json(path, &json)?;
    }
    Ok(ExitCode::SUCCESS)
}
