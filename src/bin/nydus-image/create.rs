//! `create`: builds an image from a directory, a tar layer (plain, gzip-compressed or a
//! whole eStargz layer) or an eStargz TOC, then optionally compacts and verifies it.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use nydus_image::builder::chunker::Progress;
use nydus_image::builder::source::stargz::StargzOptions;
use nydus_image::builder::source::tar::TarFormat;
use nydus_image::builder::{self, BlobTarget, BootstrapTarget, BuildOptions, BuildSummary, Source};
use nydus_image::format::{Compressor, Digester};
use nydus_image::ops::compact::CompactConfig;
use nydus_image::ops::verify::{Stack, VerifyError, Via};
use nydus_image::storage::blobs::BlobSource;

use crate::args::{self, BackendArgs, CompressorArg, DigesterArg, LogLevel, WhiteoutArg};

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Source: a directory; with --type tar-rafs, targz-rafs or estargz-rafs a tar layer
    /// (a file or a FIFO, read once as a stream); with stargz_index an eStargz layer's TOC
    /// JSON.
    source: PathBuf,
    /// Conversion type: dir-rafs (alias directory): a directory; tar-rafs: a tar layer;
    /// targz-rafs: a gzip-compressed tar layer; estargz-rafs: a whole eStargz layer, read
    /// as a tar.gz; stargz_index (alias estargztoc-ref): an eStargz layer's TOC, the layer
    /// itself becoming the data blob (named by --blob-id). targz-ref and estargz-ref are
    /// upstream's and not supported here. Also spelled --source-type.
    #[arg(
        short = 't',
        long = "type",
        visible_alias = "source-type",
        value_enum,
        default_value = "dir-rafs"
    )]
    source_type: SourceType,
    /// Prefetch policy: none, fs or blob. With fs or blob, prefetch patterns (absolute
    /// paths in the image, one a line) are read from standard input unless it is a
    /// terminal. fs: the bootstrap gets a prefetch table (the nid of each path, in order)
    /// and, from a directory, the data of the files they cover goes first in the blob;
    /// blob: only that blob order (RAFS v6 stores no readahead range).
    #[arg(long = "prefetch-policy", value_enum, default_value = "none")]
    prefetch_policy: args::PrefetchArg,
    /// Where to write the bootstrap (RAFS metadata). Not with --blob-inline-meta.
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    /// Write the bootstrap into the data blob, after the chunk data and blob meta, each
    /// part followed by a tar header (upstream's layout); the blob then stands where a
    /// bootstrap is expected (check, mount, verify; upstream nydusd and check).
    #[arg(long = "blob-inline-meta", alias = "inline-bootstrap")]
    blob_inline_meta: bool,
    /// blob-toc: with --blob-inline-meta, also write the chunk digests and a table of
    /// contents at the blob's end, and store the bootstrap zstd-compressed.
    #[arg(long, value_enum)]
    features: Option<FeatureArg>,
    /// Directory to store the data blob in, named by its sha256. With stargz_index:
    /// where the eStargz layer is (named by --blob-id); it is then checked chunk by chunk.
    #[arg(short = 'D', long = "blob-dir", conflicts_with = "blob")]
    blob_dir: Option<PathBuf>,
    /// File (or FIFO) to write the data blob to. With stargz_index: the eStargz layer
    /// file, which is read and checked, never written.
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    /// Blob id to record instead of the blob's sha256.
    #[arg(long = "blob-id")]
    blob_id: Option<String>,
    /// RAFS format version: 6, or 5 (upstream's older layout).
    #[arg(short = 'v', long = "fs-version", default_value = "6")]
    fs_version: String,
    /// Give chunks 4 KiB-aligned uncompressed offsets (where a blob cache keeps them),
    /// for RAFS v5; RAFS v6 always has them, so there it changes nothing (as upstream).
    #[arg(long = "aligned-chunk")]
    aligned_chunk: bool,
    /// Chunk compressor [default: zstd; gzip for stargz_index, the only use of gzip].
    #[arg(long, value_enum)]
    compressor: Option<CompressorArg>,
    /// Chunk digester [default: blake3; sha256 for stargz_index].
    #[arg(long, value_enum)]
    digester: Option<DigesterArg>,
    /// Chunk size: power of two, 0x1000..=0x1000000 (hex with 0x, or decimal)
    /// [default: 0x100000; for stargz_index, the layer's].
    #[arg(long = "chunk-size")]
    chunk_size: Option<String>,
    /// stargz_index: the layer's size in bytes (hex), as upstream takes it; bounds the
    /// stored size of the layer's last chunk.
    #[arg(long = "blob-data-size")]
    blob_data_size: Option<String>,
    /// Directory to compare the image with for --verify (default: the source directory;
    /// required with stargz_index: the directory the layer was made from).
    #[arg(long = "verify-against")]
    verify_against: Option<PathBuf>,
    /// compact.json: after building, compact the image (upstream's documented form, with
    /// --chunk-dict and a backend holding the dictionary's blobs).
    #[arg(short = 'C', long = "config")]
    config: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Produce identical output for identical input (always true here; accepted for upstream scripts).
    #[arg(long)]
    repeatable: bool,
    /// Write a JSON report of the build here.
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
    /// Hashing and compression threads (default: all cores; env NYDUS_BUILD_THREADS).
    #[arg(long)]
    threads: Option<usize>,
    /// Bootstrap of the layers below: the new image describes the merged tree and
    /// references the parent's blobs plus the new one.
    #[arg(long = "parent-bootstrap")]
    parent_bootstrap: Option<PathBuf>,
    /// How whiteouts are spelled in the source.
    #[arg(long = "whiteout-spec", value_enum, default_value = "oci")]
    whiteout_spec: WhiteoutArg,
    /// Chunk dictionary: `bootstrap=PATH` (or a bare PATH) of an image whose chunks are
    /// referenced instead of stored again.
    #[arg(long = "chunk-dict")]
    chunk_dict: Option<String>,
    /// After building, mount the image and compare it with the source; fail on any
    /// difference. `--verify` (auto) uses FUSE when it can and the library reader
    /// otherwise; `--verify=fuse` insists on FUSE, `--verify=library` skips it,
    /// `--verify=kernel` mounts with the kernel's EROFS (v6: --compressor none only; v5:
    /// a temporary block export of the image).
    #[arg(long, value_name = "HOW", num_args = 0..=1, require_equals = true, default_missing_value = "auto")]
    verify: Option<VerifyHow>,
}

/// `--type`: what the source is.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum SourceType {
    /// A directory.
    #[value(name = "dir-rafs", alias = "directory")]
    DirRafs,
    /// A tar layer.
    #[value(name = "tar-rafs")]
    TarRafs,
    /// A gzip-compressed tar layer.
    #[value(name = "targz-rafs")]
    TargzRafs,
    /// A whole eStargz layer, read as a gzip-compressed tar.
    #[value(name = "estargz-rafs")]
    EstargzRafs,
    /// Upstream's: a tar.gz layer as the data blob (not supported).
    #[value(name = "targz-ref")]
    TargzRef,
    /// Upstream's: an eStargz layer as the data blob (not supported).
    #[value(name = "estargz-ref")]
    EstargzRef,
    /// An eStargz layer's TOC; the layer is the data blob.
    #[value(name = "stargz_index", alias = "estargztoc-ref")]
    StargzIndex,
}

/// `--features`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum FeatureArg {
    /// A table of contents at the blob's end.
    BlobToc,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum VerifyHow {
    Auto,
    Fuse,
    Library,
    Kernel,
}

/// What the source is.
enum SourceKind {
    /// A directory or a tar layer, built into a new blob.
    Build {
        source: Source,
        target: BlobTarget,
        /// compact.json's settings, to compact after the build.
        compaction: Option<CompactConfig>,
    },
    /// An eStargz TOC, and where its bootstrap goes.
    Stargz(StargzOptions, PathBuf),
}

/// A checked `create` request.
pub struct CreateOptions {
    source: PathBuf,
    bootstrap: BootstrapTarget,
    kind: SourceKind,
    build: BuildOptions,
    backend: BackendArgs,
    verify: Option<(VerifyHow, PathBuf, BlobSource)>,
    output_json: Option<PathBuf>,
    progress: bool,
}

impl CreateArgs {
    /// Checks the flags and turns them into a request, before any work.
    pub fn options(self) -> Result<CreateOptions> {
        let tar = match self.source_type {
            SourceType::DirRafs | SourceType::StargzIndex => None,
            SourceType::TarRafs => Some(TarFormat::Tar),
            SourceType::TargzRafs => Some(TarFormat::TarGz),
            SourceType::EstargzRafs => Some(TarFormat::EStargz),
            SourceType::TargzRef | SourceType::EstargzRef => bail!(
                "conversion type {} is not supported: it would reference the compressed layer as the data blob; use {} to build a blob of its own",
                if self.source_type == SourceType::TargzRef { "targz-ref" } else { "estargz-ref" },
                if self.source_type == SourceType::TargzRef { "targz-rafs" } else { "estargz-rafs" },
            ),
        };
        let stargz = self.source_type == SourceType::StargzIndex;
        let toc = self.features == Some(FeatureArg::BlobToc);
        let bootstrap = match (&self.bootstrap, self.blob_inline_meta) {
            (Some(_), true) => bail!(
                "--bootstrap conflicts with --blob-inline-meta: the bootstrap is written inside the blob"
            ),
            (Some(p), false) if !toc => BootstrapTarget::File(p.clone()),
            (Some(_), false) => bail!(
                "--features blob-toc is only supported with --blob-inline-meta (a TOC after a blob whose bootstrap is separate is not written here)"
            ),
            (None, true) => BootstrapTarget::InBlob { toc },
            (None, false) => bail!(
                "give --bootstrap PATH, or --blob-inline-meta to write the bootstrap inside the blob"
            ),
        };
        if self.blob_inline_meta {
            if stargz {
                bail!("--blob-inline-meta builds from a directory or a tar layer; an eStargz layer cannot carry a bootstrap");
            }
            if self.blob_id.is_some() {
                bail!("--blob-id conflicts with --blob-inline-meta: such a blob is named by whoever uses it (by its sha256 here)");
            }
            if self.config.is_some() {
                bail!("--config (compaction) cannot rewrite a blob that carries its bootstrap: build without --blob-inline-meta to compact");
            }
        }
        let fs_version = match self.fs_version.as_str() {
            "6" => builder::FsVersion::V6,
            "5" => builder::FsVersion::V5,
            other => bail!("unknown --fs-version {other:?}: RAFS versions are 5 and 6"),
        };
        if fs_version == builder::FsVersion::V5 {
            if stargz {
                bail!("conversion type stargz_index conflicts with RAFS v5: use --fs-version 6");
            }
            if self.features.is_some() {
                bail!("--features blob-toc can't be used with RAFS v5 (as upstream 2.2.0 says): use --fs-version 6");
            }
            if self.config.is_some() {
                bail!("--config (compaction) conflicts with RAFS v5 here: use --fs-version 6");
            }
        }
        let mut build = BuildOptions {
            compressor: self.compressor.map(Compressor::from).unwrap_or(if stargz {
                Compressor::Gzip
            } else {
                Compressor::Zstd
            }),
            digester: self.digester.map(Digester::from).unwrap_or(if stargz {
                Digester::Sha256
            } else {
                Digester::Blake3
            }),
            blob_id: self.blob_id.clone(),
            parent_bootstrap: self.parent_bootstrap.clone(),
            chunk_dict: self
                .chunk_dict
                .as_deref()
                .map(builder::dict::parse_arg)
                .transpose()?,
            whiteout_spec: self.whiteout_spec.into(),
            fs_version,
            aligned_chunk: self.aligned_chunk,
            ..BuildOptions::default()
        };
        if let Some(t) = args::build_threads(self.threads)? {
            build.threads = t;
        }
        let chunk_size = self
            .chunk_size
            .as_deref()
            .map(args::parse_chunk_size)
            .transpose()?;
        let (kind, verify_blobs) = if stargz {
            let layer_file = StargzOptions::find_layer(
                self.blob.as_deref(),
                self.blob_dir.as_deref(),
                self.blob_id.as_deref(),
            )?;
            let blobs = match (&self.blob_dir, &layer_file) {
                (Some(d), _) => Some(BlobSource::Dir(d.clone())),
                (None, Some(f)) => Some(BlobSource::Files(vec![f.clone()])),
                (None, None) => None,
            };
            let data_size = self
                .blob_data_size
                .as_deref()
                .map(|s| args::parse_hex("--blob-data-size", s))
                .transpose()?;
            let opts = StargzOptions {
                chunk_size,
                data_size,
                layer_file,
            };
            let BootstrapTarget::File(boot) = &bootstrap else {
                bail!("--blob-inline-meta builds from a directory or a tar layer");
            };
            (SourceKind::Stargz(opts, boot.clone()), blobs)
        } else {
            if let Some(cs) = chunk_size {
                build.chunk_size = cs;
            }
            let compaction = self
                .config
                .as_deref()
                .map(CompactConfig::load)
                .transpose()?;
            if compaction.is_none() && self.backend.backend_type.is_some() {
                bail!("--backend-type is used by compaction: give --config compact.json too");
            }
            self.backend.backend()?;
            let target = match (&self.blob, &self.blob_dir) {
                (Some(b), None) => BlobTarget::File(b.clone()),
                (None, Some(d)) => BlobTarget::Dir(d.clone()),
                _ => bail!("give one of --blob PATH or --blob-dir DIR"),
            };
            let blobs = match &target {
                BlobTarget::File(p) => BlobSource::Files(vec![p.clone()]),
                BlobTarget::Dir(d) => BlobSource::Dir(d.clone()),
            };
            if self.verify.is_some() {
                if matches!(&target, BlobTarget::File(p) if is_fifo(p)) {
                    bail!("--verify needs to read the blob back; it cannot be used with a FIFO --blob");
                }
                if self.parent_bootstrap.is_some() && !matches!(target, BlobTarget::Dir(_)) {
                    bail!("--verify with --parent-bootstrap needs --blob-dir holding the parent's blobs too");
                }
            }
            let source = match tar {
                None => Source::Dir(self.source.clone()),
                Some(format) => Source::Tar(self.source.clone(), format),
            };
            (
                SourceKind::Build {
                    source,
                    target,
                    compaction,
                },
                Some(blobs),
            )
        };
        if !stargz {
            build.validate()?;
        }
        let verify = match self.verify {
            None => None,
            Some(how) => {
                let against = match (&self.verify_against, stargz || tar.is_some()) {
                    (Some(d), _) => d.clone(),
                    (None, false) => self.source.clone(),
                    (None, true) => bail!(
                        "--verify with --type {} needs --verify-against DIR: the directory the layer was made from",
                        self.source_type.to_possible_value().expect("not skipped").get_name()
                    ),
                };
                let Some(blobs) = verify_blobs else {
                    bail!("--verify with stargz_index needs the layer: give --blob-dir DIR holding it (named by --blob-id) or --blob FILE");
                };
                Some((how, against, blobs))
            }
        };
        build.prefetch = args::prefetch(self.prefetch_policy)?;
        Ok(CreateOptions {
            source: self.source,
            bootstrap,
            kind,
            build,
            backend: self.backend,
            verify,
            output_json: self.output_json,
            progress: std::io::stderr().is_terminal() && self.log_level <= LogLevel::Info,
        })
    }
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

/// Builds, then compacts and verifies as asked.
pub fn run(opts: CreateOptions) -> Result<ExitCode> {
    let started = Instant::now();
    let summary = match &opts.kind {
        SourceKind::Build { source, target, .. } => {
            nydus_image::heap::tune_for_build(opts.build.chunk_size);
            let meter = ProgressMeter::new(opts.progress);
            let summary = builder::build_from(source, &opts.bootstrap, target, &opts.build, &|p| {
                meter.update(p)
            })
            .with_context(|| format!("cannot build an image of {}", opts.source.display()))?;
            meter.finish();
            summary
        }
        SourceKind::Stargz(sopts, bootstrap) => {
            builder::source::stargz::build(&opts.source, bootstrap, sopts, &opts.build)
                // The eStargz source's errors name the TOC themselves.
                .context("cannot build the image")?
        }
    };
    report(&opts, &summary, started)?;
    if let SourceKind::Build {
        target,
        compaction: Some(cfg),
        ..
    } = &opts.kind
    {
        let blob_dir = match target {
            BlobTarget::Dir(d) => Some(d.as_path()),
            BlobTarget::File(_) => None,
        };
        crate::compact::compact_and_report(
            &summary.bootstrap,
            opts.backend.backend()?,
            None,
            blob_dir,
            &summary.bootstrap,
            cfg,
            None,
            opts.build.chunk_dict.as_deref(),
        )?;
    }
    let Some((how, against, blobs)) = &opts.verify else {
        return Ok(ExitCode::SUCCESS);
    };
    let stack = Stack {
        parent: opts.build.parent_bootstrap.clone(),
        layers: vec![against.clone()],
        whiteouts: opts.build.whiteout_spec,
        // An eStargz TOC holds modification times in whole seconds.
        mtime_seconds: matches!(opts.kind, SourceKind::Stargz(..)),
    };
    let via = match how {
        VerifyHow::Library => Via::Library,
        VerifyHow::Kernel => Via::Kernel,
        VerifyHow::Auto | VerifyHow::Fuse => Via::Fuse,
    };
    let report =
        match nydus_image::ops::verify::verify(&stack, &summary.bootstrap, blobs.clone(), via) {
            Err(e @ VerifyError::FuseUnavailable(_)) if *how == VerifyHow::Auto => {
                eprintln!(
                    "{:#}: verifying through the library reader instead",
                    anyhow::Error::new(e)
                );
                nydus_image::ops::verify::verify(
                    &stack,
                    &summary.bootstrap,
                    blobs.clone(),
                    Via::Library,
                )?
            }
            other => other?,
        };
    crate::verify::print_report(&report);
    if !report.identical() {
        eprintln!(
            "error: the image differs from {} in {} place(s)",
            against.display(),
            report.differences.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the build summary and writes `--output-json`.
fn report(opts: &CreateOptions, summary: &BuildSummary, started: Instant) -> Result<()> {
    match opts.bootstrap {
        BootstrapTarget::File(_) => println!("meta blob path: {}", summary.bootstrap.display()),
        // As upstream says it: there is no bootstrap file.
        BootstrapTarget::InBlob { .. } => println!("meta blob path: <none>"),
    }
    println!("data blob size: 0x{:x}", summary.blob_size);
    println!("data blobs: {:?}", summary.blobs);
    if opts.build.chunk_dict.is_some() {
        println!(
            "chunk dictionary: {} chunks ({} bytes) deduplicated",
            summary.dict_chunks, summary.dict_bytes
        );
        if summary.blob_id.is_none() && summary.dict_chunks > 0 {
            println!("no data blob written: every chunk was found in the chunk dictionary");
        }
    }
    log::info!(
        "{} entries, {} chunks ({} distinct), {} bytes of data, in {:.2?}",
        summary.entries,
        summary.total_chunks,
        summary.unique_chunks,
        summary.data_bytes,
        started.elapsed()
    );
    if let Some(path) = &opts.output_json {
        let json = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "bootstrap": match opts.bootstrap {
                BootstrapTarget::File(_) => Some(&summary.bootstrap),
                BootstrapTarget::InBlob { .. } => None,
            },
            "inline_meta": matches!(opts.bootstrap, BootstrapTarget::InBlob { .. }),
            "blob_path": summary.blob_path,
            "blobs": summary.blobs,
            "fs_version": opts.build.fs_version.number().to_string(),
            "compressor": summary.compressor.name(),
            "digester": summary.digester.name(),
            "chunk_size": format!("0x{:x}", summary.chunk_size),
            "blob_size": summary.blob_size,
            "bootstrap_size": summary.bootstrap_size,
            "entries": summary.entries,
            "inodes": summary.inodes,
            "chunks": summary.total_chunks,
            "unique_chunks": summary.unique_chunks,
            "data_bytes": summary.data_bytes,
            "new_blob": summary.blob_id,
            "dict_chunks": summary.dict_chunks,
            "dict_bytes": summary.dict_bytes,
            "trace": {"consumed_time": {"total_build": started.elapsed().as_secs_f64()}},
        });
        args::write_json(path, &json)?;
    }
    Ok(())
}

/// Progress on stderr: files and bytes done, throughput and time left, redrawn at most
/// five times a second.
struct ProgressMeter {
    enabled: bool,
    started: Instant,
    last: Mutex<Option<Instant>>,
}

impl ProgressMeter {
    fn new(enabled: bool) -> Self {
        ProgressMeter {
            enabled,
            started: Instant::now(),
            last: Mutex::new(None),
        }
    }

    fn update(&self, p: &Progress) {
        if !self.enabled {
            return;
        }
        let mut last = self.last.lock().expect("progress lock");
        let now = Instant::now();
        if last.is_some_and(|t| now - t < Duration::from_millis(200))
            && (p.files_done < p.files_total || p.files_total == 0)
        {
            return;
        }
        *last = Some(now);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = p.bytes_done as f64 / secs;
        let left = if rate > 0.0 {
            (p.bytes_total.saturating_sub(p.bytes_done)) as f64 / rate
        } else {
            0.0
        };
        let mut err = std::io::stderr().lock();
        if p.bytes_total == 0 && p.files_total == 0 {
            // A stream: how far it is, not how far it has to go.
            let _ = write!(
                err,
                "\r{} files, {:.1} MiB, {:.1} MiB/s   ",
                p.files_done,
                p.bytes_done as f64 / 1048576.0,
                rate / 1048576.0
            );
            return;
        }
        let _ = write!(
            err,
            "\r{}/{} files, {:.1}/{:.1} MiB, {:.1} MiB/s, {:.0}s left   ",
            p.files_done,
            p.files_total,
            p.bytes_done as f64 / 1048576.0,
            p.bytes_total as f64 / 1048576.0,
            rate / 1048576.0,
            left
        );
    }

    fn finish(&self) {
        if self.enabled && self.last.lock().expect("progress lock").is_some() {
            eprintln!();
        }
    }
}
