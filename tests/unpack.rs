//! `unpack`: an image's tree as a tar. Each test builds an image, unpacks it, extracts the
//! tar with GNU tar (as root: owners, modes, times, xattrs) and compares the extracted
//! tree with what the image was made from.
//!
//! Tar has no member type for sockets: ours leaves them out with a warning, as upstream
//! 2.2.0 does (silently), so every comparison with a source holding the sample's socket
//! accepts its absence and nothing else.
//!
//! Upstream 2.2.0's `unpack`, compared the same way, differs from the image in ways
//! `upstream_unpack_reads_our_images` pins down one by one: it writes no member for the
//! root (the extracted root keeps the extraction directory's mode and time), drops
//! nanoseconds from mtimes, and reads only the image's last blob (so a merged image's
//! lower layers come out wrong; not compared here); with `--blob-dir` alone it finds no
//! blob at all ("both blob path or blob backend config are not specified").

mod common {
    pub mod attrs;
    pub mod compare;
    pub mod fifo;
    pub mod files;
    pub mod ours;
    pub mod output;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
    // Only upstream_bin: no nydusd here.
    #[allow(dead_code)]
    pub mod upstream;
    pub mod upstream_tree;
}

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::compare::{assert_identical, assert_identical_except, Except};
use common::fifo::run_bin_with_fifos;
use common::upstream_tree::upstream_tar_safe_tree;
use common::{
    files::*, ours::our_bin, output::text, privileged::mknod, sample::*, scratch::Scratch,
    upstream::upstream_bin,
};
use nydus_verify::{Difference, FsTree, OverlayTree, Tree, Whiteouts};

/// Runs `bin` with `args`.
fn run(bin: &Path, args: &[&OsStr]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Runs our binary and asserts success.
fn ours_ok(what: &str, args: &[&OsStr]) -> Output {
    let o = run(&our_bin(), args);
    assert!(o.status.success(), "{what}: {}", text(&o));
    o
}

/// Builds `src` with ours into `boot`, blobs in `blobs`.
fn build(src: &Path, boot: &Path, blobs: &Path) {
    fs::create_dir_all(blobs).unwrap();
    ours_ok(
        "create",
        &[
            os("create"),
            os("--bootstrap"),
            boot.as_os_str(),
            os("--blob-dir"),
            blobs.as_os_str(),
            src.as_os_str(),
        ],
    );
}

/// `tar` as GNU tar extracts it, as root, into `dir` (created).
fn extract(tar: &Path, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let o = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "GNU tar -x {}: {}",
        tar.display(),
        text(&o)
    );
}

/// `src` as a POSIX tar by GNU tar (xattrs, nanoseconds).
fn gnu_tar(src: &Path, tar: &Path) {
    let o = Command::new("tar")
        .args([
            "--numeric-owner",
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "-cf",
        ])
        .arg(tar)
        .arg("-C")
        .arg(src)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "GNU tar -c: {}", text(&o));
}

/// The sample's socket, which no tar can carry.
fn socket_left_out(d: &Difference) -> bool {
    d.path == "/sock" && d.attribute == "presence" && d.image == "missing"
}

/// Moves `blob` into `dir` under its sha256, as a blob directory names blobs.
fn store_by_digest(blob: &Path, dir: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(fs::read(blob).unwrap()));
    let to = dir.join(digest);
    fs::rename(blob, &to).unwrap();
    to
}

/// The one blob file in `blobs`.
fn only_blob(blobs: &Path) -> PathBuf {
    let mut all: Vec<PathBuf> = fs::read_dir(blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all.pop().unwrap()
}

/// Every entry kind, xattrs (binary and 64 KiB values, ACLs), hard links (to a file and
/// to a symlink), nanosecond and negative mtimes, 255-byte and non-UTF-8 names, a
/// 4095-byte symlink target, a 40-deep chain (paths past 100 bytes), owners past 2^21 and
/// 2^32 - 2^28, a sparse file: built by ours, unpacked by ours, extracted by GNU tar,
/// equal to the source (the socket aside). The tar reads the same twice (deterministic).
#[test]
fn our_unpack_extracts_to_the_source_tree() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 40_000_000 + 12345,
            big_dir_entries: 1200,
            depth: 40,
            ..TreeSpec::default()
        },
    );
    let (boot, blobs) = (scratch.path().join("boot"), scratch.path().join("blobs"));
    build(&src, &boot, &blobs);
    let tar = scratch.path().join("out.tar");
    let o = ours_ok(
        "unpack",
        &[
            os("unpack"),
            os("--bootstrap"),
            boot.as_os_str(),
            os("--blob-dir"),
            blobs.as_os_str(),
            os("--output"),
            tar.as_os_str(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/sock: a socket"),
        "the left-out socket is named: {}",
        text(&o)
    );
    let extracted = scratch.path().join("x");
    extract(&tar, &extracted);
    assert_identical_except(
        "ours -> unpack -> GNU tar",
        &FsTree::new(&src),
        &FsTree::new(&extracted),
        Except {
            differences: Some(&socket_left_out),
            ..Except::default()
        },
    );
    // Positional bootstrap and --blob, as upstream also takes them: the same bytes.
    let again = scratch.path().join("again.tar");
    ours_ok(
        "unpack again",
        &[
            os("unpack"),
            boot.as_os_str(),
            os("-b"),
            only_blob(&blobs).as_os_str(),
            os("--output"),
            again.as_os_str(),
        ],
    );
    assert!(
        fs::read(&tar).unwrap() == fs::read(&again).unwrap(),
        "two unpacks of one image differ"
    );
    // Nothing but the tar in its directory: the temporary file was renamed.
    let mut names: Vec<String> = fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["again.tar", "blobs", "boot", "out.tar", "src", "x"]);
}

/// A GNU tar (POSIX format) -> `create --type tar-rafs` -> `unpack` -> GNU tar extracts
/// the same tree as from the original tar.
#[test]
fn tar_image_tar_is_the_identity() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 3_000_000,
            big_dir_entries: 300,
            depth: 40,
            ..TreeSpec::default()
        },
    );
    // GNU tar would refuse the socket on the way in.
    fs::remove_file(src.join("sock")).unwrap();
    let tar = scratch.path().join("in.tar");
    gnu_tar(&src, &tar);
    let want = scratch.path().join("want");
    extract(&tar, &want);
    let blob = scratch.path().join("layer.blob");
    ours_ok(
        "create --type tar-rafs",
        &[
            os("create"),
            os("--type"),
            os("tar-rafs"),
            os("--blob-inline-meta"),
            os("--features"),
            os("blob-toc"),
            os("--blob"),
            blob.as_os_str(),
            tar.as_os_str(),
        ],
    );
    let out = scratch.path().join("out.tar");
    // A blob with inline metadata is its own bootstrap and blob.
    ours_ok(
        "unpack",
        &[
            os("unpack"),
            os("--bootstrap"),
            blob.as_os_str(),
            os("--output"),
            out.as_os_str(),
        ],
    );
    let got = scratch.path().join("got");
    extract(&out, &got);
    assert_identical(
        "tar -> image -> tar",
        &FsTree::new(&want),
        &FsTree::new(&got),
    );
}

/// Upstream 2.2.0's `unpack` of our image (plain bootstrap with `--blob`, and our blob
/// with inline metadata): the source tree but for upstream's own ways, each accepted
/// exactly: no root member, whole-second mtimes, no socket.
#[test]
fn upstream_unpack_reads_our_images() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    // Upstream's tar path (for the inline blob) cannot take the full sample.
    upstream_tar_safe_tree(&src);
    common::attrs::set_mtime(&src.join("one"), 1_700_000_000, 123_456_789);
    let (boot, blobs) = (scratch.path().join("boot"), scratch.path().join("blobs"));
    build(&src, &boot, &blobs);
    let blob = only_blob(&blobs);
    let inline_dir = scratch.path().join("inline");
    fs::create_dir_all(&inline_dir).unwrap();
    let made = inline_dir.join("made.blob");
    ours_ok(
        "create --blob-inline-meta",
        &[
            os("create"),
            os("--blob-inline-meta"),
            os("--features"),
            os("blob-toc"),
            os("--blob"),
            made.as_os_str(),
            src.as_os_str(),
        ],
    );
    // Upstream finds the bootstrap inside a blob only through a backend (`--blob-dir`,
    // the blob named as the file is) and the data only through `--blob`.
    let inline = store_by_digest(&made, &inline_dir);
    let upstream = upstream_bin("nydus-image");
    let cases: [(&str, Vec<&OsStr>); 2] = [
        (
            "bootstrap and --blob",
            vec![
                os("--bootstrap"),
                boot.as_os_str(),
                os("--blob"),
                blob.as_os_str(),
            ],
        ),
        (
            "inline blob as bootstrap, --blob-dir and --blob",
            vec![
                os("--bootstrap"),
                inline.as_os_str(),
                os("--blob-dir"),
                inline_dir.as_os_str(),
                os("--blob"),
                inline.as_os_str(),
            ],
        ),
    ];
    // Upstream's tar has no root member: the extracted root is the directory tar made.
    let root_made =
        |d: &Difference| d.path == "/" && matches!(d.attribute.as_str(), "mtime" | "mode");
    for (what, args) in cases {
        let tar = scratch.path().join(format!("{what}.tar"));
        let mut full = vec![os("unpack")];
        full.extend(args);
        full.extend([os("--output"), tar.as_os_str()]);
        let o = run(&upstream, &full);
        assert!(o.status.success(), "upstream unpack, {what}: {}", text(&o));
        let x = scratch.path().join(format!("{what}.x"));
        extract(&tar, &x);
        // It drops nanoseconds: the one mtime that has them comes out whole.
        let whole_seconds = |d: &Difference| {
            d.attribute == "mtime" && d.path == "/one" && d.image == "1700000000.000000000"
        };
        let seen: std::cell::RefCell<std::collections::BTreeSet<&str>> = Default::default();
        let report = assert_identical_except(
            &format!("ours -> upstream unpack, {what}"),
            &FsTree::new(&src),
            &FsTree::new(&x),
            Except {
                differences: Some(&|d| {
                    let quirk = [
                        ("no socket", socket_left_out(d)),
                        ("no root member", root_made(d)),
                        ("whole seconds", whole_seconds(d)),
                    ]
                    .into_iter()
                    .find(|q| q.1);
                    if let Some((name, _)) = quirk {
                        seen.borrow_mut().insert(name);
                    }
                    quirk.is_some()
                }),
                ..Except::default()
            },
        );
        assert!(report.entries_compared > 300, "{what}");
        // Each accepted quirk is upstream's, not a comparison that accepts anything.
        let seen: Vec<&str> = seen.into_inner().into_iter().collect();
        assert_eq!(
            seen,
            ["no root member", "no socket", "whole seconds"],
            "{what}"
        );
    }
}

/// Our `unpack` of upstream 2.2.0's images: a directory build (bootstrap and blob) and a
/// tar layer built with the converter's flags into a blob with inline metadata. Each
/// extracts to the tree upstream's image holds (upstream's builder's own ways accepted:
/// its root mtime of 0 for a directory build, hard-linked symlinks as separate inodes).
#[test]
fn our_unpack_reads_upstream_images() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    upstream_tar_safe_tree(&src);
    let upstream = upstream_bin("nydus-image");
    // A directory build.
    let (boot, blobs) = (scratch.path().join("up.boot"), scratch.path().join("blobs"));
    fs::create_dir_all(&blobs).unwrap();
    let o = run(
        &upstream,
        &[
            os("create"),
            os("--bootstrap"),
            boot.as_os_str(),
            os("--blob-dir"),
            blobs.as_os_str(),
            os("--log-level"),
            os("warn"),
            src.as_os_str(),
        ],
    );
    assert!(o.status.success(), "upstream create: {}", text(&o));
    let tar = scratch.path().join("dir-build.tar");
    ours_ok(
        "unpack upstream's directory build",
        &[
            os("unpack"),
            boot.as_os_str(),
            os("-D"),
            blobs.as_os_str(),
            os("--output"),
            tar.as_os_str(),
        ],
    );
    let x = scratch.path().join("dir-build.x");
    extract(&tar, &x);
    let root_mtime_zero =
        |d: &Difference| d.path == "/" && d.attribute == "mtime" && d.image == "0.000000000";
    assert_identical_except(
        "upstream directory build -> our unpack",
        &FsTree::new(&src),
        &FsTree::new(&x),
        Except {
            differences: Some(&|d| socket_left_out(d) || root_mtime_zero(d)),
            ..Except::default()
        },
    );
    // A tar layer into a blob with inline metadata, as containerd's converter builds it.
    fs::remove_file(src.join("sock")).unwrap();
    // Whole seconds again (removing the socket touched the root): upstream's tar reader
    // keeps no more.
    common::attrs::set_mtime(&src, 1_600_000_000, 0);
    let layer = scratch.path().join("layer.tar");
    gnu_tar(&src, &layer);
    let want = scratch.path().join("want");
    extract(&layer, &want);
    let blob = scratch.path().join("upstream.blob");
    let o = run(
        &upstream,
        &[
            os("create"),
            os("--type"),
            os("tar-rafs"),
            os("--blob-inline-meta"),
            os("--features"),
            os("blob-toc"),
            os("--blob"),
            blob.as_os_str(),
            os("--log-level"),
            os("warn"),
            layer.as_os_str(),
        ],
    );
    assert!(
        o.status.success(),
        "upstream create --type tar-rafs: {}",
        text(&o)
    );
    for (what, extra) in [("alone", None), ("with --blob", Some(&blob))] {
        let out = scratch.path().join(format!("inline-{what}.tar"));
        let mut args = vec![os("unpack"), os("--bootstrap"), blob.as_os_str()];
        if let Some(b) = extra {
            args.extend([os("--blob"), b.as_os_str()]);
        }
        args.extend([os("--output"), out.as_os_str()]);
        ours_ok(&format!("unpack upstream's inline blob {what}"), &args);
        let got = scratch.path().join(format!("inline-{what}.x"));
        extract(&out, &got);
        assert_identical(
            &format!("upstream inline blob -> our unpack, {what}"),
            &FsTree::new(&want),
            &FsTree::new(&got),
        );
    }
}

/// The output is a FIFO read by another thread: written in order, the same tree comes out.
/// A device output is written in place.
#[test]
fn unpack_writes_to_a_fifo() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 5_000_000,
            big_dir_entries: 100,
            depth: 10,
            ..TreeSpec::default()
        },
    );
    let (boot, blobs) = (scratch.path().join("boot"), scratch.path().join("blobs"));
    build(&src, &boot, &blobs);
    let fifo = scratch.path().join("out.fifo");
    mknod(&fifo, libc::S_IFIFO | 0o600, 0, 0);
    let (status, bytes) = unpack_into_fifo(&boot, &blobs, &fifo);
    assert!(
        status.status.success(),
        "unpack to a FIFO: {}",
        text(&status)
    );
    let tar = scratch.path().join("read.tar");
    fs::write(&tar, bytes).unwrap();
    let x = scratch.path().join("x");
    extract(&tar, &x);
    assert_identical_except(
        "unpack through a FIFO",
        &FsTree::new(&src),
        &FsTree::new(&x),
        Except {
            differences: Some(&socket_left_out),
            ..Except::default()
        },
    );
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // A device is written in place too, never replaced by a file renamed over it (a copy
    // of /dev/null here: the real one is the machine's).
    let null = scratch.path().join("null");
    mknod(&null, libc::S_IFCHR | 0o666, 1, 3);
    ours_ok(
        "unpack to a device",
        &[
            os("unpack"),
            os("--bootstrap"),
            boot.as_os_str(),
            os("--blob-dir"),
            blobs.as_os_str(),
            os("--output"),
            null.as_os_str(),
        ],
    );
    let kind = fs::metadata(&null).unwrap().file_type();
    assert!(kind.is_char_device(), "the device was replaced: {kind:?}");
}

/// Runs our `unpack` into `fifo` while a thread reads it whole.
fn unpack_into_fifo(boot: &Path, blobs: &Path, fifo: &Path) -> (Output, Vec<u8>) {
    let from = fifo.to_path_buf();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        File::open(&from).unwrap().read_to_end(&mut out).unwrap();
        out
    });
    let o = run(
        &our_bin(),
        &[
            os("unpack"),
            os("--bootstrap"),
            boot.as_os_str(),
            os("--blob-dir"),
            blobs.as_os_str(),
            os("--output"),
            fifo.as_os_str(),
        ],
    );
    (o, reader.join().unwrap())
}

/// Three layers built apart (`--whiteout-spec none` keeps their OCI whiteouts), merged;
/// the merged image unpacks from the blob directory holding every layer's blob to the
/// layers' overlay: lower files, replaced ones, whiteouts and opaque directories applied.
#[test]
fn a_merged_image_unpacks_from_its_blob_dir() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let layers: Vec<PathBuf> = (0..3).map(|i| root.join(format!("l{i}"))).collect();
    for l in &layers {
        fs::create_dir_all(l.join("dir")).unwrap();
    }
    write_file(&layers[0].join("base"), &data(3_000_000, 1));
    write_file(&layers[0].join("dir/gone"), &data(5000, 2));
    write_file(&layers[0].join("dir/kept"), &data(7000, 3));
    write_file(&layers[0].join("replaced"), &data(100_000, 4));
    fs::create_dir_all(layers[0].join("opaque/sub")).unwrap();
    write_file(&layers[0].join("opaque/sub/old"), b"old");
    write_file(&layers[1].join("replaced"), &data(2_500_000, 5));
    write_file(&layers[1].join("dir/.wh.gone"), b"");
    fs::create_dir_all(layers[1].join("opaque")).unwrap();
    write_file(&layers[1].join("opaque/.wh..wh..opq"), b"");
    write_file(&layers[1].join("opaque/new"), &data(4000, 6));
    write_file(&layers[2].join("top"), &data(1_500_000, 7));
    write_file(&layers[2].join("dir/kept"), &data(9000, 8));
    let blobs = root.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let mut boots = Vec::new();
    let listing = || -> Vec<PathBuf> {
        fs::read_dir(&blobs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let mut top_blob = None;
    for (i, l) in layers.iter().enumerate() {
        let before = listing();
        let boot = root.join(format!("layer{i}.boot"));
        ours_ok(
            "layer build",
            &[
                os("create"),
                os("--whiteout-spec"),
                os("none"),
                os("--bootstrap"),
                boot.as_os_str(),
                os("--blob-dir"),
                blobs.as_os_str(),
                l.as_os_str(),
            ],
        );
        top_blob = listing().into_iter().find(|b| !before.contains(b));
        // merge names a layer's blob by its bootstrap's file name, as upstream does.
        let id = top_blob.as_ref().expect("a new blob").file_name().unwrap();
        let named = root.join(id).with_extension("boot");
        fs::rename(&boot, &named).unwrap();
        boots.push(named);
    }
    assert_eq!(listing().len(), 3, "a blob per layer");
    let top_blob = top_blob.expect("the top layer's blob");
    let merged = root.join("merged.boot");
    let mut args = vec![os("merge"), os("--bootstrap"), merged.as_os_str()];
    args.extend(boots.iter().map(|b| b.as_os_str()));
    ours_ok("merge", &args);
    let tar = root.join("merged.tar");
    ours_ok(
        "unpack the merged image",
        &[
            os("unpack"),
            os("--bootstrap"),
            merged.as_os_str(),
            os("--blob-dir"),
            blobs.as_os_str(),
            os("--output"),
            tar.as_os_str(),
        ],
    );
    let x = root.join("x");
    extract(&tar, &x);
    let dirs: Vec<FsTree> = layers.iter().map(FsTree::new).collect();
    let refs: Vec<&dyn Tree> = dirs.iter().map(|d| d as &dyn Tree).collect();
    let stack = OverlayTree::new(refs, Whiteouts::Oci);
    assert_identical("merged image -> unpack", &stack, &FsTree::new(&x));
    // The same blobs through a localfs backend, in our form and upstream's: the same tar.
    let ours_cfg = root.join("localfs.json");
    fs::write(&ours_cfg, serde_json::json!({ "dir": blobs }).to_string()).unwrap();
    let upstream_cfg = root.join("upstream.json");
    let v2 = serde_json::json!({
        "version": 2,
        "backend": {"type": "localfs", "localfs": {"dir": blobs}}
    });
    fs::write(&upstream_cfg, v2.to_string()).unwrap();
    let backends: [(&str, Vec<&OsStr>); 2] = [
        (
            "--backend-type",
            vec![
                os("--backend-type"),
                os("localfs"),
                os("--backend-config-file"),
                ours_cfg.as_os_str(),
            ],
        ),
        (
            "upstream's --backend-config",
            vec![os("--backend-config"), upstream_cfg.as_os_str()],
        ),
    ];
    for (what, flags) in backends {
        let via = root.join("via-backend.tar");
        let mut args = vec![
            os("unpack"),
            merged.as_os_str(),
            os("--output"),
            via.as_os_str(),
        ];
        args.extend(flags);
        ours_ok(what, &args);
        assert!(
            fs::read(&via).unwrap() == fs::read(&tar).unwrap(),
            "{what}: another tar than from --blob-dir"
        );
    }
    // Upstream 2.2.0 reads every chunk from the one blob it is given (`--blob`; with a
    // backend it asks for a blob named "unpacker"): given the top layer's, it reads the
    // lower layers' chunks at their offsets in that blob, which here fails to decompress
    // (random data stored raw would instead come out as other bytes, with exit 0).
    let o = run(
        &upstream_bin("nydus-image"),
        &[
            os("unpack"),
            os("--bootstrap"),
            merged.as_os_str(),
            os("--blob"),
            top_blob.as_os_str(),
            os("--output"),
            root.join("upstream.tar").as_os_str(),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("fail to decompress"),
        "upstream unpacked a merged image from one blob: {}",
        text(&o)
    );
}

/// A flipped byte in a chunk of the blob: `unpack` fails naming the file in the image,
/// the blob and the chunk's offset, and leaves nothing at the output path (nor a
/// temporary file); into a FIFO, the reader sees the stream end before the archive's
/// end and the exit status is non-zero.
#[test]
fn a_corrupt_chunk_fails_and_leaves_no_output() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_file(&src.join("a-first"), &data(300_000, 1));
    write_file(&src.join("victim"), &data(2_000_000, 2));
    write_file(&src.join("z-last"), &data(10_000, 3));
    let (boot, blobs) = (scratch.path().join("boot"), scratch.path().join("blobs"));
    build(&src, &boot, &blobs);
    let blob = only_blob(&blobs);
    let blob_id = blob.file_name().unwrap().to_str().unwrap().to_string();
    let pristine = fs::read(&blob).unwrap();
    let image = nydus_image::reader::Image::open(
        &boot,
        nydus_image::storage::blobs::BlobSource::Dir(blobs.clone()),
    )
    .unwrap();
    // A large chunk (loaded by a worker thread) and a small one (loaded by the thread
    // walking the tree).
    for (victim, index) in [("/victim", 1), ("/z-last", 0)] {
        let nid = image.resolve(victim.as_bytes()).unwrap().unwrap();
        let addr = image.chunk_addrs(nid).unwrap()[index].unwrap();
        let info = image
            .chunk_info(addr.blob(), addr.chunk())
            .expect("chunk in the table");
        let mut bytes = pristine.clone();
        let at = info.compressed_offset as usize + info.compressed_size as usize / 2;
        bytes[at] ^= 0x55;
        fs::write(&blob, &bytes).unwrap();
        let out_dir = scratch.path().join("out");
        fs::create_dir_all(&out_dir).unwrap();
        let tar = out_dir.join("image.tar");
        let o = run(
            &our_bin(),
            &[
                os("unpack"),
                os("--bootstrap"),
                boot.as_os_str(),
                os("--blob-dir"),
                blobs.as_os_str(),
                os("--output"),
                tar.as_os_str(),
            ],
        );
        assert!(
            !o.status.success(),
            "{victim}: a corrupt chunk unpacked: {}",
            text(&o)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        let offset = format!("0x{:x}", info.compressed_offset);
        for needle in [victim, blob_id.as_str(), offset.as_str()] {
            assert!(err.contains(needle), "the error lacks {needle:?}: {err}");
        }
        assert_eq!(
            fs::read_dir(&out_dir).unwrap().count(),
            0,
            "{victim}: something was left in the output directory"
        );
        // Through a FIFO: the stream ends early.
        let fifo = scratch.path().join("out.fifo");
        let _ = fs::remove_file(&fifo);
        mknod(&fifo, libc::S_IFIFO | 0o600, 0, 0);
        let (o, streamed) = unpack_into_fifo(&boot, &blobs, &fifo);
        assert!(
            !o.status.success(),
            "{victim}: a corrupt chunk unpacked into a FIFO"
        );
        let partial = scratch.path().join("partial.tar");
        fs::write(&partial, &streamed).unwrap();
        let t = Command::new("tar")
            .arg("-tf")
            .arg(&partial)
            .output()
            .unwrap();
        assert!(
            !t.status.success(),
            "{victim}: GNU tar took the cut stream as a whole archive: {}",
            text(&t)
        );
    }
}

/// containerd's converter, replayed exactly for its directory path and for `unpack`
/// (`pkg/converter/tool/builder.go`): `create --log-level warn --prefetch-policy fs
/// --blob BLOB_FIFO --whiteout-spec none --fs-version 6 --source-type directory
/// --inline-bootstrap DIR` with `/` on standard input and the blob read from a FIFO; then
/// `unpack --log-level warn --bootstrap BLOB --output TAR_FIFO --blob BLOB`, the tar read
/// from a FIFO. GNU tar extracts the source tree from it. Our `unpack` runs on the blobs
/// of both builders. The tree has every entry kind but ACLs, which upstream's directory
/// builder refuses ("invalid xattr key"), and a hard link to a symlink, which it stores
/// as two inodes.
#[test]
fn the_converters_directory_build_and_unpack() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            acls: false,
            sparse_size: 5_000_000,
            big_dir_entries: 300,
            depth: 20,
            ..TreeSpec::default()
        },
    );
    fs::remove_file(src.join("hardlink-to-symlink")).unwrap();
    let missing = scratch.path().join("no-tar");
    for (name, bin) in [
        ("ours", our_bin()),
        ("upstream", upstream_bin("nydus-image")),
    ] {
        let work = scratch.path().join(name);
        fs::create_dir_all(&work).unwrap();
        let create = [
            "create",
            "--log-level",
            "warn",
            "--prefetch-policy",
            "fs",
            "--blob",
            "BLOB_FIFO",
            "--whiteout-spec",
            "none",
            "--fs-version",
            "6",
            "--source-type",
            "directory",
            "--inline-bootstrap",
            src.to_str().unwrap(),
        ];
        // No tar goes in on this path: the feeder has nothing to open.
        let run = run_bin_with_fifos(&bin, &work, &create, &missing, b"/");
        assert!(
            run.output.status.success(),
            "{name} create: {}",
            text(&run.output)
        );
        let blob = work.join("layer.blob");
        fs::write(&blob, &run.blob).unwrap();
        let b = blob.to_str().unwrap();
        let unpack = [
            "unpack",
            "--log-level",
            "warn",
            "--bootstrap",
            b,
            "--output",
            "BLOB_FIFO",
            "--blob",
            b,
        ];
        let run = run_bin_with_fifos(&our_bin(), &work, &unpack, &missing, b"");
        assert!(
            run.output.status.success(),
            "unpack of {name}'s blob: {}",
            text(&run.output)
        );
        let tar = work.join("out.tar");
        fs::write(&tar, &run.blob).unwrap();
        let extracted = work.join("x");
        extract(&tar, &extracted);
        assert_identical_except(
            &format!("converter: {name} create -> our unpack through a FIFO -> GNU tar"),
            &FsTree::new(&src),
            &FsTree::new(&extracted),
            Except {
                differences: Some(&|d: &Difference| {
                    socket_left_out(d)
                        // Upstream's directory builder stores the root's mtime as 0.
                        || (name == "upstream" && d.path == "/" && d.attribute == "mtime")
                }),
                ..Except::default()
            },
        );
    }
}
