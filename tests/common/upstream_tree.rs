//! The sample tree less what upstream 2.2.0's tar reader gets wrong, for tests that build
//! the same tar with upstream (needs `attrs`, `privileged`, `sample`).

use std::fs;
use std::path::Path;

use super::attrs::{set_mtime, whole_second_mtimes};
use super::privileged::lchown;
use super::sample::{make_tree, TreeSpec};

/// The tree with every entry kind less what upstream 2.2.0's tar reader (tar-rs 0.4.38)
/// gets wrong, for tests that build the same tar with upstream. No ACLs (upstream's xattr
/// check refuses them); no big random xattr values (it splits PAX records at newlines,
/// so a value holding 0x0a fails its build, "malformed pax extension"); no hard link to a
/// symlink (it becomes a file whose chunk index is the target's bytes, which its own
/// `check` refuses); no gid of 2^21 or more and no negative mtime (GNU tar puts them in PAX
/// records, which it reads as 0); whole-second mtimes (it drops nanoseconds).
pub fn upstream_tar_safe_tree(root: &Path) {
    make_tree(
        root,
        &TreeSpec {
            acls: false,
            sparse_size: 5_000_000,
            big_dir_entries: 300,
            depth: 20,
            big_xattrs: false,
            ..TreeSpec::default()
        },
    );
    fs::remove_file(root.join("hardlink-to-symlink")).unwrap();
    lchown(&root.join("big-owner"), 100_000, 2_000_000);
    set_mtime(&root.join("cs-1"), 86_400, 0);
    whole_second_mtimes(root);
}
