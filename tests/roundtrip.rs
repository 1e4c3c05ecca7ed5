//! Build a generated tree covering every entry kind, read it back through the library
//! reader, and compare field by field and byte by byte with the source.

mod common {
    pub mod attrs;
    pub mod compare;
    pub mod errors;
    pub mod files;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
}

use std::fs;
use std::path::Path;

use common::{compare::assert_identical, errors::chain, files::*, sample::*, scratch::Scratch};
use nydus_image::builder::{build, BlobTarget, BuildOptions, BuildSummary};
use nydus_image::format::{Compressor, Digester};
use nydus_image::mount::ImageTree;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::FsTree;

fn build_into(src: &Path, out: &Path, opts: &BuildOptions) -> BuildSummary {
    fs::create_dir_all(out.join("blobs")).unwrap();
    build(
        src,
        &out.join("boot"),
        &BlobTarget::Dir(out.join("blobs")),
        opts,
        &|_| {},
    )
    .expect("build")
}

fn assert_image_matches(src: &Path, out: &Path) {
    let mut image =
        Image::open(&out.join("boot"), BlobSource::Dir(out.join("blobs"))).expect("open image");
    image.validate = true;
    assert_identical("library reader", &FsTree::new(src), &ImageTree(&image));
}

#[test]
fn every_entry_kind_round_trips() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    make_tree(&src, &TreeSpec::default());
    let out = scratch.path().join("out");
    let summary = build_into(&src, &out, &BuildOptions::default());
    assert!(
        summary.unique_chunks < summary.total_chunks,
        "duplicate chunks are stored once: {summary:?}"
    );
    assert_image_matches(&src, &out);
}

#[test]
fn each_compressor_digester_and_chunk_size_round_trips() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    let spec = TreeSpec {
        sparse_size: 5 * 1024 * 1024 + 3,
        big_dir_entries: 300,
        depth: 8,
        big_xattrs: false,
        ..TreeSpec::default()
    };
    make_tree(&src, &spec);
    for (i, (compressor, digester, chunk_size)) in [
        (Compressor::None, Digester::Blake3, 0x1000),
        (Compressor::Lz4Block, Digester::Sha256, 0x10_0000),
        (Compressor::Zstd, Digester::Sha256, 0x4000),
        (Compressor::Lz4Block, Digester::Blake3, 0x100_0000),
    ]
    .into_iter()
    .enumerate()
    {
        let out = scratch.path().join(format!("out{i}"));
        let opts = BuildOptions {
            compressor,
            digester,
            chunk_size,
            ..BuildOptions::default()
        };
        let summary = build_into(&src, &out, &opts);
        assert_eq!(summary.compressor, compressor);
        let image = Image::open(&out.join("boot"), BlobSource::Dir(out.join("blobs"))).unwrap();
        assert_eq!(image.super_block().compressor, compressor);
        assert_eq!(image.super_block().digester, digester);
        assert_eq!(image.super_block().chunk_size, chunk_size);
        assert_image_matches(&src, &out);
    }
}

#[test]
fn identical_input_gives_identical_bytes() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    let spec = TreeSpec {
        sparse_size: 0,
        big_dir_entries: 200,
        depth: 4,
        big_xattrs: false,
        ..TreeSpec::default()
    };
    make_tree(&src, &spec);
    let a = scratch.path().join("a");
    let b = scratch.path().join("b");
    let sa = build_into(
        &src,
        &a,
        &BuildOptions {
            threads: 1,
            ..BuildOptions::default()
        },
    );
    let sb = build_into(
        &src,
        &b,
        &BuildOptions {
            threads: 2,
            ..BuildOptions::default()
        },
    );
    assert_eq!(
        fs::read(a.join("boot")).unwrap(),
        fs::read(b.join("boot")).unwrap()
    );
    assert_eq!(sa.blob_id, sb.blob_id);
    let blob = |d: &Path| fs::read(d.join("blobs").join(sa.blob_id.as_ref().unwrap())).unwrap();
    assert_eq!(blob(&a), blob(&b));
}

/// Chunks that compress, chunks that do not and repeated chunks, in one big file and in
/// small ones, through the pipeline at several thread counts: the chunker's memory budget
/// counts a compressed chunk at its compressed size and a stored-raw one at full size, and
/// whatever the interleaving the blob and bootstrap come out the same and read back whole.
#[test]
fn mixed_chunks_give_the_same_image_at_any_thread_count() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir(&src).unwrap();
    let chunk = 64 << 10;
    let text: Vec<u8> = b"compressible text, compressible text. "
        .iter()
        .copied()
        .cycle()
        .take(chunk)
        .collect();
    let mut big = Vec::new();
    for i in 0..40u64 {
        match i % 5 {
            0 | 3 => big.extend_from_slice(&text),
            1 => big.extend_from_slice(&data(chunk, i)),
            2 => big.extend_from_slice(&data(chunk, 1)), // a repeat of chunk 1
            _ => big.extend_from_slice(&data(chunk / 2, i)),
        }
    }
    write_file(&src.join("big"), &big);
    for i in 0..30u64 {
        let body = if i % 2 == 0 {
            data(5000, i % 4)
        } else {
            text[..3000].to_vec()
        };
        write_file(&src.join(format!("small{i:02}")), &body);
    }
    let built: Vec<_> = [1, 2, 5]
        .iter()
        .map(|&threads| {
            let out = scratch.path().join(format!("t{threads}"));
            let summary = build_into(
                &src,
                &out,
                &BuildOptions {
                    threads,
                    chunk_size: chunk as u32,
                    ..BuildOptions::default()
                },
            );
            assert_image_matches(&src, &out);
            let id = summary.blob_id.unwrap();
            let blob = fs::read(out.join("blobs").join(&id)).unwrap();
            (fs::read(out.join("boot")).unwrap(), blob)
        })
        .collect();
    for other in &built[1..] {
        assert!(
            other.0 == built[0].0,
            "bootstraps differ between thread counts"
        );
        assert!(other.1 == built[0].1, "blobs differ between thread counts");
    }
}

#[test]
fn blob_dir_names_blob_by_its_sha256() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), &data(3_000_000, 5));
    let out = scratch.path().join("out");
    let summary = build_into(&src, &out, &BuildOptions::default());
    let path = summary.blob_path.unwrap();
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(fs::read(&path).unwrap()));
    assert_eq!(path.file_name().unwrap().to_str().unwrap(), digest);
    assert_eq!(summary.blob_id.unwrap(), digest);
    let leftovers: Vec<_> = fs::read_dir(out.join("blobs")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary files remain");
}

#[test]
fn tree_without_file_data_has_no_blob() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    write_file(&src.join("d/empty"), b"");
    let out = scratch.path().join("out");
    let summary = build_into(&src, &out, &BuildOptions::default());
    assert!(summary.blob_id.is_none());
    assert_eq!(fs::read_dir(out.join("blobs")).unwrap().count(), 0);
    let image = Image::open(&out.join("boot"), BlobSource::None).unwrap();
    assert!(image.blobs().is_empty());
    assert_identical("empty image", &FsTree::new(&src), &ImageTree(&image));
}

#[test]
fn corrupted_chunk_is_an_error_not_wrong_bytes() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), &data(200_000, 77));
    let out = scratch.path().join("out");
    let opts = BuildOptions {
        compressor: Compressor::None,
        ..BuildOptions::default()
    };
    let summary = build_into(&src, &out, &opts);
    let blob = summary.blob_path.unwrap();
    let mut bytes = fs::read(&blob).unwrap();
    bytes[1000] ^= 0x55;
    fs::write(&blob, &bytes).unwrap();
    let mut image = Image::open(&out.join("boot"), BlobSource::Files(vec![blob.clone()])).unwrap();
    image.validate = true;
    let nid = image.resolve(b"/f").unwrap().unwrap();
    let err = image.read_all(nid).unwrap_err().to_string();
    assert!(
        err.contains("digest") && err.contains(&summary.blob_id.unwrap()),
        "{err}"
    );
}

/// Issue 17: a read that fails below the image (the blob file is missing, a chunk does not
/// decompress) keeps what failed as the error's cause instead of flattening it to text.
#[test]
fn blob_read_errors_keep_their_cause() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir(&src).unwrap();
    let text = b"compressible text, said once and then again. ".repeat(5000);
    write_file(&src.join("f"), &text);
    let out = scratch.path().join("out");
    let summary = build_into(&src, &out, &BuildOptions::default());
    let blob = summary.blob_path.unwrap();
    let bytes = fs::read(&blob).unwrap();

    let empty = scratch.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let mut corrupt = bytes.clone();
    corrupt[..4].copy_from_slice(b"junk"); // the chunk's zstd frame magic
    let corrupt_dir = scratch.path().join("corrupt");
    fs::create_dir(&corrupt_dir).unwrap();
    fs::write(corrupt_dir.join(blob.file_name().unwrap()), &corrupt).unwrap();
    type Cause = fn(&(dyn std::error::Error + 'static)) -> bool;
    let is_not_found: Cause = |e| {
        e.downcast_ref::<std::io::Error>().map(|e| e.kind()) == Some(std::io::ErrorKind::NotFound)
    };
    let is_zstd: Cause = |e| e.to_string() == "zstd frame does not decode";
    let cases: [(&str, &Path, Cause); 2] = [
        ("missing blob", &empty, is_not_found),
        ("corrupt chunk", &corrupt_dir, is_zstd),
    ];
    for (name, dir, cause) in cases {
        let image = Image::open(&out.join("boot"), BlobSource::Dir(dir.to_path_buf())).unwrap();
        let nid = image.resolve(b"/f").unwrap().unwrap();
        let err = image.read_all(nid).expect_err(name);
        let mut causes = Vec::new();
        let mut at = std::error::Error::source(&err);
        while let Some(e) = at {
            causes.push(e);
            at = e.source();
        }
        assert!(causes.iter().any(|e| cause(*e)), "{name}: {}", chain(&err));
        assert!(
            err.to_string().contains(&summary.blob_id.clone().unwrap()),
            "{name}: {err}"
        );
    }
}

/// Issue 17: two builds running at once in one process, into one blob directory and one
/// bootstrap directory, both succeed with whole, readable outputs and leave no temporary
/// file. Temporary names were keyed by the process id only: the second build truncated and
/// wrote into the first one's blob file.
#[test]
fn concurrent_builds_in_one_process_keep_their_outputs_apart() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let srcs: Vec<_> = (0..2u64)
        .map(|i| {
            let src = root.join(format!("src{i}"));
            fs::create_dir(&src).unwrap();
            for f in 0..6 {
                write_file(&src.join(format!("f{f}")), &data(700_000, 10 * i + f));
            }
            src
        })
        .collect();
    let out = root.join("out");
    let blobs = out.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let opts = BuildOptions {
        threads: 1,
        chunk_size: 0x1_0000,
        ..BuildOptions::default()
    };
    for round in 0..3 {
        let boots: Vec<_> = (0..2)
            .map(|i| out.join(format!("boot-{round}-{i}")))
            .collect();
        let start = std::sync::Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = srcs
                .iter()
                .zip(&boots)
                .map(|(src, boot)| {
                    let (start, opts, blobs) = (&start, &opts, &blobs);
                    s.spawn(move || {
                        start.wait();
                        build(src, boot, &BlobTarget::Dir(blobs.clone()), opts, &|_| {})
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ((result, src), boot) in results.into_iter().zip(&srcs).zip(&boots) {
            let summary = result.unwrap_or_else(|e| panic!("round {round}: {}", chain(&e)));
            let blob = summary.blob_path.expect("a blob");
            let bytes = fs::read(&blob).unwrap();
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            assert_eq!(
                blob.file_name().unwrap().to_str().unwrap(),
                sha,
                "round {round}"
            );
            let mut image = Image::open(boot, BlobSource::Dir(blobs.clone())).unwrap();
            image.validate = true;
            assert_identical("concurrent build", &FsTree::new(src), &ImageTree(&image));
        }
    }
    for dir in [&out, &blobs] {
        let hidden: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
    }
}
