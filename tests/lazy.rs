//! Lazy loading from a remote backend (issue 20): the persistent cache (`--cache-dir`),
//! fetch planning, one fetch per chunk, prefetch, metrics, and faults of the network and
//! of the cache. Blobs are served by an "origin": a scripted server speaking the
//! registry's blob API from a blob directory (counting requests and bytes, injecting
//! faults), or forwarding to Debian's docker-registry (a counting proxy).

mod common {
    pub mod commands;
    pub mod compare;
    pub mod files;
    pub mod http;
    pub mod ours;
    pub mod output;
    pub mod registry_server;
    pub mod scratch;
    pub mod watchdog;
}

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::compare::assert_identical;
use common::http::*;
use common::registry_server::*;
use common::watchdog::watchdog;
use common::{commands::*, files::*, ours::*, output::*, scratch::*};
use nydus_verify::FsTree;

/// What the origin does with a blob GET.
#[derive(Clone, Debug)]
enum Mode {
    /// Serves the range.
    Good,
    /// Waits this long, then serves.
    Delay(Duration),
    /// Answers 503 to the next this many GETs, then serves.
    FailFirst(usize),
    /// Answers 503 to every GET whose range holds this blob offset.
    FailAt(u64),
    /// Flips the bytes of every range holding this blob offset.
    CorruptAt(u64),
}

/// A registry-speaking origin with counters.
struct Origin {
    server: ScriptedServer,
    mode: Arc<Mutex<Mode>>,
    gets: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    /// (offset, length) of every GET answered with data.
    ranges: Arc<Mutex<Vec<(u64, u64)>>>,
}

fn range_of(req: &Request) -> Option<(u64, u64)> {
    let r = req.headers.get("range")?.strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    Some((a, b + 1 - a))
}

impl Origin {
    /// Serves the blobs in `blob_dir` (by id), or with `forward`, passes GETs and HEADs
    /// on to that registry host.
    fn start(blob_dir: Option<&Path>, forward: Option<String>) -> Origin {
        let blobs: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
            blob_dir
                .map(|d| {
                    blobs_of(d)
                        .into_iter()
                        .map(|(id, p)| (id, fs::read(p).unwrap()))
                        .collect()
                })
                .unwrap_or_default(),
        );
        let mode = Arc::new(Mutex::new(Mode::Good));
        let gets = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let (m, g, b, r) = (mode.clone(), gets.clone(), bytes.clone(), ranges.clone());
        let server = ScriptedServer::start(move |req| {
            let is_get = req.method == "GET";
            let range = range_of(req);
            if is_get {
                g.fetch_add(1, Ordering::SeqCst);
                let mode = m.lock().unwrap().clone();
                let holds = |at: u64| range.is_some_and(|(o, l)| o <= at && at < o + l);
                match mode {
                    Mode::Good | Mode::CorruptAt(_) => {}
                    Mode::Delay(d) => std::thread::sleep(d),
                    Mode::FailFirst(n) => {
                        if n > 0 {
                            *m.lock().unwrap() = Mode::FailFirst(n - 1);
                            return (503, vec![], b"busy".to_vec());
                        }
                    }
                    Mode::FailAt(at) => {
                        if holds(at) {
                            return (503, vec![], b"broken".to_vec());
                        }
                    }
                }
            }
            let mut reply = if let Some(host) = &forward {
                let mut fwd = ureq::request(&req.method, &format!("http://{host}{}", req.path));
                if let Some(range) = req.headers.get("range") {
                    fwd = fwd.set("Range", range);
                }
                match fwd.call() {
                    Ok(resp) => {
                        let status = resp.status();
                        let len = resp.header("Content-Length").map(str::to_string);
                        let mut body = Vec::new();
                        if req.method == "HEAD" {
                            // The scripted server sends Content-Length from the body.
                            let n: usize = len.and_then(|l| l.parse().ok()).unwrap_or(0);
                            body = vec![0; n];
                        } else {
                            std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
                        }
                        (status, vec![], body)
                    }
                    Err(ureq::Error::Status(code, _)) => (code, vec![], vec![]),
                    Err(_) => (0, vec![], vec![]),
                }
            } else {
                let id = req.path.rsplit("sha256:").next().unwrap_or("");
                match blobs.iter().find(|(i, _)| i == id) {
                    Some((_, data)) if req.method == "HEAD" => (200, vec![], data.clone()),
                    Some((_, data)) => ranged(req, data),
                    None => (404, vec![], vec![]),
                }
            };
            if is_get && reply.0 / 100 == 2 {
                if let (Mode::CorruptAt(at), Some((o, _))) = (m.lock().unwrap().clone(), range) {
                    if at >= o && ((at - o) as usize) < reply.2.len() {
                        reply.2[(at - o) as usize] ^= 0xff;
                    }
                }
                b.fetch_add(reply.2.len() as u64, Ordering::SeqCst);
                r.lock()
                    .unwrap()
                    .push(range.unwrap_or((0, reply.2.len() as u64)));
            }
            reply
        });
        Origin {
            server,
            mode,
            gets,
            bytes,
            ranges,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    /// The registry backend configuration reaching this origin.
    fn config(&self, dir: &Path, timeout: u64, retries: u8) -> PathBuf {
        let path = dir.join(format!(
            "origin-{}-{timeout}-{retries}.json",
            self.server.port
        ));
        let v = serde_json::json!({"scheme": "http", "host": format!("127.0.0.1:{}", self.server.port),
            "repo": "lazy/test", "timeout": timeout, "retry_limit": retries});
        fs::write(&path, v.to_string()).unwrap();
        path
    }
}

/// A tree of many small files in a few directories and one big file.
fn sample_tree(root: &Path) -> PathBuf {
    let src = root.join("src");
    for d in 0..4 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..40 {
            let len = 1000 + (d * 40 + f) * 211 % 9000;
            write_file(
                &src.join(format!("d{d}/f{f:02}")),
                &data(len, (d * 100 + f) as u64),
            );
        }
    }
    write_file(&src.join("big"), &data(3_000_000, 7));
    src
}

/// Builds `src` (extra `create` flags, prefetch patterns on stdin); (bootstrap, blob dir).
fn build_image(root: &Path, src: &Path, extra: &[&str], patterns: &str) -> (PathBuf, PathBuf) {
    let (boot, blobs) = (root.join("boot"), root.join("blobs"));
    fs::create_dir_all(&blobs).unwrap();
    let mut args = vec!["create", "-l", "warn", "-B", s(&boot), "-D", s(&blobs)];
    args.extend_from_slice(extra);
    args.push(s(src));
    let o = run_with_stdin(&our_bin(), args, patterns.as_bytes());
    assert!(o.status.success(), "create: {}", text(&o));
    (boot, blobs)
}

/// A mount daemon of ours; unmounted (and waited for) when dropped.
struct Mount {
    mnt: PathBuf,
    pid: u32,
    log: PathBuf,
}

impl Mount {
    fn start(root: &Path, name: &str, boot: &Path, cfg: &Path, extra: &[&str]) -> Mount {
        let mnt = root.join(name);
        fs::create_dir_all(&mnt).unwrap();
        let log = root.join(format!("{name}.log"));
        let _ = fs::remove_file(&log);
        let mut args = vec![
            "mount",
            "--daemon",
            "-B",
            s(boot),
            "--backend-type",
            "registry",
            "--backend-config-file",
            s(cfg),
            "-L",
            s(&log),
        ];
        args.extend_from_slice(extra);
        args.push(s(&mnt));
        let o = run(&args);
        assert!(o.status.success(), "mount: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let pid = err
            .split_whitespace()
            .skip_while(|w| *w != "daemon")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no daemon pid in {err}"));
        Mount { mnt, pid, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts and waits for the daemon to exit (its last metrics are written then).
    fn stop(&mut self) {
        if self.pid == 0 {
            return;
        }
        let _ = Command::new("umount").arg(&self.mnt).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.pid = 0;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.pid != 0 {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            let _ = Command::new("kill").arg(self.pid.to_string()).status();
        }
    }
}

fn metrics(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

fn count(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("metrics: no number {key}: {v}"))
}

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("bytes in the blob") as u64
}

fn eio(r: std::io::Result<Vec<u8>>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
        Ok(_) => panic!("{what}: read succeeded"),
    }
}

#[test]
fn real_registry_cold_read_is_planned_and_restart_fetches_nothing() {
    let _dog = watchdog("lazy: real registry", 300);
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = sample_tree(root);
    let (boot, blobs) = build_image(root, &src, &[], "");
    let registry = RealRegistry::start(&root.join("registry"), None);
    let mut blob_bytes = 0u64;
    for (id, path) in blobs_of(&blobs) {
        assert_eq!(registry.push("lazy/test", &path), id);
        blob_bytes += fs::metadata(&path).unwrap().len();
    }
    let proxy = Origin::start(
        None,
        Some(registry.config("x", None)["host"].as_str().unwrap().into()),
    );
    let cfg = proxy.config(root, 10, 2);
    let cache = root.join("cache");
    let m1 = root.join("m1.json");

    // Cold: every byte comes from the registry, in few requests.
    let mut mount = Mount::start(
        root,
        "mnt",
        &boot,
        &cfg,
        &["--cache-dir", s(&cache), "--metrics", s(&m1)],
    );
    assert_identical("cold", &FsTree::new(&src), &FsTree::new(&mount.mnt));
    mount.stop();
    let (gets, bytes) = (proxy.gets(), proxy.bytes.load(Ordering::SeqCst));
    let files = 161u64;
    // Chunks of small files are merged up to 1 MiB per planned range, sent as at most
    // two requests (the head a reader waits for, the tail alongside): about two requests
    // per MiB of blob, plus a few where the read order leaves the blob order.
    let bound = 2 * blob_bytes.div_ceil(1 << 20) + 6;
    assert!(
        gets > 0 && gets <= bound && gets * 8 <= files,
        "{gets} requests for {files} files, {blob_bytes} blob bytes (bound {bound})"
    );
    assert!(
        bytes <= blob_bytes,
        "fetched {bytes} of a {blob_bytes}-byte blob"
    );
    let m = metrics(&m1);
    assert_eq!(count(&m, "requests"), gets, "metrics: {m}");
    assert_eq!(count(&m, "bytes"), bytes, "metrics: {m}");
    assert_eq!(count(&m, "errors"), 0, "metrics: {m}");
    assert!(count(&m, "cache_misses") > 0);

    // Restart over the same cache: identical, nothing reaches the registry (not even a
    // HEAD for the blob's size).
    let all_requests = proxy.server.requests.lock().unwrap().len();
    let m2 = root.join("m2.json");
    let mut mount = Mount::start(
        root,
        "mnt",
        &boot,
        &cfg,
        &["--cache-dir", s(&cache), "--metrics", s(&m2)],
    );
    assert_identical("warm", &FsTree::new(&src), &FsTree::new(&mount.mnt));
    mount.stop();
    assert_eq!(proxy.gets(), gets, "a warm mount fetched");
    assert_eq!(
        proxy.server.requests.lock().unwrap().len(),
        all_requests,
        "a warm mount asked the registry"
    );
    // verify reads through the same cache.
    let o = run(&[
        "verify",
        "--via",
        "library",
        "-B",
        s(&boot),
        "--backend-type",
        "registry",
        "--backend-config-file",
        s(&cfg),
        "--cache-dir",
        s(&cache),
        s(&src),
    ]);
    assert_eq!(o.status.code(), Some(0), "verify: {}", text(&o));
    assert_eq!(
        proxy.server.requests.lock().unwrap().len(),
        all_requests,
        "verify over a warm cache asked the registry"
    );
    let m = metrics(&m2);
    assert_eq!(count(&m, "requests"), 0, "metrics: {m}");
    assert!(count(&m, "cache_hits") > 0, "metrics: {m}");
    // Reads of parts of chunks came from the decompressed copies the cold mount kept.
    assert!(count(&m, "raw_hits") > 0, "metrics: {m}");
    assert!(count(&metrics(&m1), "raw_stored") > 0, "metrics: {m}");
    // The restart read the kept chunks ahead; the cold mount had none to read.
    assert!(count(&m, "warm_up_bytes") > 0, "metrics: {m}");
    assert_eq!(count(&metrics(&m1), "warm_up_bytes"), 0);
    // Unless told not to.
    let m3 = root.join("m3.json");
    let mut mount = Mount::start(
        root,
        "mnt",
        &boot,
        &cfg,
        &[
            "--cache-dir",
            s(&cache),
            "--cache-warm-up",
            "0",
            "--metrics",
            s(&m3),
        ],
    );
    assert_identical(
        "warm, no warm-up",
        &FsTree::new(&src),
        &FsTree::new(&mount.mnt),
    );
    mount.stop();
    let m = metrics(&m3);
    assert_eq!(count(&m, "warm_up_bytes"), 0, "metrics: {m}");
    assert!(count(&m, "raw_hits") > 0, "metrics: {m}");

    // Two mounts at once sharing a fresh cache directory: both right.
    let shared = root.join("shared");
    let mounts: Vec<Mount> = ["a", "b"]
        .iter()
        .map(|n| Mount::start(root, n, &boot, &cfg, &["--cache-dir", s(&shared)]))
        .collect();
    std::thread::scope(|sc| {
        for m in &mounts {
            let src = &src;
            sc.spawn(move || assert_identical("shared", &FsTree::new(src), &FsTree::new(&m.mnt)));
        }
    });
    for mut m in mounts {
        m.stop();
    }
    let before = proxy.gets();
    let mut mount = Mount::start(root, "mnt", &boot, &cfg, &["--cache-dir", s(&shared)]);
    assert_identical(
        "after sharing",
        &FsTree::new(&src),
        &FsTree::new(&mount.mnt),
    );
    mount.stop();
    assert_eq!(proxy.gets(), before, "the shared cache missed chunks");
}

#[test]
fn one_chunk_wanted_by_two_readers_is_fetched_once() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = root.join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("file"), &data(600_000, 3));
    let (boot, blobs) = (root.join("boot"), root.join("blobs"));
    fs::create_dir(&blobs).unwrap();
    let o = build(&src, &boot, &blobs, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let origin = Origin::start(Some(&blobs), None);
    origin.set(Mode::Delay(Duration::from_millis(400)));
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(origin.config(root, 10, 0)).unwrap()).unwrap();
    let backend = nydus_image::storage::backend::from_config("registry", &cfg).unwrap();
    let source = nydus_image::storage::blobs::BlobSource::Backend(Arc::from(backend));
    let image = nydus_image::reader::Image::open(&boot, source).unwrap();
    let nid = image.resolve(b"/file").unwrap().unwrap();
    let reads: Vec<Vec<u8>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..3)
            .map(|_| sc.spawn(|| image.read_all(nid).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in reads {
        assert_eq!(r, data(600_000, 3));
    }
    assert_eq!(
        origin.gets(),
        1,
        "ranges: {:?}",
        origin.ranges.lock().unwrap()
    );
    let m = image.fetch_metrics().snapshot();
    assert_eq!(count(&m, "requests"), 1, "{m}");
}

/// An uncompressed image (file bytes appear in the blob) served by a scripted origin.
struct Faulty {
    scratch: Scratch,
    src: PathBuf,
    boot: PathBuf,
    origin: Origin,
    /// Blob offsets of file `a`'s and `c`'s bytes.
    a_at: u64,
    c_at: u64,
}

fn faulty() -> Faulty {
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = root.join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("a"), &data(50_000, 11));
    write_file(&src.join("b"), &data(50_000, 12));
    write_file(&src.join("c"), &data(50_000, 13));
    let (boot, blobs) = build_image(root, &src, &["--compressor", "none"], "");
    let blob = fs::read(&blobs_of(&blobs)[0].1).unwrap();
    let a_at = find(&blob, &data(50_000, 11)[..4096]);
    let c_at = find(&blob, &data(50_000, 13)[..4096]);
    let origin = Origin::start(Some(&blobs), None);
    Faulty {
        src,
        boot,
        origin,
        a_at,
        c_at,
        scratch,
    }
}

#[test]
fn server_errors_are_retried_then_fail_one_file_with_eio() {
    let _dog = watchdog("lazy: 5xx", 120);
    let f = faulty();
    let root = f.scratch.path();
    let cfg = f.origin.config(root, 5, 2);
    let cache = root.join("cache");
    // One chunk per request, so a broken range is one file's.
    let flags = ["--cache-dir", s(&cache), "--fetch-size", "4K", "--validate"];

    // Two 503s, then data: retried within the limit.
    f.origin.set(Mode::FailFirst(2));
    let mut mount = Mount::start(root, "mnt", &f.boot, &cfg, &flags);
    assert_eq!(fs::read(mount.mnt.join("b")).unwrap(), data(50_000, 12));
    assert_eq!(f.origin.gets(), 3);

    // 503 forever for a's range: EIO after the retries, naming blob and chunk; the
    // other files and the mount keep working.
    f.origin.set(Mode::FailAt(f.a_at));
    let started = Instant::now();
    eio(fs::read(mount.mnt.join("a")), "a behind a failing range");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fs::read(mount.mnt.join("c")).unwrap(), data(50_000, 13));
    let log = mount.log();
    assert!(
        log.contains("cannot read chunk")
            && log.contains("HTTP 503")
            && log.contains(&blobs_id(&f)),
        "log: {log}"
    );
    // Back to good: the file reads (nothing bad was cached).
    f.origin.set(Mode::Good);
    assert_eq!(fs::read(mount.mnt.join("a")).unwrap(), data(50_000, 11));
    mount.stop();
}

fn blobs_id(f: &Faulty) -> String {
    blobs_of(&f.scratch.path().join("blobs"))[0].0.clone()
}

impl Faulty {
    /// Mounts the image with `flags`, checks that it reads as its source (`what` names
    /// the step), unmounts; returns the stopped mount, for its log.
    fn mount_and_compare(&self, cfg: &Path, flags: &[&str], what: &str) -> Mount {
        let mut mount = Mount::start(self.scratch.path(), "mnt", &self.boot, cfg, flags);
        assert_identical(what, &FsTree::new(&self.src), &FsTree::new(&mount.mnt));
        mount.stop();
        mount
    }
}

#[test]
fn a_stalled_server_times_out_with_eio_not_a_hang() {
    let _dog = watchdog("lazy: stall", 120);
    let f = faulty();
    let root = f.scratch.path();
    let cfg = f.origin.config(root, 1, 1);
    f.origin.set(Mode::Delay(Duration::from_secs(4)));
    let mut mount = Mount::start(root, "mnt", &f.boot, &cfg, &["--fetch-size", "4K"]);
    let started = Instant::now();
    eio(fs::read(mount.mnt.join("a")), "a from a stalled server");
    // Two attempts of 1 s each and a 100 ms backoff, with slack for a busy machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    f.origin.set(Mode::Good);
    assert_eq!(fs::read(mount.mnt.join("b")).unwrap(), data(50_000, 12));
    mount.stop();
}

#[test]
fn wrong_bytes_fail_validation_and_never_enter_the_cache() {
    let _dog = watchdog("lazy: wrong bytes", 120);
    let f = faulty();
    let root = f.scratch.path();
    let cfg = f.origin.config(root, 5, 0);
    let cache = root.join("cache");
    f.origin.set(Mode::CorruptAt(f.a_at + 100));
    let flags = ["--cache-dir", s(&cache), "--validate"];
    let mut mount = Mount::start(root, "mnt", &f.boot, &cfg, &flags);
    eio(fs::read(mount.mnt.join("a")), "a with wrong bytes");
    let log = mount.log();
    assert!(log.contains("does not match the bootstrap"), "log: {log}");
    mount.stop();
    // A good server, the same cache: a is read right, so its bad bytes were not kept.
    f.origin.set(Mode::Good);
    let gets = f.origin.gets();
    f.mount_and_compare(&cfg, &flags, "after bad bytes");
    assert!(f.origin.gets() > gets, "a was not fetched again");
}

#[test]
fn a_damaged_or_torn_cache_is_detected_and_refetched() {
    let _dog = watchdog("lazy: damaged cache", 180);
    let f = faulty();
    let root = f.scratch.path();
    let cfg = f.origin.config(root, 5, 0);
    let cache = root.join("cache");
    let flags = ["--cache-dir", s(&cache)];
    f.mount_and_compare(&cfg, &flags, "fill");
    let data_file = cache.join(format!("{}.data", blobs_id(&f)));
    let raw_file = cache.join(format!("{}.raw", blobs_id(&f)));
    let flip = |path: &Path, at: u64| {
        let file = fs::OpenOptions::new().write(true).open(path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"XXXX", at).unwrap();
    };

    // Flipped bytes in a decompressed chunk of the raw file: detected, and the chunk is
    // taken from its stored bytes again, not from the network.
    let c_raw = find(&fs::read(&raw_file).unwrap(), &data(50_000, 13)[..4096]);
    flip(&raw_file, c_raw + 10);
    let gets = f.origin.gets();
    let mount = f.mount_and_compare(&cfg, &flags, "raw flipped");
    assert_eq!(f.origin.gets(), gets, "a stored chunk was fetched again");
    assert_eq!(
        mount.log().matches("does not match its checksums").count(),
        1,
        "{}",
        mount.log()
    );

    // Flipped bytes in a cached stored chunk, with the raw file gone: detected, fetched.
    flip(&data_file, f.c_at + 10);
    fs::remove_file(&raw_file).unwrap();
    let gets = f.origin.gets();
    let mount = f.mount_and_compare(&cfg, &flags, "flipped");
    assert!(
        f.origin.gets() > gets,
        "the damaged chunk was not refetched"
    );
    assert!(
        mount.log().contains("does not match its checksum"),
        "{}",
        mount.log()
    );

    // Truncated data and raw files.
    for file in [&data_file, &raw_file] {
        let len = fs::metadata(file).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
    }
    let mount = f.mount_and_compare(&cfg, &flags, "truncated");
    assert!(
        mount.log().contains("does not match its checksum"),
        "{}",
        mount.log()
    );

    // SIGKILL while fetches are under way: the next mount serves the right bytes.
    let cache2 = root.join("cache2");
    let flags2 = ["--cache-dir", s(&cache2), "--fetch-size", "4K"];
    f.origin.set(Mode::Delay(Duration::from_millis(300)));
    let mut mount = Mount::start(root, "mnt", &f.boot, &cfg, &flags2);
    let mnt = mount.mnt.clone();
    let reader = std::thread::spawn(move || {
        for name in ["a", "b", "c"] {
            let _ = fs::read(mnt.join(name));
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    Command::new("kill")
        .args(["-9", &mount.pid.to_string()])
        .status()
        .unwrap();
    let _ = Command::new("umount").arg("-l").arg(&mount.mnt).status();
    reader.join().unwrap();
    mount.pid = 0;
    f.origin.set(Mode::Good);
    f.mount_and_compare(&cfg, &flags2, "after SIGKILL");
}

#[test]
fn an_unusable_cache_directory_warns_once_and_reads_from_the_network() {
    let _dog = watchdog("lazy: unusable cache", 180);
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = sample_tree(root);
    let (boot, blobs) = build_image(root, &src, &[], "");
    let origin = Origin::start(Some(&blobs), None);
    let cfg = origin.config(root, 5, 0);
    // A file where the directory should be.
    let not_dir = root.join("not-a-dir");
    fs::write(&not_dir, b"x").unwrap();
    // A full file system: a 256 KiB tmpfs for a blob of several MiB.
    let small = root.join("small");
    fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs", s(&small)])
        .status()
        .unwrap();
    assert!(st.success());
    let cases = [
        ("not a directory", not_dir.clone(), "cannot create it"),
        ("full", small.join("c"), "No space left"),
    ];
    for (what, dir, why) in cases {
        let mut mount = Mount::start(root, "mnt", &boot, &cfg, &["--cache-dir", s(&dir)]);
        assert_identical(what, &FsTree::new(&src), &FsTree::new(&mount.mnt));
        mount.stop();
        let log = mount.log();
        assert_eq!(
            log.matches("cache directory").count(),
            1,
            "{what}: one warning expected: {log}"
        );
        assert!(log.contains(why), "{what}: {log}");
    }
    let _ = Command::new("umount").arg(&small).status();
}

#[test]
fn prefetch_table_is_fetched_after_mount_and_reads_then_fetch_nothing() {
    let _dog = watchdog("lazy: prefetch", 180);
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = sample_tree(root);
    let (boot, blobs) = build_image(root, &src, &["--prefetch-policy", "fs"], "/d2\n/big\n");
    let origin = Origin::start(Some(&blobs), None);
    let cfg = origin.config(root, 5, 0);
    let metrics_file = root.join("metrics.json");
    let mut mount = Mount::start(root, "mnt", &boot, &cfg, &["--metrics", s(&metrics_file)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = fs::read_to_string(&metrics_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if let Some(m) = m.filter(|m| m["prefetch"]["state"] == "done") {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "prefetch not done: {:?}",
            fs::read_to_string(&metrics_file)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let p = &m["prefetch"];
    assert_eq!(count(p, "files"), 42, "{m}"); // d2, its 40 files, big
    assert!(
        count(p, "chunks_total") > 0 && count(p, "chunks_done") == count(p, "chunks_total"),
        "{m}"
    );
    assert_eq!(count(&m, "requests"), origin.gets(), "{m}");
    let gets = origin.gets();
    assert!(gets > 0);
    for f in 0..40 {
        let name = format!("d2/f{f:02}");
        assert_eq!(
            fs::read(mount.mnt.join(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap()
        );
    }
    assert_eq!(fs::read(mount.mnt.join("big")).unwrap(), data(3_000_000, 7));
    assert_eq!(origin.gets(), gets, "prefetched files were fetched again");
    mount.stop();
    // --prefetch-all: everything, then a full read fetches nothing.
    let metrics_file = root.join("metrics-all.json");
    let mut mount = Mount::start(
        root,
        "mnt",
        &boot,
        &cfg,
        &["--prefetch-all", "--metrics", s(&metrics_file)],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&metrics_file).is_ok_and(|t| t.contains("\"done\"")) {
        assert!(Instant::now() < deadline, "prefetch-all not done");
        std::thread::sleep(Duration::from_millis(100));
    }
    let gets = origin.gets();
    assert_identical(
        "prefetched all",
        &FsTree::new(&src),
        &FsTree::new(&mount.mnt),
    );
    assert_eq!(origin.gets(), gets, "a prefetched image fetched on read");
    mount.stop();
}

#[test]
fn a_v5_image_prefetches_all_and_reads_through_the_cache() {
    let _dog = watchdog("lazy: v5", 180);
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = sample_tree(root);
    // Our v5 builder writes no prefetch table yet (upstream's does): --prefetch-all.
    let (boot, blobs) = build_image(root, &src, &["--fs-version", "5"], "");
    let origin = Origin::start(Some(&blobs), None);
    let cfg = origin.config(root, 5, 0);
    let cache = root.join("cache");
    let metrics_file = root.join("metrics.json");
    let flags = ["--cache-dir", s(&cache), "--metrics", s(&metrics_file)];
    let mut mount = Mount::start(
        root,
        "mnt",
        &boot,
        &cfg,
        &[&flags[..], &["--prefetch-all"]].concat(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&metrics_file).is_ok_and(|t| t.contains("\"done\"")) {
        assert!(Instant::now() < deadline, "v5 prefetch not done");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = metrics(&metrics_file);
    let p = &m["prefetch"];
    assert!(
        count(p, "chunks_total") > 0 && count(p, "chunks_done") == count(p, "chunks_total"),
        "{m}"
    );
    let gets = origin.gets();
    for f in 0..40 {
        let name = format!("d1/f{f:02}");
        assert_eq!(
            fs::read(mount.mnt.join(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap()
        );
    }
    assert_eq!(
        origin.gets(),
        gets,
        "prefetched v5 files were fetched again"
    );
    assert_identical("v5 cold", &FsTree::new(&src), &FsTree::new(&mount.mnt));
    mount.stop();
    let gets = origin.gets();
    let mut mount = Mount::start(root, "mnt", &boot, &cfg, &flags);
    assert_identical("v5 warm", &FsTree::new(&src), &FsTree::new(&mount.mnt));
    mount.stop();
    assert_eq!(origin.gets(), gets, "a warm v5 mount fetched");
}

#[test]
fn a_mount_takes_blob_sizes_from_the_image_and_checks_them_after_serving() {
    let _dog = watchdog("lazy: blob sizes", 120);
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = sample_tree(root);
    let (boot, blobs) = build_image(root, &src, &[], "");
    // The backend serves each blob one byte short of what the blob table records.
    let short = root.join("short");
    fs::create_dir(&short).unwrap();
    for (id, path) in blobs_of(&blobs) {
        let data = fs::read(&path).unwrap();
        fs::write(short.join(&id), &data[..data.len() - 1]).unwrap();
    }
    let wait_for = |mount: &Mount, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mount.log().contains(what) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        mount.log()
    };
    let origin = Origin::start(Some(&short), None);
    let cfg = origin.config(root, 5, 0);
    let mut mount = Mount::start(root, "mnt", &boot, &cfg, &[]);
    // The mount serves (metadata needs no blob); the check runs beside it.
    assert!(fs::read_dir(&mount.mnt).unwrap().count() > 0);
    let log = wait_for(&mount, "blob table says");
    mount.stop();
    let (id, path) = blobs_of(&blobs).remove(0);
    let len = fs::metadata(path).unwrap().len();
    let expect = format!("{} bytes, but the image's blob table says {len}", len - 1);
    assert!(log.contains(&id) && log.contains(&expect), "{log}");

    // The right sizes: nothing said.
    let origin = Origin::start(Some(&blobs), None);
    let cfg = origin.config(root, 5, 0);
    let mut mount = Mount::start(root, "mnt", &boot, &cfg, &[]);
    assert_identical("good", &FsTree::new(&src), &FsTree::new(&mount.mnt));
    std::thread::sleep(Duration::from_millis(300));
    mount.stop();
    assert!(!mount.log().contains("blob table says"), "{}", mount.log());
}
