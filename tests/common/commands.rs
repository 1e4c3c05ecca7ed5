//! Running our binary with UTF-8 arguments, and any binary with input on stdin.
// Each test binary uses what it needs of this module.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::ours::our_bin;

/// Runs our binary with these arguments.
pub fn run(args: &[&str]) -> Output {
    Command::new(our_bin())
        .args(args)
        .output()
        .expect("run nydus-image")
}

/// Runs `bin` (ours or upstream's) with `args` and `input` on its standard input; the
/// caller judges the result.
pub fn run_with_stdin<I, S>(bin: &Path, args: I, input: &[u8]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    // A program that exits without reading its input closes the pipe: not our error.
    let _ = child.stdin.take().expect("piped").write_all(input);
    child.wait_with_output().expect("wait for the program")
}

/// `nydus-image create` of `src` into `boot` and the blob directory `blobs`, with
/// `extra` flags.
pub fn build(src: &Path, boot: &Path, blobs: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["create", "-l", "warn", "-B", s(boot), "-D", s(blobs)];
    args.extend_from_slice(extra);
    args.push(s(src));
    run(&args)
}

/// A UTF-8 path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
