//! Running our binary with UTF-8 arguments.

use std::path::Path;
use std::process::{Command, Output};

use super::ours::our_bin;

/// Runs our binary with these arguments.
pub fn run(args: &[&str]) -> Output {
    Command::new(our_bin())
        .args(args)
        .output()
        .expect("run nydus-image")
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
