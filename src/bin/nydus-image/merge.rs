//! `merge`: joins separately built layer bootstraps into one image, with upstream 2.2.0's
//! flags as containerd's nydus converter passes them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use nydus_image::ops::merge::{MergeOptions as LibOptions, MergeTarget};

use crate::args::{self, LogLevel};

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Layer bootstraps, bottom first (or data blobs carrying their bootstrap). Each
    /// layer's own blob is named by --blob-digests, or else by the file's name less its
    /// extensions, as upstream names it (the converter names each file by its blob's
    /// sha256).
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// Where to write the merged bootstrap.
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    /// Where a source that is no bootstrap is looked up as a blob carrying its bootstrap,
    /// by the name the source's file name gives; without --bootstrap, the directory the
    /// merged bootstrap is written to, named by its sha256 (as upstream).
    #[arg(short = 'D', long = "blob-dir")]
    blob_dir: Option<PathBuf>,
    /// Comma-separated sha256 digests (hex), one per source: the id of each layer's blob.
    #[arg(long = "blob-digests")]
    blob_digests: Option<String>,
    /// Comma-separated sizes in bytes (decimal), one per source: the compressed size
    /// recorded for each layer's blob.
    #[arg(long = "blob-sizes")]
    blob_sizes: Option<String>,
    /// Comma-separated sha256 digests (hex), one per source: the TOC digest recorded for
    /// each layer's blob.
    #[arg(long = "blob-toc-digests")]
    blob_toc_digests: Option<String>,
    /// Comma-separated sizes in bytes (decimal), one per source: the TOC size recorded
    /// for each layer's blob.
    #[arg(long = "blob-toc-sizes")]
    blob_toc_sizes: Option<String>,
    /// Chunk dictionary the layers were built with: `bootstrap=PATH` (or a bare PATH).
    /// Layers may reference its blobs besides their own; those keep their ids.
    #[arg(long = "chunk-dict")]
    chunk_dict: Option<String>,
    /// An image to merge the layers onto: its tree is the bottom layer and its blobs
    /// come first, with their ids.
    #[arg(long = "parent-bootstrap")]
    parent_bootstrap: Option<PathBuf>,
    /// Prefetch policy: none, fs or blob. With fs or blob, prefetch patterns (absolute
    /// paths, one a line) are read from standard input unless it is a terminal; fs writes
    /// a prefetch table over the merged tree.
    #[arg(long = "prefetch-policy", value_enum, default_value = "none")]
    prefetch_policy: args::PrefetchArg,
    /// Write a JSON report here: upstream's fields (version, bootstrap, blobs, trace).
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// A checked `merge` request.
pub struct MergeOptions {
    sources: Vec<PathBuf>,
    target: MergeTarget,
    lib: LibOptions,
    output_json: Option<PathBuf>,
}

/// A comma list as upstream splits it: every item trimmed, none skipped.
fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim)
}

/// `--blob-digests` or `--blob-toc-digests`: 64 hex digits each.
fn digests(flag: &str, list: Option<&str>) -> Result<Option<Vec<[u8; 32]>>> {
    let Some(list) = list else { return Ok(None) };
    items(list)
        .enumerate()
        .map(|(i, item)| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(item, &mut out).with_context(|| {
                format!(
                    "invalid {flag} item {} {item:?}: give a sha256 as 64 hex digits",
                    i + 1
                )
            })?;
            Ok(out)
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// `--blob-sizes`: decimal numbers, as upstream parses them.
fn sizes(flag: &str, list: Option<&str>) -> Result<Option<Vec<u64>>> {
    let Some(list) = list else { return Ok(None) };
    items(list)
        .enumerate()
        .map(|(i, item)| {
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                bail!(
                    "invalid {flag} item {} {item:?}: give a size in bytes, in decimal",
                    i + 1
                );
            }
            item.parse::<u64>()
                .with_context(|| format!("invalid {flag} item {} {item:?}: too large", i + 1))
        })
        .collect::<Result<_>>()
        .map(Some)
}

impl MergeArgs {
    /// Checks the flags, the per-layer lists against the sources, and reads the prefetch
    /// patterns, before any work.
    pub fn options(self) -> Result<MergeOptions> {
        let target = match (&self.bootstrap, &self.blob_dir) {
            (Some(b), _) => MergeTarget::File(b.clone()),
            (None, Some(d)) => MergeTarget::Dir(d.clone()),
            (None, None) => {
                bail!("give --bootstrap PATH for the merged bootstrap (or --blob-dir DIR to store it there by its sha256)")
            }
        };
        let toc_sizes = sizes("--blob-toc-sizes", self.blob_toc_sizes.as_deref())?
            .map(|v| {
                v.into_iter()
                    .map(|s| {
                        u32::try_from(s).with_context(|| {
                            format!(
                                "invalid --blob-toc-sizes item {s}: a TOC is smaller than 4 GiB"
                            )
                        })
                    })
                    .collect::<Result<Vec<u32>>>()
            })
            .transpose()?;
        let lib = LibOptions {
            blob_digests: digests("--blob-digests", self.blob_digests.as_deref())?,
            blob_sizes: sizes("--blob-sizes", self.blob_sizes.as_deref())?,
            blob_toc_digests: digests("--blob-toc-digests", self.blob_toc_digests.as_deref())?,
            blob_toc_sizes: toc_sizes,
            chunk_dict: self
                .chunk_dict
                .as_deref()
                .map(nydus_image::builder::dict::parse_arg)
                .transpose()?,
            parent_bootstrap: self.parent_bootstrap,
            blob_dir: self.blob_dir,
            prefetch: Default::default(),
        };
        lib.check_counts(self.sources.len())?;
        let prefetch = args::prefetch(self.prefetch_policy)?;
        Ok(MergeOptions {
            sources: self.sources,
            target,
            lib: LibOptions { prefetch, ..lib },
            output_json: self.output_json,
        })
    }
}

/// Merges and reports.
pub fn run(opts: MergeOptions) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let shown = match &opts.target {
        MergeTarget::File(p) | MergeTarget::Dir(p) => p.display().to_string(),
    };
    let summary = nydus_image::ops::merge::merge(&opts.sources, &opts.target, &opts.lib)
        .with_context(|| format!("cannot merge into {shown}"))?;
    println!("meta blob path: {}", summary.bootstrap.display());
    println!("data blobs: {:?}", summary.blobs);
    log::info!(
        "{} entries merged from {} layer(s) in {:.2?}",
        summary.entries,
        opts.sources.len(),
        started.elapsed()
    );
    if let Some(path) = &opts.output_json {
        // Upstream's fields exactly: the converter reads `blobs`.
        let json = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "bootstrap": summary.bootstrap,
            "blobs": summary.blobs,
            "trace": {"consumed_time": {"total_build": started.elapsed().as_secs_f64()}},
        });
        args::write_json(path, &json)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_and_checked_as_upstream_splits_them() {
        let d = "ab".repeat(32);
        let got = digests("--x", Some(&format!("{d}, {}", "CD".repeat(32)))).unwrap();
        assert_eq!(got.unwrap(), [[0xab; 32], [0xcd; 32]]);
        for bad in ["", "sha256:00", &"ab".repeat(31), &format!("{d},")] {
            let err = digests("--x", Some(bad)).unwrap_err();
            assert!(format!("{err:#}").contains("--x item"), "{bad}: {err:#}");
        }
        assert_eq!(
            sizes("--y", Some("1, 20 ,300")).unwrap().unwrap(),
            [1, 20, 300]
        );
        for bad in ["", "1,,2", "0x10", "-1", "1k", "99999999999999999999"] {
            assert!(sizes("--y", Some(bad)).is_err(), "{bad} accepted");
        }
    }
}
