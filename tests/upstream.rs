//! Interoperability with upstream Nydus 2.2.0 (`cargo install nydus-rs --version 2.2.0
//! --locked`): its `check` accepts our bootstraps, its `nydusd` mounts our images and shows
//! the source tree, and our reader reads what its builder writes.
//!
//! Excluded, and why:
//! - Upstream 2.2.0's tree code rejects POSIX ACL xattrs ("invalid xattr key", in
//!   nydus-rafs 0.2.2 `layout/mod.rs`; fixed upstream after 2.2.0). Its builder and its
//!   `check` both go through that code, so trees given to them carry no ACLs. nydusd does
//!   not use it: the mount test keeps ACLs.
//! - Upstream's builder records mtime 0 for the root directory, and stores each name of a
//!   hard-linked symlink as its own inode (with the source's link count); when we read
//!   *its* images, the root's mtime must be 0, and the grouping of hard-linked symlinks is
//!   not compared, though their link counts are (everything else is compared).
//! - nydusd shows the mount time for an mtime of exactly 0 seconds (nydus-rafs 0.2.2
//!   `fs.rs`, "older rafs image doesn't include mtime"); in the mount test, entries whose
//!   source mtime is 0 have their mtime left out of the comparison. Our image stores 0 (the
//!   library round-trip test checks it).

mod common {
    pub mod attrs;
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
use std::path::Path;
use std::process::Command;

use common::compare::{assert_identical_except, Except};
use common::nydusd_quirks::nydusd_mount_time;
use common::upstream::{upstream_bin, Nydusd};
use common::{ours::our_bin, sample::*, scratch::Scratch};
use nydus_image::mount::ImageTree;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::{Difference, FsTree};

const SETTINGS: [(&str, &str, &str); 4] = [
    ("zstd", "blake3", "0x100000"),
    ("lz4_block", "sha256", "0x100000"),
    ("none", "blake3", "0x1000"),
    ("zstd", "sha256", "0x10000"),
];

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

fn build_ours(src: &Path, out: &Path, compressor: &str, digester: &str, chunk: &str) {
    fs::create_dir_all(out.join("blobs")).unwrap();
    run(Command::new(our_bin())
        .args([
            "create",
            "--log-level",
            "warn",
            "--compressor",
            compressor,
            "--digester",
            digester,
            "--chunk-size",
            chunk,
        ])
        .arg("--bootstrap")
        .arg(out.join("boot"))
        .arg("--blob-dir")
        .arg(out.join("blobs"))
        .arg(src));
}

#[test]
fn upstream_check_accepts_our_bootstraps() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    // No ACLs: 2.2.0's check refuses them (see the module note).
    let spec = TreeSpec {
        acls: false,
        sparse_size: 2_000_000,
        big_dir_entries: 3000,
        depth: 70,
        ..TreeSpec::default()
    };
    make_tree(&src, &spec);
    for (i, (c, d, cs)) in SETTINGS.iter().enumerate() {
        let out = scratch.path().join(format!("out{i}"));
        build_ours(&src, &out, c, d, cs);
        let text = run(Command::new(upstream_bin("nydus-image"))
            .arg("check")
            .arg("--bootstrap")
            .arg(out.join("boot")));
        assert!(text.contains("RAFS filesystem metadata is valid"), "{text}");
    }
}

#[test]
fn upstream_nydusd_mounts_our_image() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    let spec = TreeSpec {
        sparse_size: 300 * 1024 * 1024 + 1,
        ..TreeSpec::default()
    };
    make_tree(&src, &spec);
    for (i, (c, d, cs)) in SETTINGS.iter().enumerate().take(2) {
        let out = scratch.path().join(format!("out{i}"));
        build_ours(&src, &out, c, d, cs);
        let daemon = Nydusd::mount(&out.join("boot"), &out.join("blobs"), &out);
        assert_identical_except(
            &format!("nydusd mount ({c}, {d})"),
            &FsTree::new(&src),
            &FsTree::new(&daemon.mnt),
            Except {
                differences: Some(&nydusd_mount_time),
                ..Except::default()
            },
        );
    }
}

#[test]
fn our_reader_reads_upstream_images() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    // Upstream 2.2.0's builder refuses POSIX ACLs; everything else stays.
    let spec = TreeSpec {
        acls: false,
        sparse_size: 40_000_000,
        ..TreeSpec::default()
    };
    make_tree(&src, &spec);
    for (i, (c, d, cs)) in SETTINGS.iter().enumerate() {
        let out = scratch.path().join(format!("up{i}"));
        fs::create_dir_all(out.join("blobs")).unwrap();
        run(Command::new(upstream_bin("nydus-image"))
            .args([
                "create",
                "--log-level",
                "warn",
                "--compressor",
                c,
                "--digester",
                d,
                "--chunk-size",
                cs,
            ])
            .arg("--bootstrap")
            .arg(out.join("boot"))
            .arg("--blob-dir")
            .arg(out.join("blobs"))
            .arg(&src));
        let mut image = Image::open(&out.join("boot"), BlobSource::Dir(out.join("blobs")))
            .expect("open upstream image");
        image.validate = true;
        assert_identical_except(
            &format!("upstream image ({c}, {d}, {cs})"),
            &FsTree::new(&src),
            &ImageTree(&image),
            Except {
                differences: Some(&|d| upstreams_own_way(&src, d)),
                ..Except::default()
            },
        );
    }
}

/// Where an image upstream's builder made from `src` may differ from it (see the module
/// note): the root's mtime, which it records as exactly 0, and the grouping of hard-linked
/// symlinks, whose names each get an inode with the source's link count.
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
