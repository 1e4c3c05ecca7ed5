//! Bad input: clear errors naming the file and the problem, no panic, and nothing left at
//! the final output paths.

mod common {
    pub mod attrs;
    pub mod errors;
    pub mod files;
    pub mod ours;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
}

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{attrs::*, errors::chain, files::*, ours::*, sample::*, scratch::*};
use nydus_image::builder::blob::BlobWriter;
use nydus_image::builder::chunker::{chunk_files, ChunkOptions};
use nydus_image::builder::source::dir::read_tree;
use nydus_image::builder::{build, BlobTarget, BuildOptions};
use nydus_image::format::{Compressor, Digester};
use nydus_image::ops::check::check;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

fn build_err(src: &Path, boot: &Path, blobs: &Path) -> String {
    build(
        src,
        boot,
        &BlobTarget::Dir(blobs.to_path_buf()),
        &BuildOptions::default(),
        &|_| {},
    )
    .map_err(|e| chain(&e))
    .expect_err("build must fail")
}

fn assert_empty_dir(dir: &Path) {
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "{} holds leftovers: {left:?}",
        dir.display()
    );
}

#[test]
fn missing_source_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let src = tmp.path().join("no-such-dir");
    let err = build_err(&src, &out.join("boot"), &out);
    assert!(
        err.contains("no-such-dir") && err.contains("No such file"),
        "{err}"
    );
    assert_empty_dir(&out);
}

#[test]
fn unreadable_entry_is_named_and_leaves_no_output() {
    // Root reads everything, so the build runs as nobody.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    write_file(&src.join("ok"), &data(100_000, 1));
    write_file(&src.join("sub/secret"), b"secret");
    chmod(&src.join("sub/secret"), 0o000);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    chmod(tmp.path(), 0o755);
    chmod(&out, 0o777);
    let result = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(our_bin())
        .args(["create", "--log-level", "warn", "--bootstrap"])
        .arg(out.join("boot"))
        .arg("--blob-dir")
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("sub/secret") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert_empty_dir(&out);
}

#[test]
fn unwritable_outputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), b"data");
    let err = build_err(&src, &tmp.path().join("missing/boot"), tmp.path());
    assert!(err.contains("missing/boot"), "{err}");
    let err = build_err(
        &src,
        &tmp.path().join("boot"),
        &tmp.path().join("no-blob-dir"),
    );
    assert!(
        err.contains("no-blob-dir") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!tmp.path().join("boot").exists());
}

#[test]
fn files_changing_during_the_build_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    for name in [
        "shrinks",
        "grows",
        "vanishes",
        "symlinked",
        "rewritten",
        "dir-now",
        "fifo-now",
    ] {
        write_file(&src.join(name), &data(300_000, 3));
    }
    // A file of the same size a symlink could point at: following it would give a
    // consistent-looking but wrong image.
    write_file(&tmp.path().join("decoy"), &data(300_000, 4));
    let opts = ChunkOptions {
        chunk_size: 0x10000,
        compressor: Compressor::Zstd,
        digester: Digester::Blake3,
        threads: 2,
    };
    type Case = (&'static str, fn(&Path), &'static str);
    let cases: [Case; 7] = [
        ("shrinks", |p| fs::write(p, b"short").unwrap(), "shrank"),
        ("grows", |p| write_file(p, &data(400_000, 3)), "grew"),
        ("vanishes", |p| fs::remove_file(p).unwrap(), "No such file"),
        (
            "symlinked",
            |p| {
                fs::remove_file(p).unwrap();
                let decoy = p.parent().unwrap().parent().unwrap().join("decoy");
                std::os::unix::fs::symlink(decoy, p).unwrap();
            },
            "replaced by a symlink",
        ),
        (
            "rewritten",
            |p| {
                // Same size, other bytes, a later mtime.
                std::thread::sleep(std::time::Duration::from_millis(5));
                write_file(p, &data(300_000, 5))
            },
            "modified during the build",
        ),
        (
            "dir-now",
            |p| {
                fs::remove_file(p).unwrap();
                fs::create_dir(p).unwrap();
            },
            "no longer a regular file",
        ),
        (
            // Opening a FIFO for reading waits for a writer: the build must not hang.
            "fifo-now",
            |p| {
                fs::remove_file(p).unwrap();
                let made = std::process::Command::new("mkfifo")
                    .arg(p)
                    .status()
                    .unwrap();
                assert!(made.success(), "mkfifo {}", p.display());
            },
            "no longer a regular file",
        ),
    ];
    for (name, change, expect) in cases {
        let only = tmp.path().join(format!("only-{name}"));
        fs::create_dir(&only).unwrap();
        fs::copy(src.join(name), only.join(name)).unwrap();
        let tree = read_tree(&only).unwrap();
        change(&only.join(name));
        let mut blob = BlobWriter::new(Vec::new(), opts.compressor, opts.digester, opts.chunk_size);
        let err = chunk_files(&tree, opts, &mut blob, &|_| None, &|_| {})
            .map_err(|e| chain(&e))
            .expect_err(name);
        assert!(err.contains(name) && err.contains(expect), "{name}: {err}");
    }
}

#[test]
fn unrepresentable_xattr_is_named() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), b"x");
    set_xattr(&src.join("f"), "user.too-big", &vec![7u8; 65536]);
    let out = scratch.path().join("out");
    fs::create_dir(&out).unwrap();
    let err = build_err(&src, &out.join("boot"), &out);
    assert!(err.contains("user.too-big") && err.contains("/f"), "{err}");
    assert_empty_dir(&out);
}

/// A small but varied image, as bytes: (bootstrap, blob dir).
fn sample_image(root: &Path) -> (Vec<u8>, std::path::PathBuf) {
    let src = root.join("src");
    let spec = TreeSpec {
        acls: false,
        sparse_size: 300_000,
        big_dir_entries: 500,
        depth: 6,
        chunk_size: 0x4000,
        big_xattrs: false,
    };
    make_tree(&src, &spec);
    let out = root.join("out");
    fs::create_dir(&out).unwrap();
    let opts = BuildOptions {
        chunk_size: 0x4000,
        ..BuildOptions::default()
    };
    build(
        &src,
        &out.join("boot"),
        &BlobTarget::Dir(out.clone()),
        &opts,
        &|_| {},
    )
    .unwrap();
    (fs::read(out.join("boot")).unwrap(), out)
}

/// Opens, checks, walks and reads everything; returns whether it all worked.
fn exercise(bytes: Vec<u8>, blobs: &Path) -> Result<(), String> {
    let mut image = Image::from_bytes(
        Path::new("mutated.boot"),
        bytes,
        BlobSource::Dir(blobs.to_path_buf()),
    )
    .map_err(|e| chain(&e))?;
    image.validate = true;
    check(&image, true).map_err(|e| chain(&e))?;
    image
        .walk(|_, nid| {
            image.xattrs(nid)?;
            if image.stat(nid)?.mode & libc::S_IFMT == libc::S_IFREG {
                image.read_all(nid)?;
            }
            Ok(())
        })
        .map_err(|e| chain(&e))
}

#[test]
fn truncated_bootstraps_give_errors_with_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, blobs) = sample_image(tmp.path());
    assert!(exercise(bytes.clone(), &blobs).is_ok());
    let mut step = 1;
    let mut len = 0;
    while len < bytes.len() {
        let err = exercise(bytes[..len].to_vec(), &blobs).expect_err("a truncated bootstrap fails");
        assert!(
            err.contains("mutated.boot") && err.contains("0x"),
            "truncated to {len}: {err}"
        );
        len += step;
        step = (step * 2).min(4093);
    }
}

#[test]
fn corrupted_bootstraps_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, blobs) = sample_image(tmp.path());
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut failures = 0;
    for round in 0..3000 {
        let mut m = bytes.clone();
        for _ in 0..1 + round % 4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Aim most mutations at the metadata, where they matter.
            let limit = if round % 2 == 0 {
                8192.min(m.len())
            } else {
                m.len()
            };
            let at = (x as usize) % limit;
            m[at] = (x >> 32) as u8;
        }
        if exercise(m, &blobs).is_err() {
            failures += 1;
        }
    }
    assert!(failures > 0, "some mutations must be caught");
}

#[test]
fn check_command_reports_the_offset_of_a_bad_superblock() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut bytes, _) = sample_image(tmp.path());
    bytes[1024] ^= 0xff;
    let bad = tmp.path().join("bad.boot");
    fs::write(&bad, &bytes).unwrap();
    let out = Command::new(our_bin())
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("bad.boot") && stderr.contains("0x400") && stderr.contains("magic"),
        "{stderr}"
    );
}

/// Issue 17: a parent bootstrap or chunk dictionary that cannot be read fails the build
/// with the reader's error kept as its cause (naming the offset), not flattened to text.
#[test]
fn unreadable_parent_and_dictionary_keep_the_read_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, _) = sample_image(tmp.path());
    let truncated = tmp.path().join("truncated.boot");
    fs::write(&truncated, &bytes[..3000]).unwrap();
    let src = tmp.path().join("src");
    let out = tmp.path().join("again");
    fs::create_dir(&out).unwrap();
    let cases = [
        (
            "parent",
            BuildOptions {
                parent_bootstrap: Some(truncated.clone()),
                ..BuildOptions::default()
            },
        ),
        (
            "dictionary",
            BuildOptions {
                chunk_dict: Some(truncated.clone()),
                ..BuildOptions::default()
            },
        ),
    ];
    for (name, opts) in cases {
        let err = build(
            &src,
            &out.join("boot"),
            &BlobTarget::Dir(out.clone()),
            &opts,
            &|_| {},
        )
        .expect_err(name);
        assert!(
            err.to_string().contains(&*truncated.to_string_lossy()),
            "{name}: {err}"
        );
        let cause = std::error::Error::source(&err)
            .and_then(|c| c.downcast_ref::<nydus_image::reader::ReadError>());
        assert!(
            matches!(cause, Some(nydus_image::reader::ReadError::Format { .. })),
            "{name}: {err:?}"
        );
        assert!(chain(&err).contains("at 0x0"), "{name}: {}", chain(&err));
        assert_empty_dir(&out);
    }
}
