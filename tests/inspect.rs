//! `inspect` and `stat` against upstream 2.2.0's, on the same bootstraps (built by
//! upstream and by us): `inspect -R stats|blobs|prefetch` print equal JSON, and every
//! text request (`ls`, `cd`, `stat NAME`, `icheck INO` for every inode, `chunk OFFSET`
//! for every chunk, `prefetch`) prints the same lines, one by one with `-R` and all
//! together in a session driven through standard input; `stat` writes equal `-J`
//! reports for one bootstrap and for a directory of them, with and without `--target`.
//! Images: a tree with every entry kind and a prefetch table, a layer over a parent, two
//! layers merged, and a blob with inline metadata, each built by both tools.
//!
//! Excluded, and why:
//! - `-R help`, `-R exit` and unknown requests: upstream prints the usage and then
//!   panics (an `unwrap` of its "help"/"exit"/"illegal command" result, exit status 0);
//!   ours prints the usage for `help`, nothing for `exit`, and refuses an unknown request
//!   with an error listing the valid ones.
//! - The shell's `stats` and `blobs`: upstream prints its flag sets with Rust's `Debug`
//!   of its bitflags types; ours prints the flag names `check` prints.
//! - The shell's prompt: upstream prints it whatever standard input is, ours only on a
//!   terminal; it is taken out of upstream's output before comparing.
//! - `stat .` at the root of a RAFS v5 image: upstream looks up the root's parent
//!   (inode 0) and fails with "No such file or directory"; ours shows the root. Left
//!   out of the v5 sessions.
//! - `icheck N` for a number no entry of a RAFS v5 image has: upstream panics (an
//!   `unwrap` of its "no such inode" error); ours prints nothing. Only numbers the walk
//!   meets are compared, on v5 as on v6.
//!
//! RAFS v5 images (`--fs-version 5`) are compared the same way; upstream's answers for
//! them that ours had to learn: a path in `prefetch` is the chain of record names with a
//! `/` after the last one, a file's too (`/big/`), and one path per inode number (hard
//! links share one); `stat`/`icheck` name a hard link by the inode table's record for
//! it, whichever directory it is seen from; `blobs` shows the blob table's readahead
//! range. Our builder writes no v5 prefetch table yet, so only upstream's v5 images
//! exercise `prefetch`.

mod common {
    pub mod attrs;
    pub mod commands;
    pub mod files;
    pub mod ours;
    pub mod output;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
    pub mod upstream;
}

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::commands::run_with_stdin;
use common::files::{data, write_file};
use common::ours::our_bin;
use common::output::text;
use common::sample::{make_tree, TreeSpec};
use common::scratch::Scratch;
use common::upstream::upstream_bin;
use nydus_image::reader::{extract_section, Image};
use nydus_image::storage::blobs::BlobSource;

/// Upstream's shell prompt, printed before each command it reads.
const PROMPT: &str = "Inspecting RAFS :> ";

/// Prefetch patterns: a directory, a multi-chunk file, a hard link, and one that matches
/// nothing (its slot stays zero, which upstream lists as inode 0).
const PATTERNS: &str = "/hl\n/3cs+7\n/hardlink-to-file\n/nothing-here\n";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `bin` with `args`, `input` on standard input; asserts success.
fn run(bin: &Path, args: &[&str], input: &str) -> Output {
    let out = run_with_stdin(bin, args, input.as_bytes());
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        text(&out)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Both tools' binaries: (name, path).
fn tools() -> [(&'static str, PathBuf); 2] {
    [
        ("upstream", upstream_bin("nydus-image")),
        ("ours", our_bin()),
    ]
}

/// The sample tree with every entry kind, less what upstream's builder refuses (POSIX
/// ACLs), small enough for many requests.
fn sample_tree(root: &Path) {
    make_tree(
        root,
        &TreeSpec {
            acls: false,
            sparse_size: 5_000_000,
            big_dir_entries: 40,
            depth: 6,
            big_xattrs: false,
            ..TreeSpec::default()
        },
    );
}

/// Builds `src` with `bin` into `boot` and `blobs`, prefetch patterns on stdin.
fn create(bin: &Path, src: &Path, boot: &Path, blobs: &Path, extra: &[&str]) {
    fs::create_dir_all(blobs).unwrap();
    let mut args = vec![
        "create",
        "--log-level",
        "warn",
        "-B",
        s(boot),
        "-D",
        s(blobs),
    ];
    args.extend_from_slice(extra);
    args.push(s(src));
    run(bin, &args, PATTERNS);
}

/// `inspect -R request` of `boot` by `bin`.
fn request(bin: &Path, boot: &Path, req: &str) -> String {
    stdout(&run(bin, &["inspect", "-R", req, s(boot)], ""))
}

/// JSON and text requests, one by one, then a whole session, compared between the
/// tools for the image at `boot`. Returns how many requests were compared.
fn compare_inspect(what: &str, boot: &Path) -> usize {
    let [(_, up), (_, ours)] = tools();
    for req in ["stats", "blobs", "prefetch"] {
        let a: serde_json::Value = serde_json::from_str(&request(&up, boot, req)).unwrap();
        let b: serde_json::Value = serde_json::from_str(&request(&ours, boot, req))
            .unwrap_or_else(|e| panic!("{what}: ours -R {req}: {e}"));
        assert_eq!(a, b, "{what}: -R {req}");
        // Same bytes too: scripts may compare text.
        assert_eq!(
            request(&up, boot, req),
            request(&ours, boot, req),
            "{what}: -R {req} bytes"
        );
    }
    // Every inode, every chunk offset and every name, from our reader (the values it
    // derives are what is being tested, so the requests come from it but the answers
    // are compared with upstream's).
    let image = Image::open_any(boot, BlobSource::None).unwrap();
    let mut nids = BTreeSet::new();
    let mut offsets = BTreeSet::new();
    image
        .walk(|_, nid| {
            nids.insert(nid.0);
            Ok(())
        })
        .unwrap();
    for c in image.chunk_table() {
        offsets.insert(c.compressed_offset);
    }
    let root_names: Vec<String> = image
        .read_dir(image.root())
        .unwrap()
        .into_iter()
        .filter_map(|e| String::from_utf8(e.name).ok())
        .filter(|n| !n.contains(char::is_whitespace))
        .collect();
    let mut one_by_one = vec!["ls".to_string(), "cd hl".into(), "cd one".into()];
    one_by_one.extend(root_names.iter().map(|n| format!("stat {n}")));
    one_by_one.extend(nids.iter().take(30).map(|n| format!("icheck {n}")));
    one_by_one.extend(offsets.iter().take(5).map(|o| format!("chunk {o}")));
    for req in &one_by_one {
        assert_eq!(
            request(&up, boot, req),
            request(&ours, boot, req),
            "{what}: -R {req}"
        );
    }
    let mut session =
        String::from("ls\nprefetch\ncd hl\nls\nstat .\nstat second-link\ncd ..\ncd ..\nls\n");
    for n in &root_names {
        // Upstream's `stat .` on a v5 root fails (it looks up the root's parent, inode
        // 0), and `cd` into a non-directory leaves the session at the root.
        let root_stays = image.fs_version() == 5
            && image
                .lookup(image.root(), n.as_bytes())
                .unwrap()
                .is_some_and(|nid| image.stat(nid).unwrap().mode & libc::S_IFMT != libc::S_IFDIR);
        let stat_dot = if root_stays { "" } else { "stat .\n" };
        session += &format!("stat {n}\ncd {n}\nls\n{stat_dot}cd ..\n");
    }
    for n in &nids {
        session += &format!("icheck {n}\n");
    }
    for o in &offsets {
        session += &format!("chunk {o}\n");
    }
    session += "\nexit\n";
    let a = stdout(&run(&up, &["inspect", s(boot)], &session)).replace(PROMPT, "");
    let b = stdout(&run(&ours, &["inspect", s(boot)], &session));
    if a != b {
        let (la, lb): (Vec<_>, Vec<_>) = (a.lines().collect(), b.lines().collect());
        let at = la
            .iter()
            .zip(&lb)
            .position(|(x, y)| x != y)
            .unwrap_or(la.len().min(lb.len()));
        panic!(
            "{what}: the sessions differ at line {at}:\nupstream: {:?}\nours:     {:?}",
            &la[at.saturating_sub(3)..(at + 3).min(la.len())],
            &lb[at.saturating_sub(3)..(at + 3).min(lb.len())]
        );
    }
    one_by_one.len() + 3 + session.lines().count()
}

#[test]
fn every_request_matches_upstream_on_images_of_both_builders() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    sample_tree(&src);
    for (who, bin) in tools() {
        let dir = scratch.path().join(who);
        fs::create_dir(&dir).unwrap();
        let boot = dir.join("image.boot");
        create(
            &bin,
            &src,
            &boot,
            &dir.join("blobs"),
            &["--prefetch-policy", "fs"],
        );
        let n = compare_inspect(&format!("{who}'s image"), &boot);
        assert!(n > 100, "only {n} requests compared");
        // The image really has what the comparison is about.
        let prefetch: serde_json::Value =
            serde_json::from_str(&request(&our_bin(), &boot, "prefetch")).unwrap();
        let slots = prefetch.as_array().unwrap();
        assert_eq!(slots.len(), 4, "{who}: {prefetch}");
        assert_eq!(slots[3], serde_json::json!({"inode": 0, "path": []}));
        assert_eq!(slots[2]["path"].as_array().unwrap().len(), 3, "{prefetch}");
    }
}

#[test]
fn layered_and_inline_images_match_upstream() {
    let scratch = Scratch::new();
    let (lower, upper) = (scratch.path().join("lower"), scratch.path().join("upper"));
    fs::create_dir_all(lower.join("hl")).unwrap();
    write_file(&lower.join("big"), &data(2_500_000, 1));
    write_file(&lower.join("hl/x"), &data(10, 2));
    fs::hard_link(lower.join("hl/x"), lower.join("hl/y")).unwrap();
    fs::create_dir_all(upper.join("hl")).unwrap();
    write_file(&upper.join("new"), &data(1_200_000, 3));
    write_file(&upper.join("hl/z"), &data(5000, 4));
    for (who, bin) in tools() {
        let dir = scratch.path().join(who);
        let blobs = dir.join("blobs");
        fs::create_dir_all(&blobs).unwrap();
        let base = dir.join("base.boot");
        create(&bin, &lower, &base, &blobs, &[]);
        let top = dir.join("top.boot");
        create(
            &bin,
            &upper,
            &top,
            &blobs,
            &["--parent-bootstrap", s(&base)],
        );
        let blobs_json: serde_json::Value =
            serde_json::from_str(&request(&our_bin(), &top, "blobs")).unwrap();
        assert_eq!(
            blobs_json.as_array().unwrap().len(),
            2,
            "{who}: {blobs_json}"
        );
        compare_inspect(&format!("{who}'s layered image"), &top);
        // Layers built apart and merged (as containerd's converter does).
        let alone = dir.join("upper-alone.boot");
        create(&bin, &upper, &alone, &blobs, &[]);
        let merged = dir.join("merged.boot");
        run(
            &bin,
            &[
                "merge",
                "--log-level",
                "warn",
                "-B",
                s(&merged),
                s(&base),
                s(&alone),
            ],
            "",
        );
        compare_inspect(&format!("{who}'s merged image"), &merged);
        // A blob carrying its bootstrap: upstream opens it given the blob directory (-D)
        // and names the blob after the file (up to its first `.`); the bootstrap taken
        // out of it is read by both, named the same way.
        let inline_dir = dir.join("inline");
        fs::create_dir(&inline_dir).unwrap();
        let inline = inline_dir.join("layer");
        run(
            &bin,
            &[
                "create",
                "--log-level",
                "warn",
                "--blob-inline-meta",
                "--features",
                "blob-toc",
                "--blob",
                s(&inline),
                s(&lower),
            ],
            "",
        );
        let extracted = dir.join("layer.boot");
        fs::write(&extracted, extract_section(&inline, "image.boot").unwrap()).unwrap();
        compare_inspect(&format!("{who}'s inline bootstrap"), &extracted);
        let [(_, up), (_, ours)] = tools();
        for req in [
            "stats", "blobs", "prefetch", "ls", "icheck 1", "stat big", "cd hl",
        ] {
            let a = stdout(&run(
                &up,
                &["inspect", "-D", s(&inline_dir), "-R", req, s(&inline)],
                "",
            ));
            assert_eq!(
                a,
                request(&ours, &inline, req),
                "{who}'s inline blob: -R {req}"
            );
            assert_eq!(
                a,
                request(&ours, &extracted, req),
                "{who}'s inline bootstrap: -R {req}"
            );
        }
        assert!(request(&ours, &inline, "blobs").contains("\"blob_id\":\"layer\""));
    }
}

#[test]
fn unknown_and_help_requests() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), b"f");
    let boot = scratch.path().join("b.boot");
    create(&our_bin(), &src, &boot, &scratch.path().join("blobs"), &[]);
    let out = Command::new(our_bin())
        .args(["inspect", "-R", "bogus", s(&boot)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for valid in [
        "stats",
        "ls",
        "cd DIR",
        "stat FILE_NAME",
        "blobs",
        "prefetch",
        "chunk OFFSET",
        "icheck INODE",
    ] {
        assert!(err.contains(valid), "{valid} not listed: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    let help = request(&our_bin(), &boot, "help");
    assert!(help.contains("icheck INODE:       Show path"), "{help}");
    // The shell goes on after an unknown command and ends at end of input.
    let out = run(&our_bin(), &["inspect", s(&boot)], "bogus\nls\n");
    let shown = stdout(&out);
    assert!(shown.contains("unsupported request \"bogus\""), "{shown}");
    assert!(shown.ends_with("\"f\"\n"), "{shown}");
}

#[test]
fn a_corrupt_bootstrap_is_refused_with_the_offset() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), b"f");
    let boot = scratch.path().join("b.boot");
    create(&our_bin(), &src, &boot, &scratch.path().join("blobs"), &[]);
    let good = fs::read(&boot).unwrap();
    let bad = scratch.path().join("bad.boot");
    // Cut inside the inode area, and a superblock whose root nid points past the end.
    let mut cases = vec![good[..good.len() - 100].to_vec()];
    let mut root_far = good.clone();
    root_far[1024 + 14..1024 + 16].copy_from_slice(&0xfff0u16.to_le_bytes());
    cases.push(root_far);
    for (i, bytes) in cases.into_iter().enumerate() {
        fs::write(&bad, bytes).unwrap();
        for req in ["stats", "ls", "blobs"] {
            let out = Command::new(our_bin())
                .args(["inspect", "-R", req, s(&bad)])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "case {i}: {}", text(&out));
            assert!(
                err.contains("bad.boot") && err.contains("0x"),
                "case {i}: {err}"
            );
            assert!(!err.contains("panicked"), "case {i}: {err}");
        }
        let out = Command::new(our_bin())
            .args(["stat", "-B", s(&bad)])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "stat case {i}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("0x"),
            "{}",
            text(&out)
        );
    }
}

/// `stat -J` of both tools, parsed.
fn stat_json(bin: &Path, args: &[&str], out: &Path) -> serde_json::Value {
    let mut all = vec!["stat"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-J", s(out)]);
    run(bin, &all, "");
    serde_json::from_slice(&fs::read(out).unwrap()).unwrap()
}

#[test]
fn stat_matches_upstream_for_one_image_a_directory_and_a_target() {
    let scratch = Scratch::new();
    // Three trees sharing some file contents, with hard links and a multi-chunk file.
    let trees: Vec<PathBuf> = (0..3)
        .map(|i| scratch.path().join(format!("t{i}")))
        .collect();
    for (i, t) in trees.iter().enumerate() {
        fs::create_dir_all(t.join("d")).unwrap();
        write_file(&t.join("shared"), &data(2_200_000, 42));
        write_file(&t.join("own"), &data(300_000 + i * 1000, i as u64));
        write_file(&t.join("d/small"), &data(100 + i, 7));
        fs::hard_link(t.join("d/small"), t.join("d/link")).unwrap();
        std::os::unix::fs::symlink("shared", t.join("sym")).unwrap();
        write_file(&t.join("empty"), b"");
    }
    sample_tree(&scratch.path().join("t3"));
    let mut compared = 0;
    for (who, bin) in tools() {
        let dir = scratch.path().join(who);
        let boots = dir.join("boots");
        let blobs = dir.join("blobs");
        fs::create_dir_all(&boots).unwrap();
        for (i, t) in trees.iter().chain([&scratch.path().join("t3")]).enumerate() {
            create(&bin, t, &boots.join(format!("img{i}")), &blobs, &[]);
        }
        // Files with an extension are not bootstraps to upstream: left out by both.
        fs::write(boots.join("notes.txt"), "not an image").unwrap();
        let target = boots.join("img2");
        let img0 = boots.join("img0");
        let img3 = boots.join("img3");
        let cases: [(&str, Vec<&str>); 4] = [
            ("one bootstrap", vec!["-B", s(&img0)]),
            ("the sample", vec!["-B", s(&img3)]),
            ("a directory", vec!["-D", s(&boots)]),
            (
                "a directory and a target",
                vec!["-D", s(&boots), "-T", s(&target)],
            ),
        ];
        for (case, args) in cases {
            let [(_, up), (_, ours)] = tools();
            let a = stat_json(&up, &args, &dir.join("up.json"));
            let b = stat_json(&ours, &args, &dir.join("ours.json"));
            for key in [
                "dedup_enabled",
                "target_enabled",
                "base_image",
                "target_image",
            ] {
                assert_eq!(a[key], b[key], "{who}'s images, {case}: {key}");
            }
            assert_eq!(a, b, "{who}'s images, {case}");
            compared += 1;
        }
        // The figures mean something: the target shares `shared` with the others.
        let b = stat_json(
            &our_bin(),
            &["-D", s(&boots), "-T", s(&target)],
            &dir.join("o.json"),
        );
        assert!(
            b["target_image"]["ref_chunks"].as_u64().unwrap() >= 3,
            "{b}"
        );
        assert!(
            b["target_image"]["own_chunks"].as_u64().unwrap() >= 1,
            "{b}"
        );
        assert!(b["base_image"]["dedup_chunks"].as_u64().unwrap() > 0, "{b}");
    }
    assert_eq!(compared, 8);
}

/// Runs `bin inspect boot` on a pseudo-terminal (util-linux `script`), `input` typed in.
fn on_terminal(bin: &Path, boot: &Path, input: &str) -> String {
    let cmd = format!("'{}' inspect '{}'", bin.display(), boot.display());
    let out = run(Path::new("script"), &["-qec", &cmd, "/dev/null"], input);
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

#[test]
fn the_shell_prompts_on_a_terminal_as_upstream_does() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    write_file(&src.join("dir/f"), b"f");
    let boot = scratch.path().join("b.boot");
    create(&our_bin(), &src, &boot, &scratch.path().join("blobs"), &[]);
    let input = "ls\ncd dir\nls\nexit\n";
    let [(_, up), (_, ours)] = tools();
    let (a, b) = (
        on_terminal(&up, &boot, input),
        on_terminal(&ours, &boot, input),
    );
    // One prompt before each command read, exit included; the terminal's echo of the
    // typed lines interleaves with the output at no fixed place, so only counts and
    // answers are compared.
    assert_eq!(a.matches(PROMPT).count(), 4, "{a}");
    assert_eq!(b.matches(PROMPT).count(), 4, "{b}");
    for shown in ["d    ", "\"dir\"", "\"f\""] {
        assert!(
            a.contains(shown) && b.contains(shown),
            "{shown}:\n{a}\n---\n{b}"
        );
    }
    // Without a terminal, no prompt.
    let plain = stdout(&run(&ours, &["inspect", s(&boot)], input));
    assert!(!plain.contains(PROMPT), "{plain}");
}

#[test]
fn v5_images_of_both_builders_match_upstream() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    sample_tree(&src);
    let mut boots = Vec::new();
    for (who, bin) in tools() {
        let dir = scratch.path().join(who);
        fs::create_dir(&dir).unwrap();
        let boot = dir.join("image.boot");
        create(
            &bin,
            &src,
            &boot,
            &dir.join("blobs"),
            &["--fs-version", "5", "--prefetch-policy", "fs"],
        );
        let image = Image::open_any(&boot, BlobSource::None).unwrap();
        assert_eq!(image.fs_version(), 5, "{who}");
        let n = compare_inspect(&format!("{who}'s v5 image"), &boot);
        assert!(n > 100, "only {n} requests compared");
        boots.push(boot);
    }
    // Upstream's v5 prefetch table holds inode numbers of the matched patterns only:
    // the directory, the file, and the hard link (one path: v5 links share a number).
    let prefetch: serde_json::Value =
        serde_json::from_str(&request(&our_bin(), &boots[0], "prefetch")).unwrap();
    let slots = prefetch.as_array().unwrap();
    assert_eq!(slots.len(), 3, "{prefetch}");
    assert_eq!(slots[0]["path"], serde_json::json!(["/hl/"]), "{prefetch}");
    assert_eq!(
        slots[1]["path"],
        serde_json::json!(["/3cs+7/"]),
        "{prefetch}"
    );
    assert_eq!(slots[2]["path"].as_array().unwrap().len(), 1, "{prefetch}");
    // `stat -J` of each image alone, and of a directory of each builder's v5 images
    // (the sample and a small tree sharing a file with it), with and without a target.
    let small = scratch.path().join("small");
    fs::create_dir(&small).unwrap();
    fs::copy(src.join("3cs+7"), small.join("shared")).unwrap();
    write_file(&small.join("own"), &data(300_000, 9));
    let [(_, up), (_, ours)] = tools();
    for (who, bin) in tools() {
        let all = scratch.path().join(format!("{who}-all"));
        fs::create_dir(&all).unwrap();
        fs::copy(
            &boots[if who == "upstream" { 0 } else { 1 }],
            all.join("img0"),
        )
        .unwrap();
        let target = all.join("img1");
        create(
            &bin,
            &small,
            &target,
            &scratch.path().join(who).join("blobs"),
            &["--fs-version", "5"],
        );
        let img0 = all.join("img0");
        let cases: [(&str, Vec<&str>); 3] = [
            ("one bootstrap", vec!["-B", s(&img0)]),
            ("a directory", vec!["-D", s(&all)]),
            ("a target", vec!["-D", s(&all), "-T", s(&target)]),
        ];
        for (case, args) in cases {
            let a = stat_json(&up, &args, &scratch.path().join("up.json"));
            let b = stat_json(&ours, &args, &scratch.path().join("ours.json"));
            assert_eq!(a, b, "{who}'s v5 images, stat -J, {case}");
            assert!(
                a["base_image"]["files"].as_u64().unwrap() > 1,
                "{case}: {a}"
            );
        }
        let b = stat_json(
            &ours,
            &["-D", s(&all), "-T", s(&target)],
            &scratch.path().join("o.json"),
        );
        assert!(
            b["target_image"]["ref_chunks"].as_u64().unwrap() >= 3,
            "{b}"
        );
    }
}

#[test]
fn v5_readahead_ranges_and_prefetch_entries_are_read_from_the_tables() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    fs::create_dir_all(src.join("hl")).unwrap();
    write_file(&src.join("3cs+7"), &data(3 << 20, 5));
    write_file(&src.join("hl/x"), b"x");
    let boot = scratch.path().join("v5.boot");
    create(
        &upstream_bin("nydus-image"),
        &src,
        &boot,
        &scratch.path().join("blobs"),
        &["--fs-version", "5", "--prefetch-policy", "fs"],
    );
    let image = Image::open_any(&boot, BlobSource::None).unwrap();
    let sb = image.v5_super_block().unwrap().clone();
    assert_eq!(sb.prefetch_table_entries, 2, "{sb:?}");
    let good = fs::read(&boot).unwrap();
    // Upstream's builder leaves the readahead range zero: set one, as older builders
    // did, and both must show it.
    let mut ra = good.clone();
    let at = sb.blob_table_offset as usize;
    ra[at..at + 4].copy_from_slice(&4096u32.to_le_bytes());
    ra[at + 4..at + 8].copy_from_slice(&8192u32.to_le_bytes());
    let ra_boot = scratch.path().join("ra.boot");
    fs::write(&ra_boot, &ra).unwrap();
    let [(_, up), (_, ours)] = tools();
    let shown = request(&ours, &ra_boot, "blobs");
    assert_eq!(request(&up, &ra_boot, "blobs"), shown);
    assert!(
        shown.contains("\"readahead_offset\":4096,\"readahead_size\":8192"),
        "{shown}"
    );
    // A prefetch entry naming an inode past the inode table is refused with its
    // offset, not read.
    let mut bad = good.clone();
    let at = sb.prefetch_table_offset as usize + 4;
    bad[at..at + 4].copy_from_slice(&0xfff0u32.to_le_bytes());
    let bad_boot = scratch.path().join("bad.boot");
    fs::write(&bad_boot, &bad).unwrap();
    let out = Command::new(our_bin())
        .args(["inspect", "-R", "prefetch", s(&bad_boot)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        err.contains(&format!("{:#x}", at)) && !err.contains("panicked"),
        "{err}"
    );
}
