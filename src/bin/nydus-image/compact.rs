//! `compact`: rewrites an image's sparsely used and small blobs into fewer, fuller ones.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};

use nydus_image::ops::compact::{self, BlobPlaces, CompactConfig};
use nydus_image::storage::backend::Backend;
use nydus_image::storage::cache::CacheOptions;

use crate::args::{self, BackendArgs, LogLevel};

#[derive(clap::Args)]
pub struct CompactArgs {
    /// Bootstrap of the image to compact.
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    /// compact.json (keys: min_used_ratio, compact_blob_size, max_compact_size,
    /// layers_to_compact, blobs_dir); flags below override it.
    #[arg(short = 'C', long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Blob directory: where blobs are read (without --backend-type) and new blobs are
    /// written (without blobs_dir in the config).
    #[arg(short = 'D', long = "blob-dir")]
    blob_dir: Option<PathBuf>,
    /// Chunk cache for blobs read from the backend, the one `mount --cache-dir` keeps:
    /// chunks a mount fetched are not fetched again, and chunks read are kept.
    #[arg(long = "cache-dir", requires = "backend_type")]
    cache_dir: Option<PathBuf>,
    /// Bound of --cache-dir's data (suffixes K, M, G, T), as for `mount`.
    #[arg(long = "cache-size", requires = "cache_dir")]
    cache_size: Option<String>,
    /// Rebuild blobs whose used ratio is below this percentage (0-99; 0 disables).
    #[arg(long = "min-used-ratio")]
    min_used_ratio: Option<u64>,
    /// Merge blobs smaller than this many bytes.
    #[arg(long = "compact-blob-size")]
    compact_blob_size: Option<u64>,
    /// Largest merged blob, in bytes of chunk data.
    #[arg(long = "max-compact-size")]
    max_compact_size: Option<u64>,
    /// Compact only when the image references at least this many blobs (0: always).
    #[arg(long = "layers-to-compact")]
    layers_to_compact: Option<u64>,
    /// Chunk dictionary (`bootstrap=PATH`): chunks it holds are referenced from its blobs,
    /// which are kept as they are.
    #[arg(long = "chunk-dict")]
    chunk_dict: Option<String>,
    /// Where to write the new bootstrap (default: BOOTSTRAP with extension
    /// .bootstrap.compact, as upstream).
    #[arg(short = 'O', long = "output-bootstrap")]
    output_bootstrap: Option<PathBuf>,
    /// Write a JSON report here.
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `compact` request.
pub struct CompactOptions {
    bootstrap: PathBuf,
    output: PathBuf,
    config: CompactConfig,
    backend: Option<Box<dyn Backend>>,
    cache: Option<CacheOptions>,
    blob_dir: Option<PathBuf>,
    chunk_dict: Option<PathBuf>,
    output_json: Option<PathBuf>,
}

impl CompactArgs {
    /// Reads compact.json, applies the flags over it and checks the result.
    pub fn options(self) -> Result<CompactOptions> {
        let chunk_dict = self
            .chunk_dict
            .as_deref()
            .map(nydus_image::builder::dict::parse_arg)
            .transpose()?;
        let mut cfg = match &self.config {
            Some(p) => CompactConfig::load(p)?,
            None => CompactConfig::default(),
        };
        if let Some(v) = self.min_used_ratio {
            cfg.min_used_ratio = v;
        }
        if let Some(v) = self.compact_blob_size {
            cfg.compact_blob_size = v;
        }
        if let Some(v) = self.max_compact_size {
            cfg.max_compact_size = v;
        }
        if let Some(v) = self.layers_to_compact {
            cfg.layers_to_compact = v;
        }
        cfg.validate().context("compaction settings")?;
        let output = self
            .output_bootstrap
            .clone()
            .unwrap_or_else(|| compact::default_output(&self.bootstrap));
        let limit_bytes = self
            .cache_size
            .as_deref()
            .map(|s| args::parse_size_suffix("--cache-size", s))
            .transpose()?;
        let cache = self.cache_dir.map(|dir| CacheOptions { dir, limit_bytes });
        Ok(CompactOptions {
            backend: self.backend.backend()?,
            cache,
            bootstrap: self.bootstrap,
            output,
            config: cfg,
            blob_dir: self.blob_dir,
            chunk_dict,
            output_json: self.output_json,
        })
    }
}

/// Compacts and reports.
pub fn run(opts: CompactOptions) -> Result<ExitCode> {
    compact_and_report(
        &opts.bootstrap,
        opts.backend,
        opts.cache.as_ref(),
        opts.blob_dir.as_deref(),
        &opts.output,
        &opts.config,
        opts.output_json.as_deref(),
        opts.chunk_dict.as_deref(),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Compacts `bootstrap` into `output`; prints and optionally writes the summary. Also
/// `create --config compact.json`'s second step.
#[allow(clippy::too_many_arguments)]
pub fn compact_and_report(
    bootstrap: &Path,
    backend: Option<Box<dyn Backend>>,
    cache: Option<&CacheOptions>,
    blob_dir: Option<&Path>,
    output: &Path,
    cfg: &CompactConfig,
    json: Option<&Path>,
    chunk_dict: Option<&Path>,
) -> Result<()> {
    let places = BlobPlaces::choose(cfg, backend, blob_dir)?;
    let started = Instant::now();
    let summary = compact::compact(
        bootstrap,
        places.backend.as_ref(),
        cache,
        &places.out_dir,
        output,
        cfg,
        chunk_dict,
    )
    .with_context(|| format!("cannot compact {}", bootstrap.display()))?;
    match &summary.unchanged_because {
        Some(why) => println!("nothing to compact: {why}; no bootstrap written"),
        None => {
            println!(
                "compacted bootstrap: {}",
                summary.bootstrap.as_ref().expect("written").display()
            );
            println!(
                "blobs: {} -> {} ({} unused dropped, {} rewritten into {} new)",
                summary.blobs_before.len(),
                summary.blobs_after.len(),
                summary.unused_blobs.len(),
                summary.rewritten_blobs.len(),
                summary.new_blobs.len()
            );
            println!(
                "bytes read {}, written {}, reclaimed {}",
                summary.bytes_read, summary.bytes_written, summary.bytes_reclaimed
            );
            if cache.is_some() {
                println!("bytes found in the cache: {}", summary.bytes_from_cache);
            }
        }
    }
    if let Some(path) = json {
        let value = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "bootstrap": summary.bootstrap,
            "blobs": summary.blobs_after,
            "blobs_before": summary.blobs_before,
            "unused_blobs": summary.unused_blobs,
            "rewritten_blobs": summary.rewritten_blobs,
            "new_blobs": summary.new_blobs,
            "bytes_read": summary.bytes_read,
            "bytes_from_cache": summary.bytes_from_cache,
            "bytes_written": summary.bytes_written,
            "bytes_reclaimed": summary.bytes_reclaimed,
            "unchanged_because": summary.unchanged_because,
            "config": cfg,
            "trace": {"consumed_time": {"total_compact": started.elapsed().as_secs_f64()}},
        });
        args::write_json(path, &value)?;
    }
    Ok(())
}
