//! The reference eStargz writer: the containerd stargz library (Debian's
//! golang-github-containerd-stargz-snapshotter-dev) driven by `tests/estargz/main.go`,
//! built once per test run with Debian's Go (GOPATH at Debian's Go sources,
//! GO111MODULE=off). `mkestargz IN.tar OUT.stargz TOC.json [CHUNK_SIZE]` converts a tar
//! and prints the layer's sha256.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The converter, built once per test run.
pub fn mkestargz() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mkestargz");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/estargz");
        let o = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .env("GOPATH", "/usr/share/gocode")
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("GOCACHE", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gocache"))
            .output()
            .expect(
                "run `go` (packages golang-go and golang-github-containerd-stargz-snapshotter-dev; scripts/setup installs them)",
            );
        assert!(
            o.status.success(),
            "building tests/estargz failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}
