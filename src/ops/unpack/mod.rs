//! `unpack`: an image's tree as a POSIX (PAX) tar, streamed: members in the image's tree
//! order (depth first, each directory's entries in name order, parents before their
//! children), each regular file's data written chunk by chunk as it is read from its
//! blob and checked against its digest, so memory does not grow with the files.
//!
//! What each entry becomes (upstream 2.2.0's `unpack` writes the same kinds of members;
//! where ours differs it is said here):
//! - the root: a `./` directory member carrying its mode, owner, time and xattrs
//!   (upstream writes no member for the root, so extraction loses them);
//! - directories, regular files, symlinks, character and block devices and FIFOs: one
//!   member each, names relative (upstream: relative too; its hard link targets are
//!   absolute, which GNU tar strips);
//! - hard links: the first name in tree order is the member with the data, every later
//!   name a link member naming it (as upstream);
//! - sockets: tar has no type for them, so they are left out with a warning, as upstream
//!   leaves them out (silently);
//! - xattrs: `SCHILY.xattr.NAME` records, values as stored, binary included (as upstream);
//! - mtimes with their nanoseconds (upstream: whole seconds), uids and gids of any size,
//!   names of any length: PAX records where ustar cannot hold them (see [`tar`]);
//! - owner names are left empty, so an extracting tar uses the numeric ids the image holds
//!   (upstream fills them from this machine's passwd and group files, which makes its
//!   output depend on the host, and a tar extracting on another host may map them to
//!   other ids).
//!
//! The output is written front to back, never sought: it may be a FIFO. A regular file
//! is written under a temporary name and renamed into place once complete
//! ([`PendingFile`]): on failure nothing is left at the output path.

pub mod tar;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use thiserror::Error;

use crate::builder::output::{PendingFile, Writeback};
use crate::builder::BuildError;
use crate::format::v6::inode::ChunkAddr;
use crate::reader::{Image, Nid, ReadError};
use tar::{Kind, Member, TarError};

/// Zeros written for a hole, a piece at a time.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
/// Output buffer: small members are gathered before they are written.
const OUT_BUFFER: usize = 256 << 10;

/// Why an image could not be unpacked.
#[derive(Debug, Error)]
pub enum UnpackError {
    /// The image could not be read: its metadata, or a file's data (the error names the
    /// entry, the blob and the chunk with its offset).
    #[error("cannot read image {}", image.display())]
    Read {
        /// The image's bootstrap (or blob with inline metadata).
        image: PathBuf,
        /// What failed.
        #[source]
        source: ReadError,
    },
    /// An entry cannot be written as a tar member.
    #[error("{path}: cannot be written as a tar member")]
    Member {
        /// The entry's path in the image.
        path: String,
        /// Why.
        #[source]
        source: TarError,
    },
    /// The output could not be written.
    #[error("{}: {what}", path.display())]
    Output {
        /// The output path.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The output could not be created or moved into place.
    #[error("output")]
    Pending(#[source] Box<BuildError>),
}

/// What an unpack wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Tar members written (hard links and the root included).
    pub members: u64,
    /// Bytes of regular file data written.
    pub data_bytes: u64,
    /// Sockets left out (tar cannot hold them), by path in the image.
    pub sockets_skipped: Vec<String>,
}

/// Unpacks `image` into a tar at `output` (a file, written whole or not at all, or a
/// FIFO, written in order). Chunk digests are verified as data is read.
pub fn unpack(image: &mut Image, output: &Path) -> Result<UnpackReport, UnpackError> {
    let (pending, file) =
        PendingFile::create(output).map_err(|e| UnpackError::Pending(Box::new(e)))?;
    let mut out = std::io::BufWriter::with_capacity(OUT_BUFFER, Writeback::new(file));
    let report = write_tar(image, &mut out, output)?;
    out.flush().map_err(|e| UnpackError::Output {
        path: output.to_path_buf(),
        what: "cannot write".into(),
        source: e,
    })?;
    drop(out);
    pending
        .commit()
        .map_err(|e| UnpackError::Pending(Box::new(e)))?;
    Ok(report)
}

/// Writes `image` as a tar to `out` (`out_name` names it in errors), ending with the two
/// zero blocks that close an archive. Chunk digests are verified as data is read.
///
/// Three parts run at once, so that reading, checking and writing overlap: one thread
/// walks the tree, makes the headers and loads small chunks itself, gathering them into
/// batches; worker threads load the large chunks (read, decompress, digest); the calling
/// thread writes batches and chunks in archive order. The channel between them holds a
/// few items, so the data in flight stays within a few chunks.
pub fn write_tar(
    image: &mut Image,
    out: &mut dyn Write,
    out_name: &Path,
) -> Result<UnpackReport, UnpackError> {
    image.validate = true;
    let image: &Image = image;
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, MAX_WORKERS);
    let (item_tx, item_rx) = bounded::<Item>(workers + 1);
    let (job_tx, job_rx) = bounded::<Job>(workers);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let jobs = job_rx.clone();
            scope.spawn(move || {
                for job in jobs {
                    // The writer may have stopped already: then nobody waits for it.
                    let _ = job.reply.send(image.load_chunk(job.addr, job.len));
                }
            });
        }
        drop(job_rx);
        let planner = scope.spawn(move || {
            Planner {
                image,
                items: item_tx,
                jobs: job_tx,
                batch: Vec::with_capacity(BATCH),
                first_names: HashMap::new(),
                report: UnpackReport::default(),
            }
            .run()
        });
        let written = drain(image, item_rx, out, out_name);
        let planned = planner.join().expect("the planning thread does not panic");
        // A write error stops the planner too: report the write error, not its echo.
        written?;
        planned
    })
}

/// Workers loading chunks, at most.
const MAX_WORKERS: usize = 4;
/// Chunks of at least this many bytes are loaded by the workers; smaller ones by the
/// planning thread, straight into its batch.
const WORKER_CHUNK: u64 = 128 << 10;
/// Bytes gathered into a batch before it goes to the writer.
const BATCH: usize = 256 << 10;

/// What the writing thread gets, in archive order.
enum Item {
    /// Headers, small files' data, padding.
    Bytes(Vec<u8>),
    /// A run of zeros (a hole).
    Zeros(u64),
    /// A chunk a worker is loading: its first `len` bytes belong to the file at `path`.
    Chunk {
        path: String,
        len: u64,
        data: Receiver<Result<Arc<Vec<u8>>, ReadError>>,
    },
}

/// A chunk for a worker to load, and where to send it.
struct Job {
    addr: ChunkAddr,
    len: u64,
    reply: Sender<Result<Arc<Vec<u8>>, ReadError>>,
}

/// Writes the items to `out` until the planner is done (or fails: then its error is the
/// one reported).
fn drain(
    image: &Image,
    items: Receiver<Item>,
    out: &mut dyn Write,
    out_name: &Path,
) -> Result<(), UnpackError> {
    let mut write = |bytes: &[u8]| {
        out.write_all(bytes).map_err(|e| UnpackError::Output {
            path: out_name.to_path_buf(),
            what: "cannot write".into(),
            source: e,
        })
    };
    for item in items {
        match item {
            Item::Bytes(bytes) => write(&bytes)?,
            Item::Zeros(mut left) => {
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    write(&ZEROS[..n])?;
                    left -= n as u64;
                }
            }
            Item::Chunk { path, len, data } => {
                let loaded = data
                    .recv()
                    .unwrap_or_else(|_| Err(ReadError::Request("the chunk reader stopped".into())));
                let chunk = loaded.map_err(|e| UnpackError::Read {
                    image: image.path().to_path_buf(),
                    source: ReadError::Entry {
                        path,
                        source: Box::new(e),
                    },
                })?;
                write(&chunk[..len as usize])?;
            }
        }
    }
    Ok(())
}

/// Why the planner stopped early.
enum Stop {
    /// The image could not be read (kept as a read error for the walk).
    Read(ReadError),
    /// Something else failed.
    Other(UnpackError),
    /// The writer is gone (it failed and says why).
    Closed,
}

/// The walk: headers, small chunks, jobs for the workers.
struct Planner<'a> {
    image: &'a Image,
    items: Sender<Item>,
    jobs: Sender<Job>,
    /// Bytes not yet handed to the writer.
    batch: Vec<u8>,
    /// The first name written of each inode with more than one link.
    first_names: HashMap<Nid, Vec<u8>>,
    report: UnpackReport,
}

impl Planner<'_> {
    fn run(mut self) -> Result<UnpackReport, UnpackError> {
        let image = self.image;
        // The walk's callback can only return a read error: keep ours aside and stop it.
        let mut failed: Option<Stop> = None;
        let walked = image.walk(|path, nid| match self.entry(path, nid) {
            Ok(()) => Ok(()),
            Err(Stop::Read(e)) => Err(e),
            Err(other) => {
                failed = Some(other);
                Err(ReadError::Request("unpack stopped".into()))
            }
        });
        let stopped = match failed {
            Some(stop) => Err(stop),
            None => walked.map_err(Stop::Read),
        };
        let finished = stopped
            .and_then(|()| self.bytes(&[0u8; 2 * tar::BLOCK]))
            .and_then(|()| self.flush());
        match finished {
            Ok(()) => Ok(self.report),
            Err(Stop::Read(source)) => Err(UnpackError::Read {
                image: image.path().to_path_buf(),
                source,
            }),
            Err(Stop::Other(e)) => Err(e),
            // The writer's error is the one reported; this stands in for it.
            Err(Stop::Closed) => Err(UnpackError::Output {
                path: PathBuf::new(),
                what: "the writer stopped".into(),
                source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            }),
        }
    }

    fn send(&mut self, item: Item) -> Result<(), Stop> {
        self.items.send(item).map_err(|_| Stop::Closed)
    }

    fn flush(&mut self) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.send(Item::Bytes(batch))
    }

    fn bytes(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.batch.extend_from_slice(bytes);
        if self.batch.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn zeros(&mut self, len: u64) -> Result<(), Stop> {
        if len <= ZEROS.len() as u64 {
            return self.bytes(&ZEROS[..len as usize]);
        }
        self.flush()?;
        self.send(Item::Zeros(len))
    }

    /// Plans the member(s) for the entry at `path` (absolute, "/" for the root).
    fn entry(&mut self, path: &[u8], nid: Nid) -> Result<(), Stop> {
        let shown = || String::from_utf8_lossy(path).into_owned();
        let in_entry = |e: ReadError| {
            Stop::Read(ReadError::Entry {
                path: shown(),
                source: Box::new(e),
            })
        };
        let st = self.image.stat(nid).map_err(in_entry)?;
        let kind = match st.mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Directory,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFIFO => Kind::Fifo,
            _ => {
                // A socket (the reader accepts no other type): tar has no member for it.
                log::warn!("{}: a socket, which tar cannot hold: left out", shown());
                self.report.sockets_skipped.push(shown());
                return Ok(());
            }
        };
        let mut name = path.strip_prefix(b"/").unwrap_or(path).to_vec();
        if kind == Kind::Directory {
            if name.is_empty() {
                name.push(b'.');
            }
            name.push(b'/');
        }
        let earlier = if kind != Kind::Directory && st.nlink > 1 {
            match self.first_names.get(&nid) {
                Some(first) => Some(first.clone()),
                None => {
                    self.first_names.insert(nid, name.clone());
                    None
                }
            }
        } else {
            None
        };
        let target = match (&earlier, kind) {
            (None, Kind::Symlink) => Some(self.image.readlink(nid).map_err(in_entry)?),
            _ => None,
        };
        let xattrs = match earlier {
            Some(_) => Vec::new(),
            None => self.image.xattrs(nid).map_err(in_entry)?,
        };
        let rdev = st.rdev as libc::dev_t;
        let member = Member {
            path: &name,
            kind: if earlier.is_some() {
                Kind::HardLink
            } else {
                kind
            },
            mode: st.mode & 0o7777,
            uid: st.uid,
            gid: st.gid,
            size: if earlier.is_none() && kind == Kind::File {
                st.size
            } else {
                0
            },
            mtime: st.mtime,
            mtime_nsec: st.mtime_nsec,
            link: earlier.as_deref().or(target.as_deref()),
            device: (libc::major(rdev), libc::minor(rdev)),
            xattrs: &xattrs,
        };
        let size = member.size;
        tar::write_headers(&member, &mut self.batch).map_err(|source| {
            Stop::Other(UnpackError::Member {
                path: shown(),
                source,
            })
        })?;
        if size > 0 {
            self.file_data(nid, size, path).map_err(|e| match e {
                Stop::Read(e) => in_entry(e),
                other => other,
            })?;
            self.zeros(tar::padding(size) as u64)?;
            self.report.data_bytes += size;
        } else if self.batch.len() >= BATCH {
            self.flush()?;
        }
        self.report.members += 1;
        Ok(())
    }

    /// Plans the `size` bytes of regular file `nid`, one chunk at a time: small chunks
    /// loaded here, large ones handed to the workers.
    fn file_data(&mut self, nid: Nid, size: u64, path: &[u8]) -> Result<(), Stop> {
        let image = self.image;
        let table = image.chunk_table_of(nid).map_err(Stop::Read)?;
        if table.size != size {
            return Err(Stop::Read(ReadError::Request(format!(
                "inode {nid}: size changed from {size} to {}",
                table.size
            ))));
        }
        let chunk_size = image.super_block().chunk_size as u64;
        for i in 0..table.count {
            let start = i as u64 * chunk_size;
            let len = (size - start).min(chunk_size);
            match table.get(image, i).map_err(Stop::Read)? {
                None => self.zeros(len)?,
                Some(addr) if len >= WORKER_CHUNK => {
                    self.flush()?;
                    let (reply, data) = bounded(1);
                    self.jobs
                        .send(Job { addr, len, reply })
                        .map_err(|_| Stop::Closed)?;
                    self.send(Item::Chunk {
                        path: String::from_utf8_lossy(path).into_owned(),
                        len,
                        data,
                    })?;
                }
                Some(addr) => {
                    let data = image.load_chunk(addr, len).map_err(Stop::Read)?;
                    self.bytes(&data[..len as usize])?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The members written for a sketched image (no blob: its files are holes, which
    //! unpack as zeros), read back with the `tar` crate.

    use super::*;
    use crate::builder::bootstrap::v6::tests::bootstrap_of;
    use crate::builder::tree::tests::Sketch;
    use crate::builder::tree::Kind as TreeKind;
    use crate::storage::blobs::BlobSource;

    #[test]
    fn members_follow_the_tree_with_links_and_records() {
        let mut s = Sketch::new();
        let d = s.dir(0, "d");
        let f = s.file(d, "f", 10_000);
        s.node(f).mtime_nsec = 123;
        // No newline in the value: the `tar` crate splits PAX records at newlines (GNU tar
        // reads them whole: tests/unpack.rs).
        s.node(f).xattrs = vec![(b"user.bin".to_vec(), vec![0, b'=', 0xff])];
        s.node(f).uid = 3_000_000;
        s.hard_link(0, "a-link", f);
        s.symlink(0, "l", b"d/f");
        let c = s.add(0, b"c", TreeKind::CharDevice, 0o600);
        s.node(c).rdev = libc::makedev(300, 70_000);
        s.add(0, b"p", TreeKind::Fifo, 0o644);
        s.add(0, b"sock", TreeKind::Socket, 0o755);
        let long = "n".repeat(200);
        s.file(d, &long, 0);
        let mut image = Image::from_bytes(
            "sketch.boot".as_ref(),
            bootstrap_of(&s.tree),
            BlobSource::None,
        )
        .unwrap();
        let mut out = Vec::new();
        let report = write_tar(&mut image, &mut out, "out.tar".as_ref()).unwrap();
        assert_eq!(report.sockets_skipped, ["/sock"]);
        assert_eq!(report.data_bytes, 10_000);
        assert_eq!(out.len() % tar::BLOCK, 0);

        let mut archive = ::tar::Archive::new(out.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap());
            let mut records = Vec::new();
            if let Some(ext) = entry.pax_extensions().unwrap() {
                for r in ext {
                    let r = r.unwrap();
                    records.push((r.key().unwrap().to_string(), r.value_bytes().to_vec()));
                }
            }
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            let h = entry.header();
            seen.push((path.clone(), h.entry_type().as_byte()));
            match path.as_str() {
                "a-link" => {
                    assert_eq!(data, vec![0u8; 10_000]);
                    assert_eq!(h.uid().unwrap(), 3_000_000);
                    assert!(records.contains(&("mtime".into(), b"1700000000.000000123".to_vec())));
                    assert!(
                        records.contains(&("SCHILY.xattr.user.bin".into(), vec![0, b'=', 0xff]))
                    );
                }
                "l" => assert_eq!(link.as_deref(), Some("d/f")),
                "c" => {
                    assert_eq!(h.device_major().unwrap(), Some(300));
                    assert_eq!(h.device_minor().unwrap(), Some(70_000));
                }
                _ => {}
            }
            if h.entry_type().as_byte() == b'1' {
                assert_eq!(link.as_deref(), Some("a-link"), "{path}");
                // The first name carries the data and xattrs.
                assert!(data.is_empty(), "{path}");
                assert!(
                    records.iter().all(|r| !r.0.starts_with("SCHILY")),
                    "{path}: {records:?}"
                );
            }
        }
        // Tree order: the root, then each directory's entries in name order, depth first;
        // the hard link's first name in that order ("a-link") carries the data.
        let want: Vec<(String, u8)> = [
            ("./", b'5'),
            ("a-link", b'0'),
            ("c", b'3'),
            ("d/", b'5'),
            ("d/f", b'1'),
            (&format!("d/{long}")[..], b'0'),
            ("l", b'2'),
            ("p", b'6'),
        ]
        .iter()
        .map(|(p, t)| (p.to_string(), *t))
        .collect();
        assert_eq!(seen, want);
    }
}
