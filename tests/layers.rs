//! Layer stacks against the kernel's overlayfs. A property test generates random stacks
//! (creation, whiteouts, opaque directories, type changes, hard links, metadata and xattr
//! edits, files of chunk-boundary sizes), mounts them with `mount -t overlay`, and compares
//! that with our layered images mounted through FUSE: one built from the overlayfs form of
//! the layers with `--whiteout-spec overlayfs`, one from their OCI form with `oci`.
//! The same for RAFS v5 images, also mounted by upstream's nydusd with `digest_validate`.
//! PROPTEST_CASES sets the number of stacks (default 12 here, half that for v5); failures
//! shrink.

mod common {
    pub mod attrs;
    pub mod files;
    pub mod privileged;
    pub mod scratch;
    pub mod upstream;
}

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{attrs::*, files::*, privileged::*, scratch::*, upstream::Nydusd};
use nydus_image::builder::overlay::WhiteoutSpec;
use nydus_image::builder::{build, BlobTarget, BuildOptions, FsVersion};
use nydus_image::mount::BackgroundMount;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::{compare, FsTree};
use proptest::prelude::*;

const CHUNK: usize = 0x1000;
const TOP: [&str; 3] = ["a", "b", "c"];
const SUB: [&str; 2] = ["x", "y"];

#[derive(Clone, Debug)]
enum Spec {
    File {
        size: usize,
        seed: u8,
        mode: u32,
        uid: u32,
        xattr: Option<u8>,
    },
    Dir {
        opaque: bool,
        mode: u32,
        xattr: Option<u8>,
    },
    Symlink {
        target: u8,
    },
    Whiteout,
    Hardlink {
        to: u8,
    },
}

fn spec() -> impl Strategy<Value = Spec> {
    let sizes = prop::sample::select(vec![0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3]);
    let modes = prop::sample::select(vec![0o644, 0o600, 0o755, 0o4755]);
    let uids = prop::sample::select(vec![0u32, 1000, 70000]);
    prop_oneof![
        4 => (sizes, any::<u8>(), modes.clone(), uids, prop::option::of(any::<u8>()))
            .prop_map(|(size, seed, mode, uid, xattr)| Spec::File { size, seed, mode, uid, xattr }),
        3 => (any::<bool>(), prop::sample::select(vec![0o755, 0o700, 0o1777]), prop::option::of(any::<u8>()))
            .prop_map(|(opaque, mode, xattr)| Spec::Dir { opaque, mode, xattr }),
        1 => any::<u8>().prop_map(|target| Spec::Symlink { target }),
        2 => Just(Spec::Whiteout),
        1 => (0u8..3).prop_map(|to| Spec::Hardlink { to }),
    ]
}

/// Paths of the universe: /a, /b, /c, then /a/x, /a/y, /b/x, ...
fn universe() -> Vec<(String, Option<usize>)> {
    let mut out: Vec<(String, Option<usize>)> =
        TOP.iter().map(|t| (format!("/{t}"), None)).collect();
    for (i, t) in TOP.iter().enumerate() {
        for s in SUB {
            out.push((format!("/{t}/{s}"), Some(i)));
        }
    }
    out
}

type Layer = Vec<Option<Spec>>;

fn stack() -> impl Strategy<Value = Vec<Layer>> {
    let n = universe().len();
    prop::collection::vec(
        prop::collection::vec(prop::option::weighted(0.45, spec()), n),
        1..=4,
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Form {
    Overlayfs,
    Oci,
}

/// Writes one layer in the given form. Children need a directory parent in the same
/// layer: a missing parent is created as a plain directory, a non-directory parent drops
/// the child. Returns nothing; the layer is `dir`.
fn write_layer(dir: &Path, layer: &Layer, form: Form) {
    fs::create_dir_all(dir).unwrap();
    let uni = universe();
    let mut dirs_to_time: Vec<PathBuf> = vec![dir.to_path_buf()];
    let mut is_dir = [false; 3];
    for (i, (path, parent)) in uni.iter().enumerate() {
        let full = dir.join(&path[1..]);
        if let Some(p) = parent {
            match &layer[*p] {
                Some(Spec::Dir { .. }) => {}
                None if layer[i].is_some() => {
                    if !is_dir[*p] {
                        fs::create_dir(dir.join(TOP[*p])).unwrap();
                        dirs_to_time.push(dir.join(TOP[*p]));
                        is_dir[*p] = true;
                    }
                }
                _ => continue,
            }
        }
        let Some(s) = &layer[i] else { continue };
        match s {
            Spec::File {
                size,
                seed,
                mode,
                uid,
                xattr,
            } => {
                write_file(&full, &data(*size, *seed as u64));
                if let Some(x) = xattr {
                    set_xattr(&full, "user.k", &[*x]);
                }
                lchown(&full, *uid, 0);
                chmod(&full, *mode);
                set_mtime(&full, 1_600_000_000 + *seed as i64, 1000 * *seed as i64);
            }
            Spec::Dir {
                opaque,
                mode,
                xattr,
            } => {
                fs::create_dir(&full).unwrap();
                if parent.is_none() {
                    is_dir[i] = true;
                }
                if let Some(x) = xattr {
                    set_xattr(&full, "user.d", &[*x]);
                }
                if *opaque {
                    match form {
                        Form::Overlayfs => set_xattr(&full, "trusted.overlay.opaque", b"y"),
                        Form::Oci => write_file(&full.join(".wh..wh..opq"), b""),
                    }
                }
                chmod(&full, *mode);
                dirs_to_time.push(full);
            }
            Spec::Symlink { target } => {
                std::os::unix::fs::symlink(format!("t{target}"), &full).unwrap();
                set_mtime(&full, 1_500_000_000 + *target as i64, 7);
            }
            Spec::Whiteout => match form {
                Form::Overlayfs => mknod(&full, libc::S_IFCHR | 0o600, 0, 0),
                Form::Oci => {
                    let name = full.file_name().unwrap().to_str().unwrap().to_string();
                    write_file(&full.with_file_name(format!(".wh.{name}")), b"");
                }
            },
            Spec::Hardlink { to } => {
                let target = dir.join(TOP[*to as usize]);
                let ok =
                    matches!(layer[*to as usize], Some(Spec::File { .. })) && (*to as usize) < i;
                if ok
                    && fs::symlink_metadata(&target)
                        .map(|m| m.is_file())
                        .unwrap_or(false)
                {
                    fs::hard_link(&target, &full).unwrap();
                }
            }
        }
    }
    // Directory times last, deepest first: creating entries changes them.
    for d in dirs_to_time.iter().rev() {
        set_mtime(d, 1_700_000_000, 5);
    }
}

struct OverlayMount(PathBuf);

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn build_stack(
    layers: &[PathBuf],
    out: &Path,
    spec: WhiteoutSpec,
    fs_version: FsVersion,
) -> PathBuf {
    fs::create_dir_all(out).unwrap();
    let mut parent: Option<PathBuf> = None;
    for (i, layer) in layers.iter().enumerate() {
        let boot = out.join(format!("layer{i}.boot"));
        let opts = BuildOptions {
            chunk_size: CHUNK as u32,
            parent_bootstrap: parent.clone(),
            whiteout_spec: spec,
            fs_version,
            threads: 1,
            ..BuildOptions::default()
        };
        build(
            layer,
            &boot,
            &BlobTarget::Dir(out.to_path_buf()),
            &opts,
            &|_| {},
        )
        .expect("build layer");
        parent = Some(boot);
    }
    parent.unwrap()
}

/// Builds `stack` both ways as `fs_version` and compares each image, mounted through our
/// FUSE (and for v5, by upstream's nydusd with `digest_validate` on), with overlayfs.
fn check_stack(stack: &[Layer], fs_version: FsVersion) -> Result<(), TestCaseError> {
    let scratch = Scratch::new();
    let root = scratch.path();
    let mut ovl_layers = vec![root.join("ovl-base")];
    let mut oci_layers = vec![root.join("oci-base")];
    fs::create_dir_all(&ovl_layers[0]).unwrap();
    fs::create_dir_all(&oci_layers[0]).unwrap();
    set_mtime(&ovl_layers[0], 1_700_000_000, 5);
    set_mtime(&oci_layers[0], 1_700_000_000, 5);
    for (i, layer) in stack.iter().enumerate() {
        let o = root.join(format!("ovl{i}"));
        write_layer(&o, layer, Form::Overlayfs);
        ovl_layers.push(o);
        let c = root.join(format!("oci{i}"));
        write_layer(&c, layer, Form::Oci);
        oci_layers.push(c);
    }
    // The kernel's view: lowerdir lists the top layer first.
    let mnt = root.join("overlay");
    fs::create_dir(&mnt).unwrap();
    let lower: Vec<String> = ovl_layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lower.join(":")))
        .arg(&mnt)
        .status()
        .unwrap();
    prop_assert!(status.success(), "overlay mount failed");
    let _overlay = OverlayMount(mnt.clone());
    for (name, layers, spec) in [
        ("overlayfs", &ovl_layers, WhiteoutSpec::Overlayfs),
        ("oci", &oci_layers, WhiteoutSpec::Oci),
    ] {
        let out = root.join(format!("img-{name}"));
        let boot = build_stack(layers, &out, spec, fs_version);
        let image = Image::open(&boot, BlobSource::Dir(out.clone())).unwrap();
        prop_assert_eq!(image.fs_version(), fs_version.number());
        let m = root.join(format!("m-{name}"));
        fs::create_dir(&m).unwrap();
        let fuse = BackgroundMount::start(image, &m, 2).expect("FUSE mount");
        let report =
            compare(&FsTree::new(&mnt).skipping_phantoms(), &FsTree::new(&m)).expect("compare");
        fuse.stop().unwrap();
        check_report(&format!("--whiteout-spec {name}, our FUSE"), &report)?;
        if fs_version == FsVersion::V5 {
            let daemon = Nydusd::mount_with(
                &boot,
                &out,
                &root.join(format!("nydusd-{name}")),
                serde_json::json!({"digest_validate": true}),
                "warn",
            );
            let report = compare(
                &FsTree::new(&mnt).skipping_phantoms(),
                &FsTree::new(&daemon.mnt),
            )
            .expect("compare");
            check_report(&format!("--whiteout-spec {name}, nydusd"), &report)?;
        }
    }
    Ok(())
}

/// Fails with every difference of `report`.
fn check_report(what: &str, report: &nydus_verify::Report) -> Result<(), TestCaseError> {
    let diffs: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
    if std::env::var_os("LAYERS_DEBUG").is_some() {
        eprintln!("{what}: {} entries compared", report.entries_compared);
    }
    prop_assert!(
        diffs.is_empty(),
        "{what}: image differs from overlayfs:\n{}",
        diffs.join("\n")
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12),
        max_shrink_iters: 200,
        .. ProptestConfig::default()
    })]

    #[test]
    fn layered_images_match_kernel_overlayfs(stack in stack()) {
        check_stack(&stack, FsVersion::V6)?;
    }
}

proptest! {
    // RAFS v5 stacks: half as many cases (PROPTEST_CASES halved), each also mounted by
    // nydusd, to keep the suite's time modest.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse::<u32>().ok()).map(|n| n.div_ceil(2)).unwrap_or(6),
        max_shrink_iters: 200,
        .. ProptestConfig::default()
    })]

    #[test]
    fn layered_v5_images_match_kernel_overlayfs(stack in stack()) {
        check_stack(&stack, FsVersion::V5)?;
    }
}
