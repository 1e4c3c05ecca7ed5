//! `--prefetch-policy fs|blob` against upstream 2.2.0: for the same tree and the same
//! patterns, upstream's `inspect -R prefetch` lists the same paths for our image as for
//! its own (nids differ: our inodes are packed differently), the prefetched files' data
//! sits at the same place at the head of the blob (`--compressor none`, so that chunk
//! sizes agree), `inspect -R blobs` shows the same readahead fields, and upstream nydusd
//! mounting our image with `fs_prefetch` enabled prefetches exactly the table's inodes
//! and shows the tree unchanged.
//!
//! Excluded, and why: only the prefetched files' chunks are compared by place in a
//! directory build's blob. The rest of our blob is in depth-first order (a choice of
//! ours, for reads), upstream's in its inode order.

mod common {
    pub mod commands;
    pub mod compare;
    pub mod files;
    pub mod ours;
    pub mod output;
    pub mod scratch;
    pub mod upstream;
}

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::commands::run_with_stdin;
use common::compare::assert_identical;
use common::files::{data, write_file};
use common::ours::our_bin;
use common::output::text;
use common::scratch::Scratch;
use common::upstream::{upstream_bin, Nydusd};
use nydus_verify::FsTree;

/// Pattern sets, each given to both builders as standard input.
const CASES: [(&str, &str); 6] = [
    ("everything", "/\n"),
    ("a directory", "/a/b\n"),
    ("a file", "/z\n"),
    ("a missing path", "/missing\n"),
    (
        "nested and duplicate",
        "/a\n/a/b\n/a/b/c/f1\n/a/\n/a\n/d/sl\n/a/empty\n/d/hl\n/x/y\n/nope\n",
    ),
    (
        "mixed",
        "/d\n/a/big\n relative/path \n\n  /z  \n/\n/a-b\n/x/y/z/deep\n/a/b/../b\n",
    ),
];

/// Nested directories, a multi-chunk file, hard links (across directories, and of an
/// empty file), symlinks (one dangling), empty files and an empty directory, duplicate
/// contents, and names that sort one way by bytes ("a-b" < "a/") and the other by path
/// components ("a" < "a-b").
fn make_tree(root: &Path) {
    for d in ["a/b/c", "d", "e", "x/y/z"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    write_file(&root.join("a/b/c/f1"), b"hello\n");
    write_file(&root.join("a/b/g"), b"g\n");
    write_file(&root.join("a/big"), &data(3_000_000, 7));
    write_file(&root.join("a/empty"), b"");
    write_file(&root.join("a-b"), b"ab");
    write_file(&root.join("z"), &data(70_000, 3));
    write_file(&root.join("x/y/z/deep"), &data(5000, 9));
    write_file(&root.join("x/dup"), &data(5000, 9));
    fs::hard_link(root.join("a/b/g"), root.join("d/hl")).unwrap();
    fs::hard_link(root.join("a/empty"), root.join("x/empty-link")).unwrap();
    symlink("../a/b", root.join("d/sl")).unwrap();
    symlink("nowhere", root.join("d/dangling")).unwrap();
}

/// A builder (ours or upstream's) run with `patterns` on standard input.
fn create(bin: &Path, patterns: &str, args: &[&str]) -> Output {
    let all = ["create", "--log-level", "warn"].iter().chain(args);
    let out = run_with_stdin(bin, all, patterns.as_bytes());
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        text(&out)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What upstream's `inspect -R REQUEST` prints (JSON).
fn inspect(boot: &Path, request: &str) -> serde_json::Value {
    let out = Command::new(upstream_bin("nydus-image"))
        .args(["inspect", "-R", request])
        .arg(boot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inspect {}: {}",
        boot.display(),
        text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("inspect {}: {e}: {}", boot.display(), text(&out)))
}

/// Upstream's prefetch list of `boot`: per table slot, the paths of its inode (none for
/// a zero slot), and the inode numbers.
fn prefetch_list(boot: &Path) -> (Vec<Vec<String>>, Vec<u64>) {
    let v = inspect(boot, "prefetch");
    let list = v.as_array().expect("a JSON array");
    let paths = list
        .iter()
        .map(|e| {
            e["path"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    let inodes = list.iter().map(|e| e["inode"].as_u64().unwrap()).collect();
    (paths, inodes)
}

/// Upstream's `readahead_offset`/`readahead_size` of each blob of `boot`.
fn readahead(boot: &Path) -> Vec<(u64, u64)> {
    inspect(boot, "blobs")
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["readahead_offset"].as_u64().unwrap(),
                b["readahead_size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A chunk's place: blob index, compressed offset and size.
type Place = (u64, u64, u64);

/// Per regular file of `boot`, as upstream's `check -v` lists it: (size, its chunks'
/// places).
fn chunk_places(boot: &Path) -> BTreeMap<String, (u64, Vec<Place>)> {
    let out = Command::new(upstream_bin("nydus-image"))
        .args(["check", "-v", "-B"])
        .arg(boot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check {}: {}",
        boot.display(),
        text(&out)
    );
    let mut files = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(rest) = line
            .strip_prefix("inode: file ")
            .or_else(|| line.strip_prefix("inode: hardlink "))
        {
            let path = rest.split('"').nth(1).unwrap().to_string();
            let size: u64 = rest
                .split(" i_size ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap()
                .parse()
                .unwrap();
            files.insert(path.clone(), (size, Vec::new()));
            current = Some(path);
        } else if line.starts_with("inode: ") {
            current = None;
        } else if let Some(rest) = line.trim_start().strip_prefix("chunk: ") {
            let blob = rest.split(" blob_index ").nth(1).unwrap();
            let blob = blob.split(',').next().unwrap().parse().unwrap();
            // Uncompressed places: ours and upstream's agree on them; our uncompressed
            // blobs keep each chunk at its uncompressed (block) offset for the kernel,
            // where upstream packs them densely, so compressed offsets differ.
            let place = rest.split(" uncompressed ").nth(1).unwrap();
            let place = place.split(',').next().unwrap();
            let (off, len) = place.split_once('/').unwrap();
            let path = current.as_ref().expect("a chunk line follows its file");
            files
                .get_mut(path)
                .unwrap()
                .1
                .push((blob, off.parse().unwrap(), len.parse().unwrap()));
        }
    }
    assert!(!files.is_empty(), "no files listed for {}", boot.display());
    files
}

/// The patterns as upstream takes them: trimmed absolute paths, by components.
fn patterns_of(input: &str) -> Vec<PathBuf> {
    input
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// Whether `file` (an image path) is at or below a pattern: its data is prefetched.
fn covered(file: &str, patterns: &[PathBuf]) -> bool {
    patterns.iter().any(|p| Path::new(file).starts_with(p))
}

/// The source, as a directory or as a tar of it, and where each builder's image goes.
struct Built {
    ours: PathBuf,
    upstream: PathBuf,
    our_blobs: PathBuf,
}

fn build_both(
    src: &Path,
    tar: Option<&Path>,
    policy: &str,
    patterns: &str,
    out: &Path,
    extra: &[&str],
) -> Built {
    let (ours, upstream) = (out.join("ours"), out.join("upstream"));
    for d in [&ours, &upstream] {
        fs::create_dir_all(d.join("blobs")).unwrap();
    }
    let source = tar.unwrap_or(src);
    for (bin, dir) in [(our_bin(), &ours), (upstream_bin("nydus-image"), &upstream)] {
        let (boot, blobs) = (dir.join("boot"), dir.join("blobs"));
        let mut args = vec![
            "--prefetch-policy",
            policy,
            "--compressor",
            "none",
            "-B",
            s(&boot),
            "-D",
            s(&blobs),
        ];
        if tar.is_some() {
            args.extend(["--type", "tar-rafs"]);
        }
        args.extend_from_slice(extra);
        args.push(s(source));
        create(&bin, patterns, &args);
    }
    Built {
        ours: ours.join("boot"),
        upstream: upstream.join("boot"),
        our_blobs: ours.join("blobs"),
    }
}

/// `src` as a POSIX tar (nanosecond times), and that tar as GNU tar extracts it.
fn tar_of(src: &Path, tar: &Path, extracted: &Path) {
    let ok = Command::new("tar")
        .args(["--format=posix", "-cf"])
        .arg(tar)
        .arg("-C")
        .arg(src)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    fs::create_dir_all(extracted).unwrap();
    let ok = Command::new("tar")
        .arg("-xpf")
        .arg(tar)
        .arg("-C")
        .arg(extracted)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Compares ours with upstream's for one pattern set: the prefetch lists (by path, and
/// by inode where the builders agree, which they do for the root), the readahead
/// fields, and the places of the prefetched files' chunks (all chunks for a tar, which
/// both store in stream order). Returns our prefetch list.
fn compare(case: &str, built: &Built, patterns: &str, tar: bool) -> Vec<Vec<String>> {
    let (our_paths, our_inodes) = prefetch_list(&built.ours);
    let (up_paths, up_inodes) = prefetch_list(&built.upstream);
    assert_eq!(our_paths, up_paths, "{case}: prefetch lists");
    for (i, (o, u)) in our_inodes.iter().zip(&up_inodes).enumerate() {
        // Zero slots, and the root (nid 128 in both), agree by number too.
        if *u == 0 || *u == 128 || *o == 128 {
            assert_eq!(o, u, "{case}: slot {i}");
        }
    }
    assert_eq!(
        readahead(&built.ours),
        readahead(&built.upstream),
        "{case}: readahead"
    );
    let ours = chunk_places(&built.ours);
    let up = chunk_places(&built.upstream);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        up.keys().collect::<Vec<_>>(),
        "{case}: files"
    );
    if tar {
        assert_eq!(
            ours, up,
            "{case}: a tar's chunks are stored in stream order"
        );
        return our_paths;
    }
    let pats = patterns_of(patterns);
    // The new blob is the last one (a parent's come first, in their own order).
    let new_blob = ours.values().flat_map(|(_, c)| c).map(|c| c.0).max();
    let mut prefetched_end = 0;
    let mut prefetched = BTreeSet::new();
    for (path, (size, chunks)) in &ours {
        if *size > 0 && covered(path, &pats) {
            assert_eq!(
                Some(&(*size, chunks.clone())),
                up.get(path),
                "{case}: {path} is prefetched: its chunks sit where upstream's do"
            );
            for c in chunks.iter().filter(|c| Some(c.0) == new_blob) {
                prefetched.insert(*c);
                prefetched_end = prefetched_end.max(c.1 + c.2);
            }
        }
    }
    // Every chunk of the rest in the new blob (unless shared with a prefetched file)
    // comes after.
    for (path, (_, chunks)) in &ours {
        for c in chunks
            .iter()
            .filter(|c| Some(c.0) == new_blob && !prefetched.contains(c))
        {
            assert!(
                c.1 >= prefetched_end,
                "{case}: {path} chunk at {} before the prefetched data's end {prefetched_end}",
                c.1
            );
        }
    }
    our_paths
}

#[test]
fn fs_tables_and_blob_order_match_upstreams_for_directories_and_tars() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(&src);
    let tar = scratch.path().join("src.tar");
    tar_of(&src, &tar, &scratch.path().join("extracted"));
    let mut tables = 0;
    for (i, (case, patterns)) in CASES.iter().enumerate() {
        for (source, tar) in [("dir", None), ("tar-rafs", Some(tar.as_path()))] {
            let out = scratch.path().join(format!("fs-{i}-{source}"));
            let built = build_both(&src, tar, "fs", patterns, &out, &[]);
            let list = compare(
                &format!("{case} ({source})"),
                &built,
                patterns,
                tar.is_some(),
            );
            tables += list.iter().filter(|p| !p.is_empty()).count();
        }
    }
    // The cases do list entries (and the comparison is not of two empty lists).
    assert!(tables >= 20, "{tables} entries listed");
    // The everything case lists the root alone, the nested case every pattern but the
    // missing ones and the empty file (zero slots at the end).
    let out = scratch.path().join("fs-0-dir");
    assert_eq!(
        prefetch_list(&out.join("ours/boot")).0,
        [vec!["/".to_string()]]
    );
    let (nested, _) = prefetch_list(&scratch.path().join("fs-4-dir/ours/boot"));
    let named: Vec<&str> = nested
        .iter()
        .map(|p| p.first().map(String::as_str).unwrap_or(""))
        .collect();
    assert_eq!(
        named,
        [
            "/a/",
            "/a/b/",
            "/a/b/c/f1",
            "/d/sl",
            "/a/b/g",
            "/x/y/",
            "",
            ""
        ]
    );
}

#[test]
fn blob_policy_orders_the_blob_and_writes_no_table_as_upstream() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(&src);
    let tar = scratch.path().join("src.tar");
    tar_of(&src, &tar, &scratch.path().join("extracted"));
    for (i, (case, patterns)) in CASES.iter().enumerate() {
        for (source, tar) in [("dir", None), ("tar-rafs", Some(tar.as_path()))] {
            let out = scratch.path().join(format!("blob-{i}-{source}"));
            let built = build_both(&src, tar, "blob", patterns, &out, &[]);
            let list = compare(
                &format!("{case} ({source}, blob)"),
                &built,
                patterns,
                tar.is_some(),
            );
            assert!(
                list.is_empty(),
                "{case}: blob policy wrote a table {list:?}"
            );
        }
    }
    // The order did change: with "/z" first, z's data leads the blob, which it does not
    // without a policy.
    let first = |boot: &Path| {
        let places = chunk_places(boot);
        places
            .iter()
            .filter(|(_, (_, c))| c.first().is_some_and(|c| c.1 == 0))
            .map(|(p, _)| p.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(first(&scratch.path().join("blob-2-dir/ours/boot")), ["/z"]);
    let plain = scratch.path().join("plain");
    let built = build_both(&src, None, "none", "", &plain, &[]);
    assert_ne!(first(&built.ours), ["/z"]);
}

/// nydusd with `fs_prefetch` reads our table (its trace log names each inode it
/// prefetches) and serves the tree unchanged.
#[test]
fn nydusd_prefetches_our_tables_inodes_and_shows_the_tree() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(&src);
    let tar = scratch.path().join("src.tar");
    let extracted = scratch.path().join("extracted");
    tar_of(&src, &tar, &extracted);
    let patterns = CASES[4].1;
    for (source, tar, against) in [
        ("dir", None, &src),
        ("tar-rafs", Some(tar.as_path()), &extracted),
    ] {
        let out = scratch.path().join(source);
        let built = build_both(&src, tar, "fs", patterns, &out, &[]);
        let work = out.join("nydusd");
        fs::create_dir_all(&work).unwrap();
        let daemon = Nydusd::mount_with(
            &built.ours,
            &built.our_blobs,
            &work,
            serde_json::json!({
                "fs_prefetch": {
                    "enable": true,
                    "threads_count": 2,
                    "merging_size": 131072,
                    "bandwidth_rate": 0,
                    "prefetch_all": false
                }
            }),
            "trace",
        );
        assert_identical(
            &format!("nydusd mount of our {source} image with fs_prefetch"),
            &FsTree::new(against),
            &FsTree::new(&daemon.mnt),
        );
        // The table's entries, by path, as the mount numbers them: nydusd's st_ino is
        // the nid with the mount's index in the top 8 bits (its vfs layer's numbering).
        let want: Vec<u64> = ["/a", "/a/b", "/a/b/c/f1", "/d/sl", "/d/hl", "/x/y"]
            .iter()
            .map(|p| {
                fs::symlink_metadata(daemon.mnt.join(&p[1..]))
                    .unwrap()
                    .ino()
                    & ((1 << 56) - 1)
            })
            .collect();
        drop(daemon);
        let log = fs::read_to_string(work.join("nydusd.log")).unwrap();
        let hinted: Vec<u64> = log
            .lines()
            .filter_map(|l| l.split("hint prefetch inode ").nth(1))
            .map(|n| {
                n.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(hinted, want, "{source}: inodes nydusd prefetched");
        assert!(
            !log.contains("Prefetch error") && !log.contains("prefetch table error"),
            "{source}: {log}"
        );
    }
}

/// A layer over a parent: the table describes the merged tree (the parent's entries
/// too; a whited-out path names nothing), and the new blob holds the layer's prefetched
/// files first.
#[test]
fn layered_builds_list_the_merged_tree_as_upstream() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(&src);
    let upper = scratch.path().join("upper");
    fs::create_dir_all(upper.join("a/b")).unwrap();
    write_file(&upper.join("a/b/n"), b"new\n");
    write_file(&upper.join("new2"), &data(9000, 1));
    write_file(&upper.join(".wh.z"), b"");
    let parent = scratch.path().join("parent");
    fs::create_dir_all(parent.join("blobs")).unwrap();
    let out = Command::new(upstream_bin("nydus-image"))
        .args([
            "create",
            "--log-level",
            "warn",
            "--compressor",
            "none",
            "-B",
        ])
        .arg(parent.join("boot"))
        .arg("-D")
        .arg(parent.join("blobs"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let patterns = "/a/b\n/z\n/new2\n/a/big\n/\n/d\n";
    let built = build_both(
        &upper,
        None,
        "fs",
        patterns,
        &scratch.path().join("layer"),
        &["--parent-bootstrap", s(&parent.join("boot"))],
    );
    let list = compare("layer", &built, patterns, false);
    let named: Vec<&str> = list
        .iter()
        .map(|p| p.first().map(String::as_str).unwrap_or(""))
        .collect();
    assert_eq!(named, ["/a/b/", "/new2", "/a/big", "/", "/d/", ""]);
}

/// The bootstrap inside a blob (`--blob-inline-meta`): upstream's `inspect` reads only
/// bootstrap files, so the bootstrap is cut out of each blob (its tar header, the blob's
/// last 512 bytes, gives its size).
#[test]
fn inline_bootstraps_carry_the_same_table() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(&src);
    let patterns = CASES[5].1;
    let mut lists = Vec::new();
    for bin in [our_bin(), upstream_bin("nydus-image")] {
        let blob = scratch.path().join(format!("{}.blob", lists.len()));
        create(
            &bin,
            patterns,
            &[
                "--prefetch-policy",
                "fs",
                "--blob-inline-meta",
                "--blob",
                s(&blob),
                s(&src),
            ],
        );
        let bytes = fs::read(&blob).unwrap();
        let header = &bytes[bytes.len() - 512..];
        assert!(header.starts_with(b"image.boot\0"), "{}", blob.display());
        let size_field = std::str::from_utf8(&header[124..136]).unwrap();
        let size = usize::from_str_radix(size_field.trim_matches(['\0', ' ']), 8).unwrap();
        let boot = blob.with_extension("boot");
        fs::write(&boot, &bytes[bytes.len() - 512 - size..bytes.len() - 512]).unwrap();
        lists.push(prefetch_list(&boot).0);
    }
    assert_eq!(lists[0], lists[1]);
    assert!(lists[0].len() >= 6, "{:?}", lists[0]);
}

/// Our own reader lists the table of upstream's image as upstream's `inspect` does.
#[test]
fn our_reader_lists_upstreams_table() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(&src);
    let built = build_both(&src, None, "fs", CASES[4].1, scratch.path(), &[]);
    for boot in [&built.upstream, &built.ours] {
        let image =
            nydus_image::reader::Image::open(boot, nydus_image::storage::blobs::BlobSource::None)
                .unwrap();
        let ours: Vec<u64> = image
            .prefetch_table()
            .unwrap()
            .iter()
            .map(|n| n.0)
            .collect();
        let (_, theirs) = prefetch_list(boot);
        let theirs: Vec<u64> = theirs.into_iter().filter(|&n| n != 0).collect();
        assert_eq!(ours, theirs, "{}", boot.display());
        let paths: Vec<String> = image
            .prefetch_paths()
            .unwrap()
            .into_iter()
            .map(|(_, p)| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(
            paths,
            ["/a", "/a/b", "/a/b/c/f1", "/d/sl", "/a/b/g", "/x/y"]
        );
    }
}

/// `merge --prefetch-policy fs` writes a table over the merged tree: for the same layer
/// bootstraps and patterns, upstream's `inspect -R prefetch` lists the same paths for our
/// merge as for upstream's, including a path only the upper layer has and one its
/// whiteout removed.
#[test]
fn merged_images_list_the_same_table_as_upstreams_merge() {
    let scratch = Scratch::new();
    let lower = scratch.path().join("lower");
    make_tree(&lower);
    let upper = scratch.path().join("upper");
    fs::create_dir_all(upper.join("a/b")).unwrap();
    write_file(&upper.join("a/b/n"), b"new\n");
    write_file(&upper.join("new2"), &data(9000, 1));
    write_file(&upper.join(".wh.z"), b"");
    // Each layer built by upstream as the converter builds it (`--whiteout-spec none`
    // keeps `.wh.z` for the merge to apply), its bootstrap named by its blob's id, as
    // merge names a layer's blob by its bootstrap's file name.
    let mut boots = Vec::new();
    for (name, src) in [("lower", &lower), ("upper", &upper)] {
        let blobs = scratch.path().join(format!("{name}-blobs"));
        fs::create_dir_all(&blobs).unwrap();
        let boot = scratch.path().join(format!("{name}.boot"));
        let out = Command::new(upstream_bin("nydus-image"))
            .args([
                "create",
                "--log-level",
                "warn",
                "--whiteout-spec",
                "none",
                "-B",
            ])
            .arg(&boot)
            .arg("-D")
            .arg(&blobs)
            .arg(src)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let id = fs::read_dir(&blobs)
            .unwrap()
            .next()
            .expect("one blob")
            .unwrap()
            .file_name();
        let named = scratch.path().join(id);
        fs::rename(&boot, &named).unwrap();
        boots.push(named);
    }
    let patterns = "/a/b\n/z\n/new2\n/a/big\n/missing\n/d\n";
    let merge = |bin: &Path, out: &Path| {
        let mut child = Command::new(bin)
            .args(["merge", "--log-level", "warn", "--prefetch-policy", "fs"])
            .arg("--bootstrap")
            .arg(out)
            .args(&boots)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(patterns.as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{} merge: {}",
            bin.display(),
            text(&out)
        );
    };
    let ours = scratch.path().join("ours.boot");
    let theirs = scratch.path().join("theirs.boot");
    merge(&our_bin(), &ours);
    merge(&upstream_bin("nydus-image"), &theirs);
    let (our_list, _) = prefetch_list(&ours);
    let (their_list, _) = prefetch_list(&theirs);
    assert_eq!(our_list, their_list, "prefetch tables of the two merges");
    let named: Vec<&str> = our_list
        .iter()
        .map(|p| p.first().map(String::as_str).unwrap_or(""))
        .collect();
    assert_eq!(named, ["/a/b/", "/new2", "/a/big", "/d/", "", ""]);
}
