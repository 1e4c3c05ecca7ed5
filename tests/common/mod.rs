//! Shared test helpers: scratch file systems, tree generators that cover every entry kind
//! RAFS v6 can hold, and comparisons of a source tree with an image (through the library
//! reader) or with a mounted tree (through plain file-system calls).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nydus_image::reader::Image;

/// An error with all its causes, as the CLI prints it (`{:#}`): library errors keep their
/// causes as sources, out of their own message.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    nydus_image::error::Chain(e).to_string()
}

/// A tmpfs mounted for one test (tmpfs takes xattr values up to 64 KiB and any namespace;
/// ext4 here stops near 4 KiB). Unmounted on drop.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8g", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "these tests need root to mount a tmpfs at {}",
            dir.path().display()
        );
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    let rc = unsafe {
        libc::lsetxattr(
            cstr(path).as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) {
    let dev = libc::makedev(major, minor);
    let rc = unsafe { libc::mknod(cstr(path).as_ptr(), mode, dev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

pub fn lchown(path: &Path, uid: u32, gid: u32) {
    let rc = unsafe { libc::lchown(cstr(path).as_ptr(), uid, gid) };
    assert_eq!(rc, 0, "lchown {}", path.display());
}

pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let times = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes, half of them compressible.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (out.len() / 8192) % 2 == 0 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(b"compressible text, compressible text. ");
        }
    }
    out.truncate(len);
    out
}

pub fn write_file(path: &Path, contents: &[u8]) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

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

/// Builds a tree with every kind of entry the core issue lists.
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

/// A scanned tree: path -> facts, and the hard-link groups (sorted lists of paths).
pub type Scan = (BTreeMap<Vec<u8>, EntryFacts>, Vec<Vec<Vec<u8>>>);

/// What a comparison looks at for one entry.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct EntryFacts {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub rdev: u64,
    pub nlink: u32,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Reads a tree with std::fs and libc only: path -> facts, plus hard-link groups.
pub fn scan_fs(root: &Path) -> Scan {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), b"/".to_vec())];
    while let Some((path, rel)) = stack.pop() {
        let m = fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let target = ft.is_symlink().then(|| {
            fs::read_link(&path)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        let facts = EntryFacts {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: if ft.is_file() || ft.is_symlink() {
                m.size()
            } else {
                0
            },
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec() as u32,
            rdev: if ft.is_block_device() || ft.is_char_device() {
                m.rdev()
            } else {
                0
            },
            nlink: if ft.is_dir() { 0 } else { m.nlink() as u32 },
            target,
            xattrs: list_xattrs(&path),
        };
        if !ft.is_dir() && m.nlink() > 1 {
            groups
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(rel.clone());
        }
        out.insert(rel.clone(), facts);
        if ft.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                let mut child = rel.clone();
                if child.len() > 1 {
                    child.push(b'/');
                }
                child.extend_from_slice(e.file_name().as_bytes());
                stack.push((e.path(), child));
            }
        }
    }
    let mut groups: Vec<Vec<Vec<u8>>> = groups
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (out, groups)
}

use std::os::unix::fs::FileTypeExt;

pub fn list_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cstr(path);
    let mut out = BTreeMap::new();
    let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if size <= 0 {
        return out;
    }
    let mut names = vec![0u8; size as usize];
    let size = unsafe {
        libc::llistxattr(
            c.as_ptr(),
            names.as_mut_ptr() as *mut libc::c_char,
            names.len(),
        )
    };
    names.truncate(size.max(0) as usize);
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let n = CString::new(name).unwrap();
        let vsize = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(
            vsize >= 0,
            "getxattr {:?} on {}",
            String::from_utf8_lossy(name),
            path.display()
        );
        let mut v = vec![0u8; vsize as usize];
        let got = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                n.as_ptr(),
                v.as_mut_ptr() as *mut libc::c_void,
                v.len(),
            )
        };
        v.truncate(got.max(0) as usize);
        out.insert(name.to_vec(), v);
    }
    out
}

/// Reads an image through the library: path -> facts, plus hard-link groups (by nid).
pub fn scan_image(image: &Image) -> Scan {
    let mut out = BTreeMap::new();
    let mut by_nid: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    image
        .walk(|path, nid| {
            let st = image.stat(nid)?;
            let is_dir = st.mode & libc::S_IFMT == libc::S_IFDIR;
            let is_link = st.mode & libc::S_IFMT == libc::S_IFLNK;
            let facts = EntryFacts {
                mode: st.mode,
                uid: st.uid,
                gid: st.gid,
                size: if is_dir { 0 } else { st.size },
                mtime: st.mtime,
                mtime_nsec: st.mtime_nsec,
                rdev: st.rdev,
                nlink: if is_dir { 0 } else { st.nlink },
                target: if is_link {
                    Some(image.readlink(nid)?)
                } else {
                    None
                },
                xattrs: image.xattrs(nid)?.into_iter().collect(),
            };
            if !is_dir && st.nlink > 1 {
                by_nid.entry(nid).or_default().push(path.to_vec());
            }
            out.insert(path.to_vec(), facts);
            Ok(())
        })
        .expect("walk image");
    let mut groups: Vec<Vec<Vec<u8>>> = by_nid
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (out, groups)
}

/// Compares the contents of regular files, streaming: the source read with std::fs, the
/// image through `read_at(path, offset, buf) -> bytes read`.
pub fn assert_same_content(
    src_root: &Path,
    paths: &[Vec<u8>],
    mut read_at: impl FnMut(&[u8], u64, &mut [u8]) -> usize,
) {
    use std::io::Read;
    let mut want = vec![0u8; 1 << 20];
    let mut got = vec![0u8; 1 << 20];
    for p in paths {
        let src = src_root.join(std::ffi::OsStr::from_bytes(&p[1..]));
        let mut f = fs::File::open(&src).unwrap();
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut f, &mut want);
            let m = read_at(p, offset, &mut got[..]);
            assert_eq!(
                m,
                n,
                "{}: image gives {m} bytes at offset {offset}, source {n}",
                String::from_utf8_lossy(p)
            );
            if n == 0 {
                break;
            }
            if want[..n] != got[..n] {
                let i = (0..n).find(|&i| want[i] != got[i]).unwrap();
                panic!(
                    "{}: content differs at byte {}",
                    String::from_utf8_lossy(p),
                    offset + i as u64
                );
            }
            offset += n as u64;
        }
        fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
            let mut got = 0;
            while got < buf.len() {
                match f.read(&mut buf[got..]).unwrap() {
                    0 => break,
                    k => got += k,
                }
            }
            got
        }
    }
}

/// Asserts two scans are equal, reporting the first differing entry by path.
pub fn assert_same_scan(what: &str, left: &Scan, right: &Scan) {
    let lk: Vec<_> = left.0.keys().collect();
    let rk: Vec<_> = right.0.keys().collect();
    if lk != rk {
        let only_l: Vec<_> = left
            .0
            .keys()
            .filter(|k| !right.0.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .take(5)
            .collect();
        let only_r: Vec<_> = right
            .0
            .keys()
            .filter(|k| !left.0.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .take(5)
            .collect();
        panic!("{what}: entry sets differ; only in source: {only_l:?}; only in image: {only_r:?}");
    }
    for (path, l) in &left.0 {
        let r = &right.0[path];
        assert_eq!(l, r, "{what}: {} differs", String::from_utf8_lossy(path));
    }
    assert_eq!(left.1, right.1, "{what}: hard-link groups differ");
}

/// Regular files in a scan.
pub fn regular_files(scan: &BTreeMap<Vec<u8>, EntryFacts>) -> Vec<Vec<u8>> {
    scan.iter()
        .filter(|(_, f)| f.mode & libc::S_IFMT == libc::S_IFREG)
        .map(|(p, _)| p.clone())
        .collect()
}

/// Path of our built binary.
/// Runs our binary with these arguments.
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(our_bin())
        .args(args)
        .output()
        .expect("run nydus-image")
}

/// A finished command's exit status and output, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `nydus-image create` of `src` into `boot` and the blob directory `blobs`, with
/// `extra` flags.
pub fn build(src: &Path, boot: &Path, blobs: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["create", "-l", "warn", "-B", s(boot), "-D", s(blobs)];
    args.extend_from_slice(extra);
    args.push(s(src));
    run(&args)
}

/// A UTF-8 path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

pub fn our_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nydus-image"))
}

/// Path of an upstream 2.2.0 tool, as `scripts/setup` installs it: under
/// `$NYDUS_UPSTREAM_ROOT/bin` (default `/opt/nydus-upstream-2.2.0/bin`), apart from
/// `~/.cargo/bin` so that `nydus-image` on PATH is never the oracle by accident.
pub fn upstream_bin(name: &str) -> PathBuf {
    let root = std::env::var_os("NYDUS_UPSTREAM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/nydus-upstream-2.2.0"));
    let p = root.join("bin").join(name);
    assert!(
        p.exists(),
        "upstream {name} is not installed at {}: run scripts/setup (.ci/run does)",
        p.display()
    );
    p
}

/// A running upstream nydusd, unmounted and stopped on drop.
pub struct Nydusd {
    child: std::process::Child,
    /// Where it is mounted.
    pub mnt: PathBuf,
}

impl Nydusd {
    /// Mounts `boot` with blobs from `blobs`, using `work` for its mount point, cache
    /// and log.
    pub fn mount(boot: &Path, blobs: &Path, work: &Path) -> Self {
        let mnt = work.join("mnt");
        let cache = work.join("cache");
        fs::create_dir_all(&mnt).unwrap();
        fs::create_dir_all(&cache).unwrap();
        let cfg = serde_json::json!({
            "device": {
                "backend": {"type": "localfs", "config": {"dir": blobs}},
                "cache": {"type": "blobcache", "config": {"work_dir": cache}}
            },
            "mode": "direct",
            "digest_validate": false,
            "enable_xattr": true
        });
        let cfg_path = work.join("nydusd.json");
        fs::write(&cfg_path, cfg.to_string()).unwrap();
        let log = fs::File::create(work.join("nydusd.log")).unwrap();
        let child = std::process::Command::new(upstream_bin("nydusd"))
            .arg("--config")
            .arg(&cfg_path)
            .arg("--mountpoint")
            .arg(&mnt)
            .arg("--bootstrap")
            .arg(boot)
            .args(["--rlimit-nofile", "0", "--log-level", "warn"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nydusd");
        let mut me = Nydusd { child, mnt };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
            if mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(me.mnt.to_str().unwrap()))
            {
                break;
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                let log = fs::read_to_string(work.join("nydusd.log")).unwrap_or_default();
                panic!("nydusd exited with {status} before mounting:\n{log}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nydusd did not mount within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        me
    }
}

impl Drop for Nydusd {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a file of a mounted tree: the `read_at` side of `assert_same_content`.
pub fn read_via_mount(mnt: &Path) -> impl FnMut(&[u8], u64, &mut [u8]) -> usize + '_ {
    move |p, offset, buf| {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(
            mnt.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&p[1..])),
        )
        .unwrap();
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        got
    }
}

/// Reads a file of an image through the library: the `read_at` side of
/// `assert_same_content`.
pub fn read_via_image(image: &Image) -> impl FnMut(&[u8], u64, &mut [u8]) -> usize + '_ {
    move |p, offset, buf| {
        let nid = image.resolve(p).unwrap().expect("path exists in the image");
        image.read(nid, offset, buf).unwrap()
    }
}

/// Guard from [`watchdog`]; dropping it stands the watchdog down.
pub struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Ends the whole test binary, saying what it was doing and which FUSE mounts and
/// processes exist, if the guard is still alive after `secs`: a FUSE request that is never
/// answered must fail the run, not stall it.
pub fn watchdog(what: &str, secs: u64) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            rx.recv_timeout(std::time::Duration::from_secs(secs))
        {
            let mounts: String = fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(" - fuse"))
                .map(|l| format!("  {l}\n"))
                .collect();
            let ps = Command::new("ps")
                .args(["-eo", "pid,ppid,stat,wchan:32,args"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let ps: String = ps
                .lines()
                .filter(|l| l.contains("nydus") || l.contains("PID"))
                .map(|l| format!("  {l}\n"))
                .collect();
            eprintln!("{what}: still running after {secs} s; giving up.\nFUSE mounts:\n{mounts}processes:\n{ps}");
            std::process::exit(70);
        }
    });
    Watchdog(Some(tx))
}
