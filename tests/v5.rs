//! RAFS v5: our reader (library and FUSE mount) reads what upstream 2.2.0 builds with
//! `create --fs-version 5`, and our `check` (every chunk digest, every inode digest)
//! accepts it; what we build with `create --fs-version 5` upstream's `check` accepts,
//! upstream's `nydusd` serves with `digest_validate` on, and it has upstream's records
//! (inode order, fields, names, inode and directory digests, chunk lists) for the same
//! tree.
//!
//! Excluded, and why (as in tests/upstream.rs): upstream's builder records mtime 0 for the
//! root, and gives each name of a hard-linked symlink an inode of its own with the
//! source's link count; its 2.2.0 tree code refuses POSIX ACLs, so the trees given to it
//! carry none.

mod common {
    pub mod attrs;
    pub mod commands;
    pub mod compare;
    pub mod files;
    pub mod nydusd_quirks;
    pub mod ours;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
    pub mod upstream;
}

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::commands::run_with_stdin;
use common::compare::{assert_identical, assert_identical_except, Except};
use common::nydusd_quirks::nydusd_mount_time;
use common::upstream::{upstream_bin, Nydusd};
use common::{ours::our_bin, sample::*, scratch::Scratch};
use nydus_image::mount::ImageTree;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::{Difference, FsTree};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The sample tree less what upstream 2.2.0's builder refuses (ACLs), kept small.
fn source(root: &Path) -> PathBuf {
    let src = root.join("src");
    make_tree(
        &src,
        &TreeSpec {
            acls: false,
            sparse_size: 20_000_000,
            big_dir_entries: 2000,
            depth: 40,
            ..TreeSpec::default()
        },
    );
    src
}

/// Upstream's v5 image of `src` in `out/boot` and `out/blobs`.
fn build_upstream(src: &Path, out: &Path, extra: &[&str]) {
    fs::create_dir_all(out.join("blobs")).unwrap();
    run(Command::new(upstream_bin("nydus-image"))
        .args(["create", "--log-level", "warn", "--fs-version", "5"])
        .args(extra)
        .arg("--bootstrap")
        .arg(out.join("boot"))
        .arg("--blob-dir")
        .arg(out.join("blobs"))
        .arg(src));
}

/// Our v5 image of `src` in `out/boot` and `out/blobs`.
fn build_ours(src: &Path, out: &Path, extra: &[&str]) -> String {
    fs::create_dir_all(out.join("blobs")).unwrap();
    run(Command::new(our_bin())
        .args(["create", "--log-level", "warn", "-v", "5"])
        .args(extra)
        .arg("--bootstrap")
        .arg(out.join("boot"))
        .arg("--blob-dir")
        .arg(out.join("blobs"))
        .arg(src))
}

/// Where an image upstream's builder made from `src` may differ from it (module note).
fn upstreams_own_way(src: &Path, d: &Difference) -> bool {
    let symlink_nlink = || {
        fs::symlink_metadata(src.join(d.path.trim_start_matches('/')))
            .ok()
            .filter(|m| m.file_type().is_symlink())
            .map(|m| m.nlink())
    };
    match d.attribute.as_str() {
        "mtime" => d.path == "/" && d.image == "0.000000000",
        "hard links" => symlink_nlink().is_some(),
        "nlink" => symlink_nlink().is_some_and(|n| d.image == n.to_string()),
        _ => false,
    }
}

/// A foreground `nydus-image mount`, stopped on drop.
struct OurMount {
    child: Child,
    mnt: PathBuf,
}

impl OurMount {
    fn start(out: &Path) -> Self {
        let mnt = out.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let child = Command::new(our_bin())
            .args(["mount", "--validate", "--log-file"])
            .arg(out.join("mount.log"))
            .arg("--bootstrap")
            .arg(out.join("boot"))
            .arg("--blob-dir")
            .arg(out.join("blobs"))
            .arg(&mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut me = OurMount { child, mnt };
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
}

impl Drop for OurMount {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn our_reader_and_mount_read_upstream_v5_images() {
    let scratch = Scratch::new();
    let src = source(scratch.path());
    let settings: [&[&str]; 2] = [
        &[],
        &[
            "--compressor",
            "lz4_block",
            "--digester",
            "sha256",
            "--chunk-size",
            "0x10000",
        ],
    ];
    for (i, extra) in settings.iter().enumerate() {
        let out = scratch.path().join(format!("up{i}"));
        build_upstream(&src, &out, extra);
        let mut image = Image::open(&out.join("boot"), BlobSource::Dir(out.join("blobs")))
            .expect("open upstream v5 image");
        assert_eq!(image.fs_version(), 5);
        image.validate = true;
        let own_way = |d: &Difference| upstreams_own_way(&src, d);
        let except = || Except {
            differences: Some(&own_way),
            ..Except::default()
        };
        assert_identical_except(
            &format!("upstream v5 image {extra:?}, library"),
            &FsTree::new(&src),
            &ImageTree(&image),
            except(),
        );
        let mount = OurMount::start(&out);
        assert_identical_except(
            &format!("upstream v5 image {extra:?}, our FUSE mount"),
            &FsTree::new(&src),
            &FsTree::new(&mount.mnt),
            except(),
        );
        drop(mount);
        // Our check reads every file (chunk digests) and every inode digest.
        let text = run(Command::new(our_bin())
            .arg("check")
            .arg(out.join("boot"))
            .arg("-D")
            .arg(out.join("blobs")));
        assert!(text.contains("RAFS filesystem metadata is valid"), "{text}");
    }
}

#[test]
fn nydusd_validates_and_serves_our_v5_images() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    // ACLs kept: nydusd serves them (only upstream's builder and check refuse them).
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 50_000_001,
            big_dir_entries: 3000,
            ..TreeSpec::default()
        },
    );
    let settings: [&[&str]; 2] = [&[], &["--compressor", "lz4_block", "--digester", "sha256"]];
    for (i, extra) in settings.iter().enumerate() {
        let out = scratch.path().join(format!("out{i}"));
        build_ours(&src, &out, extra);
        let daemon = Nydusd::mount_with(
            &out.join("boot"),
            &out.join("blobs"),
            &out,
            serde_json::json!({"digest_validate": true}),
            "warn",
        );
        assert_identical_except(
            &format!("nydusd (digest_validate) mount of our v5 image {extra:?}"),
            &FsTree::new(&src),
            &FsTree::new(&daemon.mnt),
            Except {
                differences: Some(&nydusd_mount_time),
                ..Except::default()
            },
        );
    }
    // The validation is real: a file whose inode digest is off is refused (nydusd checks
    // a directory's children when it looks the directory up; a damaged entry of the root
    // would fail the mount itself).
    let out = scratch.path().join("out0");
    let mut boot = fs::read(out.join("boot")).unwrap();
    let at = record_offset(&boot, &b"/deep/f"[..]);
    boot[at] ^= 0xff;
    let bad = scratch.path().join("bad");
    fs::create_dir_all(&bad).unwrap();
    fs::write(bad.join("boot"), &boot).unwrap();
    let daemon = Nydusd::mount_with(
        &bad.join("boot"),
        &out.join("blobs"),
        &bad,
        serde_json::json!({"digest_validate": true}),
        "warn",
    );
    assert_eq!(
        fs::read(daemon.mnt.join("one")).unwrap(),
        b"x",
        "a sound file reads"
    );
    assert!(
        fs::read(daemon.mnt.join("deep/f")).is_err(),
        "nydusd served a file whose inode digest is wrong"
    );
    drop(daemon);
    // Without validation the same image serves it: only the digest is off.
    let plain = scratch.path().join("plain");
    fs::create_dir_all(&plain).unwrap();
    let daemon = Nydusd::mount(&bad.join("boot"), &out.join("blobs"), &plain);
    assert_eq!(
        fs::read(daemon.mnt.join("deep/f")).unwrap(),
        fs::read(src.join("deep/f")).unwrap()
    );
}

/// Byte offset of the record of `path` in a v5 bootstrap, found through our reader.
fn record_offset(boot: &[u8], path: &[u8]) -> usize {
    use nydus_image::format::v5::{super_block::SuperBlock, tables};
    let image = Image::from_bytes("v5.boot".as_ref(), boot.to_vec(), BlobSource::None).unwrap();
    let nid = image.resolve(path).unwrap().expect("path in image");
    let sb = SuperBlock::decode(boot, boot.len() as u64).unwrap();
    let table = &boot[sb.inode_table_offset as usize..];
    tables::inode_offset(table, sb.inode_table_offset, sb.inode_table_entries, nid.0).unwrap()
        as usize
}

#[test]
fn upstream_check_accepts_our_v5_bootstraps() {
    let scratch = Scratch::new();
    let src = source(scratch.path());
    for (i, extra) in [
        &[][..],
        &["--chunk-size", "0x1000", "--compressor", "none"][..],
    ]
    .iter()
    .enumerate()
    {
        let out = scratch.path().join(format!("out{i}"));
        build_ours(&src, &out, extra);
        let text = run(Command::new(upstream_bin("nydus-image"))
            .arg("check")
            .arg("--bootstrap")
            .arg(out.join("boot")));
        assert!(text.contains("RAFS filesystem metadata is valid"), "{text}");
        assert!(text.contains("RAFS v5"), "{text}");
    }
}

/// One record of a v5 bootstrap as the format fixes it: the inode's fields, name, target,
/// xattrs (as a set: upstream writes them in hash-map order) and chunk list (digest, blob,
/// file offset and size; where a chunk sits in its blob depends on the blob layout).
#[derive(Debug, PartialEq, Eq)]
struct RecordView {
    inode: nydus_image::format::v5::inode::Inode,
    name: Vec<u8>,
    target: Vec<u8>,
    xattrs: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    chunks: Vec<([u8; 32], u32, u64, u32)>,
}

/// Every record of a v5 bootstrap, in inode-table order, and its superblock.
fn records(
    boot: &[u8],
) -> (
    nydus_image::format::v5::super_block::SuperBlock,
    Vec<RecordView>,
) {
    use nydus_image::format::v5::inode::{self, flags, Inode, INODE_SIZE};
    use nydus_image::format::v5::{align, super_block::SuperBlock, tables, ChunkInfo};
    let sb = SuperBlock::decode(boot, boot.len() as u64).unwrap();
    let table = &boot[sb.inode_table_offset as usize..];
    let mut out = Vec::new();
    for index in 1..=sb.inode_table_entries as u64 {
        let at = tables::inode_offset(table, sb.inode_table_offset, sb.inode_table_entries, index)
            .unwrap();
        let inode = Inode::decode(&boot[at as usize..], at).unwrap();
        let name_at = (at + INODE_SIZE) as usize;
        let name = boot[name_at..name_at + inode.name_size as usize].to_vec();
        let target_at = name_at + align(inode.name_size as u64) as usize;
        let target = boot[target_at..target_at + inode.symlink_size as usize].to_vec();
        let mut tail = at + inode.head_size();
        let mut xattrs = std::collections::BTreeMap::new();
        if inode.flags & flags::XATTR != 0 {
            let (pairs, size) = inode::decode_xattrs(&boot[tail as usize..], tail).unwrap();
            xattrs.extend(pairs);
            tail += size;
        }
        let mut chunks = Vec::new();
        if inode.mode & libc::S_IFMT == libc::S_IFREG {
            for i in 0..inode.child_count as u64 {
                let c_at = tail + i * 80;
                let c = ChunkInfo::decode(&boot[c_at as usize..c_at as usize + 80], c_at).unwrap();
                chunks.push((c.digest, c.blob_index, c.file_offset, c.uncompressed_size));
            }
        }
        out.push(RecordView {
            inode,
            name,
            target,
            xattrs,
            chunks,
        });
    }
    (sb, out)
}

#[test]
fn our_v5_bootstrap_has_upstreams_records() {
    let scratch = Scratch::new();
    let src = source(scratch.path());
    for (i, extra) in [
        &[][..],
        &["--digester", "sha256", "--chunk-size", "0x10000"][..],
    ]
    .iter()
    .enumerate()
    {
        let ours = scratch.path().join(format!("ours{i}"));
        let theirs = scratch.path().join(format!("theirs{i}"));
        build_ours(&src, &ours, extra);
        build_upstream(&src, &theirs, extra);
        let (ours_boot, theirs_boot) = (
            fs::read(ours.join("boot")).unwrap(),
            fs::read(theirs.join("boot")).unwrap(),
        );
        let (our_sb, mut our_records) = records(&ours_boot);
        let (their_sb, their_records) = records(&theirs_boot);
        // Upstream records mtime 0 for the root (tests/upstream.rs); we keep the source's.
        assert_ne!(our_records[0].inode.mtime, 0);
        our_records[0].inode.mtime = 0;
        our_records[0].inode.mtime_nsec = 0;
        assert_eq!(our_records.len(), their_records.len());
        for (n, (a, b)) in our_records.iter().zip(&their_records).enumerate() {
            assert_eq!(a, b, "record {} ({extra:?})", n + 1);
        }
        assert_eq!(
            (our_sb.flags, our_sb.inodes, our_sb.chunk_size),
            (their_sb.flags, their_sb.inodes, their_sb.chunk_size)
        );
        // Sizes: the same but for the blob tables (ids, and our blob's sizes).
        let (a, b) = (ours_boot.len() as f64, theirs_boot.len() as f64);
        eprintln!("bootstrap sizes {extra:?}: ours {a} upstream {b}");
        assert!((a - b).abs() / b < 0.01, "ours {a} bytes, upstream's {b}");
    }
}

/// `args` run through our binary; the output, failed or not.
fn ours(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(our_bin()).args(args).output().unwrap()
}

#[test]
fn tar_layers_and_parent_layers_build_as_v5() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = source(root);
    // A tar layer: the v5 image, through nydusd with digest_validate, shows what the v6
    // image of the same tar shows through our library.
    let tar = root.join("layer.tar");
    run(Command::new("tar")
        .args(["--format=posix", "--xattrs", "--xattrs-include=*", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let (t5, t6) = (root.join("t5"), root.join("t6"));
    build_ours(&tar, &t5, &["--type", "tar-rafs"]);
    fs::create_dir_all(t6.join("blobs")).unwrap();
    run(Command::new(our_bin())
        .args(["create", "--log-level", "warn", "--type", "tar-rafs"])
        .arg("--bootstrap")
        .arg(t6.join("boot"))
        .arg("--blob-dir")
        .arg(t6.join("blobs"))
        .arg(&tar));
    let v6 = Image::open(&t6.join("boot"), BlobSource::Dir(t6.join("blobs"))).unwrap();
    let daemon = Nydusd::mount_with(
        &t5.join("boot"),
        &t5.join("blobs"),
        &t5,
        serde_json::json!({"digest_validate": true}),
        "warn",
    );
    assert_identical_except(
        "v5 tar layer through nydusd against its v6 image",
        &ImageTree(&v6),
        &FsTree::new(&daemon.mnt),
        Except {
            differences: Some(&nydusd_mount_time),
            ..Except::default()
        },
    );
    drop(daemon);

    // Layers: a v5 layer over a v5 parent equals the v6 build of the same layers.
    let upper = root.join("upper");
    fs::create_dir_all(upper.join("hl")).unwrap();
    fs::write(upper.join(".wh.one"), b"").unwrap();
    fs::write(upper.join("hl/new"), b"new file").unwrap();
    fs::write(upper.join("cs"), b"replaced").unwrap();
    let (base5, base6) = (root.join("base5"), root.join("base6"));
    build_ours(&src, &base5, &[]);
    let layered = |out: &Path, parent: &Path, extra: &[&str]| {
        fs::create_dir_all(out).unwrap();
        run(Command::new(our_bin())
            .args(["create", "--log-level", "warn"])
            .args(extra)
            .arg("--parent-bootstrap")
            .arg(parent.join("boot"))
            .arg("--bootstrap")
            .arg(out.join("boot"))
            .arg("--blob-dir")
            .arg(parent.join("blobs"))
            .arg(&upper));
    };
    fs::create_dir_all(base6.join("blobs")).unwrap();
    run(Command::new(our_bin())
        .args(["create", "--log-level", "warn"])
        .arg("--bootstrap")
        .arg(base6.join("boot"))
        .arg("--blob-dir")
        .arg(base6.join("blobs"))
        .arg(&src));
    let (top5, top6) = (root.join("top5"), root.join("top6"));
    layered(&top5, &base5, &["-v", "5"]);
    layered(&top6, &base6, &[]);
    let v6 = Image::open(&top6.join("boot"), BlobSource::Dir(base6.join("blobs"))).unwrap();
    let daemon = Nydusd::mount_with(
        &top5.join("boot"),
        &base5.join("blobs"),
        &top5,
        serde_json::json!({"digest_validate": true}),
        "warn",
    );
    assert_identical_except(
        "v5 layer over a v5 parent through nydusd against the v6 build",
        &ImageTree(&v6),
        &FsTree::new(&daemon.mnt),
        Except {
            differences: Some(&nydusd_mount_time),
            ..Except::default()
        },
    );
    drop(daemon);

    // A parent of the other version is refused before anything is written.
    let mixed = root.join("mixed");
    fs::create_dir_all(mixed.join("blobs")).unwrap();
    let s = |p: &Path| p.as_os_str().to_owned();
    let o = ours(&[
        "create".as_ref(),
        "-v".as_ref(),
        "5".as_ref(),
        "--parent-bootstrap".as_ref(),
        &s(&base6.join("boot")),
        "--bootstrap".as_ref(),
        &s(&mixed.join("boot")),
        "--blob-dir".as_ref(),
        &s(&mixed.join("blobs")),
        &s(&upper),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("is RAFS v6, this build writes v5"), "{err}");
    assert!(!mixed.join("boot").exists());
    assert_eq!(fs::read_dir(mixed.join("blobs")).unwrap().count(), 0);
}

#[test]
fn v5_refuses_what_only_v6_carries() {
    let scratch = Scratch::new();
    let root = scratch.path();
    fs::create_dir_all(root.join("src")).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--type", "stargz_index", "--blob-id", "x"],
            "conversion type stargz_index conflicts with RAFS v5",
        ),
        (
            &[
                "--blob-inline-meta",
                "--features",
                "blob-toc",
                "--blob",
                "/dev/null",
            ],
            "--features blob-toc can't be used with RAFS v5",
        ),
        (&["--type", "targz-ref"], "targz-ref is not supported"),
    ];
    for (extra, says) in cases {
        let boot = root.join("boot");
        let mut args: Vec<std::ffi::OsString> = vec!["create".into(), "-v".into(), "5".into()];
        args.extend(extra.iter().map(Into::into));
        if !extra.contains(&"--blob-inline-meta") {
            args.extend(["--bootstrap".into(), boot.clone().into_os_string()]);
            args.extend(["--blob-dir".into(), root.as_os_str().to_owned()]);
        }
        args.push(root.join("src").into_os_string());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let o = ours(&refs);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} succeeded");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!boot.exists());
    }
}

#[test]
fn a_v5_image_serves_as_chunk_dictionary() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = source(root);
    let dict = root.join("dict");
    build_ours(&src, &dict, &[]);
    // The same files again, and one new: only the new file's chunk is stored.
    let again = root.join("again");
    run(Command::new("cp").arg("-a").arg(&src).arg(&again));
    fs::write(again.join("fresh"), b"not in the dictionary").unwrap();
    let out = root.join("out");
    fs::create_dir_all(&out).unwrap();
    let dict_arg = format!("bootstrap={}", dict.join("boot").display());
    let text = run(Command::new(our_bin())
        .args(["create", "-v", "5", "--chunk-dict", &dict_arg])
        .arg("--bootstrap")
        .arg(out.join("boot"))
        .arg("--blob-dir")
        .arg(dict.join("blobs"))
        .arg(&again));
    let image = Image::open(&out.join("boot"), BlobSource::Dir(dict.join("blobs"))).unwrap();
    assert_eq!(image.blobs().len(), 2, "{text}");
    let new_blob = &image.blobs()[1];
    assert_eq!(new_blob.chunk_count, 1, "{text}");
    let mut image = image;
    image.validate = true;
    assert_identical(
        "v5 image built against a v5 chunk dictionary",
        &FsTree::new(&again),
        &ImageTree(&image),
    );
}

/// `create` with `--prefetch-policy fs` and `extra`, the patterns on standard input.
fn build_with_patterns(bin: &Path, src: &Path, out: &Path, patterns: &str, extra: &[&str]) {
    fs::create_dir_all(out.join("blobs")).unwrap();
    let mut args: Vec<std::ffi::OsString> = ["create", "--log-level", "warn", "--fs-version", "5"]
        .iter()
        .chain(extra)
        .map(Into::into)
        .collect();
    args.extend([
        "--bootstrap".into(),
        out.join("boot").into(),
        "--blob-dir".into(),
        out.join("blobs").into(),
        src.into(),
    ]);
    let o = run_with_stdin(bin, args, patterns.as_bytes());
    assert!(
        o.status.success(),
        "{} create: {}",
        bin.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The v5 prefetch table's bytes (superblock's offset and entry count, padded to 8).
fn v5_prefetch_table(boot: &Path) -> Vec<u8> {
    let bytes = fs::read(boot).unwrap();
    let image = Image::open(boot, BlobSource::None).unwrap();
    let sb = image.v5_super_block().unwrap();
    let at = sb.prefetch_table_offset as usize;
    let len = (sb.prefetch_table_entries as usize * 4).next_multiple_of(8);
    bytes[at..at + len].to_vec()
}

/// `--prefetch-policy fs` writes upstream's v5 prefetch table: the inode number of each
/// pattern's entry in pattern order, no slot for a pattern naming nothing or an empty
/// file, a hard link's name standing for its inode, padded to 8 bytes; the same bytes as
/// upstream's for the same tree and patterns, and upstream's `inspect -R prefetch` lists
/// the same paths. With `--prefetch-policy blob` there is none, as upstream.
#[test]
fn v5_prefetch_table_is_upstreams() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = source(root);
    let patterns =
        "/hl/second-link\n/deep\n/nothere\n/empty\n/one\n/hl\n/link-short\n/big-dir\n/\n";
    let inspect = |boot: &Path| {
        let o = Command::new(upstream_bin("nydus-image"))
            .args(["inspect", "-R", "prefetch"])
            .arg(boot)
            .output()
            .unwrap();
        assert!(o.status.success(), "inspect {}", boot.display());
        String::from_utf8(o.stdout).unwrap()
    };
    let mut tables = Vec::new();
    let mut listings = Vec::new();
    for (who, bin) in [
        ("ours", our_bin()),
        ("upstream", upstream_bin("nydus-image")),
    ] {
        let out = root.join(who);
        build_with_patterns(&bin, &src, &out, patterns, &["--prefetch-policy", "fs"]);
        let table = v5_prefetch_table(&out.join("boot"));
        // Seven patterns name a non-empty entry; the reader lists them.
        assert_eq!(table.len(), 32, "{who}: seven entries padded to eight");
        let image = Image::open(&out.join("boot"), BlobSource::None).unwrap();
        assert_eq!(image.prefetch_table().unwrap().len(), 7, "{who}");
        assert!(
            inspect(&out.join("boot")).matches("\"inode\"").count() == 7,
            "{who}: inspect lists entries"
        );
        tables.push(table);
        listings.push(inspect(&out.join("boot")));
        let out = root.join(format!("{who}-blob"));
        build_with_patterns(&bin, &src, &out, patterns, &["--prefetch-policy", "blob"]);
        assert!(
            v5_prefetch_table(&out.join("boot")).is_empty(),
            "{who}: blob policy"
        );
    }
    assert_eq!(
        tables[0], tables[1],
        "prefetch table bytes, ours then upstream's"
    );
    assert_eq!(listings[0], listings[1], "inspect -R prefetch");
}

/// Bytes no compressor shrinks (xorshift from `seed`): both builders store them as they
/// are, so chunk sizes and offsets agree between them.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `--prefetch-policy blob` gives the blob's head as its readahead range in the v5 blob
/// table, as upstream does: from 0 to the end of the last chunk the covered files stored
/// first (a chunk deduplicated against an earlier one adds nothing); `fs` and no match
/// give 0/0; ours and upstream's `merge` keep it. The files are incompressible:
/// upstream's zstd packs compressible chunks a few hundred bytes smaller than ours, and
/// its uncompressed blobs are packed where ours are 4 KiB aligned, either of which moves
/// the range's end.
#[test]
fn v5_blob_readahead_is_upstreams() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = root.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/r1"), noise(200_000, 1)).unwrap();
    fs::write(src.join("d/r2"), noise(1_500_000, 2)).unwrap();
    fs::write(src.join("dup"), noise(1_500_000, 2)).unwrap();
    fs::write(src.join("a"), noise(100, 3)).unwrap();
    fs::write(src.join("late"), noise(300_000, 4)).unwrap();
    const BLOB: &[&str] = &["--prefetch-policy", "blob"];
    let cases: [(&str, &[&str]); 6] = [
        ("/d\n", BLOB),
        ("/a\n/d/r1\n", BLOB),
        ("/d/r2\n/dup\n", BLOB),
        ("/dup\n/late\n", BLOB),
        ("/nothere\n", BLOB),
        ("/d\n", &["--prefetch-policy", "fs"]),
    ];
    let mut nonzero = 0;
    for (i, (patterns, extra)) in cases.iter().enumerate() {
        let mut ranges = Vec::new();
        for (who, bin) in [
            ("ours", our_bin()),
            ("upstream", upstream_bin("nydus-image")),
        ] {
            let out = root.join(format!("{who}{i}"));
            build_with_patterns(&bin, &src, &out, patterns, extra);
            let image = Image::open(&out.join("boot"), BlobSource::None).unwrap();
            ranges.push(image.blob_readahead(0).unwrap());
        }
        assert_eq!(
            ranges[0], ranges[1],
            "{patterns:?} {extra:?}: ours, upstream's"
        );
        assert_eq!(ranges[0].0, 0);
        nonzero += (ranges[0].1 != 0) as usize;
        // Both merges keep a layer's range.
        for (who, bin) in [
            ("ours", our_bin()),
            ("upstream", upstream_bin("nydus-image")),
        ] {
            let merged = root.join(format!("merged-{who}{i}"));
            run(Command::new(bin)
                .args(["merge", "--log-level", "warn", "--bootstrap"])
                .arg(&merged)
                .arg(root.join(format!("ours{i}/boot"))));
            let image = Image::open(&merged, BlobSource::None).unwrap();
            assert_eq!(
                image.blob_readahead(0),
                Some(ranges[0]),
                "{who} merge, {patterns:?}"
            );
        }
    }
    assert_eq!(nonzero, 4, "the four blob-policy cases that match files");
    // A layer built onto a parent keeps the parent's ranges and gets its own.
    let upper = root.join("upper");
    fs::create_dir_all(&upper).unwrap();
    fs::write(upper.join("n"), noise(50_000, 5)).unwrap();
    let parent = root.join("ours0/boot");
    let mut tables = Vec::new();
    for (who, bin) in [
        ("ours", our_bin()),
        ("upstream", upstream_bin("nydus-image")),
    ] {
        let out = root.join(format!("child-{who}"));
        let parent_arg = parent.to_str().unwrap();
        build_with_patterns(
            &bin,
            &upper,
            &out,
            "/n\n",
            &[
                "--prefetch-policy",
                "blob",
                "--parent-bootstrap",
                parent_arg,
            ],
        );
        let image = Image::open(&out.join("boot"), BlobSource::None).unwrap();
        let table: Vec<_> = (0..image.blobs().len())
            .map(|i| image.blob_readahead(i).unwrap())
            .collect();
        assert_eq!(table.len(), 2, "{who}");
        tables.push(table);
    }
    assert_eq!(tables[0], tables[1], "child layers: ours, upstream's");
    assert_ne!(tables[0][0], (0, 0), "the parent's range is kept");
    assert_ne!(tables[0][1], (0, 0), "the child's own range");
}

/// `merge` writes its inputs' version: v5 layers give a v5 image; a mix of v5 and v6
/// bootstraps is refused before anything is written, by ours as by upstream's.
#[test]
fn merge_keeps_v5_and_refuses_a_mix_of_versions() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = root.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"merge me").unwrap();
    for v in ["5", "6"] {
        let out = root.join(format!("v{v}"));
        fs::create_dir_all(out.join("blobs")).unwrap();
        run(Command::new(our_bin())
            .args(["create", "--log-level", "warn", "--fs-version", v])
            .arg("--bootstrap")
            .arg(out.join("boot"))
            .arg("--blob-dir")
            .arg(out.join("blobs"))
            .arg(&src));
    }
    let (v5, v6) = (root.join("v5/boot"), root.join("v6/boot"));
    for (who, bin) in [
        ("ours", our_bin()),
        ("upstream", upstream_bin("nydus-image")),
    ] {
        let out = root.join(format!("{who}-v5.boot"));
        run(Command::new(&bin)
            .args(["merge", "--log-level", "warn", "--bootstrap"])
            .arg(&out)
            .arg(&v5)
            .arg(&v5));
        let image = Image::open(&out, BlobSource::None).unwrap();
        assert_eq!(image.fs_version(), 5, "{who}: merge of v5 layers");
        for (a, b) in [(&v5, &v6), (&v6, &v5)] {
            let out = root.join(format!("{who}-mix.boot"));
            let o = Command::new(&bin)
                .args(["merge", "--log-level", "warn", "--bootstrap"])
                .arg(&out)
                .arg(a)
                .arg(b)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{who}: merged {a:?} and {b:?}");
            assert!(!out.exists(), "{who}: output left by a refused merge");
            if who == "ours" {
                assert!(err.contains("merged images share one version"), "{err}");
            } else {
                assert!(err.contains("inconsistent RAFS version"), "{err}");
            }
        }
    }
}
