//! Crash safety: `create` killed with SIGKILL at moments spread over a whole build never
//! leaves a bootstrap or blob at a final path that is not complete. Temporary files
//! (`.NAME.tmp-PID-N`, `.blob.tmp-PID-N`) may remain; nothing at a final name is partial.

mod common {
    pub mod files;
    pub mod ours;
}

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{files::*, ours::*};
use nydus_image::ops::check::check;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

fn is_blob_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Everything at a final name in `out` is whole: blobs match their sha256 name, and a
/// bootstrap opens, checks and reads.
fn assert_final_paths_whole(out: &Path) -> bool {
    use sha2::Digest;
    for e in fs::read_dir(out).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if is_blob_name(&name) {
            let digest = hex::encode(sha2::Sha256::digest(fs::read(e.path()).unwrap()));
            assert_eq!(digest, name, "blob at a final path is partial");
        }
    }
    let boot = out.join("boot");
    if !boot.exists() {
        return false;
    }
    let mut image = Image::open(&boot, BlobSource::Dir(out.to_path_buf()))
        .expect("a bootstrap at its final path opens");
    image.validate = true;
    check(&image, false).expect("and checks");
    image
        .walk(|_, nid| {
            if image.stat(nid)?.mode & libc::S_IFMT == libc::S_IFREG {
                image.read_all(nid)?;
            }
            Ok(())
        })
        .expect("and every file reads back");
    true
}

#[test]
fn killed_builds_leave_nothing_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in 0..20 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..20 {
            write_file(
                &dir.join(format!("f{f}")),
                &data(100_000 + f * 3000, (d * 100 + f) as u64),
            );
        }
    }
    let build = |out: &Path| {
        fs::create_dir_all(out).unwrap();
        Command::new(our_bin())
            .args(["create", "--log-level", "error", "--bootstrap"])
            .arg(out.join("boot"))
            .arg("--blob-dir")
            .arg(out)
            .arg(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long a whole build takes here.
    let started = Instant::now();
    let status = build(&tmp.path().join("full")).wait().unwrap();
    assert!(status.success());
    let full = started.elapsed();
    let mut complete = 0;
    let rounds = 24;
    for i in 0..rounds {
        let out = tmp.path().join(format!("kill{i}"));
        let mut child = build(&out);
        if i + 2 >= rounds {
            // The last rounds let the build finish (up to a minute) before the kill: a
            // fixed wait, even three whole builds long, sometimes fell short on a loaded
            // machine.
            let deadline = Instant::now() + std::time::Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        } else {
            // Moments spread over the build.
            std::thread::sleep(full.mul_f64(i as f64 / (rounds - 2) as f64));
        }
        let _ = child.kill();
        let _ = child.wait();
        if assert_final_paths_whole(&out) {
            complete += 1;
        }
    }
    assert!(
        complete < rounds,
        "some kills land mid-build (build took {full:?})"
    );
    assert!(complete > 0, "the latest kills come after a complete build");
}
