//! `mount` and `umount`: serve an image read-only over FUSE.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use nydus_image::access_log::AccessLog;
use nydus_image::mount::ImageFs;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

use crate::args::{BlobArgs, CacheArgs, LogLevel};

#[derive(clap::Args)]
pub struct MountArgs {
    /// Mount point: an existing directory.
    mountpoint: PathBuf,
    /// Bootstrap of the image, or a data blob with inline metadata (which then needs no
    /// blob flags for its own data).
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    #[command(flatten)]
    blobs: BlobArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// After mounting, fetch every chunk of every remote blob in the background (after
    /// the prefetch table's files).
    #[arg(long = "prefetch-all")]
    prefetch_all: bool,
    /// Do not fetch the files of the image's prefetch table in the background.
    #[arg(long = "no-prefetch", conflicts_with = "prefetch_all")]
    no_prefetch: bool,
    /// Requests the background prefetch keeps in flight.
    #[arg(long = "prefetch-workers", default_value_t = 4)]
    prefetch_workers: usize,
    /// When the mount starts, have the kernel read up to this many bytes of --cache-dir's
    /// decompressed chunks (those earlier mounts read) into memory in the background, so
    /// that a restart's reads do not wait on the disk one by one (suffixes as
    /// --cache-size; 0: off).
    #[arg(long = "cache-warm-up", value_name = "SIZE", default_value = "128M")]
    cache_warm_up: String,
    /// Write remote-read counters (requests, bytes, cache hits, prefetch progress) as
    /// JSON to this file, every second and at exit.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Return once the mount is ready; keep serving in the background. The daemon logs
    /// to --log-file, or else to a file in the temporary directory whose name is printed.
    #[arg(long)]
    daemon: bool,
    /// Verify every chunk's digest when it is read (a mismatch is EIO).
    #[arg(long)]
    validate: bool,
    /// Threads serving requests (default: one per core, at least 4).
    #[arg(long)]
    threads: Option<usize>,
    /// Bound of the decompressed chunk cache, in MiB. The kernel's page cache keeps file
    /// data; this cache serves reads that cover part of a chunk, such as the page faults
    /// of a program or library mapped in memory, which jump between its chunks (a Python
    /// start-up from a cold page cache took 1.6x as long with 2 MiB as with 32).
    #[arg(long = "cache-mib", default_value_t = 32)]
    cache_mib: usize,
    /// Write the path of each regular file the first time it is read, in that order, one
    /// a line: a prefetch list for `create --prefetch-policy fs` (on its standard input).
    /// Written in place as reads happen (flushed every 100 ms and at unmount), so it can
    /// be followed live; an existing file is truncated.
    #[arg(long = "access-log", value_name = "FILE")]
    access_log: Option<PathBuf>,
    /// Log to this file (with --daemon, the daemon's only output).
    #[arg(short = 'L', long = "log-file")]
    pub log_file: Option<PathBuf>,
    /// Log level.
    #[arg(short = 'l', long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

#[derive(clap::Args)]
pub struct UmountArgs {
    /// Mount point.
    pub mountpoint: PathBuf,
}

/// A checked `mount` request.
pub struct MountOptions {
    mountpoint: PathBuf,
    bootstrap: PathBuf,
    blobs: BlobSource,
    /// Start a daemon (this process returns once it serves).
    daemon: bool,
    log_file: Option<PathBuf>,
    validate: bool,
    threads: Option<usize>,
    cache_bytes: usize,
    access_log: Option<PathBuf>,
    prefetch: Option<nydus_image::reader::PrefetchOptions>,
    warm_up_bytes: u64,
    metrics: Option<PathBuf>,
    /// In a daemon: written to (one byte) once the file system is mounted.
    ready: Option<std::fs::File>,
}

impl MountArgs {
    /// Checks the flags and the mount point.
    pub fn options(self) -> Result<MountOptions> {
        let meta = std::fs::metadata(&self.mountpoint)
            .with_context(|| format!("mount point {}", self.mountpoint.display()))?;
        if !meta.is_dir() {
            bail!(
                "mount point {} is not a directory",
                self.mountpoint.display()
            );
        }
        if let Ok(mut entries) = std::fs::read_dir(&self.mountpoint) {
            if entries.next().is_some() {
                log::warn!(
                    "mount point {} is not empty: its contents are hidden while the image is mounted",
                    self.mountpoint.display()
                );
            }
        }
        let prefetch = (!self.no_prefetch).then(|| nydus_image::reader::PrefetchOptions {
            table: true,
            all: self.prefetch_all,
            workers: self.prefetch_workers.max(1),
        });
        let warm_up_bytes = crate::args::parse_size_suffix("--cache-warm-up", &self.cache_warm_up)?;
        let mut blobs = self.cache.apply(self.blobs.source_for(&self.bootstrap)?)?;
        if let BlobSource::CachedBackend(_, remote) = &mut blobs {
            remote.table_sizes = true;
            remote.keep_decompressed = true;
        }
        Ok(MountOptions {
            blobs,
            prefetch,
            warm_up_bytes,
            metrics: self.metrics,
            mountpoint: self.mountpoint,
            bootstrap: self.bootstrap,
            daemon: self.daemon,
            log_file: self.log_file,
            validate: self.validate,
            threads: self.threads,
            cache_bytes: self.cache_mib << 20,
            access_log: self.access_log,
            ready: None,
        })
    }
}

/// Mounts and serves until unmounted or signalled, or starts a daemon that does.
pub fn run(mut opts: MountOptions) -> Result<ExitCode> {
    if opts.daemon {
        return spawn_daemon(opts);
    }
    nydus_image::heap::tune_for_serving();
    let mut image = Image::open_any(&opts.bootstrap, opts.blobs)?;
    for (id, why) in image.missing_blobs() {
        log::warn!("blob {id} is not available ({why}): reads of its chunks will fail with EIO");
    }
    image.validate = opts.validate;
    image.set_cache_bytes(opts.cache_bytes);
    let mut config = nydus_fuse::MountConfig::default();
    if let Some(threads) = opts.threads {
        config.threads = threads;
    }
    let access_log = match &opts.access_log {
        Some(path) => Some(AccessLog::create(path)?),
        None => None,
    };
    let mut fs = ImageFs::new(image);
    if let Some(log) = &access_log {
        fs = fs.with_access_log(log.clone());
    }
    let fs = std::sync::Arc::new(fs);
    let mut mounted =
        nydus_fuse::mount(fs.clone(), &opts.mountpoint, &config).with_context(|| {
            format!(
                "cannot mount {} at {}",
                opts.bootstrap.display(),
                opts.mountpoint.display()
            )
        })?;
    let unmounter = mounted.unmounter();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let signal_log = access_log.clone();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log::info!("signal {sig}: unmounting");
            // The exits below skip the flush after the session ends.
            if let Some(Err(e)) = signal_log.as_ref().map(|l| l.flush()) {
                log::warn!("{}", nydus_image::error::Chain(&e));
            }
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
    // Before the starting process returns: the warm-up is best under way by the time
    // the first reads come.
    nydus_image::mount::start_lazy_work(
        &fs,
        opts.warm_up_bytes,
        opts.prefetch.clone(),
        opts.metrics.clone(),
    )
    .context("cannot start the warm-up, prefetch and metrics threads")?;
    if let Some(mut ready) = opts.ready.take() {
        use std::io::Write;
        // Mounted, and SIGTERM unmounts: the starting process returns when this arrives
        // (it sees EOF instead if we fail first).
        let _ = ready.write_all(b"m");
    }
    log::info!(
        "serving {} at {}",
        opts.bootstrap.display(),
        opts.mountpoint.display()
    );
    // Blob sizes came from the blob table, unasked (a round trip less before serving):
    // check them now, beside the first reads.
    let check = fs.clone();
    std::thread::Builder::new()
        .name("blob-sizes".into())
        .spawn(move || {
            for (id, why) in check.image().confirm_blob_sizes() {
                log::warn!("blob {id}: {why}: reads of its chunks will fail with EIO");
            }
        })
        .context("cannot start the blob size check")?;
    let served = mounted.run().context("FUSE session failed");
    // Decompressed chunks on their way to the cache: the next mount reads them.
    fs.image().finish_cache_writes(Duration::from_secs(5));
    if let Some(path) = &opts.metrics {
        nydus_image::mount::write_metrics(fs.image(), path)?;
    }
    if let Some(log) = &access_log {
        log.flush()?;
    }
    served?;
    log::info!("unmounted {}", opts.mountpoint.display());
    Ok(ExitCode::SUCCESS)
}

/// Forks a daemon that serves the mount in the background, logging to the requested file
/// or a new one in the temporary directory, and returns once its mount is ready (the
/// daemon says so over a pipe, so no polling delay is added to every start). Warnings the
/// daemon logged while starting (missing blobs, say) are repeated on this process's
/// stderr, with the log's path; if it fails, its log says why.
///
/// A fork rather than a new exec of this program: the daemon starts mounting at once,
/// without loading and relocating the program again (3-4 ms of every start).
fn spawn_daemon(mut opts: MountOptions) -> Result<ExitCode> {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::process::ExitStatusExt;
    let log_path = match &opts.log_file {
        Some(p) => p.clone(),
        None => {
            let (_, path) = tempfile::Builder::new()
                .prefix("nydus-image-mount-")
                .suffix(".log")
                .tempfile()
                .context("cannot create the daemon's log file")?
                .keep()
                .context("cannot keep the daemon's log file")?;
            path
        }
    };
    let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len());
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open log file {}", log_path.display()))?;
    let null = std::fs::File::open("/dev/null").context("cannot open /dev/null")?;
    // A fork copies only the calling thread: it is safe while there is no other.
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads != 1 {
        bail!(
            "cannot start the mount daemon: this process runs {threads} threads (a fork needs one)"
        );
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors, owned below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe for the daemon");
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    let (mut ready_rx, ready_tx) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: this process has one thread (checked above), so the child is a full copy.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot fork the mount daemon");
    }
    if pid == 0 {
        // The daemon: its own process group (a terminal's ^C does not reach it), no
        // terminal input or output, errors into the log.
        drop(ready_rx);
        // SAFETY: plain system calls on descriptors this process owns.
        unsafe {
            libc::setpgid(0, 0);
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
        drop((null, log));
        opts.daemon = false;
        opts.log_file = Some(log_path);
        opts.ready = Some(ready_tx);
        let code = match run(opts) {
            Ok(_) => 0,
            Err(e) => {
                // As `main` says it, into the log (this process's stderr).
                eprintln!("error: {e:#}");
                1
            }
        };
        std::process::exit(code);
    }
    drop((ready_tx, null, log));
    let new_log = || -> String {
        let text = std::fs::read(&log_path).unwrap_or_default();
        String::from_utf8_lossy(text.get(log_start as usize..).unwrap_or_default()).into_owned()
    };
    // One byte once mounted; EOF if the daemon exits first.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut byte = [0u8; 1];
    let mounted = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!(
                "the mount daemon did not mount {} within 60 s (log: {})",
                opts.mountpoint.display(),
                log_path.display()
            );
        }
        let mut poll = libc::pollfd {
            fd: ready_rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, left.as_millis().min(60_000) as i32) } <= 0 {
            continue; // timed out (checked above) or interrupted
        }
        match ready_rx.read(&mut byte) {
            Ok(n) => break n == 1,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("cannot hear from the mount daemon"),
        }
    };
    if !mounted {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        bail!(
            "the mount daemon exited with {} (log: {}):\n{}",
            std::process::ExitStatus::from_raw(status),
            log_path.display(),
            new_log().trim_end()
        );
    }
    for line in new_log().lines() {
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            eprintln!("{line}");
        }
    }
    eprintln!(
        "daemon {pid} serving {}; log: {}",
        opts.mountpoint.display(),
        log_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `umount`.
pub fn unmount(mountpoint: &Path) -> Result<ExitCode> {
    nydus_image::mount::unmount(mountpoint)
        .with_context(|| format!("cannot unmount {}", mountpoint.display()))?;
    Ok(ExitCode::SUCCESS)
}
