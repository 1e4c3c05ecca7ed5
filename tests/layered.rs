//! Layered builds and merge: deep stacks, data reuse, bad parents, whiteout corner cases,
//! and interoperability with upstream 2.2.0 (nydusd mounts our layered images; our reader
//! reads its layered bootstraps).

mod common {
    pub mod attrs;
    pub mod compare;
    pub mod files;
    pub mod ours;
    pub mod scratch;
    pub mod upstream;
}

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{attrs::*, compare::*, files::*, ours::*, scratch::*, upstream::*};
use nydus_image::builder::overlay::WhiteoutSpec;
use nydus_image::builder::{build, BlobTarget, BuildOptions, BuildSummary};
use nydus_image::mount::ImageTree;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::{FsTree, OverlayTree, Tree, Whiteouts};

fn layer_build(src: &Path, out: &Path, boot: &str, parent: Option<&Path>) -> BuildSummary {
    let opts = BuildOptions {
        parent_bootstrap: parent.map(Path::to_path_buf),
        ..BuildOptions::default()
    };
    build(
        src,
        &out.join(boot),
        &BlobTarget::Dir(out.to_path_buf()),
        &opts,
        &|_| {},
    )
    .expect("layer build")
}

/// Asserts that `image` shows the stack `layers` (bottom first, OCI whiteouts) merged,
/// but for what `except` leaves out.
fn assert_shows_stack(what: &str, layers: &[PathBuf], image: &dyn Tree, except: Except) {
    let dirs: Vec<FsTree> = layers.iter().map(FsTree::new).collect();
    let refs: Vec<&dyn Tree> = dirs.iter().map(|d| d as &dyn Tree).collect();
    let stack = OverlayTree::new(refs, Whiteouts::Oci);
    assert_identical_except(what, &stack, image, except);
}

/// Twenty layers, each changing something different.
fn make_stack(root: &Path, n: usize) -> Vec<PathBuf> {
    let mut layers = Vec::new();
    for i in 0..n {
        let l = root.join(format!("layer{i:02}"));
        fs::create_dir_all(l.join("shared")).unwrap();
        write_file(
            &l.join(format!("shared/f{i}")),
            &data(5000 + i * 997, i as u64),
        );
        match i % 5 {
            0 => write_file(&l.join("big"), &data(2_500_000 + i, i as u64)),
            1 if i > 1 => write_file(&l.join(format!("shared/.wh.f{}", i - 1)), b""),
            2 => {
                fs::create_dir_all(l.join("opaque")).unwrap();
                write_file(&l.join("opaque/.wh..wh..opq"), b"");
                write_file(&l.join(format!("opaque/only{i}")), b"only");
            }
            3 => {
                // type change: a file named like an earlier directory, and back
                write_file(&l.join("flip"), b"file now");
            }
            _ => {
                fs::create_dir_all(l.join("flip")).unwrap();
                write_file(&l.join("flip/inside"), b"dir now");
                fs::hard_link(l.join(format!("shared/f{i}")), l.join("link-to-f")).unwrap();
                set_xattr(&l.join("shared"), "user.layer", format!("{i}").as_bytes());
            }
        }
        set_mtime(&l.join("shared"), 1_700_000_000 + i as i64, 0);
        set_mtime(&l, 1_700_000_000, 0);
        layers.push(l);
    }
    layers
}

#[test]
fn twenty_layers_merge_like_the_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = make_stack(tmp.path(), 20);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let mut parent: Option<PathBuf> = None;
    for (i, l) in layers.iter().enumerate() {
        let name = format!("l{i}.boot");
        layer_build(l, &out, &name, parent.as_deref());
        parent = Some(out.join(name));
    }
    let image = Image::open(parent.as_ref().unwrap(), BlobSource::Dir(out.clone())).unwrap();
    assert_shows_stack("20 layers", &layers, &ImageTree(&image), Except::default());
    assert_eq!(image.blobs().len(), 20, "each layer adds its own blob");
    // The CLI verifies the same stack through FUSE.
    let mut cmd = Command::new(our_bin());
    cmd.arg("verify")
        .arg("-B")
        .arg(parent.unwrap())
        .arg("-D")
        .arg(&out)
        .args(&layers);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn unchanged_files_keep_parent_chunks_and_metadata_only_layers_add_no_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    fs::create_dir_all(&lower).unwrap();
    write_file(&lower.join("data"), &data(3_000_000, 1));
    write_file(&lower.join("meta"), b"metadata changes above");
    let upper = tmp.path().join("upper");
    fs::create_dir_all(&upper).unwrap();
    write_file(&upper.join("meta"), b"metadata changes above");
    chmod(&upper.join("meta"), 0o600);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let s1 = layer_build(&lower, &out, "l1", None);
    let s2 = layer_build(&upper, &out, "l2", Some(&out.join("l1")));
    // The upper layer rewrites only the small "meta" file (deduplicating it against the
    // parent is the chunk dictionary's job); "data" keeps the parent's chunks.
    let image = Image::open(&out.join("l2"), BlobSource::Dir(out.clone())).unwrap();
    let nid = image.resolve(b"/data").unwrap().unwrap();
    for addr in image.chunk_addrs(nid).unwrap() {
        assert_eq!(
            addr.unwrap().blob_index,
            0,
            "unchanged file points at the parent's blob"
        );
    }
    assert!(
        s2.data_bytes < 100,
        "only the upper layer's data is read: {}",
        s2.data_bytes
    );
    assert_ne!(s1.blob_id, s2.blob_id);
    // A layer that only changes metadata writes no blob at all.
    let meta_only = tmp.path().join("meta-only");
    fs::create_dir_all(&meta_only).unwrap();
    write_file(&meta_only.join("empty-now"), b"");
    let s3 = layer_build(&meta_only, &out, "l3", Some(&out.join("l2")));
    assert!(s3.blob_id.is_none());
    let image = Image::open(&out.join("l3"), BlobSource::Dir(out.clone())).unwrap();
    assert_eq!(image.blobs().len(), 2);
    assert_shows_stack(
        "metadata-only layer",
        &[lower, upper, meta_only],
        &ImageTree(&image),
        Except::default(),
    );
}

#[test]
fn merge_equals_the_chained_build() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = make_stack(tmp.path(), 6);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let mut boots = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let opts = BuildOptions {
            whiteout_spec: WhiteoutSpec::None,
            ..BuildOptions::default()
        };
        let b = out.join(format!("sep{i}"));
        let summary = build(l, &b, &BlobTarget::Dir(out.clone()), &opts, &|_| {}).unwrap();
        // Merge names each layer's blob by its bootstrap's name less the extension, as
        // upstream does.
        let named = out.join(format!("{}.boot", summary.blob_id.unwrap()));
        fs::rename(&b, &named).unwrap();
        boots.push(named);
    }
    let merged = out.join("merged");
    let o = Command::new(our_bin())
        .arg("merge")
        .arg("-B")
        .arg(&merged)
        .args(&boots)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let image = Image::open(&merged, BlobSource::Dir(out.clone())).unwrap();
    assert_shows_stack(
        "merged image",
        &layers,
        &ImageTree(&image),
        Except::default(),
    );
}

fn ours(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(our_bin()).args(args).output().unwrap()
}

#[test]
fn bad_parents_are_clear_errors_before_any_output() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), &data(10_000, 1));
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    layer_build(&src, &out, "good", None);
    let truncated = tmp.path().join("truncated");
    fs::write(&truncated, &fs::read(out.join("good")).unwrap()[..5000]).unwrap();
    let new_out = tmp.path().join("new");
    fs::create_dir(&new_out).unwrap();
    let boot = new_out.join("boot");
    let os = |s: &str| std::ffi::OsString::from(s);
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec![os("--parent-bootstrap"), tmp.path().join("missing").into()],
            "missing",
        ),
        (
            vec![os("--parent-bootstrap"), truncated.clone().into()],
            "0x",
        ),
        (
            vec![
                os("--parent-bootstrap"),
                out.join("good").into(),
                os("--chunk-size"),
                os("0x10000"),
            ],
            "chunk size 0x100000 differs",
        ),
        (
            vec![
                os("--parent-bootstrap"),
                out.join("good").into(),
                os("--digester"),
                os("sha256"),
            ],
            "digester blake3 differs",
        ),
    ];
    for (extra, expect) in cases {
        let mut args: Vec<std::ffi::OsString> = vec![
            os("create"),
            os("-B"),
            boot.clone().into(),
            os("-D"),
            new_out.clone().into(),
        ];
        args.extend(extra.iter().cloned());
        args.push(src.clone().into());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let o = ours(&refs);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?}");
        assert!(
            err.contains("parent bootstrap") && err.contains(expect),
            "{extra:?}: {err}"
        );
        assert_eq!(
            fs::read_dir(&new_out).unwrap().count(),
            0,
            "{extra:?}: nothing written"
        );
    }
}

#[test]
fn whiteout_corner_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    fs::create_dir_all(lower.join("d")).unwrap();
    write_file(&lower.join("d/kept"), b"kept");
    write_file(&lower.join("gone"), b"gone");
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("d")).unwrap();
    write_file(&upper.join(".wh.never-existed"), b"");
    write_file(
        &upper.join(".wh.gone"),
        b"a whiteout with data is still a whiteout",
    );
    write_file(&upper.join("d/.wh.also-never"), b"");
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    layer_build(&lower, &out, "l1", None);
    layer_build(&upper, &out, "l2", Some(&out.join("l1")));
    let image = Image::open(&out.join("l2"), BlobSource::Dir(out.clone())).unwrap();
    let mut names = Vec::new();
    image
        .walk(|p, _| {
            names.push(String::from_utf8_lossy(p).into_owned());
            Ok(())
        })
        .unwrap();
    assert_eq!(
        names,
        vec!["/", "/d", "/d/kept"],
        "markers never appear; the whited-out file is gone"
    );
    assert_shows_stack(
        "whiteout corner cases",
        &[lower, upper],
        &ImageTree(&image),
        Except::default(),
    );
}

#[test]
fn upstream_nydusd_mounts_our_layered_image_and_we_read_upstreams() {
    let scratch = Scratch::new();
    let layers = make_stack(scratch.path(), 6);
    // Ours, mounted by upstream nydusd.
    let out = scratch.path().join("ours");
    fs::create_dir(&out).unwrap();
    let mut parent: Option<PathBuf> = None;
    for (i, l) in layers.iter().enumerate() {
        let name = format!("l{i}");
        layer_build(l, &out, &name, parent.as_deref());
        parent = Some(out.join(name));
    }
    let nydusd = Nydusd::mount(
        parent.as_ref().unwrap(),
        &out,
        &scratch.path().join("nydusd"),
    );
    assert_shows_stack(
        "nydusd on our layered image",
        &layers,
        &FsTree::new(&nydusd.mnt),
        Except::default(),
    );
    drop(nydusd);

    // Upstream's layered build, read by our reader.
    let up = scratch.path().join("up");
    fs::create_dir(&up).unwrap();
    let mut parent: Option<PathBuf> = None;
    for (i, l) in layers.iter().enumerate() {
        let boot = up.join(format!("l{i}"));
        let mut cmd = Command::new(upstream_bin("nydus-image"));
        cmd.args(["create", "--log-level", "warn", "--bootstrap"])
            .arg(&boot)
            .arg("--blob-dir")
            .arg(&up);
        if let Some(p) = &parent {
            cmd.arg("--parent-bootstrap").arg(p);
        }
        let o = cmd.arg(l).output().unwrap();
        assert!(
            o.status.success(),
            "upstream layer {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        parent = Some(boot);
    }
    let image = Image::open(parent.as_ref().unwrap(), BlobSource::Dir(up.clone())).unwrap();
    // Upstream records mtime 0 for the root (see tests/upstream.rs).
    assert_shows_stack(
        "our reader on upstream's layered image",
        &layers,
        &ImageTree(&image),
        Except {
            differences: Some(&|d| {
                d.path == "/" && d.attribute == "mtime" && d.image == "0.000000000"
            }),
            ..Except::default()
        },
    );
}
