//! Data blobs with inline metadata (upstream 2.2.0's `create --blob-inline-meta`, with and
//! without `--features blob-toc`): such a blob stands where a bootstrap is expected.
//!
//! Upstream's own blobs are made from tars (`--type tar-rafs`) of a tree with every entry
//! kind, written by GNU tar in POSIX format (xattrs in PAX headers). Upstream 2.2.0's tar
//! reader keeps whole seconds of each mtime only, so the trees' mtimes are whole seconds
//! to begin with; sockets are left out by tar, ACLs by upstream's xattr check (see
//! tests/upstream.rs), xattr values holding a newline by upstream's PAX parsing, hard
//! links to a symlink, owners of 2^21 and more and mtimes before 1970 by upstream's tar
//! reader (notes in `tree`). The image is compared with the tar as GNU tar extracts it.

mod common {
    pub mod attrs;
    pub mod commands;
    pub mod compare;
    pub mod errors;
    pub mod files;
    pub mod nydusd_quirks;
    pub mod ours;
    pub mod output;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
    pub mod upstream;
    pub mod upstream_tree;
    pub mod watchdog;
}

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::upstream_tree::upstream_tar_safe_tree;
use common::{
    commands::*, compare::*, errors::chain, files::*, nydusd_quirks::nydusd_mount_time, output::*,
    privileged::*, sample::*, scratch::*, upstream::*, watchdog::*,
};
use nydus_image::format::blob_toc::{names, TarHeader, Toc};
use nydus_image::format::Compressor;
use nydus_image::mount::ImageTree;
use nydus_image::reader::{Image, ReadError};
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::FsTree;

fn tar_args(cmd: &mut Command) -> &mut Command {
    cmd.args([
        "--xattrs",
        "--xattrs-include=*",
        "--format=posix",
        "--numeric-owner",
    ])
}

/// `src` as a POSIX tar, and that tar as GNU tar extracts it into `extracted`.
fn tar_and_extract(src: &Path, tar: &Path, extracted: &Path) {
    let o = tar_args(&mut Command::new("tar"))
        .arg("-cf")
        .arg(tar)
        .arg("-C")
        .arg(src)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "tar: {}", text(&o));
    fs::create_dir_all(extracted).unwrap();
    let o = tar_args(&mut Command::new("tar"))
        .arg("-xpf")
        .arg(tar)
        .arg("-C")
        .arg(extracted)
        .output()
        .unwrap();
    assert!(o.status.success(), "untar: {}", text(&o));
}

/// Upstream's inline-meta blob of `tar` at `blob`.
fn upstream_blob_of_tar(tar: &Path, blob: &Path, toc: bool) {
    let mut cmd = Command::new(upstream_bin("nydus-image"));
    cmd.args([
        "create",
        "-l",
        "warn",
        "--type",
        "tar-rafs",
        "--blob-inline-meta",
    ]);
    if toc {
        cmd.args(["--features", "blob-toc"]);
    }
    let o = cmd.arg("--blob").arg(blob).arg(tar).output().unwrap();
    assert!(o.status.success(), "upstream create: {}", text(&o));
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

/// `verify --bootstrap BLOB` (no blob flags) `via` fuse or library against `dir`.
fn verify_blob(blob: &Path, dir: &Path, via: &str) -> Output {
    run(&[
        "verify",
        "-l",
        "warn",
        "--bootstrap",
        s(blob),
        "--via",
        via,
        s(dir),
    ])
}

/// Our `check -D`, `verify` (library and FUSE) and library reader take upstream's
/// inline-meta blobs, with and without a TOC, as the image's bootstrap, and see the tree
/// of the tar they were made from.
#[test]
fn our_check_and_verify_read_upstream_inline_blobs_from_a_tar() {
    let _dog = watchdog("upstream inline blobs", 600);
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    upstream_tar_safe_tree(&src);
    let tar = scratch.path().join("layer.tar");
    let extracted = scratch.path().join("extracted");
    tar_and_extract(&src, &tar, &extracted);
    let empty = scratch.path().join("no-blobs");
    fs::create_dir_all(&empty).unwrap();
    for toc in [true, false] {
        let blob = scratch.path().join(format!("upstream-toc-{toc}.blob"));
        upstream_blob_of_tar(&tar, &blob, toc);
        let id = sha256_hex(&blob);

        // check -D reads every file and checks every chunk digest; the blob serves
        // its own chunks (the directory is empty), and is named by its sha256.
        let o = run(&[
            "check",
            "-l",
            "warn",
            "--bootstrap",
            s(&blob),
            "-D",
            s(&empty),
        ]);
        assert!(o.status.success(), "check (toc {toc}): {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(&format!("0: {id}, ")), "toc {toc}: {out}");
        let features = if toc {
            "aligned cap_toc chunk-digest fs-meta tar-header toc"
        } else {
            "aligned cap_toc fs-meta tar-header"
        };
        assert!(out.contains(&format!("features: {features}\n")), "{out}");

        for via in ["library", "fuse"] {
            let o = verify_blob(&blob, &extracted, via);
            assert!(
                o.status.success(),
                "verify via {via} (toc {toc}): {}",
                text(&o)
            );
            assert!(
                String::from_utf8_lossy(&o.stdout).contains(" 0 difference(s)"),
                "{}",
                text(&o)
            );
        }

        // mount takes the blob alone too.
        let mnt = scratch.path().join(format!("mnt-{toc}"));
        fs::create_dir_all(&mnt).unwrap();
        let log = scratch.path().join(format!("mount-{toc}.log"));
        let o = run(&[
            "mount",
            "--daemon",
            "--log-file",
            s(&log),
            "--bootstrap",
            s(&blob),
            s(&mnt),
        ]);
        assert!(o.status.success(), "mount (toc {toc}): {}", text(&o));
        assert_identical(
            &format!("our mount, toc {toc}"),
            &FsTree::new(&extracted),
            &FsTree::new(&mnt),
        );
        let o = run(&["umount", s(&mnt)]);
        assert!(o.status.success(), "umount: {}", text(&o));

        let mut image = Image::open_any(&blob, BlobSource::None).expect("open upstream blob");
        image.validate = true;
        let inline = image.inline().expect("taken as a blob");
        assert_eq!(inline.blob_id, id);
        assert_eq!(inline.toc.is_some(), toc);
        assert_eq!(image.blobs()[0].blob_id, id);
        assert_identical(
            &format!("upstream blob, toc {toc}"),
            &FsTree::new(&extracted),
            &ImageTree(&image),
        );
    }
}

/// A blob named by a blob id keeps that name as its id; a plain bootstrap still opens
/// through the same call; and a blob without inline metadata is not taken for one.
#[test]
fn a_blob_is_named_by_its_file_name_when_that_is_a_blob_id() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_file(&src.join("f"), &data(300_000, 3));
    let tar = tmp.path().join("t.tar");
    tar_and_extract(&src, &tar, &tmp.path().join("x"));
    let named = tmp.path().join("ab".repeat(32));
    upstream_blob_of_tar(&tar, &named, true);
    let image = Image::open_any(&named, BlobSource::None).unwrap();
    assert_eq!(image.blobs()[0].blob_id, "ab".repeat(32));
    assert_eq!(image.devices()[0].blob_id, "ab".repeat(32));

    let boot = tmp.path().join("boot");
    let blobs = tmp.path().join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let o = build(&src, &boot, &blobs, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let image = Image::open_any(&boot, BlobSource::Dir(blobs.clone())).unwrap();
    assert!(image.inline().is_none());
    let plain_blob = fs::read_dir(&blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let err = Image::open_any(&plain_blob, BlobSource::None)
        .err()
        .expect("not an image");
    assert!(matches!(err, ReadError::Format { .. }), "{}", chain(&err));
}

/// Damage anywhere on the way to the bootstrap is an error naming the blob and the
/// offset, never a panic or a wrong image.
#[test]
fn damaged_tails_are_refused_with_the_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_file(&src.join("f"), &data(300_000, 4));
    let tar = tmp.path().join("t.tar");
    tar_and_extract(&src, &tar, &tmp.path().join("x"));
    let good = tmp.path().join("good");
    upstream_blob_of_tar(&tar, &good, true);
    let bytes = fs::read(&good).unwrap();
    let len = bytes.len();
    let toc_at = len - 512 - 640;
    let boot_record = toc_at + 4 * 128;
    let boot_offset = u64::from_le_bytes(
        bytes[boot_record + 56..boot_record + 64]
            .try_into()
            .unwrap(),
    ) as usize;
    type Damage = (&'static str, usize, u8, &'static str);
    let cases: [Damage; 5] = [
        ("last header checksum", len - 512 + 3, b'X', "checksum"),
        ("TOC flags", boot_record, 11, "flags 0x9"),
        ("TOC digest", boot_record + 24, 0x5a, "sha256"),
        (
            "compressed bootstrap",
            boot_offset + 20,
            0x5a,
            "bootstrap section at",
        ),
        ("TOC size", boot_record + 72, 0x7f, "bootstrap section at"),
    ];
    for (what, at, value, expect) in cases {
        let mut bad = bytes.clone();
        bad[at] ^= value;
        let path = tmp.path().join("bad");
        fs::write(&path, &bad).unwrap();
        let err = Image::open_any(&path, BlobSource::None)
            .err()
            .unwrap_or_else(|| panic!("{what}: opened"));
        let msg = chain(&err);
        assert!(matches!(err, ReadError::Inline { .. }), "{what}: {msg}");
        assert!(msg.contains(&path.display().to_string()), "{what}: {msg}");
        assert!(msg.contains(expect), "{what}: {msg}");
        let o = run(&["check", s(&path)]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
    }
    // Every truncation of the blob fails cleanly too.
    for cut in [1, 511, 512, 700, 1152, len - 100] {
        let path = tmp.path().join("short");
        fs::write(&path, &bytes[..len - cut]).unwrap();
        assert!(
            Image::open_any(&path, BlobSource::None).is_err(),
            "cut {cut}"
        );
    }
}

/// `nydus-image create --blob-inline-meta` (ours) with `extra` flags, of `src`.
fn create_inline(src: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["create", "-l", "warn", "--blob-inline-meta"];
    args.extend_from_slice(extra);
    args.push(s(src));
    run(&args)
}

/// The sections of a blob with inline metadata, walked back from its end: (name, offset,
/// size) in blob order, and the TOC if there is one.
fn sections(blob: &[u8]) -> (Vec<(String, u64, u64)>, Option<Toc>) {
    let mut end = blob.len() as u64;
    let mut out = Vec::new();
    let mut toc = None;
    while end > 0 {
        let at = end - 512;
        let h = TarHeader::decode(&blob[at as usize..end as usize], at).unwrap();
        let start = at - h.size;
        if h.name == names::TOC {
            toc = Some(Toc::decode(&blob[start as usize..at as usize], start).unwrap());
        }
        out.push((h.name, start, h.size));
        end = start;
    }
    out.reverse();
    (out, toc)
}

/// Upstream 2.2.0's `check` and `nydusd` take our inline-meta blobs, with and without a
/// TOC, as the bootstrap (named by the blob's name in the blob directory, as they need:
/// see the README), and nydusd shows the source tree; our reader reads them too.
#[test]
fn upstream_check_and_nydusd_accept_our_inline_blobs() {
    let _dog = watchdog("our inline blobs under upstream", 600);
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    // No ACLs: upstream 2.2.0's check refuses them (tests/upstream.rs).
    let spec = TreeSpec {
        acls: false,
        sparse_size: 40_000_000,
        big_dir_entries: 2000,
        depth: 40,
        ..TreeSpec::default()
    };
    make_tree(&src, &spec);
    for (i, (toc, compressor, digester)) in [
        (true, "zstd", "blake3"),
        (false, "lz4_block", "sha256"),
        (true, "none", "blake3"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = scratch.path().join(format!("out{i}"));
        let blobs = out.join("blobs");
        fs::create_dir_all(&blobs).unwrap();
        let mut flags = vec!["--compressor", compressor, "--digester", digester];
        if toc {
            flags.extend(["--features", "blob-toc"]);
        }
        // One build writes to a file, the next into a blob directory.
        let written = out.join("ours.blob");
        if i % 2 == 0 {
            flags.extend(["--blob", s(&written)]);
        } else {
            flags.extend(["--blob-dir", s(&blobs)]);
        }
        let o = create_inline(&src, &flags);
        assert!(o.status.success(), "create {flags:?}: {}", text(&o));
        if i % 2 == 0 {
            let id = sha256_hex(&written);
            fs::rename(&written, blobs.join(id)).unwrap();
        }
        let blob = fs::read_dir(&blobs)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let id = sha256_hex(&blob);
        assert_eq!(blob.file_name().unwrap().to_str(), Some(id.as_str()));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            stdout.contains(&format!("data blobs: [\"{id}\"]")),
            "{stdout}"
        );
        assert!(stdout.contains("meta blob path: <none>"), "{stdout}");

        let o = Command::new(upstream_bin("nydus-image"))
            .args(["check", "--bootstrap", s(&blob), "-D", s(&blobs)])
            .output()
            .unwrap();
        let said = text(&o);
        assert!(o.status.success(), "upstream check {flags:?}: {said}");
        assert!(
            said.contains("RAFS filesystem metadata is valid") && said.contains(&id),
            "{said}"
        );

        let daemon = Nydusd::mount(&blob, &blobs, &out);
        // nydusd shows the mount time for an mtime of 0 (tests/common/nydusd_quirks.rs).
        assert_identical_except(
            &format!("nydusd, {flags:?}"),
            &FsTree::new(&src),
            &FsTree::new(&daemon.mnt),
            Except {
                differences: Some(&nydusd_mount_time),
                ..Except::default()
            },
        );
        drop(daemon);

        let mut image = Image::open_any(&blob, BlobSource::None).unwrap();
        image.validate = true;
        assert_identical(
            &format!("our reader, {flags:?}"),
            &FsTree::new(&src),
            &ImageTree(&image),
        );
    }
}

/// Our inline-meta blob of a directory is laid out as upstream's of the same directory:
/// the same sections in the same order, the same TOC records (names, compression), blob
/// features and superblock flags, the blob's recorded size ending where the bootstrap
/// starts; and the TOC's digests hold, upstream's quirk for `image.blob` included. Also
/// for a tree without file data, where both write the bootstrap alone.
#[test]
fn our_inline_blobs_are_laid_out_as_upstreams() {
    let tmp = tempfile::tempdir().unwrap();
    let with_data = tmp.path().join("data");
    fs::create_dir_all(with_data.join("d")).unwrap();
    write_file(&with_data.join("d/big"), &data(3_000_000, 5));
    write_file(&with_data.join("small"), b"small file\n");
    std::os::unix::fs::symlink("small", with_data.join("link")).unwrap();
    let empty = tmp.path().join("empty");
    fs::create_dir_all(empty.join("dir")).unwrap();
    write_file(&empty.join("dir/nothing"), b"");
    for (name, src) in [("data", &with_data), ("empty", &empty)] {
        for toc in [true, false] {
            let ours = tmp.path().join(format!("ours-{name}-{toc}"));
            let theirs = tmp.path().join(format!("theirs-{name}-{toc}"));
            let mut flags = vec!["--blob", s(&ours)];
            if toc {
                flags.extend(["--features", "blob-toc"]);
            }
            let o = create_inline(src, &flags);
            assert!(o.status.success(), "{}", text(&o));
            let mut cmd = Command::new(upstream_bin("nydus-image"));
            cmd.args([
                "create",
                "-l",
                "warn",
                "--blob-inline-meta",
                "--blob",
                s(&theirs),
            ]);
            if toc {
                cmd.args(["--features", "blob-toc"]);
            }
            let o = cmd.arg(src).output().unwrap();
            assert!(o.status.success(), "{}", text(&o));

            let what = format!("{name}, toc {toc}");
            let (ours_bytes, theirs_bytes) = (fs::read(&ours).unwrap(), fs::read(&theirs).unwrap());
            let (our_sections, our_toc) = sections(&ours_bytes);
            let (their_sections, their_toc) = sections(&theirs_bytes);
            let names_of =
                |v: &[(String, u64, u64)]| v.iter().map(|s| s.0.clone()).collect::<Vec<_>>();
            assert_eq!(names_of(&our_sections), names_of(&their_sections), "{what}");
            assert_eq!(our_toc.is_some(), toc, "{what}");
            if let (Some(ours_toc), Some(theirs_toc)) = (&our_toc, &their_toc) {
                let shape = |t: &Toc| {
                    t.entries
                        .iter()
                        .map(|e| {
                            (
                                e.name.clone(),
                                e.compressor,
                                e.uncompressed_sha256.is_some(),
                            )
                        })
                        .collect::<Vec<_>>()
                };
                assert_eq!(shape(ours_toc), shape(theirs_toc), "{what}");
                for e in &ours_toc.entries {
                    let stored =
                        &ours_bytes[e.compressed_offset as usize..e.compressed_end() as usize];
                    let hashed: Vec<u8> = if e.name == names::BLOB_DATA {
                        // Upstream's record of the chunk data covers its tar header too.
                        ours_bytes[..e.compressed_end() as usize + 512].to_vec()
                    } else if e.compressor == Compressor::None {
                        stored.to_vec()
                    } else {
                        let mut out = vec![0u8; e.uncompressed_size as usize];
                        nydus_image::storage::compress::decompress(e.compressor, stored, &mut out)
                            .unwrap();
                        out
                    };
                    use sha2::Digest;
                    let got: [u8; 32] = sha2::Sha256::digest(&hashed).into();
                    assert_eq!(Some(got), e.uncompressed_sha256, "{what}: {}", e.name);
                }
            }
            let our_image = Image::open_any(&ours, BlobSource::None).unwrap();
            let their_image = Image::open_any(&theirs, BlobSource::None).unwrap();
            assert_eq!(
                our_image.super_block().flags,
                their_image.super_block().flags,
                "{what}: superblock flags"
            );
            let features = |i: &Image| i.blobs().iter().map(|b| b.features).collect::<Vec<_>>();
            assert_eq!(
                features(&our_image),
                features(&their_image),
                "{what}: blob features"
            );
            let boot_at = our_sections
                .iter()
                .find(|s| s.0 == names::BOOTSTRAP)
                .map(|s| s.1)
                .unwrap();
            for b in our_image.blobs() {
                assert_eq!(b.compressed_size, boot_at, "{what}: recorded blob size");
                assert_eq!(b.blob_id, sha256_hex(&ours), "{what}");
            }
            let raw = our_image.inline().unwrap();
            let stored_raw = raw.bootstrap.compressor == Compressor::None;
            assert_eq!(
                stored_raw, !toc,
                "{what}: the bootstrap is compressed with a TOC"
            );
            // Upstream's placeholder id stands in the bootstrap itself.
            let boot_section = &our_sections
                .iter()
                .find(|s| s.0 == names::BOOTSTRAP)
                .unwrap();
            if !toc && name == "data" {
                let boot = &ours_bytes
                    [boot_section.1 as usize..(boot_section.1 + boot_section.2) as usize];
                assert!(
                    boot.windows(64).any(|w| w == [b'x'; 64]),
                    "{what}: placeholder id"
                );
            }
        }
    }
}

/// The blob may be a FIFO: written strictly in order, the same bytes as a file gets.
#[test]
fn an_inline_blob_can_be_written_to_a_fifo() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    write_file(&src.join("a"), &data(2_500_000, 6));
    write_file(&src.join("d/b"), b"hello");
    for toc in [true, false] {
        let fifo = tmp.path().join(format!("blob-{toc}.fifo"));
        mknod(&fifo, libc::S_IFIFO | 0o600, 0, 0);
        let fifo2 = fifo.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(fs::read(fifo2).unwrap()));
        let mut flags = vec!["--blob", s(&fifo)];
        if toc {
            flags.extend(["--features", "blob-toc"]);
        }
        let o = create_inline(&src, &flags);
        assert!(o.status.success(), "{}", text(&o));
        // A build that did not write into the FIFO leaves its reader waiting.
        let received = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the build wrote the blob into the FIFO");
        let file = tmp.path().join(format!("blob-{toc}"));
        let mut flags = vec!["--blob", s(&file)];
        if toc {
            flags.extend(["--features", "blob-toc"]);
        }
        let o = create_inline(&src, &flags);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            received == fs::read(&file).unwrap(),
            "toc {toc}: FIFO and file differ"
        );
        let got = tmp.path().join(format!("received-{toc}"));
        fs::write(&got, &received).unwrap();
        let o = run(&[
            "verify",
            "-l",
            "warn",
            "--via",
            "library",
            "--bootstrap",
            s(&got),
            s(&src),
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// What upstream refuses, or what is not done here, is refused before any work, saying
/// why.
#[test]
fn inline_meta_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_file(&src.join("f"), b"x");
    let blob = tmp.path().join("blob");
    let boot = tmp.path().join("boot");
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--blob-inline-meta",
                "--bootstrap",
                s(&boot),
                "--blob",
                s(&blob),
            ],
            "--bootstrap",
        ),
        (
            &["--inline-bootstrap", "--blob-id", "abc", "--blob", s(&blob)],
            "--blob-id",
        ),
        (
            &[
                "--features",
                "blob-toc",
                "--bootstrap",
                s(&boot),
                "--blob",
                s(&blob),
            ],
            "blob-toc",
        ),
        (
            &[
                "--blob-inline-meta",
                "--type",
                "stargz_index",
                "--blob",
                s(&blob),
            ],
            "directory",
        ),
        (
            &[
                "--blob-inline-meta",
                "--config",
                s(&boot),
                "--blob",
                s(&blob),
            ],
            "compact",
        ),
    ];
    for (flags, says) in cases {
        let mut args = vec!["create"];
        args.extend_from_slice(flags);
        args.push(s(&src));
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {}", text(&o));
        assert!(err.contains(says), "{flags:?}: {err}");
        assert!(
            !blob.exists() && !boot.exists(),
            "{flags:?} wrote something"
        );
    }
}

/// A layer with inline metadata over a parent image built the usual way: its bootstrap
/// references the parent's blob (from the blob directory) and its own (itself); ours,
/// upstream's check and nydusd all see the layers merged.
#[test]
fn an_inline_layer_over_a_parent() {
    let _dog = watchdog("inline layer over a parent", 300);
    let scratch = Scratch::new();
    let lower = scratch.path().join("lower");
    let upper = scratch.path().join("upper");
    fs::create_dir_all(lower.join("d")).unwrap();
    fs::create_dir_all(&upper).unwrap();
    write_file(&lower.join("d/kept"), &data(1_500_000, 7));
    write_file(&lower.join("gone"), b"removed by the upper layer");
    write_file(&upper.join("new"), &data(200_000, 8));
    write_file(&upper.join(".wh.gone"), b"");
    let blobs = scratch.path().join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let parent = scratch.path().join("parent.boot");
    let o = build(&lower, &parent, &blobs, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let parent_blobs: Vec<_> = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let o = create_inline(
        &upper,
        &[
            "--features",
            "blob-toc",
            "--parent-bootstrap",
            s(&parent),
            "--blob-dir",
            s(&blobs),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let blob = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !parent_blobs.contains(p))
        .expect("the new blob");

    let o = run(&[
        "verify",
        "-l",
        "warn",
        "--via",
        "library",
        "--bootstrap",
        s(&blob),
        "-D",
        s(&blobs),
        s(&lower),
        s(&upper),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let image = Image::open_any(&blob, BlobSource::Dir(blobs.clone())).unwrap();
    let ids: Vec<_> = image.blobs().iter().map(|b| b.blob_id.clone()).collect();
    let parent_id = parent_blobs[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(ids, [parent_id, sha256_hex(&blob)]);

    let o = Command::new(upstream_bin("nydus-image"))
        .args(["check", "--bootstrap", s(&blob), "-D", s(&blobs)])
        .output()
        .unwrap();
    assert!(o.status.success(), "upstream check: {}", text(&o));
    let work = scratch.path().join("nydusd");
    fs::create_dir_all(&work).unwrap();
    let daemon = Nydusd::mount(&blob, &blobs, &work);
    let mut names: Vec<_> = fs::read_dir(&daemon.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["d", "new"]);
    assert_eq!(
        fs::read(daemon.mnt.join("d/kept")).unwrap(),
        data(1_500_000, 7)
    );
    assert_eq!(fs::read(daemon.mnt.join("new")).unwrap(), data(200_000, 8));
}
