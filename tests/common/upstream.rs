//! The upstream Nydus 2.2.0 oracle: where its tools are, and its `nydusd` mounting an
//! image for a test.

use std::fs;
use std::path::{Path, PathBuf};

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
    // tests/prefetch.rs mounts only through `mount_with`.
    #[allow(dead_code)]
    pub fn mount(boot: &Path, blobs: &Path, work: &Path) -> Self {
        Self::mount_with(boot, blobs, work, serde_json::json!({}), "warn")
    }

    /// [`Nydusd::mount`] with more top-level configuration keys (`fs_prefetch`, or
    /// `digest_validate`, which nydusd honours for RAFS v5 and refuses for v6) and this
    /// log level; the log is `work/nydusd.log`.
    pub fn mount_with(
        boot: &Path,
        blobs: &Path,
        work: &Path,
        extra: serde_json::Value,
        log_level: &str,
    ) -> Self {
        let mnt = work.join("mnt");
        let cache = work.join("cache");
        fs::create_dir_all(&mnt).unwrap();
        fs::create_dir_all(&cache).unwrap();
        let mut cfg = serde_json::json!({
            "device": {
                "backend": {"type": "localfs", "config": {"dir": blobs}},
                "cache": {"type": "blobcache", "config": {"work_dir": cache}}
            },
            "mode": "direct",
            "digest_validate": false,
            "enable_xattr": true
        });
        if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
            cfg.extend(extra.clone());
        }
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
            .args(["--rlimit-nofile", "0", "--log-level", log_level])
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
