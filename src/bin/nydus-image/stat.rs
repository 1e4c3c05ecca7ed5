//! `stat`: chunk and file statistics of one image or of every bootstrap in a directory,
//! and what deduplicating a target against them would save (upstream 2.2.0's `stat`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use nydus_image::ops::stat::{self, Bases, ImageInfo, ImageStat, StatOptions};

use crate::args::{self, DigesterArg, LogLevel};

#[derive(clap::Args)]
pub struct StatArgs {
    /// The base image: a bootstrap (or a blob with inline metadata).
    #[arg(short = 'B', long, conflicts_with = "blob_dir")]
    bootstrap: Option<PathBuf>,
    /// Every bootstrap in this directory (files without an extension) as base images.
    #[arg(short = 'D', long = "blob-dir")]
    blob_dir: Option<PathBuf>,
    /// The image whose chunks are looked up in the base images.
    #[arg(short = 'T', long)]
    target: Option<PathBuf>,
    /// nydusd configuration file (upstream's flag; unused: stat reads metadata only).
    #[arg(short = 'C', long = "config")]
    config: Option<PathBuf>,
    /// Only base chunks digested with this algorithm are deduplicated against.
    #[arg(long, value_enum, default_value = "blake3")]
    digester: DigesterArg,
    /// Write the report as JSON here instead of printing it.
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `stat` request.
pub struct StatRunOptions {
    bases: Bases,
    target: Option<PathBuf>,
    opts: StatOptions,
    output_json: Option<PathBuf>,
}

impl StatArgs {
    /// Checks the flags.
    pub fn options(self) -> Result<StatRunOptions> {
        let bases = match (self.bootstrap, self.blob_dir) {
            (Some(b), None) => Bases::Bootstrap(b),
            (None, Some(d)) => {
                if !d.is_dir() {
                    bail!("--blob-dir {} is not a directory", d.display());
                }
                Bases::Dir(d)
            }
            _ => bail!("one of --bootstrap and --blob-dir must be given"),
        };
        if let Some(c) = &self.config {
            if !c.is_file() {
                bail!("--config {} is not a file", c.display());
            }
        }
        Ok(StatRunOptions {
            bases,
            target: self.target,
            opts: StatOptions {
                digester: self.digester.into(),
            },
            output_json: self.output_json,
        })
    }
}

/// Computes the report; writes it as JSON or prints it as upstream does.
pub fn run(o: StatRunOptions) -> Result<ExitCode> {
    let report = stat::stat(&o.bases, o.target.as_deref(), &o.opts)?;
    match &o.output_json {
        Some(path) => args::write_json(path, &serde_json::to_value(&report)?)?,
        None => print!("{}", text(&report)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as upstream prints it without `-J`.
fn text(r: &ImageStat) -> String {
    let mut s = String::new();
    if r.target_enabled {
        s += "Target Image Statistics:\n";
        s += &image_text(&r.target_image);
    }
    s += "\n\nBase Image Statistics:\n";
    s += &image_text(&r.base_image);
    s
}

fn image_text(i: &ImageInfo) -> String {
    let mut s = format!(
        "\nDirectories:            {}\nFiles:                  {}\nSymlinks:               {}\nChunks:                 {}\nFile Size:              {}\nPadding Size:           {}\nUncompressed Size:      {}\nCompressed Size:        {}\n",
        i.dirs, i.files, i.symlinks, i.chunks, i.file_size, i.padding_size, i.uncomp_size, i.comp_size
    );
    s += "\nFile Size Bits:\t\tFile Count:\n";
    for (bits, n) in i.file_sizes.iter().enumerate() {
        s += &format!("{bits}:\t\t\t{n}\n");
    }
    s += "\nChunk Size Bits:\tChunk Count:\n";
    for (i, n) in i.chunk_sizes.iter().enumerate() {
        s += &format!("{}:\t\t\t{n}\n", i + 12);
    }
    for (name, v) in [
        ("Raw Content Size:", i.file_size),
        ("Comp Content Size:", i.comp_size),
        ("Raw Chunk Count:", i.chunks as u64),
        ("Dedup Comp Size:", i.dedup_comp_size),
        ("Dedup Uncomp Size:", i.dedup_uncomp_size),
        ("Dedup Chunk Count:", i.dedup_chunks),
        ("Owned Comp Size:", i.own_comp_size),
        ("Owned Uncomp Size:", i.own_uncomp_size),
        ("Owned Chunk Count:", i.own_chunks),
        ("Referenced Comp Size:", i.ref_comp_size),
        ("Referenced Uncomp Size:", i.ref_uncomp_size),
        ("Referenced Chunk Count:", i.ref_chunks),
    ] {
        s += &format!("{name}\t{v}\n");
    }
    s
}
