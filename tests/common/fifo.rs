//! Running our binary as containerd's nydus converter runs upstream's: the tar layer fed
//! through one FIFO and the blob read from another, each by a thread of its own, and
//! prefetch patterns on standard input.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ours::our_bin;
use super::privileged::mknod;

/// containerd's converter's `create` for a tar layer (`pkg/converter/tool/builder.go`),
/// the flags before the optional ones and the source, with the `BLOB_FIFO` placeholder
/// of [`run_bin_with_fifos`]. Index 12 is the layer type.
// Each test binary uses what it needs of this module.
#[allow(dead_code)]
pub const CONVERTER_CREATE: [&str; 16] = [
    "create",
    "--log-level",
    "warn",
    "--prefetch-policy",
    "fs",
    "--blob",
    "BLOB_FIFO",
    "--whiteout-spec",
    "none",
    "--fs-version",
    "6",
    "--type",
    "tar-rafs",
    "--blob-inline-meta",
    "--features",
    "blob-toc",
];

/// What a run through FIFOs gave.
pub struct FifoRun {
    /// The process's status and output.
    pub output: Output,
    /// Everything read from the blob FIFO.
    pub blob: Vec<u8>,
}

/// Runs our `nydus-image` with `args`, where the arguments `TAR_FIFO` and `BLOB_FIFO` stand
/// for FIFOs made in `dir`: a thread writes the file `tar` into the first, another reads
/// the second whole. `stdin` goes to its standard input.
// tests/converter.rs runs upstream's binary too, through run_bin_with_fifos.
#[allow(dead_code)]
pub fn run_with_fifos(dir: &Path, args: &[&str], tar: &Path, stdin: &[u8]) -> FifoRun {
    run_bin_with_fifos(&our_bin(), dir, args, tar, stdin)
}

/// [`run_with_fifos`] with the `nydus-image` at `bin` (ours or upstream's).
pub fn run_bin_with_fifos(
    bin: &Path,
    dir: &Path,
    args: &[&str],
    tar: &Path,
    stdin: &[u8],
) -> FifoRun {
    let tar_fifo = dir.join("tar.fifo");
    let blob_fifo = dir.join("blob.fifo");
    for f in [&tar_fifo, &blob_fifo] {
        let _ = fs::remove_file(f);
        mknod(f, libc::S_IFIFO | 0o600, 0, 0);
    }
    let (tar_src, to) = (tar.to_path_buf(), tar_fifo.clone());
    // Errors are the build's to report: a writer cut off when the build fails is fine.
    let feeder = std::thread::spawn(move || {
        if let (Ok(mut from), Ok(mut into)) = (
            File::open(&tar_src),
            OpenOptions::new().write(true).open(&to),
        ) {
            let _ = std::io::copy(&mut from, &mut into);
        }
        Vec::new()
    });
    let from = blob_fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Ok(mut f) = File::open(&from) {
            let _ = f.read_to_end(&mut out);
        }
        out
    });
    let args: Vec<&str> = args
        .iter()
        .map(|a| match *a {
            "TAR_FIFO" => tar_fifo.to_str().unwrap(),
            "BLOB_FIFO" => blob_fifo.to_str().unwrap(),
            other => other,
        })
        .collect();
    let mut child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nydus-image");
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin);
    drop(input);
    let output = child.wait_with_output().unwrap();
    // A build that failed before opening a FIFO leaves its thread waiting in open():
    // open the other end to let it go.
    finish(feeder, &tar_fifo, libc::O_RDONLY);
    let blob = finish(reader, &blob_fifo, libc::O_WRONLY);
    FifoRun { output, blob }
}

/// Joins `thread`, opening `fifo` (non-blocking, `mode`) meanwhile so that a thread still
/// waiting to open it gets its partner; what is written then is drained.
fn finish(thread: JoinHandle<Vec<u8>>, fifo: &Path, mode: i32) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "a FIFO thread hangs");
        let end = OpenOptions::new()
            .read(mode == libc::O_RDONLY)
            .write(mode == libc::O_WRONLY)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo);
        if let (Ok(mut f), true) = (end, mode == libc::O_RDONLY) {
            let mut sink = [0u8; 65536];
            while !thread.is_finished() {
                match f.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    thread.join().unwrap()
}
