//! The kernel's EROFS reading file data from our `--compressor none` images: the
//! bootstrap and each blob on a loop device, the blobs named as extra devices. Each
//! chunk must sit in its blob at the block address its chunk index names; the same
//! images must still read back the same through our FUSE mount and upstream nydusd.
//!
//! Loop devices and mounts are shared by the whole machine: every test here holds one
//! lock, and the error cases check that nothing of theirs is left attached or mounted.

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
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::commands::{build as build_cli, run, s};
use common::compare::{assert_identical, assert_identical_except, Except};
use common::nydusd_quirks::nydusd_mount_time;
use common::{files::*, sample::*, scratch::Scratch, upstream::Nydusd};
use nydus_image::builder::{build, BlobTarget, BuildOptions};
use nydus_image::format::Compressor;
use nydus_image::kernel::{kernel_blob_paths, ErofsMount, KernelError};
use nydus_image::mount::BackgroundMount;
use nydus_image::ops::verify::{verify, Stack, VerifyError, Via};
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::{FsTree, OverlayTree, Tree, Whiteouts};

/// One test at a time uses loop devices and mounts.
static KERNEL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    KERNEL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds `src` uncompressed into `out/boot` and blobs in `out`, over `parent` and
/// with `dict` as a chunk dictionary when given.
fn build_none(
    src: &Path,
    out: &Path,
    chunk_size: u32,
    parent: Option<&Path>,
    dict: Option<&Path>,
) -> PathBuf {
    fs::create_dir_all(out).unwrap();
    let opts = BuildOptions {
        compressor: Compressor::None,
        chunk_size,
        parent_bootstrap: parent.map(Path::to_path_buf),
        chunk_dict: dict.map(Path::to_path_buf),
        ..BuildOptions::default()
    };
    let boot = out.join("boot");
    build(
        src,
        &boot,
        &BlobTarget::Dir(out.to_path_buf()),
        &opts,
        &|_| {},
    )
    .unwrap();
    boot
}

/// Mounts `boot` (blobs in `blobs`) with the kernel at `mnt`.
fn kernel_mount(boot: &Path, blobs: &Path, mnt: &Path) -> ErofsMount {
    fs::create_dir_all(mnt).unwrap();
    let source = BlobSource::Dir(blobs.to_path_buf());
    let image = Image::open(boot, source.clone()).unwrap();
    let paths = kernel_blob_paths(&image, &source).unwrap();
    ErofsMount::mount(boot, &paths, mnt).unwrap()
}

/// Loop devices over files under `dir`, and mounts under it or of our verifier.
fn leftovers(dir: &Path) -> Vec<String> {
    let dir = dir.to_str().unwrap();
    let out = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    let mut left: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(dir))
        .map(str::to_string)
        .collect();
    left.extend(
        fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .filter(|l| {
                // The mount point, past the scratch directory's own tmpfs.
                let at = l.split(' ').nth(1).unwrap_or("");
                at.starts_with(&format!("{dir}/")) || at.contains("nydus-verify-kernel-")
            })
            .map(str::to_string),
    );
    left
}

/// Files of sizes around blocks, a sparse file and one of more than 64 MiB.
fn odd_sizes_tree(src: &Path) {
    fs::create_dir_all(src.join("d")).unwrap();
    for (i, len) in [1usize, 100, 4095, 4096, 4097, 8191, 12345, 65_537]
        .into_iter()
        .enumerate()
    {
        write_file(&src.join(format!("d/f{len}")), &data(len, i as u64));
    }
    write_file(&src.join("d/again"), &data(12345, 6));
    write_file(&src.join("big"), &data(65 * 1024 * 1024 + 4097, 99));
    let mut f = fs::File::create(src.join("sparse")).unwrap();
    f.seek(SeekFrom::Start(5 * 1024 * 1024 + 3)).unwrap();
    f.write_all(&data(10_000, 7)).unwrap();
    f.set_len(40 * 1024 * 1024 + 1).unwrap();
}

/// A lower layer (`odd_sizes_tree`, without its 65 MiB file unless `with_big`) and an
/// upper one adding `d/new` and deleting `d/f100` with an OCI whiteout, under `root`.
fn two_layers(root: &Path, with_big: bool) -> (PathBuf, PathBuf) {
    let (lower, upper) = (root.join("lower"), root.join("upper"));
    odd_sizes_tree(&lower);
    if !with_big {
        fs::remove_file(lower.join("big")).unwrap();
    }
    fs::create_dir_all(upper.join("d")).unwrap();
    write_file(&upper.join("d/new"), &data(70_000, 42));
    write_file(&upper.join("d/.wh.f100"), b"");
    (lower, upper)
}

/// `verify --via kernel -B boot -D blobs SOURCE...` finds no difference.
fn assert_kernel_verify_clean(what: &str, boot: &Path, blobs: &Path, sources: &[&Path]) {
    let mut args = vec!["verify", "--via", "kernel", "-B", s(boot), "-D", s(blobs)];
    args.extend(sources.iter().map(|p| s(p)));
    let r = run(&args);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success() && text.contains(" 0 difference(s)"),
        "{what}: {text}{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn the_kernel_reads_every_entry_kind_at_every_chunk_size() {
    let _l = lock();
    let scratch = Scratch::new();
    for chunk_size in [0x1000u32, 0x1_0000, 0x10_0000, 0x100_0000] {
        let src = scratch.path().join(format!("src-{chunk_size:x}"));
        make_tree(
            &src,
            &TreeSpec {
                sparse_size: 20 * 1024 * 1024 + 12345,
                big_dir_entries: 3000,
                chunk_size: chunk_size as usize,
                ..TreeSpec::default()
            },
        );
        let out = scratch.path().join(format!("out-{chunk_size:x}"));
        let boot = build_none(&src, &out, chunk_size, None, None);
        let mount = kernel_mount(&boot, &out, &out.join("mnt"));
        assert_identical(
            &format!("kernel EROFS, chunk size 0x{chunk_size:x}"),
            &FsTree::new(&src),
            &FsTree::new(mount.path()),
        );
        if chunk_size == 0x10_0000 {
            // The same image through our FUSE mount shows what the kernel shows.
            let fuse_mnt = out.join("fuse");
            fs::create_dir_all(&fuse_mnt).unwrap();
            let image = Image::open(&boot, BlobSource::Dir(out.clone())).unwrap();
            let fuse = BackgroundMount::start(image, &fuse_mnt, 2).unwrap();
            assert_identical(
                "our FUSE mount against the kernel's",
                &FsTree::new(&fuse_mnt),
                &FsTree::new(mount.path()),
            );
            fuse.stop().unwrap();
        }
        mount.unmount().unwrap();
        assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
    }
}

#[test]
fn odd_sizes_sparse_and_large_files_read_the_same_by_kernel_fuse_and_nydusd() {
    let _l = lock();
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    odd_sizes_tree(&src);
    let out = scratch.path().join("out");
    let boot = build_none(&src, &out, 0x10_0000, None, None);
    let mount = kernel_mount(&boot, &out, &out.join("mnt"));
    assert_identical(
        "kernel EROFS",
        &FsTree::new(&src),
        &FsTree::new(mount.path()),
    );
    mount.unmount().unwrap();
    // Upstream nydusd 2.2.0 reads the padded blob through its chunk table.
    let daemon = Nydusd::mount(&boot, &out, &scratch.path().join("nydusd"));
    assert_identical_except(
        "upstream nydusd",
        &FsTree::new(&src),
        &FsTree::new(&daemon.mnt),
        Except {
            differences: Some(&nydusd_mount_time),
            ..Except::default()
        },
    );
    drop(daemon);
    // verify --via kernel over the same image says so too.
    let stack = Stack {
        parent: None,
        layers: vec![src.clone()],
        whiteouts: nydus_image::builder::overlay::WhiteoutSpec::Oci,
        mtime_seconds: false,
    };
    let report = verify(&stack, &boot, BlobSource::Dir(out.clone()), Via::Kernel).unwrap();
    assert!(report.identical(), "{:?}", report.differences);
    assert!(report.bytes_compared > 65 * 1024 * 1024);
    // A change in the source is seen through the kernel.
    write_file(&src.join("d/f4097"), &data(4097, 1000));
    let report = verify(&stack, &boot, BlobSource::Dir(out), Via::Kernel).unwrap();
    let content: Vec<_> = report
        .differences
        .iter()
        .filter(|d| d.attribute.starts_with("content"))
        .collect();
    assert_eq!(content.len(), 1, "{:?}", report.differences);
    assert_eq!(content[0].path, "/d/f4097");
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
}

#[test]
fn layered_and_dictionary_images_mount_with_one_device_per_blob() {
    let _l = lock();
    let scratch = Scratch::new();
    let (lower, upper) = two_layers(scratch.path(), false);
    // The same bytes twice in the layer: stored once.
    write_file(&upper.join("d/copy"), &data(70_000, 42));
    let out = scratch.path().join("out");
    let lower_boot = build_none(&lower, &out.join("l"), 0x1000, None, None);
    fs::create_dir_all(out.join("u")).unwrap();
    let upper_boot = build_none(&upper, &out.join("u"), 0x1000, Some(&lower_boot), None);
    // Both blobs in one directory, as the image names them.
    let blobs = out.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    for d in ["l", "u"] {
        for e in fs::read_dir(out.join(d)).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "boot" {
                fs::rename(e.path(), blobs.join(e.file_name())).unwrap();
            }
        }
    }
    let image = Image::open(&upper_boot, BlobSource::Dir(blobs.clone())).unwrap();
    assert_eq!(image.blobs().len(), 2, "a blob per layer");
    let addrs = |path: &[u8]| {
        let nid = image.resolve(path).unwrap().unwrap();
        image.chunk_addrs(nid).unwrap()
    };
    assert!(addrs(b"/d/again")
        .iter()
        .all(|a| a.unwrap().blob_index == 0));
    assert!(addrs(b"/d/new").iter().all(|a| a.unwrap().blob_index == 1));
    assert_eq!(addrs(b"/d/new"), addrs(b"/d/copy"), "one place per chunk");
    let mount = kernel_mount(&upper_boot, &blobs, &out.join("mnt"));
    let layers = [FsTree::new(&lower), FsTree::new(&upper)];
    let stack = OverlayTree::new(
        layers.iter().map(|t| t as &dyn Tree).collect(),
        Whiteouts::Oci,
    );
    assert_identical(
        "two layers through the kernel",
        &stack,
        &FsTree::new(mount.path()),
    );
    mount.unmount().unwrap();

    // A chunk dictionary: the new image's shared chunks stay in the dictionary's blob.
    let other = scratch.path().join("other");
    fs::create_dir_all(&other).unwrap();
    write_file(&other.join("same"), &data(12345, 6));
    write_file(&other.join("own"), &data(9000, 77));
    let dict_out = out.join("dict");
    fs::create_dir_all(&dict_out).unwrap();
    let boot = build_none(&other, &dict_out, 0x1000, None, Some(&lower_boot));
    for e in fs::read_dir(&dict_out).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "boot" {
            fs::rename(e.path(), blobs.join(e.file_name())).unwrap();
        }
    }
    let image = Image::open(&boot, BlobSource::Dir(blobs.clone())).unwrap();
    assert_eq!(
        image.blobs().len(),
        2,
        "the dictionary's blob and a new one"
    );
    let mount = kernel_mount(&boot, &blobs, &out.join("mnt2"));
    assert_identical(
        "chunk dictionary image",
        &FsTree::new(&other),
        &FsTree::new(mount.path()),
    );
    mount.unmount().unwrap();
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
}

#[test]
fn bad_images_give_a_clear_error_and_leave_nothing_behind() {
    let _l = lock();
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    odd_sizes_tree(&src);
    fs::remove_file(src.join("big")).unwrap();
    let out = scratch.path().join("out");
    let boot = build_none(&src, &out, 0x10_0000, None, None);
    let blob = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap() != "boot")
        .unwrap();
    let verify_cli = |boot: &Path| {
        run(&[
            "verify",
            "--via",
            "kernel",
            "-B",
            s(boot),
            "-D",
            s(&out),
            s(&src),
        ])
    };
    let ok = verify_cli(&boot);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Cut short: our reader refuses it before any device is attached.
    let cut = scratch.path().join("cut.boot");
    fs::write(&cut, &fs::read(&boot).unwrap()[..3000]).unwrap();
    let r = verify_cli(&cut);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("cut.boot"));
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());

    // A file's inode with an unknown data layout: the kernel mounts the image and fails
    // on that file mid-comparison; the mount and devices still go.
    let image = Image::open(&boot, BlobSource::None).unwrap();
    let nid = image.resolve(b"/d/f4097").unwrap().unwrap();
    let at = image.super_block().meta_blkaddr as usize * 4096 + nid.0 as usize * 32;
    let mut bytes = fs::read(&boot).unwrap();
    bytes[at] |= 0x0e;
    let bad = scratch.path().join("bad-inode.boot");
    fs::write(&bad, &bytes).unwrap();
    let r = verify_cli(&bad);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert_ne!(
        r.status.code(),
        Some(0),
        "a broken inode is no match: {text}"
    );
    assert!(text.contains("f4097"), "the broken file is named: {text}");
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());

    // Not an EROFS image at all: the kernel refuses the mount.
    let mnt = scratch.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let err = ErofsMount::mount(&blob, std::slice::from_ref(&blob), &mnt).unwrap_err();
    assert!(matches!(err, KernelError::Mount { .. }), "{err}");
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());

    // A compressed image is refused before anything is attached, naming the way out.
    let zout = scratch.path().join("zstd");
    fs::create_dir_all(&zout).unwrap();
    let r = build_cli(&src, &zout.join("boot"), &zout, &[]);
    assert!(r.status.success());
    let r = run(&[
        "verify",
        "--via",
        "kernel",
        "-B",
        s(&zout.join("boot")),
        "-D",
        s(&zout),
        s(&src),
    ]);
    assert_eq!(r.status.code(), Some(2));
    let text = String::from_utf8_lossy(&r.stderr);
    assert!(
        text.contains("compressed") && text.contains("export --block"),
        "{text}"
    );
    let stack = Stack {
        parent: None,
        layers: vec![src.clone()],
        whiteouts: nydus_image::builder::overlay::WhiteoutSpec::Oci,
        mtime_seconds: false,
    };
    // Upstream 2.2.0's uncompressed blobs pack chunks densely: refused, not misread.
    let up = scratch.path().join("upstream");
    fs::create_dir_all(&up).unwrap();
    let r = std::process::Command::new(common::upstream::upstream_bin("nydus-image"))
        .args(["create", "--compressor", "none", "--bootstrap"])
        .arg(up.join("boot"))
        .arg("--blob-dir")
        .arg(&up)
        .arg(&src)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = run(&[
        "verify",
        "--via",
        "kernel",
        "-B",
        s(&up.join("boot")),
        "-D",
        s(&up),
        s(&src),
    ]);
    assert_eq!(r.status.code(), Some(2));
    let text = String::from_utf8_lossy(&r.stderr);
    assert!(text.contains("not at its block address"), "{text}");
    let e = verify(
        &stack,
        &zout.join("boot"),
        BlobSource::Dir(zout.clone()),
        Via::Kernel,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        VerifyError::Kernel {
            source: KernelError::Compressed { .. },
            ..
        }
    ));
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
}

#[test]
fn create_verifies_through_the_kernel() {
    let _l = lock();
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    odd_sizes_tree(&src);
    fs::remove_file(src.join("big")).unwrap();
    let out = scratch.path().join("none");
    fs::create_dir_all(&out).unwrap();
    let r = build_cli(
        &src,
        &out.join("boot"),
        &out,
        &["--compressor", "none", "--verify=kernel"],
    );
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(text.contains("0 difference(s)"), "{text}");
    let out = scratch.path().join("zstd");
    fs::create_dir_all(&out).unwrap();
    let r = build_cli(&src, &out.join("boot"), &out, &["--verify=kernel"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("export --block"));
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
}

/// Runs `cmd`, returning its output with stdout and stderr together and whether it
/// succeeded.
fn output_of(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Builds `src` with our CLI and `flags` into `out`, exports it as a block image and
/// returns the image's path.
fn export_of(src: &Path, out: &Path, flags: &[&str], parent: Option<&Path>) -> PathBuf {
    fs::create_dir_all(out).unwrap();
    let mut all: Vec<&str> = flags.to_vec();
    if let Some(p) = parent {
        all.extend(["--parent-bootstrap", s(p)]);
    }
    let r = build_cli(src, &out.join("boot"), out, &all);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let img = out.join("block.img");
    let r = run(&[
        "export",
        "--block",
        "-B",
        s(&out.join("boot")),
        "-D",
        s(out),
        "-O",
        s(&img),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    img
}

/// Where `fsck.erofs --extract` (erofs-utils 1.5) writes a tree other than the image
/// holds (the kernel mount of the same image shows it exactly): it restores no xattrs,
/// writes each hard link as a file of its own, and drops the set-user-ID and
/// set-group-ID bits (it changes the owner after the mode).
fn fsck_extract_own_way(d: &nydus_verify::Difference) -> bool {
    let octal = |s: &str| u32::from_str_radix(s.trim(), 8).ok();
    if d.attribute.starts_with("xattr ") {
        return d.image == "missing";
    }
    match d.attribute.as_str() {
        "hard links" => true,
        "permissions" => match (octal(&d.source), octal(&d.image)) {
            (Some(src), Some(img)) => src & !0o6000 == img,
            _ => false,
        },
        _ => false,
    }
}

#[test]
fn export_block_images_mount_alone_and_pass_fsck() {
    let _l = lock();
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 20 * 1024 * 1024 + 12345,
            big_dir_entries: 3000,
            ..TreeSpec::default()
        },
    );
    write_file(&src.join("big"), &data(65 * 1024 * 1024 + 4097, 99));
    for (name, flags) in [
        ("zstd", &["--chunk-size", "0x100000"][..]),
        (
            "lz4",
            &["--compressor", "lz4_block", "--chunk-size", "0x1000"][..],
        ),
        (
            "none",
            &["--compressor", "none", "--chunk-size", "0x1000000"][..],
        ),
    ] {
        let out = scratch.path().join(name);
        let img = export_of(&src, &out, flags, None);
        let names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "temporary files left: {names:?}");
        let (ok, text) = output_of(std::process::Command::new("fsck.erofs").arg(&img));
        assert!(ok, "fsck.erofs {name}: {text}");
        let mnt = out.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mount = ErofsMount::mount(&img, &[], &mnt).unwrap();
        assert_identical(
            &format!("block image of the {name} image, kernel"),
            &FsTree::new(&src),
            &FsTree::new(mount.path()),
        );
        mount.unmount().unwrap();
        let x = out.join("x");
        let (ok, text) = output_of(
            std::process::Command::new("fsck.erofs")
                .arg(format!("--extract={}", x.display()))
                .arg(&img),
        );
        assert!(ok, "fsck.erofs --extract {name}: {text}");
        assert_identical_except(
            &format!("block image of the {name} image, fsck.erofs --extract"),
            &FsTree::new(&src),
            &FsTree::new(&x),
            Except {
                differences: Some(&fsck_extract_own_way),
                ..Except::default()
            },
        );
        fs::remove_dir_all(&x).unwrap();
    }
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
}

#[test]
fn export_block_of_a_layered_image_and_its_failures() {
    let _l = lock();
    let scratch = Scratch::new();
    let (lower, upper) = two_layers(scratch.path(), true);
    let out = scratch.path().join("out");
    let lower_out = out.join("lower");
    export_of(&lower, &lower_out, &[], None);
    // The upper layer's blob goes next to the lower one: one directory serves both.
    let r = build_cli(
        &upper,
        &out.join("upper.boot"),
        &lower_out,
        &["--parent-bootstrap", s(&lower_out.join("boot"))],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let img = out.join("layered.img");
    // Upstream HEAD names the blob directory --localfs-dir.
    let r = run(&[
        "export",
        "--block",
        "-B",
        s(&out.join("upper.boot")),
        "--localfs-dir",
        s(&lower_out),
        "-O",
        s(&img),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mnt = out.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mount = ErofsMount::mount(&img, &[], &mnt).unwrap();
    let layers = [FsTree::new(&lower), FsTree::new(&upper)];
    let stack = OverlayTree::new(
        layers.iter().map(|t| t as &dyn Tree).collect(),
        Whiteouts::Oci,
    );
    assert_identical("layered block image", &stack, &FsTree::new(mount.path()));
    mount.unmount().unwrap();

    // A blob carrying its own bootstrap is exported from the blob alone.
    let inline = out.join("inline");
    fs::create_dir_all(&inline).unwrap();
    let blob = inline.join("layer.blob");
    let plain = scratch.path().join("plain");
    fs::create_dir_all(plain.join("d")).unwrap();
    write_file(&plain.join("d/a"), &data(70_000, 43));
    write_file(&plain.join("b"), &data(5, 44));
    let r = run(&[
        "create",
        "-l",
        "warn",
        "--blob-inline-meta",
        "--blob",
        s(&blob),
        s(&plain),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let img = inline.join("inline.img");
    let r = run(&["export", "--block", "-B", s(&blob), "-O", s(&img)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mount = ErofsMount::mount(&img, &[], &mnt).unwrap();
    assert_identical(
        "block image of an inline-metadata blob",
        &FsTree::new(&plain),
        &FsTree::new(mount.path()),
    );
    mount.unmount().unwrap();

    // Blobs missing: an error naming them, and no output.
    let empty = scratch.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let none = out.join("none.img");
    let r = run(&[
        "export",
        "--block",
        "-B",
        s(&out.join("upper.boot")),
        "-D",
        s(&empty),
        "-O",
        s(&none),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("not available"));
    assert!(!none.exists());
    // Without --block: refused.
    let r = run(&["export", "-B", s(&out.join("upper.boot")), "-O", s(&none)]);
    assert!(!r.status.success());
    assert!(!none.exists());
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
}

/// Where an image upstream 2.2.0's v5 builder made differs from its source, whoever
/// reads it (tests/v5.rs): the root's mtime is stored as 0.
fn upstream_v5_own_way(d: &nydus_verify::Difference) -> bool {
    d.attribute == "mtime"
        && d.path == "/"
        && nydus_verify::parse_mtime(&d.image).is_some_and(|t| t == (0, 0))
}

/// Builds a RAFS v5 image of `src` into `boot` and blobs in `out`, with upstream 2.2.0's
/// builder or ours, and `extra` flags.
fn build_v5(src: &Path, boot: &Path, out: &Path, upstream: bool, extra: &[&str]) {
    fs::create_dir_all(out).unwrap();
    if upstream {
        let (ok, text) = output_of(
            std::process::Command::new(common::upstream::upstream_bin("nydus-image"))
                .args(["create", "--log-level", "warn", "--fs-version", "5"])
                .args(extra)
                .arg("--bootstrap")
                .arg(boot)
                .arg("--blob-dir")
                .arg(out)
                .arg(src),
        );
        assert!(ok, "upstream create {extra:?}: {text}");
    } else {
        let mut flags = vec!["--fs-version", "5"];
        flags.extend_from_slice(extra);
        let r = build_cli(src, boot, out, &flags);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
}

/// `export --block` of `boot` (blobs in `blobs`) into `img`: its output, and whether it
/// succeeded.
fn export_cli(boot: &Path, blobs: &Path, img: &Path) -> (bool, String) {
    output_of(std::process::Command::new(common::ours::our_bin()).args([
        "export",
        "--block",
        "-B",
        s(boot),
        "-D",
        s(blobs),
        "-O",
        s(img),
    ]))
}

/// Entries of `dir` whose names start with a dot (our temporary names).
fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Issue 21: v5 images of both builders, compressed or not, export to a block image that
/// the kernel mounts alone and fsck.erofs accepts, showing the source; chunks shared by
/// files are stored once; `verify --via kernel` reads v5 images through such an export.
#[test]
fn export_block_of_v5_images_from_both_builders() {
    let _l = lock();
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            acls: false,
            sparse_size: 20 * 1024 * 1024 + 12345,
            big_dir_entries: 2000,
            depth: 40,
            ..TreeSpec::default()
        },
    );
    // Two files with the same 3 MiB: their chunks are stored once in the blob and in the
    // export.
    write_file(&src.join("dup1"), &data(3 * 1024 * 1024 + 5, 77));
    write_file(&src.join("dup2"), &data(3 * 1024 * 1024 + 5, 77));
    let lz4 = [
        "--compressor",
        "lz4_block",
        "--digester",
        "sha256",
        "--chunk-size",
        "0x10000",
    ];
    let cases: [(&str, bool, &[&str]); 5] = [
        ("ours-zstd", false, &[]),
        ("ours-lz4", false, &lz4),
        ("ours-none", false, &["--compressor", "none"]),
        ("upstream-zstd", true, &[]),
        ("upstream-lz4", true, &lz4),
    ];
    for (name, upstream, flags) in cases {
        let out = scratch.path().join(name);
        build_v5(&src, &out.join("boot"), &out, upstream, flags);
        let img = scratch.path().join(format!("{name}.img"));
        let (ok, text) = export_cli(&out.join("boot"), &out, &img);
        assert!(ok, "export {name}: {text}");
        // "block image P: N bytes, C distinct chunks for I chunk indexes"
        let counts: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(
            counts.len() == 3 && counts[1] < counts[2],
            "{name}: shared chunks stored once: {text}"
        );
        assert_eq!(temporaries(scratch.path()), Vec::<String>::new());
        let own_way = |d: &nydus_verify::Difference| upstream && upstream_v5_own_way(d);
        let (ok, text) = output_of(std::process::Command::new("fsck.erofs").arg(&img));
        assert!(ok, "fsck.erofs {name}: {text}");
        let mnt = scratch.path().join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mount = ErofsMount::mount(&img, &[], &mnt).unwrap();
        assert_identical_except(
            &format!("block image of the v5 {name} image, kernel"),
            &FsTree::new(&src),
            &FsTree::new(mount.path()),
            Except {
                differences: Some(&own_way),
                ..Except::default()
            },
        );
        mount.unmount().unwrap();
        let x = scratch.path().join("x");
        let (ok, text) = output_of(
            std::process::Command::new("fsck.erofs")
                .arg(format!("--extract={}", x.display()))
                .arg(&img),
        );
        assert!(ok, "fsck.erofs --extract {name}: {text}");
        let extract_way = |d: &nydus_verify::Difference| own_way(d) || fsck_extract_own_way(d);
        assert_identical_except(
            &format!("block image of the v5 {name} image, fsck.erofs --extract"),
            &FsTree::new(&src),
            &FsTree::new(&x),
            Except {
                differences: Some(&extract_way),
                ..Except::default()
            },
        );
        fs::remove_dir_all(&x).unwrap();
        fs::remove_file(&img).unwrap();

        // verify --via kernel goes through a block export of its own.
        if upstream {
            let stack = Stack {
                parent: None,
                layers: vec![src.clone()],
                whiteouts: nydus_image::builder::overlay::WhiteoutSpec::Oci,
                mtime_seconds: false,
            };
            let mut report = verify(
                &stack,
                &out.join("boot"),
                BlobSource::Dir(out.clone()),
                Via::Kernel,
            )
            .unwrap();
            let all = report.differences.len();
            report.differences.retain(|d| !own_way(d));
            assert!(
                report.differences.is_empty() && all >= 1,
                "{name}: verify --via kernel: only upstream's root mtime differs: {:?}",
                report.differences
            );
        } else {
            assert_kernel_verify_clean(name, &out.join("boot"), &out, &[&src]);
        }
        fs::remove_dir_all(&out).unwrap();
        assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
    }
}

/// Issue 21: a v5 layer stack (ours and upstream's builder, each over its own lower
/// layer) exports to one block image showing the stack; `verify --via kernel` of our
/// upper layer against both directories finds it identical.
#[test]
fn export_block_of_layered_v5_images() {
    let _l = lock();
    let scratch = Scratch::new();
    let (lower, upper) = two_layers(scratch.path(), false);
    write_file(&upper.join("d/again"), &data(5000, 43));
    let layers = [FsTree::new(&lower), FsTree::new(&upper)];
    let stack = OverlayTree::new(
        layers.iter().map(|t| t as &dyn Tree).collect(),
        Whiteouts::Oci,
    );
    for upstream in [false, true] {
        let out = scratch
            .path()
            .join(if upstream { "upstream" } else { "ours" });
        // One blob directory serves both layers.
        let blobs = out.join("blobs");
        let parent = out.join("lower.boot");
        build_v5(&lower, &parent, &blobs, upstream, &[]);
        let top = out.join("upper.boot");
        build_v5(
            &upper,
            &top,
            &blobs,
            upstream,
            &["--parent-bootstrap", s(&parent)],
        );
        let img = out.join("layered.img");
        let (ok, text) = export_cli(&top, &blobs, &img);
        assert!(ok, "export upstream={upstream}: {text}");
        let mnt = out.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mount = ErofsMount::mount(&img, &[], &mnt).unwrap();
        let own_way = |d: &nydus_verify::Difference| upstream && upstream_v5_own_way(d);
        assert_identical_except(
            &format!("layered v5 block image, upstream builder: {upstream}"),
            &stack,
            &FsTree::new(mount.path()),
            Except {
                differences: Some(&own_way),
                ..Except::default()
            },
        );
        mount.unmount().unwrap();
        if !upstream {
            assert_kernel_verify_clean("layered v5", &top, &blobs, &[&lower, &upper]);
        }
    }
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
}

/// Issue 21: a damaged v5 image (bootstrap cut short, an inode table entry pointing
/// outside the bootstrap, a blob cut short under a valid bootstrap) gives an error naming
/// the file, leaves nothing at the output path (no temporary either) and no loop device
/// or mount, through `export --block` and `verify --via kernel` alike.
#[test]
fn export_block_of_damaged_v5_images() {
    let _l = lock();
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    odd_sizes_tree(&src);
    fs::remove_file(src.join("big")).unwrap();
    let out = scratch.path().join("out");
    build_v5(&src, &out.join("boot"), &out, false, &[]);
    let boot = fs::read(out.join("boot")).unwrap();

    let cut = scratch.path().join("cut.boot");
    fs::write(&cut, &boot[..9000]).unwrap();
    // The v5 inode table starts at byte 8192: entry 1 (the second inode) is its record's
    // offset in 8-byte units.
    let mut bytes = boot.clone();
    bytes[8196..8200].copy_from_slice(&u32::MAX.to_le_bytes());
    let outside = scratch.path().join("outside.boot");
    fs::write(&outside, &bytes).unwrap();
    // A blob cut short: the bootstrap opens, a chunk read fails mid-export.
    let short = scratch.path().join("short");
    fs::create_dir_all(&short).unwrap();
    fs::copy(out.join("boot"), short.join("boot")).unwrap();
    let blob = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap() != "boot")
        .unwrap();
    let blob_bytes = fs::read(&blob).unwrap();
    fs::write(
        short.join(blob.file_name().unwrap()),
        &blob_bytes[..blob_bytes.len() / 2],
    )
    .unwrap();

    let img_dir = scratch.path().join("img");
    fs::create_dir_all(&img_dir).unwrap();
    for (name, boot, blobs, expect) in [
        ("cut", cut.clone(), out.clone(), "cut.boot"),
        ("outside", outside.clone(), out.clone(), "outside.boot"),
        (
            "short",
            short.join("boot"),
            short.clone(),
            "past the blob's end",
        ),
    ] {
        let img = img_dir.join(format!("{name}.img"));
        let (ok, text) = export_cli(&boot, &blobs, &img);
        assert!(!ok, "{name}: a damaged image exported: {text}");
        assert!(text.contains(expect), "{name}: {text}");
        assert!(!img.exists(), "{name}: output left behind");
        assert_eq!(temporaries(&img_dir), Vec::<String>::new(), "{name}");
        let r = run(&[
            "verify",
            "--via",
            "kernel",
            "-B",
            s(&boot),
            "-D",
            s(&blobs),
            s(&src),
        ]);
        let text = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{name}: {text}");
        assert!(text.contains(expect), "{name}: {text}");
        assert_eq!(leftovers(scratch.path()), Vec::<String>::new(), "{name}");
    }
}
