//! Allocator tuning for the two long-running shapes of work: a build and a mount. Both
//! change process-wide glibc settings, so the library never calls them itself: the
//! program that owns the process does (the CLI), before its threads start.

/// Settings for a build with chunks of `chunk_size` bytes.
///
/// One heap for all threads: chunk buffers are allocated by the workers and freed by the
/// writer, and with a heap per thread each heap kept its own high-water mark (the Debian
/// rootfs: 24 MB instead of 29-30). Chunk buffers come from that heap and stay there when
/// freed, for the next chunk: with glibc's adaptive thresholds the heap's top went back to
/// the kernel and was faulted in again, over 100,000 page faults on a 4 GiB file and a
/// fifth of its build time in the kernel (now 2,500).
pub fn tune_for_build(chunk_size: u32) {
    #[cfg(target_env = "gnu")]
    {
        let keep = (4 * i64::from(chunk_size)).clamp(1 << 20, 32 << 20) as libc::c_int;
        // SAFETY: mallopt only changes allocator tuning.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, keep);
            libc::mallopt(libc::M_TRIM_THRESHOLD, keep);
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = chunk_size;
}

/// Settings for a mount serving requests on several threads.
///
/// Buffers of 128 KiB and more (chunks, windows, replies) come from mmap and go back to
/// the kernel when freed, so a long-running mount's memory follows what it holds rather
/// than the high-water mark of every serving thread's heap. The serving threads share one
/// heap per core instead of one each (glibc's default allows 8 per core): 2-4 MB less on
/// a full read of the Linux tree.
pub fn tune_for_serving() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
    }
}

/// Gives the heap's free memory back to the kernel. The build calls it once the chunker
/// is done: its buffers and its workers' zstd contexts are free then, but glibc keeps free
/// memory below the trim threshold ([`tune_for_build`]) and in the middle of the heap; on
/// one 4 GiB file the peak came after the chunker, from what was built next on top of it.
pub fn release_free() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
