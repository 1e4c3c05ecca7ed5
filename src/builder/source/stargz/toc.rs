//! The TOC's JSON schema (version 1, as the containerd stargz library writes it), its
//! names, digests and metadata, and reading its entries in order into the layer's tree
//! (through `namespace.rs`) with each file's chunks (placed by `layer.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use super::error::{EntryError, NameError, StargzError};
use super::layer::{place_chunks, FileChunks};
use super::namespace::{dir_node, shown, InodeId, Namespace};
use super::time::parse_rfc3339;
use super::{StargzLayer, LANDMARKS};
use crate::builder::tree::{FileData, Kind, Node};
use crate::format::v6::tables::ChunkInfo;

/// The TOC as JSON.
#[derive(Deserialize)]
pub(super) struct TocJson {
    pub(super) version: i64,
    #[serde(default)]
    pub(super) entries: Vec<TocEntry>,
}

/// One entry as the TOC spells it; a field it leaves out is empty or zero. Fields the
/// image has no place for (`userName`, `groupName`, `numLink`...) are ignored.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct TocEntry {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) size: u64,
    pub(super) modtime: String,
    pub(super) link_name: String,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) dev_major: u32,
    pub(super) dev_minor: u32,
    pub(super) xattrs: BTreeMap<String, String>,
    pub(super) digest: String,
    pub(super) offset: u64,
    pub(super) inner_offset: u64,
    pub(super) chunk_offset: u64,
    pub(super) chunk_size: u64,
    pub(super) chunk_digest: String,
}

/// One chunk of a regular file as the TOC places it.
#[derive(Clone, Debug)]
pub(super) struct TocChunk {
    /// Where the chunk's gzip member starts in the layer.
    pub(super) offset: u64,
    /// Where the chunk starts in its file.
    pub(super) file_offset: u64,
    /// Its size, 0 for "to the end of the file".
    pub(super) size: u64,
    /// sha256 of its bytes, if the TOC gives one.
    pub(super) digest: Option<[u8; 32]>,
}

/// Most components a name may have. The reader refuses directories nested
/// [`MAX_DEPTH`](crate::reader::MAX_DEPTH) deep below the root, and a name's last
/// component may be a directory. Bounding names here also bounds every walk of the tree
/// and of the trees layered onto it.
pub(super) const MAX_COMPONENTS: usize = crate::reader::MAX_DEPTH - 1;

/// Splits a TOC name into components; `None` for the root. Refuses absolute names,
/// `.`/`..`/empty components, and more than [`MAX_COMPONENTS`] components.
fn components(name: &str) -> Result<Option<Vec<Vec<u8>>>, NameError> {
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    let mut rest = name;
    while let Some(r) = rest.strip_prefix("./") {
        rest = r;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest == "." {
        return Ok(None);
    }
    let found = rest.split('/').count();
    if found > MAX_COMPONENTS {
        return Err(NameError::TooDeep {
            found,
            max: MAX_COMPONENTS,
        });
    }
    let mut out = Vec::with_capacity(found);
    for part in rest.split('/') {
        match part {
            "" => return Err(NameError::EmptyComponent),
            "." => return Err(NameError::DotComponent(".")),
            ".." => return Err(NameError::DotComponent("..")),
            p if p.len() > 255 => return Err(NameError::LongComponent { found: p.len() }),
            p if p.contains('\0') => return Err(NameError::Nul),
            p => out.push(p.as_bytes().to_vec()),
        }
    }
    Ok(Some(out))
}

/// Parses `sha256:HEX`, the TOC's `field`, into bytes.
fn sha256_digest(field: &'static str, s: &str) -> Result<[u8; 32], EntryError> {
    let bad = || EntryError::Digest {
        field,
        found: s.to_string(),
    };
    let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad())?;
    Ok(out)
}

/// Reads the TOC at `path` into a tree. The layer's chunks get `blob_index`;
/// `chunk_size`, when given, is the chunk size the layer must use; `data_size` is the
/// layer's size, if known.
pub fn load(
    path: &Path,
    blob_index: u32,
    chunk_size: Option<u32>,
    data_size: Option<u64>,
) -> Result<StargzLayer, StargzError> {
    let text = std::fs::read(path).map_err(|source| StargzError::ReadToc {
        toc: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, blob_index, chunk_size, data_size)
}

/// [`load`] from the TOC's bytes; `path` names it in errors.
pub fn parse(
    path: &Path,
    text: &[u8],
    blob_index: u32,
    chunk_size: Option<u32>,
    data_size: Option<u64>,
) -> Result<StargzLayer, StargzError> {
    let toc: TocJson = serde_json::from_slice(text).map_err(|source| StargzError::NotToc {
        toc: path.to_path_buf(),
        source,
    })?;
    if toc.version != 1 {
        return Err(StargzError::Version {
            toc: path.to_path_buf(),
            found: toc.version,
        });
    }

    let mut names = Namespace::new(path);
    // Regular files with their chunks, one per `reg` entry, in TOC order.
    let mut files: Vec<(InodeId, FileChunks)> = Vec::new();
    // The file the last entry listed, if it was a `reg`: its index in `files` and name.
    let mut last_file: Option<(usize, Vec<Vec<u8>>)> = None;

    for (i, e) in toc.entries.iter().enumerate() {
        let err = |problem: EntryError| StargzError::Entry {
            toc: path.to_path_buf(),
            index: i,
            name: e.name.clone(),
            problem,
        };
        let parts = components(&e.name).map_err(|n| err(n.into()))?;
        if e.inner_offset != 0 {
            return Err(err(EntryError::InnerOffset {
                found: e.inner_offset,
            }));
        }
        if e.kind == "chunk" {
            let parts = parts.ok_or_else(|| err(EntryError::ChunkOfRoot))?;
            let at = match &last_file {
                Some((at, name)) if *name == parts => *at,
                _ => return Err(err(EntryError::ChunkWithoutFile)),
            };
            let digest = if e.chunk_digest.is_empty() {
                None
            } else {
                Some(sha256_digest("chunkDigest", &e.chunk_digest).map_err(&err)?)
            };
            files[at].1.chunks.push(TocChunk {
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
        let source = match &parts {
            Some(p) => path.join(shown(p)),
            None => path.to_path_buf(),
        };
        let (fmt, kind) = match e.kind.as_str() {
            "dir" => (libc::S_IFDIR, Kind::Dir(Vec::new())),
            "reg" => (libc::S_IFREG, Kind::File),
            "symlink" => {
                if e.link_name.is_empty() {
                    return Err(err(EntryError::SymlinkWithoutTarget));
                }
                if e.link_name.len() > 4095 || e.link_name.contains('\0') {
                    return Err(err(EntryError::SymlinkTarget {
                        found: e.link_name.len(),
                    }));
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
            other => {
                return Err(err(EntryError::UnknownType {
                    found: other.to_string(),
                }))
            }
        };
        let Some(parts) = parts else {
            // The root: only its metadata.
            if fmt != libc::S_IFDIR {
                return Err(err(EntryError::RootNotDir {
                    found: e.kind.clone(),
                }));
            }
            set_meta(names.root_mut(), e, fmt).map_err(&err)?;
            continue;
        };
        if e.kind == "hardlink" {
            let target = components(&e.link_name)
                .map_err(|problem| {
                    err(EntryError::HardLinkName {
                        target: e.link_name.clone(),
                        problem,
                    })
                })?
                .ok_or_else(|| err(EntryError::HardLinkToRoot))?;
            // Its data is the target's; no chunk entries follow a hard link.
            names.link(&parts, &target, &e.link_name).map_err(&err)?;
            continue;
        }
        let mut node = dir_node(source);
        node.kind = kind;
        set_meta(&mut node, e, fmt).map_err(&err)?;
        if fmt == libc::S_IFDIR {
            names.put_dir(&parts, node).map_err(&err)?;
            continue;
        }
        let inode = names.put_inode(&parts, node).map_err(&err)?;
        if fmt == libc::S_IFREG {
            let digest = if !e.chunk_digest.is_empty() {
                Some(sha256_digest("chunkDigest", &e.chunk_digest).map_err(&err)?)
            } else if !e.digest.is_empty() && (e.chunk_size == 0 || e.chunk_size >= e.size) {
                // One chunk: the file's digest is the chunk's.
                Some(sha256_digest("digest", &e.digest).map_err(&err)?)
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
            files.push((
                inode,
                FileChunks {
                    entry: i,
                    size: e.size,
                    chunks,
                },
            ));
            last_file = Some((files.len() - 1, parts));
        }
    }

    let (mut tree, nodes_of) = names.flatten();
    // Files some name still reaches: the others were replaced by later entries.
    let files: Vec<(InodeId, FileChunks)> = files
        .into_iter()
        .filter(|(inode, _)| !nodes_of[*inode].is_empty())
        .collect();
    let placed = place_chunks(
        path,
        &toc.entries,
        files.iter().map(|(_, f)| f),
        chunk_size,
        blob_index,
        data_size,
    )?;
    let mut data_bytes = 0u64;
    for ((inode, file), list) in files.iter().zip(placed.per_file) {
        data_bytes = data_bytes.saturating_add(file.size);
        let infos: Vec<ChunkInfo> = list.iter().map(|&c| placed.chunks[c].clone()).collect();
        for &id in &nodes_of[*inode] {
            tree.nodes[id].data = FileData::Chunks(infos.clone());
        }
    }
    Ok(StargzLayer {
        tree,
        chunk_size: placed.chunk_size,
        chunks: placed.chunks,
        data_bytes,
        chunk_entries: placed.chunk_entries,
    })
}

/// Metadata common to all entry kinds.
fn set_meta(node: &mut Node, e: &TocEntry, fmt: u32) -> Result<(), EntryError> {
    if e.mode & !0o7777 != 0 && e.mode & libc::S_IFMT != fmt {
        return Err(EntryError::ModeType {
            mode: e.mode,
            kind: e.kind.clone(),
        });
    }
    node.mode = fmt | (e.mode & 0o7777);
    node.uid = e.uid;
    node.gid = e.gid;
    node.mtime = parse_rfc3339(&e.modtime).map_err(EntryError::Modtime)?;
    node.mtime_nsec = 0;
    node.rdev = match fmt {
        libc::S_IFCHR | libc::S_IFBLK => {
            if e.dev_major > 0xfff || e.dev_minor > 0xf_ffff {
                return Err(EntryError::Device {
                    major: e.dev_major,
                    minor: e.dev_minor,
                });
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
            .map_err(|source| EntryError::XattrValue {
                xattr: name.clone(),
                source,
            })?;
        crate::builder::source::dir::check_xattr(name.as_bytes(), &value)?;
        xattrs.push((name.as_bytes().to_vec(), value));
    }
    xattrs.sort();
    crate::builder::source::dir::check_xattrs(&xattrs)?;
    node.xattrs = xattrs;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
