//! Property test: random trees (every entry kind, xattrs, odd names, sizes around chunk
//! boundaries, sparse files, any permission bits, owners and times) survive a build, read
//! back unchanged through the library and through our FUSE mount, with a random
//! compressor, digester and chunk size; building twice gives identical bytes. The same
//! for RAFS v5 (not through upstream's nydusd: see `check_tree`).
//! PROPTEST_CASES sets the number of trees (default 8 here, half that for v5).

mod common {
    pub mod attrs;
    pub mod compare;
    pub mod files;
    pub mod privileged;
    pub mod scratch;
}

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{attrs::*, compare::assert_identical, files::*, privileged::*, scratch::Scratch};
use nydus_image::builder::{build, BlobTarget, BuildOptions, FsVersion};
use nydus_image::format::{Compressor, Digester};
use nydus_image::mount::{BackgroundMount, ImageTree};
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::FsTree;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Kind {
    File { size: u64, seed: u8, sparse: bool },
    Dir,
    Symlink(Vec<u8>),
    Fifo,
    Char(u32, u32),
    Hardlink(usize),
}

#[derive(Clone, Debug)]
struct Item {
    name: Vec<u8>,
    in_dir: Option<usize>,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z]{1,12}".prop_map(|s| s.into_bytes()),
        prop::collection::vec(1u8..=255, 1..40)
            .prop_map(|v| v.into_iter().filter(|&b| b != b'/').collect::<Vec<u8>>()),
        Just(vec![b'n'; 255]),
        Just(b"-dash".to_vec()),
        Just(b"with space".to_vec()),
    ]
    .prop_filter("not . or .. or empty", |n| {
        !n.is_empty() && n != b"." && n != b".."
    })
}

fn kind(chunk: u64) -> impl Strategy<Value = Kind> {
    let sizes = prop::sample::select(vec![
        0,
        1,
        chunk - 1,
        chunk,
        chunk + 1,
        3 * chunk + 17,
        70_000,
    ]);
    prop_oneof![
        5 => (sizes, any::<u8>(), any::<bool>()).prop_map(|(size, seed, sparse)| Kind::File { size, seed, sparse }),
        2 => Just(Kind::Dir),
        2 => prop::collection::vec(1u8..=255, 1..300).prop_map(Kind::Symlink),
        1 => Just(Kind::Fifo),
        1 => (0u32..4096, 0u32..1_000_000).prop_map(|(a, b)| Kind::Char(a, b)),
        1 => (0usize..64).prop_map(Kind::Hardlink),
    ]
}

fn item(chunk: u64) -> impl Strategy<Value = Item> {
    (
        name(),
        prop::option::of(0usize..64),
        kind(chunk),
        0u32..0o10000,
        prop::sample::select(vec![0u32, 1, 1000, 65535, 65536, 4_000_000_000]),
        prop::sample::select(vec![0u32, 5, 70_000]),
        (-(1i64 << 33)..(1i64 << 34), 0u32..1_000_000_000),
        prop::collection::vec(
            (
                "user\\.[a-z]{1,8}|trusted\\.[a-z]{1,8}",
                prop::collection::vec(any::<u8>(), 0..600),
            ),
            0..3,
        ),
    )
        .prop_map(|(name, in_dir, kind, mode, uid, gid, mtime, xattrs)| Item {
            name,
            in_dir,
            kind,
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
}

fn settings() -> impl Strategy<Value = (Compressor, Digester, u32)> {
    (
        prop::sample::select(vec![
            Compressor::None,
            Compressor::Lz4Block,
            Compressor::Zstd,
        ]),
        prop::sample::select(vec![Digester::Blake3, Digester::Sha256]),
        prop::sample::select(vec![0x1000u32, 0x4000, 0x10_0000]),
    )
}

/// Creates the items under `root`; returns nothing. Items whose parent is not a directory
/// or whose name is taken are skipped.
fn materialize(root: &Path, items: &[Item]) {
    let mut paths: Vec<Option<std::path::PathBuf>> = Vec::new();
    let mut dirs: Vec<usize> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let parent = match it
            .in_dir
            .and_then(|d| dirs.get(d % dirs.len().max(1)).copied())
        {
            Some(d) if !dirs.is_empty() => paths[d].clone().unwrap(),
            _ => root.to_path_buf(),
        };
        let path = parent.join(std::ffi::OsStr::from_bytes(&it.name));
        if fs::symlink_metadata(&path).is_ok() {
            paths.push(None);
            continue;
        }
        let made = match &it.kind {
            Kind::File { size, seed, sparse } => {
                if *sparse && *size > 8192 {
                    let f = fs::File::create(&path).unwrap();
                    f.set_len(*size).unwrap();
                    use std::os::unix::fs::FileExt;
                    f.write_all_at(&data(100, *seed as u64), size / 2).unwrap();
                } else {
                    write_file(&path, &data(*size as usize, *seed as u64));
                }
                true
            }
            Kind::Dir => {
                fs::create_dir(&path).unwrap();
                dirs.push(i);
                true
            }
            Kind::Symlink(t) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), &path).unwrap();
                true
            }
            Kind::Fifo => {
                mknod(&path, libc::S_IFIFO | 0o644, 0, 0);
                true
            }
            Kind::Char(a, b) => {
                mknod(&path, libc::S_IFCHR | 0o600, *a, *b);
                true
            }
            Kind::Hardlink(to) => {
                let target = paths.get(*to % paths.len().max(1)).cloned().flatten();
                match target {
                    Some(t)
                        if fs::symlink_metadata(&t)
                            .map(|m| !m.is_dir())
                            .unwrap_or(false) =>
                    {
                        let rc = unsafe {
                            libc::linkat(
                                libc::AT_FDCWD,
                                std::ffi::CString::new(t.as_os_str().as_bytes())
                                    .unwrap()
                                    .as_ptr(),
                                libc::AT_FDCWD,
                                std::ffi::CString::new(path.as_os_str().as_bytes())
                                    .unwrap()
                                    .as_ptr(),
                                0,
                            )
                        };
                        rc == 0
                    }
                    _ => false,
                }
            }
        };
        if !made {
            paths.push(None);
            continue;
        }
        let is_link = matches!(it.kind, Kind::Symlink(_));
        let hard = matches!(it.kind, Kind::Hardlink(_));
        if !hard {
            for (n, v) in &it.xattrs {
                // user.* xattrs exist only on regular files and directories.
                let user_ok = matches!(it.kind, Kind::File { .. } | Kind::Dir);
                if user_ok || !n.starts_with("user.") {
                    set_xattr(&path, n, v);
                }
            }
            lchown(&path, it.uid, it.gid);
            if !is_link {
                chmod(
                    &path,
                    if matches!(it.kind, Kind::Dir) {
                        it.mode | 0o700
                    } else {
                        it.mode
                    },
                );
            }
        }
        paths.push(Some(path));
    }
    // Times last (children change their directory's mtime), deepest first.
    for (i, it) in items.iter().enumerate().rev() {
        if let Some(p) = &paths[i] {
            set_mtime(p, it.mtime.0, it.mtime.1 as i64);
        }
    }
}

fn check_tree(
    items: &[Item],
    (compressor, digester, chunk_size): (Compressor, Digester, u32),
    fs_version: FsVersion,
) -> Result<(), TestCaseError> {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir(&src).unwrap();
    materialize(&src, items);
    let opts = BuildOptions {
        compressor,
        digester,
        chunk_size,
        fs_version,
        threads: 2,
        ..BuildOptions::default()
    };
    let (a, b) = (scratch.path().join("a"), scratch.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    build(
        &src,
        &a.join("boot"),
        &BlobTarget::Dir(a.clone()),
        &opts,
        &|_| {},
    )
    .expect("build");
    build(
        &src,
        &b.join("boot"),
        &BlobTarget::Dir(b.clone()),
        &opts,
        &|_| {},
    )
    .expect("build again");
    prop_assert_eq!(
        fs::read(a.join("boot")).unwrap(),
        fs::read(b.join("boot")).unwrap(),
        "repeatable bootstrap"
    );
    let source = FsTree::new(&src);
    let mut image = Image::open(&a.join("boot"), BlobSource::Dir(a.clone())).unwrap();
    image.validate = true;
    let report = assert_identical("library", &source, &ImageTree(&image));
    if std::env::var_os("TREES_DEBUG").is_some() {
        eprintln!(
            "{} entries, {compressor:?} {digester:?} 0x{chunk_size:x}",
            report.entries_compared
        );
    }
    let mnt = scratch.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mount = BackgroundMount::start(image, &mnt, 2).expect("FUSE");
    assert_identical("FUSE", &source, &FsTree::new(&mnt));
    mount.stop().unwrap();
    // Not compared through upstream's nydusd here (tests/layers.rs and tests/v5.rs do
    // that): on random trees nydusd 2.2.0 serves wrong bytes for some files whose chunks
    // are shared with a file read before them (two sparse files with a common zero
    // tail chunk, read one after the other, do it every time), upstream's own v5 and v6
    // images of the same tree alike; and it cannot list a directory holding a later
    // name of a hard-linked non-regular file (a FIFO, say) whose first name has the
    // lower inode number (its v5 check wants a parent's number below a child's unless
    // the child is a regular file with links), upstream's own images too.
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8),
        max_shrink_iters: 100,
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_trees_round_trip(s in settings(), items in prop::collection::vec(item(0x1000), 1..40)) {
        check_tree(&items, s, FsVersion::V6)?;
    }
}

proptest! {
    // RAFS v5: half as many trees.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse::<u32>().ok()).map(|n| n.div_ceil(2)).unwrap_or(4),
        max_shrink_iters: 100,
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_v5_trees_round_trip(s in settings(), items in prop::collection::vec(item(0x1000), 1..40)) {
        check_tree(&items, s, FsVersion::V5)?;
    }
}
