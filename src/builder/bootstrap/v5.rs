//! Lays out and encodes a RAFS v5 bootstrap from a tree and its chunks, as upstream
//! 2.2.0's builder does (`--fs-version 5`), so that its `nydusd` serves it, with
//! `digest_validate` too.
//!
//! Record order (upstream's `build_rafs`): the root is record 1; a directory's children,
//! sorted by name, get consecutive records when the directory is reached, and the
//! directories are reached depth first in that order. A hard-linked inode's number is the
//! record of its first name in this order; every name has a record of its own, with the
//! inode's chunk infos repeated. Each record's inode digest is upstream's: of the chunk
//! digests (regular file), of the target (symlink), of the children's digests in order
//! (directory), of nothing (anything else). Directory sizes are upstream's made-up size
//! (8 bytes plus the name per child, rounded up to 4 KiB), and 512-byte block counts
//! include the xattrs. Xattr pairs are written sorted by name (upstream writes them in
//! hash-map order, so its bytes there vary from build to build).

use thiserror::Error;

use super::super::tree::{Kind, NodeId, Tree};
use super::v6::{BootstrapInput, BootstrapOptions};
use crate::format::v5::inode::{self, flags as iflags, Inode, INODE_SIZE};
use crate::format::v5::super_block::{SuperBlock, SIZE as SUPER_SIZE};
use crate::format::v5::tables::{self, Blob};
use crate::format::v5::{align, ChunkInfo};
use crate::format::v6::super_block::flags;
use crate::storage::compress;

/// Why a tree cannot be written as a RAFS v5 bootstrap.
#[derive(Debug, Error)]
pub enum WriteError {
    /// A limit of the v5 layout is exceeded.
    #[error("{}: {what}", String::from_utf8_lossy(image_path))]
    Limit {
        /// The entry's path in the image ("/" for the image as a whole).
        image_path: Vec<u8>,
        /// Which limit.
        what: String,
    },
}

impl From<WriteError> for crate::builder::BuildError {
    fn from(e: WriteError) -> Self {
        crate::builder::BuildError::Options(format!("cannot write a RAFS v5 bootstrap: {e}"))
    }
}

/// Settings of a v5 bootstrap beyond what v6 shares.
#[derive(Clone, Copy, Debug)]
pub struct V5Options<'a> {
    /// Chunk size, compressor, digester.
    pub base: BootstrapOptions,
    /// Mark the later names of hard links with the inode's `HARDLINK` flag, as upstream's
    /// tar and eStargz builders do (its directory builder does not).
    pub hardlink_flag: bool,
    /// Each blob's readahead range (offset, bytes), by table position; blobs past the
    /// end get 0/0. Upstream's `--prefetch-policy blob` gives a new blob's head, where
    /// the covered files' new chunks were stored first; its merge keeps each layer's.
    pub readahead: &'a [(u32, u32)],
}

/// 512-byte blocks upstream records: of the size and the padded xattr pairs.
fn blocks(size: u64, xattrs: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    let pairs: u64 = xattrs
        .iter()
        .map(|(k, v)| 4 + k.len() as u64 + 1 + v.len() as u64)
        .sum();
    (size + align(pairs)).div_ceil(512)
}

/// Records in upstream's order: node ids, and each node's first child's record number.
fn record_order(tree: &Tree) -> (Vec<NodeId>, Vec<u32>) {
    let mut order = vec![0];
    let mut first_child = vec![0u32; tree.nodes.len()];
    let mut stack = vec![0];
    while let Some(dir) = stack.pop() {
        let Kind::Dir(children) = &tree.nodes[dir].kind else {
            continue;
        };
        first_child[dir] = order.len() as u32 + 1;
        order.extend_from_slice(children);
        stack.extend(
            children
                .iter()
                .rev()
                .filter(|&&c| matches!(tree.nodes[c].kind, Kind::Dir(_))),
        );
    }
    (order, first_child)
}

/// Builds the bootstrap bytes.
pub fn write(input: &BootstrapInput, opts: V5Options<'_>) -> Result<Vec<u8>, WriteError> {
    let tree = input.tree;
    let chunk_size = opts.base.chunk_size as u64;
    let limit = |id: NodeId, what: String| WriteError::Limit {
        image_path: tree.image_path(id),
        what,
    };
    let (order, first_child) = record_order(tree);
    let entries = u32::try_from(order.len())
        .map_err(|_| limit(0, format!("{} entries, more than 2^32", order.len())))?;
    let mut record_of = vec![0u64; tree.nodes.len()];
    for (i, &id) in order.iter().enumerate() {
        record_of[id] = i as u64 + 1;
    }
    // An inode's number is its first record; upstream groups names by source inode.
    let group = |id: NodeId| tree.nodes[id].hardlink_of.unwrap_or(id);
    let mut ino_of_group = vec![0u64; tree.nodes.len()];
    for &id in &order {
        let g = group(id);
        if ino_of_group[g] == 0 {
            ino_of_group[g] = record_of[id];
        }
    }
    let inodes = order
        .iter()
        .filter(|&&id| id != 0 && ino_of_group[group(id)] == record_of[id])
        .count();

    // Each record's inode and its tails' sizes; digests bottom up afterwards.
    let mut records: Vec<Inode> = Vec::with_capacity(order.len());
    let mut chunk_lists: Vec<Vec<ChunkInfo>> = Vec::with_capacity(order.len());
    for &id in &order {
        let node = &tree.nodes[id];
        let first = &tree.nodes[group(id)];
        let name: &[u8] = if id == 0 { b"/" } else { &node.name };
        let mut inode = Inode {
            parent: if id == 0 {
                0
            } else {
                ino_of_group[group(node.parent)]
            },
            ino: ino_of_group[group(id)],
            uid: first.uid,
            gid: first.gid,
            mode: first.mode,
            nlink: first.nlink,
            name_size: name.len() as u16,
            rdev: first.rdev as u32,
            mtime: first.mtime as u64,
            mtime_nsec: first.mtime_nsec,
            ..Inode::default()
        };
        if !first.xattrs.is_empty() {
            inode.flags |= iflags::XATTR;
        }
        if opts.hardlink_flag && node.hardlink_of.is_some() {
            inode.flags |= iflags::HARDLINK;
        }
        let mut chunks = Vec::new();
        match &first.kind {
            Kind::Dir(children) => {
                let names: u64 = children
                    .iter()
                    .map(|&c| tree.nodes[c].name.len() as u64 + 8)
                    .sum();
                inode.size = names.next_multiple_of(4096).max(4096);
                inode.child_index = first_child[id];
                inode.child_count = children.len() as u32;
                let subdirs = children
                    .iter()
                    .filter(|&&c| matches!(tree.nodes[c].kind, Kind::Dir(_)))
                    .count();
                inode.nlink = 2 + subdirs as u32;
            }
            Kind::Symlink(target) => {
                let len = u16::try_from(target.len())
                    .map_err(|_| limit(id, format!("symlink target of {} bytes", target.len())))?;
                inode.size = target.len() as u64;
                inode.symlink_size = len;
                inode.flags |= iflags::SYMLINK;
            }
            Kind::File => {
                inode.size = first.size;
                let list = &input.file_chunks[group(id)];
                inode.child_count = u32::try_from(list.len())
                    .map_err(|_| limit(id, format!("{} chunks", list.len())))?;
                chunks = list
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| ChunkInfo {
                        file_offset: i as u64 * chunk_size,
                        ..input.chunks[c as usize].clone()
                    })
                    .collect();
            }
            _ => {}
        }
        inode.blocks = blocks(inode.size, &first.xattrs);
        records.push(inode);
        chunk_lists.push(chunks);
    }
    // Digests, children (later records) before their directory.
    let digester = opts.base.digester;
    for i in (0..order.len()).rev() {
        let id = order[i];
        let mut data = Vec::new();
        match &tree.nodes[group(id)].kind {
            Kind::Dir(_) => {
                let r = &records[i];
                let first = r.child_index as usize - 1;
                for child in &records[first..first + r.child_count as usize] {
                    data.extend_from_slice(&child.digest);
                }
            }
            Kind::Symlink(target) => data.extend_from_slice(target),
            Kind::File => {
                for c in &chunk_lists[i] {
                    data.extend_from_slice(&c.digest);
                }
            }
            _ => {}
        }
        records[i].digest = compress::digest(digester, &data);
    }

    // The prefetch table (policy `fs`): per pattern that named an entry, in pattern
    // order, that entry's inode number; unlike v6, upstream leaves no slot for a pattern
    // that named nothing.
    let prefetch: Vec<u32> = match input.prefetch {
        Some(p) => p
            .nodes
            .iter()
            .map(|&id| {
                let ino = ino_of_group[group(id)];
                u32::try_from(ino).map_err(|_| {
                    limit(
                        id,
                        format!("inode {ino} in the prefetch table, past 32 bits"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };

    // Layout: superblock, inode table, prefetch table, blob tables, records.
    let blobs: Vec<Blob> = input
        .blobs
        .iter()
        .enumerate()
        .map(|(i, b)| Blob {
            blob_id: b.blob_id.clone(),
            readahead_offset: opts.readahead.get(i).map_or(0, |r| r.0),
            readahead_size: opts.readahead.get(i).map_or(0, |r| r.1),
            chunk_count: b.chunk_count,
            features: b.features,
            uncompressed_size: b.uncompressed_size,
            compressed_size: b.compressed_size,
        })
        .collect();
    let inode_table_offset = SUPER_SIZE;
    let prefetch_table_offset = inode_table_offset + tables::inode_table_size(entries);
    let blob_table_offset = prefetch_table_offset + align(prefetch.len() as u64 * 4);
    let blob_table_size = tables::blob_table_size(&blobs);
    let ext_offset = blob_table_offset + blob_table_size;
    let mut at = ext_offset + blobs.len() as u64 * 64;
    let mut offsets = Vec::with_capacity(order.len());
    for (i, &id) in order.iter().enumerate() {
        offsets.push(at);
        at += records[i].head_size()
            + inode::xattr_area_size(&tree.nodes[group(id)].xattrs)
            + inode::chunks_size(
                records[i].child_count * (records[i].kind() == libc::S_IFREG) as u32,
            );
    }
    if at >> 3 > u32::MAX as u64 {
        return Err(limit(
            0,
            format!("{at} bytes of metadata, more than the 32 GiB an inode table addresses"),
        ));
    }
    let mut sb_flags = opts.base.compressor.flag() | digester.flag() | flags::EXPLICIT_UID_GID;
    if tree.nodes.iter().any(|n| !n.xattrs.is_empty()) {
        sb_flags |= flags::HAS_XATTR;
    }
    let sb = SuperBlock {
        flags: sb_flags,
        compressor: opts.base.compressor,
        digester,
        chunk_size: opts.base.chunk_size,
        inodes: inodes as u64,
        inode_table_offset,
        inode_table_entries: entries,
        prefetch_table_offset,
        prefetch_table_entries: prefetch.len() as u32,
        blob_table_offset,
        blob_table_size: blob_table_size as u32,
        ext_blob_table_offset: ext_offset,
        ext_blob_table_entries: blobs.len() as u32,
    };
    let mut out = Vec::with_capacity(at as usize);
    out.extend_from_slice(&sb.encode());
    tables::encode_inode_table(&offsets, &mut out);
    tables::encode_prefetch_table(&prefetch, &mut out);
    tables::encode_blob_table(&blobs, &mut out);
    tables::encode_ext_blob_table(&blobs, &mut out);
    for (i, &id) in order.iter().enumerate() {
        debug_assert_eq!(out.len() as u64, offsets[i]);
        let node = &tree.nodes[id];
        let first = &tree.nodes[group(id)];
        let name: &[u8] = if id == 0 { b"/" } else { &node.name };
        let target: &[u8] = match &first.kind {
            Kind::Symlink(t) => t,
            _ => b"",
        };
        records[i].encode(name, target, &mut out);
        inode::encode_xattrs(&first.xattrs, &mut out);
        inode::encode_chunks(&chunk_lists[i], &mut out);
    }
    debug_assert_eq!(out.len() as u64, at);
    debug_assert!(out.len() as u64 > SUPER_SIZE + INODE_SIZE);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::builder::tree::tests::Sketch;
    use crate::format::v6::tables::{BlobEntry, ChunkInfo as Chunk};
    use crate::format::{Compressor, Digester};
    use crate::reader::{Image, Nid};
    use crate::storage::blobs::BlobSource;

    const CHUNK_SIZE: u32 = 0x1000;

    fn options() -> V5Options<'static> {
        V5Options {
            base: BootstrapOptions {
                chunk_size: CHUNK_SIZE,
                compressor: Compressor::Zstd,
                digester: Digester::Blake3,
            },
            hardlink_flag: false,
            readahead: &[],
        }
    }

    /// The v5 bootstrap of a sketched tree whose files have no chunks.
    pub(crate) fn bootstrap_of(tree: &Tree) -> Vec<u8> {
        let file_chunks = vec![Vec::new(); tree.nodes.len()];
        let input = BootstrapInput {
            tree,
            file_chunks: &file_chunks,
            chunks: &[],
            blobs: &[],
            prefetch: None,
        };
        write(&input, options()).expect("the sketch fits the format")
    }

    /// A blob of `n` chunks of `CHUNK_SIZE` stored raw, and its table entry.
    pub(crate) fn raw_chunks(n: u32) -> (Vec<Chunk>, BlobEntry) {
        let chunks = (0..n)
            .map(|i| Chunk {
                digest: crate::storage::compress::digest(
                    Digester::Blake3,
                    &vec![i as u8; CHUNK_SIZE as usize],
                ),
                blob_index: 0,
                compressed: false,
                compressed_size: CHUNK_SIZE,
                uncompressed_size: CHUNK_SIZE,
                compressed_offset: i as u64 * CHUNK_SIZE as u64,
                uncompressed_offset: i as u64 * CHUNK_SIZE as u64,
                file_offset: 0,
                index: i,
            })
            .collect();
        let blob = BlobEntry {
            blob_id: "cd".repeat(32),
            chunk_size: CHUNK_SIZE,
            chunk_count: n,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            features: 0,
            compressed_size: n as u64 * CHUNK_SIZE as u64,
            uncompressed_size: n as u64 * CHUNK_SIZE as u64,
            toc_size: 0,
            ci_compressor: Compressor::None,
            ci_offset: 0,
            ci_compressed_size: 0,
            ci_uncompressed_size: 0,
            toc_digest: [0; 32],
        };
        (chunks, blob)
    }

    /// root: a/ (deep/ (f: 3 chunks, xattrs)), b/ (hl: a link of /a/deep/f), c (fifo),
    /// l -> a/deep/f, d/ (empty). Breadth first, /b/hl comes before /a/deep/f; in
    /// upstream's record order /a/deep/f comes first, so it carries the inode number.
    pub(crate) fn sample() -> (Tree, Vec<Vec<u32>>, Vec<Chunk>, BlobEntry) {
        let mut s = Sketch::new();
        let a = s.dir(0, "a");
        let b = s.dir(0, "b");
        s.add(0, b"c", Kind::Fifo, 0o600);
        s.dir(0, "d");
        s.symlink(0, "l", b"a/deep/f");
        let deep = s.dir(a, "deep");
        let f = s.file(deep, "f", 3 * CHUNK_SIZE as u64);
        s.node(f).xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
        s.hard_link(b, "hl", f);
        let mut file_chunks = vec![Vec::new(); s.tree.nodes.len()];
        file_chunks[f] = vec![2, 0, 1];
        let (chunks, blob) = raw_chunks(3);
        (s.tree, file_chunks, chunks, blob)
    }

    pub(crate) fn sample_bootstrap() -> Vec<u8> {
        let (tree, file_chunks, chunks, blob) = sample();
        let input = BootstrapInput {
            tree: &tree,
            file_chunks: &file_chunks,
            chunks: &chunks,
            blobs: std::slice::from_ref(&blob),
            prefetch: None,
        };
        write(&input, options()).unwrap()
    }

    fn open(bytes: Vec<u8>) -> Image {
        Image::from_bytes("v5.boot".as_ref(), bytes, BlobSource::None).expect("opens")
    }

    #[test]
    fn records_follow_upstreams_order_and_read_back() {
        let image = open(sample_bootstrap());
        assert_eq!(image.fs_version(), 5);
        assert_eq!(image.root(), Nid(1));
        // Root children are records 2..=6, then a's (7), deep's (8), b's (9).
        let names = |p: &[u8]| -> Vec<(Vec<u8>, u64)> {
            let nid = image.resolve(p).unwrap().unwrap();
            image
                .read_dir(nid)
                .unwrap()
                .into_iter()
                .map(|e| (e.name, e.nid.0))
                .collect()
        };
        assert_eq!(
            names(b"/"),
            [
                (b"a".to_vec(), 2),
                (b"b".to_vec(), 3),
                (b"c".to_vec(), 4),
                (b"d".to_vec(), 5),
                (b"l".to_vec(), 6)
            ]
        );
        assert_eq!(names(b"/a"), [(b"deep".to_vec(), 7)]);
        assert_eq!(names(b"/a/deep"), [(b"f".to_vec(), 8)]);
        // The link's own record (9) serves inode 8.
        assert_eq!(names(b"/b"), [(b"hl".to_vec(), 8)]);
        assert!(names(b"/d").is_empty());
        let f = image.resolve(b"/b/hl").unwrap().unwrap();
        let st = image.stat(f).unwrap();
        assert_eq!((st.ino, st.nlink, st.size), (8, 2, 3 * CHUNK_SIZE as u64));
        assert_eq!(
            image.xattrs(f).unwrap(),
            [(b"user.k".to_vec(), b"v".to_vec())]
        );
        let chunks: Vec<u32> = image
            .chunk_addrs(f)
            .unwrap()
            .into_iter()
            .map(|a| a.unwrap().chunk_index)
            .collect();
        assert_eq!(chunks, [2, 0, 1]);
        let l = image.resolve(b"/l").unwrap().unwrap();
        assert_eq!(image.readlink(l).unwrap(), b"a/deep/f");
        let root = image.stat(Nid(1)).unwrap();
        assert_eq!((root.nlink, root.size), (5, 4096));
        assert_eq!(image.lookup(Nid(1), b"zz").unwrap(), None);
        assert_eq!(image.lookup(Nid(1), b"c").unwrap(), Some(Nid(4)));
        assert_eq!(image.chunk_table().count(), 3);
        assert_eq!(image.blobs()[0].chunk_count, 3);
        // Every directory's digest and its children's hold.
        image
            .walk(|path, nid| {
                if image.stat(nid)?.mode & libc::S_IFMT == libc::S_IFDIR {
                    assert_eq!(image.v5_digest_mismatch(nid)?, None, "{path:?}");
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn digests_and_blocks_are_upstreams() {
        let bytes = sample_bootstrap();
        let sb =
            crate::format::v5::super_block::SuperBlock::decode(&bytes, bytes.len() as u64).unwrap();
        let record = |index: u64| {
            let at = tables::inode_offset(
                &bytes[sb.inode_table_offset as usize..],
                sb.inode_table_offset,
                sb.inode_table_entries,
                index,
            )
            .unwrap();
            Inode::decode(&bytes[at as usize..], at).unwrap()
        };
        let d = |data: &[u8]| compress::digest(Digester::Blake3, data);
        // The fifo and the empty directory: the digest of nothing.
        assert_eq!(record(4).digest, d(b""));
        assert_eq!(record(5).digest, d(b""));
        assert_eq!(record(6).digest, d(b"a/deep/f"));
        // The file: its chunk digests in file order; its link the same.
        let (_, _, chunks, _) = sample();
        let want: Vec<u8> = [2, 0, 1].iter().flat_map(|&i| chunks[i].digest).collect();
        assert_eq!(record(8).digest, d(&want));
        assert_eq!(record(9).digest, d(&want));
        // 3 chunks plus the padded xattr pair (4 + 6 + 1 + 1 = 12 -> 16 bytes).
        assert_eq!(record(8).blocks, (3 * CHUNK_SIZE as u64 + 16).div_ceil(512));
        // A directory: its children's digests in order.
        assert_eq!(record(3).digest, d(&record(9).digest));
        assert_eq!(sb.inodes, 7, "the root and the second name are not counted");
        assert_eq!(record(8).parent, 7);
        assert_eq!(record(9).parent, 3);
    }

    #[test]
    fn tar_builds_flag_the_later_names_of_hard_links() {
        let (tree, file_chunks, chunks, blob) = sample();
        let input = BootstrapInput {
            tree: &tree,
            file_chunks: &file_chunks,
            chunks: &chunks,
            blobs: std::slice::from_ref(&blob),
            prefetch: None,
        };
        let opts = V5Options {
            hardlink_flag: true,
            ..options()
        };
        let flagged = write(&input, opts).unwrap();
        let plain = write(&input, options()).unwrap();
        assert_eq!(flagged.len(), plain.len());
        let diff: Vec<usize> = (0..plain.len())
            .filter(|&i| plain[i] != flagged[i])
            .collect();
        assert_eq!(diff.len(), 1, "one flag bit: {diff:?}");
    }
}
