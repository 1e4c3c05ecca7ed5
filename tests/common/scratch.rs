//! A tmpfs per test: tmpfs takes xattr values up to 64 KiB and every namespace (ext4 here
//! stops near 4 KiB), and files vanish with the test.

use std::path::Path;
use std::process::Command;

/// A tmpfs mounted for one test. Unmounted on drop.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// Mounts a fresh tmpfs on a temporary directory (needs root).
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

    /// Where it is mounted.
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
