//! Splits regular files into chunks and stores each distinct chunk once in the blob.
//!
//! Two inputs feed one pipeline:
//! - a finished [`Tree`] ([`chunk_files`]): chunks are stored depth first in name order,
//!   the order in which `tar`, `cp -r` and `find` visit a tree, so that reading a mounted
//!   image that way reads its blob sequentially; the workers read the files themselves;
//! - a stream ([`chunk_stream`], a tar layer): a producer reads each file's data once, in
//!   stream order, and hands it over chunk by chunk through a [`ChunkSink`]; chunks are
//!   stored in that order.
//!
//! A pipeline bounded in memory: one thread hands out the chunks in order, in batches,
//! `threads` workers read (from a tree), hash and compress them, and the calling thread
//! puts results back in order, deduplicates by digest and appends new chunks to the blob.
//! Chunk data in flight is bounded in bytes (`(threads + 1) x chunk_size`, a chunk
//! counted at the size of the form it is held in; a stream's producer takes its share
//! before it reads a chunk), so memory stays flat whatever the file or blob size, while
//! small files still keep every worker busy. The first error in that order is the one
//! reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crossbeam_channel::bounded;

use super::blob::BlobWriter;
pub use super::tree::ChunkRef;
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

/// Finds an existing chunk by digest (a chunk dictionary), or nothing.
pub type KnownChunks<'a> = &'a (dyn Fn(&[u8; 32]) -> Option<ChunkInfo> + Sync);

/// What the chunker produced besides the blob bytes.
#[derive(Clone, Debug, Default)]
pub struct Chunked {
    /// For each file, where each of its chunks is, in file order: by node id for a tree
    /// (empty for everything but first names of regular files), by [`FileKey`] for a
    /// stream.
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

/// A file of a stream, as its producer registered it with [`ChunkSink::start_file`]:
/// its index in [`Chunked::file_chunks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey(pub usize);

/// A chunk to hash and store: its place in the blob's order, its file and where in it,
/// and its bytes when they were read already (a stream's), else the worker reads them.
struct Job {
    seq: u64,
    /// Node id (tree) or file key (stream).
    file: usize,
    file_offset: u64,
    len: usize,
    data: Option<Vec<u8>>,
}

struct Done {
    seq: u64,
    file: usize,
    file_offset: u64,
    digest: [u8; 32],
    /// The chunk as the known chunks have it, when they do.
    known: Option<ChunkInfo>,
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
    /// The chunk could not be read as the tree recorded it, or not compressed.
    Failed(BuildError),
}

/// How far the chunker has come.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Regular files finished.
    pub files_done: u64,
    /// Regular files with data in the tree (0 for a stream, whose end is not known).
    pub files_total: u64,
    /// Bytes of file data processed.
    pub bytes_done: u64,
    /// Bytes of file data in the tree (0 for a stream).
    pub bytes_total: u64,
}

/// Where the workers' chunks come from, and how a file is named in an error.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// Files of a tree, read by the workers.
    Tree(&'a Tree),
    /// A stream's chunks, read by its producer; file names by key.
    Stream(&'a Mutex<Vec<PathBuf>>),
}

impl Input<'_> {
    fn name(&self, file: usize) -> PathBuf {
        match self {
            Input::Tree(tree) => tree.nodes[file].source.clone(),
            Input::Stream(names) => names
                .lock()
                .expect("names lock")
                .get(file)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// Chunks every regular file of `tree` into `blob`. `progress` is told as files finish.
pub fn chunk_files<W: Write>(
    tree: &Tree,
    opts: ChunkOptions,
    blob: &mut BlobWriter<W>,
    known: KnownChunks,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Chunked, BuildError> {
    chunk_files_first(tree, &[], opts, blob, known, progress)
}

/// Like [`chunk_files`], but the files in `first` are chunked before all others, in that
/// order (prefetched files: see [`super::prefetch::Prefetch::file_order`]); a hard link
/// stands for its inode, which is stored at the first of its names to come.
pub fn chunk_files_first<W: Write>(
    tree: &Tree,
    first: &[NodeId],
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
    let chunk_size = opts.chunk_size as u64;
    // The dispatcher: the chunks of files in depth-first order (after those asked for
    // first), each after taking its share of the budget. The workers read them, so that
    // opening, reading and checking many small files is spread over every core.
    let dispatch = |feed: &mut Feed| {
        let mut dispatched = vec![false; tree.nodes.len()];
        let order = first
            .iter()
            .map(|&id| tree.nodes[id].hardlink_of.unwrap_or(id))
            .chain(tree.depth_first());
        'files: for id in order {
            let node = &tree.nodes[id];
            if !needs_chunking(node) || std::mem::replace(&mut dispatched[id], true) {
                continue;
            }
            if feed.stopped() {
                break;
            }
            let mut offset = 0u64;
            while offset < node.size {
                let len = (node.size - offset).min(chunk_size) as usize;
                if !feed.take_tokens(tokens_for(len)) || !feed.push(id, offset, len, None) {
                    break 'files; // the writer stopped; it reports why
                }
                offset += len as u64;
            }
        }
    };
    let written = |file: usize, out: &Chunked| {
        let node = &tree.nodes[file];
        if out.file_chunks[file].len() as u64 == node.size.div_ceil(chunk_size) {
            state.files_done += 1;
            state.bytes_done = out.bytes_read;
            progress(&state);
        }
    };
    let files = tree.nodes.len();
    let ((), result) = pipeline(
        Input::Tree(tree),
        files,
        opts,
        blob,
        known,
        dispatch,
        written,
    );
    result
}

/// Chunks data a producer reads from a stream, in the order it hands the chunks over.
///
/// `produce` runs on a thread of its own with a [`ChunkSink`]: it registers each file
/// with [`ChunkSink::start_file`] and passes its data chunk by chunk, each
/// `chunk_size` bytes but a file's last, through [`ChunkSink::push_with`]. Workers hash
/// and compress while it reads on; the blob is written in order on the calling thread.
/// Returns what `produce` returned and where each file's chunks are, by [`FileKey`].
///
/// An error writing the blob (or compressing) stops the producer (`push_with` returns
/// false) and is the one reported: it concerns data from before anything the producer
/// was reading when it stopped. Otherwise an error of the producer's is reported.
pub fn chunk_stream<W: Write, T: Send>(
    opts: ChunkOptions,
    blob: &mut BlobWriter<W>,
    known: KnownChunks,
    progress: &(dyn Fn(&Progress) + Sync),
    produce: impl FnOnce(&mut ChunkSink) -> Result<T, BuildError> + Send,
) -> Result<(T, Chunked), BuildError> {
    let names: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut state = Progress::default();
    let mut last_file = None;
    let dispatch = |feed: &mut Feed| {
        let mut sink = ChunkSink { feed };
        produce(&mut sink)
    };
    let written = |file: usize, out: &Chunked| {
        if last_file != Some(file) {
            last_file = Some(file);
            state.files_done += 1;
        }
        state.bytes_done = out.bytes_read;
        progress(&state);
    };
    let (produced, result) = pipeline(
        Input::Stream(&names),
        0,
        opts,
        blob,
        known,
        dispatch,
        written,
    );
    let chunked = result?;
    Ok((produced?, chunked))
}

/// A producer's side of [`chunk_stream`]: file data in, in stream order.
pub struct ChunkSink<'f, 'a> {
    feed: &'f mut Feed<'a>,
}

impl ChunkSink<'_, '_> {
    /// The chunk size: every chunk of a file but its last has this many bytes.
    pub fn chunk_size(&self) -> u32 {
        self.feed.chunk_size
    }

    /// Registers a file whose data follows; `name` names it in errors.
    pub fn start_file(&mut self, name: PathBuf) -> FileKey {
        let names = self.feed.names.expect("a stream's feed has names");
        let mut names = names.lock().expect("names lock");
        names.push(name);
        FileKey(names.len() - 1)
    }

    /// Queues the chunk of `file` at `file_offset`, `len` bytes that `fill` appends to
    /// the empty buffer it is given (the chunk's share of the memory budget is taken
    /// first, waiting for the writer if need be). Ok(false) when the pipeline stopped:
    /// the blob could not be written, and the producer should stop too.
    ///
    /// # Panics
    /// If `fill` succeeds without appending exactly `len` bytes, or `len` is 0 or more
    /// than the chunk size.
    pub fn push_with<E>(
        &mut self,
        file: FileKey,
        file_offset: u64,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<bool, E> {
        assert!(
            len > 0 && len <= self.feed.chunk_size as usize,
            "chunk of {len} bytes"
        );
        if self.feed.stopped() || !self.feed.take_tokens(tokens_for(len)) {
            return Ok(false);
        }
        let mut data = self.feed.recycled.try_recv().unwrap_or_default();
        data.clear();
        data.reserve_exact(len);
        fill(&mut data)?;
        assert_eq!(data.len(), len, "the producer filled a chunk wrongly");
        Ok(self.feed.push(file.0, file_offset, len, Some(data)))
    }
}

/// Runs the pipeline: `dispatch` on a thread of its own feeds the chunks, workers hash and
/// compress them, and the calling thread writes them in order, telling `written` after
/// each chunk of a file. `files` is the number of files known at the start.
fn pipeline<W: Write, T: Send>(
    input: Input,
    files: usize,
    opts: ChunkOptions,
    blob: &mut BlobWriter<W>,
    known: KnownChunks,
    dispatch: impl FnOnce(&mut Feed) -> T + Send,
    mut written: impl FnMut(usize, &Chunked),
) -> (T, Result<Chunked, BuildError>) {
    let threads = opts.threads.max(1);
    // The memory budget: chunk data in flight (read, not yet written) is at most
    // `threads + 1` chunks' worth of bytes, in tokens of TOKEN_BYTES: one for each worker
    // and one for the writer (with only `threads`, a raw chunk being written stalled the
    // pipeline and the 4 GiB file built no faster than upstream). Small files have many
    // chunks in flight at once, big ones few.
    let budget = ((threads as u64 + 1) * opts.chunk_size as u64).div_ceil(TOKEN_BYTES) as usize;
    let window = threads * 16;
    let (job_tx, job_rx) = bounded::<Vec<Job>>(window);
    let (done_tx, done_rx) = bounded::<Vec<Done>>(window);
    let (token_tx, token_rx) = bounded::<()>(budget);
    for _ in 0..budget {
        token_tx.send(()).expect("fresh channel has room");
    }
    // Buffers a stream's chunks were compressed out of, back to its producer to be
    // filled again (a tree's workers keep theirs for their next read).
    let (recycle_tx, recycle_rx) = bounded::<Vec<u8>>(threads);
    let recycle = matches!(input, Input::Stream(_)).then_some(&recycle_tx);
    // Set by the writer on the first error, so that no more chunks are handed out.
    let failed = AtomicBool::new(false);
    let claimed: Mutex<HashSet<[u8; 32]>> = Mutex::new(HashSet::new());
    let mut out = Chunked {
        file_chunks: vec![Vec::new(); files],
        ..Chunked::default()
    };
    let mut error: Option<BuildError> = None;

    let produced = std::thread::scope(|s| {
        let failed = &failed;
        let dispatcher = s.spawn(move || {
            let mut feed = Feed {
                jobs: job_tx,
                tokens: token_rx,
                recycled: recycle_rx,
                failed,
                names: match input {
                    Input::Stream(names) => Some(names),
                    Input::Tree(_) => None,
                },
                batch: Vec::new(),
                batch_bytes: 0,
                seq: 0,
                chunk_size: opts.chunk_size,
            };
            let produced = dispatch(&mut feed);
            feed.flush();
            produced
        });
        let claimed = &claimed;
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let token_tx = token_tx.clone();
            s.spawn(move || {
                let mut spare = Vec::new();
                for batch in job_rx {
                    let dones: Vec<Done> = batch
                        .into_iter()
                        .map(|job| {
                            let done =
                                work(input, job, opts, known, claimed, &token_tx, &mut spare);
                            if let Some(to) = recycle.filter(|_| spare.capacity() > 0) {
                                let _ = to.try_send(std::mem::take(&mut spare));
                            }
                            done
                        })
                        .collect();
                    if done_tx.send(dones).is_err() {
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
        for dones in done_rx.iter() {
            for done in dones {
                pending.insert(done.seq, done);
            }
            while let Some(done) = pending.remove(&next) {
                next += 1;
                // The chunk's share of the budget goes back at the end of this iteration,
                // once it is written: a raw chunk being written still holds its buffer.
                let _share = Share {
                    tokens: done.tokens,
                    to: &token_tx,
                };
                if error.is_some() {
                    continue;
                }
                if let Body::Failed(e) = done.body {
                    error = Some(e);
                    failed.store(true, Ordering::Relaxed);
                    continue;
                }
                out.total_chunks += 1;
                out.bytes_read += done.len as u64;
                if done.known.is_some() {
                    out.known_chunks += 1;
                    out.known_bytes += done.len as u64;
                }
                let index = match (done.known.clone(), seen.get(&done.digest)) {
                    (Some(info), _) => ChunkRef::Known(info),
                    (None, Some(&i)) => ChunkRef::New(i),
                    (None, None) => match store(input, blob, &done, opts) {
                        Ok(i) => {
                            seen.insert(done.digest, i);
                            ChunkRef::New(i)
                        }
                        Err(e) => {
                            error = Some(e);
                            failed.store(true, Ordering::Relaxed);
                            continue;
                        }
                    },
                };
                if out.file_chunks.len() <= done.file {
                    out.file_chunks.resize_with(done.file + 1, Vec::new);
                }
                out.file_chunks[done.file].push(index);
                written(done.file, &out);
            }
            // After an error the loop goes on draining, so that the other threads can
            // finish; the shares of the budget are returned above.
        }
        drop(token_tx);
        dispatcher.join().expect("the dispatcher does not panic")
    });
    let result = match error {
        Some(e) => Err(e),
        None => Ok(out),
    };
    (produced, result)
}

/// A worker's part for one chunk: read it (unless it came read), hash it, and compress
/// it unless it is known or another copy of it is already being compressed.
fn work(
    input: Input,
    mut job: Job,
    opts: ChunkOptions,
    known: KnownChunks,
    claimed: &Mutex<HashSet<[u8; 32]>>,
    tokens_to: &crossbeam_channel::Sender<()>,
    spare: &mut Vec<u8>,
) -> Done {
    let mut tokens = tokens_for(job.len);
    let read = match (job.data.take(), input) {
        (Some(data), _) => Ok(data),
        (None, Input::Tree(tree)) => read_chunk(tree, &job, opts.chunk_size, std::mem::take(spare)),
        (None, Input::Stream(_)) => unreachable!("a stream's chunks come read"),
    };
    let (digest, found, body) = match read {
        Err(e) => ([0; 32], None, Body::Failed(e)),
        Ok(data) => {
            let digest = compress::digest(opts.digester, &data);
            let found = known(&digest);
            // Compress only the first copy of a chunk seen; the writer compresses itself
            // in the rare case where a later copy claimed the digest first.
            let first = found.is_none() && claimed.lock().expect("claims lock").insert(digest);
            let body = if !first {
                Body::Unpacked(handed_on(data, spare))
            } else {
                match compress::compress_owned(opts.compressor, data) {
                    Ok(compress::Owned::Packed { packed, buffer }) => {
                        *spare = buffer;
                        // The raw data is gone: only the compressed form's share of the
                        // budget stays taken until it is written.
                        let keep = tokens_for(packed.len());
                        drop(Share {
                            tokens: tokens - keep,
                            to: tokens_to,
                        });
                        tokens = keep;
                        Body::Packed(packed)
                    }
                    Ok(compress::Owned::Raw(raw)) => Body::Raw(handed_on(raw, spare)),
                    Err(e) => {
                        Body::Failed(compress_failed(input, job.file, job.file_offset, opts, e))
                    }
                }
            };
            (digest, found, body)
        }
    };
    Done {
        seq: job.seq,
        file: job.file,
        file_offset: job.file_offset,
        digest,
        known: found,
        len: job.len,
        tokens,
        body,
    }
}

/// Raw chunk data for the writer: the read buffer itself, unless it is far larger than the
/// chunk, as a buffer a big chunk left is for a small one. Then the chunk goes in a copy of
/// its own size and the buffer stays `spare`, for the next read: the memory budget counts
/// chunk sizes, and a small chunk must not hold a big buffer while it waits to be written.
fn handed_on(data: Vec<u8>, spare: &mut Vec<u8>) -> Vec<u8> {
    if data.capacity() <= 2 * data.len() + 4096 {
        return data;
    }
    let copy = data.clone(); // a clone's capacity is its length
    *spare = data;
    spare.clear();
    copy
}

/// The error of a chunk the codec failed to compress, naming its file and place.
fn compress_failed(
    input: Input,
    file: usize,
    file_offset: u64,
    opts: ChunkOptions,
    source: compress::CompressError,
) -> BuildError {
    BuildError::Compress {
        path: input.name(file),
        chunk: file_offset / opts.chunk_size as u64,
        offset: file_offset,
        source,
    }
}

/// Appends a chunk to the blob in the form its worker left it in.
fn store<W: Write>(
    input: Input,
    blob: &mut BlobWriter<W>,
    done: &Done,
    opts: ChunkOptions,
) -> Result<u32, BuildError> {
    let (digest, len, at) = (done.digest, done.len, done.file_offset);
    let written = match &done.body {
        Body::Packed(packed) => blob.add_stored(digest, len, packed, true, at),
        Body::Raw(raw) => blob.add_stored(digest, len, raw, false, at),
        Body::Failed(_) => unreachable!("failed chunks are never stored"),
        Body::Unpacked(raw) => {
            let packed = compress::compress(opts.compressor, raw)
                .map_err(|e| compress_failed(input, done.file, at, opts, e))?;
            blob.add_chunk(digest, raw, packed.as_deref(), at)
        }
    };
    written.map_err(|source| BuildError::Output {
        path: "data blob".into(),
        what: "cannot write".into(),
        source,
    })
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

/// The dispatcher's side of the pipeline: chunks go to the workers in batches, so that a tree
/// of small files does not pay a thread hand-off per file (a fifth of the build's time
/// on 200,000 small files went to waking threads and passing single chunks).
struct Feed<'a> {
    jobs: crossbeam_channel::Sender<Vec<Job>>,
    tokens: crossbeam_channel::Receiver<()>,
    /// Buffers back from the workers, for a stream's producer to fill.
    recycled: crossbeam_channel::Receiver<Vec<u8>>,
    /// Set by the writer when it stopped on an error.
    failed: &'a AtomicBool,
    /// A stream's file names, by key.
    names: Option<&'a Mutex<Vec<PathBuf>>>,
    batch: Vec<Job>,
    batch_bytes: usize,
    seq: u64,
    chunk_size: u32,
}

/// A batch is sent once it holds this many bytes of chunk data...
const BATCH_BYTES: usize = 64 << 10;
/// ...or this many chunks.
const BATCH_CHUNKS: usize = 64;

impl Feed<'_> {
    /// Whether the writer stopped on an error.
    fn stopped(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Takes `n` budget tokens, waiting for the writer if need be. False when the writer
    /// stopped.
    fn take_tokens(&mut self, n: usize) -> bool {
        for _ in 0..n {
            match self.tokens.try_recv() {
                Ok(()) => continue,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return false,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            // The budget is spent: what is batched must go before waiting, since its
            // tokens come back only once it is written.
            if !self.flush() || self.tokens.recv().is_err() {
                return false;
            }
        }
        true
    }

    /// Queues one chunk; a chunk of a quarter of the chunk size or more goes at once.
    /// False when the workers stopped.
    fn push(&mut self, file: usize, file_offset: u64, len: usize, data: Option<Vec<u8>>) -> bool {
        self.batch_bytes += len;
        let big = len >= self.chunk_size as usize / 4;
        self.batch.push(Job {
            seq: self.seq,
            file,
            file_offset,
            len,
            data,
        });
        self.seq += 1;
        if big || self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_CHUNKS {
            return self.flush();
        }
        true
    }

    /// Sends what is batched. False when the workers stopped.
    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        self.batch_bytes = 0;
        self.jobs.send(std::mem::take(&mut self.batch)).is_ok()
    }
}

/// Whether a node's data is read from the source into the new blob.
fn needs_chunking(node: &super::tree::Node) -> bool {
    node.kind == Kind::File
        && node.hardlink_of.is_none()
        && node.size > 0
        && node.data == super::tree::FileData::Source
}

/// Reads a job's chunk into `data`, checking the file is still what the tree recorded when
/// it is opened and again after the read. `data` is an empty buffer, reused from an earlier
/// chunk when there is one: allocating one per chunk was 5% of a build's time, in malloc
/// and free.
fn read_chunk(
    tree: &Tree,
    job: &Job,
    chunk_size: u32,
    mut data: Vec<u8>,
) -> Result<Vec<u8>, BuildError> {
    let node = &tree.nodes[job.file];
    let path = &node.source;
    let mut file = open_unchanged(node)?;
    let (offset, want) = (job.file_offset, job.len);
    debug_assert!(data.is_empty());
    data.reserve_exact(want);
    // Only files of several chunks are worth asking for holes: a hole inside one chunk
    // reads as zeros anyway, and small files are most of a tree's files.
    let several = node.size > chunk_size as u64;
    if several && is_hole(&file, offset, want as u64) {
        // Sparse files: a chunk wholly inside a hole is zeros; skip reading it.
        data.resize(want, 0);
    } else {
        if several {
            // Asking for holes moved the file position.
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| BuildError::io(path, "cannot seek", e))?;
        }
        // Read into the buffer's spare room: zero-filling it first cost 3% of the build's
        // time on big files.
        let got = (&mut file)
            .take(want as u64)
            .read_to_end(&mut data)
            .map_err(|e| BuildError::io(path, "cannot read", e))?;
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
    }
    // Whatever happened to the file while it was read shows in its size or mtime now.
    check_unchanged(node, &file)?;
    Ok(data)
}

/// Opens a regular file of the tree, refusing what changed since the tree was read: a
/// symlink put in its place (never followed), another type, another size, another mtime.
fn open_unchanged(node: &super::tree::Node) -> Result<File, BuildError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = &node.source;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Never follow a symlink put in the file's place, and never wait in open() for
        // a FIFO's writer (a FIFO is refused below, once it is open).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                BuildError::Source {
                    path: path.clone(),
                    what: "was replaced by a symlink during the build".into(),
                }
            } else {
                BuildError::io(path, "cannot open", e)
            }
        })?;
    check_unchanged(node, &file)?;
    Ok(file)
}

/// Refuses an open file of the tree that is no longer the regular file of the size and
/// mtime the tree recorded.
fn check_unchanged(node: &super::tree::Node, file: &File) -> Result<(), BuildError> {
    let path = &node.source;
    let meta = file
        .metadata()
        .map_err(|e| BuildError::io(path, "cannot stat", e))?;
    let what = if !meta.is_file() {
        "is no longer a regular file (replaced during the build)".to_string()
    } else if meta.len() < node.size {
        format!(
            "file shrank during the build: {} bytes at stat time, {} now",
            node.size,
            meta.len()
        )
    } else if meta.len() > node.size {
        format!(
            "file grew during the build beyond its {} bytes at stat time",
            node.size
        )
    } else if (meta.mtime(), meta.mtime_nsec() as u32) != (node.mtime, node.mtime_nsec) {
        "file was modified during the build (its mtime changed since it was listed)".into()
    } else {
        return Ok(());
    };
    Err(BuildError::Source {
        path: path.clone(),
        what,
    })
}

/// Whether `[offset, offset + len)` of `file` lies wholly in a hole (`SEEK_DATA` finds no
/// data before its end). Filesystems without hole support report none. Moves the file
/// position.
fn is_hole(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(start) = libc::off_t::try_from(offset) else {
        return false;
    };
    // SAFETY: lseek on a file descriptor we own; it only moves the file offset, which the
    // caller resets before reading.
    let next = unsafe { libc::lseek(file.as_raw_fd(), start, libc::SEEK_DATA) };
    if next < 0 {
        std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO)
    } else {
        next as u64 >= offset + len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::source::dir::read_tree;
    use crate::builder::tree::NodeId;
    use std::path::Path;

    const CS: usize = 0x1000;

    fn opts(compressor: Compressor, digester: Digester, threads: usize) -> ChunkOptions {
        ChunkOptions {
            chunk_size: CS as u32,
            compressor,
            digester,
            threads,
        }
    }

    /// Pseudo-random bytes (incompressible), one stream per seed.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// What chunking a directory gave.
    struct Chunking {
        tree: Tree,
        chunked: Chunked,
        table: Vec<ChunkInfo>,
        blob: Vec<u8>,
        progress: Vec<Progress>,
    }

    fn chunk_dir(root: &Path, opts: ChunkOptions, known: KnownChunks) -> Chunking {
        let tree = read_tree(root).unwrap();
        let mut blob = Vec::new();
        let mut writer = BlobWriter::new(&mut blob, opts.compressor, opts.digester, CS as u32);
        let progress = Mutex::new(Vec::new());
        let chunked = chunk_files(&tree, opts, &mut writer, known, &|p| {
            progress.lock().unwrap().push(*p)
        })
        .unwrap();
        let (_, table) = writer.finish(None).unwrap();
        Chunking {
            tree,
            chunked,
            table,
            blob,
            progress: progress.into_inner().unwrap(),
        }
    }

    fn nothing_known(_: &[u8; 32]) -> Option<ChunkInfo> {
        None
    }

    impl Chunking {
        fn id(&self, name: &str) -> NodeId {
            self.tree
                .nodes
                .iter()
                .position(|n| n.name == name.as_bytes())
                .expect("name in the tree")
        }

        /// Indexes of the new chunks of `name`, in file order.
        fn chunks_of(&self, name: &str) -> Vec<u32> {
            self.chunked.file_chunks[self.id(name)]
                .iter()
                .map(|c| match c {
                    ChunkRef::New(i) => *i,
                    ChunkRef::Known(_) => panic!("{name}: a known chunk"),
                })
                .collect()
        }

        /// Chunk `i` as stored, uncompressed.
        fn chunk(&self, i: u32, compressor: Compressor) -> Vec<u8> {
            let info = &self.table[i as usize];
            let at = info.compressed_offset as usize;
            let stored = &self.blob[at..at + info.compressed_size as usize];
            if !info.compressed {
                return stored.to_vec();
            }
            let mut out = vec![0; info.uncompressed_size as usize];
            compress::decompress(compressor, stored, &mut out).unwrap();
            out
        }

        /// The file `name` put back together from the blob.
        fn content(&self, name: &str, compressor: Compressor) -> Vec<u8> {
            let chunks = self.chunks_of(name);
            chunks
                .iter()
                .flat_map(|&i| self.chunk(i, compressor))
                .collect()
        }
    }

    fn independent_digest(digester: Digester, data: &[u8]) -> [u8; 32] {
        match digester {
            Digester::Blake3 => *blake3::hash(data).as_bytes(),
            Digester::Sha256 => {
                use sha2::Digest;
                sha2::Sha256::digest(data).into()
            }
        }
    }

    #[test]
    fn files_split_at_chunk_boundaries_and_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        // (name, size, chunks, bytes in the last chunk)
        let files = [
            ("b-one", 1, 1, 1),
            ("c-cs-1", CS - 1, 1, CS - 1),
            ("d-cs", CS, 1, CS),
            ("e-cs+1", CS + 1, 2, 1),
            ("f-3cs+7", 3 * CS + 7, 4, 7),
        ];
        std::fs::write(dir.path().join("a-empty"), b"").unwrap();
        for (i, (name, size, _, _)) in files.iter().enumerate() {
            let mut bytes = noise(*size, i as u64);
            // Half of each chunk compressible, so both stored forms occur.
            for chunk in bytes.chunks_mut(CS) {
                let half = chunk.len() / 2;
                chunk[..half].fill(b'z');
            }
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        for compressor in [Compressor::None, Compressor::Lz4Block, Compressor::Zstd] {
            for digester in [Digester::Blake3, Digester::Sha256] {
                let c = chunk_dir(dir.path(), opts(compressor, digester, 3), &nothing_known);
                let case = format!("{compressor:?} {digester:?}");
                assert!(c.chunks_of("a-empty").is_empty(), "{case}");
                for (name, size, count, last) in files {
                    let chunks = c.chunks_of(name);
                    assert_eq!(chunks.len(), count, "{case} {name}");
                    let info = &c.table[*chunks.last().unwrap() as usize];
                    assert_eq!(info.uncompressed_size as usize, last, "{case} {name}");
                    let want = std::fs::read(dir.path().join(name)).unwrap();
                    assert_eq!(c.content(name, compressor), want, "{case} {name}");
                    for (k, &i) in chunks.iter().enumerate() {
                        let info = &c.table[i as usize];
                        let raw = &want[k * CS..(k * CS + CS).min(size)];
                        assert_eq!(info.digest, independent_digest(digester, raw), "{case}");
                        assert_eq!(info.file_offset, (k * CS) as u64, "{case} {name}");
                        assert_eq!(info.uncompressed_offset % 4096, 0);
                        // Compressed only when that is smaller (never, for None).
                        let size = (info.compressed_size, info.uncompressed_size);
                        if info.compressed {
                            assert!(compressor != Compressor::None && size.0 < size.1);
                        } else {
                            assert_eq!(size.0, size.1, "{case} {name}");
                        }
                    }
                }
                let compressed = c.table.iter().filter(|i| i.compressed).count();
                assert_eq!(compressed > 0, compressor != Compressor::None, "{case}");
                let total: usize = files.iter().map(|f| f.2).sum();
                assert_eq!(c.chunked.total_chunks, total as u64, "{case}");
                assert_eq!(c.table.len(), total, "{case}: no two chunks alike");
                let bytes: usize = files.iter().map(|f| f.1).sum();
                assert_eq!(c.chunked.bytes_read, bytes as u64, "{case}");
                let last = c.progress.last().unwrap();
                assert_eq!((last.files_done, last.files_total), (5, 5), "{case}");
                assert_eq!(last.bytes_done, last.bytes_total, "{case}");
            }
        }
    }

    #[test]
    fn identical_chunks_are_stored_once_in_depth_first_order() {
        let dir = tempfile::tempdir().unwrap();
        let (p, q, r) = (noise(CS, 1), noise(CS, 2), noise(CS, 3));
        let write = |name: &str, parts: &[&[u8]]| {
            std::fs::write(dir.path().join(name), parts.concat()).unwrap()
        };
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        // Depth first in name order: a, c, sub/b, z (breadth first would put z before b).
        write("z", &[&q, b"tail"]);
        write("sub/b", &[&p, &r]);
        write("c", &[&p, &p, &p]);
        write("a", &[&q, &p]);
        std::fs::hard_link(dir.path().join("a"), dir.path().join("a-link")).unwrap();
        let c = chunk_dir(
            dir.path(),
            opts(Compressor::Zstd, Digester::Blake3, 2),
            &nothing_known,
        );
        assert_eq!(c.chunks_of("a"), [0, 1]);
        assert_eq!(c.chunks_of("c"), [1, 1, 1]);
        assert_eq!(c.chunks_of("b"), [1, 2]);
        assert_eq!(c.chunks_of("z"), [0, 3]);
        assert!(c.chunks_of("a-link").is_empty(), "a hard link is read once");
        assert_eq!(c.table.len(), 4);
        assert_eq!(c.chunked.total_chunks, 9);
        for (i, want) in [&q[..], &p, &r, b"tail"].into_iter().enumerate() {
            assert_eq!(c.chunk(i as u32, Compressor::Zstd), want, "chunk {i}");
        }
        // Chunks lie in the blob in the order of their indexes.
        let offsets: Vec<u64> = c.table.iter().map(|i| i.compressed_offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    }

    #[test]
    fn holes_read_as_zeros_and_share_one_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let data = noise(CS, 7);
        {
            use std::os::unix::fs::FileExt;
            let f = File::create(&path).unwrap();
            f.write_all_at(&data, 2 * CS as u64).unwrap();
            f.set_len(5 * CS as u64).unwrap();
        }
        let f = File::open(&path).unwrap();
        // ext4 and tmpfs report holes; a file system that does not reads zeros anyway.
        if is_hole(&f, 0, CS as u64) {
            assert!(!is_hole(&f, 2 * CS as u64, CS as u64), "data is no hole");
            assert!(
                !is_hole(&f, CS as u64, 2 * CS as u64),
                "a range ending in data"
            );
            assert!(
                is_hole(&f, 3 * CS as u64, 2 * CS as u64),
                "the end is a hole"
            );
        }
        let c = chunk_dir(
            dir.path(),
            opts(Compressor::Zstd, Digester::Sha256, 2),
            &nothing_known,
        );
        assert_eq!(c.chunks_of("sparse"), [0, 0, 1, 0, 0]);
        assert_eq!(c.chunk(0, Compressor::Zstd), vec![0; CS]);
        assert_eq!(c.chunk(1, Compressor::Zstd), data);
        assert_eq!(
            c.table[0].digest,
            independent_digest(Digester::Sha256, &[0; CS])
        );
        assert_eq!(
            c.content("sparse", Compressor::Zstd),
            std::fs::read(&path).unwrap()
        );
    }

    #[test]
    fn any_thread_count_writes_the_same_blob() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..40u64 {
            let len = (i as usize * 1777) % (3 * CS) + 1;
            std::fs::write(dir.path().join(format!("f{i:02}")), noise(len, i % 7)).unwrap();
        }
        let one = chunk_dir(
            dir.path(),
            opts(Compressor::Zstd, Digester::Blake3, 1),
            &nothing_known,
        );
        for threads in [2, 4, 7] {
            let many = chunk_dir(
                dir.path(),
                opts(Compressor::Zstd, Digester::Blake3, threads),
                &nothing_known,
            );
            assert!(many.blob == one.blob, "{threads} threads");
            assert_eq!(
                many.chunked.file_chunks, one.chunked.file_chunks,
                "{threads} threads"
            );
        }
    }

    #[test]
    fn known_chunks_are_referenced_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (p, q) = (noise(CS, 1), noise(CS, 2));
        std::fs::write(dir.path().join("f"), [&p[..], &q[..], &p[..]].concat()).unwrap();
        let p_digest = independent_digest(Digester::Blake3, &p);
        let elsewhere = ChunkInfo {
            digest: p_digest,
            blob_index: 3,
            compressed: true,
            compressed_size: 99,
            uncompressed_size: CS as u32,
            compressed_offset: 1 << 20,
            uncompressed_offset: 1 << 20,
            file_offset: 0,
            index: 42,
        };
        let known = |d: &[u8; 32]| (*d == p_digest).then(|| elsewhere.clone());
        let c = chunk_dir(
            dir.path(),
            opts(Compressor::Zstd, Digester::Blake3, 2),
            &known,
        );
        let f = &c.chunked.file_chunks[c.id("f")];
        assert_eq!(
            f,
            &[
                ChunkRef::Known(elsewhere.clone()),
                ChunkRef::New(0),
                ChunkRef::Known(elsewhere)
            ]
        );
        assert_eq!(c.table.len(), 1, "only q is stored");
        assert_eq!(
            (c.chunked.known_chunks, c.chunked.known_bytes),
            (2, 2 * CS as u64)
        );
    }

    /// A writer that fails once `limit` bytes have been written.
    struct FailingAfter {
        limit: usize,
        written: usize,
    }

    impl Write for FailingAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.written + buf.len() > self.limit {
                return Err(std::io::Error::other("disk full"));
            }
            self.written += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Files of a stream: (name, data).
    fn stream_files() -> Vec<(&'static str, Vec<u8>)> {
        let (p, q) = (noise(CS, 1), noise(CS, 2));
        vec![
            ("a", [&q[..], &p[..], b"tail"].concat()),
            ("b", [&p[..], &p[..]].concat()),
            ("c", b"small".to_vec()),
            ("d", [&q[..], &noise(CS / 2, 3)[..]].concat()),
        ]
    }

    /// Pushes `files` through a sink chunk by chunk, as a tar reader does.
    fn produce(
        sink: &mut ChunkSink,
        files: &[(&str, Vec<u8>)],
    ) -> Result<Vec<FileKey>, BuildError> {
        let mut keys = Vec::new();
        for (name, data) in files {
            let key = sink.start_file(PathBuf::from(name));
            for (i, piece) in data.chunks(sink.chunk_size() as usize).enumerate() {
                let pushed = sink.push_with(key, (i * CS) as u64, piece.len(), |buf| {
                    buf.extend_from_slice(piece);
                    Ok::<(), BuildError>(())
                })?;
                if !pushed {
                    return Err(BuildError::Options("stopped".into()));
                }
            }
            keys.push(key);
        }
        Ok(keys)
    }

    #[test]
    fn a_stream_is_chunked_in_the_order_it_comes_whatever_the_thread_count() {
        let files = stream_files();
        let mut first: Option<(Vec<u8>, Vec<Vec<ChunkRef>>)> = None;
        for threads in [1, 2, 4, 7] {
            let opts = opts(Compressor::Zstd, Digester::Blake3, threads);
            let mut blob = Vec::new();
            let mut writer = BlobWriter::new(&mut blob, opts.compressor, opts.digester, CS as u32);
            let (keys, chunked) =
                chunk_stream(opts, &mut writer, &nothing_known, &|_| {}, |sink| {
                    produce(sink, &files)
                })
                .unwrap();
            let (_, table) = writer.finish(None).unwrap();
            assert_eq!(keys, [FileKey(0), FileKey(1), FileKey(2), FileKey(3)]);
            // q, p, "tail", "small", the half chunk: first seen in stream order.
            let new = |v: &[u32]| v.iter().map(|&i| ChunkRef::New(i)).collect::<Vec<_>>();
            assert_eq!(chunked.file_chunks[0], new(&[0, 1, 2]), "{threads} threads");
            assert_eq!(chunked.file_chunks[1], new(&[1, 1]));
            assert_eq!(chunked.file_chunks[2], new(&[3]));
            assert_eq!(chunked.file_chunks[3], new(&[0, 4]));
            assert_eq!(table.len(), 5);
            assert_eq!(chunked.total_chunks, 8);
            let offsets: Vec<u64> = table.iter().map(|i| i.compressed_offset).collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]));
            match &first {
                None => first = Some((blob, chunked.file_chunks)),
                Some((b, f)) => {
                    assert!(*b == blob, "{threads} threads: another blob");
                    assert_eq!(*f, chunked.file_chunks);
                }
            }
        }
    }

    #[test]
    fn a_stream_stops_on_a_blob_error_and_reports_it() {
        let files: Vec<(&str, Vec<u8>)> = (0..50).map(|i| ("f", noise(CS, i))).collect();
        let opts = opts(Compressor::None, Digester::Blake3, 2);
        let out = FailingAfter {
            limit: 5 * CS,
            written: 0,
        };
        // No buffering between the writer and the failing file: the sixth chunk fails.
        let mut writer = BlobWriter::new(out, opts.compressor, opts.digester, CS as u32);
        let err = chunk_stream(opts, &mut writer, &nothing_known, &|_| {}, |sink| {
            produce(sink, &files)
        })
        .unwrap_err();
        let msg = crate::error::Chain(&err).to_string();
        assert!(msg.contains("disk full"), "{msg}");
        // And an error of the producer's is reported as it is.
        let mut blob = Vec::new();
        let mut writer = BlobWriter::new(&mut blob, opts.compressor, opts.digester, CS as u32);
        let err = chunk_stream(opts, &mut writer, &nothing_known, &|_| {}, |sink| {
            produce(sink, &files[..3])?;
            Err::<(), _>(BuildError::Options("the tar is bad".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("the tar is bad"), "{err}");
    }
}
