//! `mount --access-log`: files read through our mount in a chosen order are logged in that
//! order, once each, by the path used (a hard link's second name when read by it), while
//! the mount serves; the log, fed to `create --prefetch-policy fs` on standard input,
//! becomes a prefetch table listing the same files in the same order.
//!
//! Empty files are left out of the reads: the kernel answers reads of a file it knows to
//! be empty without asking the server, so they never reach the log.

mod common {
    pub mod commands;
    pub mod files;
    pub mod ours;
    pub mod output;
    pub mod scratch;
}

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::commands::build;
use common::files::{data, write_file};
use common::ours::our_bin;
use common::output::text;
use common::scratch::Scratch;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

/// A foreground `nydus-image mount --access-log`, stopped with SIGTERM.
struct Mount {
    child: Child,
    mnt: PathBuf,
}

impl Mount {
    fn start(out: &Path, log: &Path) -> Self {
        let mnt = out.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let child = Command::new(our_bin())
            .args(["mount", "--log-level", "warn", "--access-log"])
            .arg(log)
            .arg("--bootstrap")
            .arg(out.join("boot"))
            .arg("--blob-dir")
            .arg(out.join("blobs"))
            .arg(&mnt)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut me = Mount { child, mnt };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nydus_image::mount::is_mounted(&me.mnt) {
            if let Some(status) = me.child.try_wait().unwrap() {
                panic!("mount exited early with {status}");
            }
            assert!(Instant::now() < deadline, "mount not ready in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mount did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

fn make_tree(root: &Path) {
    for d in ["usr/lib/py", "etc", "bin", "dir with space", "unread"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    write_file(&root.join("usr/lib/py/a.py"), b"print('a')\n");
    write_file(&root.join("usr/lib/py/b.py"), &data(10_000, 1));
    write_file(&root.join("bin/big"), &data(2_500_000, 2));
    write_file(&root.join("etc/first"), b"linked\n");
    fs::hard_link(root.join("etc/first"), root.join("etc/second")).unwrap();
    write_file(&root.join("dir with space/f g"), b"spaces\n");
    write_file(&root.join("unread/stat-only"), b"never read\n");
    write_file(&root.join("unread/empty"), b"");
}

/// Waits up to `within` for `path` to hold `want`; returns what it held last.
fn wait_for(path: &Path, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = fs::read_to_string(path).unwrap_or_default();
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reads_are_logged_in_order_and_become_the_prefetch_table() {
    let scratch = Scratch::new();
    let src = scratch.path().join("src");
    let out = scratch.path().join("out");
    make_tree(&src);
    fs::create_dir_all(out.join("blobs")).unwrap();
    let o = build(&src, &out.join("boot"), &out.join("blobs"), &[]);
    assert!(o.status.success(), "create: {}", text(&o));

    let log = out.join("access.log");
    let mut mount = Mount::start(&out, &log);
    let order = [
        "/bin/big",
        "/usr/lib/py/b.py",
        "/etc/second",
        "/dir with space/f g",
        "/usr/lib/py/a.py",
    ];
    for p in order {
        let got = fs::read(mount.mnt.join(&p[1..])).unwrap();
        assert_eq!(got, fs::read(src.join(&p[1..])).unwrap(), "{p}");
    }
    // Read again, by another name, only looked at, or empty: no new lines.
    fs::read(mount.mnt.join("usr/lib/py/b.py")).unwrap();
    fs::read(mount.mnt.join("etc/first")).unwrap();
    fs::metadata(mount.mnt.join("unread/stat-only")).unwrap();
    assert!(fs::read(mount.mnt.join("unread/empty")).unwrap().is_empty());
    fs::read_dir(mount.mnt.join("usr/lib/py")).unwrap().count();

    let want: String = order.iter().map(|p| format!("{p}\n")).collect();
    // Flushed while the mount serves, well within a second.
    let live = wait_for(&log, &want, Duration::from_secs(2));
    assert_eq!(live, want, "the log while mounted");
    mount.stop();
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        want,
        "the log at unmount"
    );

    // The log as prefetch patterns.
    let pre = scratch.path().join("pre");
    fs::create_dir_all(pre.join("blobs")).unwrap();
    let mut child = Command::new(our_bin())
        .args(["create", "--log-level", "warn", "--prefetch-policy", "fs"])
        .arg("--bootstrap")
        .arg(pre.join("boot"))
        .arg("--blob-dir")
        .arg(pre.join("blobs"))
        .arg(&src)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(&log).unwrap())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "create --prefetch-policy fs: {}",
        text(&o)
    );
    let image = Image::open(&pre.join("boot"), BlobSource::Dir(pre.join("blobs"))).unwrap();
    let want_nids: Vec<_> = order
        .iter()
        .map(|p| image.resolve(p.as_bytes()).unwrap().unwrap())
        .collect();
    assert_eq!(image.prefetch_table().unwrap(), want_nids);
}

#[test]
fn an_unwritable_access_log_fails_the_mount() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_file(&src.join("f"), b"x");
    fs::create_dir_all(out.join("blobs")).unwrap();
    let o = build(&src, &out.join("boot"), &out.join("blobs"), &[]);
    assert!(o.status.success(), "create: {}", text(&o));
    fs::create_dir_all(out.join("mnt")).unwrap();
    let o = Command::new(our_bin())
        .args(["mount", "--access-log"])
        .arg(scratch.path().join("no/such/dir/log"))
        .arg("--bootstrap")
        .arg(out.join("boot"))
        .arg("--blob-dir")
        .arg(out.join("blobs"))
        .arg(out.join("mnt"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "mount: {}", text(&o));
    let err = text(&o);
    assert!(
        err.contains("access log") && err.contains("no/such/dir/log"),
        "{err}"
    );
    assert!(!nydus_image::mount::is_mounted(&out.join("mnt")));
}
