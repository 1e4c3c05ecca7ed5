//! The persistent chunk cache of remote blobs (`mount --cache-dir DIR`): what a mount
//! fetched stays on disk, so a later mount (or another one running at the same time)
//! reads it from there instead of the network.
//!
//! Layout, per blob, in DIR:
//! - `<blob_id>.data`: the blob's stored bytes at their blob offsets, a sparse file of
//!   the blob's size (only fetched stretches take space);
//! - `<blob_id>.raw`: chunks a reader needed, decompressed, at their offsets in the
//!   blob's uncompressed address space (sparse too), so that a later mount serves a read
//!   of part of a chunk by reading that part alone: no whole chunk read, checked and
//!   decompressed for a 4 KiB page fault;
//! - `<blob_id>.map`: a 40-byte header (magic `NYDUSCM1`, version u32, chunk count u32,
//!   blob size u64, a hash of the blob's id and size u64, blocks per chunk u32, zero
//!   u32), then one little-endian u32 per chunk by chunk index: 0 = not in the cache, else
//!   the CRC32 of the chunk's stored bytes (`max(crc, 1)`); then, per chunk by index,
//!   "blocks per chunk" u32s: the same for each 16 KiB block of the decompressed chunk
//!   in the raw file (the blocks a chunk does not have stay 0).
//!
//! Crash safety: bytes are written to the data or raw file and `fdatasync`ed before
//! their map entries are written, so an entry never names bytes that are not durable.
//! Every read from the cache checks the CRCs of what it reads: a torn or corrupted file
//! (flipped bytes, a truncated file) is detected, reported once per blob, its entries
//! cleared and the chunk fetched (or decompressed) again; it is never served.
//!
//! Sharing: map entries are aligned 4-byte `pwrite`s, so processes sharing a blob's
//! cache never clobber each other's entries (at worst one is lost, costing a refetch).
//! Each process holds `flock(LOCK_SH)` on the maps it uses; the header is created or
//! reset only under `LOCK_EX`, and eviction only takes blobs whose map it can lock
//! exclusively without waiting, that is blobs no process is using.
//!
//! Faults of the cache itself (a directory that cannot be created or written, a full
//! disk, the size limit reached with nothing left to evict) never fail a read: the mount
//! keeps reading from the network, and says so once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Magic at the start of a map file.
const MAGIC: &[u8; 8] = b"NYDUSCM1";
/// Version of the map layout.
const VERSION: u32 = 2;
/// Bytes of the map header.
const HEADER_BYTES: u64 = 40;
/// Bytes of a block of the raw file that one CRC covers: a read of part of a chunk
/// reads and checks the blocks it touches.
pub const RAW_BLOCK: u64 = 16 << 10;
/// Raw blocks per chunk, at most (16 MiB chunks).
const MAX_BLOCKS_PER_CHUNK: u32 = 1024;

/// Raw blocks a chunk of the blob may have, by the blob's chunk size: every image sharing
/// the blob states the same chunk size, so sizes the map alike.
pub fn blocks_per_chunk(chunk_size: u32) -> u32 {
    (chunk_size as u64)
        .div_ceil(RAW_BLOCK)
        .clamp(1, MAX_BLOCKS_PER_CHUNK as u64) as u32
}

/// Where the cache lives and how large it may grow.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// The cache directory (created if missing).
    pub dir: PathBuf,
    /// Bytes the data files may take on disk together; `None`: no limit.
    pub limit_bytes: Option<u64>,
}

/// A cache directory shared by the blobs of one or more images.
#[derive(Debug)]
pub struct CacheDir {
    dir: PathBuf,
    limit_bytes: Option<u64>,
    /// Bytes the data files take on disk, as far as this process knows.
    used_bytes: AtomicU64,
    /// Bytes reserved since `used_bytes` was last read from the directory: other mounts
    /// sharing it store too, and a count of one's own stores alone would let each of
    /// them fill it to the limit.
    unsynced: AtomicU64,
    /// Set once writing is hopeless (unwritable directory, full disk).
    disabled: AtomicBool,
    /// Whether the one warning about the cache was given.
    warned: AtomicBool,
    /// Serialises eviction in this process.
    evicting: Mutex<()>,
}

impl CacheDir {
    /// Opens (creating) the directory. A directory that cannot be used gives a cache that
    /// stores nothing, with one warning: reads go to the network.
    pub fn open(options: &CacheOptions) -> Arc<Self> {
        let cache = CacheDir {
            dir: options.dir.clone(),
            limit_bytes: options.limit_bytes,
            used_bytes: AtomicU64::new(0),
            unsynced: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            evicting: Mutex::new(()),
        };
        if let Err(e) = std::fs::create_dir_all(&cache.dir) {
            cache.give_up(format!("cannot create it: {e}"));
        } else if let Some(n) = cache.data_bytes() {
            cache.used_bytes.store(n, Ordering::Relaxed);
        }
        Arc::new(cache)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the cache stores nothing more (and why was said once).
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Stops storing, with the one warning.
    fn give_up(&self, why: String) {
        self.disabled.store(true, Ordering::Relaxed);
        self.warn_once(format!("{why}; reading from the network without caching"));
    }

    fn warn_once(&self, what: String) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            log::warn!("cache directory {}: {what}", self.dir.display());
        }
    }

    /// Bytes all data and raw files in the directory take on disk.
    fn data_bytes(&self) -> Option<u64> {
        let entries = std::fs::read_dir(&self.dir).ok()?;
        let mut total = 0u64;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".data") || name.ends_with(".raw") {
                if let Ok(m) = e.metadata() {
                    total = total.saturating_add(m.blocks().saturating_mul(512));
                }
            }
        }
        Some(total)
    }

    /// The cache of one blob with chunks at `extents` (stored offset and size, by chunk
    /// index) and chunks of at most `chunk_size` bytes (the blob's, as its blob table
    /// entry states it), or `None` when the directory cannot hold it (said once).
    pub fn blob(
        self: &Arc<Self>,
        blob_id: &str,
        blob_size: u64,
        extents: &[(u64, u32)],
        chunk_size: u32,
    ) -> Option<BlobCache> {
        if self.is_disabled() {
            return None;
        }
        match BlobCache::open(self.clone(), blob_id, blob_size, extents, chunk_size) {
            Ok(c) => Some(c),
            Err(e @ CacheError::Busy { .. }) => {
                // Only this blob: others may still be cached.
                log::warn!("{e}: blob {blob_id} is read from the network without caching");
                None
            }
            Err(e) => {
                self.give_up(format!("cannot use the cache of blob {blob_id}: {e}"));
                None
            }
        }
    }

    /// Reserves `bytes` more under the size limit, evicting unused blobs (least recently
    /// used first) when needed. False: no room (said once).
    fn reserve(&self, bytes: u64) -> bool {
        let Some(limit) = self.limit_bytes else {
            self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
            return true;
        };
        // Every sixteenth of the limit (at most 16 MiB) stored, the directory is measured
        // again: what mounts sharing it stored counts too, and each overshoots the limit
        // by at most that much.
        let step = (limit / 16).min(16 << 20);
        if self.unsynced.fetch_add(bytes, Ordering::Relaxed) + bytes > step {
            self.unsynced.store(0, Ordering::Relaxed);
            if let Some(n) = self.data_bytes() {
                self.used_bytes.store(n, Ordering::Relaxed);
            }
        }
        if self.used_bytes.load(Ordering::Relaxed) + bytes > limit {
            let _guard = self.evicting.lock().expect("eviction lock");
            if self.used_bytes.load(Ordering::Relaxed) + bytes > limit {
                self.evict(limit.saturating_sub(bytes));
            }
            if self.used_bytes.load(Ordering::Relaxed) + bytes > limit {
                self.warn_once(format!(
                    "full ({} of {limit} bytes, the rest in use): chunks that do not fit are read from the network",
                    self.used_bytes.load(Ordering::Relaxed)
                ));
                return false;
            }
        }
        self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    /// Deletes unused blobs, least recently used first, until the data files take at
    /// most `target` bytes (or nothing unused is left).
    fn evict(&self, target: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut maps: Vec<(i64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".map"))
            .filter_map(|e| Some((e.metadata().ok()?.mtime(), e.path())))
            .collect();
        maps.sort();
        for (_, map_path) in maps {
            if self.used_bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            let Ok(map) = File::open(&map_path) else {
                continue;
            };
            // In use by a mount (this one included): not a candidate.
            if !try_flock(&map, libc::LOCK_EX | libc::LOCK_NB) {
                continue;
            }
            let data_path = map_path.with_extension("data");
            let raw_path = map_path.with_extension("raw");
            let freed = [&data_path, &raw_path]
                .iter()
                .map(|p| std::fs::metadata(p).map_or(0, |m| m.blocks() * 512))
                .sum::<u64>();
            // The map goes first: data without a map is just unused space.
            if std::fs::remove_file(&map_path).is_ok() {
                let _ = std::fs::remove_file(&data_path);
                let _ = std::fs::remove_file(&raw_path);
                log::info!(
                    "cache directory {}: evicted {} and its raw file ({freed} bytes)",
                    self.dir.display(),
                    data_path.display()
                );
                let used = self.used_bytes.load(Ordering::Relaxed);
                self.used_bytes
                    .store(used.saturating_sub(freed), Ordering::Relaxed);
            }
        }
    }
}

fn try_flock(file: &File, op: libc::c_int) -> bool {
    // SAFETY: a valid descriptor; flock only changes the lock on its open file.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

/// Why a blob's cache files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file could not be opened, read or written.
    #[error("{}: {what}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The map does not match the blob (damaged, or another chunk count) and other
    /// processes use it, so it cannot be started afresh.
    #[error("{}: does not match the blob, and is in use", path.display())]
    Busy {
        /// The map file.
        path: PathBuf,
    },
}

/// The cache files of one blob, open and locked shared.
#[derive(Debug)]
pub struct BlobCache {
    dir: Arc<CacheDir>,
    blob_id: String,
    data: File,
    data_path: PathBuf,
    raw: File,
    raw_path: PathBuf,
    map: File,
    /// Map entries as last read or written by this process.
    entries: Vec<AtomicU32>,
    /// Raw block entries per chunk in the map.
    blocks_per_chunk: u32,
    /// Whether a bad entry was reported for this blob.
    reported: AtomicBool,
}

/// A 64-bit FNV-1a hash of the blob's id and size: a map made for another blob is not
/// trusted. The chunk layout is left out on purpose: a chunk's place in a blob is the
/// blob's (images sharing the blob agree on it, though each may know only some chunks),
/// and every cached chunk is checked against its CRC anyway.
fn layout_hash(blob_id: &str, blob_size: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(blob_id.as_bytes());
    eat(&blob_size.to_le_bytes());
    h
}

/// How many chunks a blob's map has room for, given the chunk count its blob table entry
/// states and `known`, one past the highest chunk index an image uses of it: the table's
/// count where it is plausible (chunk indexes have 24 bits), so that every image sharing
/// the blob, knowing all or only some of its chunks, sizes the map alike and shares it.
pub fn map_len(table_count: u32, known: usize) -> usize {
    let stated = table_count as usize;
    if known > 0 && stated > known && stated <= 1 << 24 {
        stated
    } else {
        known
    }
}

/// The size of blob `blob_id` as its map in `dir` records it, if the map is there and
/// its header is intact.
pub fn cached_blob_size(dir: &Path, blob_id: &str) -> Option<u64> {
    let map = File::open(dir.join(format!("{blob_id}.map"))).ok()?;
    let mut header = [0u8; HEADER_BYTES as usize];
    map.read_exact_at(&mut header, 0).ok()?;
    let size = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let hash = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    // (The blocks per chunk are the blob's, not checked here: the map is not read.)
    (&header[..8] == MAGIC && version == VERSION && hash == layout_hash(blob_id, size))
        .then_some(size)
}

/// Map entries as read: little-endian u32s.
fn le_u32s(raw: &[u8]) -> impl Iterator<Item = u32> + '_ {
    raw.chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The CRC a map entry holds for `bytes` (never 0, which means "not cached").
pub fn entry_crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes).max(1)
}

impl BlobCache {
    fn open(
        dir: Arc<CacheDir>,
        blob_id: &str,
        blob_size: u64,
        extents: &[(u64, u32)],
        chunk_size: u32,
    ) -> Result<Self, CacheError> {
        let map_path = dir.dir.join(format!("{blob_id}.map"));
        let data_path = dir.dir.join(format!("{blob_id}.data"));
        let raw_path = dir.dir.join(format!("{blob_id}.raw"));
        let blocks_per_chunk = blocks_per_chunk(chunk_size);
        let io = |path: &Path, what: &'static str| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, what, source }
        };
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
        };
        let map = open(&map_path).map_err(io(&map_path, "cannot open"))?;
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(extents.len() as u32).to_le_bytes());
        header[16..24].copy_from_slice(&blob_size.to_le_bytes());
        header[24..32].copy_from_slice(&layout_hash(blob_id, blob_size).to_le_bytes());
        header[32..36].copy_from_slice(&blocks_per_chunk.to_le_bytes());
        let map_len = HEADER_BYTES + 4 * extents.len() as u64 * (1 + blocks_per_chunk as u64);
        let matches = |map: &File| {
            let mut found = [0u8; HEADER_BYTES as usize];
            map.read_exact_at(&mut found, 0).is_ok()
                && found == header
                && map.metadata().is_ok_and(|m| m.len() == map_len)
        };
        let exclusive = try_flock(&map, libc::LOCK_EX | libc::LOCK_NB);
        if !exclusive {
            // Others use it: wait for a shared lock (a creator holds its exclusive lock
            // only while it writes the header).
            try_flock(&map, libc::LOCK_SH);
        }
        if !matches(&map) {
            if !exclusive {
                return Err(CacheError::Busy { path: map_path });
            }
            let existed = map.metadata().is_ok_and(|m| m.len() > 0);
            if existed {
                log::warn!(
                    "cache of blob {blob_id} in {}: its map does not match the image (damaged or made for other chunks): starting it afresh",
                    dir.dir.display()
                );
            }
            map.set_len(0).map_err(io(&map_path, "cannot reset"))?;
            map.set_len(map_len).map_err(io(&map_path, "cannot size"))?;
            // Old bytes must not be taken for new chunks: the files start empty.
            for path in [&data_path, &raw_path] {
                let file = open(path).map_err(io(path, "cannot open"))?;
                file.set_len(0).map_err(io(path, "cannot reset"))?;
                file.sync_all().map_err(io(path, "cannot sync"))?;
            }
            map.write_all_at(&header, 0)
                .map_err(io(&map_path, "cannot write the header"))?;
            map.sync_all().map_err(io(&map_path, "cannot sync"))?;
        }
        if exclusive {
            try_flock(&map, libc::LOCK_SH);
        }
        let data = open(&data_path).map_err(io(&data_path, "cannot open"))?;
        if data
            .metadata()
            .map_err(io(&data_path, "cannot stat"))?
            .len()
            < blob_size
        {
            data.set_len(blob_size)
                .map_err(io(&data_path, "cannot size"))?;
        }
        let raw = open(&raw_path).map_err(io(&raw_path, "cannot open"))?;
        let mut stored = vec![0u8; 4 * extents.len()];
        map.read_exact_at(&mut stored, HEADER_BYTES)
            .map_err(io(&map_path, "cannot read"))?;
        let entries = le_u32s(&stored).map(AtomicU32::new).collect();
        // Recently used blobs are evicted last.
        let _ = map.set_modified(std::time::SystemTime::now());
        // The raw entries are read a few at a time, as reads come: have the kernel read
        // the map in now, while the mount starts, not one page per first read.
        super::will_need(&map, 0, 0);
        Ok(BlobCache {
            dir,
            blob_id: blob_id.to_string(),
            data,
            data_path,
            raw,
            raw_path,
            map,
            entries,
            blocks_per_chunk,
            reported: AtomicBool::new(false),
        })
    }

    /// Asks the kernel to read the raw file's stored stretches into the page cache, in
    /// offset order, at most `budget` bytes of them; returns the bytes asked for. Only
    /// schedules the reads (`POSIX_FADV_WILLNEED`): a later read of those chunks finds
    /// them in memory instead of waiting on the disk one block at a time.
    pub fn read_ahead_raw(&self, budget: u64) -> u64 {
        let fd = self.raw.as_raw_fd();
        let mut asked = 0;
        let mut at: libc::off_t = 0;
        while asked < budget {
            // The stored stretches of the sparse file, by `SEEK_DATA` and `SEEK_HOLE`.
            // SAFETY: a valid descriptor; lseek only moves its own file offset, which
            // nothing else uses (every other access is positioned).
            let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
            if start < 0 {
                break;
            }
            // SAFETY: as above.
            let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
            if end <= start {
                break;
            }
            let len = ((end - start) as u64).min(budget - asked);
            super::will_need(&self.raw, start as u64, len);
            asked += len;
            at = end;
        }
        asked
    }

    /// Whether chunk `index` is in the cache as far as this process last saw.
    pub fn known_ready(&self, index: u32) -> bool {
        self.entries
            .get(index as usize)
            .is_some_and(|e| e.load(Ordering::Relaxed) != 0)
    }

    /// Whether chunk `index` is in the cache, asking the map again if this process has
    /// not seen it set.
    pub fn ready(&self, index: u32) -> bool {
        self.entry(index) != 0
    }

    /// The entry of chunk `index`, read again from the map when this process has not
    /// seen it set (another process may have fetched it since).
    fn entry(&self, index: u32) -> u32 {
        let Some(slot) = self.entries.get(index as usize) else {
            return 0;
        };
        let seen = slot.load(Ordering::Relaxed);
        if seen != 0 {
            return seen;
        }
        let mut raw = [0u8; 4];
        if self
            .map
            .read_exact_at(&mut raw, HEADER_BYTES + 4 * index as u64)
            .is_err()
        {
            return 0;
        }
        let found = u32::from_le_bytes(raw);
        slot.store(found, Ordering::Relaxed);
        found
    }

    /// The stored bytes of chunk `index` at `offset`, `len` long, if cached and intact.
    /// A chunk whose bytes do not match their CRC is reported (once per blob), dropped
    /// from the map and not returned.
    pub fn read(&self, index: u32, offset: u64, len: u32) -> Option<Vec<u8>> {
        let want = self.entry(index);
        if want == 0 {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        let found = match self.data.read_exact_at(&mut buf, offset) {
            Ok(()) => entry_crc(&buf),
            Err(_) => 0,
        };
        if found == want {
            return Some(buf);
        }
        if !self.reported.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cache of blob {} ({}): chunk {index} at 0x{offset:x}+0x{len:x} does not match its checksum (torn or damaged cache file): fetching it again",
                self.blob_id,
                self.data_path.display()
            );
        }
        self.set_entry(index, 0);
        None
    }

    fn set_entry(&self, index: u32, value: u32) {
        if let Some(slot) = self.entries.get(index as usize) {
            slot.store(value, Ordering::Relaxed);
        }
        // Best effort: a lost entry only costs a refetch.
        let _ = self
            .map
            .write_all_at(&value.to_le_bytes(), HEADER_BYTES + 4 * index as u64);
    }

    /// Stores a fetched range: `bytes` as read from blob offset `start`, and marks the
    /// chunks `(index, offset, len)` (all inside it) ready once the bytes are durable.
    /// Failures stop the caching, said once; nothing is marked that was not written.
    pub fn store(&self, start: u64, bytes: &[u8], chunks: &[(u32, u64, u32)]) {
        if chunks.is_empty() || self.dir.is_disabled() || !self.dir.reserve(bytes.len() as u64) {
            return;
        }
        let written = self
            .data
            .write_all_at(bytes, start)
            .and_then(|()| self.data.sync_data());
        if let Err(e) = written {
            self.dir.give_up(format!(
                "cannot write {} bytes at 0x{start:x} to {}: {e}",
                bytes.len(),
                self.data_path.display()
            ));
            return;
        }
        for &(index, offset, len) in chunks {
            let at = (offset - start) as usize;
            self.set_entry(index, entry_crc(&bytes[at..at + len as usize]));
        }
    }
}

impl BlobCache {
    /// Where chunk `index`'s raw block entries start in the map.
    fn raw_entries_at(&self, index: u32) -> u64 {
        HEADER_BYTES
            + 4 * self.entries.len() as u64
            + 4 * self.blocks_per_chunk as u64 * index as u64
    }

    /// Whether a chunk of `len` decompressed bytes at index `index` has a place in the
    /// raw file's map.
    fn raw_fits(&self, index: u32, len: u32) -> bool {
        (index as usize) < self.entries.len()
            && len > 0
            && len as u64 <= self.blocks_per_chunk as u64 * RAW_BLOCK
    }

    /// Bytes `range` of chunk `index` decompressed (`len` bytes, at `offset` in the raw
    /// file), if its raw blocks covering the range are cached and intact: a buffer of
    /// those blocks and where the range starts in it. Blocks that do not match their CRC
    /// are reported (once per blob), the chunk's raw entries cleared, nothing returned.
    pub fn read_raw(
        &self,
        index: u32,
        offset: u64,
        len: u32,
        range: std::ops::Range<usize>,
    ) -> Option<(Vec<u8>, usize)> {
        if !self.raw_fits(index, len) || range.start >= range.end || range.end > len as usize {
            return None;
        }
        let first = range.start / RAW_BLOCK as usize;
        let last = (range.end - 1) / RAW_BLOCK as usize;
        let mut raw = vec![0u8; 4 * (last - first + 1)];
        self.map
            .read_exact_at(&mut raw, self.raw_entries_at(index) + 4 * first as u64)
            .ok()?;
        let want: Vec<u32> = le_u32s(&raw).collect();
        if want.contains(&0) {
            return None;
        }
        let start = first * RAW_BLOCK as usize;
        let end = ((last + 1) * RAW_BLOCK as usize).min(len as usize);
        let mut buf = vec![0u8; end - start];
        let intact = self
            .raw
            .read_exact_at(&mut buf, offset + start as u64)
            .is_ok()
            && buf
                .chunks(RAW_BLOCK as usize)
                .zip(&want)
                .all(|(block, &crc)| entry_crc(block) == crc);
        if intact {
            return Some((buf, range.start - start));
        }
        if !self.reported.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cache of blob {} ({}): chunk {index} at 0x{offset:x}+0x{len:x} does not match its checksums (torn or damaged cache file): decompressing it again",
                self.blob_id,
                self.raw_path.display()
            );
        }
        let zeros = vec![0u8; 4 * self.blocks_per_chunk as usize];
        let _ = self.map.write_all_at(&zeros, self.raw_entries_at(index));
        None
    }

    /// Whether chunk `index`'s first raw block is cached, as the map says now.
    pub fn raw_ready(&self, index: u32) -> bool {
        let mut raw = [0u8; 4];
        (index as usize) < self.entries.len()
            && self
                .map
                .read_exact_at(&mut raw, self.raw_entries_at(index))
                .is_ok()
            && raw != [0; 4]
    }

    /// Stores decompressed chunks `(index, offset in the raw file, bytes)` and marks
    /// their blocks ready once the bytes are durable (one `fdatasync` for them all).
    /// Chunks without a place in the map are skipped; failures stop the caching, said
    /// once; nothing is marked that was not written.
    pub fn store_raw(&self, chunks: &[(u32, u64, &[u8])]) {
        let chunks: Vec<_> = chunks
            .iter()
            .filter(|(index, _, bytes)| {
                u32::try_from(bytes.len()).is_ok_and(|len| self.raw_fits(*index, len))
            })
            .collect();
        let total: u64 = chunks.iter().map(|c| c.2.len() as u64).sum();
        if chunks.is_empty() || self.dir.is_disabled() || !self.dir.reserve(total) {
            return;
        }
        let written = chunks
            .iter()
            .try_for_each(|(_, offset, bytes)| self.raw.write_all_at(bytes, *offset))
            .and_then(|()| self.raw.sync_data());
        if let Err(e) = written {
            self.dir.give_up(format!(
                "cannot write {total} bytes of decompressed chunks to {}: {e}",
                self.raw_path.display()
            ));
            return;
        }
        for (index, _, bytes) in chunks {
            let mut entries = vec![0u8; 4 * self.blocks_per_chunk as usize];
            for (slot, block) in entries
                .chunks_exact_mut(4)
                .zip(bytes.chunks(RAW_BLOCK as usize))
            {
                slot.copy_from_slice(&entry_crc(block).to_le_bytes());
            }
            // Best effort: a lost entry only costs a decompression.
            let _ = self.map.write_all_at(&entries, self.raw_entries_at(*index));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extents() -> Vec<(u64, u32)> {
        vec![(0, 100), (100, 50), (150, 200)]
    }

    #[test]
    fn stores_survive_reopen_and_damage_is_refetched() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            dir: tmp.path().join("c"),
            limit_bytes: None,
        };
        let blob: Vec<u8> = (0..350u32).map(|i| (i * 7) as u8).collect();
        {
            let dir = CacheDir::open(&opts);
            let c = dir.blob("b1", 350, &extents(), 1 << 20).unwrap();
            assert!(c.read(0, 0, 100).is_none());
            c.store(0, &blob[..150], &[(0, 0, 100), (1, 100, 50)]);
            assert_eq!(c.read(1, 100, 50).unwrap(), &blob[100..150]);
        }
        let dir = CacheDir::open(&opts);
        assert_eq!(cached_blob_size(&opts.dir, "b1"), Some(350));
        assert_eq!(cached_blob_size(&opts.dir, "b2"), None);
        let c = dir.blob("b1", 350, &extents(), 1 << 20).unwrap();
        assert_eq!(c.read(0, 0, 100).unwrap(), &blob[..100]);
        assert!(c.read(2, 150, 200).is_none());
        // Flip a byte of chunk 0 behind the cache's back: detected, dropped.
        let data = tmp.path().join("c/b1.data");
        let f = OpenOptions::new().write(true).open(&data).unwrap();
        f.write_all_at(&[blob[5] ^ 0xff], 5).unwrap();
        let c2 = CacheDir::open(&opts).blob("b1", 350, &extents(), 1 << 20);
        drop(c);
        let c2 = c2.unwrap();
        assert!(c2.read(0, 0, 100).is_none(), "a damaged chunk was served");
        assert!(c2.read(0, 0, 100).is_none());
        assert_eq!(c2.read(1, 100, 50).unwrap(), &blob[100..150]);
        // Another chunk count for the same blob id: starts afresh.
        drop(c2);
        let c3 = dir.blob("b1", 350, &[(0, 350)], 1 << 20).unwrap();
        assert!(c3.read(0, 0, 350).is_none());
        // ... unless in use: then that blob goes uncached, the directory stays usable.
        assert!(dir.blob("b1", 350, &extents(), 1 << 20).is_none());
        assert!(!dir.is_disabled());
    }

    /// Decompressed chunks: a part is read alone, survives a reopen, and a damaged
    /// block is detected, cleared, never served; a chunk too large for the map's blocks
    /// is not stored.
    #[test]
    fn raw_parts_are_read_alone_and_damage_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            dir: tmp.path().to_path_buf(),
            limit_bytes: None,
        };
        let block = RAW_BLOCK as usize;
        let chunk: Vec<u8> = (0..3 * block + 100).map(|i| (i % 253) as u8).collect();
        let len = chunk.len() as u32;
        let extents = [(0u64, 10u32), (10, 10)];
        {
            let dir = CacheDir::open(&opts);
            let c = dir.blob("r", 20, &extents, 4 * RAW_BLOCK as u32).unwrap();
            assert!(!c.raw_ready(1));
            assert!(c.read_raw(1, 4096, len, 0..10).is_none());
            c.store_raw(&[(1, 4096, &chunk), (0, 0, &vec![1u8; 5 * block])]);
            assert!(
                c.raw_ready(1) && !c.raw_ready(0),
                "too large a chunk stored"
            );
        }
        let dir = CacheDir::open(&opts);
        let c = dir.blob("r", 20, &extents, 4 * RAW_BLOCK as u32).unwrap();
        // A range across blocks 1 and 2: those two blocks are read, nothing else.
        let range = block + 5..2 * block + 7;
        let (buf, at) = c.read_raw(1, 4096, len, range.clone()).unwrap();
        assert_eq!(buf.len(), 2 * block);
        assert_eq!(&buf[at..at + range.len()], &chunk[range]);
        // The short last block.
        let (buf, at) = c
            .read_raw(1, 4096, len, 3 * block..3 * block + 100)
            .unwrap();
        assert_eq!(&buf[at..], &chunk[3 * block..]);
        // A flipped byte in block 2: block 0 still reads until the damage is seen, then
        // the whole chunk is dropped.
        let raw = OpenOptions::new()
            .write(true)
            .open(tmp.path().join("r.raw"))
            .unwrap();
        raw.write_all_at(&[chunk[2 * block] ^ 1], 4096 + 2 * block as u64)
            .unwrap();
        assert!(c.read_raw(1, 4096, len, 0..10).is_some());
        assert!(c.read_raw(1, 4096, len, 2 * block..2 * block + 1).is_none());
        assert!(!c.raw_ready(1));
        assert!(c.read_raw(1, 4096, len, 0..10).is_none());
        // Stored again: served again.
        c.store_raw(&[(1, 4096, &chunk)]);
        let (buf, at) = c.read_raw(1, 4096, len, 2 * block..2 * block + 1).unwrap();
        assert_eq!(buf[at], chunk[2 * block]);
        // Eviction accounts for the raw file and removes it.
        drop(c);
        assert!(dir.data_bytes().unwrap() >= chunk.len() as u64);
        dir.evict(0);
        assert!(!tmp.path().join("r.raw").exists());
    }

    #[test]
    fn read_ahead_covers_the_stored_raw_stretches_within_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            dir: tmp.path().to_path_buf(),
            limit_bytes: None,
        };
        let dir = CacheDir::open(&opts);
        let c = dir
            .blob("w", 20, &[(0, 10), (10, 10)], 4 * RAW_BLOCK as u32)
            .unwrap();
        assert_eq!(c.read_ahead_raw(u64::MAX), 0, "nothing stored yet");
        let a = vec![3u8; 3 * RAW_BLOCK as usize + 100];
        let b = vec![5u8; RAW_BLOCK as usize];
        let far = 64 << 20;
        c.store_raw(&[(0, 0, &a), (1, far, &b)]);
        // Both stretches, not the hole between them (file systems store whole blocks:
        // up to 64 KiB more per stretch).
        let stored = (a.len() + b.len()) as u64;
        let all = c.read_ahead_raw(u64::MAX);
        assert!(all >= stored && all <= stored + (128 << 10), "{all}");
        assert_eq!(c.read_ahead_raw(1000), 1000);
        let first = c.read_ahead_raw(all - 10);
        assert_eq!(first, all - 10, "the budget ends inside the second stretch");
    }

    #[test]
    fn limit_evicts_unused_blobs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            dir: tmp.path().to_path_buf(),
            limit_bytes: Some(3 * 4096),
        };
        let dir = CacheDir::open(&opts);
        let page = vec![1u8; 4096];
        let a = dir
            .blob("a", 8192, &[(0, 4096), (4096, 4096)], 1 << 20)
            .unwrap();
        a.store(0, &page, &[(0, 0, 4096)]);
        a.store(4096, &page, &[(1, 4096, 4096)]);
        drop(a);
        let b = dir
            .blob("b", 8192, &[(0, 4096), (4096, 4096)], 1 << 20)
            .unwrap();
        b.store(0, &page, &[(0, 0, 4096)]);
        b.store(4096, &page, &[(1, 4096, 4096)]);
        assert!(
            !tmp.path().join("a.map").exists(),
            "unused blob a not evicted"
        );
        assert!(b.read(1, 4096, 4096).is_some());
        // b is in use: a third blob finds no room beyond the limit.
        let c = dir
            .blob("c", 8192, &[(0, 4096), (4096, 4096)], 1 << 20)
            .unwrap();
        c.store(0, &page, &[(0, 0, 4096)]);
        c.store(4096, &page, &[(1, 4096, 4096)]);
        assert!(b.read(0, 0, 4096).is_some());
        assert!(c.read(1, 4096, 4096).is_none(), "stored past the limit");
    }

    /// Two `CacheDir`s over one directory stand for two mounts sharing it: each learns
    /// from the directory what the other stored, and together they stay within the limit
    /// (give or take a sixteenth of it each). Both blobs are in use, so nothing can be
    /// evicted: stores beyond the limit are refused.
    #[test]
    fn the_limit_holds_for_mounts_sharing_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let limit = 32 * 4096u64;
        let opts = CacheOptions {
            dir: tmp.path().to_path_buf(),
            limit_bytes: Some(limit),
        };
        let page = vec![3u8; 4096];
        let extents: Vec<(u64, u32)> = (0..32).map(|i| (i * 4096, 4096)).collect();
        let (one, two) = (CacheDir::open(&opts), CacheDir::open(&opts));
        let a = one.blob("a", 32 * 4096, &extents, 1 << 20).unwrap();
        let b = two.blob("b", 32 * 4096, &extents, 1 << 20).unwrap();
        for i in 0..32u32 {
            let at = i as u64 * 4096;
            a.store(at, &page, &[(i, at, 4096)]);
            b.store(at, &page, &[(i, at, 4096)]);
        }
        let on_disk = one.data_bytes().unwrap();
        let slack = 2 * (limit / 16 + 4096);
        assert!(
            on_disk <= limit + slack,
            "{on_disk} bytes on disk, limit {limit}"
        );
        let cached = |c: &BlobCache| {
            (0..32u32)
                .filter(|&i| c.read(i, i as u64 * 4096, 4096).is_some())
                .count()
        };
        assert!(cached(&a) >= 8 && cached(&b) >= 8, "both mounts cache some");
    }
}
