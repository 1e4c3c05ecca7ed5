//! End to end through real FUSE: build, mount, verify; the verifier catching each kind of
//! difference; our mount against upstream nydusd's; a daemon that survives bad blobs.

mod common {
    pub mod attrs;
    pub mod compare;
    pub mod files;
    pub mod nydusd_quirks;
    pub mod ours;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
    pub mod upstream;
    pub mod watchdog;
}

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::compare::{assert_identical, assert_identical_except, Except};
use common::nydusd_quirks::nydusd_mount_time;
use common::{attrs::*, files::*, ours::*, privileged::*, sample::*, scratch::Scratch};
use common::{upstream::Nydusd, watchdog::watchdog};
use nydus_verify::FsTree;

fn ours(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(our_bin())
        .args(args)
        .output()
        .expect("run nydus-image")
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Builds `src` into `out/boot` + `out/blobs` with extra create flags.
fn build_cli(src: &Path, out: &Path, extra: &[&str]) -> Output {
    fs::create_dir_all(out.join("blobs")).unwrap();
    let mut args: Vec<&std::ffi::OsStr> = vec![os("create"), os("--log-level"), os("warn")];
    args.extend(extra.iter().map(|s| os(s)));
    let boot = out.join("boot");
    let blobs = out.join("blobs");
    args.extend([
        os("--bootstrap"),
        boot.as_os_str(),
        os("--blob-dir"),
        blobs.as_os_str(),
        src.as_os_str(),
    ]);
    let o = ours(&args);
    assert!(
        o.status.success() || extra.iter().any(|e| e.starts_with("--verify")),
        "build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn verify(src: &Path, out: &Path, via: &str) -> Output {
    let boot = out.join("boot");
    let blobs = out.join("blobs");
    ours(&[
        os("verify"),
        os("--via"),
        os(via),
        os("--bootstrap"),
        boot.as_os_str(),
        os("--blob-dir"),
        blobs.as_os_str(),
        src.as_os_str(),
    ])
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A foreground `nydus-image mount`, stopped with SIGTERM on drop.
struct OurMount {
    child: Child,
    mnt: PathBuf,
    log: PathBuf,
}

impl OurMount {
    fn start(out: &Path, extra: &[&str]) -> Self {
        let mnt = out.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let log = out.join("mount.log");
        let child = Command::new(our_bin())
            .args(["mount", "--log-file"])
            .arg(&log)
            .args(extra)
            .arg("--bootstrap")
            .arg(out.join("boot"))
            .arg("--blob-dir")
            .arg(out.join("blobs"))
            .arg(&mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut me = OurMount { child, mnt, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nydus_image::mount::is_mounted(&me.mnt) {
            if let Some(status) = me.child.try_wait().unwrap() {
                panic!("mount exited early with {status}");
            }
            assert!(Instant::now() < deadline, "mount not ready in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// SIGTERM, then the exit status; SIGKILL and a panic if it has not exited in 20 s.
    fn terminate(&mut self) -> std::process::ExitStatus {
        self.stop().unwrap_or_else(|e| panic!("{e}"))
    }

    fn stop(&mut self) -> Result<std::process::ExitStatus, String> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!(
                    "the mount did not exit within 20 s of SIGTERM; its log:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OurMount {
    fn drop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            if let Err(e) = self.stop() {
                eprintln!("{e}");
            }
        }
        let _ = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn every_entry_kind_survives_build_mount_verify() {
    let _watchdog = watchdog("every_entry_kind_survives_build_mount_verify", 300);
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 200 * 1024 * 1024 + 7,
            ..TreeSpec::default()
        },
    );
    let out = scratch.path().join("out");
    build_cli(&src, &out, &[]);
    // Through the verifier, both ways.
    for via in ["fuse", "library"] {
        let o = verify(&src, &out, via);
        assert!(o.status.success(), "verify --via {via}:\n{}", text(&o));
        assert!(text(&o).contains(", 0 difference(s)"), "{}", text(&o));
    }
    // And through a mount of our own, read with plain file-system calls.
    let mut mount = OurMount::start(&out, &["--validate"]);
    assert_identical(
        "our FUSE mount",
        &FsTree::new(&src),
        &FsTree::new(&mount.mnt),
    );
    let st = nix_statfs(&mount.mnt);
    assert!(st > 0, "statfs reports blocks");
    let status = mount.terminate();
    assert!(
        status.success(),
        "SIGTERM: clean unmount and exit 0, got {status}"
    );
    assert!(!nydus_image::mount::is_mounted(&mount.mnt));
}

fn nix_statfs(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    st.f_blocks
}

#[test]
fn create_verify_builds_mounts_and_compares() {
    let _watchdog = watchdog("create_verify_builds_mounts_and_compares", 300);
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 1_000_000,
            big_dir_entries: 2000,
            ..TreeSpec::default()
        },
    );
    for flag in ["--verify", "--verify=fuse", "--verify=library"] {
        let out = scratch.path().join(flag.trim_start_matches('-'));
        let json = scratch
            .path()
            .join(format!("{}.json", flag.trim_start_matches('-')));
        let o = build_cli(&src, &out, &[flag, "-J", json.to_str().unwrap()]);
        assert!(o.status.success(), "{flag}: {}", text(&o));
        assert!(
            text(&o).contains(", 0 difference(s)"),
            "{flag}: {}",
            text(&o)
        );
        // Hard-linked files count once on both sides (verify once counted each name).
        let report: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        let bytes = format!(" {} bytes of content,", report["data_bytes"]);
        assert!(
            text(&o).contains(&bytes),
            "{flag}: {bytes:?} in {}",
            text(&o)
        );
    }
}

/// A base tree for the difference tests, built once per test.
fn diff_setup(root: &Path) -> (PathBuf, PathBuf) {
    let src = root.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    write_file(&src.join("file"), &data(50_000, 1));
    write_file(&src.join("other"), &data(20_000, 2));
    write_file(&src.join("d/linked"), b"linked");
    fs::hard_link(src.join("d/linked"), src.join("d/second")).unwrap();
    std::os::unix::fs::symlink("file", src.join("sym")).unwrap();
    set_xattr(&src.join("file"), "user.k", b"v");
    set_xattr(&src.join("file"), "trusted.t", b"t");
    let out = root.join("out");
    build_cli(&src, &out, &["--compressor", "none"]);
    (src, out)
}

#[test]
fn verifier_catches_each_kind_of_difference() {
    let _watchdog = watchdog("verifier_catches_each_kind_of_difference", 300);
    type Change = fn(&Path, &Path);
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "flipped blob byte",
            |_, out| {
                let blob = fs::read_dir(out.join("blobs"))
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .path();
                let mut b = fs::read(&blob).unwrap();
                // A byte of /file's data (chunks of an uncompressed blob sit on block
                // boundaries with zeros between them, so a fixed offset may miss).
                let head = &data(50_000, 1)[..64];
                let at = b.windows(64).position(|w| w == head).expect("/file's data");
                b[at + 100] ^= 1;
                fs::write(&blob, b).unwrap();
            },
            "/file: content",
        ),
        (
            "changed xattr",
            |src, _| set_xattr(&src.join("file"), "user.k", b"changed"),
            "/file: xattr user.k: source \"changed\" image \"v\"",
        ),
        (
            "missing xattr",
            |src, _| set_xattr(&src.join("other"), "user.new", b"x"),
            "/other: xattr user.new: source \"x\" image missing",
        ),
        (
            "changed mode",
            |src, _| chmod(&src.join("other"), 0o4711),
            "/other: permissions: source 4711 image 0644",
        ),
        (
            "changed uid",
            |src, _| lchown(&src.join("other"), 4242, 0),
            "/other: uid: source 4242 image 0",
        ),
        (
            "changed mtime",
            |src, _| set_mtime(&src.join("other"), 1234, 5678),
            "/other: mtime: source 1970-01-01T00:20:34.000005678Z",
        ),
        (
            "changed symlink",
            |src, _| {
                fs::remove_file(src.join("sym")).unwrap();
                std::os::unix::fs::symlink("elsewhere", src.join("sym")).unwrap();
            },
            "/sym: symlink target: source \"elsewhere\" image \"file\"",
        ),
        (
            "file missing from image",
            |src, _| write_file(&src.join("new"), b"n"),
            "/new: presence: source regular file image missing",
        ),
        (
            "extra file in image",
            |src, _| fs::remove_file(src.join("other")).unwrap(),
            "/other: presence: source missing image regular file",
        ),
        (
            "broken hard-link group",
            |src, _| {
                fs::remove_file(src.join("d/second")).unwrap();
                fs::copy(src.join("d/linked"), src.join("d/second")).unwrap();
            },
            "/d/linked: hard links: source [\"/d/linked\"] image [\"/d/linked\", \"/d/second\"]",
        ),
    ];
    for (name, change, expect) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = diff_setup(tmp.path());
        let clean = verify(&src, &out, "fuse");
        assert!(
            clean.status.success(),
            "{name}: clean tree must verify: {}",
            text(&clean)
        );
        change(&src, &out);
        let o = verify(&src, &out, "fuse");
        assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
        assert!(
            text(&o).contains(expect),
            "{name}: expected {expect:?} in:\n{}",
            text(&o)
        );
    }
}

#[test]
fn verify_json_and_exit_codes() {
    let _watchdog = watchdog("verify_json_and_exit_codes", 300);
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = diff_setup(tmp.path());
    set_xattr(&src.join("file"), "user.k", b"changed");
    let json = tmp.path().join("v.json");
    let boot = out.join("boot");
    let blobs = out.join("blobs");
    let o = ours(&[
        os("verify"),
        os("-J"),
        json.as_os_str(),
        os("-B"),
        boot.as_os_str(),
        os("-D"),
        blobs.as_os_str(),
        src.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["identical"], false);
    assert_eq!(v["differences"][0]["path"], "/file");
    assert_eq!(v["differences"][0]["attribute"], "xattr user.k");
    assert_eq!(v["entries_compared"], 7);
    let missing = tmp.path().join("nope");
    let o = ours(&[
        os("verify"),
        os("-B"),
        boot.as_os_str(),
        os("-D"),
        blobs.as_os_str(),
        missing.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "cannot compare: {}", text(&o));
}

#[test]
fn our_mount_and_nydusd_show_the_same_tree() {
    let _watchdog = watchdog("our_mount_and_nydusd_show_the_same_tree", 300);
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 5_000_000,
            ..TreeSpec::default()
        },
    );
    let out = scratch.path().join("out");
    build_cli(&src, &out, &[]);
    let ours_mount = OurMount::start(&out, &[]);
    let nydusd = Nydusd::mount(&out.join("boot"), &out.join("blobs"), &out.join("up"));
    // nydusd shows the mount time for an mtime of exactly 0 (see tests/upstream.rs).
    assert_identical_except(
        "our mount vs nydusd",
        &FsTree::new(&ours_mount.mnt),
        &FsTree::new(&nydusd.mnt),
        Except {
            differences: Some(&nydusd_mount_time),
            ..Except::default()
        },
    );
}

/// Builds an image of a flat tree of `files` under `root`; returns its output directory.
fn files_image(root: &Path, files: &[(&str, Vec<u8>)], extra: &[&str]) -> PathBuf {
    let src = root.join("src");
    fs::create_dir(&src).unwrap();
    for (name, bytes) in files {
        write_file(&src.join(name), bytes);
    }
    let out = root.join("out");
    build_cli(&src, &out, extra);
    out
}

#[test]
fn daemon_survives_corrupt_and_missing_blobs() {
    let _watchdog = watchdog("daemon_survives_corrupt_and_missing_blobs", 300);
    let tmp = tempfile::tempdir().unwrap();
    let out = files_image(
        tmp.path(),
        &[("a", data(300_000, 1)), ("b", data(300_000, 2))],
        &["--compressor", "none", "--chunk-size", "0x10000"],
    );
    let blob = fs::read_dir(out.join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&blob).unwrap();
    bytes[10] ^= 0xff; // inside the first chunk of "a"
    fs::write(&blob, &bytes).unwrap();
    let mut mount = OurMount::start(&out, &["--validate", "--daemon"]);
    // --daemon returns at once: its child serves. The foreground process has exited 0.
    assert!(mount.child.wait().unwrap().success());
    let err = fs::read(mount.mnt.join("a")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "corrupt chunk must be EIO, never wrong bytes"
    );
    assert_eq!(fs::read(mount.mnt.join("b")).unwrap(), data(300_000, 2));
    let log = fs::read_to_string(&mount.log).unwrap();
    assert!(
        log.contains("/a") && log.contains("digest") && log.contains("chunk"),
        "log names file and chunk: {log}"
    );
    assert_eq!(
        ours(&[os("umount"), mount.mnt.as_os_str()]).status.code(),
        Some(0)
    );
    // Missing blob: metadata still served, data reads fail with EIO.
    fs::remove_file(&blob).unwrap();
    let mount2 = OurMount::start(&out, &[]);
    assert_eq!(fs::read_dir(&mount2.mnt).unwrap().count(), 2);
    assert_eq!(
        fs::read(mount2.mnt.join("b")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    assert_eq!(fs::metadata(mount2.mnt.join("b")).unwrap().len(), 300_000);
}

/// `mount --daemon --log-file LOG --bootstrap BOOT --blob-dir BLOBS MNT`, less the program.
fn daemon_args<'a>(
    log: &'a Path,
    boot: &'a Path,
    blobs: &'a Path,
    mnt: &'a Path,
) -> Vec<&'a std::ffi::OsStr> {
    vec![
        os("mount"),
        os("--daemon"),
        os("--log-file"),
        log.as_os_str(),
        os("--bootstrap"),
        boot.as_os_str(),
        os("--blob-dir"),
        blobs.as_os_str(),
        mnt.as_os_str(),
    ]
}

/// A daemon that fails before it mounts: `mount --daemon` exits non-zero at once (the
/// daemon's pipe closes unwritten), with the daemon's error and its log's path, and
/// nothing is mounted.
#[test]
fn a_daemon_that_cannot_mount_says_why() {
    let _watchdog = watchdog("a_daemon_that_cannot_mount_says_why", 120);
    let tmp = tempfile::tempdir().unwrap();
    let out = files_image(tmp.path(), &[("a", data(1000, 4))], &[]);
    let boot = out.join("boot");
    let mut bytes = fs::read(&boot).unwrap();
    bytes.truncate(1000); // shorter than a superblock block
    fs::write(&boot, &bytes).unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("mount.log");
    let started = Instant::now();
    let out = ours(&daemon_args(&log, &boot, &out.join("blobs"), &mnt));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the mount daemon exited with exit status: 1")
            && err.contains(&*log.to_string_lossy())
            && err.contains("superblock"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it waited for a timeout"
    );
    assert!(!nydus_image::mount::is_mounted(&mnt));
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("error: ") && text.contains("superblock"),
        "{text}"
    );
}

#[test]
fn sigterm_ends_a_busy_mount() {
    let _watchdog = watchdog("sigterm_ends_a_busy_mount", 300);
    let tmp = tempfile::tempdir().unwrap();
    let out = files_image(tmp.path(), &[("a", data(100_000, 3))], &[]);
    let mut mount = OurMount::start(&out, &[]);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&*mount.mnt.to_string_lossy()))
        .expect("mount listed");
    assert!(line.contains(" - fuse.nydus-image rafs ro,"), "{line}");
    // A file held open keeps the file system busy: SIGTERM must still end the daemon
    // (after a bounded retry it detaches the mount), exit 0, and free the path.
    let held = fs::File::open(mount.mnt.join("a")).unwrap();
    let status = mount.terminate();
    assert!(status.success(), "{status}");
    assert!(!nydus_image::mount::is_mounted(&mount.mnt));
    let log = fs::read_to_string(&mount.log).unwrap();
    assert!(log.contains("busy"), "log says why it detached: {log}");
    let mut buf = [0u8; 16];
    use std::os::unix::fs::FileExt;
    assert!(
        held.read_at(&mut buf, 0).is_err(),
        "reads through the detached mount fail once its server is gone"
    );
}

/// An unprivileged user mounts through fusermount3 (which opens /dev/fuse, mounts, and
/// passes the descriptor back over a socket), reads through the mount, and unmounts it
/// with `nydus-image umount` (fusermount3 -u).
#[test]
fn an_unprivileged_user_mounts_through_fusermount3() {
    use std::os::unix::fs::PermissionsExt;
    let _watchdog = watchdog("an_unprivileged_user_mounts_through_fusermount3", 300);
    const NOBODY: u32 = 65534;
    let dev_mode = fs::metadata("/dev/fuse").unwrap().permissions().mode();
    assert_eq!(
        dev_mode & 0o006,
        0o006,
        "/dev/fuse is {dev_mode:o}: unprivileged mounts need it 0666 (scripts/setup sets it)"
    );
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let content = data(300_000, 9);
    let out = files_image(tmp.path(), &[("a", content.clone())], &[]);
    let home = tmp.path().join("user");
    let mnt = home.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    for p in [&home, &mnt] {
        lchown(p, NOBODY, NOBODY);
    }
    let as_nobody = |args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args)
            .stdin(Stdio::null());
        cmd
    };
    let bin = our_bin();
    let (boot, blobs, log) = (out.join("boot"), out.join("blobs"), home.join("mount.log"));
    let mut args = vec![bin.as_os_str()];
    args.extend(daemon_args(&log, &boot, &blobs, &mnt));
    let status = as_nobody(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "mount as nobody: {status}\n{}",
        log_text()
    );
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&*mnt.to_string_lossy()))
        .expect("mount listed");
    assert!(line.contains(" - fuse.nydus-image rafs ro,"), "{line}");
    let cat = as_nobody(&[os("cat"), mnt.join("a").as_os_str()])
        .output()
        .unwrap();
    let read_ok = cat.status.success() && cat.stdout == content;
    let umount = as_nobody(&[bin.as_os_str(), os("umount"), mnt.as_os_str()])
        .output()
        .unwrap();
    if !umount.status.success() {
        let _ = Command::new("umount").arg(&mnt).status();
    }
    assert!(
        read_ok,
        "read through the mount as nobody: {}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert!(
        umount.status.success(),
        "umount as nobody: {}",
        text(&umount)
    );
    assert!(!nydus_image::mount::is_mounted(&mnt));
}

/// Eight processes' worth of readers at once (threads reading every file in their own
/// order, at odd offsets and lengths, some across chunk boundaries) all get the source's
/// bytes: the mount's serving threads answer concurrent requests without mixing them up.
#[test]
fn many_readers_at_once_read_the_right_bytes() {
    use std::os::unix::fs::FileExt;
    let _watchdog = watchdog("many_readers_at_once_read_the_right_bytes", 300);
    let tmp = tempfile::tempdir().unwrap();
    let sizes = [
        0usize,
        1,
        4095,
        4096,
        70_000,
        1 << 20,
        (1 << 20) + 1,
        3_500_000,
    ];
    let files: Vec<(String, Vec<u8>)> = (0..32)
        .map(|i| {
            (
                format!("f{i:02}"),
                data(sizes[i % sizes.len()], i as u64 + 100),
            )
        })
        .collect();
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let out = files_image(tmp.path(), &named, &[]);
    let mount = OurMount::start(&out, &["--threads", "4"]);
    std::thread::scope(|s| {
        for reader in 0..8u64 {
            let (files, mnt) = (&files, &mount.mnt);
            s.spawn(move || {
                let mut state = reader * 7919 + 1;
                let mut next = || {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    state >> 33
                };
                for round in 0..files.len() {
                    let (name, want) = &files[(round * 5 + reader as usize * 3) % files.len()];
                    let f = fs::File::open(mnt.join(name)).unwrap();
                    for _ in 0..8 {
                        let offset = next() as usize % (want.len() + 1);
                        let len = (next() as usize % (1_500_000)).min(want.len() - offset);
                        let mut got = vec![0u8; len];
                        f.read_exact_at(&mut got, offset as u64).unwrap();
                        assert!(
                            got == want[offset..offset + len],
                            "reader {reader}: {name} at {offset}+{len} differs"
                        );
                    }
                }
            });
        }
    });
}
