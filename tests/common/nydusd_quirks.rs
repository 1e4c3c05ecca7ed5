//! Where upstream nydusd 2.2.0 shows an image other than it is, for comparisons to
//! accept exactly that.

use nydus_verify::{parse_mtime, Difference};

/// Whether `d` is nydusd showing its mount time for an mtime of exactly 0 seconds
/// (nydus-rafs 0.2.2 `fs.rs`: "older rafs image doesn't include mtime"): an mtime
/// difference whose source side is 0 seconds, whatever the nanoseconds. Our images store
/// the 0 (the library round trip checks it).
pub fn nydusd_mount_time(d: &Difference) -> bool {
    d.attribute == "mtime" && parse_mtime(&d.source).is_some_and(|(secs, _)| secs == 0)
}
