//! Our `nydus-image` binary.

use std::path::PathBuf;

/// Path of our built binary.
pub fn our_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nydus-image"))
}
