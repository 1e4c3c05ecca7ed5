//! containerd's nydus converter, replayed: each tar layer goes through
//! `create ... --type tar-rafs --blob-inline-meta --features blob-toc` with the tar and the
//! blob both FIFOs and `/` on standard input; each layer's bootstrap is taken out of its
//! blob by the TOC and named by the blob's sha256 (or, for a layer the converter knows by
//! its original digest, by the tar's sha256 with `--blob-digests`, `--blob-toc-digests`
//! and `--blob-sizes` naming the blob); then `merge` with the converter's flags joins
//! them, and upstream 2.2.0's nydusd mounts the result over the directory of blobs. The
//! mount must equal the kernel's overlayfs of the layer directories.
//!
//! Every combination runs: ours or upstream's `create`, ours or upstream's `merge`; the
//! two merges' `-J` reports and blob tables must agree. The same with RAFS v5, the
//! converter's default for its directory path (and its tar path with v5), whose blobs
//! carry the bootstrap without a TOC.
//!
//! The command lines are those of github.com/containerd/nydus-snapshotter
//! `pkg/converter/tool/builder.go` (`buildPackArgs`, `Merge`), and the bootstrap and TOC
//! digest are taken as `pkg/converter/convert_unix.go` takes them (`UnpackEntry`,
//! `calcBlobTOCDigest`: the sha256 of the TOC's records, without its tar header).

mod common {
    pub mod attrs;
    pub mod compare;
    pub mod errors;
    pub mod fifo;
    pub mod files;
    pub mod nydusd_quirks;
    pub mod ours;
    pub mod output;
    pub mod privileged;
    pub mod scratch;
    pub mod upstream;
    pub mod watchdog;
}

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

use common::compare::{assert_identical_except, Except};
use common::errors::chain;
use common::fifo::{run_bin_with_fifos, CONVERTER_CREATE};
use common::nydusd_quirks::nydusd_mount_time;
use common::{
    attrs::*, files::*, ours::our_bin, output::text, privileged::*, scratch::Scratch, upstream::*,
    watchdog::watchdog,
};
use nydus_image::format::blob_toc::{names, Tail, TAR_HEADER_SIZE};
use nydus_image::reader::{extract_section, Image};
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::FsTree;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `create` as the converter runs it for a tar layer (fs version 6), with FIFO
/// placeholders for `run_bin_with_fifos`.
fn create_line() -> Vec<&'static str> {
    let mut line = CONVERTER_CREATE.to_vec();
    line.push("TAR_FIFO");
    line
}

/// One change a layer makes.
enum Op {
    /// A regular file of `len` bytes from `seed`, with a mode.
    File(&'static str, usize, u64, u32),
    /// A directory with a mode.
    Dir(&'static str, u32),
    /// A symlink to the target.
    Symlink(&'static str, &'static str),
    /// A hard link to an earlier file of the layer.
    Hardlink(&'static str, &'static str),
    /// An xattr on an entry of the layer.
    Xattr(&'static str, &'static str, &'static [u8]),
    /// An owner for an entry of the layer.
    Chown(&'static str, u32, u32),
    /// Removes what the layers below have at the path.
    Whiteout(&'static str),
    /// Hides what the layers below have in the directory.
    Opaque(&'static str),
}

/// Four layers: files spanning chunks, hard links, symlinks, xattrs; whiteouts of a file
/// and of a directory, an opaque directory, a file replaced, a directory's mode changed, a
/// removed name brought back as a directory, a layer without file data. The bottom layer has no whiteouts: upstream
/// keeps a bottom layer's `.wh.` files as they are, where overlayfs hides them.
fn layers() -> Vec<Vec<Op>> {
    use Op::*;
    vec![
        vec![
            Dir("etc", 0o755),
            File("etc/conf", 300, 1, 0o644),
            Hardlink("etc/conf.hard", "etc/conf"),
            Dir("usr", 0o755),
            Dir("usr/bin", 0o755),
            File("usr/bin/tool", 3_000_000, 2, 0o755),
            Symlink("usr/bin/link", "tool"),
            Dir("opq", 0o755),
            File("opq/old1", 10, 3, 0o644),
            File("opq/old2", 5000, 4, 0o600),
            File("gone", 20, 5, 0o644),
            Dir("gonedir", 0o755),
            Dir("gonedir/sub", 0o700),
            File("gonedir/sub/x", 70_000, 6, 0o644),
            Dir("keep", 0o755),
            File("keep/k", 1_100_000, 7, 0o644),
            Xattr("keep/k", "user.k", b"v"),
        ],
        vec![
            Whiteout("gone"),
            Whiteout("gonedir"),
            Dir("opq", 0o750),
            Opaque("opq"),
            File("opq/new", 4096, 8, 0o644),
            Dir("usr", 0o755),
            Dir("usr/bin", 0o755),
            File("usr/bin/tool", 1_500_000, 9, 0o755),
            File("new", 0, 0, 0o644),
            Dir("etc", 0o700),
            File("etc/added", 100, 10, 0o640),
            Chown("etc/added", 1000, 100),
        ],
        vec![
            Dir("usr", 0o755),
            Dir("usr/bin", 0o755),
            Whiteout("usr/bin/link"),
            Dir("gone", 0o755),
            File("gone/again", 2_097_152, 11, 0o644),
            Dir("keep", 0o711),
            File("keep/k", 0, 0, 0o644),
            Xattr("keep", "user.dir", b"upper"),
        ],
        // No file data: no blob of its own (its bootstrap's blob table is empty), yet a
        // place in every per-layer list.
        vec![
            Whiteout("new"),
            Dir("meta", 0o755),
            File("meta/empty", 0, 0, 0o600),
        ],
    ]
}

/// How whiteouts are spelled in a layer directory.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// `.wh.NAME` files and `.wh..wh..opq` (in the tars).
    Oci,
    /// Character devices 0/0 and `trusted.overlay.opaque` (for the kernel).
    Overlayfs,
}

fn write_layer(dir: &Path, ops: &[Op], form: Form, index: i64) {
    fs::create_dir_all(dir).unwrap();
    let mut dirs = vec![dir.to_path_buf()];
    let mut others = Vec::new();
    for op in ops {
        match op {
            Op::File(p, len, seed, mode) => {
                write_file(&dir.join(p), &data(*len, *seed));
                chmod(&dir.join(p), *mode);
                others.push(dir.join(p));
            }
            Op::Dir(p, mode) => {
                fs::create_dir(dir.join(p)).unwrap();
                chmod(&dir.join(p), *mode);
                dirs.push(dir.join(p));
            }
            Op::Symlink(p, target) => {
                std::os::unix::fs::symlink(target, dir.join(p)).unwrap();
                others.push(dir.join(p));
            }
            Op::Hardlink(p, to) => fs::hard_link(dir.join(to), dir.join(p)).unwrap(),
            Op::Xattr(p, name, value) => set_xattr(&dir.join(p), name, value),
            Op::Chown(p, uid, gid) => lchown(&dir.join(p), *uid, *gid),
            Op::Whiteout(p) => {
                let full = dir.join(p);
                match form {
                    Form::Overlayfs => mknod(&full, libc::S_IFCHR | 0o600, 0, 0),
                    Form::Oci => {
                        let name = full.file_name().unwrap().to_str().unwrap();
                        write_file(&full.with_file_name(format!(".wh.{name}")), b"");
                    }
                }
                others.push(full);
            }
            Op::Opaque(p) => match form {
                Form::Overlayfs => set_xattr(&dir.join(p), "trusted.overlay.opaque", b"y"),
                Form::Oci => write_file(&dir.join(p).join(".wh..wh..opq"), b""),
            },
        }
    }
    // Whole seconds (upstream's tar reader drops nanoseconds); directories last, deepest
    // first, as creating entries changes them.
    for (i, p) in others.iter().enumerate() {
        if fs::symlink_metadata(p).is_ok() {
            set_mtime(p, 1_600_000_000 + index * 1000 + i as i64, 0);
        }
    }
    if form == Form::Oci {
        whole_second_mtimes(dir);
    }
    for d in dirs.iter().rev() {
        set_mtime(d, 1_700_000_000 + index, 0);
    }
}

/// The layers in both forms under `root`: (tars of the OCI form, overlayfs directories).
fn make_layers(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut tars = Vec::new();
    let mut ovl = Vec::new();
    for (i, ops) in layers().iter().enumerate() {
        let oci = root.join(format!("oci{i}"));
        write_layer(&oci, ops, Form::Oci, i as i64);
        let o = root.join(format!("ovl{i}"));
        write_layer(&o, ops, Form::Overlayfs, i as i64);
        ovl.push(o);
        let tar = root.join(format!("layer{i}.tar"));
        let out = Command::new("tar")
            .args([
                "--numeric-owner",
                "--format=posix",
                "--xattrs",
                "--xattrs-include=user.*",
                "-cf",
            ])
            .arg(&tar)
            .arg("-C")
            .arg(&oci)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success(), "tar: {}", text(&out));
        tars.push(tar);
    }
    (tars, ovl)
}

/// The kernel's overlayfs of `layers` (bottom first), unmounted on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(layers: &[PathBuf], mnt: &Path) -> Self {
        fs::create_dir_all(mnt).unwrap();
        let lower: Vec<&str> = layers.iter().rev().map(|p| s(p)).collect();
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", lower.join(":")))
            .arg(mnt)
            .output()
            .unwrap();
        assert!(o.status.success(), "overlay mount: {}", text(&o));
        Overlay(mnt.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Which `nydus-image`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tool {
    Ours,
    Upstream,
}

impl Tool {
    fn bin(self) -> PathBuf {
        match self {
            Tool::Ours => our_bin(),
            Tool::Upstream => upstream_bin("nydus-image"),
        }
    }
}

/// One converted layer.
struct Layer {
    /// The blob, in the blob directory under its sha256.
    blob: PathBuf,
    /// The blob's sha256.
    blob_hex: String,
    /// The tar's sha256: the layer's original digest.
    tar_hex: String,
    /// Bytes in the blob.
    size: u64,
    /// sha256 of the TOC's records, as the converter computes it.
    toc_hex: String,
}

/// The blobs a merge of all the layers references, in order: all but the last layer's,
/// which has no file data.
fn data_blobs(layers: &[Layer]) -> Vec<String> {
    assert_eq!(layers.len(), 4);
    layers[..3].iter().map(|l| l.blob_hex.clone()).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The TOC's records at the blob's end (what the last tar header describes).
fn toc_records(blob: &[u8]) -> &[u8] {
    let last = &blob[blob.len() - TAR_HEADER_SIZE..];
    match Tail::from_last_header(last, blob.len() as u64).expect("blob tail") {
        Tail::Toc { offset, size } => &blob[offset as usize..(offset + size) as usize],
        Tail::Bootstrap(_) => panic!("the converter's blob has a TOC"),
    }
}

/// Runs `creator`'s `create` on each tar, through FIFOs, storing each blob in `blobs`.
fn convert(creator: Tool, tars: &[PathBuf], work: &Path, blobs: &Path) -> Vec<Layer> {
    fs::create_dir_all(blobs).unwrap();
    tars.iter()
        .enumerate()
        .map(|(i, tar)| {
            let dir = work.join(format!("create{i}"));
            fs::create_dir_all(&dir).unwrap();
            let run = run_bin_with_fifos(&creator.bin(), &dir, &create_line(), tar, b"/");
            assert!(
                run.output.status.success(),
                "{creator:?} create of {}: {}",
                tar.display(),
                text(&run.output)
            );
            let blob_hex = sha256_hex(&run.blob);
            let blob = blobs.join(&blob_hex);
            fs::write(&blob, &run.blob).unwrap();
            Layer {
                blob,
                blob_hex,
                tar_hex: sha256_hex(&fs::read(tar).unwrap()),
                size: run.blob.len() as u64,
                toc_hex: sha256_hex(toc_records(&run.blob)),
            }
        })
        .collect()
}

/// How the converter names the layers' bootstraps.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Naming {
    /// By the blob's sha256.
    BlobDigest,
    /// By the original layer's digest, with the blob's digest, size and TOC digest
    /// given as flags.
    OriginalDigest,
}

/// Each layer's bootstrap, out of its blob, in `dir`; and the merge flags that go with
/// the naming.
fn bootstraps(layers: &[Layer], naming: Naming, dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    fs::create_dir_all(dir).unwrap();
    let boots = layers
        .iter()
        .map(|l| {
            let boot = extract_section(&l.blob, names::BOOTSTRAP).expect("bootstrap by the TOC");
            let name = match naming {
                Naming::BlobDigest => &l.blob_hex,
                Naming::OriginalDigest => &l.tar_hex,
            };
            let path = dir.join(name);
            fs::write(&path, boot).unwrap();
            path
        })
        .collect();
    let flags = match naming {
        Naming::BlobDigest => Vec::new(),
        Naming::OriginalDigest => {
            let join =
                |f: &dyn Fn(&Layer) -> String| layers.iter().map(f).collect::<Vec<_>>().join(",");
            vec![
                "--blob-digests".into(),
                join(&|l| l.blob_hex.clone()),
                "--blob-toc-digests".into(),
                join(&|l| l.toc_hex.clone()),
                "--blob-sizes".into(),
                join(&|l| l.size.to_string()),
            ]
        }
    };
    (boots, flags)
}

/// `merge` as the converter runs it, `/` on standard input.
fn merge(tool: Tool, out: &Path, json: &Path, boots: &[PathBuf], extra: &[String]) -> Output {
    merge_with_patterns(tool, out, json, boots, extra, b"/")
}

/// [`merge`] with `patterns` on standard input.
fn merge_with_patterns(
    tool: Tool,
    out: &Path,
    json: &Path,
    boots: &[PathBuf],
    extra: &[String],
    patterns: &[u8],
) -> Output {
    let mut child = Command::new(tool.bin())
        .args([
            "merge",
            "--log-level",
            "warn",
            "--prefetch-policy",
            "fs",
            "--output-json",
            s(json),
            "--bootstrap",
            s(out),
        ])
        .args(boots)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A merge refusing its flags exits before reading the patterns: the pipe may be closed.
    let _ = child.stdin.take().unwrap().write_all(patterns);
    child.wait_with_output().unwrap()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn json_blobs(v: &serde_json::Value) -> Vec<String> {
    v["blobs"]
        .as_array()
        .expect("blobs is a list")
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect()
}

/// nydusd mounts `boot` over `blobs`, and shows what overlayfs shows.
fn assert_nydusd_shows(what: &str, boot: &Path, blobs: &Path, overlay: &Path, work: &Path) {
    let daemon = Nydusd::mount(boot, blobs, work);
    let report = assert_identical_except(
        what,
        &FsTree::new(overlay).skipping_phantoms(),
        &FsTree::new(&daemon.mnt),
        Except {
            differences: Some(&nydusd_mount_time),
            ..Except::default()
        },
    );
    // Root, etc{,/conf,/conf.hard,/added}, usr{,/bin,/bin/tool}, opq{,/new},
    // keep{,/k}, gone{,/again}, meta{,/empty}: the stack less what the upper layers removed.
    assert_eq!(report.entries_compared, 16, "{what}: entries compared");
}

/// Ours and upstream's create, ours and upstream's merge, both namings: every merged
/// image mounts in nydusd as overlayfs shows the layers, the `-J` reports list each
/// layer's blob in order, and our merge's report and blob table equal upstream's.
#[test]
fn converter_layers_merge_as_overlayfs_shows_them_both_ways() {
    let _dog = watchdog("converter merge", 900);
    let scratch = Scratch::new();
    let root = scratch.path();
    let (tars, ovl) = make_layers(root);
    let _overlay = Overlay::mount(&ovl, &root.join("overlay"));
    let overlay = root.join("overlay");
    for creator in [Tool::Ours, Tool::Upstream] {
        let work = root.join(format!("{creator:?}"));
        let blobs = work.join("blobs");
        let layers = convert(creator, &tars, &work, &blobs);
        let want = data_blobs(&layers);
        for naming in [Naming::BlobDigest, Naming::OriginalDigest] {
            let (boots, flags) = bootstraps(&layers, naming, &work.join(format!("{naming:?}")));
            let mut reports = Vec::new();
            let mut tables = Vec::new();
            for merger in [Tool::Ours, Tool::Upstream] {
                let what = format!("{creator:?} create, {merger:?} merge, {naming:?}");
                let tag = format!("{naming:?}-{merger:?}");
                let out = work.join(format!("{tag}.boot"));
                let json = work.join(format!("{tag}.json"));
                let o = merge(merger, &out, &json, &boots, &flags);
                assert!(o.status.success(), "{what}: {}", text(&o));
                let report = read_json(&json);
                assert_eq!(json_blobs(&report), want, "{what}: -J blobs");
                assert_eq!(report["bootstrap"], s(&out), "{what}: -J bootstrap");
                let image = Image::open(&out, BlobSource::Dir(blobs.clone())).unwrap();
                if naming == Naming::OriginalDigest {
                    for (b, l) in image.blobs().iter().zip(&layers) {
                        assert_eq!(b.compressed_size, l.size, "{what}: --blob-sizes");
                        assert_eq!(hex::encode(b.toc_digest), l.toc_hex, "{what}");
                    }
                }
                tables.push(image.blobs().to_vec());
                let o = Command::new(upstream_bin("nydus-image"))
                    .args(["check", "--bootstrap", s(&out), "-D", s(&blobs)])
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{what}: upstream check: {}", text(&o));
                let mut keys: Vec<String> = report.as_object().unwrap().keys().cloned().collect();
                keys.sort();
                reports.push((keys, json_blobs(&report)));
                assert_nydusd_shows(&what, &out, &blobs, &overlay, &work.join(&tag));
            }
            assert_eq!(reports[0], reports[1], "{creator:?} {naming:?}: -J reports");
            assert_eq!(
                tables[0], tables[1],
                "{creator:?} {naming:?}: blob tables of ours and upstream's merge"
            );
        }
    }
}

/// A data blob stands where a bootstrap is expected: ours reads it directly; with
/// `--blob-dir`, both ours and upstream's find it there by the name the source gives.
#[test]
fn inline_blobs_merge_in_place_of_bootstraps() {
    let _dog = watchdog("inline blobs merge", 600);
    let scratch = Scratch::new();
    let root = scratch.path();
    let (tars, ovl) = make_layers(root);
    let _overlay = Overlay::mount(&ovl, &root.join("overlay"));
    let blobs = root.join("blobs");
    let layers = convert(Tool::Ours, &tars, root, &blobs);
    let want = data_blobs(&layers);
    let sources: Vec<PathBuf> = layers.iter().map(|l| l.blob.clone()).collect();
    let extra = ["--blob-dir".to_string(), s(&blobs).to_string()];
    for (tool, extra) in [
        (Tool::Ours, &[][..]),
        (Tool::Ours, &extra[..]),
        (Tool::Upstream, &extra[..]),
    ] {
        let what = format!("{tool:?} merge of blobs, {extra:?}");
        let out = root.join(format!("{tool:?}-{}.boot", extra.len()));
        let json = root.join("merge.json");
        let o = merge(tool, &out, &json, &sources, extra);
        assert!(o.status.success(), "{what}: {}", text(&o));
        assert_eq!(json_blobs(&read_json(&json)), want, "{what}");
        let work = root.join(format!("m-{tool:?}-{}", extra.len()));
        assert_nydusd_shows(&what, &out, &blobs, &root.join("overlay"), &work);
    }
}

/// `--blob-dir` without `--bootstrap`: the merged bootstrap goes to the blob directory,
/// named by its sha256, with ours as with upstream's.
#[test]
fn without_bootstrap_the_merge_goes_to_the_blob_dir_by_its_sha256() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let (tars, _) = make_layers(root);
    let blobs = root.join("blobs");
    let layers = convert(Tool::Ours, &tars, root, &blobs);
    let (boots, _) = bootstraps(&layers, Naming::BlobDigest, &root.join("boots"));
    for tool in [Tool::Ours, Tool::Upstream] {
        let json = root.join(format!("{tool:?}.json"));
        let o = Command::new(tool.bin())
            .args([
                "merge",
                "--log-level",
                "warn",
                "-J",
                s(&json),
                "-D",
                s(&blobs),
            ])
            .args(&boots)
            .output()
            .unwrap();
        assert!(o.status.success(), "{tool:?}: {}", text(&o));
        let report = read_json(&json);
        assert_eq!(json_blobs(&report), data_blobs(&layers), "{tool:?}");
        let boot = PathBuf::from(report["bootstrap"].as_str().unwrap());
        assert_eq!(boot.parent(), Some(blobs.as_path()), "{tool:?}");
        let name = boot.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, sha256_hex(&fs::read(&boot).unwrap()), "{tool:?}");
    }
}

/// `--blob-toc-sizes` (which the converter does not pass) lands in the blob table as
/// upstream puts it there, with the other lists.
#[test]
fn every_per_layer_list_lands_in_the_blob_table_as_upstream_puts_it() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let (tars, _) = make_layers(root);
    let blobs = root.join("blobs");
    let layers = convert(Tool::Upstream, &tars, root, &blobs);
    let (boots, mut flags) = bootstraps(&layers, Naming::OriginalDigest, &root.join("boots"));
    flags.extend(["--blob-toc-sizes".into(), "640,1152,0,4".into()]);
    let mut tables = Vec::new();
    for tool in [Tool::Ours, Tool::Upstream] {
        let out = root.join(format!("{tool:?}.boot"));
        let o = merge(tool, &out, &root.join("merge.json"), &boots, &flags);
        assert!(o.status.success(), "{tool:?}: {}", text(&o));
        let image = Image::open(&out, BlobSource::None).unwrap();
        let sizes: Vec<u32> = image.blobs().iter().map(|b| b.toc_size).collect();
        assert_eq!(sizes, [640, 1152, 0], "{tool:?}");
        tables.push(image.blobs().to_vec());
    }
    assert_eq!(tables[0], tables[1]);
}

/// `--parent-bootstrap` (upstream 2.2.0's merge has none; the converter passes it when
/// told to): the bottom layer merged alone is the parent of the other two.
#[test]
fn layers_merge_onto_a_parent_bootstrap() {
    let _dog = watchdog("merge onto a parent", 600);
    let scratch = Scratch::new();
    let root = scratch.path();
    let (tars, ovl) = make_layers(root);
    let _overlay = Overlay::mount(&ovl, &root.join("overlay"));
    let blobs = root.join("blobs");
    let layers = convert(Tool::Ours, &tars, root, &blobs);
    let (boots, _) = bootstraps(&layers, Naming::BlobDigest, &root.join("boots"));
    let parent = root.join("parent.boot");
    let json = root.join("merge.json");
    let o = merge(Tool::Ours, &parent, &json, &boots[..1], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = root.join("merged.boot");
    let extra = ["--parent-bootstrap".to_string(), s(&parent).to_string()];
    let o = merge(Tool::Ours, &out, &json, &boots[1..], &extra);
    assert!(o.status.success(), "{}", text(&o));
    let want = data_blobs(&layers);
    assert_eq!(json_blobs(&read_json(&json)), want);
    assert_nydusd_shows(
        "merged onto a parent",
        &out,
        &blobs,
        &root.join("overlay"),
        &root.join("nydusd"),
    );
}

/// Layers built with the converter's `--chunk-dict`: each references the dictionary's
/// blob besides its own; merge keeps that blob's id with `--chunk-dict`, as upstream's
/// does, and refuses the layers without it.
#[test]
fn layers_built_with_a_chunk_dictionary_merge_with_it() {
    let _dog = watchdog("merge with a chunk dictionary", 600);
    let scratch = Scratch::new();
    let root = scratch.path();
    let (tars, ovl) = make_layers(root);
    let _overlay = Overlay::mount(&ovl, &root.join("overlay"));
    let blobs = root.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    // The dictionary holds the bottom layer's big file: every layer above references
    // nothing of it, the bottom layer all of it.
    let dict_src = root.join("dict-src");
    fs::create_dir_all(&dict_src).unwrap();
    fs::copy(root.join("oci0/usr/bin/tool"), dict_src.join("tool")).unwrap();
    let dict = root.join("dict.boot");
    let o = Command::new(our_bin())
        .args([
            "create",
            "-l",
            "warn",
            "-B",
            s(&dict),
            "-D",
            s(&blobs),
            s(&dict_src),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let dict_id = Image::open(&dict, BlobSource::None).unwrap().blobs()[0]
        .blob_id
        .clone();
    let dict_arg = format!("bootstrap={}", s(&dict));
    let mut create = create_line();
    create.splice(16..16, ["--chunk-dict", &dict_arg]);
    let mut layers = Vec::new();
    for (i, tar) in tars.iter().enumerate() {
        let dir = root.join(format!("create{i}"));
        fs::create_dir_all(&dir).unwrap();
        let run = run_bin_with_fifos(&our_bin(), &dir, &create, tar, b"/");
        assert!(run.output.status.success(), "{}", text(&run.output));
        let blob_hex = sha256_hex(&run.blob);
        fs::write(blobs.join(&blob_hex), &run.blob).unwrap();
        layers.push(blob_hex);
    }
    let boots_dir = root.join("boots");
    fs::create_dir_all(&boots_dir).unwrap();
    let boots: Vec<PathBuf> = layers
        .iter()
        .map(|h| {
            let p = boots_dir.join(h);
            fs::write(
                &p,
                extract_section(&blobs.join(h), names::BOOTSTRAP).unwrap(),
            )
            .unwrap();
            p
        })
        .collect();
    let json = root.join("merge.json");
    let mut reports = Vec::new();
    for tool in [Tool::Ours, Tool::Upstream] {
        let out = root.join(format!("{tool:?}.boot"));
        let o = merge(tool, &out, &json, &boots, &[]);
        assert!(
            !o.status.success(),
            "{tool:?}: merged without the dictionary"
        );
        assert!(!out.exists(), "{tool:?}: output left after a failure");
        let extra = ["--chunk-dict".to_string(), dict_arg.clone()];
        let o = merge(tool, &out, &json, &boots, &extra);
        assert!(o.status.success(), "{tool:?}: {}", text(&o));
        let got = json_blobs(&read_json(&json));
        assert!(got.contains(&dict_id), "{tool:?}: {got:?}");
        reports.push(got);
        assert_nydusd_shows(
            &format!("{tool:?} merge with a dictionary"),
            &out,
            &blobs,
            &root.join("overlay"),
            &root.join(format!("nydusd-{tool:?}")),
        );
    }
    assert_eq!(reports[0], reports[1], "ours and upstream's -J blobs");
    let o = merge(Tool::Ours, &root.join("y.boot"), &json, &boots, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(s(&boots[0])) && err.contains("at most one blob of its own"),
        "{err}"
    );
}

/// Bad input: a list that does not give one value per source, a bad digest, a file that
/// is no bootstrap, an inline blob whose TOC is damaged. Each fails naming the flag or
/// the file, and leaves nothing at the output path.
#[test]
fn bad_merge_input_is_a_clear_error_and_leaves_no_output() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let (tars, _) = make_layers(root);
    let blobs = root.join("blobs");
    let layers = convert(Tool::Ours, &tars[..2], root, &blobs);
    let (boots, _) = bootstraps(&layers, Naming::BlobDigest, &root.join("boots"));
    let not_boot = root.join("not-a-bootstrap");
    write_file(&not_boot, &data(8192, 3));
    // The TOC's last record (image.boot) with a compression flag no writer uses.
    let damaged = root.join(&layers[1].blob_hex);
    let mut bytes = fs::read(&layers[1].blob).unwrap();
    let toc_at = bytes.len() - TAR_HEADER_SIZE - toc_records(&bytes).len();
    let last_record = toc_at + toc_records(&bytes).len() - 128;
    bytes[last_record] = 0x80;
    fs::write(&damaged, &bytes).unwrap();
    let two = || boots.clone();
    let d = &layers[0].blob_hex;
    // What, the sources, extra flags, what the error must say.
    type Case<'a> = (&'a str, Vec<PathBuf>, Vec<String>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            "one digest for two sources",
            two(),
            vec!["--blob-digests".into(), d.clone()],
            vec!["--blob-digests lists 1 value(s) for 2 source bootstrap(s)".into()],
        ),
        (
            "three sizes for two sources",
            two(),
            vec!["--blob-sizes".into(), "1,2,3".into()],
            vec!["--blob-sizes lists 3".into()],
        ),
        (
            "one TOC digest for two sources",
            two(),
            vec!["--blob-toc-digests".into(), d.clone()],
            vec!["--blob-toc-digests lists 1".into()],
        ),
        (
            "one TOC size for two sources",
            two(),
            vec!["--blob-toc-sizes".into(), "512".into()],
            vec!["--blob-toc-sizes lists 1".into()],
        ),
        (
            "a digest that is not hex",
            two(),
            vec!["--blob-digests".into(), format!("{d},sha256:{d}")],
            vec!["--blob-digests item 2".into()],
        ),
        (
            "a file that is no bootstrap",
            vec![boots[0].clone(), not_boot.clone()],
            vec![],
            vec![s(&not_boot).into(), "layer bootstrap".into()],
        ),
        (
            "an inline blob with a damaged TOC",
            vec![boots[0].clone(), damaged.clone()],
            vec![],
            vec![s(&damaged).into(), "TOC".into()],
        ),
    ];
    // Prefetch patterns are read as create reads them: text that is not UTF-8 is refused.
    let (out, json) = (root.join("out.boot"), root.join("out.json"));
    let o = merge_with_patterns(Tool::Ours, &out, &json, &boots, &[], b"/ok\n/\xff\n");
    assert!(!o.status.success(), "bad prefetch patterns accepted");
    assert!(String::from_utf8_lossy(&o.stderr).contains("prefetch pattern on line 2"));
    assert!(!out.exists() && !json.exists());
    // The extraction helper the converter flow uses refuses the same files, naming them.
    for (path, name, want) in [
        (&not_boot, names::BOOTSTRAP, "no inline metadata"),
        (&damaged, names::BOOTSTRAP, "TOC"),
        (&layers[0].blob, "nope", "no \"nope\" record"),
        (&layers[0].blob, names::BLOB_DATA, "only metadata sections"),
    ] {
        let err = chain(&extract_section(path, name).unwrap_err());
        assert!(
            err.contains(s(path)) && err.contains(want),
            "{name} from {}: {err}",
            path.display()
        );
    }
    for (what, sources, extra, want) in cases {
        let out = root.join("out.boot");
        let json = root.join("out.json");
        let o = merge(Tool::Ours, &out, &json, &sources, &extra);
        assert!(!o.status.success(), "{what}: accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        for w in &want {
            assert!(err.contains(w.as_str()), "{what}: {w:?} not in {err}");
        }
        assert!(!out.exists(), "{what}: output left behind");
        assert!(!json.exists(), "{what}: report left behind");
        let left: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("out") || n.starts_with(".out"))
            .collect();
        assert!(left.is_empty(), "{what}: {left:?} left behind");
    }
}

/// The converter's `create` for its directory path (`buildPackArgs` without the
/// tar-rafs feature, `--fs-version 5` as its default `FsVersion` for it): the layer
/// unpacked into a directory, whiteouts kept as `.wh.` files, the bootstrap appended to
/// the blob, which goes to a FIFO.
fn create_line_v5_directory(dir: &Path) -> Vec<&str> {
    vec![
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
        "5",
        "--source-type",
        "directory",
        "--inline-bootstrap",
        s(dir),
    ]
}

/// Which of the converter's paths builds a v5 layer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum V5Source {
    /// The layer unpacked into a directory (`--source-type directory --inline-bootstrap`).
    Directory,
    /// The tar itself (`--type tar-rafs --blob-inline-meta`).
    Tar,
}

/// The bootstrap of a blob without a TOC, taken as the converter's `seekFileByTarHeader`
/// takes it (written here from the Go code, sharing nothing with our reader): from the
/// last tar header back, each header's data just before it, until one is named
/// `image.boot`.
fn bootstrap_by_tar_headers(blob: &[u8]) -> Vec<u8> {
    let mut cur = blob.len() - 512;
    loop {
        let h = &blob[cur..cur + 512];
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = std::str::from_utf8(&h[..name_end]).unwrap();
        let size_field = std::str::from_utf8(&h[124..136]).unwrap();
        let size = u64::from_str_radix(size_field.trim_matches(|c| c == '\0' || c == ' '), 8)
            .unwrap() as usize;
        assert!(size <= cur, "tar header {name:?} at {cur}: size {size}");
        if name == "image.boot" {
            return blob[cur - size..cur].to_vec();
        }
        cur = cur
            .checked_sub(size + 512)
            .expect("image.boot before the blob's start");
    }
}

/// The converter's directory path with RAFS v5, its default there, and its tar path with
/// v5: each layer (directory or tar) built by ours or upstream's `create --fs-version 5`
/// with the bootstrap inline, through FIFOs; the blob is upstream's layout (chunk data,
/// `image.blob` header, the bootstrap as it is, `image.boot` header: no blob meta, no
/// TOC); the bootstrap taken from the blob's tail by its tar header and named by the
/// blob's sha256; merged by ours and upstream's `merge`, which keep v5. nydusd mounts
/// every merged image with `digest_validate` on and shows what overlayfs shows; the two
/// merges' `-J` blob lists and blob tables agree, and our merge of the blobs themselves
/// gives the same.
#[test]
fn converter_paths_with_v5_merge_as_overlayfs_shows_them() {
    let _dog = watchdog("converter v5 directory path", 900);
    let scratch = Scratch::new();
    let root = scratch.path();
    let (tars, ovl) = make_layers(root);
    let _overlay = Overlay::mount(&ovl, &root.join("overlay"));
    let overlay = root.join("overlay");
    let oci: Vec<PathBuf> = (0..tars.len())
        .map(|i| root.join(format!("oci{i}")))
        .collect();
    for (source, creator) in [
        (V5Source::Directory, Tool::Ours),
        (V5Source::Directory, Tool::Upstream),
        (V5Source::Tar, Tool::Ours),
        (V5Source::Tar, Tool::Upstream),
    ] {
        let work = root.join(format!("v5-{source:?}-{creator:?}"));
        let blobs = work.join("blobs");
        let boots_dir = work.join("boots");
        fs::create_dir_all(&blobs).unwrap();
        fs::create_dir_all(&boots_dir).unwrap();
        let mut boots = Vec::new();
        let mut hexes = Vec::new();
        for (i, dir) in oci.iter().enumerate() {
            let run_dir = work.join(format!("create{i}"));
            fs::create_dir_all(&run_dir).unwrap();
            let line = match source {
                V5Source::Directory => create_line_v5_directory(dir),
                V5Source::Tar => {
                    // The tar path with v5: no `--features blob-toc` (the converter adds it
                    // for v6 only).
                    let mut line = CONVERTER_CREATE[..14].to_vec();
                    line[10] = "5";
                    line.push("TAR_FIFO");
                    line
                }
            };
            let run = run_bin_with_fifos(&creator.bin(), &run_dir, &line, &tars[i], b"/");
            assert!(
                run.output.status.success(),
                "{creator:?} create of {}: {}",
                dir.display(),
                text(&run.output)
            );
            let hex = sha256_hex(&run.blob);
            fs::write(blobs.join(&hex), &run.blob).unwrap();
            // Upstream's layout: no TOC and no blob meta; the bootstrap right after the
            // chunk data's header (for a layer with data).
            let tail = &run.blob[run.blob.len() - TAR_HEADER_SIZE..];
            assert!(tail.starts_with(b"image.boot\0"), "{creator:?} layer {i}");
            let boot = bootstrap_by_tar_headers(&run.blob);
            assert!(
                nydus_image::format::v5::is_v5(&boot),
                "{creator:?} layer {i}"
            );
            if i < 3 {
                let data_header = run.blob.len() - 2 * TAR_HEADER_SIZE - boot.len();
                assert!(
                    run.blob[data_header..].starts_with(b"image.blob\0"),
                    "{creator:?} layer {i}: the bootstrap follows the chunk data's header"
                );
            }
            let path = boots_dir.join(&hex);
            fs::write(&path, &boot).unwrap();
            boots.push(path);
            hexes.push(hex);
        }
        // The last layer has no file data: its blob is referenced by nothing.
        let want = hexes[..3].to_vec();
        // Our reader takes each blob as its own bootstrap too.
        for (hex, dir) in hexes.iter().zip(&oci).take(3) {
            let image = Image::open_any(&blobs.join(hex), BlobSource::None).unwrap();
            assert_eq!(image.fs_version(), 5);
            assert_eq!(image.blobs()[0].blob_id, *hex, "{creator:?}");
            let o = Command::new(our_bin())
                .args(["check", "--bootstrap", s(&blobs.join(hex))])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{creator:?} {}: {}",
                dir.display(),
                text(&o)
            );
        }
        let mut tables = Vec::new();
        for merger in [Tool::Ours, Tool::Upstream] {
            let what = format!("v5 {source:?}: {creator:?} create, {merger:?} merge");
            let out = work.join(format!("{merger:?}.boot"));
            let json = work.join(format!("{merger:?}.json"));
            let o = merge(merger, &out, &json, &boots, &[]);
            assert!(o.status.success(), "{what}: {}", text(&o));
            assert_eq!(json_blobs(&read_json(&json)), want, "{what}: -J blobs");
            let image = Image::open(&out, BlobSource::Dir(blobs.clone())).unwrap();
            assert_eq!(image.fs_version(), 5, "{what}: the merge keeps v5");
            tables.push(image.blobs().to_vec());
            let o = Command::new(upstream_bin("nydus-image"))
                .args(["check", "--bootstrap", s(&out), "-D", s(&blobs)])
                .output()
                .unwrap();
            assert!(o.status.success(), "{what}: upstream check: {}", text(&o));
            let daemon = Nydusd::mount_with(
                &out,
                &blobs,
                &work.join(format!("nydusd-{merger:?}")),
                serde_json::json!({"digest_validate": true}),
                "warn",
            );
            // Upstream's v5 directory builder records mtime 0 for the root (tests/v5.rs),
            // which nydusd shows as its mount time.
            let root_mtime = |d: &nydus_verify::Difference| {
                creator == Tool::Upstream
                    && source == V5Source::Directory
                    && d.path == "/"
                    && d.attribute == "mtime"
            };
            let report = assert_identical_except(
                &what,
                &FsTree::new(&overlay).skipping_phantoms(),
                &FsTree::new(&daemon.mnt),
                Except {
                    differences: Some(&|d| nydusd_mount_time(d) || root_mtime(d)),
                    ..Except::default()
                },
            );
            assert_eq!(report.entries_compared, 16, "{what}: entries compared");
        }
        assert_eq!(
            tables[0], tables[1],
            "{source:?} {creator:?}: blob tables of both merges"
        );
        // Our merge also takes the blobs themselves in place of the bootstraps.
        let sources: Vec<PathBuf> = hexes.iter().map(|h| blobs.join(h)).collect();
        let out = work.join("from-blobs.boot");
        let json = work.join("from-blobs.json");
        let o = merge(Tool::Ours, &out, &json, &sources, &[]);
        assert!(o.status.success(), "{source:?} {creator:?}: {}", text(&o));
        assert_eq!(json_blobs(&read_json(&json)), want, "merge of the blobs");
        let image = Image::open(&out, BlobSource::Dir(blobs.clone())).unwrap();
        assert_eq!(image.blobs().to_vec(), tables[0], "merge of the blobs");
    }
}
