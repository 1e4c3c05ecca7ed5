//! Compaction: layered and deduplicated images whose blobs are unused, sparsely used or
//! small, compacted by the `compact` subcommand and by `create --config`, then verified
//! against the layer stack, mounted by upstream nydusd, and checked for what must not
//! change (the original bootstrap and blobs).

mod common {
    pub mod commands;
    pub mod compare;
    pub mod errors;
    pub mod files;
    pub mod ours;
    pub mod output;
    pub mod scratch;
    pub mod upstream;
}

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{
    commands::*, compare::*, errors::chain, files::*, output::*, scratch::*, upstream::*,
};
use nydus_image::mount::ImageTree;
use nydus_verify::FsTree;
use sha2::Digest;

/// The blob table of the image at `boot`, as blob ids.
fn blob_ids(boot: &Path) -> Vec<String> {
    nydus_image::reader::Image::open(boot, nydus_image::storage::blobs::BlobSource::None)
        .unwrap_or_else(|e| panic!("{}: {e}", boot.display()))
        .blobs()
        .iter()
        .map(|b| b.blob_id.clone())
        .collect()
}

/// Every file in `dir` with its sha256.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.insert(
                p.clone(),
                hex::encode(sha2::Sha256::digest(fs::read(&p).unwrap())),
            );
        }
    }
    out
}

/// Three layers: a big base whose files the second layer mostly deletes (sparse), a
/// small second layer, a small third one, built with `extra` flags. Returns (layers,
/// final bootstrap).
fn layered_image(root: &Path, blobs: &Path, extra: &[&str]) -> (Vec<PathBuf>, PathBuf) {
    fs::create_dir_all(blobs).unwrap();
    let layers: Vec<PathBuf> = (1..=3).map(|i| root.join(format!("l{i}"))).collect();
    for l in &layers {
        fs::create_dir_all(l).unwrap();
    }
    for i in 0..20 {
        write_file(&layers[0].join(format!("f{i:02}")), &data(100_000, i));
    }
    fs::create_dir(layers[0].join("dir")).unwrap();
    write_file(&layers[0].join("dir/kept"), &data(300_000, 99));
    for i in 0..15 {
        write_file(&layers[1].join(format!(".wh.f{i:02}")), b"");
    }
    write_file(&layers[1].join("upper"), b"second layer");
    write_file(&layers[2].join("third"), &data(50_000, 7));
    // The same bytes as a base file: one copy in a merged blob.
    write_file(&layers[2].join("copy-of-f19"), &data(100_000, 19));
    let mut parent: Option<PathBuf> = None;
    for (i, l) in layers.iter().enumerate() {
        let boot = root.join(format!("b{}", i + 1));
        let mut args = extra.to_vec();
        if let Some(p) = &parent {
            args.extend(["--parent-bootstrap", s(p)]);
        }
        let o = build(l, &boot, blobs, &args);
        assert!(o.status.success(), "build layer {i}: {}", text(&o));
        parent = Some(boot);
    }
    (layers, parent.unwrap())
}

fn verify_stack(boot: &Path, blobs: &Path, layers: &[PathBuf], via: &str) -> Output {
    let mut args = vec!["verify", "--via", via, "-B", s(boot), "-D", s(blobs)];
    args.extend(layers.iter().map(|l| s(l)));
    run(&args)
}

#[test]
fn compact_rebuilds_sparse_and_merges_small_blobs() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let blobs = root.join("blobs");
    let (layers, boot) = layered_image(root, &blobs, &[]);
    let before = snapshot(&blobs);
    let boot_before = fs::read(&boot).unwrap();
    assert_eq!(before.len(), 3);

    let new = root.join("new");
    fs::create_dir(&new).unwrap();
    let cfg = root.join("compact.json");
    fs::write(
        &cfg,
        serde_json::json!({
            "min_used_ratio": 50,
            "compact_blob_size": 10_485_760,
            "max_compact_size": 104_857_600,
            "layers_to_compact": 2,
            "blobs_dir": new,
        })
        .to_string(),
    )
    .unwrap();
    let json = root.join("out.json");
    let o = run(&[
        "compact",
        "-B",
        s(&boot),
        "-C",
        s(&cfg),
        "-D",
        s(&blobs),
        "-J",
        s(&json),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = PathBuf::from(format!("{}.bootstrap.compact", boot.display()));
    assert!(out.is_file(), "default output path, as upstream");

    let report: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["blobs_before"].as_array().unwrap().len(), 3);
    assert_eq!(report["blobs"].as_array().unwrap().len(), 1, "{report}");
    let total_before: u64 = before.keys().map(|p| fs::metadata(p).unwrap().len()).sum();
    let written = report["bytes_written"].as_u64().unwrap();
    assert!(
        written * 2 < total_before,
        "{written} of {total_before}: {report}"
    );
    assert!(report["bytes_reclaimed"].as_i64().unwrap() > 0, "{report}");
    // The new blob is named by its sha256 and holds the used data once.
    let made = snapshot(&new);
    assert_eq!(made.len(), 1);
    let (path, digest) = made.iter().next().unwrap();
    assert_eq!(path.file_name().unwrap().to_str().unwrap(), digest);
    let used = 5 * 100_000 + 300_000 + "second layer".len() + 50_000;
    let size = fs::metadata(path).unwrap().len() as usize;
    assert!(
        size < used + 8192,
        "new blob {size} bytes for {used} bytes of used data"
    );

    // Nothing of the original changed.
    assert_eq!(snapshot(&blobs), before);
    assert_eq!(fs::read(&boot).unwrap(), boot_before);

    // The compacted image shows the same tree, through FUSE and through nydusd.
    let o = verify_stack(&out, &new, &layers, "fuse");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let original = nydus_image::reader::Image::open(
        &boot,
        nydus_image::storage::blobs::BlobSource::Dir(blobs.clone()),
    )
    .unwrap();
    let daemon = Nydusd::mount(&out, &new, &root.join("nydusd"));
    assert_identical(
        "nydusd on the compacted image against the original",
        &ImageTree(&original),
        &FsTree::new(&daemon.mnt),
    );
}

#[test]
fn flags_thresholds_and_unused_blobs() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let blobs = root.join("blobs");
    let (layers, boot) = layered_image(root, &blobs, &[]);

    // layers_to_compact above the blob count: nothing done, nothing written.
    let out = root.join("out.boot");
    let o = run(&[
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--layers-to-compact",
        "4",
        "-O",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to compact"));
    assert!(!out.exists());

    // Merging off (compact_blob_size 0), rebuild at 50%: only the sparse base is rebuilt;
    // the two upper blobs stay referenced as they are.
    let o = run(&[
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--min-used-ratio",
        "50",
        "--compact-blob-size",
        "0",
        "-O",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ids = blob_ids(&out);
    let old = blob_ids(&boot);
    assert_eq!(ids.len(), 3);
    assert_eq!(&ids[..2], &old[1..], "kept blobs first, in order");
    assert!(!old.contains(&ids[2]));
    let o = verify_stack(&out, &blobs, &layers, "library");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // A layer that deletes everything of the layer below leaves that blob unused: it is
    // dropped without rewriting anything.
    let top = root.join("top");
    fs::create_dir(&top).unwrap();
    write_file(&top.join(".wh.third"), b"");
    write_file(&top.join(".wh.copy-of-f19"), b"");
    write_file(&top.join("new"), b"top layer");
    let boot4 = root.join("b4");
    let o = build(&top, &boot4, &blobs, &["--parent-bootstrap", s(&boot)]);
    assert!(o.status.success(), "{}", text(&o));
    let out4 = root.join("out4.boot");
    let o = run(&[
        "compact",
        "-B",
        s(&boot4),
        "-D",
        s(&blobs),
        "--compact-blob-size",
        "0",
        "-O",
        s(&out4),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 unused dropped"),
        "{}",
        text(&o)
    );
    assert_eq!(blob_ids(&out4).len(), 3);
    let mut stack = layers.clone();
    stack.push(top);
    let o = verify_stack(&out4, &blobs, &stack, "library");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn chunk_dictionaries_in_compaction() {
    // A dictionary image; its blobs are shared with other images, so compaction
    // references them but never rewrites them.
    let scratch = Scratch::new();
    let root = scratch.path();
    let dict_src = root.join("dict-src");
    fs::create_dir(&dict_src).unwrap();
    for i in 0..10 {
        write_file(&dict_src.join(format!("d{i}")), &data(200_000, i));
    }
    let blobs = root.join("blobs");
    fs::create_dir(&blobs).unwrap();
    let dict = root.join("dict.boot");
    assert!(build(&dict_src, &dict, &blobs, &[]).status.success());
    let dict_blob = blob_ids(&dict)[0].clone();
    let dict_arg = format!("bootstrap={}", dict.display());

    // 1. `compact --chunk-dict`: an image built without the dictionary holds a copy of a
    // dictionary file; that copy's chunks move to the dictionary blob, which leaves the
    // image's own blob sparse enough to rebuild with only what the dictionary lacks.
    let src = root.join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("in-dict"), &data(200_000, 3));
    write_file(&src.join("own"), &data(60_000, 77));
    let boot = root.join("image.boot");
    assert!(build(&src, &boot, &blobs, &[]).status.success());
    let out = root.join("out.boot");
    let o = run(&[
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--chunk-dict",
        &dict_arg,
        "--min-used-ratio",
        "60",
        "-O",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ids = blob_ids(&out);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&dict_blob), "{ids:?}");
    let o = run(&["verify", "-B", s(&out), "-D", s(&blobs), s(&src)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // 2. Upstream's documented form: `create --chunk-dict ... --config compact.json
    // --backend-type localfs --backend-config-file ...` over a sparse parent layer.
    let l1 = root.join("l1");
    fs::create_dir(&l1).unwrap();
    for i in 0..10 {
        write_file(&l1.join(format!("f{i}")), &data(100_000, 100 + i));
    }
    let b1 = root.join("b1");
    assert!(build(&l1, &b1, &blobs, &[]).status.success());
    let l2 = root.join("l2");
    fs::create_dir(&l2).unwrap();
    for i in 0..8 {
        write_file(&l2.join(format!(".wh.f{i}")), b"");
    }
    write_file(&l2.join("reused"), &data(200_000, 4));
    write_file(&l2.join("fresh"), &data(20_000, 55));
    let backend = root.join("backend.json");
    fs::write(&backend, serde_json::json!({"dir": blobs}).to_string()).unwrap();
    let cfg = root.join("compact.json");
    fs::write(
        &cfg,
        serde_json::json!({"min_used_ratio": 50, "compact_blob_size": 10_485_760,
            "max_compact_size": 104_857_600, "layers_to_compact": 0, "blobs_dir": blobs,
            "version": 2})
        .to_string(),
    )
    .unwrap();
    let dict_file = fs::read(blobs.join(&dict_blob)).unwrap();
    let b2 = root.join("b2");
    let o = build(
        &l2,
        &b2,
        &blobs,
        &[
            "--parent-bootstrap",
            s(&b1),
            "--chunk-dict",
            &dict_arg,
            "--config",
            s(&cfg),
            "--backend-type",
            "localfs",
            "--backend-config-file",
            s(&backend),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // The sparse parent blob and the new layer blob became one; the dictionary blob is
    // referenced as it was.
    let ids = blob_ids(&b2);
    assert_eq!(ids.len(), 2, "{ids:?}\n{}", text(&o));
    assert!(ids.contains(&dict_blob));
    assert_eq!(fs::read(blobs.join(&dict_blob)).unwrap(), dict_file);
    let o = run(&["verify", "-B", s(&b2), "-D", s(&blobs), s(&l1), s(&l2)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn bad_settings_and_bad_blobs_are_refused_cleanly() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let blobs = root.join("blobs");
    let (_, boot) = layered_image(root, &blobs, &[]);
    let out = root.join("out.boot");

    let cases: [(&str, serde_json::Value, &str); 4] = [
        (
            "unknown",
            serde_json::json!({"min_used_ratio": 10, "min_use_ratio": 5}),
            "unknown field `min_use_ratio`",
        ),
        (
            "ratio",
            serde_json::json!({"min_used_ratio": 100}),
            "min_used_ratio 100 is out of range",
        ),
        (
            "sizes",
            serde_json::json!({"compact_blob_size": 10, "max_compact_size": 5}),
            "exceeds max_compact_size",
        ),
        (
            "negative",
            serde_json::json!({"max_compact_size": -1}),
            "invalid compaction config",
        ),
    ];
    for (name, cfg, expect) in cases {
        let path = root.join(format!("{name}.json"));
        fs::write(&path, cfg.to_string()).unwrap();
        let o = run(&[
            "compact",
            "-B",
            s(&boot),
            "-C",
            s(&path),
            "-D",
            s(&blobs),
            "-O",
            s(&out),
        ]);
        assert!(!o.status.success(), "{name}: accepted");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(expect),
            "{name}: {}",
            text(&o)
        );
        assert!(!out.exists());
    }
    // The same settings checks run before `create` does any work.
    let path = root.join("ratio.json");
    let fresh = root.join("fresh.boot");
    let o = run(&[
        "create",
        "-B",
        s(&fresh),
        "-D",
        s(&blobs),
        "--config",
        s(&path),
        s(&root.join("l1")),
    ]);
    assert!(!o.status.success());
    assert!(!fresh.exists());

    // A blob shorter than the bootstrap says, then a corrupt one: clear errors, and
    // nothing new left behind.
    let before = snapshot(&blobs);
    let base = blob_ids(&boot)[0].clone();
    let work = root.join("work");
    fs::create_dir(&work).unwrap();
    for (name, damage, expect) in [
        ("short", 0usize, "shorter than the bootstrap says"),
        ("corrupt", 1usize, "does not match its digest"),
    ] {
        let copy = work.join(name);
        fs::create_dir(&copy).unwrap();
        for p in before.keys() {
            fs::copy(p, copy.join(p.file_name().unwrap())).unwrap();
        }
        let victim = copy.join(&base);
        let mut bytes = fs::read(&victim).unwrap();
        if damage == 0 {
            bytes.truncate(bytes.len() / 2);
        } else {
            let at = bytes.len() - 4096 - 1000; // inside the last chunk's data
            bytes[at] ^= 0x55;
        }
        fs::write(&victim, &bytes).unwrap();
        let snap = snapshot(&copy);
        let o = run(&[
            "compact",
            "-B",
            s(&boot),
            "-D",
            s(&copy),
            "--min-used-ratio",
            "90",
            "-O",
            s(&out),
        ]);
        assert!(!o.status.success(), "{name}: accepted\n{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expect) && err.contains(&base), "{name}: {err}");
        assert!(!out.exists(), "{name}: bootstrap written");
        assert_eq!(snapshot(&copy), snap, "{name}: blob directory changed");
    }

    // Backends: an unknown type, a missing directory.
    let o = run(&[
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--backend-type",
        "ftp",
        "--backend-config",
        "{}",
        "-O",
        s(&out),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown backend type"),
        "{}",
        text(&o)
    );
    let cfg = root.join("missing.json");
    fs::write(
        &cfg,
        serde_json::json!({"dir": root.join("nowhere")}).to_string(),
    )
    .unwrap();
    let o = run(&[
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--min-used-ratio",
        "90",
        "--backend-type",
        "localfs",
        "--backend-config-file",
        s(&cfg),
        "-O",
        s(&out),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nowhere"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    assert_eq!(snapshot(&blobs), before);
}

/// Issue 17: compaction's errors name the blob by its id and keep the backend's error
/// whole as their cause: which backend, and what it said.
#[test]
fn compaction_errors_keep_the_backends_words() {
    use nydus_image::ops::compact::{compact, CompactConfig};
    use nydus_image::storage::backend::{BackendError, LocalFs};
    let scratch = Scratch::new();
    let root = scratch.path();
    let blobs = root.join("blobs");
    let (_, boot) = layered_image(root, &blobs, &[]);
    let empty = root.join("empty");
    fs::create_dir(&empty).unwrap();
    let out = root.join("out.boot");
    let err = compact(
        &boot,
        &LocalFs::dir(&empty),
        None,
        &blobs,
        &out,
        &CompactConfig::default(),
        None,
    )
    .expect_err("no blob can be read");
    let backend = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<BackendError>())
        .unwrap_or_else(|| panic!("no backend error in {err:?}"));
    assert!(blob_ids(&boot).contains(&backend.blob_id), "{backend:?}");
    assert!(
        err.to_string().contains(&backend.blob_id),
        "{}",
        chain(&err)
    );
    let text = chain(&err);
    assert!(
        text.contains(&format!("localfs {}", empty.display())) && text.contains("No such file"),
        "{text}"
    );
    assert!(!out.exists());
    assert_eq!(
        snapshot(&blobs).len(),
        3,
        "nothing new in the blob directory"
    );
}

/// Issue 17: a chunk record that cannot be right (a size beyond the image's chunk size, an
/// offset that wraps) is refused, naming blob, chunk and values, before anything is
/// allocated or read for it: compaction used to add offset and size unchecked and to
/// allocate whatever uncompressed size the record gave (up to 4 GiB).
#[test]
fn bad_chunk_records_are_refused_before_reading() {
    use nydus_image::ops::compact::{compact, CompactConfig};
    use nydus_image::storage::backend::LocalFs;
    let scratch = Scratch::new();
    let root = scratch.path();
    let blobs = root.join("blobs");
    let (_, boot) = layered_image(root, &blobs, &[]);
    let bytes = fs::read(&boot).unwrap();
    let image =
        nydus_image::reader::Image::open(&boot, nydus_image::storage::blobs::BlobSource::None)
            .unwrap();
    let table = image.super_block().chunk_table_offset as usize;
    let chunk_size = image.super_block().chunk_size;
    // The first entry of the chunk table: which blob and chunk it is.
    let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let blob_id = image.blobs()[le32(table + BLOB_INDEX) as usize]
        .blob_id
        .clone();
    let chunk = le32(table + INDEX);
    // Field offsets in an 80-byte chunk info entry.
    const BLOB_INDEX: usize = 32;
    const INDEX: usize = 72;
    const COMPRESSED_SIZE: usize = 40;
    const UNCOMPRESSED_SIZE: usize = 44;
    const COMPRESSED_OFFSET: usize = 48;
    let cases: [(&str, usize, u64, &[&str]); 3] = [
        (
            "offset wraps",
            COMPRESSED_OFFSET,
            u64::MAX - 16,
            &["lies past the blob's end", "0xffffffffffffffef+"],
        ),
        (
            "uncompressed size of 4 GiB",
            UNCOMPRESSED_SIZE,
            0xffff_fff0,
            &["holds 0xfffffff0 bytes", "at most 0x100000 bytes"],
        ),
        (
            "stored size of 2 GiB",
            COMPRESSED_SIZE,
            0x7fff_ffff,
            &["stored in 0x7fffffff", "at most 0x100000 bytes"],
        ),
    ];
    assert_eq!(chunk_size, 0x10_0000);
    // Everything is merged into one new blob, whatever the records say.
    let cfg = CompactConfig {
        compact_blob_size: 1 << 40,
        max_compact_size: 1 << 41,
        ..CompactConfig::default()
    };
    for (name, field, value, expect) in cases {
        let mut bad = bytes.clone();
        let at = table + field;
        if field == COMPRESSED_OFFSET {
            bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
        } else {
            bad[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
        }
        let bad_boot = root.join(format!("bad-{field}.boot"));
        fs::write(&bad_boot, &bad).unwrap();
        let out = root.join(format!("out-{field}.boot"));
        let err = compact(
            &bad_boot,
            &LocalFs::dir(&blobs),
            None,
            &blobs,
            &out,
            &cfg,
            None,
        )
        .expect_err(name);
        let text = chain(&err);
        assert!(
            text.contains(&format!("blob {blob_id}: chunk {chunk} ")),
            "{name}: {text}"
        );
        for e in expect {
            assert!(text.contains(e), "{name}: {e:?} not in {text}");
        }
        assert!(!out.exists(), "{name}");
        assert_eq!(snapshot(&blobs).len(), 3, "{name}: nothing new left behind");
    }
}

/// A RAFS v5 image compacts to a v5 image (upstream 2.2.0's compact writes v5), which
/// nydusd serves with `digest_validate` on, showing the original's tree.
#[test]
fn a_v5_image_compacts_to_v5() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let blobs = root.join("blobs");
    let (layers, boot) = layered_image(root, &blobs, &["--fs-version", "5"]);
    let out = root.join("compacted");
    let o = run(&[
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--min-used-ratio",
        "50",
        "--layers-to-compact",
        "2",
        "-O",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let open = |b: &Path, dir: &Path| {
        nydus_image::reader::Image::open(
            b,
            nydus_image::storage::blobs::BlobSource::Dir(dir.to_path_buf()),
        )
        .unwrap()
    };
    let original = open(&boot, &blobs);
    assert_eq!(original.fs_version(), 5);
    let compacted = open(&out, &blobs);
    assert_eq!(compacted.fs_version(), 5, "compaction keeps v5");
    assert_eq!(compacted.blobs().len(), 1, "one blob after compaction");
    let o = verify_stack(&out, &blobs, &layers, "fuse");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let daemon = Nydusd::mount_with(
        &out,
        &blobs,
        &root.join("nydusd"),
        serde_json::json!({"digest_validate": true}),
        "warn",
    );
    assert_identical(
        "nydusd (digest_validate) on the compacted v5 image against the original",
        &ImageTree(&original),
        &FsTree::new(&daemon.mnt),
    );
}

#[test]
fn compaction_reads_through_the_mounts_chunk_cache() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let blobs = root.join("blobs");
    let (layers, boot) = layered_image(root, &blobs, &[]);
    let backend = root.join("backend.json");
    fs::write(&backend, serde_json::json!({ "dir": blobs }).to_string()).unwrap();
    let cache = root.join("cache");
    // The image and where its chunks come from, for both compact and verify.
    let source = [
        "-B",
        s(&boot),
        "--backend-type",
        "localfs",
        "--backend-config-file",
        s(&backend),
        "--cache-dir",
        s(&cache),
    ];
    let compact_into = |name: &str| -> (PathBuf, PathBuf, serde_json::Value) {
        let (out_dir, out, json) = (
            root.join(name),
            root.join(format!("{name}.boot")),
            root.join(format!("{name}.json")),
        );
        fs::create_dir(&out_dir).unwrap();
        let mut args = vec!["compact"];
        args.extend(source);
        args.extend([
            "-D",
            s(&out_dir),
            "--min-used-ratio",
            "50",
            "--compact-blob-size",
            "10485760",
            "-O",
            s(&out),
            "-J",
            s(&json),
        ]);
        let o = run(&args);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let report = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        (out_dir, out, report)
    };
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));

    // verify reads every file through the cache, as a mount does, and fills it.
    let mut args = vec!["verify", "--via", "library"];
    args.extend(source);
    args.extend(layers.iter().map(|l| s(l)));
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The backend gone: the cache alone serves compaction.
    let away = root.join("away");
    fs::rename(&blobs, &away).unwrap();
    let (dir1, out1, r1) = compact_into("first");
    assert_eq!(n(&r1, "bytes_read"), 0, "{r1}");
    assert!(n(&r1, "bytes_from_cache") > 0, "{r1}");
    let o = verify_stack(&out1, &dir1, &layers, "fuse");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // A fresh cache: everything from the backend, the same result, and kept.
    fs::rename(&away, &blobs).unwrap();
    fs::remove_dir_all(&cache).unwrap();
    let (dir2, out2, r2) = compact_into("second");
    assert_eq!(n(&r2, "bytes_read"), n(&r1, "bytes_from_cache"), "{r2}");
    assert_eq!(n(&r2, "bytes_from_cache"), 0, "{r2}");
    assert_eq!(fs::read(&out2).unwrap(), fs::read(&out1).unwrap());
    let names = |d: &Path| snapshot(d).into_values().collect::<Vec<_>>();
    assert_eq!(names(&dir2), names(&dir1));

    // A torn cache file is not served: its chunks come from the backend again.
    let data = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .expect("a cache data file");
    let len = fs::metadata(&data).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (dir3, out3, r3) = compact_into("third");
    assert!(
        n(&r3, "bytes_read") > 0 && n(&r3, "bytes_from_cache") > 0,
        "{r3}"
    );
    assert_eq!(
        n(&r3, "bytes_read") + n(&r3, "bytes_from_cache"),
        n(&r2, "bytes_read"),
        "{r3}"
    );
    assert_eq!(fs::read(&out3).unwrap(), fs::read(&out1).unwrap());
    assert_eq!(names(&dir3), names(&dir1));
}
