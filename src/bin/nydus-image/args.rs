//! Flags shared by several subcommands, and the small helpers every subcommand uses:
//! the logger, blob locations, backends, sizes and JSON reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use nydus_image::builder::overlay::WhiteoutSpec;
use nydus_image::builder::prefetch::{self, Prefetch, PrefetchPolicy};
use nydus_image::format::{Compressor, Digester};
use nydus_image::storage::backend::{self, Backend};
use nydus_image::storage::blobs::BlobSource;

/// `--log-level`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
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

/// Sets up the logger: stderr, or appended to `file`.
pub fn init_logger(level: LogLevel, file: Option<&Path>) -> Result<()> {
    let mut logger = env_logger::Builder::new();
    logger
        .filter_level(level.filter())
        .format_timestamp_micros();
    if let Some(path) = file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        logger.target(env_logger::Target::Pipe(Box::new(f)));
    }
    logger.init();
    Ok(())
}

/// `--compressor`.
#[derive(Clone, Copy, ValueEnum)]
pub enum CompressorArg {
    None,
    #[value(name = "lz4_block")]
    Lz4Block,
    Zstd,
    /// Only for eStargz layers, whose chunks are gzip members.
    Gzip,
}

impl From<CompressorArg> for Compressor {
    fn from(c: CompressorArg) -> Self {
        match c {
            CompressorArg::None => Compressor::None,
            CompressorArg::Lz4Block => Compressor::Lz4Block,
            CompressorArg::Zstd => Compressor::Zstd,
            CompressorArg::Gzip => Compressor::Gzip,
        }
    }
}

/// `--digester`.
#[derive(Clone, Copy, ValueEnum)]
pub enum DigesterArg {
    Blake3,
    Sha256,
}

impl From<DigesterArg> for Digester {
    fn from(d: DigesterArg) -> Self {
        match d {
            DigesterArg::Blake3 => Digester::Blake3,
            DigesterArg::Sha256 => Digester::Sha256,
        }
    }
}

/// `--whiteout-spec`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum WhiteoutArg {
    Oci,
    Overlayfs,
    None,
}

impl From<WhiteoutArg> for WhiteoutSpec {
    fn from(w: WhiteoutArg) -> Self {
        match w {
            WhiteoutArg::Oci => WhiteoutSpec::Oci,
            WhiteoutArg::Overlayfs => WhiteoutSpec::Overlayfs,
            WhiteoutArg::None => WhiteoutSpec::None,
        }
    }
}

/// Where blobs are read from: a backend configuration, as upstream takes it.
#[derive(clap::Args, Clone)]
pub struct BackendArgs {
    /// Storage backend type: localfs, registry or oss.
    #[arg(long = "backend-type")]
    pub backend_type: Option<String>,
    /// Backend configuration file (upstream's shape, e.g. {"dir": "/blobs"} for localfs).
    #[arg(long = "backend-config-file", conflicts_with = "backend_config")]
    pub backend_config_file: Option<PathBuf>,
    /// Backend configuration as a JSON string.
    #[arg(long = "backend-config")]
    pub backend_config: Option<String>,
}

impl BackendArgs {
    /// The backend, or None when no type was given.
    pub fn backend(&self) -> Result<Option<Box<dyn Backend>>> {
        let Some(kind) = &self.backend_type else {
            if self.backend_config_file.is_some() || self.backend_config.is_some() {
                bail!("a backend configuration needs --backend-type");
            }
            return Ok(None);
        };
        let backend = match (&self.backend_config_file, &self.backend_config) {
            (Some(file), _) => backend::from_config_file(kind, file)?,
            (None, Some(json)) => {
                let value: serde_json::Value =
                    serde_json::from_str(json).context("--backend-config is not JSON")?;
                backend::from_config(kind, &value).context("--backend-config")?
            }
            (None, None) => bail!("--backend-type {kind} needs --backend-config-file FILE"),
        };
        Ok(Some(backend))
    }
}

/// Where an image's blobs are, as the mount and verify commands take them.
#[derive(clap::Args, Clone)]
pub struct BlobArgs {
    /// Directory holding the blobs, named by blob id.
    #[arg(short = 'D', long = "blob-dir")]
    pub blob_dir: Option<PathBuf>,
    /// A blob file (repeat for several).
    #[arg(short = 'b', long = "blob")]
    pub blobs: Vec<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

impl BlobArgs {
    /// The blob source for the image at `bootstrap`: [`source`](Self::source), except
    /// that a data blob with inline metadata given alone needs no blob flags (it holds
    /// its own data).
    pub fn source_for(&self, bootstrap: &Path) -> Result<BlobSource> {
        let none_given =
            self.blob_dir.is_none() && self.blobs.is_empty() && self.backend.backend_type.is_none();
        if none_given && nydus_image::reader::is_inline_blob(bootstrap).unwrap_or(false) {
            return Ok(BlobSource::None);
        }
        self.source()
    }

    /// The one blob source these flags describe.
    pub fn source(&self) -> Result<BlobSource> {
        if let Some(b) = self.backend.backend()? {
            if self.blob_dir.is_some() || !self.blobs.is_empty() {
                bail!("give either a backend or --blob-dir/--blob, not both");
            }
            return Ok(BlobSource::Backend(Arc::from(b)));
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

/// How blobs of a remote backend are cached and fetched.
#[derive(clap::Args, Clone)]
pub struct CacheArgs {
    /// Keep chunks fetched from a remote backend in this directory (created if
    /// missing): a later run over the same directory reads them from there. Several
    /// mounts may share it.
    #[arg(long = "cache-dir")]
    pub cache_dir: Option<PathBuf>,
    /// Bound of --cache-dir's data, in bytes (suffixes K, M, G, T: powers of 1024).
    /// Blobs no mount uses are evicted, least recently used first. Default: no bound.
    #[arg(long = "cache-size", requires = "cache_dir")]
    pub cache_size: Option<String>,
    /// Bound of one request to a remote backend: a missing chunk is fetched with the
    /// chunks after it in the blob, up to this many bytes (suffixes as --cache-size).
    #[arg(long = "fetch-size", default_value = "1M")]
    pub fetch_size: String,
}

impl CacheArgs {
    /// `source` with these settings when it is a backend. A cache directory for local
    /// blobs is pointless: said, and ignored.
    pub fn apply(&self, source: BlobSource) -> Result<BlobSource> {
        let merge_bytes = parse_size_suffix("--fetch-size", &self.fetch_size)?;
        if merge_bytes == 0 {
            bail!("--fetch-size must be more than 0");
        }
        let limit_bytes = self
            .cache_size
            .as_deref()
            .map(|s| parse_size_suffix("--cache-size", s))
            .transpose()?;
        let Some(backend) = source.backend().cloned() else {
            if self.cache_dir.is_some() {
                log::warn!("--cache-dir applies to blobs of a remote backend only: ignored");
            }
            return Ok(source);
        };
        let cache = self
            .cache_dir
            .as_ref()
            .map(|dir| nydus_image::storage::cache::CacheOptions {
                dir: dir.clone(),
                limit_bytes,
            });
        Ok(BlobSource::CachedBackend(
            backend,
            nydus_image::storage::remote::RemoteOptions {
                cache,
                merge_bytes,
                table_sizes: false,
                keep_decompressed: false,
            },
        ))
    }
}

/// A size in bytes: digits with an optional K, M, G or T suffix (powers of 1024, an
/// optional trailing `B` or `iB`).
pub fn parse_size_suffix(flag: &str, s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => bail!("invalid {flag} {s:?}: use a K, M, G or T suffix"),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        bail!("invalid {flag} {s:?}: give a number of bytes, e.g. 512M or 2G");
    }
    let n: u64 = digits
        .parse()
        .with_context(|| format!("invalid {flag} {s:?}: too large"))?;
    n.checked_mul(1u64 << shift)
        .with_context(|| format!("invalid {flag} {s:?}: too large"))
}

/// A size given as decimal or as hex with a `0x` prefix (one prefix, no sign).
pub fn parse_size(flag: &str, s: &str) -> Result<u64> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    };
    parsed.with_context(|| format!("invalid {flag} {s:?}: give a number, decimal or hex with 0x"))
}

/// A hex size with or without a `0x` prefix, as upstream takes `--blob-data-size`.
pub fn parse_hex(flag: &str, s: &str) -> Result<u64> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("invalid {flag} {s:?}: give the size in hex");
    }
    u64::from_str_radix(hex, 16).with_context(|| format!("invalid {flag} {s:?}: too large"))
}

/// The chunk size flag: a power of two the builder checks further.
pub fn parse_chunk_size(s: &str) -> Result<u32> {
    let v = parse_size("--chunk-size", s)?;
    u32::try_from(v).with_context(|| format!("--chunk-size {s}: too large"))
}

/// `NYDUS_BUILD_THREADS` or `--threads`, at least 1; None for the default.
pub fn build_threads(flag: Option<usize>) -> Result<Option<usize>> {
    if let Some(t) = flag {
        return Ok(Some(t.max(1)));
    }
    match std::env::var("NYDUS_BUILD_THREADS") {
        Ok(v) => {
            let t: usize = v
                .trim()
                .parse()
                .with_context(|| format!("NYDUS_BUILD_THREADS={v:?} is not a number"))?;
            Ok(Some(t.max(1)))
        }
        Err(_) => Ok(None),
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    // Under a temporary name, renamed into place: a reader never sees half a report.
    nydus_image::builder::output::PendingFile::write_whole(path, text.as_bytes(), "JSON report")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_one_prefix_and_digits_only() {
        for (s, want) in [("0x10", Some(16)), ("16", Some(16)), ("0X1000", Some(4096))] {
            assert_eq!(parse_size("--x", s).ok(), want, "{s}");
        }
        for s in ["0x0x10", "0x", "", "-1", "+1", "1k", "0x-1", "0xg"] {
            assert!(parse_size("--x", s).is_err(), "{s} accepted");
        }
        assert_eq!(parse_hex("--x", "ff").unwrap(), 255);
        assert_eq!(parse_hex("--x", "0xff").unwrap(), 255);
        assert!(parse_hex("--x", "0x0xff").is_err());
        assert!(parse_chunk_size("0x100000000").is_err());
        for (s, want) in [
            ("512", 512),
            ("4K", 4096),
            ("2G", 2 << 30),
            ("1MiB", 1 << 20),
        ] {
            assert_eq!(parse_size_suffix("--x", s).unwrap(), want, "{s}");
        }
        for s in ["", "G", "1X", "-1K", "1.5G", "99999999999999999999T"] {
            assert!(parse_size_suffix("--x", s).is_err(), "{s} accepted");
        }
    }
}

/// `--prefetch-policy`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum PrefetchArg {
    None,
    Fs,
    Blob,
}

impl From<PrefetchArg> for PrefetchPolicy {
    fn from(p: PrefetchArg) -> Self {
        match p {
            PrefetchArg::None => PrefetchPolicy::None,
            PrefetchArg::Fs => PrefetchPolicy::Fs,
            PrefetchArg::Blob => PrefetchPolicy::Blob,
        }
    }
}

/// The prefetch hints of `--prefetch-policy`: with fs or blob, the patterns read from
/// standard input as upstream reads them (none when it is a terminal, where upstream
/// would wait for them).
pub fn prefetch(policy: PrefetchArg) -> Result<Prefetch> {
    use std::io::IsTerminal;
    let policy = PrefetchPolicy::from(policy);
    let patterns = if policy == PrefetchPolicy::None || std::io::stdin().is_terminal() {
        Vec::new()
    } else {
        prefetch::read_patterns(std::io::stdin().lock())
            .context("cannot read prefetch patterns from standard input")?
    };
    log::debug!("{} prefetch pattern(s)", patterns.len());
    Ok(Prefetch { policy, patterns })
}
