//! Tree comparisons for the tests, all made by the `nydus-verify` crate: the engine that
//! `nydus-image verify` and `create --verify` use, which shares no code with the builder.
//! A source directory is an `FsTree`, an image read by the library an
//! `nydus_image::mount::ImageTree`, a mount an `FsTree` of its mount point, a layer
//! stack an `OverlayTree`.

use nydus_verify::{compare, compare_metadata, Difference, Options, Report, Tree};

/// Differences listed in a failure message at most.
const SHOWN: usize = 50;

/// Asserts that `image` shows `source` exactly: type, permission bits, owner, size,
/// mtime to the nanosecond, device number, symlink target, hard-link groups and link
/// counts, every xattr, and every byte of every regular file. A failure lists the
/// differences.
// tests/stargz.rs and tests/upstream.rs compare only with exceptions.
#[allow(dead_code)]
pub fn assert_identical(what: &str, source: &dyn Tree, image: &dyn Tree) -> Report {
    assert_identical_except(what, source, image, Except::default())
}

/// What a comparison may leave out; by default nothing.
#[derive(Default)]
pub struct Except<'a> {
    /// File contents are not compared: the image side shows metadata it cannot serve
    /// the data of (a kernel EROFS mount of the bootstrap alone, nydusd on an eStargz
    /// blob).
    pub content: bool,
    /// Differences accepted; the caller documents each.
    pub differences: Option<&'a dyn Fn(&Difference) -> bool>,
}

/// [`assert_identical`], leaving out what `except` names.
pub fn assert_identical_except(
    what: &str,
    source: &dyn Tree,
    image: &dyn Tree,
    except: Except,
) -> Report {
    let result = if except.content {
        compare_metadata(source, image, Options::default())
    } else {
        compare(source, image)
    };
    let mut report = result.unwrap_or_else(|e| panic!("{what}: cannot compare: {e}"));
    if let Some(accepted) = except.differences {
        report.differences.retain(|d| !accepted(d));
    }
    if !report.identical() {
        let n = report.differences.len();
        let shown: Vec<String> = report
            .differences
            .iter()
            .take(SHOWN)
            .map(|d| format!("  {d}"))
            .collect();
        let more = if n > SHOWN {
            format!("\n  ... and {} more", n - SHOWN)
        } else {
            String::new()
        };
        panic!(
            "{what}: {n} difference(s) in {} entries:\n{}{more}",
            report.entries_compared,
            shown.join("\n")
        );
    }
    report
}
