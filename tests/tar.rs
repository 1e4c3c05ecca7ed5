//! Tar layers (`create --type tar-rafs|targz-rafs|estargz-rafs`), as containerd's nydus
//! converter feeds them: the tar through a FIFO, the blob out through another.
//!
//! The tars are GNU tar's (`--format=posix` with xattrs, `--format=gnu`, sparse files
//! with `-S`) of the tree with every entry kind (`common::sample`), and the reference
//! eStargz writer's; each image is compared with the tree GNU tar extracts from the same
//! tar. Upstream 2.2.0 builds the same tree from the same tar, except for its tar reader's
//! quirks, each of which `upstream_quirks_are_exactly_these` pins down: no nanoseconds,
//! no xattr value holding a newline, hard links to symlinks broken, gids of 2^21 and more
//! and negative mtimes in PAX records read as 0, GNU sparse files and GNU-format FIFOs
//! refused, PAX sparse files taken as the raw member. Upstream's `check` and `nydusd` read ours.

mod common {
    pub mod attrs;
    pub mod compare;
    pub mod estargz;
    pub mod fifo;
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
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::compare::{assert_identical, assert_identical_except, Except};
use common::upstream_tree::upstream_tar_safe_tree;
use common::{
    attrs::*,
    estargz::mkestargz,
    fifo::{run_with_fifos, CONVERTER_CREATE},
    files::*,
    nydusd_quirks::nydusd_mount_time,
    ours::our_bin,
    output::text,
    privileged::*,
    sample::*,
    scratch::Scratch,
    upstream::*,
    watchdog::watchdog,
};
use nydus_image::mount::ImageTree;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::{Difference, FsTree};

/// `src` as a GNU tar in `format` (posix: with xattrs in PAX records; gnu: none), sparse
/// files stored sparse when `sparse`.
fn gnu_tar(src: &Path, tar: &Path, format: &str, sparse: bool) {
    let mut cmd = Command::new("tar");
    cmd.arg("--numeric-owner").arg(format!("--format={format}"));
    if format == "posix" {
        // GNU tar keeps xattrs in POSIX archives only.
        cmd.args(["--xattrs", "--xattrs-include=*"]);
    }
    if sparse {
        cmd.arg("-S");
    }
    let o = cmd
        .arg("-cf")
        .arg(tar)
        .arg("-C")
        .arg(src)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "tar: {}", text(&o));
}

/// `tar` as GNU tar extracts it, as root (owners, modes, times, xattrs), into `dir`.
fn extract(tar: &Path, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let o = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "untar: {}", text(&o));
}

/// `tar` gzip-compressed at `out`.
fn gzip(tar: &Path, out: &Path) {
    let o = Command::new("gzip").arg("-c").arg(tar).output().unwrap();
    assert!(o.status.success(), "gzip");
    fs::write(out, o.stdout).unwrap();
}

/// The blob as a file named by its sha256 in `blobs`, where upstream's tools look for it.
fn store_blob(bytes: &[u8], blobs: &Path) -> PathBuf {
    use sha2::Digest;
    fs::create_dir_all(blobs).unwrap();
    let path = blobs.join(hex::encode(sha2::Sha256::digest(bytes)));
    fs::write(&path, bytes).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Our `create` of `tar` with `args` (file in, files out).
fn ours(args: &[&str]) -> Output {
    Command::new(our_bin()).args(args).output().unwrap()
}

/// GNU tars of the tree with every entry kind (POSIX with xattrs, ACLs and sparse files;
/// GNU with long names and base-256 numbers; the POSIX one gzip-compressed) go through
/// FIFOs with the converter's command line, and the image shows the tree GNU tar
/// extracts, to the nanosecond and byte for byte.
#[test]
fn gnu_tars_through_fifos_read_back_as_extracted() {
    let _dog = watchdog("tar layers through FIFOs", 900);
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 100_000_000 + 12345,
            big_dir_entries: 1500,
            depth: 40,
            ..TreeSpec::default()
        },
    );
    // An OCI whiteout, kept as a plain file with --whiteout-spec none.
    write_file(&src.join("hl/.wh.gone"), b"");
    let cases = [
        ("posix", true, "tar-rafs"),
        ("gnu", true, "tar-rafs"),
        ("posix", false, "targz-rafs"),
    ];
    for (format, sparse, kind) in cases {
        let what = format!("{format} tar, sparse {sparse}, {kind}");
        let work = scratch.path().join(format!("{format}-{sparse}-{kind}"));
        fs::create_dir_all(&work).unwrap();
        let tar = work.join("layer.tar");
        gnu_tar(&src, &tar, format, sparse);
        let extracted = work.join("extracted");
        extract(&tar, &extracted);
        let fed = if kind == "targz-rafs" {
            let gz = work.join("layer.tar.gz");
            gzip(&tar, &gz);
            gz
        } else {
            tar.clone()
        };
        let mut args = CONVERTER_CREATE.to_vec();
        args[12] = kind;
        args.push("TAR_FIFO");
        let run = run_with_fifos(&work, &args, &fed, b"/\n");
        assert!(run.output.status.success(), "{what}: {}", text(&run.output));
        let blob = store_blob(&run.blob, &work.join("blobs"));
        let mut image = Image::open_any(&blob, BlobSource::None).expect("open our blob");
        image.validate = true;
        assert_identical(&what, &FsTree::new(&extracted), &ImageTree(&image));
        assert!(image.resolve(b"/hl/.wh.gone").unwrap().is_some(), "{what}");
    }
}

/// A whole eStargz layer from the reference writer, read as a tar.gz: the tree it was
/// made from, without the TOC and landmark entries.
#[test]
fn an_estargz_layer_reads_back_as_its_tree() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 3_000_000,
            big_dir_entries: 300,
            depth: 10,
            ..TreeSpec::default()
        },
    );
    // The reference writer keeps whole seconds; names it cannot carry are left out.
    let mut name255 = vec![b'n'; 254];
    name255.push(0xff);
    use std::os::unix::ffi::OsStrExt;
    fs::remove_file(src.join(std::ffi::OsStr::from_bytes(&name255))).unwrap();
    fs::remove_file(src.join(std::ffi::OsStr::from_bytes(b"bad-\xc3\x28-utf8"))).unwrap();
    whole_second_mtimes(&src);
    let tar = scratch.path().join("layer.tar");
    gnu_tar(&src, &tar, "posix", false);
    let extracted = scratch.path().join("extracted");
    extract(&tar, &extracted);
    let layer = scratch.path().join("layer.stargz");
    let o = Command::new(mkestargz())
        .arg(&tar)
        .arg(&layer)
        .arg(scratch.path().join("toc.json"))
        .arg("100000")
        .output()
        .unwrap();
    assert!(o.status.success(), "mkestargz: {}", text(&o));
    let (boot, blob) = (scratch.path().join("boot"), scratch.path().join("blob"));
    let o = ours(&[
        "create",
        "-l",
        "warn",
        "--type",
        "estargz-rafs",
        "-B",
        s(&boot),
        "--blob",
        s(&blob),
        s(&layer),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut image = Image::open(&boot, BlobSource::Files(vec![blob.clone()])).unwrap();
    image.validate = true;
    assert_identical(
        "eStargz layer",
        &FsTree::new(&extracted),
        &ImageTree(&image),
    );
    for name in [
        "/stargz.index.json",
        "/.prefetch.landmark",
        "/.no.prefetch.landmark",
    ] {
        assert!(image.resolve(name.as_bytes()).unwrap().is_none(), "{name}");
    }
}

/// Upstream 2.2.0 builds the same tree as ours from the same tar (POSIX and GNU formats,
/// directories the tar leaves out included), and both show the tree GNU tar extracts.
#[test]
fn upstream_builds_the_same_tree_from_the_same_tar() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    upstream_tar_safe_tree(&src);
    for format in ["posix", "gnu"] {
        if format == "gnu" {
            // Upstream refuses a FIFO in a GNU-format tar (upstream_quirks_are_exactly_these).
            fs::remove_file(src.join("fifo")).unwrap();
        }
        let work = scratch.path().join(format);
        fs::create_dir_all(&work).unwrap();
        let tar = work.join("layer.tar");
        gnu_tar(&src, &tar, format, false);
        let extracted = work.join("extracted");
        extract(&tar, &extracted);
        let (theirs, mine) = (
            build_both(&tar, &work.join("up")),
            build_both_ours(&tar, &work),
        );
        assert_identical(format, &FsTree::new(&extracted), &ImageTree(&mine));
        assert_identical(format, &ImageTree(&theirs), &ImageTree(&mine));
    }
    // Members without their directories: both make them 0755, 0:0, mtime 0.
    let partial = scratch.path().join("partial.tar");
    let o = Command::new("tar")
        .args(["--format=posix", "-cf"])
        .arg(&partial)
        .arg("-C")
        .arg(&src)
        .args([
            "./hl/second-link",
            "./deep/d0/d1/d2/d3/d4/d5/d6/d7/d8/d9/d10/d11/d12/d13/d14/d15/f",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let work = scratch.path().join("partial");
    let (theirs, mine) = (
        build_both(&partial, &work.join("up")),
        build_both_ours(&partial, &work),
    );
    assert_identical(
        "implied directories",
        &ImageTree(&theirs),
        &ImageTree(&mine),
    );
    let st = mine
        .stat(mine.resolve(b"/deep/d0").unwrap().unwrap())
        .unwrap();
    assert_eq!(
        (st.mode, st.uid, st.gid, st.mtime),
        (libc::S_IFDIR | 0o755, 0, 0, 0)
    );
}

/// Upstream's image of `tar` (bootstrap and blob directory under `work`).
fn build_both(tar: &Path, work: &Path) -> Image {
    let blobs = work.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let boot = work.join("boot");
    let o = Command::new(upstream_bin("nydus-image"))
        .args([
            "create",
            "-l",
            "warn",
            "--type",
            "tar-rafs",
            "-B",
            s(&boot),
            "-D",
            s(&blobs),
        ])
        .arg(tar)
        .output()
        .unwrap();
    assert!(o.status.success(), "upstream create: {}", text(&o));
    let mut image = Image::open(&boot, BlobSource::Dir(blobs)).unwrap();
    image.validate = true;
    image
}

/// Our image of `tar` (bootstrap and blob directory under `work/ours`).
fn build_both_ours(tar: &Path, work: &Path) -> Image {
    let work = work.join("ours");
    let blobs = work.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let boot = work.join("boot");
    let o = ours(&[
        "create",
        "-l",
        "warn",
        "--type",
        "tar-rafs",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        s(tar),
    ]);
    assert!(o.status.success(), "create: {}", text(&o));
    let mut image = Image::open(&boot, BlobSource::Dir(blobs)).unwrap();
    image.validate = true;
    image
}

/// What upstream 2.2.0's tar reader (tar-rs 0.4.38, its own code in
/// `builder/tarball.rs`) does with a tar that ours reads as GNU tar extracts it.
enum Quirk {
    /// Its build fails, saying this.
    Refused(&'static str),
    /// Its image differs from ours in exactly these (path, attribute) pairs.
    Differs(&'static [(&'static str, &'static str)]),
    /// Its image differs from ours only under these paths (entries renamed).
    Renamed(&'static [&'static str]),
    /// It builds, and its own `check` refuses what it built.
    CheckFails,
}

/// Each of upstream's quirks on one small tree, against ours on the same tar.
#[test]
fn upstream_quirks_are_exactly_these() {
    type Setup = fn(&Path);
    let cases: [(&str, &str, bool, Setup, Quirk); 8] = [
        (
            "nanoseconds",
            "posix",
            false,
            |r| set_mtime(&r.join("f"), 1_700_000_000, 123_456_789),
            Quirk::Differs(&[("/f", "mtime")]),
        ),
        (
            "an xattr value holding a newline",
            "posix",
            false,
            |r| set_xattr(&r.join("f"), "user.nl", b"a\nb"),
            Quirk::Refused("malformed pax extension"),
        ),
        (
            "a gid of 2^21",
            "posix",
            false,
            |r| lchown(&r.join("f"), 7, 2_097_152),
            Quirk::Differs(&[("/f", "gid")]),
        ),
        // (In GNU format, base-256, upstream reads a negative mtime right.)
        (
            "a negative mtime, PAX",
            "posix",
            false,
            |r| set_mtime(&r.join("f"), -86_400, 0),
            Quirk::Differs(&[("/f", "mtime")]),
        ),
        (
            "a GNU sparse file",
            "gnu",
            true,
            sparse_file,
            Quirk::Refused("unsupported gnu sparse file extension"),
        ),
        (
            "a PAX sparse file",
            "posix",
            true,
            sparse_file,
            Quirk::Renamed(&["/sparse", "/GNUSparseFile"]),
        ),
        (
            "a FIFO in a GNU tar (whose device fields GNU tar leaves empty)",
            "gnu",
            false,
            |r| mknod(&r.join("pipe"), libc::S_IFIFO | 0o644, 0, 0),
            Quirk::Refused("failed to get device major from tar entry"),
        ),
        (
            "a hard link to a symlink",
            "posix",
            false,
            |r| {
                std::os::unix::fs::symlink("f", r.join("link")).unwrap();
                fs::hard_link(r.join("link"), r.join("hard")).unwrap();
            },
            Quirk::CheckFails,
        ),
    ];
    let scratch = Scratch::new();
    for (i, (what, format, sparse, setup, quirk)) in cases.into_iter().enumerate() {
        let work = scratch.path().join(format!("case{i}"));
        let src = work.join("src");
        fs::create_dir_all(&src).unwrap();
        write_file(&src.join("f"), &data(200_000, i as u64));
        set_mtime(&src.join("f"), 1_650_000_000, 0); // the quirk at hand only
        setup(&src);
        set_mtime(&src, 1_600_000_000, 0);
        let tar = work.join("layer.tar");
        gnu_tar(&src, &tar, format, sparse);
        let extracted = work.join("extracted");
        extract(&tar, &extracted);
        let mine = build_both_ours(&tar, &work);
        assert_identical(what, &FsTree::new(&extracted), &ImageTree(&mine));

        let up = work.join("up");
        let blobs = up.join("blobs");
        fs::create_dir_all(&blobs).unwrap();
        let boot = up.join("boot");
        let o = Command::new(upstream_bin("nydus-image"))
            .args([
                "create",
                "-l",
                "warn",
                "--type",
                "tar-rafs",
                "-B",
                s(&boot),
                "-D",
                s(&blobs),
            ])
            .arg(&tar)
            .output()
            .unwrap();
        if let Quirk::Refused(says) = quirk {
            assert!(!o.status.success(), "{what}: upstream built it");
            assert!(text(&o).contains(says), "{what}: {}", text(&o));
            continue;
        }
        assert!(o.status.success(), "{what}: upstream create: {}", text(&o));
        if let Quirk::CheckFails = quirk {
            let o = Command::new(upstream_bin("nydus-image"))
                .args(["check", "--bootstrap", s(&boot), "-D", s(&blobs)])
                .output()
                .unwrap();
            assert!(!o.status.success(), "{what}: upstream's check took it");
            continue;
        }
        let theirs = Image::open(&boot, BlobSource::Dir(blobs)).unwrap();
        let accepted = |d: &Difference| match &quirk {
            Quirk::Differs(pairs) => pairs.iter().any(|(p, a)| d.path == *p && d.attribute == *a),
            Quirk::Renamed(prefixes) => prefixes.iter().any(|p| d.path.starts_with(p)),
            _ => false,
        };
        let report = compare_all(&ImageTree(&mine), &ImageTree(&theirs));
        let seen: Vec<&Difference> = report.iter().filter(|d| accepted(d)).collect();
        assert!(
            !seen.is_empty(),
            "{what}: upstream no longer differs: the quirk is gone"
        );
        assert_identical_except(
            what,
            &ImageTree(&mine),
            &ImageTree(&theirs),
            Except {
                differences: Some(&accepted),
                ..Except::default()
            },
        );
    }
}

/// Every difference between two trees.
fn compare_all(a: &dyn nydus_verify::Tree, b: &dyn nydus_verify::Tree) -> Vec<Difference> {
    nydus_verify::compare(a, b).unwrap().differences
}

/// A sparse file: holes around two islands of data.
fn sparse_file(root: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::File::create(root.join("sparse")).unwrap();
    f.seek(SeekFrom::Start(3_000_000)).unwrap();
    f.write_all(&data(10_000, 1)).unwrap();
    f.set_len(9_000_000).unwrap();
}

/// The converter's exact command line (with a chunk dictionary, a compressor and a chunk
/// size) through FIFOs: upstream's `check` and `nydusd` take the blob, nydusd shows the
/// tree GNU tar extracts, and the dictionary's chunks are referenced, not stored.
#[test]
fn the_converter_command_line_runs_and_upstream_reads_the_result() {
    let _dog = watchdog("converter command line", 600);
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    // No ACLs: upstream 2.2.0's check refuses them (tests/upstream.rs).
    make_tree(
        &src,
        &TreeSpec {
            acls: false,
            sparse_size: 20_000_000,
            big_dir_entries: 500,
            depth: 30,
            ..TreeSpec::default()
        },
    );
    let tar = scratch.path().join("layer.tar");
    gnu_tar(&src, &tar, "posix", true);
    let extracted = scratch.path().join("extracted");
    extract(&tar, &extracted);
    // The dictionary: an image holding one of the tree's files.
    let blobs = scratch.path().join("blobs");
    let dict_src = scratch.path().join("dict-src");
    fs::create_dir_all(&dict_src).unwrap();
    fs::copy(src.join("3cs+7"), dict_src.join("shared")).unwrap();
    let dict = scratch.path().join("dict.boot");
    fs::create_dir_all(&blobs).unwrap();
    let o = ours(&[
        "create",
        "-l",
        "warn",
        "-B",
        s(&dict),
        "-D",
        s(&blobs),
        s(&dict_src),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let dict_arg = format!("bootstrap={}", s(&dict));
    let mut args = CONVERTER_CREATE.to_vec();
    args.extend([
        "--chunk-dict",
        &dict_arg,
        "--compressor",
        "zstd",
        "--chunk-size",
        "0x100000",
        "TAR_FIFO",
    ]);
    let run = run_with_fifos(scratch.path(), &args, &tar, b"/\n");
    assert!(run.output.status.success(), "{}", text(&run.output));
    let said = String::from_utf8_lossy(&run.output.stdout);
    assert!(said.contains("chunk dictionary: 4 chunks"), "{said}");
    let blob = store_blob(&run.blob, &blobs);

    let o = Command::new(upstream_bin("nydus-image"))
        .args(["check", "--bootstrap", s(&blob), "-D", s(&blobs)])
        .output()
        .unwrap();
    assert!(o.status.success(), "upstream check: {}", text(&o));
    let daemon = Nydusd::mount(&blob, &blobs, &scratch.path().join("nydusd"));
    // nydusd shows the mount time for an mtime of 0 (tests/common/nydusd_quirks.rs).
    assert_identical_except(
        "nydusd",
        &FsTree::new(&extracted),
        &FsTree::new(&daemon.mnt),
        Except {
            differences: Some(&nydusd_mount_time),
            ..Except::default()
        },
    );
    drop(daemon);
    let mut image = Image::open_any(&blob, BlobSource::Dir(blobs.clone())).unwrap();
    image.validate = true;
    assert_identical("ours", &FsTree::new(&extracted), &ImageTree(&image));
}

/// A bad tar: the build fails naming the entry and its offset in the tar stream, and
/// leaves nothing at the output paths.
#[test]
fn bad_tars_are_refused_naming_the_entry_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_file(&src.join("a"), &data(1000, 1));
    write_file(&src.join("b"), &data(300_000, 2));
    let good = tmp.path().join("good.tar");
    let o = Command::new("tar")
        .args(["--format=posix", "--numeric-owner", "-cf"])
        .arg(&good)
        .arg("-C")
        .arg(&src)
        .args(["a", "b"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let bytes = fs::read(&good).unwrap();
    // GNU tar's POSIX layout here: a's PAX header at 0, a at 1024, b's PAX header at 2560,
    // b at 3584, b's data from 4096.
    let header_of = |name: &str| {
        (0..bytes.len())
            .step_by(512)
            .find(|&at| bytes[at..at + 100].starts_with(name.as_bytes()) && bytes[at + 156] == b'0')
            .unwrap()
    };
    let b_at = header_of("b");
    let mut bad_sum = bytes.clone();
    bad_sum[b_at + 10] ^= 0x20;
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
        e.write_all(&bytes).unwrap();
        e.finish().unwrap();
    }
    let mid = gz.len() / 2;
    for b in &mut gz[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let truncated_at = b_at + 512 + 100_000;
    type Case = (&'static str, Vec<u8>, &'static str, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            "truncated",
            bytes[..truncated_at].to_vec(),
            "tar-rafs",
            vec![
                format!("entry \"b\" (header at byte {b_at})"),
                format!("ends at byte {truncated_at}"),
            ],
        ),
        (
            "bad checksum",
            bad_sum,
            "tar-rafs",
            vec![format!("tar header at byte {b_at}"), "checksum".into()],
        ),
        (
            "corrupt gzip",
            gz,
            "targz-rafs",
            vec!["cannot read byte".into(), "compressed bytes read".into()],
        ),
        (
            "hard link to nothing",
            crafted(&[("x", b'0', b"xx", ""), ("h", b'1', b"", "gone")]),
            "tar-rafs",
            vec![
                "entry \"h\" (header at byte 1024)".into(),
                "\"gone\", which no earlier entry".into(),
            ],
        ),
        (
            "PAX size past the end",
            crafted_pax_size(),
            "tar-rafs",
            vec![
                "entry \"big\" (header at byte 1024)".into(),
                "short of the entry's data".into(),
            ],
        ),
        (
            "a '..' name",
            crafted(&[("ok", b'0', b"1", ""), ("d/../../escape", b'0', b"2", "")]),
            "tar-rafs",
            vec![
                "entry \"d/../../escape\" (header at byte 1024)".into(),
                "'..'".into(),
            ],
        ),
    ];
    for (what, tar_bytes, kind, expect) in cases {
        let tar = tmp.path().join(format!("{what}.tar"));
        fs::write(&tar, &tar_bytes).unwrap();
        let out = tmp.path().join(format!("out-{what}"));
        fs::create_dir_all(&out).unwrap();
        for inline in [false, true] {
            let (boot, blob) = (out.join("boot"), out.join("blob"));
            let mut args = vec!["create", "-l", "warn", "--type", kind, "--blob", s(&blob)];
            if inline {
                args.extend(["--blob-inline-meta", "--features", "blob-toc"]);
            } else {
                args.extend(["-B", s(&boot)]);
            }
            args.push(s(&tar));
            let o = ours(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
            assert!(err.contains(s(&tar)), "{what}: {err}");
            for e in &expect {
                assert!(err.contains(e.as_str()), "{what}: {err:?} lacks {e:?}");
            }
            assert_eq!(
                fs::read_dir(&out).unwrap().count(),
                0,
                "{what}: output left behind"
            );
        }
    }
    // Through FIFOs too: the build fails and the reader of the blob FIFO sees it end.
    let tar = tmp.path().join("truncated.tar");
    let mut args = CONVERTER_CREATE.to_vec();
    args.push("TAR_FIFO");
    let run = run_with_fifos(tmp.path(), &args, &tar, b"/\n");
    assert_eq!(run.output.status.code(), Some(1), "{}", text(&run.output));
    assert!(String::from_utf8_lossy(&run.output.stderr).contains("entry \"b\""));
}

/// A ustar archive of `(name, type, data, link target)` members, made header by header
/// (GNU tar makes neither a dangling hard link nor a `..` name).
fn crafted(members: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, typ, data, link) in members {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::new(*typ));
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_000);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// A member whose PAX `size` runs past the end of the stream.
fn crafted_pax_size() -> Vec<u8> {
    let record = b"16 size=9999999\n";
    let mut out = crafted(&[("PaxHeaders/big", b'x', record, "")]);
    out.truncate(1024); // the header and its data, without the end of the archive
    out.extend(crafted(&[("big", b'0', b"tiny", "")]));
    out
}

/// A tar layer over a parent image gives the image a directory layer gives: OCI and
/// overlayfs whiteouts (and opaque directories) remove what they name below, hard links
/// and new files land, and both build the same tree from the same layer.
#[test]
fn a_tar_layer_over_a_parent_is_the_directory_layer() {
    let scratch = Scratch::new();
    let lower = scratch.path().join("lower");
    for dir in ["d", "other"] {
        fs::create_dir_all(lower.join(dir)).unwrap();
    }
    for (name, len) in [
        ("gone", 5000),
        ("keep", 300_000),
        ("d/old", 70),
        ("d/old2", 2_000_000),
        ("other/x", 10),
    ] {
        write_file(&lower.join(name), &data(len, len as u64));
    }
    let blobs = scratch.path().join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let parent = scratch.path().join("parent.boot");
    let o = ours(&[
        "create",
        "-l",
        "warn",
        "-B",
        s(&parent),
        "-D",
        s(&blobs),
        s(&lower),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for spec in ["oci", "overlayfs"] {
        let upper = scratch.path().join(format!("upper-{spec}"));
        fs::create_dir_all(upper.join("d")).unwrap();
        write_file(&upper.join("keep"), b"changed");
        write_file(&upper.join("d/new"), &data(1_500_000, 3));
        fs::hard_link(upper.join("d/new"), upper.join("new-link")).unwrap();
        if spec == "oci" {
            write_file(&upper.join(".wh.gone"), b"");
            write_file(&upper.join("d/.wh..wh..opq"), b"");
        } else {
            mknod(&upper.join("gone"), libc::S_IFCHR | 0o600, 0, 0);
            set_xattr(&upper.join("d"), "trusted.overlay.opaque", b"y");
        }
        set_mtime(&upper.join("d"), 1_700_000_000, 1);
        let tar = scratch.path().join(format!("upper-{spec}.tar"));
        gnu_tar(&upper, &tar, "posix", false);
        let (from_tar, from_dir) = (
            scratch.path().join(format!("tar-{spec}.boot")),
            scratch.path().join(format!("dir-{spec}.boot")),
        );
        for (boot, kind, source) in [
            (&from_tar, "tar-rafs", &tar),
            (&from_dir, "dir-rafs", &upper),
        ] {
            let o = ours(&[
                "create",
                "-l",
                "warn",
                "--type",
                kind,
                "--whiteout-spec",
                spec,
                "--parent-bootstrap",
                s(&parent),
                "-B",
                s(boot),
                "-D",
                s(&blobs),
                s(source),
            ]);
            assert!(o.status.success(), "{spec} {kind}: {}", text(&o));
        }
        let open = |boot: &Path| {
            let mut image = Image::open(boot, BlobSource::Dir(blobs.clone())).unwrap();
            image.validate = true;
            image
        };
        let (tar_image, dir_image) = (open(&from_tar), open(&from_dir));
        assert_identical(spec, &ImageTree(&dir_image), &ImageTree(&tar_image));
        for (path, present) in [
            ("/gone", false),
            ("/d/old", false),
            ("/d/new", true),
            ("/other/x", true),
        ] {
            let found = tar_image.resolve(path.as_bytes()).unwrap().is_some();
            assert_eq!(found, present, "{spec}: {path}");
        }
    }
}
