//! The command line: upstream-compatible flags and outputs, FIFO blobs, JSON reports,
//! progress display, and clear refusals.

mod common {
    pub mod compare;
    pub mod files;
    pub mod ours;
}

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{compare::assert_identical, files::*, ours::*};
use nydus_image::mount::ImageTree;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;
use nydus_verify::FsTree;

fn ours(args: &[&str], extra: &[&Path]) -> Output {
    Command::new(our_bin())
        .args(args)
        .args(extra)
        .output()
        .expect("run nydus-image")
}

fn small_tree(root: &Path) {
    fs::create_dir_all(root.join("d")).unwrap();
    write_file(&root.join("a"), &data(2_500_000, 1));
    write_file(&root.join("d/b"), b"hello");
    std::os::unix::fs::symlink("../a", root.join("d/l")).unwrap();
}

#[test]
fn blob_can_be_a_fifo() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let fifo = tmp.path().join("blob.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let received = tmp.path().join("received");
    let (fifo2, received2) = (fifo.clone(), received.clone());
    let reader = std::thread::spawn(move || {
        let bytes = fs::read(&fifo2).unwrap();
        fs::write(&received2, bytes).unwrap();
    });
    let boot = tmp.path().join("boot");
    let out = Command::new(our_bin())
        .args(["create", "--bootstrap"])
        .arg(&boot)
        .arg("--blob")
        .arg(&fifo)
        .arg(&src)
        .output()
        .unwrap();
    reader.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut image = Image::open(&boot, BlobSource::Files(vec![received])).unwrap();
    image.validate = true;
    assert_identical("fifo blob", &FsTree::new(&src), &ImageTree(&image));
}

#[test]
fn summary_and_json_report_match_upstream_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let blobs = tmp.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    let boot = tmp.path().join("boot");
    let json = tmp.path().join("out.json");
    let out = ours(
        &[
            "create",
            "--compressor",
            "lz4_block",
            "--digester",
            "sha256",
            "-J",
        ],
        &[
            &json,
            Path::new("--bootstrap"),
            &boot,
            Path::new("--blob-dir"),
            &blobs,
            &src,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let blob_name = fs::read_dir(&blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let blob_name = blob_name.to_str().unwrap();
    assert!(
        stdout.contains(&format!("meta blob path: {}", boot.display())),
        "{stdout}"
    );
    assert!(stdout.contains("data blob size: 0x"), "{stdout}");
    assert!(
        stdout.contains(&format!("data blobs: [\"{blob_name}\"]")),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["bootstrap"], boot.to_str().unwrap());
    assert_eq!(report["blobs"][0], blob_name);
    assert_eq!(report["fs_version"], "6");
    assert_eq!(report["compressor"], "lz4_block");
    assert_eq!(report["digester"], "sha256");
    assert!(report["version"].is_string());
    let size = fs::metadata(blobs.join(blob_name)).unwrap().len();
    assert_eq!(report["blob_size"], size);
    assert!(
        stdout.contains(&format!("data blob size: 0x{size:x}")),
        "{stdout}"
    );
}

#[test]
fn check_lists_blobs_features_and_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let blobs = tmp.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    let boot = tmp.path().join("boot");
    assert!(ours(
        &["create", "--bootstrap"],
        &[&boot, Path::new("--blob-dir"), &blobs, &src]
    )
    .status
    .success());
    let json = tmp.path().join("check.json");
    let out = ours(
        &["check", "-v", "-J"],
        &[
            &json,
            Path::new("--bootstrap"),
            &boot,
            Path::new("-D"),
            &blobs,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("RAFS filesystem metadata is valid"),
        "{stdout}"
    );
    assert!(stdout.contains("features: aligned cap_toc"), "{stdout}");
    assert!(stdout.contains("\"/d/l\""), "{stdout}");
    assert!(
        stderr.contains("COMPRESSION_ZSTD") && stderr.contains("HASH_BLAKE3"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["entries"], 5);
    assert_eq!(report["blobs"].as_array().unwrap().len(), 1);
    assert_eq!(report["tree"].as_array().unwrap().len(), 5);
}

#[test]
fn unsupported_requests_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let boot = tmp.path().join("boot");
    let blob = tmp.path().join("blob");
    for (args, expect) in [
        (vec!["--fs-version", "7"], "RAFS versions are 5 and 6"),
        (vec!["--chunk-size", "0x3000"], "power of two"),
        (vec!["--chunk-size", "0x2000000"], "power of two"),
        (vec!["--chunk-size", "zz"], "invalid --chunk-size"),
        // Issue 17: a doubled prefix was taken as hex.
        (vec!["--chunk-size", "0x0x100000"], "invalid --chunk-size"),
        (vec!["-t", "targz-ref"], "not supported"),
        (vec!["--type", "estargz-ref"], "not supported"),
        (vec!["-t", "tar-rafs"], "is a directory, not a tar layer"),
        (vec!["--blob-id", "a/b"], "blob id"),
    ] {
        let mut all = vec!["create"];
        all.extend(args.iter().copied());
        let out = ours(
            &all,
            &[
                Path::new("--bootstrap"),
                &boot,
                Path::new("--blob"),
                &blob,
                &src,
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(
            !boot.exists() && !blob.exists(),
            "{args:?} left output behind"
        );
    }
}

#[test]
fn progress_only_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let blobs = tmp.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    let cmd = |level: &str| {
        format!(
            "{} create --log-level {level} --bootstrap {}/boot --blob-dir {} {}",
            our_bin().display(),
            tmp.path().display(),
            blobs.display(),
            src.display()
        )
    };
    // `script` gives the command a pseudo-terminal.
    let tty = Command::new("script")
        .args(["-qec", &cmd("info"), "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{text}");
    assert!(
        text.contains("2/2 files") && text.contains("MiB/s") && text.contains("left"),
        "{text}"
    );
    let quiet = Command::new("script")
        .args(["-qec", &cmd("warn"), "/dev/null"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stdout).contains("MiB/s"));
    let piped = Command::new("sh")
        .args(["-c", &cmd("info")])
        .output()
        .unwrap();
    assert!(piped.status.success());
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("MiB/s"));
}

/// Issue 17: every cause in an error message is printed once. The CLI prints an error's
/// chain with `{:#}`; an error that also put its cause in its own message printed it twice
/// ("cannot stat source: No such file or directory (os error 2): No such file or
/// directory (os error 2)").
#[test]
fn error_causes_are_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let blobs = tmp.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    let boot = tmp.path().join("boot");
    assert!(
        ours(&["create", "-B"], &[&boot, Path::new("-D"), &blobs, &src])
            .status
            .success()
    );
    let truncated = tmp.path().join("truncated.boot");
    fs::write(&truncated, &fs::read(&boot).unwrap()[..3000]).unwrap();
    let out_boot = tmp.path().join("out.boot");
    let missing = tmp.path().join("no-such-source");
    let dict = format!("bootstrap={}", truncated.display());
    let create = |extra: &[&str], source: &Path| {
        let mut args = vec!["create", "-B", s(&out_boot), "-D", s(&blobs)];
        args.extend_from_slice(extra);
        args.push(s(source));
        ours(&args, &[])
    };
    let superblock_short = "superblock block needs 4096 bytes, only 3000 available";
    let cases = [
        (
            "missing source",
            create(&[], &missing),
            format!("{}: cannot stat source", missing.display()),
            "No such file or directory",
        ),
        (
            "truncated bootstrap",
            ours(&["check", "-B", s(&truncated)], &[]),
            format!("bootstrap {}", truncated.display()),
            superblock_short,
        ),
        (
            "truncated parent",
            create(&["--parent-bootstrap", s(&truncated)], &src),
            format!("parent bootstrap {}", truncated.display()),
            superblock_short,
        ),
        (
            "truncated dictionary",
            create(&["--chunk-dict", &dict], &src),
            format!("chunk dictionary {}", truncated.display()),
            superblock_short,
        ),
    ];
    for (name, out, context, cause) in cases {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr.contains(&context), "{name}: {stderr}");
        assert_eq!(stderr.matches(cause).count(), 1, "{name}: {stderr}");
    }
    assert!(!out_boot.exists());
}

/// A UTF-8 path as a command-line argument.
fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// containerd's nydus converter detects what the builder can do by grepping
/// `nydus-image create -h` for `--type` and `tar-rafs`; upstream's other conversion
/// types are named too, the unsupported ones refused by name.
#[test]
fn create_help_names_the_tar_types_the_converter_looks_for() {
    let out = ours(&["create", "-h"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for word in [
        "--type",
        "tar-rafs",
        "targz-rafs",
        "estargz-rafs",
        "--prefetch-policy",
        "--blob-inline-meta",
    ] {
        assert!(help.contains(word), "create -h lacks {word}:\n{help}");
    }
}
