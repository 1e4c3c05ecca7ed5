//! Lays out and encodes a RAFS v6 bootstrap from a tree and its chunks.
//!
//! Layout (upstream's order): block 0 holds the superblock, its extension and the device
//! table; the blob table follows at the next block, and the prefetch table (with policy
//! `fs`) right after it, unaligned, as upstream places it; inodes start on the next block,
//! the metadata area one block before them, so the root's nid is 128 as upstream's;
//! directory and symlink blocks that cannot be inlined go after the inodes; the chunk info
//! table comes last.

use std::path::PathBuf;

use thiserror::Error;

use super::super::prefetch::PrefetchNodes;
use super::super::tree::{Kind, NodeId, Tree};
use crate::format::v6::inode::{
    self, encode_dirent, ChunkAddr, DataLayout, FileType, Inode, XattrError, CHUNK_FORMAT_INDEXES,
    DIRENT_SIZE, EXTENDED_SIZE, SLOT_SIZE,
};
use crate::format::v6::prefetch as prefetch_table;
use crate::format::v6::super_block::{flags, DeviceSlot, SuperBlock, DEVTABLE_OFFSET};
use crate::format::v6::tables::{
    blob_features, BlobEntry, ChunkInfo, BLOB_ENTRY_SIZE, CHUNK_INFO_SIZE,
};
use crate::format::v6::{BLOCK_BITS, BLOCK_SIZE};
use crate::format::{Compressor, Digester};

/// Why a tree cannot be written as a RAFS v6 bootstrap. The sources check what they
/// read, so this is a tree put together from something else (a parent or merged image)
/// or a source that missed a check.
#[derive(Debug, Error)]
pub enum WriteError {
    /// An entry's xattrs do not fit its inode.
    #[error("{}: cannot store its xattrs", String::from_utf8_lossy(image_path))]
    Xattrs {
        /// The entry's path in the image.
        image_path: Vec<u8>,
        /// Where the entry came from.
        source_path: PathBuf,
        /// What does not fit.
        #[source]
        source: XattrError,
    },
    /// The prefetch table cannot be written (absurdly many patterns, or a bootstrap
    /// whose nids pass 32 bits).
    #[error("cannot write the prefetch table: {0}")]
    PrefetchTable(String),
}

impl From<WriteError> for crate::builder::BuildError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Xattrs {
                source_path,
                source,
                ..
            } => crate::builder::BuildError::Source {
                path: source_path,
                what: source.to_string(),
            },
            e @ WriteError::PrefetchTable(_) => crate::builder::BuildError::Options(e.to_string()),
        }
    }
}

/// Settings recorded in the superblock.
#[derive(Clone, Copy, Debug)]
pub struct BootstrapOptions {
    /// Chunk size.
    pub chunk_size: u32,
    /// Chunk compressor.
    pub compressor: Compressor,
    /// Chunk digester.
    pub digester: Digester,
}

/// Everything the bootstrap describes.
pub struct BootstrapInput<'a> {
    /// The tree, breadth first.
    pub tree: &'a Tree,
    /// Per node, indexes into `chunks` in file order.
    pub file_chunks: &'a [Vec<u32>],
    /// The chunk table.
    pub chunks: &'a [ChunkInfo],
    /// The blob table.
    pub blobs: &'a [BlobEntry],
    /// The prefetch table's entries, if it has one. Upstream writes one only when there
    /// is a blob table to put it after; so does this.
    pub prefetch: Option<&'a PrefetchNodes>,
}

/// Where one inode goes and what follows it.
struct Placed {
    node: NodeId,
    offset: u64,
    inode: Inode,
    /// Directory or symlink bytes (the whole data, before splitting into blocks and tail).
    data: Vec<u8>,
    /// Blocks of `data` stored outside the inode area.
    plain_blocks: u64,
}

/// Builds the bootstrap bytes. The result's length is a multiple of the block size.
pub fn write(input: &BootstrapInput, opts: BootstrapOptions) -> Result<Vec<u8>, WriteError> {
    let tree = input.tree;
    let blob_count = input.blobs.len() as u64;
    let devtable_end = DEVTABLE_OFFSET + 128 * blob_count;
    let blob_table_offset = devtable_end.next_multiple_of(BLOCK_SIZE);
    let blob_table_size = BLOB_ENTRY_SIZE as u64 * blob_count;
    // A slot per pattern, and never fewer than the entries to write.
    let prefetch = input
        .prefetch
        .map(|p| (p, p.slots.max(p.nodes.len())))
        .filter(|&(_, slots)| slots > 0 && blob_count > 0);
    let prefetch_table_offset = blob_table_offset + blob_table_size;
    let prefetch_table_size = match prefetch {
        Some((_, slots)) => u32::try_from(slots as u64 * prefetch_table::ENTRY_SIZE)
            .map_err(|_| WriteError::PrefetchTable(format!("{slots} patterns")))?,
        None => 0,
    };
    let inode_start =
        (prefetch_table_offset + prefetch_table_size as u64).next_multiple_of(BLOCK_SIZE);
    // One block before the first inode, so that the root gets nid 128 as upstream's does.
    let meta_start = inode_start - BLOCK_SIZE;

    // Pass 1: inode numbers and positions. A node's id maps to the inode that serves it.
    let mut order: Vec<NodeId> = Vec::new();
    let mut inode_of: Vec<usize> = vec![usize::MAX; tree.nodes.len()];
    for (id, node) in tree.nodes.iter().enumerate() {
        if node.hardlink_of.is_none() {
            inode_of[id] = order.len();
            order.push(id);
        }
    }
    for (id, node) in tree.nodes.iter().enumerate() {
        if let Some(first) = node.hardlink_of {
            inode_of[id] = inode_of[first];
        }
    }
    let chunk_bits = opts.chunk_size.trailing_zeros() - BLOCK_BITS;
    let mut placed: Vec<Placed> = Vec::with_capacity(order.len());
    let mut slots = SlotAllocator::new(inode_start);
    for (ino_index, &id) in order.iter().enumerate() {
        let node = &tree.nodes[id];
        let xattr_err = |source| WriteError::Xattrs {
            image_path: tree.image_path(id),
            source_path: node.source.clone(),
            source,
        };
        let xattr_size = inode::xattr_area_size(&node.xattrs).map_err(xattr_err)?;
        let (data, data_len, layout_data) = match &node.kind {
            Kind::Dir(_) => (Vec::new(), dir_data_len(tree, id), true),
            Kind::Symlink(target) => (target.clone(), target.len(), true),
            _ => (Vec::new(), 0, false),
        };
        let head = EXTENDED_SIZE + xattr_size;
        let mut layout = DataLayout::FlatPlain;
        let mut plain_blocks = 0;
        let mut record = head as u64;
        // Bytes from the inode's start that must stay inside one block: the inode and its
        // xattrs, and an inline tail with them.
        let mut unbroken = head as u64;
        if layout_data && data_len > 0 {
            let tail = data_len as u64 % BLOCK_SIZE;
            let full = data_len as u64 / BLOCK_SIZE;
            if tail > 0 && head as u64 + tail <= BLOCK_SIZE {
                layout = DataLayout::FlatInline;
                plain_blocks = full;
                record += tail;
                unbroken = record;
            } else {
                plain_blocks = (data_len as u64).div_ceil(BLOCK_SIZE);
            }
        } else if node.kind == Kind::File {
            layout = DataLayout::ChunkBased;
            let count = node.size.div_ceil(opts.chunk_size as u64);
            record = (head as u64).next_multiple_of(8) + count * inode::CHUNK_ADDR_SIZE as u64;
            // A file's inode may run over a block boundary (EROFS reads such inodes in two
            // pieces), as upstream places them: keeping each in one block wasted 32 bytes
            // in about half of the inode blocks. Its 8-byte chunk indexes are 8-aligned, so
            // none of them is split.
            unbroken = 0;
        }
        let offset = slots.alloc(record, unbroken);
        let extended = true;
        let mode = node.mode as u16;
        let u = match node.kind {
            Kind::File => CHUNK_FORMAT_INDEXES | chunk_bits,
            Kind::CharDevice | Kind::BlockDevice => node.rdev as u32,
            _ => 0,
        };
        let inode = Inode {
            extended,
            layout,
            xattr_icount: inode::xattr_icount(xattr_size)
                .expect("xattr_area_size bounds the area by what the count can say"),
            mode,
            nlink: node.nlink,
            size: if matches!(node.kind, Kind::Dir(_)) {
                data_len as u64
            } else {
                node.size
            },
            u,
            ino: ino_index as u32 + 1,
            uid: node.uid,
            gid: node.gid,
            mtime: node.mtime as u64,
            mtime_nsec: node.mtime_nsec,
        };
        placed.push(Placed {
            node: id,
            offset,
            inode,
            data,
            plain_blocks,
        });
    }
    let pos = slots.end;
    // Data blocks of directories and symlinks that did not fit inline.
    let mut block = pos.div_ceil(BLOCK_SIZE);
    for p in placed.iter_mut() {
        if p.plain_blocks > 0 {
            p.inode.u = block as u32;
            block += p.plain_blocks;
        } else if p.inode.layout != DataLayout::ChunkBased
            && matches!(tree.nodes[p.node].kind, Kind::Dir(_) | Kind::Symlink(_))
        {
            // Fully inline: upstream records the inode's own block.
            p.inode.u = (p.offset / BLOCK_SIZE) as u32;
        }
    }
    let offsets: Vec<u64> = placed.iter().map(|p| p.offset).collect();
    let nid_of = |inode_index: usize| (offsets[inode_index] - meta_start) / SLOT_SIZE;
    let data_end = block * BLOCK_SIZE;
    let chunk_table_offset = data_end;
    let chunk_table_size = (input.chunks.len() * CHUNK_INFO_SIZE) as u64;
    let total = (chunk_table_offset + chunk_table_size).next_multiple_of(BLOCK_SIZE);

    let mut out = vec![0u8; total as usize];
    // Superblock, extension, devices.
    let mut sb_flags = opts.compressor.flag() | opts.digester.flag() | flags::EXPLICIT_UID_GID;
    if tree.nodes.iter().any(|n| !n.xattrs.is_empty()) {
        sb_flags |= flags::HAS_XATTR;
    }
    // Upstream 2.2.0 sets this when every blob stores its chunk digests (a blob with a
    // TOC does), and so also when there is no blob at all.
    if input
        .blobs
        .iter()
        .all(|b| b.features & blob_features::INLINED_CHUNK_DIGEST != 0)
    {
        sb_flags |= flags::INLINED_CHUNK_DIGEST;
    }
    let sb = SuperBlock {
        root_nid: nid_of(0) as u16,
        inodes: order.len() as u64,
        blocks: input
            .blobs
            .iter()
            .map(|b| (b.uncompressed_size / BLOCK_SIZE) as u32)
            .sum(),
        meta_blkaddr: (meta_start / BLOCK_SIZE) as u32,
        extra_devices: blob_count as u16,
        flags: sb_flags,
        compressor: opts.compressor,
        digester: opts.digester,
        chunk_size: opts.chunk_size,
        blob_table_offset,
        blob_table_size: blob_table_size as u32,
        chunk_table_offset: if input.chunks.is_empty() {
            0
        } else {
            chunk_table_offset
        },
        chunk_table_size,
        prefetch_table_offset: if prefetch.is_some() {
            prefetch_table_offset
        } else {
            0
        },
        prefetch_table_size,
    };
    let (sb_bytes, ext_bytes) = sb.encode();
    out[1024..1152].copy_from_slice(&sb_bytes);
    out[1152..1408].copy_from_slice(&ext_bytes);
    for (i, blob) in input.blobs.iter().enumerate() {
        let slot = DeviceSlot {
            blob_id: blob.blob_id.clone(),
            blocks: (blob.uncompressed_size / BLOCK_SIZE) as u32,
        };
        let at = DEVTABLE_OFFSET as usize + i * 128;
        out[at..at + 128].copy_from_slice(&slot.encode());
        let at = blob_table_offset as usize + i * BLOB_ENTRY_SIZE;
        out[at..at + BLOB_ENTRY_SIZE].copy_from_slice(&blob.encode(i as u32));
    }

    if let Some((p, slots)) = prefetch {
        let nids = p
            .nodes
            .iter()
            .map(|&id| {
                let nid = nid_of(inode_of[id]);
                u32::try_from(nid).map_err(|_| {
                    WriteError::PrefetchTable(format!(
                        "{}: nid {nid} does not fit 32 bits",
                        String::from_utf8_lossy(&tree.image_path(id))
                    ))
                })
            })
            .collect::<Result<Vec<u32>, _>>()?;
        let bytes = prefetch_table::encode(&nids, slots);
        let at = prefetch_table_offset as usize;
        out[at..at + bytes.len()].copy_from_slice(&bytes);
    }

    // Inodes and their data.
    let mut buf = Vec::with_capacity(BLOCK_SIZE as usize * 2);
    for p in &placed {
        let node = &tree.nodes[p.node];
        buf.clear();
        p.inode.encode(&mut buf);
        inode::encode_xattrs(&node.xattrs, &mut buf).map_err(|source| WriteError::Xattrs {
            image_path: tree.image_path(p.node),
            source_path: node.source.clone(),
            source,
        })?;
        let data = match &node.kind {
            Kind::Dir(_) => dir_data(tree, p.node, &inode_of, &nid_of),
            _ => p.data.clone(),
        };
        match p.inode.layout {
            DataLayout::ChunkBased => {
                buf.resize(buf.len().next_multiple_of(8), 0);
                for &c in &input.file_chunks[p.node] {
                    let info = &input.chunks[c as usize];
                    ChunkAddr {
                        blob_index: info.blob_index as u8,
                        chunk_index: info.index,
                        block_addr: (info.uncompressed_offset / BLOCK_SIZE) as u32,
                    }
                    .encode(&mut buf);
                }
            }
            DataLayout::FlatInline => {
                let full = p.plain_blocks as usize * BLOCK_SIZE as usize;
                buf.extend_from_slice(&data[full..]);
                write_plain(&mut out, p.inode.u, &data[..full]);
            }
            DataLayout::FlatPlain => {
                if p.plain_blocks > 0 {
                    write_plain(&mut out, p.inode.u, &data);
                }
            }
        }
        let at = p.offset as usize;
        out[at..at + buf.len()].copy_from_slice(&buf);
    }

    // Chunk table.
    let mut table = Vec::with_capacity(chunk_table_size as usize);
    for c in input.chunks {
        c.encode(&mut table);
    }
    let at = chunk_table_offset as usize;
    out[at..at + table.len()].copy_from_slice(&table);
    Ok(out)
}

/// Places inode records in the metadata area. Records are appended, except that space
/// skipped to keep a record inside one block is remembered and filled by later records
/// that fit (first fit), as upstream packs small inodes into earlier blocks.
struct SlotAllocator {
    end: u64,
    gaps: Vec<(u64, u64)>,
}

impl SlotAllocator {
    /// Gaps remembered at most; the smallest go first.
    const MAX_GAPS: usize = 1024;

    fn new(start: u64) -> Self {
        SlotAllocator {
            end: start,
            gaps: Vec::new(),
        }
    }

    /// Offset for a record of `len` bytes whose first `unbroken` bytes must not cross a
    /// block boundary.
    fn alloc(&mut self, len: u64, unbroken: u64) -> u64 {
        let fits = |at: u64| unbroken > BLOCK_SIZE || at % BLOCK_SIZE + unbroken <= BLOCK_SIZE;
        if let Some(i) = self.gaps.iter().position(|&(s, e)| s + len <= e && fits(s)) {
            let (s, e) = self.gaps[i];
            let rest = (s + len).next_multiple_of(SLOT_SIZE);
            if e > rest {
                self.gaps[i] = (rest, e);
            } else {
                self.gaps.remove(i);
            }
            return s;
        }
        if !fits(self.end) {
            let next = self.end.next_multiple_of(BLOCK_SIZE);
            self.gaps.push((self.end, next));
            if self.gaps.len() > Self::MAX_GAPS {
                let smallest = (0..self.gaps.len())
                    .min_by_key(|&i| self.gaps[i].1 - self.gaps[i].0)
                    .expect("not empty");
                self.gaps.swap_remove(smallest);
            }
            self.end = next;
        }
        let at = self.end;
        self.end = (at + len).next_multiple_of(SLOT_SIZE);
        at
    }
}

fn write_plain(out: &mut [u8], blkaddr: u32, data: &[u8]) {
    let at = blkaddr as usize * BLOCK_SIZE as usize;
    out[at..at + data.len()].copy_from_slice(data);
}

/// Sorted directory entries: (name, node serving it). "." and ".." included, sorted with
/// the rest by bytes as EROFS's binary search requires.
fn dir_entries(tree: &Tree, dir: NodeId) -> Vec<(&[u8], NodeId)> {
    let Kind::Dir(children) = &tree.nodes[dir].kind else {
        unreachable!("caller passes directories");
    };
    let mut entries: Vec<(&[u8], NodeId)> = Vec::with_capacity(children.len() + 2);
    entries.push((b".", dir));
    entries.push((b"..", tree.nodes[dir].parent));
    for &c in children {
        entries.push((tree.nodes[c].name.as_slice(), c));
    }
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Splits sorted entries into directory blocks: each block holds its dirents then names.
fn dir_blocks(entries: &[(&[u8], NodeId)]) -> Vec<std::ops::Range<usize>> {
    let mut blocks = Vec::new();
    let mut start = 0;
    let mut used = 0usize;
    for (i, (name, _)) in entries.iter().enumerate() {
        let need = DIRENT_SIZE + name.len();
        if used + need > BLOCK_SIZE as usize {
            blocks.push(start..i);
            start = i;
            used = 0;
        }
        used += need;
    }
    blocks.push(start..entries.len());
    blocks
}

/// Length of a directory's data: full blocks for all but the last, then the last one's
/// entries and names.
fn dir_data_len(tree: &Tree, dir: NodeId) -> usize {
    let entries = dir_entries(tree, dir);
    let blocks = dir_blocks(&entries);
    let last = blocks.last().expect("at least one block");
    let last_len: usize = entries[last.clone()]
        .iter()
        .map(|(n, _)| DIRENT_SIZE + n.len())
        .sum();
    (blocks.len() - 1) * BLOCK_SIZE as usize + last_len
}

/// Encodes a directory's data: blocks of dirents and names, all but the last padded.
fn dir_data(
    tree: &Tree,
    dir: NodeId,
    inode_of: &[usize],
    nid_of: &dyn Fn(usize) -> u64,
) -> Vec<u8> {
    let entries = dir_entries(tree, dir);
    let blocks = dir_blocks(&entries);
    let mut out = Vec::new();
    for (bi, range) in blocks.iter().enumerate() {
        let block_start = out.len();
        let group = &entries[range.clone()];
        let mut nameoff = group.len() * DIRENT_SIZE;
        for (name, node) in group {
            let target = inode_of[*node];
            let mode = tree.nodes[*node].mode;
            encode_dirent(
                nid_of(target),
                nameoff as u16,
                FileType::from_mode(mode),
                &mut out,
            );
            nameoff += name.len();
        }
        for (name, _) in group {
            out.extend_from_slice(name);
        }
        if bi + 1 < blocks.len() {
            out.resize(block_start + BLOCK_SIZE as usize, 0);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::builder::tree::tests::Sketch;
    use crate::builder::tree::{FileData, Node};
    use crate::format::v6::inode::decode_dirents;
    use crate::format::v6::tables::blob_features;
    use crate::reader::Image;
    use crate::storage::blobs::BlobSource;
    use std::path::Path;

    const CHUNK_SIZE: u32 = 0x1000;

    /// The bootstrap of `tree` without file data: files are all holes.
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

    fn options() -> BootstrapOptions {
        BootstrapOptions {
            chunk_size: CHUNK_SIZE,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
        }
    }

    pub(crate) fn open(bytes: Vec<u8>) -> Image {
        Image::from_bytes("test.boot".as_ref(), bytes, BlobSource::None).expect("opens")
    }

    /// Names of the big directory: long enough that it takes several blocks.
    fn big_name(i: usize) -> String {
        format!("entry-{i:04}-{}", "n".repeat(i % 50))
    }

    /// One of each kind of entry, names that sort around "." and "..", symlinks inline and
    /// not, a directory of several blocks, xattrs, a hard link and a file of 3 chunks.
    struct Sample {
        tree: Tree,
        file_chunks: Vec<Vec<u32>>,
        chunks: Vec<ChunkInfo>,
        blobs: Vec<BlobEntry>,
    }

    fn sample() -> Sample {
        let mut s = Sketch::new();
        s.file(0, "!bang", 0);
        s.add(0, b"-dash", Kind::Fifo, 0o600);
        let a = s.file(0, "a", 2 * CHUNK_SIZE as u64 + 10);
        let big = s.dir(0, "big");
        for i in 0..300 {
            s.file(big, &big_name(i), 0);
        }
        let dev = s.add(0, b"dev", Kind::CharDevice, 0o620);
        s.node(dev).rdev = libc::makedev(8, 1);
        s.symlink(0, "link", b"a");
        s.symlink(0, "mid", &[b'm'; 4000]);
        s.symlink(0, "long", &[b'l'; 4095]);
        s.hard_link(0, "hl", a);
        let x = s.file(0, "x", 0);
        let node = s.node(x);
        node.xattrs = vec![
            (b"trusted.t".to_vec(), b"t".to_vec()),
            (b"user.k".to_vec(), b"value".to_vec()),
        ];
        (node.uid, node.gid, node.mode) = (100_000, 4_000_000_000, libc::S_IFREG | 0o4755);
        (node.mtime, node.mtime_nsec) = (4_102_444_800, 999_999_999);
        let mut file_chunks = vec![Vec::new(); s.tree.nodes.len()];
        file_chunks[a] = vec![0, 1, 2];
        let chunks = (0..3u32)
            .map(|i| ChunkInfo {
                digest: [i as u8; 32],
                blob_index: 0,
                compressed: true,
                compressed_size: 100,
                uncompressed_size: if i < 2 { CHUNK_SIZE } else { 10 },
                compressed_offset: i as u64 * 100,
                uncompressed_offset: i as u64 * BLOCK_SIZE,
                file_offset: i as u64 * CHUNK_SIZE as u64,
                index: i,
            })
            .collect();
        let blobs = vec![BlobEntry {
            blob_id: "ab".repeat(32),
            chunk_size: CHUNK_SIZE,
            chunk_count: 3,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            features: blob_features::ALIGNED,
            compressed_size: 300,
            uncompressed_size: 3 * BLOCK_SIZE,
            toc_size: 0,
            ci_compressor: Compressor::None,
            ci_offset: 300,
            ci_compressed_size: 48,
            ci_uncompressed_size: 48,
            toc_digest: [0; 32],
        }];
        Sample {
            tree: s.tree,
            file_chunks,
            chunks,
            blobs,
        }
    }

    /// The bootstrap of `tree` without file data, with one blob (so that it can carry a
    /// prefetch table) and `prefetch`.
    pub(crate) fn bootstrap_with_prefetch(tree: &Tree, prefetch: &PrefetchNodes) -> Vec<u8> {
        let file_chunks = vec![Vec::new(); tree.nodes.len()];
        let blobs = sample().blobs;
        let input = BootstrapInput {
            tree,
            file_chunks: &file_chunks,
            chunks: &[],
            blobs: &blobs,
            prefetch: Some(prefetch),
        };
        write(&input, options()).expect("the sketch fits the format")
    }

    /// The prefetch table sits right after the blob table, one slot per pattern, the
    /// matched nids first; the inodes move to the next block when it runs into theirs.
    #[test]
    fn the_prefetch_table_follows_the_blob_table() {
        use crate::builder::prefetch::prefetch_nodes;
        let mut s = Sketch::new();
        let d = s.dir(0, "d");
        let f = s.file(d, "f", 10);
        s.hard_link(0, "h", f);
        s.symlink(0, "l", b"d/f");
        let tree = s.tree;
        let pats: Vec<std::path::PathBuf> = ["/d", "/nothing", "/h", "/", "/l"]
            .iter()
            .map(Into::into)
            .collect();
        let table = prefetch_nodes(&tree, &pats);
        let image = open(bootstrap_with_prefetch(&tree, &table));
        let sb = image.super_block();
        assert_eq!(sb.blob_table_offset, BLOCK_SIZE);
        assert_eq!(sb.prefetch_table_offset, BLOCK_SIZE + 256);
        assert_eq!(sb.prefetch_table_size, 20);
        assert_eq!((sb.root_nid, sb.meta_blkaddr), (128, 1));
        let want: Vec<crate::reader::Nid> = ["/d", "/d/f", "/", "/l"]
            .iter()
            .map(|p| image.resolve(p.as_bytes()).unwrap().unwrap())
            .collect();
        assert_eq!(image.prefetch_table().unwrap(), want);
        let raw = &bootstrap_with_prefetch(&tree, &table)[4096 + 256..4096 + 256 + 20];
        assert_eq!(
            &raw[16..],
            &[0; 4],
            "the unmatched pattern's slot is zero, last"
        );
        let paths: Vec<Vec<u8>> = image
            .prefetch_paths()
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(paths, [&b"/d"[..], b"/d/f", b"/", b"/l"]);

        // 961 slots end past the blob table's block: inodes start a block later.
        let many = PrefetchNodes {
            slots: 961,
            nodes: vec![0],
        };
        let image = open(bootstrap_with_prefetch(&tree, &many));
        let sb = image.super_block();
        assert_eq!((sb.root_nid, sb.meta_blkaddr), (128, 2));
        assert_eq!(sb.prefetch_table_size, 961 * 4);
        assert_eq!(image.prefetch_table().unwrap(), [image.root()]);
        let fits = PrefetchNodes {
            slots: 960,
            nodes: vec![0],
        };
        let sb = open(bootstrap_with_prefetch(&tree, &fits))
            .super_block()
            .clone();
        assert_eq!(sb.meta_blkaddr, 1);
        // Entries beyond the slots asked for get slots of their own, never overwrite
        // what follows.
        let short = PrefetchNodes {
            slots: 1,
            nodes: vec![0, 1],
        };
        let image = open(bootstrap_with_prefetch(&tree, &short));
        assert_eq!(image.super_block().prefetch_table_size, 8);
        assert_eq!(image.prefetch_table().unwrap().len(), 2);
        crate::ops::check::check(&image, false).unwrap();

        // Without a blob table there is no table, as upstream writes none there.
        let file_chunks = vec![Vec::new(); tree.nodes.len()];
        let bytes = write(
            &BootstrapInput {
                tree: &tree,
                file_chunks: &file_chunks,
                chunks: &[],
                blobs: &[],
                prefetch: Some(&table),
            },
            options(),
        )
        .unwrap();
        let image = open(bytes);
        assert_eq!(image.super_block().prefetch_table_offset, 0);
        assert!(image.prefetch_table().unwrap().is_empty());
    }

    fn write_sample(sample: &Sample) -> Vec<u8> {
        write(
            &BootstrapInput {
                tree: &sample.tree,
                file_chunks: &sample.file_chunks,
                chunks: &sample.chunks,
                blobs: &sample.blobs,
                prefetch: None,
            },
            options(),
        )
        .expect("the sample fits the format")
    }

    #[test]
    fn a_written_tree_reads_back_entry_by_entry() {
        let sample = sample();
        let bytes = write_sample(&sample);
        assert_eq!(bytes.len() % BLOCK_SIZE as usize, 0);
        let image = open(bytes);
        let sb = image.super_block();
        // The blob table takes block 1, inodes start at block 2: the root is nid 128.
        assert_eq!((sb.root_nid, sb.meta_blkaddr), (128, 1));
        assert_eq!(sb.inodes, sample.tree.inode_count() as u64);
        assert_eq!(sb.blob_table_offset, BLOCK_SIZE);
        assert_eq!(image.blobs(), &sample.blobs[..]);
        assert_eq!(image.chunk_table().collect::<Vec<_>>(), sample.chunks);
        assert_eq!(sb.chunk_table_offset % BLOCK_SIZE, 0);

        // Every node, found by its path, has its metadata and contents.
        let tree = &sample.tree;
        let mut seen = 0;
        for (id, node) in tree.nodes.iter().enumerate() {
            let path = tree.image_path(id);
            let shown = String::from_utf8_lossy(&path).into_owned();
            let nid = image.resolve(&path).unwrap().expect(&shown);
            let first = node.hardlink_of.unwrap_or(id);
            let st = image.stat(nid).unwrap();
            assert_eq!(st.mode, node.mode, "{shown}");
            assert_eq!((st.uid, st.gid), (node.uid, node.gid), "{shown}");
            assert_eq!((st.mtime, st.mtime_nsec), (node.mtime, node.mtime_nsec));
            assert_eq!(st.nlink, tree.nodes[first].nlink, "{shown}");
            assert_eq!(st.rdev, node.rdev, "{shown}");
            assert_eq!(image.xattrs(nid).unwrap(), node.xattrs, "{shown}");
            match &node.kind {
                Kind::Symlink(target) => {
                    assert_eq!(&image.readlink(nid).unwrap(), target, "{shown}");
                    assert_eq!(st.size, target.len() as u64);
                }
                Kind::File => assert_eq!(st.size, node.size, "{shown}"),
                Kind::Dir(children) => {
                    let names: Vec<Vec<u8>> = image
                        .read_dir(nid)
                        .unwrap()
                        .into_iter()
                        .map(|e| e.name)
                        .collect();
                    let want: Vec<Vec<u8>> = children
                        .iter()
                        .map(|&c| tree.nodes[c].name.clone())
                        .collect();
                    assert_eq!(names, want, "{shown}: entries in name order");
                }
                _ => assert_eq!(st.size, 0, "{shown}"),
            }
            seen += 1;
        }
        assert_eq!(seen, 311);
        let mut walked = 0;
        image
            .walk(|_, _| {
                walked += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(walked, seen);
        let a = image.resolve(b"/a").unwrap().unwrap();
        assert_eq!(
            image.resolve(b"/hl").unwrap(),
            Some(a),
            "one inode, two names"
        );
        let addrs: Vec<_> = image.chunk_addrs(a).unwrap();
        let want: Vec<_> = (0..3u32)
            .map(|i| {
                Some(ChunkAddr {
                    blob_index: 0,
                    chunk_index: i,
                    block_addr: i,
                })
            })
            .collect();
        assert_eq!(addrs, want);
        assert_eq!(image.resolve(b"/big/absent").unwrap(), None);
        assert_eq!(image.resolve(b"/a/under-a-file").ok().flatten(), None);
    }

    #[test]
    fn dirents_sort_by_bytes_with_dot_and_dotdot() {
        let bytes = write_sample(&sample());
        let image = open(bytes.clone());
        let root = image.inode(image.root()).unwrap();
        assert_eq!(root.inode.layout, DataLayout::FlatInline);
        let at = root.body_offset as usize;
        let data = &bytes[at..at + root.inode.size as usize];
        let entries = decode_dirents(data, root.body_offset).unwrap();
        let names: Vec<&[u8]> = entries.iter().map(|e| e.0).collect();
        let want: [&[u8]; 12] = [
            b"!bang", b"-dash", b".", b"..", b"a", b"big", b"dev", b"hl", b"link", b"long", b"mid",
            b"x",
        ];
        assert_eq!(names, want);
        // "." and ".." of the root are the root.
        assert_eq!((entries[2].1, entries[3].1), (128, 128));
        // File types as EROFS codes them.
        let types: Vec<u8> = entries.iter().map(|e| e.2).collect();
        assert_eq!(types, [1, 5, 2, 2, 1, 2, 3, 1, 7, 7, 7, 1]);
    }

    #[test]
    fn data_goes_inline_when_it_fits_with_the_inode() {
        let image = open(write_sample(&sample()));
        // (path, layout, whole blocks outside the inode area)
        let cases: &[(&[u8], DataLayout, u64)] = &[
            (b"/", DataLayout::FlatInline, 0),
            (b"/link", DataLayout::FlatInline, 0),
            (b"/mid", DataLayout::FlatInline, 0),
            (b"/long", DataLayout::FlatPlain, 1),
            (b"/a", DataLayout::ChunkBased, 0),
            (b"/big", DataLayout::FlatInline, 3),
        ];
        for &(path, layout, blocks) in cases {
            let shown = String::from_utf8_lossy(path);
            let nid = image.resolve(path).unwrap().unwrap();
            let v = image.inode(nid).unwrap();
            assert_eq!(v.inode.layout, layout, "{shown}");
            assert!(v.inode.extended, "{shown}: extended inodes only");
            assert_eq!(v.offset % SLOT_SIZE, 0, "{shown}");
            let size = v.inode.size;
            let (outside, inline) = match layout {
                DataLayout::FlatPlain => (size.div_ceil(BLOCK_SIZE), 0),
                DataLayout::FlatInline => (size / BLOCK_SIZE, size % BLOCK_SIZE),
                DataLayout::ChunkBased => (0, 0),
            };
            assert_eq!(outside, blocks, "{shown}");
            if layout != DataLayout::ChunkBased {
                // The inode, its xattrs and any inline tail stay in one block.
                let end = v.body_offset + inline;
                assert_eq!(v.offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE, "{shown}");
            }
            if blocks > 0 {
                // Whole blocks live after the inodes, before the chunk table.
                let at = v.inode.u as u64 * BLOCK_SIZE;
                assert!(at > v.offset, "{shown}");
                assert!(at + blocks * BLOCK_SIZE <= image.super_block().chunk_table_offset);
            }
        }
    }

    #[test]
    fn directories_split_into_blocks_that_each_fit() {
        let mut s = Sketch::new();
        let d = s.dir(0, "d");
        for i in 0..300 {
            s.file(d, &big_name(i), 0);
        }
        let entries = dir_entries(&s.tree, d);
        let blocks = dir_blocks(&entries);
        assert!(blocks.len() >= 4, "{} blocks", blocks.len());
        let used = |r: &std::ops::Range<usize>| -> usize {
            entries[r.clone()]
                .iter()
                .map(|(n, _)| DIRENT_SIZE + n.len())
                .sum()
        };
        for (i, r) in blocks.iter().enumerate() {
            assert!(used(r) <= BLOCK_SIZE as usize, "block {i}");
            if let Some(next) = entries.get(r.end) {
                // Greedy: the next entry would not have fitted.
                let more = used(r) + DIRENT_SIZE + next.0.len();
                assert!(more > BLOCK_SIZE as usize, "block {i}");
            }
        }
        assert_eq!(blocks.first().unwrap().start, 0);
        assert_eq!(blocks.last().unwrap().end, entries.len());
        let inode_of: Vec<usize> = (0..s.tree.nodes.len()).collect();
        let data = dir_data(&s.tree, d, &inode_of, &|i| i as u64);
        assert_eq!(data.len(), dir_data_len(&s.tree, d));
        let (full, tail) = data.split_at((blocks.len() - 1) * BLOCK_SIZE as usize);
        let mut names = Vec::new();
        for (i, block) in full.chunks(BLOCK_SIZE as usize).chain([tail]).enumerate() {
            for (name, nid, _) in decode_dirents(block, i as u64).unwrap() {
                names.push((name.to_vec(), nid));
            }
        }
        let want: Vec<(Vec<u8>, u64)> = entries
            .iter()
            .map(|(n, id)| (n.to_vec(), *id as u64))
            .collect();
        assert_eq!(names, want);
    }

    /// File inodes are packed as upstream packs them, some across a block boundary
    /// (EROFS reads those in two pieces); their 8-byte chunk indexes never straddle one.
    #[test]
    fn file_inodes_pack_across_block_boundaries() {
        let mut s = Sketch::new();
        for i in 0..400u64 {
            // 0 to 3 chunks: records of 64, 72, 80 or 88 bytes.
            s.file(0, &format!("f{i:03}"), (i % 4) * CHUNK_SIZE as u64);
        }
        let image = open(bootstrap_of(&s.tree));
        let mut crossing = 0;
        for entry in image.read_dir(image.root()).unwrap() {
            let v = image.inode(entry.nid).unwrap();
            let chunks = v.inode.size.div_ceil(CHUNK_SIZE as u64);
            let table = v.body_offset.next_multiple_of(8);
            let end = table + chunks * 8;
            crossing += (v.offset / BLOCK_SIZE != (end - 1) / BLOCK_SIZE) as usize;
            assert_eq!(table % 8, 0);
            let addrs = image.chunk_addrs(entry.nid).unwrap();
            assert_eq!(addrs, vec![None; chunks as usize], "holes only");
        }
        assert!(crossing > 0, "no file inode crosses a block");
    }

    #[test]
    fn slots_keep_records_in_a_block_and_fill_gaps_later() {
        let mut slots = SlotAllocator::new(0);
        // (record length, bytes that must not cross a block, expected offset)
        let steps = [
            (4064, 4064, 0),
            (64, 64, 4096),  // would cross: next block, gap 4064..4096 remembered
            (32, 32, 4064),  // fills the gap
            (100, 0, 4160),  // files may cross
            (4000, 0, 4288), // ... and do
            (64, 64, 8288),
            (5000, 5000, 8352), // longer than a block: cannot help crossing
        ];
        for (i, &(len, unbroken, want)) in steps.iter().enumerate() {
            assert_eq!(slots.alloc(len, unbroken), want, "step {i}");
        }
        assert_eq!(slots.end, (8352u64 + 5000).next_multiple_of(SLOT_SIZE));
    }

    /// A tree whose file has these xattrs.
    fn tree_with(xattrs: inode::Xattrs) -> Tree {
        let node = |name: &[u8], kind: Kind, mode: u32| Node {
            name: name.to_vec(),
            source: PathBuf::from("src").join(String::from_utf8_lossy(name).as_ref()),
            parent: 0,
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            rdev: 0,
            xattrs: Vec::new(),
            hardlink_of: None,
            nlink: 1,
            data: FileData::Chunks(Vec::new()),
        };
        let mut file = node(b"f", Kind::Fifo, libc::S_IFIFO | 0o644);
        file.xattrs = xattrs;
        Tree {
            nodes: vec![node(b"", Kind::Dir(vec![1]), libc::S_IFDIR | 0o755), file],
        }
    }

    fn write_tree(tree: &Tree) -> Result<Vec<u8>, WriteError> {
        write(
            &BootstrapInput {
                tree,
                file_chunks: &[Vec::new(), Vec::new()],
                chunks: &[],
                blobs: &[],
                prefetch: None,
            },
            BootstrapOptions {
                chunk_size: 0x10_0000,
                compressor: Compressor::None,
                digester: Digester::Blake3,
            },
        )
    }

    /// Xattrs the inode cannot hold are an error naming the entry, where their lengths
    /// used to be cut short with `as` into a corrupt bootstrap.
    #[test]
    fn xattrs_that_do_not_fit_are_an_error_naming_the_entry() {
        let mut long = b"user.".to_vec();
        long.resize(5 + 256, b'n');
        let many: inode::Xattrs = (0..5)
            .map(|i| (format!("user.k{i}").into_bytes(), vec![0u8; 65535]))
            .collect();
        for xattrs in [vec![(long, b"v".to_vec())], many] {
            match write_tree(&tree_with(xattrs)) {
                Err(WriteError::Xattrs {
                    image_path,
                    source_path,
                    ..
                }) => {
                    assert_eq!(image_path, b"/f");
                    assert_eq!(source_path, Path::new("src/f"));
                }
                other => panic!("{other:?}"),
            }
        }
        let fits = vec![(b"user.k".to_vec(), vec![0u8; 65535])];
        let boot = write_tree(&tree_with(fits.clone())).unwrap();
        let image = crate::reader::Image::from_bytes(
            Path::new("t.boot"),
            boot,
            crate::storage::blobs::BlobSource::None,
        )
        .unwrap();
        let nid = image.resolve(b"/f").unwrap().unwrap();
        assert_eq!(image.xattrs(nid).unwrap(), fits);
    }
}
