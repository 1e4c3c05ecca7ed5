//! File contents for test trees.

use std::fs;
use std::path::Path;

/// Deterministic pseudo-random bytes, every other 8 KiB of them compressible text.
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

/// Writes `contents` to `path`, naming the path if that fails.
pub fn write_file(path: &Path, contents: &[u8]) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
