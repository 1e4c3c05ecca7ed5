//! The EROFS side of RAFS v6, checked by the kernel's own tools: `fsck.erofs` accepts our
//! bootstraps, and the kernel's EROFS driver mounts them and shows the same metadata as
//! the source. File contents are not compared through the kernel: it reads chunks at
//! their uncompressed block addresses, while RAFS blobs pack chunks densely (upstream
//! does the same), so only nydusd and our reader serve contents.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use nydus_image::builder::{build, BlobTarget, BuildOptions};

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}:\n{text}");
    text
}

struct KernelMount {
    mnt: std::path::PathBuf,
    loop_dev: String,
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
    }
}

fn kernel_mount(boot: &Path, blob: &Path, mnt: &Path) -> KernelMount {
    fs::create_dir_all(mnt).unwrap();
    let dev = run_ok(
        Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(blob),
    );
    let dev = dev
        .lines()
        .find(|l| l.starts_with("/dev/"))
        .expect("loop device")
        .to_string();
    let me = KernelMount {
        mnt: mnt.to_path_buf(),
        loop_dev: dev.clone(),
    };
    run_ok(
        Command::new("mount")
            .args(["-t", "erofs", "-o"])
            .arg(format!("ro,device={dev}"))
            .arg(boot)
            .arg(mnt),
    );
    me
}

#[test]
fn fsck_erofs_and_the_kernel_accept_our_images() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    let spec = TreeSpec {
        sparse_size: 10_000_000,
        ..TreeSpec::default()
    };
    make_tree(&src, &spec);
    for (i, chunk_size) in [0x10_0000u32, 0x1000].into_iter().enumerate() {
        let out = scratch.path().join(format!("out{i}"));
        fs::create_dir_all(&out).unwrap();
        let opts = BuildOptions {
            chunk_size,
            ..BuildOptions::default()
        };
        let summary = build(
            &src,
            &out.join("boot"),
            &BlobTarget::Dir(out.clone()),
            &opts,
            &|_| {},
        )
        .unwrap();
        let blob = summary.blob_path.unwrap();
        run_ok(
            Command::new("fsck.erofs")
                .arg(format!("--device={}", blob.display()))
                .arg(out.join("boot")),
        );
        let mount = kernel_mount(&out.join("boot"), &blob, &out.join("mnt"));
        let source = scan_fs(&src);
        let shown = scan_fs(&mount.mnt);
        assert_same_scan(
            &format!("kernel EROFS mount, chunk size 0x{chunk_size:x}"),
            &source,
            &shown,
        );
    }
}
