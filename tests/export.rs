//! `export --block` with upstream HEAD's flags: `--verity` (a dm-verity hash tree after
//! the image, checked by `veritysetup` from cryptsetup-bin), `-C/--config` (a blob cache
//! entry), `-D/--localfs-dir` without `-O`, and `--threads`.
//!
//! `veritysetup verify` checks data against a hash tree in user space; `veritysetup open`
//! (a dm-verity device the kernel's EROFS would then mount) needs device-mapper, which
//! this machine lacks (no /dev/mapper/control), so the kernel mount here is of the image
//! file itself, tree and all.

mod common {
    pub mod attrs;
    pub mod commands;
    pub mod compare;
    pub mod files;
    pub mod ours;
    pub mod output;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
}

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::commands::{build, run, s};
use common::compare::assert_identical;
use common::output::text;
use common::{files::*, sample::*, scratch::Scratch};
use nydus_image::kernel::ErofsMount;
use nydus_verify::FsTree;

/// One test at a time uses loop devices and mounts.
static KERNEL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    KERNEL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small sample tree at `src` with `big` more bytes in one file.
fn sample(src: &Path, big: usize) {
    make_tree(
        src,
        &TreeSpec {
            sparse_size: 5 * 1024 * 1024 + 12345,
            big_dir_entries: 300,
            depth: 20,
            ..TreeSpec::default()
        },
    );
    write_file(&src.join("big"), &data(big, 77));
}

/// `nydus-image export --block ARGS`; fails the test unless it succeeds. Its stdout.
fn export_ok(args: &[&str]) -> String {
    let mut all = vec!["export", "--block"];
    all.extend_from_slice(args);
    let r = run(&all);
    assert!(r.status.success(), "export {args:?}: {}", text(&r));
    String::from_utf8(r.stdout).unwrap()
}

/// What `export --verity` printed in upstream's line: the options after
/// "dm-verity options: " as a shell would take them, the data blocks, the hash offset and
/// the root digest.
struct VerityLine {
    options: String,
    data_blocks: u64,
    hash_offset: u64,
    root: String,
}

fn verity_line(stdout: &str) -> VerityLine {
    let options = stdout
        .lines()
        .find_map(|l| l.strip_prefix("dm-verity options: "))
        .unwrap_or_else(|| panic!("no dm-verity line in {stdout:?}"))
        .to_string();
    let words: Vec<&str> = options.split_whitespace().collect();
    let after = |flag: &str| -> u64 {
        let i = words.iter().position(|w| *w == flag).unwrap();
        words[i + 1].parse().unwrap()
    };
    VerityLine {
        data_blocks: after("--data-blocks"),
        hash_offset: after("--hash-offset"),
        root: words.last().unwrap().to_string(),
        options,
    }
}

/// Runs `veritysetup ARGS` through the shell (so that upstream's printed options are
/// taken as a user pasting them would): success and output.
fn veritysetup(args: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("veritysetup {args}"))
        .output()
        .expect("run sh");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.code() != Some(127),
        "veritysetup is missing: apt-get install cryptsetup-bin ({all})"
    );
    (out.status.success(), all)
}

/// XORs the byte at `at` of `path` with 0x01 (twice restores it).
fn flip(path: &Path, at: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1;
    f.write_all_at(&b, at).unwrap();
}

/// Entries of `dir` whose names start with a dot (our temporary names).
fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Issue 21: `export --block --verity` appends the hash tree `veritysetup format` makes
/// of the same blocks with the printed options; `veritysetup verify` with the printed
/// line accepts the image and refuses it with one data or hash byte changed; the image
/// part is the export without --verity, whatever the thread count, and still mounts.
#[test]
fn verity_tree_is_veritysetups_and_the_image_still_mounts() {
    let _l = lock();
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    // Past 128 * 128 blocks of 4 KiB: a tree of three levels.
    sample(&src, 66 * 1024 * 1024 + 4097);
    let out = scratch.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let boot = out.join("boot");
    let r = build(&src, &boot, &out, &[]);
    assert!(r.status.success(), "{}", text(&r));

    let plain = out.join("plain.img");
    export_ok(&[
        "-B",
        s(&boot),
        "-D",
        s(&out),
        "-O",
        s(&plain),
        "--threads",
        "1",
    ]);
    let img = out.join("verity.img");
    let stdout = export_ok(&[
        "-B",
        s(&boot),
        "-D",
        s(&out),
        "-O",
        s(&img),
        "--threads",
        "3",
        "--verity",
    ]);
    let line = verity_line(&stdout);
    assert!(line.data_blocks > 128 * 128, "{stdout}");
    let plain_bytes = fs::read(&plain).unwrap();
    let img_bytes = fs::read(&img).unwrap();
    assert_eq!(line.hash_offset, plain_bytes.len() as u64, "{stdout}");
    assert_eq!(line.data_blocks * 4096, line.hash_offset, "{stdout}");
    assert!(
        img_bytes[..plain_bytes.len()] == plain_bytes[..],
        "the image part of the --verity export differs from the plain export"
    );
    drop(plain_bytes);

    let verify = format!("verify {0} {0} {1}", s(&img), line.options);
    let (ok, why) = veritysetup(&verify);
    assert!(ok, "veritysetup {verify}: {why}");

    // veritysetup's own tree over the same blocks, same parameters.
    let tree = out.join("tree");
    let (ok, report) = veritysetup(&format!(
        "format {} {} --no-superblock --format=1 -s \"\" --hash=sha256 \
         --data-block-size=4096 --hash-block-size=4096 --data-blocks {}",
        s(&img),
        s(&tree),
        line.data_blocks
    ));
    assert!(ok, "veritysetup format: {report}");
    let root = report
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no root hash in {report}"));
    assert_eq!(root, line.root, "root digests differ");
    let theirs = fs::read(&tree).unwrap();
    assert!(
        img_bytes[line.hash_offset as usize..] == theirs[..],
        "our hash tree ({} bytes) differs from veritysetup's ({} bytes)",
        img_bytes.len() as u64 - line.hash_offset,
        theirs.len()
    );
    drop(img_bytes);

    // One byte changed in file data, then in the tree: refused; restored: accepted.
    for (what, at) in [
        ("data", line.hash_offset / 2),
        ("hash tree", line.hash_offset + 100),
    ] {
        flip(&img, at);
        let (ok, why) = veritysetup(&verify);
        assert!(!ok, "a changed {what} byte at {at} passed: {why}");
        assert!(why.contains("failed"), "{what}: {why}");
        flip(&img, at);
    }
    let (ok, why) = veritysetup(&verify);
    assert!(ok, "restored: {why}");

    let mnt = out.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mount = ErofsMount::mount(&img, &[], &mnt).unwrap();
    assert_identical(
        "block image with a dm-verity tree, kernel",
        &FsTree::new(&src),
        &FsTree::new(mount.path()),
    );
    mount.unmount().unwrap();
    assert_eq!(temporaries(&out), Vec::<String>::new());
}

/// Writes a blob cache entry naming `boot` and the localfs directory `blobs` at `path`:
/// upstream's version 2 shape, or the legacy `config` one.
fn write_entry(path: &Path, boot: &Path, blobs: &Path, legacy: bool, backend: &str) {
    let dir = serde_json::json!({ "dir": s(blobs) });
    let config = if legacy {
        serde_json::json!({"type": "bootstrap", "id": "img", "domain_id": "d",
            "config": {"id": "f", "backend_type": backend, "backend_config": dir,
                "cache_type": "fscache", "cache_config": {"work_dir": "/nonexistent"},
                "metadata_path": s(boot)}})
    } else {
        serde_json::json!({"type": "bootstrap", "id": "img", "domain_id": "block-nbd",
            "config_v2": {"version": 2, "id": "f",
                "backend": {"type": backend, backend: dir},
                "cache": {"type": "filecache", "filecache": {"work_dir": "/nonexistent"}},
                "metadata_path": s(boot)}})
    };
    fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// Upstream HEAD's ways of naming the image: `-C` with a blob cache entry (both shapes)
/// and `-D/--localfs-dir` without `-O` (the image goes to DIR/BOOTSTRAP.disk) export the
/// same bytes as `-B -D -O`, with any thread count; bad entries and flags fail with a
/// clear error and leave nothing at the output path.
#[test]
fn config_entries_localfs_dir_and_threads() {
    let _l = lock();
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    sample(&src, 3 * 1024 * 1024 + 5);
    let out = scratch.path().join("out");
    let blobs = out.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let boot = out.join("image.boot");
    // Small chunks: many for the workers to share.
    let r = build(
        &src,
        &boot,
        &blobs,
        &["--compressor", "lz4_block", "--chunk-size", "0x4000"],
    );
    assert!(r.status.success(), "{}", text(&r));
    let reference = out.join("ref.img");
    export_ok(&[
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "-O",
        s(&reference),
        "--threads",
        "1",
    ]);
    let want = fs::read(&reference).unwrap();

    let v2 = out.join("entry.json");
    write_entry(&v2, &boot, &blobs, false, "localfs");
    let legacy = out.join("legacy.json");
    write_entry(&legacy, &boot, &blobs, true, "localfs");
    let cases: [(&str, Vec<&str>, PathBuf); 4] = [
        (
            "-C version 2",
            vec!["-C", s(&v2), "-O", "OUT", "--threads", "4"],
            out.join("v2.img"),
        ),
        (
            "--config legacy",
            vec!["--config", s(&legacy), "--output", "OUT"],
            out.join("legacy.img"),
        ),
        (
            "--localfs-dir, no -O",
            vec!["-B", s(&boot), "--localfs-dir", s(&blobs), "--threads", "2"],
            blobs.join("image.boot.disk"),
        ),
        (
            "-D, no -O, 32 threads",
            vec!["-B", s(&boot), "-D", s(&blobs), "--threads", "1000"],
            blobs.join("image.boot.disk"),
        ),
    ];
    for (name, args, img) in cases {
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "OUT" { s(&img) } else { a })
            .collect();
        let stdout = export_ok(&args);
        assert!(stdout.contains(s(&img)), "{name}: {stdout}");
        assert!(fs::read(&img).unwrap() == want, "{name}: other bytes");
        if name.starts_with("-C") {
            let mnt = out.join("mnt");
            fs::create_dir_all(&mnt).unwrap();
            let mount = ErofsMount::mount(&img, &[], &mnt).unwrap();
            assert_identical(name, &FsTree::new(&src), &FsTree::new(mount.path()));
            mount.unmount().unwrap();
        }
        fs::remove_file(&img).unwrap();
    }

    let unknown = out.join("ftp.json");
    write_entry(&unknown, &boot, &blobs, false, "ftp");
    let datablob = out.join("datablob.json");
    fs::write(
        &datablob,
        fs::read_to_string(&v2)
            .unwrap()
            .replace("\"bootstrap\"", "\"datablob\""),
    )
    .unwrap();
    let no_boot = out.join("noboot.json");
    write_entry(
        &no_boot,
        &out.join("missing.boot"),
        &blobs,
        false,
        "localfs",
    );
    let not_json = out.join("bad.json");
    fs::write(&not_json, "{\"type\": \"bootstrap\",").unwrap();
    let missing = out.join("missing.json");
    let bad = out.join("bad.img");
    for (args, want) in [
        (vec!["-C", s(&missing)], "missing.json: cannot read it"),
        (vec!["-C", s(&not_json)], "bad.json: not JSON"),
        (vec!["-C", s(&unknown)], "unknown backend type \"ftp\""),
        (
            vec!["-C", s(&datablob)],
            "export needs a \"bootstrap\" entry",
        ),
        (vec!["-C", s(&no_boot)], "missing.boot"),
        (vec!["-C", s(&v2), "-B", s(&boot)], "cannot be used with"),
        (vec!["-C", s(&v2), "-D", s(&blobs)], "cannot be used with"),
        (
            vec!["-C", s(&v2), "--backend-config-file", s(&v2)],
            "cannot be used with",
        ),
        (vec!["-C", s(&v2), "--threads", "0"], "0 is not in 1..=1024"),
        (vec!["-C", s(&v2), "--threads", "1025"], "not in 1..=1024"),
    ] {
        let mut all = vec!["export", "--block", "-O", s(&bad)];
        all.extend_from_slice(&args);
        let r = run(&all);
        let said = text(&r);
        assert!(!r.status.success(), "{args:?} succeeded: {said}");
        assert!(said.contains(want), "{args:?}: expected {want:?} in {said}");
        assert!(!bad.exists(), "{args:?} left {}", bad.display());
    }
    // Neither -O nor a blob directory: nowhere to write.
    let r = run(&["export", "--block", "-C", s(&v2)]);
    assert!(!r.status.success());
    assert!(text(&r).contains("give --output"), "{}", text(&r));
    assert_eq!(temporaries(&out), Vec::<String>::new());
    assert_eq!(temporaries(&blobs), Vec::<String>::new());
}
