//! Images from real eStargz layers (`create --type stargz_index`).
//!
//! The layers come from the reference implementation, never from our code: the containerd
//! stargz library (Debian's golang-github-containerd-stargz-snapshotter-dev), driven by
//! `tests/estargz/main.go`, which the tests build with Debian's Go (GOPATH at Debian's Go
//! sources, GO111MODULE=off). Source trees are tarred by GNU tar with xattrs (ACLs ride
//! along as `system.posix_acl_*` xattrs), converted, built with the seed command (TOC and
//! blob id only), mounted, and verified against the original tree.
//!
//! What an eStargz layer cannot carry, and the tests therefore leave out of the source:
//! - sockets (tar skips them);
//! - names that are not UTF-8 (the TOC is JSON: Go writes U+FFFD for such bytes);
//! - sub-second modification times (the TOC holds whole seconds, rounded): the
//!   comparison uses `--mtime-seconds`.

mod common {
    pub mod attrs;
    pub mod compare;
    pub mod estargz;
    pub mod files;
    pub mod nydusd_quirks;
    pub mod ours;
    pub mod output;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
    pub mod upstream;
}

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::compare::{assert_identical_except, Except};
use common::nydusd_quirks::nydusd_mount_time;
use common::{
    estargz::mkestargz, files::*, ours::*, output::*, sample::*, scratch::Scratch, upstream::Nydusd,
};
use nydus_image::mount::BackgroundMount;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::FsTree;

/// An eStargz layer made from a directory.
struct Layer {
    file: PathBuf,
    toc: PathBuf,
    digest: String,
}

/// Tars `src` (with xattrs) and converts it; `chunk` is the eStargz chunk size (None:
/// the library's default, 4 MiB).
fn make_layer(src: &Path, work: &Path, name: &str, chunk: Option<usize>) -> Layer {
    fs::create_dir_all(work).unwrap();
    let tar = work.join(format!("{name}.tar"));
    let status = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--format=posix",
            "--numeric-owner",
            "-C",
        ])
        .arg(src)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar of {}", src.display());
    let file = work.join(format!("{name}.stargz"));
    let toc = work.join(format!("{name}.toc.json"));
    let mut cmd = Command::new(mkestargz());
    cmd.arg(&tar).arg(&file).arg(&toc);
    if let Some(c) = chunk {
        cmd.arg(c.to_string());
    }
    let o = cmd.output().expect("run mkestargz");
    assert!(
        o.status.success(),
        "mkestargz: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let digest = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(digest.len(), 64, "digest {digest:?}");
    Layer { file, toc, digest }
}

/// Copies the layer into `blobs`, named by its digest, as a mount expects it.
fn stage(layer: &Layer, blobs: &Path) {
    fs::create_dir_all(blobs).unwrap();
    fs::copy(&layer.file, blobs.join(&layer.digest)).unwrap();
}

fn ours(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(our_bin())
        .args(args)
        .output()
        .expect("run nydus-image")
}

/// The seed command: TOC and blob id, nothing else.
fn build_seed(layer: &Layer, boot: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["create".as_ref(), "--log-level".as_ref(), "warn".as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.extend([
        "--source-type".as_ref(),
        "stargz_index".as_ref(),
        "--bootstrap".as_ref(),
        boot.as_os_str(),
        "--blob-id".as_ref(),
        layer.digest.as_ref(),
        layer.toc.as_os_str(),
    ]);
    ours(&args)
}

fn verify(boot: &Path, blobs: &Path, via: &str, sources: &[&Path]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "verify".as_ref(),
        "--mtime-seconds".as_ref(),
        "--via".as_ref(),
        via.as_ref(),
        "--bootstrap".as_ref(),
        boot.as_os_str(),
        "--blob-dir".as_ref(),
        blobs.as_os_str(),
    ];
    args.extend(sources.iter().map(|s| s.as_os_str()));
    ours(&args)
}

/// `make_tree` without what a layer cannot carry (see the top of this file).
fn layer_tree(root: &Path, spec: &TreeSpec) {
    make_tree(root, spec);
    fs::remove_file(root.join("sock")).unwrap();
    for entry in fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_str().is_none() {
            fs::remove_file(entry.path()).unwrap();
        }
    }
}

fn small_spec(chunk: usize) -> TreeSpec {
    TreeSpec {
        sparse_size: 3 * chunk as u64 + 4321,
        big_dir_entries: 1500,
        chunk_size: chunk,
        ..TreeSpec::default()
    }
}

#[test]
fn every_entry_kind_from_a_real_estargz_layer() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    let chunk = 0x10000;
    layer_tree(&src, &small_spec(chunk));
    let layer = make_layer(&src, &scratch.path().join("work"), "l", Some(chunk));
    let boot = scratch.path().join("boot");
    let o = build_seed(&layer, &boot, &[]);
    assert!(o.status.success(), "seed build: {}", text(&o));
    let blobs = scratch.path().join("blobs");
    stage(&layer, &blobs);

    // Only the bootstrap appeared; the blob directory holds just the layer.
    assert!(boot.is_file());
    assert_eq!(fs::read_dir(&blobs).unwrap().count(), 1);

    for via in ["fuse", "library"] {
        let o = verify(&boot, &blobs, via, &[&src]);
        assert_eq!(o.status.code(), Some(0), "verify via {via}: {}", text(&o));
    }
    // Every chunk decompresses to the TOC's sha256.
    let o = ours(&[
        "check".as_ref(),
        "--blob-dir".as_ref(),
        blobs.as_os_str(),
        boot.as_os_str(),
    ]);
    assert!(o.status.success(), "check: {}", text(&o));

    // Files split into several eStargz chunks keep them: one RAFS chunk per TOC chunk.
    let image = Image::open(&boot, BlobSource::Dir(blobs.clone())).unwrap();
    let nid = image.resolve(b"/3cs+7").unwrap().expect("file present");
    assert_eq!(image.chunk_addrs(nid).unwrap().len(), 4);
    assert_eq!(image.super_block().chunk_size, chunk as u32);

    // create --verify does build + mount + compare in one step.
    let o = ours(&[
        "create".as_ref(),
        "-t".as_ref(),
        "stargz_index".as_ref(),
        "--bootstrap".as_ref(),
        scratch.path().join("boot2").as_os_str(),
        "--blob-id".as_ref(),
        layer.digest.as_ref(),
        "--blob-dir".as_ref(),
        blobs.as_os_str(),
        "--verify".as_ref(),
        "--verify-against".as_ref(),
        src.as_os_str(),
        layer.toc.as_os_str(),
    ]);
    assert!(o.status.success(), "create --verify: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 difference(s)"));
    // Same TOC, same bootstrap, whether or not the layer was at hand.
    assert_eq!(
        fs::read(&boot).unwrap(),
        fs::read(scratch.path().join("boot2")).unwrap()
    );

    // The verifier is not blind here: a changed byte in the source is a difference.
    let victim = src.join("cs+1");
    let mut data = fs::read(&victim).unwrap();
    data[chunk] ^= 1;
    fs::write(&victim, data).unwrap();
    let o = verify(&boot, &blobs, "library", &[&src]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "verify after a change: {}",
        text(&o)
    );
}

#[test]
fn default_chunk_size_and_big_files() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    // 4 MiB chunks: a file of 2 chunks + 5 bytes, one of exactly a chunk, compressible
    // and incompressible data, and a file right below a gzip block boundary.
    write_file(&src.join("d/big"), &data(2 * (4 << 20) + 5, 1));
    write_file(&src.join("exact"), &data(4 << 20, 2));
    write_file(&src.join("zeros"), &vec![0u8; 9 << 20]);
    write_file(&src.join("small"), b"small");
    write_file(&src.join("odd"), &data(65535, 3));
    let layer = make_layer(&src, &scratch.path().join("work"), "l", None);
    let boot = scratch.path().join("boot");
    let o = build_seed(&layer, &boot, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let blobs = scratch.path().join("blobs");
    stage(&layer, &blobs);
    let image = Image::open(&boot, BlobSource::Dir(blobs.clone())).unwrap();
    assert_eq!(image.super_block().chunk_size, 4 << 20);
    let o = verify(&boot, &blobs, "fuse", &[&src]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // A --blob-data-size that understates the layer leaves the last chunk's recorded
    // size too small to inflate it: the reader reads on and still serves the data.
    let one = scratch.path().join("one");
    fs::create_dir_all(&one).unwrap();
    write_file(&one.join("random"), &data(300_000, 4));
    let layer = make_layer(&one, &scratch.path().join("work"), "one", None);
    stage(&layer, &blobs);
    let toc: serde_json::Value = serde_json::from_slice(&fs::read(&layer.toc).unwrap()).unwrap();
    let last = entry_named(&mut toc.clone(), "./random")["offset"]
        .as_u64()
        .unwrap();
    let short = format!("{:x}", last + 40);
    let boot = scratch.path().join("boot-short");
    let o = build_seed(&layer, &boot, &["--blob-data-size", &short]);
    assert!(o.status.success(), "{}", text(&o));
    let image = Image::open(&boot, BlobSource::Dir(blobs.clone())).unwrap();
    let nid = image.resolve(b"/random").unwrap().unwrap();
    let addr = image.chunk_addrs(nid).unwrap()[0].unwrap();
    let info = image.chunk_info(addr.blob(), addr.chunk()).unwrap();
    assert_eq!(info.compressed_size, 40);
    let o = verify(&boot, &blobs, "library", &[&one]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn layered_pair_with_whiteouts() {
    let scratch = Scratch::new();
    let lower = scratch.path().join("lower");
    let upper = scratch.path().join("upper");
    for d in ["keep", "opaque", "gone-dir"] {
        fs::create_dir_all(lower.join(d)).unwrap();
    }
    write_file(&lower.join("keep/a"), b"lower a");
    write_file(&lower.join("keep/b"), &data(300_000, 1));
    write_file(&lower.join("opaque/old"), b"hidden by the opaque marker");
    write_file(&lower.join("gone-dir/x"), b"removed with its dir");
    write_file(&lower.join("gone-file"), b"removed");
    write_file(&lower.join("replaced"), b"a file, then a directory");
    fs::hard_link(lower.join("keep/a"), lower.join("keep/a-link")).unwrap();

    fs::create_dir_all(upper.join("keep")).unwrap();
    fs::create_dir_all(upper.join("opaque")).unwrap();
    fs::create_dir_all(upper.join("replaced")).unwrap();
    write_file(&upper.join("keep/b"), &data(200_000, 2));
    write_file(&upper.join("keep/new"), b"new in upper");
    write_file(&upper.join("opaque/.wh..wh..opq"), b"");
    write_file(&upper.join("opaque/fresh"), b"only this is visible");
    write_file(&upper.join(".wh.gone-dir"), b"");
    write_file(&upper.join(".wh.gone-file"), b"");
    write_file(&upper.join("replaced/inside"), b"now a directory");

    let work = scratch.path().join("work");
    let l1 = make_layer(&lower, &work, "lower", Some(0x10000));
    let l2 = make_layer(&upper, &work, "upper", Some(0x10000));
    let blobs = scratch.path().join("blobs");
    stage(&l1, &blobs);
    stage(&l2, &blobs);
    let boot1 = scratch.path().join("boot1");
    let boot2 = scratch.path().join("boot2");
    let o = build_seed(&l1, &boot1, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let parent = boot1.to_str().unwrap();
    let o = build_seed(&l2, &boot2, &["--parent-bootstrap", parent]);
    assert!(o.status.success(), "{}", text(&o));

    let image = Image::open(&boot2, BlobSource::Dir(blobs.clone())).unwrap();
    let ids: Vec<&str> = image.blobs().iter().map(|b| b.blob_id.as_str()).collect();
    assert_eq!(ids, [l1.digest.as_str(), l2.digest.as_str()]);
    for gone in [
        &b"/gone-file"[..],
        b"/gone-dir",
        b"/opaque/old",
        b"/opaque/.wh..wh..opq",
    ] {
        assert_eq!(
            image.resolve(gone).unwrap(),
            None,
            "{}",
            String::from_utf8_lossy(gone)
        );
    }
    for via in ["fuse", "library"] {
        let o = verify(&boot2, &blobs, via, &[&lower, &upper]);
        assert_eq!(o.status.code(), Some(0), "verify via {via}: {}", text(&o));
    }
}

#[test]
fn upstream_nydusd_shows_the_same_tree() {
    // nydusd 2.2.0 takes a v6 image's chunk information only from a blob's chunk-info
    // array (blob meta), which an eStargz layer does not have: its metadata is served,
    // file reads fail. So the tree is compared, file contents are not.
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    layer_tree(&src, &small_spec(0x10000));
    let layer = make_layer(&src, &scratch.path().join("work"), "l", Some(0x10000));
    let boot = scratch.path().join("boot");
    let o = build_seed(&layer, &boot, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let blobs = scratch.path().join("blobs");
    stage(&layer, &blobs);

    let mnt = scratch.path().join("ours");
    fs::create_dir_all(&mnt).unwrap();
    let image = Image::open(&boot, BlobSource::Dir(blobs.clone())).unwrap();
    let mount = BackgroundMount::start(image, &mnt, 2).expect("FUSE mount");
    let nydusd = Nydusd::mount(&boot, &blobs, &scratch.path().join("up"));
    // nydusd shows the mount time for an mtime of exactly 0 (see tests/upstream.rs).
    let report = assert_identical_except(
        "our mount vs nydusd",
        &FsTree::new(&mnt),
        &FsTree::new(&nydusd.mnt),
        Except {
            content: true,
            differences: Some(&nydusd_mount_time),
        },
    );
    drop(nydusd);
    mount.stop().unwrap();
    assert!(
        report.entries_compared > 1500,
        "compared {} entries",
        report.entries_compared
    );
}

/// A TOC edited by `edit`, built with the seed command (plus `extra`): must fail, name
/// `expect` in its message, and leave nothing at the bootstrap path.
fn assert_refused(
    scratch: &Path,
    layer: &Layer,
    case: &str,
    edit: impl Fn(&mut serde_json::Value),
    extra: &[&str],
    expect: &str,
) {
    let mut toc: serde_json::Value =
        serde_json::from_slice(&fs::read(&layer.toc).unwrap()).unwrap();
    edit(&mut toc);
    let bad = Layer {
        file: layer.file.clone(),
        toc: scratch.join(format!("{case}.json")),
        digest: layer.digest.clone(),
    };
    fs::write(&bad.toc, serde_json::to_vec(&toc).unwrap()).unwrap();
    let boot = scratch.join(format!("{case}.boot"));
    let o = build_seed(&bad, &boot, extra);
    assert!(!o.status.success(), "{case}: accepted\n{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(expect),
        "{case}: message lacks {expect:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{case}: {err}");
    assert!(!boot.exists(), "{case}: a bootstrap was left behind");
    let leftovers: Vec<_> = fs::read_dir(scratch)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{case}: temporary files left: {leftovers:?}"
    );
}

/// A change to a TOC.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

fn entry_named<'a>(toc: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    toc["entries"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no entry {name}"))
}

#[test]
fn bad_tocs_are_refused_with_the_entry_named() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    write_file(&src.join("dir/file"), &data(200_000, 1));
    write_file(&src.join("other"), b"other");
    let layer = make_layer(&src, &scratch.path().join("work"), "l", Some(0x10000));
    let blobs = scratch.path().join("blobs");
    stage(&layer, &blobs);
    let out = scratch.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let dir = blobs.to_str().unwrap();

    let cases: Vec<(&str, Edit, Vec<&str>, &str)> = vec![
        (
            "version",
            Box::new(|t| t["version"] = 2.into()),
            vec![],
            "version 2",
        ),
        (
            "type",
            Box::new(|t| entry_named(t, "./other")["type"] = "whiteout".into()),
            vec![],
            "unknown entry type \"whiteout\"",
        ),
        (
            "dotdot",
            Box::new(|t| entry_named(t, "./other")["name"] = "./dir/../../etc/passwd".into()),
            vec![],
            "\"..\" path component",
        ),
        (
            "absolute",
            Box::new(|t| entry_named(t, "./other")["name"] = "/etc/passwd".into()),
            vec![],
            "absolute names",
        ),
        (
            "hardlink",
            Box::new(|t| {
                let e = entry_named(t, "./other");
                e["type"] = "hardlink".into();
                e["linkName"] = "./nowhere".into();
            }),
            vec![],
            "hard link to \"./nowhere\"",
        ),
        (
            "beyond",
            Box::new(|t| entry_named(t, "./other")["offset"] = (1u64 << 40).into()),
            vec!["--blob-dir", dir],
            "\"./other\"",
        ),
        (
            "digest",
            Box::new(|t| {
                entry_named(t, "./other")["chunkDigest"] =
                    format!("sha256:{}", "0".repeat(64)).into()
            }),
            vec!["--blob-dir", dir],
            "the TOC says 0000",
        ),
        (
            "chunks",
            Box::new(|t| entry_named(t, "./dir/file")["size"] = 10.into()),
            vec![],
            "\"./dir/file\"",
        ),
        (
            "not-json",
            Box::new(|t| *t = serde_json::Value::String("{".into())),
            vec![],
            "not an eStargz TOC",
        ),
    ];
    for (case, edit, extra, expect) in cases {
        assert_refused(&out, &layer, case, edit, &extra, expect);
    }

    // Blob ids: the digest with its prefix gets told what to pass instead.
    let prefixed = Layer {
        file: layer.file.clone(),
        toc: layer.toc.clone(),
        digest: format!("sha256:{}", layer.digest),
    };
    let boot = out.join("prefixed.boot");
    let o = build_seed(&prefixed, &boot, &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("--blob-id {}", layer.digest)),
        "{}",
        text(&o)
    );
    assert!(!boot.exists());

    // A chunk digest that does not match, built without the layer at hand: the build
    // cannot know, reading does, and `check` names the file.
    let mut toc: serde_json::Value =
        serde_json::from_slice(&fs::read(&layer.toc).unwrap()).unwrap();
    entry_named(&mut toc, "./other")["chunkDigest"] = format!("sha256:{}", "1".repeat(64)).into();
    let bad = Layer {
        file: layer.file.clone(),
        toc: out.join("late.json"),
        digest: layer.digest.clone(),
    };
    fs::write(&bad.toc, serde_json::to_vec(&toc).unwrap()).unwrap();
    let boot = out.join("late.boot");
    assert!(build_seed(&bad, &boot, &[]).status.success());
    let o = ours(&[
        "check".as_ref(),
        "--blob-dir".as_ref(),
        blobs.as_os_str(),
        boot.as_os_str(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("other") && err.contains("digest"), "{err}");
}

#[test]
fn mount_validate_checks_chunk_digests() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_file(&src.join("good"), &data(100_000, 1));
    write_file(&src.join("tampered"), &data(100_000, 2));
    let layer = make_layer(&src, &scratch.path().join("work"), "l", Some(0x10000));
    let blobs = scratch.path().join("blobs");
    stage(&layer, &blobs);
    let mut toc: serde_json::Value =
        serde_json::from_slice(&fs::read(&layer.toc).unwrap()).unwrap();
    entry_named(&mut toc, "./tampered")["chunkDigest"] =
        format!("sha256:{}", "2".repeat(64)).into();
    let bad = Layer {
        file: layer.file.clone(),
        toc: scratch.path().join("bad.json"),
        digest: layer.digest.clone(),
    };
    fs::write(&bad.toc, serde_json::to_vec(&toc).unwrap()).unwrap();
    let boot = scratch.path().join("boot");
    assert!(build_seed(&bad, &boot, &[]).status.success());

    for validate in [false, true] {
        let mnt = scratch.path().join(format!("mnt-{validate}"));
        fs::create_dir_all(&mnt).unwrap();
        let mut image = Image::open(&boot, BlobSource::Dir(blobs.clone())).unwrap();
        image.validate = validate;
        let mount = BackgroundMount::start(image, &mnt, 2).expect("FUSE mount");
        assert_eq!(fs::read(mnt.join("good")).unwrap(), data(100_000, 1));
        let tampered = fs::read(mnt.join("tampered"));
        mount.stop().unwrap();
        if validate {
            let e = tampered.expect_err("a chunk with a wrong digest was served");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        } else {
            // Without --validate the data is served as stored (the first chunk's
            // digest is the only thing changed).
            assert_eq!(tampered.unwrap(), data(100_000, 2));
        }
    }
}
