//! The EROFS side of RAFS v6, checked by the kernel's own tools: `fsck.erofs` accepts our
//! bootstraps, and the kernel's EROFS driver mounts them and shows the same metadata as
//! the source. File contents are not compared here: these images are compressed, and
//! the kernel reads chunks as stored at their block addresses (uncompressed images, whose
//! chunks sit there, are read through the kernel in tests/kernel.rs).

mod common {
    pub mod attrs;
    pub mod compare;
    pub mod files;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
    pub mod upstream;
}

use std::fs;
use std::path::Path;
use std::process::Command;

use common::compare::{assert_identical, assert_identical_except, Except};
use common::{attrs::*, files::*, sample::*, scratch::Scratch, upstream::Nydusd};
use nydus_image::builder::{build, BlobTarget, BuildOptions};
use nydus_image::mount::ImageTree;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::FsTree;

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

/// Builds `src` into `out` (bootstrap `out/boot`) with `chunk_size`, has fsck.erofs check
/// the bootstrap against its blob, and returns the blob's path.
fn build_and_fsck(src: &Path, out: &Path, chunk_size: u32) -> std::path::PathBuf {
    fs::create_dir_all(out).unwrap();
    let opts = BuildOptions {
        chunk_size,
        ..BuildOptions::default()
    };
    let summary = build(
        src,
        &out.join("boot"),
        &BlobTarget::Dir(out.to_path_buf()),
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
    blob
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
        let blob = build_and_fsck(&src, &out, chunk_size);
        let mount = kernel_mount(&out.join("boot"), &blob, &out.join("mnt"));
        assert_identical_except(
            &format!("kernel EROFS mount, chunk size 0x{chunk_size:x}"),
            &FsTree::new(&src),
            &FsTree::new(&mount.mnt),
            Except {
                content: true,
                ..Except::default()
            },
        );
    }
}

/// File inodes are packed without regard to block boundaries, as upstream packs them, so
/// some 64-byte inodes start in one block and end in the next. The kernel, fsck.erofs,
/// upstream nydusd and our reader must all read such inodes, xattrs and chunk indexes.
#[test]
fn inodes_across_block_boundaries_are_read_by_everyone() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..400u64 {
        let path = src.join(format!("f{i:03}"));
        // 0 to 3 chunks of 4 KiB, so records are 64, 72, 80 or 88 bytes long.
        write_file(
            &path,
            &data((i % 4) as usize * 4096 - (i % 4 != 0) as usize, i),
        );
        if i % 5 == 0 {
            set_xattr(&path, "user.tag", format!("value {i}").as_bytes());
        }
    }
    let out = scratch.path().join("out");
    let blob = build_and_fsck(&src, &out, 0x1000);
    let mount = kernel_mount(&out.join("boot"), &blob, &out.join("mnt"));
    // The kernel reports an EROFS inode's nid as its number; slots are 32 bytes, so a
    // 64-byte inode in slot 127 of a block ends in the next one.
    let crossing = fs::read_dir(&mount.mnt)
        .unwrap()
        .map(|e| std::os::unix::fs::MetadataExt::ino(&e.unwrap().metadata().unwrap()))
        .filter(|nid| nid % 128 == 127)
        .count();
    assert!(crossing > 0, "no inode crosses a block boundary");
    let source = FsTree::new(&src);
    assert_identical_except(
        "kernel EROFS mount",
        &source,
        &FsTree::new(&mount.mnt),
        Except {
            content: true,
            ..Except::default()
        },
    );
    drop(mount);

    let image = Image::open(&out.join("boot"), BlobSource::Dir(out.clone())).unwrap();
    assert_identical("our reader", &source, &ImageTree(&image));
    let nydusd = Nydusd::mount(&out.join("boot"), &out, &scratch.path().join("nydusd"));
    assert_identical("upstream nydusd", &source, &FsTree::new(&nydusd.mnt));
}
