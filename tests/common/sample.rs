//! The tree most tests build: every kind of entry RAFS v6 can hold (each file type,
//! sizes around chunk boundaries, duplicate chunks, a sparse file, long and odd names,
//! permission bits, owners beyond 16 bits, xattrs of every namespace, hard links, times
//! before 1970 and after 2038, a big directory and a deep chain).

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use super::attrs::{chmod, cstr, set_mtime, set_xattr};
use super::files::{data, write_file};
use super::privileged::{lchown, mknod};

/// Options for `make_tree`.
pub struct TreeSpec {
    /// Include xattrs that upstream 2.2.0's builder refuses (POSIX ACLs).
    pub acls: bool,
    /// Size of the sparse file (0: none).
    pub sparse_size: u64,
    /// Entries in the big directory.
    pub big_dir_entries: usize,
    /// Depth of the deep chain.
    pub depth: usize,
    /// Chunk size the boundary files straddle.
    pub chunk_size: usize,
    /// Include 64 KiB xattr values.
    pub big_xattrs: bool,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            acls: true,
            sparse_size: 3 * 1024 * 1024 * 1024 + 12345,
            big_dir_entries: 10_050,
            depth: 64,
            chunk_size: 0x10_0000,
            big_xattrs: true,
        }
    }
}

/// Builds the tree at `root` (created).
pub fn make_tree(root: &Path, spec: &TreeSpec) {
    fs::create_dir_all(root).unwrap();
    let cs = spec.chunk_size;
    // Regular files around chunk boundaries, plus duplicates for dedup.
    write_file(&root.join("empty"), b"");
    write_file(&root.join("one"), b"x");
    for (name, len) in [
        ("cs-1", cs - 1),
        ("cs", cs),
        ("cs+1", cs + 1),
        ("3cs+7", 3 * cs + 7),
    ] {
        write_file(&root.join(name), &data(len, len as u64));
    }
    write_file(&root.join("dup-of-cs"), &data(cs, cs as u64));
    // Sparse file: holes with islands of data, one at the very end.
    if spec.sparse_size > 0 {
        let mut f = fs::File::create(root.join("sparse")).unwrap();
        for (off, seed) in [(0u64, 1u64), (spec.sparse_size / 2 + 333, 2)] {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(&data(70_000, seed)).unwrap();
        }
        f.set_len(spec.sparse_size).unwrap();
        f.seek(SeekFrom::Start(spec.sparse_size - 5)).unwrap();
        f.write_all(b"tail!").unwrap();
    }
    // Symlinks, including a 4095-byte target.
    symlink("one", root.join("link-short")).unwrap();
    let long: String = (0..4095)
        .map(|i| if i % 100 == 99 { '/' } else { 'l' })
        .collect();
    symlink(&long, root.join("link-long")).unwrap();
    symlink("dangling/target", root.join("link-dangling")).unwrap();
    // Hard links to a file and to a symlink.
    fs::hard_link(root.join("cs+1"), root.join("hardlink-to-file")).unwrap();
    fs::create_dir(root.join("hl")).unwrap();
    fs::hard_link(root.join("cs+1"), root.join("hl/second-link")).unwrap();
    // SAFETY: both paths are NUL terminated.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            cstr(&root.join("link-short")).as_ptr(),
            libc::AT_FDCWD,
            cstr(&root.join("hardlink-to-symlink")).as_ptr(),
            0,
        )
    };
    assert_eq!(rc, 0, "hard link to symlink");
    // Devices, FIFO, socket.
    mknod(&root.join("chr"), libc::S_IFCHR | 0o620, 300, 70000);
    mknod(&root.join("blk"), libc::S_IFBLK | 0o660, 259, 4095);
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o644, 0, 0);
    mknod(&root.join("sock"), libc::S_IFSOCK | 0o755, 0, 0);
    // Every permission bit.
    for (name, mode) in [
        ("mode-7777", 0o7777),
        ("mode-4755", 0o4755),
        ("mode-2711", 0o2711),
        ("mode-0000", 0o000),
    ] {
        write_file(&root.join(name), name.as_bytes());
        chmod(&root.join(name), mode);
    }
    fs::create_dir(root.join("sticky-dir")).unwrap();
    chmod(&root.join("sticky-dir"), 0o1777);
    // Owners beyond 16 bits.
    write_file(&root.join("big-owner"), b"owner");
    lchown(&root.join("big-owner"), 100_000, 4_000_000_000);
    lchown(&root.join("link-short"), 70_000, 65_536);
    // Names: 255 bytes, not UTF-8, odd characters that sort before '.'.
    let mut name255 = vec![b'n'; 254];
    name255.push(0xff);
    write_file(
        &root.join(std::ffi::OsStr::from_bytes(&name255)),
        b"long name",
    );
    write_file(
        &root.join(std::ffi::OsStr::from_bytes(b"bad-\xc3\x28-utf8")),
        b"latin",
    );
    write_file(&root.join("!bang"), b"sorts before dot");
    write_file(&root.join("-dash"), b"also before dot");
    write_file(&root.join(" space name"), b"spaces");
    // Xattrs of every namespace.
    set_xattr(&root.join("one"), "user.plain", b"value");
    set_xattr(&root.join("one"), "user.empty", b"");
    set_xattr(&root.join("one"), "trusted.overlay.opaque", b"y");
    set_xattr(
        &root.join("one"),
        "security.capability",
        &[
            1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    set_xattr(&root.join("link-short"), "trusted.on-symlink", b"sym");
    set_xattr(&root.join("hl"), "user.on-dir", b"dir");
    if spec.big_xattrs {
        set_xattr(&root.join("cs"), "user.big", &data(65535, 9));
        set_xattr(&root.join("hl"), "trusted.big", &data(30000, 10));
    }
    if spec.acls {
        let status = Command::new("setfacl")
            .args(["-m", "u:1234:rw,g:55:r"])
            .arg(root.join("one"))
            .status()
            .expect("setfacl (package acl)");
        assert!(status.success());
        let status = Command::new("setfacl")
            .args(["-d", "-m", "u:1234:rwx"])
            .arg(root.join("hl"))
            .status()
            .expect("setfacl");
        assert!(status.success());
    }
    // A big directory and a deep chain.
    if spec.big_dir_entries > 0 {
        let big = root.join("big-dir");
        fs::create_dir(&big).unwrap();
        for i in 0..spec.big_dir_entries {
            let name = format!("entry-{i:05}-{}", "x".repeat(i % 40));
            if i % 1000 == 0 {
                fs::create_dir(big.join(&name)).unwrap();
            } else {
                fs::File::create(big.join(&name)).unwrap();
            }
        }
    }
    let mut deep = root.join("deep");
    for level in 0..spec.depth {
        fs::create_dir(&deep).unwrap();
        if level % 16 == 0 {
            write_file(&deep.join("f"), format!("level {level}").as_bytes());
        }
        deep = deep.join(format!("d{level}"));
    }
    // Times: 0, nanoseconds, after 2038, before 1970. Directories last, as creating
    // entries changes their mtime.
    set_mtime(&root.join("empty"), 0, 0);
    set_mtime(&root.join("one"), 1_700_000_000, 123_456_789);
    set_mtime(&root.join("cs"), 4_102_444_800, 999_999_999);
    set_mtime(&root.join("cs-1"), -86_400, 5);
    set_mtime(&root.join("link-long"), 2_500_000_000, 1);
    set_mtime(&root.join("hl"), 3_000_000_000, 42);
    set_mtime(root, 1_600_000_000, 7);
}
