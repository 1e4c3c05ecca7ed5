//! Tar layers (`--type tar-rafs`, `targz-rafs`, `estargz-rafs`): a tar stream, plain or
//! gzip-compressed, read once front to back from a file or a FIFO, never sought and never
//! held whole. Each member becomes a node of a nested tree ([`Entry`], the form layers are
//! applied in); each regular file's data goes to the chunker as it is read
//! ([`chunker::chunk_stream`]), and once the stream has ended every file carries its
//! chunks ([`FileData::Chunked`]). The build then layers the tree onto its parent (or an
//! empty root), applying whiteouts, and writes the bootstrap as for a directory.
//!
//! What a member becomes, as extracting the archive would make it:
//! - paths lose `./` and leading `/`; a `..` component is an error; the root is `.`;
//! - a later member for a path replaces the earlier one, except that a directory over a
//!   directory only takes the new metadata (the children stay);
//! - a hard link names an earlier member's inode (its metadata and data; the link's own
//!   header fields are ignored, as GNU tar ignores them): one inode, its link count the
//!   names that survive; a link to a path no earlier member made is an error;
//! - a directory the archive leaves out is made as upstream 2.2.0 makes it: mode 0755,
//!   owner 0:0, mtime 0 (the root too, unless the archive has a `.` member);
//! - PAX `SCHILY.xattr.*` records are the xattrs, `mtime` keeps its nanoseconds, `size`,
//!   `uid` and `gid` take any value the format can hold (and RAFS, 32-bit ids);
//! - sparse files (GNU and PAX formats) read back with their holes as zeros;
//! - whiteouts are left to the layering (`builder::overlay`); the data of an OCI
//!   whiteout file is not stored;
//! - in an eStargz layer, the root's `stargz.index.json`, `.prefetch.landmark` and
//!   `.no.prefetch.landmark` are the format's own and are left out, as upstream does.
//!
//! Errors name the entry and the byte offset of its header in the (uncompressed) tar
//! stream, or the offset where the stream broke.

mod fields;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;

use crate::builder::blob::BlobWriter;
use crate::builder::chunker::{self, ChunkOptions, ChunkSink, FileKey, KnownChunks, Progress};
use crate::builder::overlay::{placeholder_node, Entry, WhiteoutSpec, OCI_WHITEOUT_PREFIX};
use crate::builder::tree::{FileData, Kind, Node};
use crate::builder::BuildError;
use stream::{Member, MemberKind, TarStream};

/// How a tar layer is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarFormat {
    /// A plain tar (`tar-rafs`).
    Tar,
    /// A gzip-compressed tar (`targz-rafs`), one or more gzip members.
    TarGz,
    /// A whole eStargz layer read as a gzip-compressed tar (`estargz-rafs`): its own
    /// entries (the TOC and the prefetch landmarks) are left out.
    EStargz,
}

/// What is wrong with a tar stream, where.
#[derive(Debug, Error)]
pub enum TarError {
    /// A header block is malformed, or the stream ends inside one.
    #[error("tar header at byte {at}{}: {what}", after.as_ref().map(|a| format!(" (after entry {a:?})")).unwrap_or_default())]
    Header {
        /// Offset of the header in the tar stream.
        at: u64,
        /// The entry before it, if any.
        after: Option<String>,
        /// What is wrong.
        what: String,
    },
    /// An entry is malformed, or holds what RAFS cannot.
    #[error("entry {entry:?} (header at byte {at}): {what}")]
    Entry {
        /// The entry's path as the archive spells it.
        entry: String,
        /// Offset of its header in the tar stream.
        at: u64,
        /// What is wrong.
        what: String,
    },
    /// The stream could not be read (an I/O error, corrupt compression).
    #[error("{context}: cannot read byte {pos} of the tar stream")]
    Read {
        /// What was being read.
        context: String,
        /// Where in the tar stream.
        pos: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The blob writer stopped; its own error is the one reported.
    #[error("the blob writer stopped")]
    Stopped,
}

/// Hard-link keys of this layer's inodes (`overlay::Entry::link`): the parent image's are
/// in layer 0.
const LAYER: u32 = 1;
/// Longest symlink target, as Linux takes them.
const MAX_SYMLINK: usize = 4095;
/// Most chunks one file may have: as many as a blob holds (upstream refuses more too).
const MAX_FILE_CHUNKS: u64 = 1 << 24;

/// Reads the tar layer at `path` (a file or a FIFO) in one pass, chunking file data into
/// `blob` as it comes. Returns the layer as a nested tree whose files carry their chunks,
/// and the chunker's account.
pub fn chunk_layer<W: Write>(
    path: &Path,
    format: TarFormat,
    whiteouts: WhiteoutSpec,
    opts: ChunkOptions,
    blob: &mut BlobWriter<W>,
    known: KnownChunks,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<(Entry, chunker::Chunked), BuildError> {
    let (layer, chunked) = chunker::chunk_stream(opts, blob, known, progress, |sink| {
        read_layer(path, format, whiteouts, sink)
    })?;
    Ok((layer.into_entry(&chunked.file_chunks), chunked))
}

/// A byte counter on the compressed side of a gzip stream, to place corruption.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens the layer and reads it member by member into a [`Layer`].
fn read_layer(
    path: &Path,
    format: TarFormat,
    whiteouts: WhiteoutSpec,
    sink: &mut ChunkSink,
) -> Result<Layer, BuildError> {
    let file =
        File::open(path).map_err(|e| BuildError::io(path, "cannot open the tar layer", e))?;
    let meta = file
        .metadata()
        .map_err(|e| BuildError::io(path, "cannot stat the tar layer", e))?;
    if meta.is_dir() {
        return Err(BuildError::Source {
            path: path.to_path_buf(),
            what: "is a directory, not a tar layer (use --type dir-rafs)".into(),
        });
    }
    if meta.file_type().is_fifo() {
        crate::builder::output::widen_pipe(&file);
    }
    let compressed = Arc::new(AtomicU64::new(0));
    let tar_err = |source: TarError| BuildError::Tar {
        path: path.to_path_buf(),
        compressed_read: (format != TarFormat::Tar).then(|| compressed.load(Ordering::Relaxed)),
        source,
    };
    let reader: Box<dyn Read> = match format {
        TarFormat::Tar => Box::new(BufReader::with_capacity(1 << 16, file)),
        TarFormat::TarGz | TarFormat::EStargz => {
            let mut buffered = BufReader::with_capacity(
                1 << 16,
                Counted {
                    inner: file,
                    count: compressed.clone(),
                },
            );
            let head = buffered.fill_buf().map_err(|source| {
                tar_err(TarError::Read {
                    context: "the gzip header".into(),
                    pos: 0,
                    source,
                })
            })?;
            if !head.is_empty() && !head.starts_with(&[0x1f, 0x8b]) {
                let shown: Vec<String> = head.iter().take(2).map(|b| format!("{b:02x}")).collect();
                return Err(BuildError::Source {
                    path: path.to_path_buf(),
                    what: format!(
                        "is not gzip-compressed: it starts with {}, not 1f 8b",
                        shown.join(" ")
                    ),
                });
            }
            Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
        }
    };
    let mut stream = TarStream::new(reader);
    let mut layer = Layer::new(format, whiteouts);
    let mut read_all = || -> Result<u64, TarError> {
        while let Some(member) = stream.next_member()? {
            layer.add(member, &mut stream, sink)?;
        }
        stream.finish()
    };
    let drained = read_all().map_err(tar_err)?;
    log::debug!(
        "{}: {} bytes of tar stream, {drained} after the end of the archive",
        path.display(),
        stream.position()
    );
    Ok(layer)
}

/// A layer being read: the nested tree so far and where each inode's data went.
struct Layer {
    root: Entry,
    /// Inodes made so far (the next one's number).
    inodes: u64,
    /// The chunker's key for each inode with data.
    files: HashMap<u64, FileKey>,
    format: TarFormat,
    whiteouts: WhiteoutSpec,
}

/// `path` split into its names: `.` and empty names dropped (`./a//b/` is `a/b`), `..`
/// refused, each name at most 255 bytes, at most `MAX_DEPTH` of them.
fn split_path(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    if path.contains(&0) {
        return Err("a NUL byte in the name".into());
    }
    let mut names = Vec::new();
    for name in path.split(|&b| b == b'/') {
        match name {
            b"" | b"." => {}
            b".." => return Err("a '..' component in the name: it would leave the layer".into()),
            n if n.len() > 255 => {
                return Err(format!("a name of {} bytes; the limit is 255", n.len()))
            }
            n => names.push(n),
        }
    }
    if names.len() > crate::reader::MAX_DEPTH {
        return Err(format!(
            "{} levels deep; the limit is {}",
            names.len(),
            crate::reader::MAX_DEPTH
        ));
    }
    Ok(names)
}

impl Layer {
    fn new(format: TarFormat, whiteouts: WhiteoutSpec) -> Self {
        Layer {
            root: Entry {
                node: Node::implied_dir(PathBuf::from("/")),
                link: None,
                children: BTreeMap::new(),
            },
            inodes: 0,
            files: HashMap::new(),
            format,
            whiteouts,
        }
    }

    /// Adds one member, reading its data from `stream` into `sink` if it is a file.
    fn add<R: Read>(
        &mut self,
        m: Member,
        stream: &mut TarStream<R>,
        sink: &mut ChunkSink,
    ) -> Result<(), TarError> {
        let bad = |what: String| TarError::Entry {
            entry: m.shown(),
            at: m.header_at,
            what,
        };
        let names = split_path(&m.path).map_err(&bad)?;
        let joined = names.join(&b'/');
        let source = PathBuf::from(OsStr::from_bytes(&joined));
        if self.format == TarFormat::EStargz
            && matches!(
                names.as_slice(),
                [b"stargz.index.json" | b".prefetch.landmark" | b".no.prefetch.landmark"]
            )
        {
            return Ok(()); // the eStargz format's own; its data is skipped
        }
        // The directory it goes in exists (or is made) before its data is read.
        let (name, dirs) = match names.split_last() {
            Some((name, dirs)) => (*name, dirs),
            None if m.kind == MemberKind::Dir => {
                let node = self
                    .node(&m, Kind::Dir(Vec::new()), source, 0)
                    .map_err(&bad)?;
                self.root.node = node;
                return Ok(());
            }
            None => return Err(bad("the archive's root must be a directory".into())),
        };
        self.dir_at(dirs).map_err(&bad)?;
        let mut entry = match m.kind {
            MemberKind::HardLink => self.hard_link(&m).map_err(&bad)?,
            MemberKind::File => {
                let chunks = m.size.div_ceil(u64::from(sink.chunk_size()));
                if chunks > MAX_FILE_CHUNKS {
                    return Err(bad(format!(
                        "a file of {} bytes: {chunks} chunks, more than the {MAX_FILE_CHUNKS} RAFS holds",
                        m.size
                    )));
                }
                self.inodes += 1;
                let inode = self.inodes;
                let whiteout =
                    self.whiteouts == WhiteoutSpec::Oci && name.starts_with(OCI_WHITEOUT_PREFIX);
                if m.size > 0 && !whiteout {
                    let key = sink.start_file(source.clone());
                    read_file(&m, key, stream, sink)?;
                    self.files.insert(inode, key);
                }
                Entry {
                    node: self.node(&m, Kind::File, source, 0).map_err(&bad)?,
                    link: Some((LAYER, inode)),
                    children: BTreeMap::new(),
                }
            }
            kind => {
                let (kind, rdev) = match kind {
                    MemberKind::Dir => (Kind::Dir(Vec::new()), 0),
                    MemberKind::Symlink => {
                        if m.link.is_empty() || m.link.len() > MAX_SYMLINK || m.link.contains(&0) {
                            return Err(bad(format!(
                                "a symlink target must be 1 to {MAX_SYMLINK} bytes without NUL; this one has {}",
                                m.link.len()
                            )));
                        }
                        (Kind::Symlink(m.link.clone()), 0)
                    }
                    MemberKind::CharDevice | MemberKind::BlockDevice => {
                        if m.major > 0xfff || m.minor > 0xf_ffff {
                            return Err(bad(format!(
                                "device {}:{} does not fit RAFS v6's 32-bit device numbers",
                                m.major, m.minor
                            )));
                        }
                        let rdev = libc::makedev(m.major as u32, m.minor as u32);
                        let kind = if kind == MemberKind::CharDevice {
                            Kind::CharDevice
                        } else {
                            Kind::BlockDevice
                        };
                        (kind, rdev)
                    }
                    _ => (Kind::Fifo, 0),
                };
                let is_dir = matches!(kind, Kind::Dir(_));
                let node = self.node(&m, kind, source, rdev).map_err(&bad)?;
                let link = if is_dir {
                    None
                } else {
                    self.inodes += 1;
                    Some((LAYER, self.inodes))
                };
                Entry {
                    node,
                    link,
                    children: BTreeMap::new(),
                }
            }
        };
        let dir = self.dir_at(dirs).map_err(&bad)?;
        match dir.children.get_mut(name) {
            // A directory over a directory: new metadata, the children stay.
            Some(old) if is_dir(old) && is_dir(&entry) => {
                old.node = std::mem::replace(&mut entry.node, placeholder_node());
            }
            _ => {
                dir.children.insert(name.to_vec(), entry);
            }
        }
        Ok(())
    }

    /// The node of member `m`, of `kind`.
    fn node(&self, m: &Member, kind: Kind, source: PathBuf, rdev: u64) -> Result<Node, String> {
        let file_type = match kind {
            Kind::Dir(_) => libc::S_IFDIR,
            Kind::File => libc::S_IFREG,
            Kind::Symlink(_) => libc::S_IFLNK,
            Kind::CharDevice => libc::S_IFCHR,
            Kind::BlockDevice => libc::S_IFBLK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        };
        for (name, value) in &m.xattrs {
            crate::builder::source::dir::check_xattr(name, value).map_err(|e| e.to_string())?;
        }
        crate::builder::source::dir::check_xattrs(&m.xattrs).map_err(|e| e.to_string())?;
        let size = match &kind {
            Kind::File => m.size,
            Kind::Symlink(target) => target.len() as u64,
            _ => 0,
        };
        let is_dir = matches!(kind, Kind::Dir(_));
        let name = source.file_name().map(|n| n.as_bytes().to_vec());
        Ok(Node {
            name: name.unwrap_or_default(),
            source,
            parent: 0,
            data: if kind == Kind::File {
                FileData::Chunked(Vec::new())
            } else {
                FileData::Source
            },
            kind,
            mode: file_type | m.perm,
            uid: m.uid,
            gid: m.gid,
            size,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
            rdev,
            xattrs: m.xattrs.clone(),
            hardlink_of: None,
            nlink: if is_dir { 2 } else { 1 },
        })
    }

    /// The directory at `dirs` below the root, made as upstream makes a directory the
    /// archive leaves out where nothing is; an error where something else is.
    fn dir_at(&mut self, dirs: &[&[u8]]) -> Result<&mut Entry, String> {
        let mut at = &mut self.root;
        for (depth, name) in dirs.iter().enumerate() {
            at = at.children.entry(name.to_vec()).or_insert_with(|| {
                let source = dirs[..=depth].join(&b'/');
                Entry {
                    node: Node::implied_dir(PathBuf::from(OsStr::from_bytes(&source))),
                    link: None,
                    children: BTreeMap::new(),
                }
            });
            if !is_dir(at) {
                return Err(format!(
                    "{:?} is not a directory in the archive",
                    String::from_utf8_lossy(&dirs[..=depth].join(&b'/'))
                ));
            }
        }
        Ok(at)
    }

    /// Another name for the inode an earlier member made at `m.link`.
    fn hard_link(&self, m: &Member) -> Result<Entry, String> {
        let shown = String::from_utf8_lossy(&m.link);
        let names = split_path(&m.link).map_err(|e| format!("hard link target {shown:?}: {e}"))?;
        let mut at = &self.root;
        for name in &names {
            at = at.children.get(*name).ok_or_else(|| {
                format!("hard link to {shown:?}, which no earlier entry of the archive made")
            })?;
        }
        if is_dir(at) {
            return Err(format!("hard link to {shown:?}, a directory"));
        }
        let mut node = at.node.clone();
        node.source = PathBuf::from(OsStr::from_bytes(&m.path));
        Ok(Entry {
            node,
            link: at.link,
            children: BTreeMap::new(),
        })
    }

    /// The nested tree, each file carrying its chunks from `file_chunks` (by key).
    fn into_entry(self, file_chunks: &[Vec<chunker::ChunkRef>]) -> Entry {
        let mut root = self.root;
        let mut stack: Vec<&mut Entry> = vec![&mut root];
        while let Some(e) = stack.pop() {
            if let (Kind::File, Some((_, inode))) = (&e.node.kind, e.link) {
                if let Some(key) = self.files.get(&inode) {
                    let chunks = file_chunks.get(key.0).cloned().unwrap_or_default();
                    e.node.data = FileData::Chunked(chunks);
                }
            }
            stack.extend(e.children.values_mut());
        }
        root
    }
}

fn is_dir(e: &Entry) -> bool {
    matches!(e.node.kind, Kind::Dir(_))
}

/// Reads the data of file member `m` from `stream` into `sink`, chunk by chunk.
fn read_file<R: Read>(
    m: &Member,
    key: FileKey,
    stream: &mut TarStream<R>,
    sink: &mut ChunkSink,
) -> Result<(), TarError> {
    let chunk_size = u64::from(sink.chunk_size());
    let mut offset = 0u64;
    while offset < m.size {
        let len = (m.size - offset).min(chunk_size) as usize;
        if !sink.push_with(key, offset, len, |buf| stream.read_data(buf, len))? {
            return Err(TarError::Stopped);
        }
        offset += len as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::overlay;
    use crate::builder::tree::Tree;
    use crate::format::v6::tables::ChunkInfo;
    use crate::format::{Compressor, Digester};

    const CS: u32 = 0x1000;

    /// A tar made block by block.
    #[derive(Default)]
    struct Tar(Vec<u8>);

    impl Tar {
        /// A ustar header: mode 0644, owner 0:0, mtime 1000, then `edit`.
        fn header(
            &mut self,
            path: &str,
            typ: u8,
            size: u64,
            edit: impl FnOnce(&mut tar::Header),
        ) -> &mut Self {
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(tar::EntryType::new(typ));
            h.set_size(size);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1000);
            edit(&mut h);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self
        }

        /// Data and its padding.
        fn data(&mut self, bytes: &[u8]) -> &mut Self {
            self.0.extend_from_slice(bytes);
            self.0.resize(self.0.len().next_multiple_of(512), 0);
            self
        }

        fn file(&mut self, path: &str, bytes: &[u8]) -> &mut Self {
            self.header(path, b'0', bytes.len() as u64, |_| {})
                .data(bytes)
        }

        fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
            self.header(path, b'5', 0, |h| h.set_mode(mode))
        }

        fn link(&mut self, path: &str, typ: u8, target: &str) -> &mut Self {
            self.header(path, typ, 0, |h| h.set_link_name(target).unwrap())
        }

        /// A PAX extended header for the next member.
        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            let mut data = Vec::new();
            for (key, value) in records {
                let body = 1 + key.len() + 1 + value.len() + 1;
                let mut len = body + 1;
                while len != body + len.to_string().len() {
                    len = body + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {key}=").as_bytes());
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            self.header("PaxHeaders/x", b'x', data.len() as u64, |_| {})
                .data(&data)
        }

        fn end(&mut self) -> Vec<u8> {
            let mut out = std::mem::take(&mut self.0);
            out.extend_from_slice(&[0; 1024]);
            out
        }
    }

    /// A layer read from `bytes` as the build would, onto an empty root.
    struct Read {
        tree: Tree,
        table: Vec<ChunkInfo>,
        blob: Vec<u8>,
    }

    fn read_as(bytes: &[u8], format: TarFormat, spec: WhiteoutSpec) -> Result<Read, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.tar");
        std::fs::write(&path, bytes).unwrap();
        let opts = ChunkOptions {
            chunk_size: CS,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            threads: 2,
        };
        let mut blob = Vec::new();
        let mut writer = BlobWriter::new(&mut blob, opts.compressor, opts.digester, CS);
        let (upper, _) = chunk_layer(&path, format, spec, opts, &mut writer, &|_| None, &|_| {})
            .map_err(|e| crate::error::Chain(&e).to_string())?;
        let (_, table) = writer.finish(None).unwrap();
        let mut root = overlay::empty_root(&upper.node);
        overlay::apply(&mut root, upper, spec);
        Ok(Read {
            tree: overlay::flatten(root),
            table,
            blob,
        })
    }

    fn read(bytes: &[u8]) -> Result<Read, String> {
        read_as(bytes, TarFormat::Tar, WhiteoutSpec::Oci)
    }

    impl Read {
        fn node(&self, path: &str) -> &Node {
            let id = (0..self.tree.nodes.len())
                .find(|&i| self.tree.image_path(i) == path.as_bytes())
                .unwrap_or_else(|| panic!("{path} is not in the tree"));
            &self.tree.nodes[id]
        }

        fn has(&self, path: &str) -> bool {
            (0..self.tree.nodes.len()).any(|i| self.tree.image_path(i) == path.as_bytes())
        }

        /// A file's content put back together from the blob.
        fn content(&self, path: &str) -> Vec<u8> {
            let node = self.node(path);
            let node = match node.hardlink_of {
                Some(first) => &self.tree.nodes[first],
                None => node,
            };
            let FileData::Chunked(refs) = &node.data else {
                panic!("{path}: no chunks");
            };
            let mut out = Vec::new();
            for r in refs {
                let chunker::ChunkRef::New(i) = r else {
                    panic!("{path}: a known chunk")
                };
                let info = &self.table[*i as usize];
                let at = info.compressed_offset as usize;
                let stored = &self.blob[at..at + info.compressed_size as usize];
                if info.compressed {
                    let mut raw = vec![0; info.uncompressed_size as usize];
                    crate::storage::compress::decompress(Compressor::Zstd, stored, &mut raw)
                        .unwrap();
                    out.extend_from_slice(&raw);
                } else {
                    out.extend_from_slice(stored);
                }
            }
            out
        }
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 31 + seed as usize * 7 + i / 253) as u8)
            .collect()
    }

    #[test]
    fn members_become_the_tree_extracting_the_archive_gives() {
        let big = bytes(2 * CS as usize + 100, 1);
        let tar = Tar::default()
            .dir("./", 0o700)
            .file("./a/b/file", &big)
            .file("x", b"first x")
            .link("./x", b'2', "file")
            .dir("d", 0o755)
            .file("d/kept", b"kept")
            .header("d/", b'5', 0, |h| {
                h.set_mode(0o711);
                h.set_uid(7);
            })
            .link("h", b'1', "a/b/file")
            .file("/abs//./name", b"abs")
            .pax(&[
                ("mtime", b"1700000000.123456789"),
                ("uid", b"4000000000"),
                ("SCHILY.xattr.user.nl", b"a\nb"),
                ("SCHILY.xattr.user.empty", b""),
                ("size", b"3"),
            ])
            .file("pax", b"pax")
            .header("chr", b'3', 0, |h| {
                h.set_device_major(300).unwrap();
                h.set_device_minor(70000).unwrap();
            })
            .header("fifo", b'6', 0, |_| {})
            .end();
        let r = read(&tar).unwrap();
        let root = r.node("/");
        assert_eq!((root.mode, root.mtime), (libc::S_IFDIR | 0o700, 1000));
        // Directories the archive leaves out, as upstream makes them.
        for implied in ["/a", "/a/b"] {
            let n = r.node(implied);
            assert_eq!(
                (n.mode, n.uid, n.gid, n.mtime, n.mtime_nsec),
                (libc::S_IFDIR | 0o755, 0, 0, 0, 0),
                "{implied}"
            );
        }
        assert_eq!(r.content("/a/b/file"), big);
        assert_eq!(
            r.node("/x").kind,
            Kind::Symlink(b"file".to_vec()),
            "replaced"
        );
        let d = r.node("/d");
        assert_eq!(
            (d.mode & 0o7777, d.uid),
            (0o711, 7),
            "the later directory's metadata"
        );
        assert_eq!(
            r.content("/d/kept"),
            b"kept",
            "and the earlier one's children"
        );
        // One inode, two names.
        let (file, h) = (r.node("/a/b/file"), r.node("/h"));
        assert!(h.hardlink_of.is_some() || file.hardlink_of.is_some());
        let first = if h.hardlink_of.is_some() { file } else { h };
        assert_eq!(first.nlink, 2);
        assert_eq!(r.content("/h"), big);
        assert_eq!(r.content("/abs/name"), b"abs");
        let pax = r.node("/pax");
        assert_eq!(
            (pax.mtime, pax.mtime_nsec, pax.uid),
            (1_700_000_000, 123_456_789, 4_000_000_000)
        );
        assert_eq!(
            pax.xattrs,
            vec![
                (b"user.empty".to_vec(), Vec::new()),
                (b"user.nl".to_vec(), b"a\nb".to_vec())
            ]
        );
        assert_eq!(r.content("/pax"), b"pax");
        let chr = r.node("/chr");
        assert_eq!(
            (chr.kind.clone(), chr.rdev),
            (Kind::CharDevice, libc::makedev(300, 70000))
        );
        assert_eq!(r.node("/fifo").kind, Kind::Fifo);
    }

    #[test]
    fn replacing_a_hard_link_target_leaves_the_link_its_inode() {
        let tar = Tar::default()
            .file("a", b"old a")
            .link("b", b'1', "a")
            .link("c", b'1', "b")
            .file("a", b"new a")
            .end();
        let r = read(&tar).unwrap();
        assert_eq!(r.content("/a"), b"new a");
        assert_eq!(r.content("/b"), b"old a");
        assert_eq!(r.content("/c"), b"old a");
        assert_eq!(r.node("/a").nlink, 1);
        let (b, c) = (r.node("/b"), r.node("/c"));
        assert_eq!(b.nlink + c.nlink, 3, "b and c share one inode of 2 links");
    }

    #[test]
    fn whiteouts_follow_the_spec_and_an_oci_whiteout_stores_no_data() {
        let tar = Tar::default()
            .file(".wh.gone", b"whiteout data")
            .file("kept", b"kept")
            .end();
        let r = read(&tar).unwrap();
        assert!(!r.has("/.wh.gone"));
        assert_eq!(r.table.len(), 1, "only kept's data is stored");
        let literal = read_as(&tar, TarFormat::Tar, WhiteoutSpec::None).unwrap();
        assert_eq!(literal.content("/.wh.gone"), b"whiteout data");
    }

    #[test]
    fn sparse_files_read_back_with_holes_as_zeros() {
        let (one, two) = (bytes(700, 3), bytes(300, 4));
        let mut want = vec![0u8; 3 * CS as usize + 10];
        want[1000..1700].copy_from_slice(&one);
        let end = want.len();
        want[end - 300..].copy_from_slice(&two);
        let real = want.len().to_string();
        let map = format!("1000,700,{},300", end - 300);
        let stored = [one.clone(), two.clone()].concat();
        // PAX 0.1: the map in a record.
        let pax01 = Tar::default()
            .pax(&[
                ("GNU.sparse.size", real.as_bytes()),
                ("GNU.sparse.numblocks", b"2"),
                ("GNU.sparse.name", b"sparse"),
                ("GNU.sparse.map", map.as_bytes()),
            ])
            .file("GNUSparseFile.1/sparse", &stored)
            .end();
        // PAX 0.0: the map in repeated records.
        let off2 = (end - 300).to_string();
        let pax00 = Tar::default()
            .pax(&[
                ("GNU.sparse.size", real.as_bytes()),
                ("GNU.sparse.numblocks", b"2"),
                ("GNU.sparse.offset", b"1000"),
                ("GNU.sparse.numbytes", b"700"),
                ("GNU.sparse.offset", off2.as_bytes()),
                ("GNU.sparse.numbytes", b"300"),
            ])
            .file("sparse", &stored)
            .end();
        // PAX 1.0: the map opens the data, padded to a block.
        let mut data10 = format!("2\n1000\n700\n{}\n300\n", end - 300).into_bytes();
        data10.resize(512, 0);
        data10.extend_from_slice(&stored);
        let pax10 = Tar::default()
            .pax(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"sparse"),
                ("GNU.sparse.realsize", real.as_bytes()),
            ])
            .file("GNUSparseFile.1/sparse", &data10)
            .end();
        // GNU: the map in the header.
        let mut gnu = Tar::default();
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..6].copy_from_slice(b"sparse");
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(stored.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1000);
        let g = h.as_gnu_mut().unwrap();
        let octal = |field: &mut [u8; 12], v: usize| {
            field.copy_from_slice(format!("{v:011o}\0").as_bytes())
        };
        octal(&mut g.sparse[0].offset, 1000);
        octal(&mut g.sparse[0].numbytes, 700);
        octal(&mut g.sparse[1].offset, end - 300);
        octal(&mut g.sparse[1].numbytes, 300);
        octal(&mut g.realsize, end);
        h.set_cksum();
        gnu.0.extend_from_slice(h.as_bytes());
        let gnu = gnu.data(&stored).file("after", b"after").end();
        for (name, tar) in [("0.1", pax01), ("0.0", pax00), ("1.0", pax10), ("gnu", gnu)] {
            let r = read(&tar).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!r.has("/GNUSparseFile.1"), "{name}");
            assert_eq!(r.node("/sparse").size, end as u64, "{name}");
            assert!(r.content("/sparse") == want, "{name}");
        }
    }

    #[test]
    fn estargz_entries_of_the_format_are_left_out() {
        let tar = Tar::default()
            .file("stargz.index.json", b"{}")
            .file(".prefetch.landmark", &[0xf])
            .file("d/stargz.index.json", b"kept")
            .end();
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("l.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let bytes = std::fs::read(&gz).unwrap();
        let r = read_as(&bytes, TarFormat::EStargz, WhiteoutSpec::Oci).unwrap();
        assert!(!r.has("/stargz.index.json") && !r.has("/.prefetch.landmark"));
        assert_eq!(r.content("/d/stargz.index.json"), b"kept");
        let r = read_as(&bytes, TarFormat::TarGz, WhiteoutSpec::Oci).unwrap();
        assert!(r.has("/stargz.index.json") && r.has("/.prefetch.landmark"));
    }

    /// Every bad archive is an error naming the entry (or the header) and where.
    #[test]
    fn bad_archives_are_refused_naming_the_entry_and_offset() {
        let good = Tar::default()
            .file("a", b"aaaa")
            .file("b", &bytes(3000, 5))
            .end();
        let mut bad_sum = good.clone();
        bad_sum[512 + 512 + 3] ^= 1; // b's header
        let mut not_octal = good.clone();
        not_octal[1024 + 124] = b'9'; // b's size field, with a checksum to match
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&not_octal[1024..1536]);
        h.set_cksum();
        not_octal[1024..1536].copy_from_slice(h.as_bytes());
        let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
            (
                "bad checksum",
                bad_sum,
                &["tar header at byte 1024", "after entry \"a\"", "checksum"],
            ),
            ("bad size", not_octal, &["tar header at byte 1024", "size"]),
            (
                "truncated data",
                good[..1536 + 1000].to_vec(),
                &[
                    "entry \"b\" (header at byte 1024)",
                    "ends at byte 2536",
                    "2000 bytes short",
                ],
            ),
            (
                "truncated header",
                good[..1024 + 100].to_vec(),
                &["tar header at byte 1024", "ends 100 bytes into"],
            ),
            (
                "PAX size past the end",
                Tar::default()
                    .pax(&[("size", b"999999")])
                    .file("big", b"tiny")
                    .0
                    .clone(),
                &[
                    "entry \"big\" (header at byte 1024)",
                    "short of the entry's data",
                ],
            ),
            (
                "hard link to nothing",
                Tar::default()
                    .file("a", b"a")
                    .link("h", b'1', "missing")
                    .end(),
                &[
                    "entry \"h\" (header at byte 1024)",
                    "\"missing\"",
                    "no earlier entry",
                ],
            ),
            (
                "dot-dot",
                Tar::default().file("a/../../etc/x", b"x").end(),
                &["entry \"a/../../etc/x\" (header at byte 0)", "'..'"],
            ),
            (
                "file as a directory",
                Tar::default().file("f", b"f").file("f/g", b"g").end(),
                &[
                    "entry \"f/g\" (header at byte 1024)",
                    "\"f\" is not a directory",
                ],
            ),
            (
                "root as a file",
                Tar::default().file(".", b"").end(),
                &["entry \".\"", "root must be a directory"],
            ),
            (
                "bad PAX record",
                Tar::default()
                    .pax(&[("mtime", b"12x")])
                    .file("m", b"m")
                    .end(),
                &["entry \"m\" (header at byte 1024)", "malformed PAX mtime"],
            ),
            (
                "PAX header alone",
                Tar::default().pax(&[("path", b"p")]).end(),
                &["tar header at byte 0", "archive ends after them"],
            ),
            (
                "xattr RAFS cannot store",
                Tar::default()
                    .pax(&[("SCHILY.xattr.bad.ns", b"v")])
                    .file("x", b"x")
                    .end(),
                &["entry \"x\" (header at byte 1024)", "bad.ns"],
            ),
            (
                "PAX size of 2^64-1 on a directory",
                Tar::default()
                    .pax(&[("size", b"18446744073709551615")])
                    .dir("d", 0o755)
                    .end(),
                &[
                    "entry \"d\" (header at byte 1024)",
                    "short of the entry's data",
                ],
            ),
            (
                "sparse file too big",
                Tar::default()
                    .pax(&[
                        ("GNU.sparse.size", b"4611686018427387904"),
                        ("GNU.sparse.map", b"0,0"),
                    ])
                    .file("huge", b"")
                    .end(),
                &[
                    "entry \"huge\" (header at byte 1024)",
                    "more than the 16777216",
                ],
            ),
            (
                "device too big",
                Tar::default()
                    .header("dev", b'4', 0, |h| h.set_device_major(5000).unwrap())
                    .end(),
                &["entry \"dev\" (header at byte 0)", "5000:0"],
            ),
        ];
        for (what, tar, expect) in cases {
            let err = match read(&tar) {
                Ok(_) => panic!("{what}: read"),
                Err(e) => e,
            };
            assert!(err.starts_with("tar layer "), "{what}: {err}");
            for e in expect {
                assert!(err.contains(e), "{what}: {err:?} lacks {e:?}");
            }
        }
        let err = read_as(&good, TarFormat::TarGz, WhiteoutSpec::Oci)
            .err()
            .unwrap();
        assert!(err.contains("not gzip-compressed"), "{err}");
    }

    #[test]
    fn paths_are_normalised_and_dot_dot_refused() {
        let ok: [(&str, &[&str]); 5] = [
            ("./a/b", &["a", "b"]),
            ("/a//b/", &["a", "b"]),
            (".", &[]),
            ("///", &[]),
            ("a/./b", &["a", "b"]),
        ];
        for (path, want) in ok {
            let got = split_path(path.as_bytes()).unwrap();
            let want: Vec<&[u8]> = want.iter().map(|s| s.as_bytes()).collect();
            assert_eq!(got, want, "{path}");
        }
        for bad in ["..", "a/..", "../a", "a/../b"] {
            assert!(
                split_path(bad.as_bytes()).unwrap_err().contains("'..'"),
                "{bad}"
            );
        }
        assert!(split_path(&[b'n'; 256]).unwrap_err().contains("255"));
    }

    /// No single-byte damage of an archive panics: each read is a tree or an error.
    /// (Sparse members are left out: damage to a real size may ask for gigabytes of
    /// zeros, which is no error, only slow.)
    #[test]
    fn no_single_byte_damage_panics() {
        let tar = Tar::default()
            .dir("./", 0o755)
            .pax(&[
                ("mtime", b"1700000000.5"),
                ("SCHILY.xattr.user.a", b"x\ny"),
                ("path", b"long/path/name"),
            ])
            .file("short", &bytes(CS as usize + 10, 9))
            .link("hard", b'1', "long/path/name")
            .link("sym", b'2', "short")
            .header("dev", b'3', 0, |h| h.set_device_major(1).unwrap())
            .end();
        let mut reads = 0;
        for at in (0..tar.len() - 1024).step_by(3) {
            for flip in [0x01u8, 0xff] {
                let mut bad = tar.clone();
                bad[at] ^= flip;
                let _ = read(&bad);
                reads += 1;
            }
        }
        for cut in (0..tar.len()).step_by(97) {
            let _ = read(&tar[..cut]);
        }
        assert!(reads > 2000);
    }
}
