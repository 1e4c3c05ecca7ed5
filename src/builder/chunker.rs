//! Splits regular files into chunks and stores each distinct chunk once in the blob.
//!
//! Files are read depth first in name order, the order in which `tar`, `cp -r` and
//! `find` visit a tree, so that reading a mounted image that way reads its blob
//! sequentially.
//!
//! A pipeline bounded in memory: one thread reads files in that order, `threads` workers
//! hash and compress, and the calling thread puts results back in order, deduplicates by
//! digest and appends new chunks to the blob. Chunk data in flight is bounded in bytes
//! (`(threads + 1) x chunk_size`, a chunk counted at the size of the form it is held in),
//! so memory stays flat whatever the file or blob size, while small files still keep
//! every worker busy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use crossbeam_channel::bounded;

use super::blob::BlobWriter;
use super::tree::{Kind, NodeId, Tree};
use super::BuildError;
use crate::format::v6::tables::ChunkInfo;
use crate::format::{Compressor, Digester};
use crate::storage::compress;

/// Settings of the chunking stage.
#[derive(Clone, Copy, Debug)]
pub struct ChunkOptions {
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Chunk compressor.
    pub compressor: Compressor,
    /// Chunk digester.
    pub digester: Digester,
    /// Worker threads for hashing and compressing.
    pub threads: usize,
}

/// Where one chunk of a file ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkRef {
    /// This index in the new blob.
    New(u32),
    /// A chunk that already exists elsewhere (a chunk dictionary's blob).
    Known(ChunkInfo),
}

/// Finds an existing chunk by digest (a chunk dictionary), or nothing.
pub type KnownChunks<'a> = &'a (dyn Fn(&[u8; 32]) -> Option<ChunkInfo> + Sync);

/// What the chunker produced besides the blob bytes.
#[derive(Clone, Debug, Default)]
pub struct Chunked {
    /// For each node (by id), where each of its chunks is, in file order.
    /// Empty for everything but first names of regular files.
    pub file_chunks: Vec<Vec<ChunkRef>>,
    /// Chunks found among the known chunks instead of being stored again.
    pub known_chunks: u64,
    /// Uncompressed bytes of those chunks.
    pub known_bytes: u64,
    /// Chunks in all files, duplicates included.
    pub total_chunks: u64,
    /// Bytes of file data read.
    pub bytes_read: u64,
}

struct Job {
    seq: u64,
    node: NodeId,
    file_offset: u64,
    data: Vec<u8>,
}

struct Done {
    seq: u64,
    node: NodeId,
    file_offset: u64,
    digest: [u8; 32],
    /// Bytes of file data in the chunk.
    len: usize,
    /// Budget tokens the chunk still holds (returned once it is written).
    tokens: usize,
    body: Body,
}

/// A chunk's bytes as a worker hands them to the writer: only one form is kept, so a
/// compressed chunk does not also hold its raw data while it waits for its turn.
enum Body {
    /// Compressed.
    Packed(Vec<u8>),
    /// Raw, to be stored raw: compression did not make it smaller.
    Raw(Vec<u8>),
    /// Raw and not compressed: another copy of this chunk claimed the work (the writer
    /// compresses it itself if this copy turns out to be the one stored).
    Unpacked(Vec<u8>),
}

/// How far the chunker has come.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Regular files finished.
    pub files_done: u64,
    /// Regular files with data in the tree.
    pub files_total: u64,
    /// Bytes of file data processed.
    pub bytes_done: u64,
    /// Bytes of file data in the tree.
    pub bytes_total: u64,
}

/// Chunks every regular file of `tree` into `blob`. `progress` is told as files finish.
pub fn chunk_files<W: Write>(
    tree: &Tree,
    opts: ChunkOptions,
    blob: &mut BlobWriter<W>,
    known: KnownChunks,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Chunked, BuildError> {
    let mut state = Progress::default();
    for node in &tree.nodes {
        if needs_chunking(node) {
            state.files_total += 1;
            state.bytes_total += node.size;
        }
    }
    let threads = opts.threads.max(1);
    // The memory budget: chunk data in flight (read, not yet written) is at most
    // `threads + 1` chunks' worth of bytes, in tokens of TOKEN_BYTES: one for each worker
    // and one for the reader to fill meanwhile (with only `threads`, a raw chunk being
    // written stalled the reader and the 4 GiB file built no faster than upstream). Small
    // files have many chunks in flight at once, big ones few.
    let budget = ((threads as u64 + 1) * opts.chunk_size as u64).div_ceil(TOKEN_BYTES) as usize;
    let window = threads * 16;
    let (job_tx, job_rx) = bounded::<Job>(window);
    let (done_tx, done_rx) = bounded::<Done>(window);
    let (token_tx, token_rx) = bounded::<()>(budget);
    for _ in 0..budget {
        token_tx.send(()).expect("fresh channel has room");
    }
    let reader_error: Mutex<Option<BuildError>> = Mutex::new(None);
    let claimed: Mutex<HashSet<[u8; 32]>> = Mutex::new(HashSet::new());
    let mut out = Chunked {
        file_chunks: vec![Vec::new(); tree.nodes.len()],
        ..Chunked::default()
    };
    let mut write_error: Option<BuildError> = None;

    std::thread::scope(|s| {
        // Reader: files in inode order, one chunk at a time, each after taking a token.
        let reader_error = &reader_error;
        s.spawn(move || {
            let mut seq = 0u64;
            for id in tree.depth_first() {
                let node = &tree.nodes[id];
                if !needs_chunking(node) {
                    continue;
                }
                if let Err(e) = read_file(tree, id, opts.chunk_size, &mut seq, &job_tx, &token_rx) {
                    *reader_error.lock().expect("no panics while held") = Some(e);
                    return;
                }
            }
        });
        let claimed = &claimed;
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let token_tx = token_tx.clone();
            s.spawn(move || {
                for job in job_rx {
                    let digest = compress::digest(opts.digester, &job.data);
                    // Compress only the first copy of a chunk seen; the writer compresses
                    // itself in the rare case where a later copy claimed the digest first.
                    let first = known(&digest).is_none()
                        && claimed.lock().expect("claims lock").insert(digest);
                    let len = job.data.len();
                    let mut tokens = tokens_for(len);
                    let body = if first {
                        match compress::compress_owned(opts.compressor, job.data) {
                            Ok(packed) => {
                                // The raw data is gone: only the compressed form's share
                                // of the budget stays taken until it is written.
                                let keep = tokens_for(packed.len());
                                drop(Share {
                                    tokens: tokens - keep,
                                    to: &token_tx,
                                });
                                tokens = keep;
                                Body::Packed(packed)
                            }
                            Err(raw) => Body::Raw(raw),
                        }
                    } else {
                        Body::Unpacked(job.data)
                    };
                    let done = Done {
                        seq: job.seq,
                        node: job.node,
                        file_offset: job.file_offset,
                        digest,
                        len,
                        tokens,
                        body,
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            });
        }
        drop(job_rx);
        drop(done_tx);

        // Writer: put results back in order, dedup, append.
        let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next = 0u64;
        let mut seen: HashMap<[u8; 32], u32> = HashMap::new();
        for done in done_rx.iter() {
            pending.insert(done.seq, done);
            while let Some(done) = pending.remove(&next) {
                next += 1;
                // The chunk's share of the budget goes back at the end of this iteration,
                // once it is written: a raw chunk being written still holds its buffer
                // (returning the share first let the reader hold a third chunk meanwhile).
                let _share = Share {
                    tokens: done.tokens,
                    to: &token_tx,
                };
                if write_error.is_some() {
                    continue;
                }
                out.total_chunks += 1;
                out.bytes_read += done.len as u64;
                let found = known(&done.digest);
                if found.is_some() {
                    out.known_chunks += 1;
                    out.known_bytes += done.len as u64;
                }
                let index = match (found, seen.get(&done.digest)) {
                    (Some(info), _) => ChunkRef::Known(info),
                    (None, Some(&i)) => ChunkRef::New(i),
                    (None, None) => match store(blob, &done, opts.compressor) {
                        Ok(i) => {
                            seen.insert(done.digest, i);
                            ChunkRef::New(i)
                        }
                        Err(e) => {
                            write_error = Some(BuildError::Output {
                                path: "data blob".into(),
                                what: "cannot write".into(),
                                source: e,
                            });
                            continue;
                        }
                    },
                };
                let chunks = &mut out.file_chunks[done.node];
                chunks.push(index);
                let node = &tree.nodes[done.node];
                if chunks.len() as u64 == node.size.div_ceil(opts.chunk_size as u64) {
                    state.files_done += 1;
                    state.bytes_done = out.bytes_read;
                    progress(&state);
                }
            }
            if write_error.is_some() {
                // Keep draining so the other threads can finish; tokens are returned above.
                continue;
            }
        }
        // If we stopped early, release the reader.
        drop(token_tx);
    });
    if let Some(e) = reader_error.into_inner().expect("no panics while held") {
        return Err(e);
    }
    if let Some(e) = write_error {
        return Err(e);
    }
    Ok(out)
}

/// Appends a chunk to the blob in the form its worker left it in.
fn store<W: Write>(
    blob: &mut BlobWriter<W>,
    done: &Done,
    compressor: Compressor,
) -> std::io::Result<u32> {
    let (digest, len, at) = (done.digest, done.len, done.file_offset);
    match &done.body {
        Body::Packed(packed) => blob.add_stored(digest, len, packed, true, at),
        Body::Raw(raw) => blob.add_stored(digest, len, raw, false, at),
        Body::Unpacked(raw) => blob.add_chunk(
            digest,
            raw,
            compress::compress(compressor, raw).as_deref(),
            at,
        ),
    }
}

/// Bytes of chunk data one memory-budget token stands for.
const TOKEN_BYTES: u64 = 16 << 10;

/// Tokens a chunk of `len` bytes holds while in flight.
fn tokens_for(len: usize) -> usize {
    (len as u64).div_ceil(TOKEN_BYTES).max(1) as usize
}

/// Budget tokens handed back when dropped.
struct Share<'a> {
    tokens: usize,
    to: &'a crossbeam_channel::Sender<()>,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        for _ in 0..self.tokens {
            let _ = self.to.send(());
        }
    }
}

/// Whether a node's data is read from the source into the new blob.
fn needs_chunking(node: &super::tree::Node) -> bool {
    node.kind == Kind::File
        && node.hardlink_of.is_none()
        && node.size > 0
        && node.data == super::tree::FileData::Source
}

/// Reads one file into chunk jobs, checking it still has the size the tree recorded.
fn read_file(
    tree: &Tree,
    id: NodeId,
    chunk_size: u32,
    seq: &mut u64,
    jobs: &crossbeam_channel::Sender<Job>,
    tokens: &crossbeam_channel::Receiver<()>,
) -> Result<(), BuildError> {
    let node = &tree.nodes[id];
    let path = &node.source;
    let mut file = open_unchanged(node)?;
    let mut offset = 0u64;
    while offset < node.size {
        let want = (node.size - offset).min(chunk_size as u64) as usize;
        // Take the chunk's share of the memory budget before its buffer exists.
        for _ in 0..tokens_for(want) {
            if tokens.recv().is_err() {
                return Ok(()); // the writer stopped; it reports why
            }
        }
        let mut data = Vec::with_capacity(want);
        let got = if is_hole(&file, offset, want as u64) {
            // Sparse files: a chunk wholly inside a hole is zeros; skip reading it.
            file.seek(SeekFrom::Start(offset + want as u64))
                .map_err(|e| BuildError::io(path, "cannot seek", e))?;
            data.resize(want, 0);
            want
        } else {
            // Read into the buffer's spare room: zero-filling it first cost 3% of the
            // build's time on big files.
            (&mut file)
                .take(want as u64)
                .read_to_end(&mut data)
                .map_err(|e| BuildError::io(path, "cannot read", e))?
        };
        if got < want {
            return Err(BuildError::Source {
                path: path.clone(),
                what: format!(
                    "file shrank during the build: {} bytes at stat time, only {} readable",
                    node.size,
                    offset + got as u64
                ),
            });
        }
        let job = Job {
            seq: *seq,
            node: id,
            file_offset: offset,
            data,
        };
        *seq += 1;
        if jobs.send(job).is_err() {
            return Ok(());
        }
        offset += want as u64;
    }
    let mut probe = [0u8; 1];
    if read_full(&mut file, &mut probe).map_err(|e| BuildError::io(path, "cannot read", e))? != 0 {
        return Err(BuildError::Source {
            path: path.clone(),
            what: format!(
                "file grew during the build beyond its {} bytes at stat time",
                node.size
            ),
        });
    }
    let meta = file
        .metadata()
        .map_err(|e| BuildError::io(path, "cannot stat", e))?;
    if (meta.mtime(), meta.mtime_nsec() as u32) != (node.mtime, node.mtime_nsec) {
        return Err(BuildError::Source {
            path: path.clone(),
            what: "file was modified while it was being read (its mtime changed)".into(),
        });
    }
    Ok(())
}

/// Opens a regular file of the tree, refusing what changed since the tree was read: a
/// symlink put in its place (never followed), another type, another size, another mtime.
fn open_unchanged(node: &super::tree::Node) -> Result<File, BuildError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = &node.source;
    let changed = |what: String| BuildError::Source {
        path: path.clone(),
        what,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                changed("was replaced by a symlink during the build".into())
            } else {
                BuildError::io(path, "cannot open", e)
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| BuildError::io(path, "cannot stat", e))?;
    if !meta.is_file() {
        return Err(changed(
            "is no longer a regular file (replaced during the build)".into(),
        ));
    }
    if meta.len() < node.size {
        return Err(changed(format!(
            "file shrank during the build: {} bytes at stat time, {} now",
            node.size,
            meta.len()
        )));
    }
    if meta.len() > node.size {
        return Err(changed(format!(
            "file grew during the build beyond its {} bytes at stat time",
            node.size
        )));
    }
    if (meta.mtime(), meta.mtime_nsec() as u32) != (node.mtime, node.mtime_nsec) {
        return Err(changed(
            "file was modified during the build (its mtime changed since it was listed)".into(),
        ));
    }
    Ok(file)
}

/// Whether `[offset, offset + len)` of `file` lies wholly in a hole (`SEEK_DATA` finds no
/// data before its end). Filesystems without hole support report none.
fn is_hole(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(start) = libc::off_t::try_from(offset) else {
        return false;
    };
    // SAFETY: lseek on a file descriptor we own; it only moves the file offset, which the
    // caller resets with an explicit seek or read position.
    let next = unsafe { libc::lseek(file.as_raw_fd(), start, libc::SEEK_DATA) };
    let hole = if next < 0 {
        std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO)
    } else {
        next as u64 >= offset + len
    };
    // SAFETY: as above; put the offset back where the sequential reader expects it.
    unsafe { libc::lseek(file.as_raw_fd(), start, libc::SEEK_SET) };
    hole
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
