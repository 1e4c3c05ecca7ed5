//! Requests parsed as upstream parses them; answers on a sketched tree; and mutated
//! bootstraps: every request on them is an answer or an error, never a panic.

use super::*;
use crate::builder::bootstrap::v6::tests::{bootstrap_of, open};
use crate::builder::tree::tests::Sketch;
use crate::storage::blobs::BlobSource;

/// root: a (file, 10 bytes), d/ (f, 5 bytes; g and h, hard links to f), l -> d/f.
fn sample() -> Vec<u8> {
    let mut s = Sketch::new();
    s.file(0, "a", 10);
    let d = s.dir(0, "d");
    let f = s.file(d, "f", 5);
    s.hard_link(d, "g", f);
    s.hard_link(0, "h", f);
    s.symlink(0, "l", b"d/f");
    bootstrap_of(&s.tree)
}

#[test]
fn requests_parse_as_upstream_takes_them() {
    let ok = [
        ("stats", Request::Stats),
        ("ls\n", Request::Ls),
        ("cd d", Request::Cd("d".into())),
        ("stat  big extra", Request::Stat("big".into())),
        ("blobs", Request::Blobs),
        ("prefetch", Request::Prefetch),
        ("chunk 4096", Request::Chunk(4096)),
        ("icheck 128", Request::Icheck(128)),
        ("help me", Request::Help),
        ("q", Request::Exit),
        ("exit", Request::Exit),
    ];
    for (line, want) in ok {
        assert_eq!(Request::parse(line).unwrap(), Some(want), "{line:?}");
    }
    assert_eq!(Request::parse("  \n").unwrap(), None);
    for bad in ["bogus", "stats x", "cd", "stat", "chunk", "ls /"] {
        let e = Request::parse(bad).unwrap_err().to_string();
        assert!(e.contains("valid ones are stats, ls, cd DIR"), "{bad}: {e}");
        assert!(e.contains(bad), "{bad}: {e}");
    }
    for bad in ["chunk x", "icheck -1"] {
        let e = Request::parse(bad).unwrap_err().to_string();
        assert!(e.contains("not a decimal number"), "{bad}: {e}");
    }
}

#[test]
fn answers_name_entries_as_upstream_does() {
    let image = open(sample());
    let root = image.root().0;
    let mut ins = Inspector::new(image).unwrap();
    let Reply::Listing(ls) = ins.execute(&Request::Ls).unwrap() else {
        panic!("ls")
    };
    let names: Vec<(char, &[u8])> = ls.iter().map(|e| (e.sign, e.name.as_slice())).collect();
    assert_eq!(
        names,
        [('-', &b"a"[..]), ('d', b"d"), ('-', b"h"), ('l', b"l")]
    );
    let f = ls[2].ino;
    // A hard link's paths: one per name, a directory's first name for that directory.
    let Reply::Files(files) = ins.execute(&Request::Icheck(f)).unwrap() else {
        panic!("icheck")
    };
    let paths: Vec<&[u8]> = files.iter().map(|s| s.path.as_deref().unwrap()).collect();
    assert_eq!(paths, [&b"/d/f"[..], b"/d/f", b"/h"]);
    assert!(files.iter().all(|s| s.nlink == 3 && s.shown && s.size == 5));
    // The root is found without an attribute block; a directory's path has no slash.
    let Reply::Files(files) = ins.execute(&Request::Icheck(root)).unwrap() else {
        panic!("icheck root")
    };
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path.as_deref(), Some(&b"/"[..]));
    assert!(!files[0].shown);
    assert_eq!(
        ins.execute(&Request::Cd("a".into())).unwrap(),
        Reply::Cd(Some(("a".into(), "not a directory")))
    );
    assert_eq!(
        ins.execute(&Request::Cd("zz".into())).unwrap(),
        Reply::Cd(Some(("zz".into(), "")))
    );
    assert_eq!(
        ins.execute(&Request::Cd("d".into())).unwrap(),
        Reply::Cd(None)
    );
    let Reply::Files(files) = ins.execute(&Request::Stat("g".into())).unwrap() else {
        panic!("stat")
    };
    // Upstream names a hard link by its inode's first name in the directory.
    assert_eq!(files[0].name, b"f");
    let Reply::Files(files) = ins.execute(&Request::Stat(".".into())).unwrap() else {
        panic!("stat .")
    };
    assert_eq!(
        (files[0].name.as_slice(), files[0].parent),
        (&b"d"[..], root)
    );
    ins.execute(&Request::Cd("..".into())).unwrap();
    ins.execute(&Request::Cd("..".into())).unwrap();
    let Reply::Listing(again) = ins.execute(&Request::Ls).unwrap() else {
        panic!("ls")
    };
    assert_eq!(again, ls);
    let Reply::Stats(stats) = ins.execute(&Request::Stats).unwrap() else {
        panic!("stats")
    };
    assert_eq!(
        Reply::Stats(stats.clone()).json(),
        serde_json::json!({ "inodes_count": stats.inodes_count })
    );
    assert_eq!(
        ins.execute(&Request::Prefetch).unwrap(),
        Reply::Prefetch(vec![])
    );
}

#[test]
fn mutated_bootstraps_answer_or_fail_without_panicking() {
    let good = sample();
    let requests = [
        Request::Stats,
        Request::Blobs,
        Request::Prefetch,
        Request::Ls,
        Request::Stat("d".into()),
        Request::Stat("h".into()),
        Request::Cd("d".into()),
        Request::Ls,
        Request::Chunk(0),
        Request::Icheck(0),
        Request::Icheck(u64::MAX),
    ];
    let mut refused = 0;
    // Every byte of the superblock and of the inode and directory area, set to values
    // that break sizes, offsets and nids.
    for at in 1024..good.len().min(1024 + 4096 * 3) {
        for value in [0x00, 0xff, 0x80] {
            let mut bytes = good.clone();
            if bytes[at] == value {
                continue;
            }
            bytes[at] = value;
            let Ok(image) = Image::from_bytes("m.boot".as_ref(), bytes, BlobSource::None) else {
                refused += 1;
                continue;
            };
            let Ok(mut ins) = Inspector::new(image) else {
                refused += 1;
                continue;
            };
            for r in &requests {
                if let Ok(reply) = ins.execute(r) {
                    let _ = (reply.json(), reply.text(true), reply.text(false));
                }
            }
        }
    }
    assert!(
        refused > 0,
        "no mutation was refused: the loop tested nothing"
    );
}

#[test]
fn a_dirent_naming_no_inode_is_refused_with_its_offset() {
    let good = sample();
    let image = open(good.clone());
    let root = image.root().0.to_le_bytes();
    drop(image);
    // The root's entries: "." and ".." (the root's nid, file type 2), then "a"; each
    // dirent is nid u64, name offset u16, file type u8, reserved u8. Point "a" far past
    // the bootstrap's end.
    let is_dot = |b: &[u8]| b[..8] == root && b[10] == 2;
    let at = (0..good.len() - 36)
        .find(|&i| is_dot(&good[i..]) && is_dot(&good[i + 12..]))
        .expect("the root's '.' and '..' entries");
    let mut bad = good;
    bad[at + 24..at + 32].copy_from_slice(&0x00ff_ffffu64.to_le_bytes());
    let image = Image::from_bytes("bad.boot".as_ref(), bad, BlobSource::None).unwrap();
    let e = match Inspector::new(image) {
        Ok(_) => panic!("a dirent naming no inode was accepted"),
        Err(e) => e,
    };
    let text = crate::error::Chain(&e).to_string();
    assert!(text.contains("bad.boot"), "{text}");
    assert!(text.contains("0x"), "no offset named: {text}");
}
