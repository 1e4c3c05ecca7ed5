//! The `nydus-image` command line: a thin shell over the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use nydus_image::builder::compact::CompactConfig;
use nydus_image::builder::{self, chunker::Progress, BlobTarget, BuildOptions};
use nydus_image::check;
use nydus_image::format::{Compressor, Digester};
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

#[derive(Parser)]
#[command(
    name = "nydus-image",
    version,
    about = "Build, check and read RAFS (Nydus) filesystem images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, PartialOrd, Ord)]
enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Trace => log::LevelFilter::Trace,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Error => log::LevelFilter::Error,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressorArg {
    None,
    #[value(name = "lz4_block")]
    Lz4Block,
    Zstd,
    Gzip,
}

#[derive(Clone, Copy, ValueEnum)]
enum DigesterArg {
    Blake3,
    Sha256,
}

#[derive(Subcommand)]
enum Command {
    /// Create a RAFS filesystem from a directory.
    Create(Box<CreateArgs>),
    /// Validate a RAFS bootstrap and list its blobs and features.
    Check(CheckArgs),
    /// Mount an image read-only through FUSE.
    Mount(MountArgs),
    /// Unmount a mounted image.
    Umount(UmountArgs),
    /// Merge the bootstraps of separately built layers (bottom first) into one, applying
    /// OCI whiteouts kept in upper layers (build them with --whiteout-spec none).
    Merge(MergeArgs),
    /// Compare an image with its source directory, entry by entry and byte by byte.
    /// Exit status: 0 identical, 1 differences found, 2 could not compare.
    Verify(VerifyArgs),
    /// Rewrite an image's unused, sparsely used and small blobs into fewer, fuller ones.
    Compact(Box<CompactArgs>),
}

/// Where blobs are read from: a backend configuration, as upstream takes it.
#[derive(clap::Args, Clone)]
struct BackendArgs {
    /// Storage backend type: localfs, registry or oss.
    #[arg(long = "backend-type")]
    backend_type: Option<String>,
    /// Backend configuration file (upstream's shape, e.g. {"dir": "/blobs"} for localfs).
    #[arg(long = "backend-config-file", conflicts_with = "backend_config")]
    backend_config_file: Option<PathBuf>,
    /// Backend configuration as a JSON string.
    #[arg(long = "backend-config")]
    backend_config: Option<String>,
}

impl BackendArgs {
    /// The backend, or None when no type was given.
    fn backend(&self) -> Result<Option<Box<dyn nydus_image::storage::backend::Backend>>> {
        let Some(kind) = &self.backend_type else {
            if self.backend_config_file.is_some() || self.backend_config.is_some() {
                bail!("a backend configuration needs --backend-type");
            }
            return Ok(None);
        };
        let file = match (&self.backend_config_file, &self.backend_config) {
            (Some(f), _) => f.clone(),
            (None, Some(json)) => {
                let tmp = tempfile::NamedTempFile::new()?;
                std::fs::write(tmp.path(), json)?;
                let (_, path) = tmp.keep()?;
                path
            }
            (None, None) => bail!("--backend-type {kind} needs --backend-config-file FILE"),
        };
        let backend =
            nydus_image::storage::backend::from_config_file(kind, &file).map_err(|e| anyhow!(e));
        if self.backend_config_file.is_none() {
            let _ = std::fs::remove_file(&file);
        }
        Ok(Some(backend?))
    }
}

#[derive(clap::Args)]
struct CompactArgs {
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
    log_level: LogLevel,
}

/// Where an image's blobs are, as the mount and verify commands take them.
#[derive(clap::Args, Clone)]
struct BlobArgs {
    /// Directory holding the blobs, named by blob id.
    #[arg(short = 'D', long = "blob-dir")]
    blob_dir: Option<PathBuf>,
    /// A blob file (repeat for several).
    #[arg(short = 'b', long = "blob")]
    blobs: Vec<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
}

impl BlobArgs {
    fn source(&self) -> Result<BlobSource> {
        if let Some(b) = self.backend.backend()? {
            if self.blob_dir.is_some() || !self.blobs.is_empty() {
                bail!("give either a backend or --blob-dir/--blob, not both");
            }
            return Ok(BlobSource::Backend(std::sync::Arc::from(b)));
        }
        match (&self.blob_dir, self.blobs.is_empty()) {
            (Some(d), true) => Ok(BlobSource::Dir(d.clone())),
            (None, false) => Ok(BlobSource::Files(self.blobs.clone())),
            (None, true) => bail!(
                "give the blobs: --blob-dir DIR, --blob PATH, or --backend-type with --backend-config-file"
            ),
            (Some(_), false) => bail!("give either --blob-dir or --blob, not both"),
        }
    }
}

#[derive(clap::Args)]
struct MountArgs {
    /// Mount point.
    mountpoint: PathBuf,
    /// Bootstrap of the image.
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    #[command(flatten)]
    blobs: BlobArgs,
    /// Return once the mount is ready; keep serving in the background.
    #[arg(long)]
    daemon: bool,
    /// Verify every chunk's digest when it is read (a mismatch is EIO).
    #[arg(long)]
    validate: bool,
    /// Threads serving requests (default: one per core, at least 4).
    #[arg(long)]
    threads: Option<usize>,
    /// Bound of the decompressed chunk cache, in MiB. The kernel's page cache keeps file
    /// data; this cache only serves reads that cover part of a chunk.
    #[arg(long = "cache-mib", default_value_t = 2)]
    cache_mib: usize,
    /// Log to this file (with --daemon, the daemon's only output).
    #[arg(short = 'L', long = "log-file")]
    log_file: Option<PathBuf>,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    log_level: LogLevel,
}

#[derive(clap::Args)]
struct MergeArgs {
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
    log_level: LogLevel,
}

#[derive(clap::Args)]
struct UmountArgs {
    /// Mount point.
    mountpoint: PathBuf,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum WhiteoutArg {
    Oci,
    Overlayfs,
    None,
}

impl WhiteoutArg {
    fn builder(self) -> nydus_image::builder::overlay::WhiteoutSpec {
        use nydus_image::builder::overlay::WhiteoutSpec as W;
        match self {
            WhiteoutArg::Oci => W::Oci,
            WhiteoutArg::Overlayfs => W::Overlayfs,
            WhiteoutArg::None => W::None,
        }
    }

    fn verifier(self) -> nydus_verify::Whiteouts {
        match self {
            WhiteoutArg::Oci => nydus_verify::Whiteouts::Oci,
            WhiteoutArg::Overlayfs => nydus_verify::Whiteouts::Overlayfs,
            WhiteoutArg::None => nydus_verify::Whiteouts::None,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Via {
    Fuse,
    Library,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The source directory the image was built from; several make a layer stack,
    /// bottom first, merged with --whiteout-spec.
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// How whiteouts are spelled in the source layers.
    #[arg(long = "whiteout-spec", value_enum, default_value = "oci")]
    whiteout_spec: WhiteoutArg,
    /// Bootstrap of the image.
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    #[command(flatten)]
    blobs: BlobArgs,
    /// Read the image through a FUSE mount (default: what a user sees) or the library.
    #[arg(long, value_enum, default_value = "fuse")]
    via: Via,
    /// Write the differences and summary as JSON here.
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Compare modification times to the second (the source's rounded), as an eStargz
    /// TOC stores them.
    #[arg(long = "mtime-seconds")]
    mtime_seconds: bool,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    log_level: LogLevel,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Source directory (or, with --type stargz_index, the eStargz layer's TOC JSON).
    source: PathBuf,
    /// Conversion type: dir-rafs (a directory) or stargz_index (an eStargz layer's TOC;
    /// the layer itself becomes the data blob, named by --blob-id).
    #[arg(short = 't', long = "type", default_value = "dir-rafs")]
    source_type: String,
    /// Same as --type (upstream spells it both ways).
    #[arg(long = "source-type")]
    source_type_alt: Option<String>,
    /// Where to write the bootstrap (RAFS metadata).
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
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
    /// RAFS format version.
    #[arg(short = 'v', long = "fs-version", default_value = "6")]
    fs_version: String,
    /// Chunk compressor.
    /// Chunk compressor [default: zstd; gzip for stargz_index].
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
    log_level: LogLevel,
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
    /// difference. `--verify` uses FUSE when it can and the library reader otherwise;
    /// `--verify=fuse` insists on FUSE, `--verify=library` skips it.
    #[arg(long, value_name = "HOW", num_args = 0..=1, require_equals = true, default_missing_value = "auto")]
    verify: Option<VerifyHow>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum VerifyHow {
    Auto,
    Fuse,
    Library,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Bootstrap to check.
    #[arg(value_name = "BOOTSTRAP")]
    bootstrap_pos: Option<PathBuf>,
    /// Bootstrap to check.
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    /// Blob directory: also read every file and verify every chunk digest.
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
    log_level: LogLevel,
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`nydus-image check -v | head`), as Unix tools do.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Create(a) => a.log_level,
        Command::Check(a) => a.log_level,
        Command::Mount(a) => a.log_level,
        Command::Umount(_) => LogLevel::Info,
        Command::Merge(a) => a.log_level,
        Command::Compact(a) => a.log_level,
        Command::Verify(a) => a.log_level,
    };
    let mut logger = env_logger::Builder::new();
    logger
        .filter_level(level.filter())
        .format_timestamp_micros();
    if let Command::Mount(MountArgs {
        log_file: Some(path),
        ..
    }) = &cli.command
    {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => {
                logger.target(env_logger::Target::Pipe(Box::new(f)));
            }
            Err(e) => {
                eprintln!("error: cannot open log file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    logger.init();
    let result = match cli.command {
        Command::Create(args) => create(*args),
        Command::Check(args) => check_cmd(args).map(|_| ExitCode::SUCCESS),
        Command::Mount(args) => mount_cmd(args).map(|_| ExitCode::SUCCESS),
        Command::Umount(args) => nydus_image::mount::unmount(&args.mountpoint)
            .with_context(|| format!("cannot unmount {}", args.mountpoint.display()))
            .map(|_| ExitCode::SUCCESS),
        Command::Verify(args) => return verify_cmd(args),
        Command::Merge(args) => merge_cmd(args).map(|_| ExitCode::SUCCESS),
        Command::Compact(args) => compact_cmd(*args).map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_fifo(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

fn parse_size(s: &str) -> Result<u32> {
    let v = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else {
        s.parse()
    };
    v.map_err(|_| anyhow!("invalid chunk size {s:?}: give a power of two such as 0x100000"))
}

/// Allocator settings for a build, made before its threads start. One heap for all
/// threads: chunk buffers are allocated by the workers and freed by the writer, and with
/// a heap per thread each heap kept its own high-water mark (the Debian rootfs: 24 MB
/// instead of 29-30). Chunk buffers come from that heap and stay there when freed, for
/// the next chunk: with glibc's adaptive thresholds the heap's top went back to the
/// kernel and was faulted in again, over 100,000 page faults on the 4 GiB file and a
/// fifth of its build time in the kernel (now 2,500).
fn tune_heap_for_build(chunk_size: u32) {
    #[cfg(target_env = "gnu")]
    {
        let keep = (4 * chunk_size as i64).clamp(1 << 20, 32 << 20) as libc::c_int;
        // SAFETY: mallopt only changes allocator tuning; called before the build's
        // threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, keep);
            libc::mallopt(libc::M_TRIM_THRESHOLD, keep);
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = chunk_size;
}

fn create(args: CreateArgs) -> Result<ExitCode> {
    let source_type = args.source_type_alt.as_deref().unwrap_or(&args.source_type);
    let stargz = match source_type {
        "dir-rafs" | "directory" => false,
        "stargz_index" | "estargztoc-ref" => true,
        other => bail!("conversion type {other:?} is not supported; use dir-rafs or stargz_index"),
    };
    match args.fs_version.as_str() {
        "6" => {}
        "5" => bail!("RAFS v5 (--fs-version 5) is not implemented yet; it is tracked as a later issue. Use --fs-version 6"),
        other => bail!("unknown --fs-version {other:?}: RAFS versions are 5 and 6"),
    }
    if stargz {
        return create_stargz(args);
    }
    // Compaction settings and the backend are checked before any work.
    let compaction = match &args.config {
        Some(p) => Some(CompactConfig::load(p).map_err(|e| anyhow!(e))?),
        None => None,
    };
    if compaction.is_none() && args.backend.backend_type.is_some() {
        bail!("--backend-type is used by compaction: give --config compact.json too");
    }
    args.backend.backend()?;
    let target = match (&args.blob, &args.blob_dir) {
        (Some(b), None) => BlobTarget::File(b.clone()),
        (None, Some(d)) => BlobTarget::Dir(d.clone()),
        _ => bail!("give one of --blob PATH or --blob-dir DIR"),
    };
    let mut opts = BuildOptions {
        compressor: match args.compressor.unwrap_or(CompressorArg::Zstd) {
            CompressorArg::None => Compressor::None,
            CompressorArg::Lz4Block => Compressor::Lz4Block,
            CompressorArg::Zstd => Compressor::Zstd,
            CompressorArg::Gzip => Compressor::Gzip,
        },
        digester: match args.digester.unwrap_or(DigesterArg::Blake3) {
            DigesterArg::Blake3 => Digester::Blake3,
            DigesterArg::Sha256 => Digester::Sha256,
        },
        chunk_size: parse_size(args.chunk_size.as_deref().unwrap_or("0x100000"))?,
        blob_id: args.blob_id.clone(),
        parent_bootstrap: args.parent_bootstrap.clone(),
        chunk_dict: args
            .chunk_dict
            .as_deref()
            .map(nydus_image::builder::dict::parse_arg)
            .transpose()?,
        whiteout_spec: args.whiteout_spec.builder(),
        ..BuildOptions::default()
    };
    if let Some(t) = args.threads.or_else(|| {
        std::env::var("NYDUS_BUILD_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
    }) {
        opts.threads = t.max(1);
    }
    if args.verify.is_some() && matches!(target, BlobTarget::File(ref p) if is_fifo(p)) {
        bail!("--verify needs to read the blob back; it cannot be used with a FIFO --blob");
    }
    tune_heap_for_build(opts.chunk_size);
    let show_progress = std::io::stderr().is_terminal() && args.log_level <= LogLevel::Info;
    let meter = ProgressMeter::new(show_progress);
    let started = Instant::now();
    let summary = builder::build(&args.source, &args.bootstrap, &target, &opts, &|p| {
        meter.update(p)
    })
    .with_context(|| format!("cannot build an image of {}", args.source.display()))?;
    meter.finish();
    report_build(&args, &summary, started)?;
    if let Some(cfg) = &compaction {
        let blob_dir = match &target {
            BlobTarget::Dir(d) => Some(d.as_path()),
            BlobTarget::File(_) => None,
        };
        run_compaction(
            &summary.bootstrap,
            &args.backend,
            blob_dir,
            &summary.bootstrap,
            cfg,
            None,
            opts.chunk_dict.as_deref(),
        )?;
    }
    let Some(how) = args.verify else {
        return Ok(ExitCode::SUCCESS);
    };
    let source = match &target {
        BlobTarget::File(p) => BlobSource::Files(vec![p.clone()]),
        BlobTarget::Dir(d) => BlobSource::Dir(d.clone()),
    };
    if args.parent_bootstrap.is_some() && !matches!(target, BlobTarget::Dir(_)) {
        bail!("--verify with --parent-bootstrap needs --blob-dir holding the parent's blobs too");
    }
    let against = args.verify_against.clone().unwrap_or(args.source.clone());
    verify_build(&args, &summary, &against, source, how, false)
}

/// Builds an image from an eStargz layer's TOC (`--type stargz_index`).
fn create_stargz(args: CreateArgs) -> Result<ExitCode> {
    if let Some(c) = args
        .compressor
        .filter(|c| !matches!(c, CompressorArg::Gzip))
    {
        bail!(
            "an eStargz layer is gzip-compressed; --compressor {} cannot describe it",
            c.to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        );
    }
    if args.chunk_dict.is_some() {
        bail!("--chunk-dict cannot be used with stargz_index: the layer's data is not rewritten");
    }
    let mut opts = BuildOptions {
        digester: match args.digester.unwrap_or(DigesterArg::Sha256) {
            DigesterArg::Blake3 => Digester::Blake3,
            DigesterArg::Sha256 => Digester::Sha256,
        },
        blob_id: args.blob_id.clone(),
        parent_bootstrap: args.parent_bootstrap.clone(),
        whiteout_spec: args.whiteout_spec.builder(),
        ..BuildOptions::default()
    };
    if !matches!(args.whiteout_spec, WhiteoutArg::Oci) {
        bail!("eStargz layers carry OCI whiteouts; --whiteout-spec must be oci");
    }
    let layer_file = match (&args.blob, &args.blob_dir, &args.blob_id) {
        (Some(b), _, _) => Some(b.clone()),
        (None, Some(d), Some(id)) => {
            let f = d.join(id);
            if !f.is_file() {
                bail!(
                    "{}: the eStargz layer is not in --blob-dir (it must be named by --blob-id)",
                    f.display()
                );
            }
            Some(f)
        }
        _ => None,
    };
    let stargz_opts = builder::stargz::StargzOptions {
        chunk_size: args.chunk_size.as_deref().map(parse_size).transpose()?,
        data_size: args
            .blob_data_size
            .as_deref()
            .map(|s| {
                u64::from_str_radix(s.trim_start_matches("0x").trim_start_matches("0X"), 16)
                    .map_err(|_| {
                        anyhow!("invalid --blob-data-size {s:?}: give the layer size in hex")
                    })
            })
            .transpose()?,
        layer_file: layer_file.clone(),
    };
    if let Some(t) = args.threads {
        opts.threads = t.max(1);
    }
    let started = Instant::now();
    let summary = builder::stargz::build(&args.source, &args.bootstrap, &stargz_opts, &opts)
        .with_context(|| {
            format!(
                "cannot build an image of eStargz TOC {}",
                args.source.display()
            )
        })?;
    report_build(&args, &summary, started)?;
    let Some(how) = args.verify else {
        return Ok(ExitCode::SUCCESS);
    };
    let Some(against) = args.verify_against.clone() else {
        bail!("--verify with stargz_index needs --verify-against DIR: the directory the layer was made from");
    };
    let source = match (&args.blob_dir, &layer_file) {
        (Some(d), _) => BlobSource::Dir(d.clone()),
        (None, Some(f)) => BlobSource::Files(vec![f.clone()]),
        (None, None) => bail!("--verify with stargz_index needs the layer: give --blob-dir DIR holding it (named by --blob-id) or --blob FILE"),
    };
    // The TOC holds modification times in whole seconds.
    verify_build(&args, &summary, &against, source, how, true)
}

/// Prints the build summary and writes `--output-json`.
fn report_build(
    args: &CreateArgs,
    summary: &builder::BuildSummary,
    started: Instant,
) -> Result<()> {
    let blobs = summary.blobs.clone();
    println!("meta blob path: {}", summary.bootstrap.display());
    println!("data blob size: 0x{:x}", summary.blob_size);
    println!("data blobs: {blobs:?}");
    if args.chunk_dict.is_some() {
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
    if let Some(path) = &args.output_json {
        let json = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "bootstrap": summary.bootstrap,
            "blobs": blobs,
            "fs_version": "6",
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
        write_json(path, &json)?;
    }
    Ok(())
}

/// Compares a freshly built image with `against` (over the parent image, if any).
fn verify_build(
    args: &CreateArgs,
    summary: &builder::BuildSummary,
    against: &std::path::Path,
    source: BlobSource,
    how: VerifyHow,
    mtime_seconds: bool,
) -> Result<ExitCode> {
    let via = match how {
        VerifyHow::Library => Via::Library,
        VerifyHow::Fuse | VerifyHow::Auto => Via::Fuse,
    };
    let stack = Stack {
        parent: args.parent_bootstrap.clone(),
        layers: vec![against.to_path_buf()],
        whiteouts: args.whiteout_spec,
        mtime_seconds,
    };
    let report = match run_verify(&stack, &summary.bootstrap, source.clone(), via) {
        Err(e) if how == VerifyHow::Auto && e.downcast_ref::<FuseUnavailable>().is_some() => {
            eprintln!("{e:#}: verifying through the library reader instead");
            run_verify(&stack, &summary.bootstrap, source, Via::Library)?
        }
        other => other?,
    };
    print_report(&report);
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

/// FUSE could not be mounted (no /dev/fuse, no permission, ...).
#[derive(Debug)]
struct FuseUnavailable(String);

impl std::fmt::Display for FuseUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot mount FUSE: {}", self.0)
    }
}

impl std::error::Error for FuseUnavailable {}

/// What an image is compared with: layer directories (bottom first) over an optional
/// parent image.
struct Stack {
    parent: Option<PathBuf>,
    layers: Vec<PathBuf>,
    whiteouts: WhiteoutArg,
    /// Compare mtimes to the second (eStargz TOCs hold no more).
    mtime_seconds: bool,
}

/// Compares the image with the stack through FUSE or the library reader.
fn run_verify(
    stack: &Stack,
    bootstrap: &std::path::Path,
    blobs: BlobSource,
    via: Via,
) -> Result<nydus_verify::Report> {
    let image = Image::open(bootstrap, blobs.clone())?;
    let missing = image.missing_blobs();
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|(id, why)| format!("{id} ({why})"))
            .collect();
        bail!(
            "blobs of {} are not available: {}",
            bootstrap.display(),
            list.join("; ")
        );
    }
    let parent = match &stack.parent {
        Some(p) => Some(Image::open(p, blobs)?),
        None => None,
    };
    let parent_tree = parent.as_ref().map(nydus_image::mount::ImageTree);
    let dirs: Vec<nydus_verify::FsTree> =
        stack.layers.iter().map(nydus_verify::FsTree::new).collect();
    let mut layers: Vec<&dyn nydus_verify::Tree> = Vec::new();
    if let Some(t) = &parent_tree {
        layers.push(t);
    }
    layers.extend(dirs.iter().map(|d| d as &dyn nydus_verify::Tree));
    let src = nydus_verify::OverlayTree::new(layers, stack.whiteouts.verifier());
    let opts = nydus_verify::Options {
        mtime_seconds: stack.mtime_seconds,
    };
    let report = match via {
        Via::Library => {
            nydus_verify::compare_with(&src, &nydus_image::mount::ImageTree(&image), opts)
        }
        Via::Fuse => {
            let dir = tempfile::Builder::new().prefix("nydus-verify-").tempdir()?;
            let threads = nydus_fuse::default_threads();
            let mount = nydus_image::mount::BackgroundMount::start(image, dir.path(), threads)
                .map_err(|e| anyhow::Error::new(FuseUnavailable(e.to_string())))?;
            let report =
                nydus_verify::compare_with(&src, &nydus_verify::FsTree::new(dir.path()), opts);
            mount
                .stop()
                .context("cannot unmount the verification mount")?;
            report
        }
    };
    report.map_err(|e| anyhow!("could not compare: {e}"))
}

fn merge_cmd(args: MergeArgs) -> Result<()> {
    let summary = nydus_image::builder::merge::merge(&args.sources, &args.bootstrap)
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
        write_json(path, &json)?;
    }
    Ok(())
}

fn print_report(report: &nydus_verify::Report) {
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

fn verify_cmd(args: VerifyArgs) -> ExitCode {
    let run = || -> Result<nydus_verify::Report> {
        let stack = Stack {
            parent: None,
            layers: args.sources.clone(),
            whiteouts: args.whiteout_spec,
            mtime_seconds: args.mtime_seconds,
        };
        let report = run_verify(&stack, &args.bootstrap, args.blobs.source()?, args.via)?;
        if let Some(path) = &args.output_json {
            let json = serde_json::json!({
                "sources": args.sources,
                "bootstrap": args.bootstrap,
                "via": format!("{:?}", args.via).to_lowercase(),
                "identical": report.identical(),
                "entries_compared": report.entries_compared,
                "bytes_compared": report.bytes_compared,
                "differences": report.differences,
            });
            write_json(path, &json)?;
        }
        Ok(report)
    };
    match run() {
        Ok(report) => {
            print_report(&report);
            if report.identical() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

const DAEMON_CHILD_ENV: &str = "NYDUS_IMAGE_DAEMON_CHILD";

fn mount_cmd(args: MountArgs) -> Result<()> {
    if args.daemon && std::env::var_os(DAEMON_CHILD_ENV).is_none() {
        return spawn_daemon(&args);
    }
    // Buffers of 128 KiB and more (chunks, windows, replies) come from mmap and go back to
    // the kernel when freed, so a long-running mount's memory follows what it holds rather
    // than the high-water mark of every serving thread's heap. The serving threads share
    // one heap per core instead of one each (glibc's default allows 8 per core): 2-4 MB
    // less on a full read of the Linux tree.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before serving starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
    }
    let mut image = Image::open(&args.bootstrap, args.blobs.source()?)?;
    for (id, why) in image.missing_blobs() {
        log::warn!("blob {id} is not available ({why}): reads of its chunks will fail with EIO");
    }
    image.validate = args.validate;
    image.set_cache_bytes(args.cache_mib << 20);
    let mut config = nydus_fuse::MountConfig::default();
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    let fs = std::sync::Arc::new(nydus_image::mount::ImageFs::new(image));
    let mut mounted = nydus_fuse::mount(fs, &args.mountpoint, &config).with_context(|| {
        format!(
            "cannot mount {} at {}",
            args.bootstrap.display(),
            args.mountpoint.display()
        )
    })?;
    let unmounter = mounted.unmounter();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log::info!("signal {sig}: unmounting");
            match unmounter.unmount() {
                Ok(nydus_fuse::Unmounted::Cleanly) => {
                    // The session sees the unmount and `run` returns; if it has not
                    // within a few seconds, stop anyway.
                    std::thread::sleep(Duration::from_secs(5));
                    log::warn!("the FUSE session did not end after unmounting: exiting");
                    std::process::exit(0);
                }
                Ok(nydus_fuse::Unmounted::Detached) => {
                    // Busy: detached from its path. Exiting closes /dev/fuse, which ends
                    // the file system for whoever still holds it (they see ENOTCONN).
                    log::warn!(
                        "{} was busy: detached it, exiting",
                        unmounter.mountpoint().display()
                    );
                    std::process::exit(0);
                }
                Err(e) => {
                    log::error!("cannot unmount {}: {e}", unmounter.mountpoint().display());
                    std::process::exit(1);
                }
            }
        }
    });
    log::info!(
        "serving {} at {}",
        args.bootstrap.display(),
        args.mountpoint.display()
    );
    mounted.run().context("FUSE session failed")?;
    log::info!("unmounted {}", args.mountpoint.display());
    Ok(())
}

/// Starts this program again in the background without `--daemon`, and returns once its
/// mount is ready (or reports why it failed).
fn spawn_daemon(args: &MountArgs) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let err_file = tempfile::NamedTempFile::new()?;
    let mut child = std::process::Command::new(exe)
        .args(&argv)
        .env(DAEMON_CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err_file.reopen()?)
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if nydus_image::mount::is_mounted(&args.mountpoint) {
            log::info!(
                "daemon {} serving {}",
                child.id(),
                args.mountpoint.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(err_file.path()).unwrap_or_default();
            bail!(
                "the mount daemon exited with {status}:\n{}",
                text.trim_end()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the mount daemon did not mount {} within 60 s",
                args.mountpoint.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_json(path: &PathBuf, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn check_cmd(args: CheckArgs) -> Result<()> {
    let bootstrap = args
        .bootstrap
        .or(args.bootstrap_pos)
        .ok_or_else(|| anyhow!("give the bootstrap to check (BOOTSTRAP or --bootstrap)"))?;
    let source = match &args.blob_dir {
        Some(d) => BlobSource::Dir(d.clone()),
        None => BlobSource::None,
    };
    let mut image = Image::open(&bootstrap, source)?;
    image.validate = true;
    let report = check::check(&image, args.verbose)?;
    if args.blob_dir.is_some() {
        let mut bytes = 0u64;
        image.walk(|path, nid| {
            if image.stat(nid)?.mode & libc::S_IFMT == libc::S_IFREG {
                bytes += image
                    .read_all(nid)
                    .map_err(|e| {
                        nydus_image::reader::ReadError::Request(format!(
                            "{}: {e}",
                            String::from_utf8_lossy(path)
                        ))
                    })?
                    .len() as u64;
            }
            Ok(())
        })?;
        log::info!("read and verified {bytes} bytes of file data");
    }
    eprintln!("RAFS features: {}", report.features.join(" | "));
    if args.verbose {
        for e in &report.tree {
            println!(
                "inode: {:?} nid {} mode 0o{:o} size {} nlink {} chunks {}",
                e.path, e.nid, e.mode, e.size, e.nlink, e.chunks
            );
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
    if let Some(path) = &args.output_json {
        let json = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "bootstrap": bootstrap,
            "blobs": report.blobs.iter().map(|b| b.blob_id.clone()).collect::<Vec<_>>(),
            "fs_version": report.fs_version,
            "features": report.features,
            "chunk_size": format!("0x{:x}", report.chunk_size),
            "inodes": report.inodes,
            "entries": report.entries,
            "blob_details": report.blobs,
            "tree": if args.verbose { serde_json::to_value(&report.tree)? } else { serde_json::Value::Null },
        });
        write_json(path, &json)?;
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
            && p.files_done < p.files_total
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

fn compact_cmd(args: CompactArgs) -> Result<()> {
    let chunk_dict = args
        .chunk_dict
        .as_deref()
        .map(nydus_image::builder::dict::parse_arg)
        .transpose()?;
    let mut cfg = match &args.config {
        Some(p) => CompactConfig::load(p).map_err(|e| anyhow!(e))?,
        None => CompactConfig::default(),
    };
    if let Some(v) = args.min_used_ratio {
        cfg.min_used_ratio = v;
    }
    if let Some(v) = args.compact_blob_size {
        cfg.compact_blob_size = v;
    }
    if let Some(v) = args.max_compact_size {
        cfg.max_compact_size = v;
    }
    if let Some(v) = args.layers_to_compact {
        cfg.layers_to_compact = v;
    }
    cfg.validate()
        .map_err(|e| anyhow!("compaction settings: {e}"))?;
    let output = args
        .output_bootstrap
        .clone()
        .unwrap_or_else(|| nydus_image::builder::compact::default_output(&args.bootstrap));
    run_compaction(
        &args.bootstrap,
        &args.backend,
        args.blob_dir.as_deref(),
        &output,
        &cfg,
        args.output_json.as_deref(),
        chunk_dict.as_deref(),
    )
}

/// Compacts `bootstrap` into `output`; prints and optionally writes the summary.
fn run_compaction(
    bootstrap: &std::path::Path,
    backend_args: &BackendArgs,
    blob_dir: Option<&std::path::Path>,
    output: &std::path::Path,
    cfg: &CompactConfig,
    json: Option<&std::path::Path>,
    chunk_dict: Option<&std::path::Path>,
) -> Result<()> {
    let out_dir = cfg
        .blobs_dir
        .clone()
        .or_else(|| blob_dir.map(|d| d.to_path_buf()))
        .ok_or_else(|| anyhow!("say where new blobs go: blobs_dir in the config or --blob-dir"))?;
    let backend: Box<dyn nydus_image::storage::backend::Backend> = match backend_args.backend()? {
        Some(b) => b,
        None => Box::new(nydus_image::storage::backend::LocalFs::dir(
            blob_dir.unwrap_or(&out_dir),
        )),
    };
    let started = Instant::now();
    let summary = nydus_image::builder::compact::compact(
        bootstrap,
        backend.as_ref(),
        &out_dir,
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
            "bytes_written": summary.bytes_written,
            "bytes_reclaimed": summary.bytes_reclaimed,
            "unchanged_because": summary.unchanged_because,
            "config": cfg,
            "trace": {"consumed_time": {"total_compact": started.elapsed().as_secs_f64()}},
        });
        write_json(&path.to_path_buf(), &value)?;
    }
    Ok(())
}
