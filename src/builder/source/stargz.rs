//! eStargz layers: the tree is read from the layer's table of contents (TOC, the
//! `stargz.index.json` the eStargz writer stores at the end of the layer) instead of a
//! directory, and file data stays where it is: every chunk is a gzip member of the
//! eStargz file at the TOC's `offset`, and the image's data blob is that file.
//!
//! The TOC, as the containerd stargz library writes it (version 1):
//! - one entry per tar entry, types `dir`, `reg`, `symlink`, `hardlink`, `char`,
//!   `block`, `fifo`, plus `chunk` for the second and later chunks of a regular file;
//! - names relative to the layer root, spelled `./a/b` or `a/b`, directories with a
//!   trailing `/`; the root may appear as `./`;
//! - `mode` holds permission bits only (the type is `type`), `modtime` is RFC 3339 in
//!   whole seconds (empty for the epoch), xattr values are base64;
//! - a regular file's first chunk sits in the `reg` entry: `offset` (its gzip member),
//!   `chunkOffset` 0, `chunkSize` (absent when the chunk runs to the end of the file) and
//!   `chunkDigest` (sha256 of the chunk's bytes); empty files carry only `digest`;
//! - `.prefetch.landmark` / `.no.prefetch.landmark` are markers for the prefetcher,
//!   not part of the layer's tree: they are left out, as upstream does.
//!
//! Nothing of the TOC is trusted: names are checked component by component, chunks must
//! tile their file, and offsets must increase with the data they address.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::builder::overlay::Entry;
use crate::builder::tree::{FileData, Kind, Node};
use crate::builder::BuildError;
use crate::format::v6::tables::ChunkInfo;

/// Name of the TOC inside an eStargz layer.
pub const TOC_NAME: &str = "stargz.index.json";
/// Prefetch markers the eStargz writer adds at the layer root.
pub const LANDMARKS: [&[u8]; 2] = [b".prefetch.landmark", b".no.prefetch.landmark"];
/// The eStargz writer's default chunk size, used when no file of the layer is split.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;

/// Settings of an eStargz build beyond [`crate::builder::BuildOptions`].
#[derive(Clone, Debug, Default)]
pub struct StargzOptions {
    /// Chunk size the layer must have (`--chunk-size`); by default the layer's own.
    pub chunk_size: Option<u32>,
    /// The layer's size in bytes (`--blob-data-size`), if known without the layer.
    pub data_size: Option<u64>,
    /// The layer file: when given, every chunk is checked against it before anything is
    /// written.
    pub layer_file: Option<PathBuf>,
}

impl StargzOptions {
    /// The layer file given as `blob`, or else the file named `blob_id` in `blob_dir`
    /// (which must then exist); `None` when neither is given.
    pub fn find_layer(
        blob: Option<&Path>,
        blob_dir: Option<&Path>,
        blob_id: Option<&str>,
    ) -> Result<Option<PathBuf>, BuildError> {
        match (blob, blob_dir, blob_id) {
            (Some(b), _, _) => Ok(Some(b.to_path_buf())),
            (None, Some(d), Some(id)) => {
                let f = d.join(id);
                if !f.is_file() {
                    return Err(BuildError::Source {
                        path: f,
                        what: "the eStargz layer is not in the blob directory (it must be named by its blob id)".into(),
                    });
                }
                Ok(Some(f))
            }
            _ => Ok(None),
        }
    }
}

/// Most bytes a gzip member can take to hold `size` bytes of data, the bound upstream
/// records as a chunk's stored size: the TOC says where a chunk's member starts, not
/// where it ends (it may run on into the tar headers of the entries after it).
pub fn gzip_bound(size: u64) -> u64 {
    size + 23 + 5 * (size / 16384) + 128
}

#[derive(Deserialize)]
struct TocJson {
    version: i64,
    #[serde(default)]
    entries: Vec<TocEntry>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct TocEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    size: u64,
    modtime: String,
    link_name: String,
    mode: u32,
    uid: u32,
    gid: u32,
    dev_major: u32,
    dev_minor: u32,
    xattrs: BTreeMap<String, String>,
    digest: String,
    offset: u64,
    inner_offset: u64,
    chunk_offset: u64,
    chunk_size: u64,
    chunk_digest: String,
}

/// One chunk of a regular file as the TOC places it.
#[derive(Clone, Debug)]
struct TocChunk {
    /// Where the chunk's gzip member starts in the layer.
    offset: u64,
    /// Where the chunk starts in its file.
    file_offset: u64,
    /// Its size, 0 for "to the end of the file".
    size: u64,
    /// sha256 of its bytes, if the TOC gives one.
    digest: Option<[u8; 32]>,
}

/// A layer's tree and chunks, read from its TOC.
#[derive(Debug)]
pub struct StargzLayer {
    /// The tree, every regular file's data as chunks of the layer's blob.
    pub root: Entry,
    /// Chunk size: every chunk but a file's last is exactly this long.
    pub chunk_size: u32,
    /// Distinct chunks, in blob order.
    pub chunks: Vec<ChunkInfo>,
    /// Uncompressed bytes of file data.
    pub data_bytes: u64,
    /// For error messages: which entry each chunk came from.
    pub chunk_names: Vec<String>,
}

/// A problem in the TOC at `path`, naming the entry.
fn bad(path: &Path, index: Option<usize>, name: &str, what: impl std::fmt::Display) -> BuildError {
    let at = match index {
        Some(i) => format!("entry {i} ({name:?}): "),
        None => String::new(),
    };
    BuildError::Source {
        path: path.to_path_buf(),
        what: format!("{at}{what}"),
    }
}

/// Splits a TOC name into components; `None` for the root. Refuses absolute names and
/// `.`/`..`/empty components.
fn components(name: &str) -> Result<Option<Vec<Vec<u8>>>, String> {
    if name.starts_with('/') {
        return Err("absolute names are not allowed in a layer".into());
    }
    let mut rest = name;
    while let Some(r) = rest.strip_prefix("./") {
        rest = r;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest == "." {
        return Ok(None);
    }
    let mut out = Vec::new();
    for part in rest.split('/') {
        match part {
            "" => return Err("empty path component".into()),
            "." | ".." => return Err(format!("{part:?} path component")),
            p if p.len() > 255 => {
                return Err(format!(
                    "a component is {} bytes, the limit is 255",
                    p.len()
                ))
            }
            p if p.contains('\0') => return Err("NUL byte in name".into()),
            p => out.push(p.as_bytes().to_vec()),
        }
    }
    Ok(Some(out))
}

/// Parses `sha256:HEX` into bytes.
fn sha256_digest(s: &str) -> Result<[u8; 32], String> {
    let hex_part = s
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {s:?} is not a sha256 digest"))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out)
        .map_err(|_| format!("digest {s:?} is not 64 hex digits"))?;
    Ok(out)
}

/// Seconds since the epoch of an RFC 3339 time (`2024-01-02T03:04:05Z`, optionally with
/// fractional seconds, which are rounded away as the eStargz writer does, and a `±HH:MM`
/// offset). Empty means the epoch.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    if s.is_empty() {
        return Ok(0);
    }
    let err = || format!("modtime {s:?} is not an RFC 3339 time");
    let b = s.as_bytes();
    if !s.is_ascii()
        || b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
    {
        return Err(err());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(err());
    }
    let num = |from: usize, to: usize| -> Result<i64, String> {
        let part = &s[from..to];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse::<i64>().map_err(|_| err())
        } else {
            Err(err())
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, min, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(err());
    }
    let mut rest = &s[19..];
    let mut round_up = false;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(err());
        }
        round_up = frac.as_bytes()[0] >= b'5';
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') && &rest[3..4] == ":" => {
            let h: i64 = rest[1..3].parse().map_err(|_| err())?;
            let m: i64 = rest[4..6].parse().map_err(|_| err())?;
            let v = h * 3600 + m * 60;
            if rest.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return Err(err()),
    };
    // Days from 1970-01-01 to the date (proleptic Gregorian calendar).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hour * 3600 + min * 60 + sec - offset + round_up as i64)
}

/// A directory made up for a path the TOC uses without listing its parent.
fn implied_dir(source: PathBuf) -> Entry {
    Entry {
        node: Node {
            name: Vec::new(),
            source,
            parent: 0,
            kind: Kind::Dir(Vec::new()),
            mode: libc::S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            rdev: 0,
            xattrs: Vec::new(),
            hardlink_of: None,
            nlink: 2,
            data: FileData::Source,
        },
        link: None,
        children: BTreeMap::new(),
    }
}

/// The entry at `parts` below `root`, creating missing directories on the way.
fn walk_to<'a>(
    root: &'a mut Entry,
    parts: &[Vec<u8>],
    toc: &Path,
) -> Result<&'a mut Entry, String> {
    let mut at = root;
    let mut shown = PathBuf::from("/");
    for part in parts {
        shown.push(String::from_utf8_lossy(part).as_ref());
        if !matches!(at.node.kind, Kind::Dir(_)) {
            return Err(format!(
                "{} is not a directory",
                shown.parent().unwrap_or(Path::new("/")).display()
            ));
        }
        at = at
            .children
            .entry(part.clone())
            .or_insert_with(|| implied_dir(toc.join(shown.strip_prefix("/").unwrap_or(&shown))));
    }
    Ok(at)
}

/// Reads the TOC at `path` into a tree. `layer` keys hard links; the layer's chunks get
/// `blob_index`; `chunk_size`, when given, is the chunk size the layer must use;
/// `data_size` is the layer's size, if known.
pub fn load(
    path: &Path,
    layer: u32,
    blob_index: u32,
    chunk_size: Option<u32>,
    data_size: Option<u64>,
) -> Result<StargzLayer, BuildError> {
    let text = std::fs::read(path).map_err(|e| BuildError::io(path, "cannot read TOC", e))?;
    parse(path, &text, layer, blob_index, chunk_size, data_size)
}

/// [`load`] from the TOC's bytes; `path` names it in errors.
pub fn parse(
    path: &Path,
    text: &[u8],
    layer: u32,
    blob_index: u32,
    chunk_size: Option<u32>,
    data_size: Option<u64>,
) -> Result<StargzLayer, BuildError> {
    let toc: TocJson = serde_json::from_slice(text)
        .map_err(|e| bad(path, None, "", format!("not an eStargz TOC: {e}")))?;
    if toc.version != 1 {
        return Err(bad(
            path,
            None,
            "",
            format!(
                "TOC version {} is not supported (only version 1)",
                toc.version
            ),
        ));
    }

    let mut root = implied_dir(path.to_path_buf());
    // Regular files with their chunks, by path, in TOC order.
    let mut files: Vec<(Vec<Vec<u8>>, usize, Vec<TocChunk>)> = Vec::new();
    let mut file_at: HashMap<Vec<Vec<u8>>, usize> = HashMap::new();
    let mut last_file: Option<usize> = None;
    // Hard-link groups: path of the group's first name -> key.
    let mut link_keys: HashMap<Vec<Vec<u8>>, u64> = HashMap::new();

    for (i, e) in toc.entries.iter().enumerate() {
        let err = |what: String| bad(path, Some(i), &e.name, what);
        let parts = components(&e.name).map_err(&err)?;
        if e.inner_offset != 0 {
            return Err(err(
                "innerOffset (zstd:chunked) is not supported; only gzip eStargz".into(),
            ));
        }
        if e.kind == "chunk" {
            let parts = parts.ok_or_else(|| err("a chunk entry names the root".into()))?;
            let at = last_file
                .filter(|&f| files[f].0 == parts)
                .ok_or_else(|| err("chunk entry does not follow its regular file".into()))?;
            let digest = if e.chunk_digest.is_empty() {
                None
            } else {
                Some(sha256_digest(&e.chunk_digest).map_err(&err)?)
            };
            files[at].2.push(TocChunk {
                offset: e.offset,
                file_offset: e.chunk_offset,
                size: e.chunk_size,
                digest,
            });
            continue;
        }
        last_file = None;
        if parts.as_ref().is_some_and(|p| {
            p.len() == 1 && LANDMARKS.contains(&p[0].as_slice()) && e.kind == "reg"
        }) {
            continue;
        }
        let shown = match &parts {
            Some(p) => path.join(
                p.iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join("/"),
            ),
            None => path.to_path_buf(),
        };
        let (fmt, kind) = match e.kind.as_str() {
            "dir" => (libc::S_IFDIR, Kind::Dir(Vec::new())),
            "reg" => (libc::S_IFREG, Kind::File),
            "symlink" => {
                if e.link_name.is_empty() {
                    return Err(err("symlink without a target (linkName)".into()));
                }
                if e.link_name.len() > 4095 || e.link_name.contains('\0') {
                    return Err(err("symlink target is too long or holds a NUL byte".into()));
                }
                (
                    libc::S_IFLNK,
                    Kind::Symlink(e.link_name.as_bytes().to_vec()),
                )
            }
            "char" => (libc::S_IFCHR, Kind::CharDevice),
            "block" => (libc::S_IFBLK, Kind::BlockDevice),
            "fifo" => (libc::S_IFIFO, Kind::Fifo),
            "hardlink" => (0, Kind::File),
            other => return Err(err(format!("unknown entry type {other:?}"))),
        };
        let Some(parts) = parts else {
            // The root: only its metadata.
            if fmt != libc::S_IFDIR {
                return Err(err("the root is not a directory".into()));
            }
            set_meta(&mut root.node, e, fmt, &shown).map_err(&err)?;
            continue;
        };
        if e.kind == "hardlink" {
            let target = components(&e.link_name)
                .map_err(|w| err(format!("hard link target {:?}: {w}", e.link_name)))?
                .ok_or_else(|| err("hard link to the root".into()))?;
            let key_count = link_keys.len() as u64;
            let found = find(&mut root, &target)
                .filter(|t| !matches!(t.node.kind, Kind::Dir(_)))
                .ok_or_else(|| {
                    err(format!(
                        "hard link to {:?}, which is not an earlier non-directory entry",
                        e.link_name
                    ))
                })?;
            let key = match found.link {
                Some((_, k)) => k,
                None => {
                    link_keys.insert(target.clone(), key_count);
                    found.link = Some((layer, key_count));
                    key_count
                }
            };
            let mut copy = found.clone();
            copy.node.source = shown.clone();
            copy.link = Some((layer, key));
            let (parent, name) = parts.split_at(parts.len() - 1);
            let dir = walk_to(&mut root, parent, path).map_err(&err)?;
            dir.children.insert(name[0].clone(), copy);
            // Its data is the target's, and so are any chunks listed later: none are.
            continue;
        }
        let (parent, name) = parts.split_at(parts.len() - 1);
        let dir = walk_to(&mut root, parent, path).map_err(&err)?;
        let mut node = implied_dir(shown.clone()).node;
        node.kind = kind;
        set_meta(&mut node, e, fmt, &shown).map_err(&err)?;
        match dir.children.get_mut(&name[0]) {
            // A directory listed again (or after its children): new metadata, same children.
            Some(old) if fmt == libc::S_IFDIR && matches!(old.node.kind, Kind::Dir(_)) => {
                old.node = node;
            }
            _ => {
                dir.children.insert(
                    name[0].clone(),
                    Entry {
                        node,
                        link: None,
                        children: BTreeMap::new(),
                    },
                );
            }
        }
        if fmt == libc::S_IFREG {
            let digest = if !e.chunk_digest.is_empty() {
                Some(sha256_digest(&e.chunk_digest).map_err(&err)?)
            } else if !e.digest.is_empty() && (e.chunk_size == 0 || e.chunk_size >= e.size) {
                // One chunk: the file's digest is the chunk's.
                Some(sha256_digest(&e.digest).map_err(&err)?)
            } else {
                None
            };
            let chunks = if e.size > 0 {
                vec![TocChunk {
                    offset: e.offset,
                    file_offset: e.chunk_offset,
                    size: e.chunk_size,
                    digest,
                }]
            } else {
                Vec::new()
            };
            let at = match file_at.get(&parts) {
                Some(&at) => {
                    files[at] = (parts.clone(), i, chunks);
                    at
                }
                None => {
                    files.push((parts.clone(), i, chunks));
                    file_at.insert(parts.clone(), files.len() - 1);
                    files.len() - 1
                }
            };
            last_file = Some(at);
        }
    }

    let (chunk_size, chunks, chunk_names, per_file) = place_chunks(
        path,
        &toc.entries,
        &files,
        chunk_size,
        blob_index,
        data_size,
    )?;
    let mut data_bytes = 0;
    for ((parts, _, _), list) in files.iter().zip(per_file) {
        let Some(entry) = find(&mut root, parts) else {
            continue; // replaced by a later entry of another type
        };
        if entry.node.kind != Kind::File {
            continue;
        }
        data_bytes += entry.node.size;
        let infos: Vec<ChunkInfo> = list.iter().map(|&c| chunks[c].clone()).collect();
        entry.node.data = FileData::Chunks(infos);
    }
    // Hard links copied their target before its data was attached: copy it again.
    fix_links(&mut root);
    Ok(StargzLayer {
        root,
        chunk_size,
        chunks,
        data_bytes,
        chunk_names,
    })
}

/// Metadata common to all entry kinds.
fn set_meta(node: &mut Node, e: &TocEntry, fmt: u32, shown: &Path) -> Result<(), String> {
    if e.mode & !0o7777 != 0 && e.mode & libc::S_IFMT != fmt {
        return Err(format!(
            "mode 0o{:o} disagrees with type {:?}",
            e.mode, e.kind
        ));
    }
    node.mode = fmt | (e.mode & 0o7777);
    node.uid = e.uid;
    node.gid = e.gid;
    node.mtime = parse_rfc3339(&e.modtime)?;
    node.mtime_nsec = 0;
    node.rdev = match fmt {
        libc::S_IFCHR | libc::S_IFBLK => {
            if e.dev_major > 0xfff || e.dev_minor > 0xf_ffff {
                return Err(format!(
                    "device {}:{} does not fit RAFS v6's 32-bit device numbers",
                    e.dev_major, e.dev_minor
                ));
            }
            libc::makedev(e.dev_major, e.dev_minor)
        }
        _ => 0,
    };
    node.size = match &node.kind {
        Kind::File => e.size,
        Kind::Symlink(t) => t.len() as u64,
        _ => 0,
    };
    let mut xattrs = Vec::new();
    for (name, value) in &e.xattrs {
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| format!("xattr {name:?}: value is not base64"))?;
        super::dir::check_xattr(shown, name.as_bytes(), &value).map_err(|e| match e {
            BuildError::Source { what, .. } => what,
            other => other.to_string(),
        })?;
        xattrs.push((name.as_bytes().to_vec(), value));
    }
    xattrs.sort();
    node.xattrs = xattrs;
    Ok(())
}

fn find<'a>(root: &'a mut Entry, parts: &[Vec<u8>]) -> Option<&'a mut Entry> {
    let mut at = root;
    for p in parts {
        at = at.children.get_mut(p)?;
    }
    Some(at)
}

/// Gives every member of a hard-link group the node of the group's first member (the
/// one the TOC listed as `reg`, whose data was attached last).
fn fix_links(root: &mut Entry) {
    fn collect(e: &Entry, firsts: &mut HashMap<u64, Node>) {
        for c in e.children.values() {
            if let (Some((_, k)), FileData::Chunks(_)) = (c.link, &c.node.data) {
                firsts.entry(k).or_insert_with(|| c.node.clone());
            }
            collect(c, firsts);
        }
    }
    fn apply(e: &mut Entry, firsts: &HashMap<u64, Node>) {
        for c in e.children.values_mut() {
            if let Some((_, k)) = c.link {
                if let Some(n) = firsts.get(&k) {
                    if matches!(c.node.data, FileData::Source) && c.node.kind == Kind::File {
                        let source = std::mem::take(&mut c.node.source);
                        c.node = n.clone();
                        c.node.source = source;
                    }
                }
            }
            apply(c, firsts);
        }
    }
    let mut firsts = HashMap::new();
    collect(root, &mut firsts);
    apply(root, &firsts);
}

/// Checks each file's chunks and turns them into chunk table entries. Returns the chunk
/// size, the distinct chunks in blob order, the entry name of each, and each file's list
/// of indexes into them.
#[allow(clippy::type_complexity)]
fn place_chunks(
    path: &Path,
    entries: &[TocEntry],
    files: &[(Vec<Vec<u8>>, usize, Vec<TocChunk>)],
    want_chunk_size: Option<u32>,
    blob_index: u32,
    data_size: Option<u64>,
) -> Result<(u32, Vec<ChunkInfo>, Vec<String>, Vec<Vec<usize>>), BuildError> {
    // Resolve sizes: 0 means "to the end of the file".
    let mut resolved: Vec<Vec<TocChunk>> = Vec::with_capacity(files.len());
    let mut full_size: Option<(u64, usize)> = None;
    let mut largest = 0u64;
    for (_, at, list) in files {
        let e = &entries[*at];
        let err = |what: String| bad(path, Some(*at), &e.name, what);
        let mut list = list.clone();
        list.sort_by_key(|c| c.file_offset);
        let mut expect = 0u64;
        let n = list.len();
        for (k, c) in list.iter_mut().enumerate() {
            if c.file_offset != expect {
                return Err(err(format!(
                    "chunks do not tile the file: a chunk starts at {} where {expect} was expected",
                    c.file_offset
                )));
            }
            let rest = e.size - c.file_offset;
            if c.size == 0 || (k == n - 1 && c.size > rest) {
                if k != n - 1 {
                    return Err(err(format!(
                        "chunk at {} has no size but is not the file's last",
                        c.file_offset
                    )));
                }
                c.size = rest;
            }
            if c.size == 0 || c.size > rest {
                return Err(err(format!(
                    "chunk at {} of {} bytes overruns the file's {} bytes",
                    c.file_offset, c.size, e.size
                )));
            }
            if k + 1 < n {
                match full_size {
                    Some((s, _)) if s != c.size => {
                        return Err(err(format!(
                            "chunk size {} differs from the layer's {s}; RAFS v6 needs one chunk size per image",
                            c.size
                        )))
                    }
                    _ => full_size = Some((c.size, *at)),
                }
            }
            largest = largest.max(c.size);
            expect += c.size;
        }
        if expect != e.size && e.size > 0 {
            return Err(err(format!(
                "chunks cover {expect} of the file's {} bytes",
                e.size
            )));
        }
        resolved.push(list);
    }
    let chunk_size = match (full_size, want_chunk_size) {
        (Some((s, at)), want) => {
            if !s.is_power_of_two() || !(0x1000..=0x100_0000).contains(&s) {
                return Err(bad(
                    path,
                    Some(at),
                    &entries[at].name,
                    format!("chunk size {s} is not a power of two between 4 KiB and 16 MiB, which RAFS v6 needs"),
                ));
            }
            if let Some(w) = want.filter(|&w| w as u64 != s) {
                return Err(bad(
                    path,
                    Some(at),
                    &entries[at].name,
                    format!("chunk size 0x{s:x} differs from the parent image's 0x{w:x}"),
                ));
            }
            s as u32
        }
        (None, Some(w)) => w,
        (None, None) => DEFAULT_CHUNK_SIZE,
    };
    if largest > chunk_size as u64 {
        let (_, at, _) = files
            .iter()
            .zip(&resolved)
            .find(|(_, l)| l.iter().any(|c| c.size == largest))
            .map(|(f, _)| f)
            .expect("largest came from some file");
        return Err(bad(
            path,
            Some(*at),
            &entries[*at].name,
            format!("a single chunk of {largest} bytes exceeds the image's chunk size 0x{chunk_size:x}; rebuild the layer with a chunk size of at most 16 MiB"),
        ));
    }

    // Distinct chunks by offset, in blob order.
    let mut by_offset: BTreeMap<u64, (u64, Option<[u8; 32]>, usize)> = BTreeMap::new();
    for ((_, at, _), list) in files.iter().zip(&resolved) {
        for c in list {
            let err = |what: String| bad(path, Some(*at), &entries[*at].name, what);
            let digest = c.digest.ok_or_else(|| {
                err(format!(
                    "chunk at {} has no chunkDigest (nor a file digest covering it)",
                    c.file_offset
                ))
            })?;
            match by_offset.get(&c.offset) {
                Some((size, d, _)) if *size == c.size && *d == Some(digest) => {}
                Some((_, _, other)) => {
                    return Err(err(format!(
                        "chunk at layer offset {} is also entry {other}'s, with other contents",
                        c.offset
                    )))
                }
                None => {
                    by_offset.insert(c.offset, (c.size, Some(digest), *at));
                }
            }
        }
    }
    let offsets: Vec<u64> = by_offset.keys().copied().collect();
    let mut chunks = Vec::with_capacity(offsets.len());
    let mut names = Vec::with_capacity(offsets.len());
    let mut index_of: HashMap<u64, usize> = HashMap::new();
    let mut uncompressed_offset = 0u64;
    for (k, (&offset, &(size, digest, at))) in by_offset.iter().enumerate() {
        let gap = match (offsets.get(k + 1), data_size) {
            (Some(next), _) => Some(next - offset),
            (None, Some(end)) => Some(end.checked_sub(offset).ok_or_else(|| {
                bad(
                    path,
                    Some(at),
                    &entries[at].name,
                    format!("chunk at offset {offset} lies beyond the layer's {end} bytes"),
                )
            })?),
            (None, None) => None,
        };
        // A gzip member holds at least a 10-byte header, a byte of data and an 8-byte
        // trailer.
        if gap.is_some_and(|g| g < 19) {
            return Err(bad(
                path,
                Some(at),
                &entries[at].name,
                format!(
                    "chunk at layer offset {offset} has only {} bytes before the next one or the layer's end",
                    gap.unwrap_or(0)
                ),
            ));
        }
        let bound = gap.map_or(gzip_bound(size), |g| g.min(gzip_bound(size)));
        let compressed_size = u32::try_from(bound)
            .map_err(|_| bad(path, Some(at), &entries[at].name, "chunk too large"))?;
        index_of.insert(offset, chunks.len());
        chunks.push(ChunkInfo {
            digest: digest.expect("checked above"),
            blob_index,
            compressed: true,
            compressed_size,
            uncompressed_size: size as u32,
            compressed_offset: offset,
            uncompressed_offset,
            file_offset: 0,
            index: chunks.len() as u32,
        });
        names.push(entries[at].name.clone());
        uncompressed_offset += size.div_ceil(0x1000) * 0x1000;
    }
    let mut seen = vec![false; chunks.len()];
    let per_file = resolved
        .iter()
        .map(|list| {
            list.iter()
                .map(|c| {
                    let i = index_of[&c.offset];
                    if !std::mem::replace(&mut seen[i], true) {
                        chunks[i].file_offset = c.file_offset; // its first user's offset
                    }
                    i
                })
                .collect()
        })
        .collect();
    Ok((chunk_size, chunks, names, per_file))
}

/// Checks `--blob-id` for an eStargz layer: its sha256 digest in hex, without the
/// `sha256:` prefix.
pub fn check_blob_id(id: &str) -> Result<(), String> {
    if let Some(hex_part) = id.strip_prefix("sha256:") {
        return Err(format!(
            "--blob-id {id:?}: give the layer digest without the \"sha256:\" prefix: --blob-id {hex_part}"
        ));
    }
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "--blob-id {id:?}: an eStargz layer's blob id is its sha256 digest, 64 hex digits"
        ));
    }
    Ok(())
}

/// Checks every chunk of `layer` against the eStargz file at `blob`: inside the file,
/// a gzip member that inflates to the chunk's size, with the TOC's digest. Returns the
/// file's size.
pub fn check_layer(blob: &Path, layer: &StargzLayer, toc: &Path) -> Result<u64, BuildError> {
    use sha2::Digest;
    let file = crate::storage::blobs::BlobFile::open(blob)
        .map_err(|e| BuildError::io(blob, "cannot open the eStargz layer", e))?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for (info, name) in layer.chunks.iter().zip(&layer.chunk_names) {
        let err = |what: String| {
            bad(
                toc,
                None,
                name,
                format!("{name:?}: {what} (layer {})", blob.display()),
            )
        };
        if info.compressed_offset >= file.len {
            return Err(err(format!(
                "chunk at offset {} lies beyond the layer's {} bytes",
                info.compressed_offset, file.len
            )));
        }
        let len = (info.compressed_size as u64).min(file.len - info.compressed_offset);
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, info.compressed_offset)
            .map_err(|e| BuildError::io(blob, "cannot read the eStargz layer", e))?;
        out.resize(info.uncompressed_size as usize, 0);
        crate::storage::compress::decompress(crate::format::Compressor::Gzip, &buf, &mut out)
            .map_err(|e| err(format!("chunk at offset {}: {e}", info.compressed_offset)))?;
        let got: [u8; 32] = sha2::Sha256::digest(&out).into();
        if got != info.digest {
            return Err(err(format!(
                "chunk at offset {} has sha256 {}, the TOC says {}",
                info.compressed_offset,
                hex::encode(got),
                hex::encode(info.digest)
            )));
        }
    }
    Ok(file.len)
}

/// A layer's bootstrap, with what went into it.
pub struct Described {
    /// The bootstrap's bytes.
    pub bootstrap: Vec<u8>,
    /// The merged tree it describes.
    pub tree: crate::builder::tree::Tree,
    /// Its blob table: the parent's blobs, then the layer.
    pub blobs: Vec<crate::format::v6::tables::BlobEntry>,
    /// Chunk references to the layer that survive upper whiteouts.
    pub used_chunks: u64,
}

/// Lays out the bootstrap of `layer` applied over the parent (or nothing).
pub fn describe(
    layer: StargzLayer,
    parent_tree: Option<Entry>,
    parent_blobs: Vec<crate::format::v6::tables::BlobEntry>,
    blob_id: &str,
) -> Described {
    use crate::builder::{bootstrap, overlay};
    use crate::format::v6::tables::{blob_features, BlobEntry};
    use crate::format::{Compressor, Digester};

    let blob_index = parent_blobs.len() as u32;
    let StargzLayer {
        root,
        chunk_size,
        chunks: layer_chunks,
        ..
    } = layer;
    let mut merged = parent_tree.unwrap_or_else(|| overlay::empty_root(&root.node));
    overlay::apply(&mut merged, root, overlay::WhiteoutSpec::Oci);
    let tree = overlay::flatten(merged);

    let used = {
        // Chunks of this layer that survive the whiteouts of upper entries.
        let mut n = 0u64;
        for node in &tree.nodes {
            if let (FileData::Chunks(list), None) = (&node.data, node.hardlink_of) {
                n += list.iter().filter(|c| c.blob_index == blob_index).count() as u64;
            }
        }
        n
    };
    let uncompressed_size = layer_chunks
        .last()
        .map(|c| c.uncompressed_offset + (c.uncompressed_size as u64).div_ceil(0x1000) * 0x1000)
        .unwrap_or(0);
    let entry = BlobEntry {
        blob_id: blob_id.to_string(),
        chunk_size,
        chunk_count: layer_chunks.len() as u32,
        compressor: Compressor::Gzip,
        digester: Digester::Sha256,
        features: blob_features::ALIGNED | blob_features::CAP_TAR_TOC,
        compressed_size: layer_chunks
            .iter()
            .map(|c| c.compressed_offset + c.compressed_size as u64)
            .max()
            .unwrap_or(0),
        uncompressed_size,
        toc_size: 0,
        ci_compressor: Compressor::None,
        ci_offset: 0,
        // No chunk-info array exists (the chunk table in the bootstrap has everything),
        // but upstream's loader insists on this size; a stored size of 0 says "none".
        ci_compressed_size: 0,
        ci_uncompressed_size: 16 * layer_chunks.len() as u64,
        toc_digest: [0; 32],
    };
    let mut blobs = parent_blobs;
    blobs.push(entry);
    let (image, blobs) = crate::builder::stored_tree_bootstrap(
        &tree,
        blobs,
        bootstrap::v6::BootstrapOptions {
            chunk_size,
            compressor: Compressor::Gzip,
            digester: Digester::Sha256,
        },
    );
    Described {
        bootstrap: image,
        tree,
        blobs,
        used_chunks: used,
    }
}

/// Builds a RAFS v6 bootstrap describing the eStargz layer whose TOC is at `toc`,
/// optionally over `opts.parent_bootstrap`. The layer itself is the image's data blob,
/// recorded under `opts.blob_id` (its sha256 digest). When `layer_file` is given, every
/// chunk is checked against it first. Only the bootstrap is written.
pub fn build(
    toc: &Path,
    bootstrap_path: &Path,
    sopts: &StargzOptions,
    opts: &crate::builder::BuildOptions,
) -> Result<crate::builder::BuildSummary, BuildError> {
    use crate::builder::BuildSummary;
    use crate::format::{Compressor, Digester};

    let blob_id = opts.blob_id.clone().ok_or_else(|| {
        BuildError::Options(
            "--blob-id is required with stargz_index: the layer's sha256 digest, without the \"sha256:\" prefix".into(),
        )
    })?;
    check_blob_id(&blob_id).map_err(BuildError::Options)?;
    if opts.compressor != Compressor::Gzip {
        return Err(BuildError::Options(format!(
            "an eStargz layer is gzip-compressed; --compressor {} cannot describe it",
            opts.compressor.name()
        )));
    }
    if opts.chunk_dict.is_some() {
        return Err(BuildError::Options(
            "a chunk dictionary cannot be used with an eStargz layer: the layer's data is not rewritten".into(),
        ));
    }
    if opts.whiteout_spec != crate::builder::overlay::WhiteoutSpec::Oci {
        return Err(BuildError::Options(
            "eStargz layers carry OCI whiteouts; the whiteout spec must be oci".into(),
        ));
    }
    if opts.digester != Digester::Sha256 {
        return Err(BuildError::Options(format!(
            "eStargz chunk digests are sha256 (the TOC's chunkDigest); --digester {} cannot describe them",
            opts.digester.name()
        )));
    }
    let parent = crate::builder::load_parent(opts, None)?;
    let (parent_tree, parent_blobs, parent_chunk_size) = match parent {
        Some((t, b, c)) => (Some(t), b, Some(c)),
        None => (None, Vec::new(), None),
    };
    if parent_blobs.iter().any(|b| b.blob_id == blob_id) {
        return Err(BuildError::Options(format!(
            "the parent image already references blob {blob_id}: this layer is already in it"
        )));
    }
    let want = match (parent_chunk_size, sopts.chunk_size) {
        (Some(p), Some(c)) if p != c => {
            return Err(BuildError::Options(format!(
                "--chunk-size 0x{c:x} differs from the parent image's 0x{p:x}"
            )))
        }
        (p, c) => p.or(c),
    };
    let layer_len = match &sopts.layer_file {
        Some(f) => Some(
            std::fs::metadata(f)
                .map_err(|e| BuildError::io(f, "cannot stat the eStargz layer", e))?
                .len(),
        ),
        None => None,
    };
    if let (Some(len), Some(said)) = (layer_len, sopts.data_size) {
        if len != said {
            return Err(BuildError::Options(format!(
                "--blob-data-size 0x{said:x} differs from the layer's size 0x{len:x}"
            )));
        }
    }
    let blob_index = parent_blobs.len() as u32;
    let layer = load(toc, 1, blob_index, want, layer_len.or(sopts.data_size))?;
    let layer_size = match &sopts.layer_file {
        Some(f) => Some(check_layer(f, &layer, toc)?),
        None => None,
    };

    let (data_bytes, unique_chunks, chunk_size) = (
        layer.data_bytes,
        layer.chunks.len() as u64,
        layer.chunk_size,
    );
    let described = describe(layer, parent_tree, parent_blobs, &blob_id);
    let image = &described.bootstrap;
    let bootstrap =
        crate::builder::output::PendingFile::write_whole(bootstrap_path, image, "bootstrap")?;
    Ok(BuildSummary {
        bootstrap,
        blob_path: sopts.layer_file.clone(),
        blob_id: Some(blob_id),
        blob_size: layer_size.unwrap_or(0),
        bootstrap_size: image.len() as u64,
        entries: described.tree.nodes.len() as u64,
        inodes: described.tree.inode_count() as u64,
        total_chunks: described.used_chunks,
        unique_chunks,
        data_bytes,
        dict_chunks: 0,
        dict_bytes: 0,
        blobs: described.blobs.iter().map(|b| b.blob_id.clone()).collect(),
        compressor: Compressor::Gzip,
        digester: Digester::Sha256,
        chunk_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339(""), Ok(0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Ok(951_868_800));
        assert_eq!(parse_rfc3339("2026-11-27T20:31:24Z"), Ok(1_795_811_484));
        assert_eq!(
            parse_rfc3339("2026-11-27T21:31:24+01:00"),
            Ok(1_795_811_484)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Ok(-1));
        assert_eq!(parse_rfc3339("2026-11-27T20:31:23.6Z"), Ok(1_795_811_484));
        for bad in [
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-11-27T20:31:24",
            "2026-11-27T20:31:24.Z",
            "2026-11-27T10:31:2\u{4a5}Z", // found by fuzzing: a multi-byte character
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(components("./"), Ok(None));
        assert_eq!(components(""), Ok(None));
        assert_eq!(
            components("./a/b/"),
            Ok(Some(vec![b"a".to_vec(), b"b".to_vec()]))
        );
        assert_eq!(components("a"), Ok(Some(vec![b"a".to_vec()])));
        for bad in ["/etc/passwd", "a/../b", "../x", "a//b", "a/./b"] {
            assert!(components(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blob_ids() {
        let hex = "a".repeat(64);
        assert!(check_blob_id(&hex).is_ok());
        let e = check_blob_id(&format!("sha256:{hex}")).unwrap_err();
        assert!(e.contains(&format!("--blob-id {hex}")), "{e}");
        assert!(check_blob_id("abc").is_err());
    }
}
