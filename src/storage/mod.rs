//! Where blob data comes from, and the codecs applied to it.

pub mod backend;
pub mod blobs;
pub mod cache;
pub mod compress;
pub mod remote;

/// Asks the kernel to start reading `[offset, offset + len)` of `file` into the page
/// cache in the background (`len` 0: to the end). Only a hint: failures are ignored.
pub(crate) fn will_need(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: a valid descriptor; the call only schedules readahead.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED);
    }
}
