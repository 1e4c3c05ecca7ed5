//! `create --aligned-chunk` (issue 19), upstream 2.2.0's flag: RAFS v5 chunks get
//! uncompressed offsets at 4 KiB boundaries (each chunk's uncompressed size rounded up to
//! 4 KiB before the next), where without it they follow one another byte for byte;
//! RAFS v6 always aligns them, and upstream accepts the flag there and changes nothing.
//! Compared with upstream's images of the same tree through upstream's own
//! `check -v` listing, and served by upstream nydusd with digest validation.

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

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::compare::{assert_identical_except, Except};
use common::nydusd_quirks::nydusd_mount_time;
use common::ours::our_bin;
use common::sample::{make_tree, TreeSpec};
use common::scratch::Scratch;
use common::upstream::{upstream_bin, Nydusd};
use nydus_verify::FsTree;

/// Runs `cmd`, failing the test with its output if it fails; returns stdout and stderr.
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

/// Builds `src` into `out/boot` and `out/blobs` with upstream's builder or ours.
fn build(upstream: bool, src: &Path, out: &Path, flags: &[&str]) {
    fs::create_dir_all(out.join("blobs")).unwrap();
    let bin = if upstream {
        upstream_bin("nydus-image")
    } else {
        our_bin()
    };
    run(Command::new(bin)
        .args(["create", "--log-level", "warn"])
        .args(flags)
        .arg("--bootstrap")
        .arg(out.join("boot"))
        .arg("--blob-dir")
        .arg(out.join("blobs"))
        .arg(src));
}

/// One chunk as upstream's `check -v` lists it: digest, uncompressed offset and size.
type Listed = (String, u64, u64);

/// The image's chunks by (blob index, chunk index) and each blob's uncompressed size,
/// read from upstream 2.2.0's `check -v` (every file's chunks, then the blob table).
fn listing(boot: &Path) -> (BTreeMap<(u32, u32), Listed>, Vec<u64>) {
    let text = run(Command::new(upstream_bin("nydus-image"))
        .args(["check", "-v", "--bootstrap"])
        .arg(boot));
    let field = |line: &str, name: &str| -> String {
        let at = line
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {line}"))
            + name.len();
        line[at..]
            .trim_start()
            .split([',', ' '])
            .next()
            .unwrap()
            .to_string()
    };
    let num = |s: &str| match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => s.parse().unwrap(),
    };
    let mut chunks = BTreeMap::new();
    let mut blobs = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("chunk: ") {
            let key = (
                num(&field(rest, "blob_index")) as u32,
                num(&field(rest, "index")) as u32,
            );
            let (off, size) = field(rest, "uncompressed").split_once('/').map_or_else(
                || panic!("uncompressed offset/size in {line}"),
                |(o, s)| (num(o), num(s)),
            );
            let chunk = (field(rest, "id"), off, size);
            let seen = chunks.entry(key).or_insert_with(|| chunk.clone());
            assert_eq!(*seen, chunk, "chunk {key:?} listed twice, differently");
        } else if line.contains("uncompressed file size") {
            blobs.push(num(&field(line, "uncompressed file size")));
        }
    }
    assert!(!chunks.is_empty(), "no chunks listed:\n{text}");
    (chunks, blobs)
}

/// Checks the rule: each chunk's uncompressed offset follows the previous chunk of its
/// blob, its size rounded up to 4 KiB when `aligned`; the blob's uncompressed size ends
/// after the last chunk the same way.
fn assert_offsets_follow(
    what: &str,
    chunks: &BTreeMap<(u32, u32), Listed>,
    blobs: &[u64],
    aligned: bool,
) {
    let step = |size: u64| {
        if aligned {
            size.next_multiple_of(4096)
        } else {
            size
        }
    };
    let mut next = vec![0u64; blobs.len()];
    for (&(blob, index), (_, off, size)) in chunks {
        let want = &mut next[blob as usize];
        assert_eq!(*off, *want, "{what}: chunk {index} of blob {blob}");
        if aligned {
            assert_eq!(off % 4096, 0, "{what}: chunk {index}");
        }
        *want += step(*size);
    }
    assert_eq!(next, blobs, "{what}: blob uncompressed sizes");
}

#[test]
fn aligned_chunk_aligns_v5_uncompressed_offsets_as_upstream_does() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    // No ACLs: upstream 2.2.0's builder refuses them.
    make_tree(
        &src,
        &TreeSpec {
            acls: false,
            sparse_size: 5_000_001,
            big_dir_entries: 300,
            depth: 10,
            ..TreeSpec::default()
        },
    );
    let settings: [&[&str]; 2] = [
        &[],
        &["--compressor", "lz4_block", "--chunk-size", "0x10000"],
    ];
    for extra in settings {
        for aligned in [false, true] {
            let mut flags = vec!["--fs-version", "5"];
            flags.extend_from_slice(extra);
            if aligned {
                flags.push("--aligned-chunk");
            }
            let name = format!("{}{}", extra.len(), if aligned { "a" } else { "d" });
            let ours = scratch.path().join(format!("ours{name}"));
            let theirs = scratch.path().join(format!("theirs{name}"));
            build(false, &src, &ours, &flags);
            build(true, &src, &theirs, &flags);
            let (our_chunks, our_blobs) = listing(&ours.join("boot"));
            let (their_chunks, their_blobs) = listing(&theirs.join("boot"));
            assert_offsets_follow(&format!("ours {flags:?}"), &our_chunks, &our_blobs, aligned);
            assert_offsets_follow(
                &format!("upstream's {flags:?}"),
                &their_chunks,
                &their_blobs,
                aligned,
            );
            // The same chunks, and blobs of the same uncompressed size. Not the same
            // offset for each chunk: our builder stores files depth first (the order tar
            // and find read a tree), upstream's breadth first, so a file in a
            // subdirectory (the sample's deep/f) sits elsewhere in the two blobs.
            let sizes = |c: &BTreeMap<(u32, u32), Listed>| {
                let mut v: Vec<(String, u64)> = c
                    .values()
                    .map(|(id, _, size)| (id.clone(), *size))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(sizes(&our_chunks), sizes(&their_chunks), "{flags:?}");
            assert_eq!(our_blobs, their_blobs, "{flags:?}");
            if aligned {
                let work = scratch.path().join(format!("nydusd{name}"));
                fs::create_dir_all(&work).unwrap();
                let daemon = Nydusd::mount_with(
                    &ours.join("boot"),
                    &ours.join("blobs"),
                    &work,
                    serde_json::json!({"digest_validate": true}),
                    "warn",
                );
                assert_identical_except(
                    &format!("nydusd (digest_validate) mount of our v5 image {flags:?}"),
                    &FsTree::new(&src),
                    &FsTree::new(&daemon.mnt),
                    Except {
                        differences: Some(&nydusd_mount_time),
                        ..Except::default()
                    },
                );
            }
        }
    }
}

/// RAFS v6 chunks are always aligned: with the flag, our image is byte for byte the one
/// without it, and upstream accepts the flag too.
#[test]
fn aligned_chunk_changes_nothing_in_v6() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    common::files::write_file(&src.join("a"), &common::files::data(10_000, 1));
    common::files::write_file(&src.join("b"), &common::files::data(3_000_000, 2));
    let files = |out: &Path| -> BTreeMap<String, Vec<u8>> {
        let mut all = BTreeMap::from([("boot".to_string(), fs::read(out.join("boot")).unwrap())]);
        for e in fs::read_dir(out.join("blobs")).unwrap() {
            let e = e.unwrap();
            all.insert(
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            );
        }
        all
    };
    build(false, &src, &scratch.path().join("plain"), &[]);
    build(
        false,
        &src,
        &scratch.path().join("flag"),
        &["--aligned-chunk"],
    );
    assert!(
        files(&scratch.path().join("plain")) == files(&scratch.path().join("flag")),
        "--aligned-chunk changed a v6 image"
    );
    build(
        true,
        &src,
        &scratch.path().join("upstream"),
        &["--aligned-chunk"],
    );
    let (chunks, blobs) = listing(&scratch.path().join("upstream/boot"));
    assert_offsets_follow("upstream's v6", &chunks, &blobs, true);
}
