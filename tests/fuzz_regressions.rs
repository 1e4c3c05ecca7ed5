//! Every input that ever crashed a fuzz target, replayed through the same code the target
//! runs (`fuzz/checks.rs`). Inputs live in `tests/fuzz-regressions/TARGET/NAME`, named
//! after what they found:
//! - `stargz_toc/rfc3339-multibyte-*`: a TOC `modtime` with a multi-byte character where
//!   a digit belongs panicked the RFC 3339 parser (it sliced inside the character).
//! - `stargz_toc/repeated-paths-*`: a TOC listing paths twice, with a hard link to a file
//!   that is listed again later: the link kept no data (a debug build failed an
//!   assertion, a release build wrote a file without chunks). A later entry now replaces
//!   an earlier one as tar extraction would, and the link keeps the old file.
//! - `build_tree/oci-whiteout-name-*`: the target generated a file named `.wh.*` in what
//!   it builds as a plain tree, and the default (OCI) whiteout spec rightly left it out;
//!   the target now builds with names taken literally.
//! - `read_image/v5-xattr-padding-overflow-*`: a RAFS v5 inode whose xattr area claims
//!   2^64 - 8 bytes overflowed rounding that size up to 8 (a debug-build panic); the
//!   rounding is checked now and the inode is refused by name.

#[allow(dead_code)]
#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every input saved for `target`; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} crashes again", path.display());
        n += 1;
    }
    n
}

#[test]
fn read_image_regressions() {
    assert!(replay("read_image", checks::read_image) >= 1);
}

#[test]
fn stargz_toc_regressions() {
    assert!(replay("stargz_toc", checks::stargz_toc) >= 4);
}

#[test]
fn tar_layer_on_fixed_streams() {
    // The tar target on a real archive and on every cut and single-byte damage of its
    // first blocks, so that the suite runs it even where cargo-fuzz does not.
    let mut tar = vec![0u8];
    let mut b = ::tar::Builder::new(Vec::new());
    let mut h = ::tar::Header::new_ustar();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "d/a", &b"hello"[..]).unwrap();
    tar.extend(b.into_inner().unwrap());
    checks::tar_layer(&tar);
    for cut in (0..tar.len()).step_by(97) {
        checks::tar_layer(&tar[..cut]);
    }
    for at in (1..1100.min(tar.len())).step_by(13) {
        let mut bad = tar.clone();
        bad[at] ^= 0x5a;
        checks::tar_layer(&bad);
    }
}

#[test]
fn build_tree_regressions() {
    assert!(replay("build_tree", checks::build_tree) >= 1);
}

#[test]
fn build_tree_on_fixed_descriptions() {
    // The builder target on 24 pseudo-random descriptions, so that the suite runs it
    // even where cargo-fuzz does not.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..24 {
        let len = 40 + round * 17;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        checks::build_tree(&data);
    }
}
