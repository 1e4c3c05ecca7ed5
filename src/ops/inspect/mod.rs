//! `inspect`: answers questions about one image's metadata, as upstream 2.2.0's
//! `nydus-image inspect` does: the superblock's inode count, the blob table, the
//! prefetch table with each entry's paths, a directory listing, one entry's attributes
//! and chunks, the files using the chunk at a blob offset, and the paths of an inode.
//!
//! [`Inspector`] keeps the current directory of an interactive session and answers one
//! [`Request`] at a time with a typed [`Reply`]; [`Reply::json`] is what upstream's
//! request mode (`-R`) prints as JSON and [`Reply::text`] what its shell prints. Values
//! derived from the image (inode numbers are nids, offsets, sizes) are upstream's for
//! the same bootstrap; field names are upstream's. Everything is read through
//! [`crate::reader::Image`], so a RAFS version the reader opens needs nothing here.

mod render;

use std::collections::HashMap;

use serde::Serialize;
use thiserror::Error;

use crate::reader::{Image, Nid, ReadError};

/// The requests upstream's `inspect` accepts, as `help` lists them.
pub const USAGE: &str = "
    stats:              Display RAFS filesystesm metadata
    ls:                 Show files in current directory
    cd DIR:             Change current directory
    stat FILE_NAME:     Show particular information of RAFS file
    blobs:              Show blob table
    prefetch:           Show prefetch table
    chunk OFFSET:       List basic info of a single chunk together with a list of files that share it
    icheck INODE:       Show path of the inode and basic information
    exit:               Exit
        ";

/// Why a request could not be answered.
#[derive(Debug, Error)]
pub enum InspectError {
    /// The request is not one of those [`USAGE`] lists, or lacks its argument.
    #[error("unsupported request {request:?}: the valid ones are stats, ls, cd DIR, stat FILE_NAME, blobs, prefetch, chunk OFFSET, icheck INODE, help, exit")]
    Unsupported {
        /// The request as given.
        request: String,
    },
    /// An argument that should be a number is not.
    #[error("{what} {value:?} is not a decimal number")]
    BadNumber {
        /// Which argument.
        what: &'static str,
        /// What was given.
        value: String,
    },
    /// Reading the image failed.
    #[error("inspecting {}", image.display())]
    Read {
        /// The image.
        image: std::path::PathBuf,
        /// What failed.
        #[source]
        source: ReadError,
    },
}

/// One request, parsed from a line such as `stat big` or `chunk 1048576`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The superblock's inode count (and, in the shell, the superblock's tables).
    Stats,
    /// The entries of the current directory.
    Ls,
    /// Change the current directory to a child, `.` or `..`.
    Cd(String),
    /// Attributes (and chunks, for a regular file) of an entry of the current directory.
    Stat(String),
    /// The blob table.
    Blobs,
    /// The prefetch table.
    Prefetch,
    /// The files using the chunk at this compressed offset in its blob.
    Chunk(u64),
    /// The paths and attributes of an inode (a nid).
    Icheck(u64),
    /// The list of requests.
    Help,
    /// End the session.
    Exit,
}

impl Request {
    /// Parses one line: the first word is the request, the second its argument; extra
    /// words are ignored as upstream ignores them. `Ok(None)` for a blank line.
    pub fn parse(line: &str) -> Result<Option<Request>, InspectError> {
        let mut words = line.split_ascii_whitespace();
        let Some(cmd) = words.next() else {
            return Ok(None);
        };
        let arg = words.next();
        let number = |what, value: &str| {
            value.parse::<u64>().map_err(|_| InspectError::BadNumber {
                what,
                value: value.to_string(),
            })
        };
        let req = match (cmd, arg) {
            ("help", _) => Request::Help,
            ("exit" | "q", _) => Request::Exit,
            ("stats", None) => Request::Stats,
            ("ls", None) => Request::Ls,
            ("cd", Some(dir)) => Request::Cd(dir.to_string()),
            ("stat", Some(name)) => Request::Stat(name.to_string()),
            ("blobs", None) => Request::Blobs,
            ("prefetch", None) => Request::Prefetch,
            ("chunk", Some(offset)) => Request::Chunk(number("chunk offset", offset)?),
            ("icheck", Some(ino)) => Request::Icheck(number("inode", ino)?),
            _ => {
                return Err(InspectError::Unsupported {
                    request: line.trim().to_string(),
                })
            }
        };
        Ok(Some(req))
    }
}

/// The superblock figures upstream's `stats` shows.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Inodes the superblock declares (upstream's `inodes_count`).
    pub inodes_count: u64,
    /// RAFS version (5 or 6).
    #[serde(skip)]
    pub version: u32,
    /// Chunk size in bytes.
    #[serde(skip)]
    pub chunk_size: u32,
    /// The root's inode number.
    #[serde(skip)]
    pub root_inode: u64,
    /// Superblock flag names.
    #[serde(skip)]
    pub flags: Vec<&'static str>,
    /// Blob table offset and size in bytes.
    #[serde(skip)]
    pub blob_table: (u64, u64),
    /// Prefetch table offset and number of entries.
    #[serde(skip)]
    pub prefetch_table: (u64, u64),
    /// Chunk table offset and size in bytes.
    #[serde(skip)]
    pub chunk_table: (u64, u64),
}

/// One blob as upstream's `blobs` request reports it (fields in upstream's JSON order).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BlobInfo {
    /// Blob id.
    pub blob_id: String,
    /// The blob table's compressed size.
    pub compressed_size: u64,
    /// The blob table's uncompressed size.
    pub decompressed_size: u64,
    /// Start of the blob's readahead range (RAFS v5's blob table field; v6 has none: 0).
    pub readahead_offset: u64,
    /// Size of the readahead range (0 in RAFS v6).
    pub readahead_size: u64,
    /// What the shell shows besides.
    #[serde(skip)]
    pub detail: BlobDetail,
}

/// A blob's other blob table fields, shown by the shell.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BlobDetail {
    /// Position in the blob table.
    pub index: usize,
    /// Feature names.
    pub features: Vec<&'static str>,
    /// Compressed chunk data size.
    pub compressed_data_size: u64,
    /// Chunk compressor.
    pub compressor: &'static str,
    /// Chunk digester.
    pub digester: &'static str,
    /// Chunk size.
    pub chunk_size: u32,
    /// Chunks in the blob.
    pub chunk_count: u32,
    /// Chunk info array: compressor, offset, compressed and uncompressed size.
    pub meta: (&'static str, u64, u64, u64),
    /// TOC digest (hex) and size.
    pub toc: (String, u32),
}

/// One slot of the prefetch table: its inode and that inode's paths (upstream's
/// `inode` and `path`; a directory's path ends in `/`, a zero slot has none).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PrefetchEntry {
    /// The nid in the slot.
    pub inode: u64,
    /// Its paths.
    pub path: Vec<String>,
}

/// One entry of `ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// `-` regular file, `d` directory, `l` symlink, ` ` anything else.
    pub sign: char,
    /// Inode number.
    pub ino: u64,
    /// Name.
    pub name: Vec<u8>,
}

/// An entry's attributes as `stat` and `icheck` show them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// The path `icheck` found it at (none for `stat`).
    pub path: Option<Vec<u8>>,
    /// Whether upstream prints the attribute block (not for the root found by `icheck`).
    pub shown: bool,
    /// Inode number.
    pub ino: u64,
    /// Name (a hard link's first name in its directory).
    pub name: Vec<u8>,
    /// Size.
    pub size: u64,
    /// The directory's inode number.
    pub parent: u64,
    /// Mode bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: i64,
    /// Its nanoseconds.
    pub mtime_nsec: u32,
    /// 512-byte blocks (size rounded up).
    pub blocks: u64,
    /// Chunks of a regular file, for `stat`.
    pub chunks: Option<Vec<ChunkDetail>>,
}

/// A chunk as `stat` and `chunk` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkDetail {
    /// Offset in the file.
    pub file_offset: u64,
    /// Index of the chunk in its blob.
    pub index: u32,
    /// Bytes in the blob.
    pub compressed_size: u32,
    /// Bytes uncompressed.
    pub decompressed_size: u32,
    /// Offset in the blob.
    pub compressed_offset: u64,
    /// Offset in the blob's uncompressed space.
    pub decompressed_offset: u64,
    /// The blob's id.
    pub blob_id: String,
    /// The chunk digest (hex).
    pub chunk_id: String,
}

/// A file using the chunk `chunk OFFSET` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkUser {
    /// The file's name.
    pub name: Vec<u8>,
    /// Its directory's path (ending in `/` below the root).
    pub parent_path: Vec<u8>,
    /// The chunk.
    pub chunk: ChunkDetail,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `stats`.
    Stats(Stats),
    /// `blobs`.
    Blobs(Vec<BlobInfo>),
    /// `prefetch`: the slots, and the table's entry count.
    Prefetch(Vec<PrefetchEntry>),
    /// `ls`.
    Listing(Vec<ListEntry>),
    /// `cd`: `None` when the directory changed, else the name and why not (upstream's
    /// `NAME is not a directory`, or `NAME is ` when there is no such entry).
    Cd(Option<(String, &'static str)>),
    /// `stat` (none or one) and `icheck` (one per path).
    Files(Vec<FileStat>),
    /// `chunk`.
    Chunk(Vec<ChunkUser>),
    /// `help`.
    Help,
    /// `exit`.
    Exit,
}

/// One entry met walking the tree.
#[derive(Clone, Debug)]
struct Walked {
    path: Vec<u8>,
    nid: Nid,
    parent: Nid,
}

/// An inspection session over one image.
pub struct Inspector {
    image: Image,
    cwd: Nid,
    parents: Vec<Nid>,
    /// Every entry in walk order.
    walked: Vec<Walked>,
    /// Each directory's first place in `walked`.
    dirs: HashMap<Nid, usize>,
    /// Blob ids as upstream shows them (see [`shown_blob_ids`]).
    blob_ids: Vec<String>,
}

impl Inspector {
    /// A session at the image's root. Walks the whole tree once (upstream too finds
    /// the names of an inode by a walk), so a bootstrap whose tree is damaged is
    /// refused here, with the offset of what is wrong.
    pub fn new(image: Image) -> Result<Self, InspectError> {
        let cwd = image.root();
        let mut walked: Vec<Walked> = Vec::new();
        let mut dirs: HashMap<Nid, usize> = HashMap::new();
        let mut by_path: HashMap<Vec<u8>, Nid> = HashMap::new();
        let root = image.root();
        let walk = image.walk(|path, nid| {
            let parent = match path.iter().rposition(|&b| b == b'/') {
                Some(at) if at > 0 => by_path.get(&path[..at]).copied().unwrap_or(root),
                _ => root,
            };
            if image.stat(nid)?.mode & libc::S_IFMT == libc::S_IFDIR {
                by_path.insert(path.to_vec(), nid);
                dirs.entry(nid).or_insert(walked.len());
            }
            walked.push(Walked {
                path: path.to_vec(),
                nid,
                parent,
            });
            Ok(())
        });
        if let Err(source) = walk {
            return Err(InspectError::Read {
                image: image.path().to_path_buf(),
                source,
            });
        }
        let blob_ids = shown_blob_ids(&image);
        Ok(Inspector {
            image,
            cwd,
            parents: Vec::new(),
            walked,
            dirs,
            blob_ids,
        })
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Answers one request.
    pub fn execute(&mut self, req: &Request) -> Result<Reply, InspectError> {
        self.answer(req).map_err(|source| InspectError::Read {
            image: self.image.path().to_path_buf(),
            source,
        })
    }

    fn answer(&mut self, req: &Request) -> Result<Reply, ReadError> {
        Ok(match req {
            Request::Stats => Reply::Stats(self.stats()),
            Request::Blobs => Reply::Blobs(self.blobs()),
            Request::Prefetch => Reply::Prefetch(self.prefetch()?),
            Request::Ls => Reply::Listing(self.list()?),
            Request::Cd(dir) => Reply::Cd(self.change_dir(dir)?),
            Request::Stat(name) => Reply::Files(self.stat_name(name)?),
            Request::Chunk(offset) => Reply::Chunk(self.chunk_users(*offset)?),
            Request::Icheck(ino) => Reply::Files(self.icheck(*ino)?),
            Request::Help => Reply::Help,
            Request::Exit => Reply::Exit,
        })
    }

    /// The superblock's figures.
    pub fn stats(&self) -> Stats {
        let sb = self.image.super_block();
        let prefetch_entries = if sb.prefetch_table_offset == 0 {
            0
        } else {
            sb.prefetch_table_size as u64 / crate::format::v6::prefetch::ENTRY_SIZE
        };
        Stats {
            inodes_count: sb.inodes,
            version: self.image.fs_version(),
            chunk_size: sb.chunk_size,
            root_inode: self.image.root().0,
            flags: super::check::flag_names(sb.flags),
            blob_table: (sb.blob_table_offset, sb.blob_table_size as u64),
            prefetch_table: (sb.prefetch_table_offset, prefetch_entries),
            chunk_table: (sb.chunk_table_offset, sb.chunk_table_size),
        }
    }

    /// The blob table.
    pub fn blobs(&self) -> Vec<BlobInfo> {
        self.image
            .blobs()
            .iter()
            .enumerate()
            .map(|(index, b)| BlobInfo {
                blob_id: self.blob_ids[index].clone(),
                compressed_size: b.compressed_size,
                decompressed_size: b.uncompressed_size,
                // RAFS v6's blob table has no readahead range; upstream shows 0/0.
                readahead_offset: self.image.blob_readahead(index).map_or(0, |r| r.0 as u64),
                readahead_size: self.image.blob_readahead(index).map_or(0, |r| r.1 as u64),
                detail: BlobDetail {
                    index,
                    features: super::check::blob_feature_names(b.features),
                    compressed_data_size: super::check::compressed_data_size(b),
                    compressor: b.compressor.name(),
                    digester: b.digester.name(),
                    chunk_size: b.chunk_size,
                    chunk_count: b.chunk_count,
                    meta: (
                        b.ci_compressor.name(),
                        b.ci_offset,
                        b.ci_compressed_size,
                        b.ci_uncompressed_size,
                    ),
                    toc: (hex::encode(b.toc_digest), b.toc_size),
                },
            })
            .collect()
    }

    /// The prefetch table, every slot: upstream lists the zero slots of patterns that
    /// matched nothing too, as inode 0 without a path.
    pub fn prefetch(&mut self) -> Result<Vec<PrefetchEntry>, ReadError> {
        let listed = self.image.prefetch_table()?;
        let slots = self.stats().prefetch_table.1 as usize;
        let mut out = Vec::with_capacity(slots.max(listed.len()));
        for nid in &listed {
            let path = self
                .paths_of(*nid)?
                .into_iter()
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .collect();
            out.push(PrefetchEntry { inode: nid.0, path });
        }
        out.resize(
            slots.max(listed.len()),
            PrefetchEntry {
                inode: 0,
                path: Vec::new(),
            },
        );
        Ok(out)
    }

    /// The current directory's entries.
    pub fn list(&self) -> Result<Vec<ListEntry>, ReadError> {
        self.image
            .read_dir(self.cwd)?
            .into_iter()
            .map(|e| {
                let mode = self.image.stat(e.nid)?.mode & libc::S_IFMT;
                let sign = match mode {
                    libc::S_IFREG => '-',
                    libc::S_IFDIR => 'd',
                    libc::S_IFLNK => 'l',
                    _ => ' ',
                };
                Ok(ListEntry {
                    sign,
                    ino: e.nid.0,
                    name: e.name,
                })
            })
            .collect()
    }

    /// Moves to `dir`; `..` at the root stays there.
    pub fn change_dir(&mut self, dir: &str) -> Result<Option<(String, &'static str)>, ReadError> {
        match dir {
            "." => return Ok(None),
            ".." => {
                if let Some(up) = self.parents.pop() {
                    self.cwd = up;
                }
                return Ok(None);
            }
            _ => {}
        }
        let Some(nid) = self.image.lookup(self.cwd, dir.as_bytes())? else {
            return Ok(Some((dir.to_string(), "")));
        };
        if !self.is_dir(nid)? {
            return Ok(Some((dir.to_string(), "not a directory")));
        }
        self.parents.push(self.cwd);
        self.cwd = nid;
        Ok(None)
    }

    /// `stat NAME` in the current directory (`.` for itself): none when there is no such
    /// entry.
    pub fn stat_name(&self, name: &str) -> Result<Vec<FileStat>, ReadError> {
        if name == "." {
            let parent = self.parents.last().copied().unwrap_or(self.image.root());
            return Ok(vec![self.file_stat(self.cwd, parent, None, false)?]);
        }
        let Some(nid) = self.image.lookup(self.cwd, name.as_bytes())? else {
            return Ok(Vec::new());
        };
        Ok(vec![self.file_stat(nid, self.cwd, None, true)?])
    }

    /// Every path of inode `ino` with its attributes.
    pub fn icheck(&mut self, ino: u64) -> Result<Vec<FileStat>, ReadError> {
        let nid = Nid(ino);
        // Upstream decodes whatever sits at that slot and prints the paths it finds; a
        // number no entry of the tree has gets no path, so no answer (upstream fails or
        // panics only when the slot lies past the bootstrap's end).
        if !self.walked.iter().any(|w| w.nid == nid) {
            return Ok(Vec::new());
        }
        let st = self.image.stat(nid)?;
        // RAFS v5 (where hard links share one inode number) and directories: every
        // place the walk meets the inode, as upstream walks for them.
        if st.mode & libc::S_IFMT == libc::S_IFDIR || self.image.fs_version() == 5 {
            let hits: Vec<Walked> = self
                .walked
                .iter()
                .filter(|w| w.nid == nid)
                .cloned()
                .collect();
            return hits
                .into_iter()
                .map(|w| {
                    let mut s = self.file_stat(nid, w.parent, None, false)?;
                    s.shown = w.nid != self.image.root();
                    s.path = Some(w.path);
                    Ok(s)
                })
                .collect();
        }
        let mut out = Vec::new();
        for (parent, path) in self.link_paths(nid)? {
            let mut s = self.file_stat(nid, parent, None, false)?;
            s.path = Some(path);
            out.push(s);
        }
        Ok(out)
    }

    /// Every regular file (each name of a hard link) using a chunk stored at compressed
    /// offset `offset` of its blob, in walk order.
    pub fn chunk_users(&mut self, offset: u64) -> Result<Vec<ChunkUser>, ReadError> {
        let walked = self.walked.clone();
        let mut out = Vec::new();
        for w in walked {
            if self.image.stat(w.nid)?.mode & libc::S_IFMT != libc::S_IFREG {
                continue;
            }
            for chunk in self.chunks(w.nid)? {
                if chunk.compressed_offset == offset {
                    let name = w.path.rsplit(|&b| b == b'/').next().unwrap_or(b"");
                    out.push(ChunkUser {
                        name: name.to_vec(),
                        parent_path: self.dir_path(w.parent)?,
                        chunk,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Attributes of `nid`, named as upstream names it from `parent`; with its chunks
    /// when `with_chunks` and it is a regular file.
    fn file_stat(
        &self,
        nid: Nid,
        parent: Nid,
        path: Option<Vec<u8>>,
        with_chunks: bool,
    ) -> Result<FileStat, ReadError> {
        let st = self.image.stat(nid)?;
        let v5 = self.image.v5_record(nid)?;
        // A v5 record stores its block count; v6 has none and upstream rounds the size.
        let (size, blocks) = match &v5 {
            Some(r) => (st.size, r.blocks),
            None => {
                let size = self.image.inode(nid)?.inode.size;
                (size, size.div_ceil(512))
            }
        };
        // Upstream names a v5 inode by the record the inode table points at (a hard
        // link's first), whichever directory it is looked at from.
        let name = if let Some(r) = v5.filter(|_| nid != self.image.root()) {
            r.name
        } else if st.mode & libc::S_IFMT == libc::S_IFDIR {
            self.dir_name(nid)?
        } else {
            self.image
                .read_dir(parent)?
                .into_iter()
                .find(|e| e.nid == nid)
                .map(|e| e.name)
                .unwrap_or_default()
        };
        let chunks = if with_chunks && st.mode & libc::S_IFMT == libc::S_IFREG {
            Some(self.chunks(nid)?)
        } else {
            None
        };
        Ok(FileStat {
            path,
            shown: true,
            ino: nid.0,
            name,
            size,
            parent: parent.0,
            mode: st.mode,
            nlink: st.nlink,
            uid: st.uid,
            gid: st.gid,
            mtime: st.mtime,
            mtime_nsec: st.mtime_nsec,
            blocks,
            chunks,
        })
    }

    /// The chunks of regular file `nid`, in file order (holes left out).
    fn chunks(&self, nid: Nid) -> Result<Vec<ChunkDetail>, ReadError> {
        let chunk_size = self.image.super_block().chunk_size as u64;
        let mut out = Vec::new();
        for (i, addr) in self.image.chunk_addrs(nid)?.into_iter().enumerate() {
            let Some(addr) = addr else { continue };
            let info = self
                .image
                .chunk_info(addr.blob(), addr.chunk())
                .ok_or_else(|| {
                    ReadError::Request(format!(
                        "inode {nid}: chunk {i} names chunk {} of blob {}, which the chunk table lacks",
                        addr.chunk_index, addr.blob_index
                    ))
                })?;
            let blob_id = self
                .blob_ids
                .get(info.blob_index as usize)
                .cloned()
                .ok_or_else(|| {
                    ReadError::Request(format!(
                        "inode {nid}: chunk {i} is in blob {}, past the blob table",
                        info.blob_index
                    ))
                })?;
            out.push(ChunkDetail {
                file_offset: i as u64 * chunk_size,
                index: info.index,
                compressed_size: info.compressed_size,
                decompressed_size: info.uncompressed_size,
                compressed_offset: info.compressed_offset,
                decompressed_offset: info.uncompressed_offset,
                blob_id,
                chunk_id: hex::encode(info.digest),
            });
        }
        Ok(out)
    }

    fn is_dir(&self, nid: Nid) -> Result<bool, ReadError> {
        Ok(self.image.stat(nid)?.mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// The path walking the tree first met directory `nid` at.
    fn walked_dir(&self, nid: Nid) -> Result<&Walked, ReadError> {
        self.dirs
            .get(&nid)
            .map(|&i| &self.walked[i])
            .ok_or_else(|| {
                ReadError::Request(format!("directory {nid} is not reachable from the root"))
            })
    }

    /// A directory's own name (the root's is `/`).
    fn dir_name(&self, nid: Nid) -> Result<Vec<u8>, ReadError> {
        if nid == self.image.root() {
            return Ok(b"/".to_vec());
        }
        let path = &self.walked_dir(nid)?.path;
        Ok(path.rsplit(|&b| b == b'/').next().unwrap_or(b"").to_vec())
    }

    /// A directory's path as upstream prints it: `/` for the root, else ending in `/`.
    fn dir_path(&self, dir: Nid) -> Result<Vec<u8>, ReadError> {
        if dir == self.image.root() {
            return Ok(b"/".to_vec());
        }
        let mut path = self.walked_dir(dir)?.path.clone();
        path.push(b'/');
        Ok(path)
    }

    /// The paths upstream gives inode `nid`: the root's name, a directory's path ending
    /// in `/`, or for anything else one path per name, in walk order (each from its
    /// directory's first entry naming the inode, as upstream finds them).
    fn paths_of(&mut self, nid: Nid) -> Result<Vec<Vec<u8>>, ReadError> {
        if nid == self.image.root() {
            return Ok(vec![b"/".to_vec()]);
        }
        if self.image.fs_version() == 5 {
            return Ok(vec![self.v5_path(nid)?]);
        }
        if self.is_dir(nid)? {
            return Ok(vec![self.dir_path(nid)?]);
        }
        Ok(self.link_paths(nid)?.into_iter().map(|(_, p)| p).collect())
    }

    /// The path upstream gives v5 inode `nid`: its record's name and those of the
    /// parents its records name, up to the root, and a `/` after the last name (a file's
    /// too: upstream joins an empty path onto the name).
    fn v5_path(&self, nid: Nid) -> Result<Vec<u8>, ReadError> {
        let root = self.image.root();
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut at = nid;
        while at != root {
            let Some(r) = self.image.v5_record(at)? else {
                break;
            };
            names.push(r.name);
            let parent = r.parent;
            // A parent chain longer than the inode count loops.
            if names.len() as u64 > self.image.super_block().inodes {
                return Err(ReadError::Request(format!(
                    "inode {nid}: the parent chain of its records does not reach the root"
                )));
            }
            at = parent;
        }
        let mut path = b"/".to_vec();
        for name in names.iter().rev() {
            path.extend_from_slice(name);
            path.push(b'/');
        }
        Ok(path)
    }

    /// (directory, path) for each name of non-directory `nid`, in walk order; two names
    /// in one directory both give that directory's first one (upstream's lookup).
    fn link_paths(&mut self, nid: Nid) -> Result<Vec<(Nid, Vec<u8>)>, ReadError> {
        let parents: Vec<Nid> = self
            .walked
            .iter()
            .filter(|w| w.nid == nid && w.path != b"/")
            .map(|w| w.parent)
            .collect();
        let mut out = Vec::new();
        for parent in parents {
            let Some(first) = self
                .image
                .read_dir(parent)?
                .into_iter()
                .find(|e| e.nid == nid)
            else {
                continue;
            };
            let mut path = self.dir_path(parent)?;
            path.extend_from_slice(&first.name);
            out.push((parent, path));
        }
        Ok(out)
    }
}

/// Blob ids as upstream 2.2.0 shows them: a blob whose entry says it carries the
/// bootstrap (`INLINED_FS_META`, not `SEPARATE`) is named after the file the bootstrap
/// was read from (the blob itself, or a bootstrap taken out of it), up to the first `.`
/// of its name, as converters name such files by the blob's digest.
fn shown_blob_ids(image: &Image) -> Vec<String> {
    use crate::format::v6::tables::blob_features::{INLINED_FS_META, SEPARATE};
    let file = match image.inline() {
        Some(inline) => inline.blob_path.as_path(),
        None => image.path(),
    };
    let prefix = file
        .file_name()
        .map(|n| n.to_string_lossy())
        .and_then(|n| n.split('.').next().map(str::to_string))
        .filter(|p| !p.is_empty());
    image
        .blobs()
        .iter()
        .map(|b| match &prefix {
            Some(p) if b.features & INLINED_FS_META != 0 && b.features & SEPARATE == 0 => p.clone(),
            _ => b.blob_id.clone(),
        })
        .collect()
}

impl Reply {
    /// What upstream's request mode prints as JSON: the figures for `stats`, `blobs`
    /// and `prefetch`, `null` for the requests it answers in text.
    pub fn json(&self) -> serde_json::Value {
        let value = match self {
            Reply::Stats(s) => serde_json::to_value(s),
            Reply::Blobs(b) => serde_json::to_value(b),
            Reply::Prefetch(p) => serde_json::to_value(p),
            _ => Ok(serde_json::Value::Null),
        };
        value.expect("these types always serialize")
    }

    /// What upstream prints as text: in request mode only the text-only requests
    /// (`ls`, `cd`, `stat`, `chunk`, `icheck`, `help`), in the shell every request.
    pub fn text(&self, request_mode: bool) -> String {
        render::text(self, request_mode)
    }
}

#[cfg(test)]
mod tests;
