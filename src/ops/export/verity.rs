//! The dm-verity hash tree `export --block --verity` appends to a block image, so that
//! `veritysetup` (and the kernel's dm-verity) can check every block the kernel's EROFS
//! reads.
//!
//! The parameters are those upstream HEAD's `export --verity` prints, in `veritysetup`'s
//! words: `--no-superblock --format=1 -s "" --hash=sha256 --data-block-size=4096
//! --hash-block-size=4096 --data-blocks N --hash-offset BYTES ROOT`. So: SHA-256 with an
//! empty salt, 4 KiB data and hash blocks, 128 digests of 32 bytes per hash block, no
//! verity superblock, and the tree right after the last data block.
//!
//! The layout is dm-verity's (format 1), as `veritysetup format` writes it: the level
//! nearest the root first, the level of data block digests last. Level 0 holds one
//! digest per data block, level `i + 1` one per hash block of level `i`, up to a level
//! of one block, whose digest is the root. The bytes after the last digest of a hash
//! block are zeros (`veritysetup verify` rejects anything else). One data block needs
//! no tree: its own digest is the root.
//!
//! Upstream HEAD fills those spare bytes with the digest of a zero block instead, so its
//! root digests differ from `veritysetup format`'s for the same data whenever a hash
//! block is not full (almost always), and `veritysetup verify` refuses its trees
//! ("Spare area is not zeroed"); we write the standard tree.

use sha2::{Digest, Sha256};

/// Data and hash block size, in bytes.
pub const BLOCK_BYTES: usize = 4096;
/// Bytes of one SHA-256 digest.
pub const DIGEST_BYTES: usize = 32;
/// Digests per hash block.
const PER_BLOCK: usize = BLOCK_BYTES / DIGEST_BYTES;

/// One SHA-256 digest.
pub type Digest32 = [u8; DIGEST_BYTES];

/// The digest of one data or hash block (empty salt: just its SHA-256).
pub fn block_digest(block: &[u8]) -> Digest32 {
    Sha256::digest(block).into()
}

/// The digests of the blocks of `data`, the last one padded with zeros to a whole block
/// (as it lies on disk, followed by zeros up to the next block).
pub fn digests_of(data: &[u8]) -> Vec<Digest32> {
    data.chunks(BLOCK_BYTES)
        .map(|block| {
            if block.len() == BLOCK_BYTES {
                block_digest(block)
            } else {
                let mut padded = [0u8; BLOCK_BYTES];
                padded[..block.len()].copy_from_slice(block);
                block_digest(&padded)
            }
        })
        .collect()
}

/// A complete hash tree over some data blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashTree {
    /// The root digest `veritysetup verify` is given.
    pub root: Digest32,
    /// The hash area as it is written after the data, a multiple of 4 KiB (empty for
    /// one data block).
    pub bytes: Vec<u8>,
    /// Data blocks covered.
    pub data_blocks: u64,
}

impl HashTree {
    /// The tree over data blocks whose digests are `leaves`, in block order.
    pub fn from_leaves(leaves: Vec<Digest32>) -> HashTree {
        let data_blocks = leaves.len() as u64;
        if leaves.len() <= 1 {
            // One block is its own root (no data at all, which an export never has,
            // gets the digest of nothing).
            let root = leaves.first().copied().unwrap_or_else(|| block_digest(&[]));
            return HashTree {
                root,
                bytes: Vec::new(),
                data_blocks,
            };
        }
        // Each level as whole zero-padded blocks, bottom (level 0) first.
        let mut levels: Vec<Vec<u8>> = Vec::new();
        let mut below = leaves;
        loop {
            let blocks = below.len().div_ceil(PER_BLOCK);
            let mut level = vec![0u8; blocks * BLOCK_BYTES];
            for (slot, d) in level.chunks_exact_mut(DIGEST_BYTES).zip(&below) {
                slot.copy_from_slice(d);
            }
            below = level.chunks_exact(BLOCK_BYTES).map(block_digest).collect();
            levels.push(level);
            if blocks == 1 {
                break;
            }
        }
        let root = below[0];
        let bytes = levels.into_iter().rev().flatten().collect();
        HashTree {
            root,
            bytes,
            data_blocks,
        }
    }

    /// The root digest in lower-case hex, as `veritysetup` prints and takes it.
    pub fn root_hex(&self) -> String {
        hex::encode(self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hash area sizes `veritysetup format` reports for these data block counts
    /// (cryptsetup 2.6.1, 4 KiB blocks, sha256): 130 blocks took 12288 bytes.
    #[test]
    fn hash_area_sizes_follow_dm_verity_levels() {
        for (blocks, hash_blocks) in [
            (1usize, 0usize),
            (2, 1),
            (128, 1),
            (129, 3),
            (130, 3),
            (128 * 128, 129),
            (128 * 128 + 1, 2 + 129 + 1),
        ] {
            let leaves = vec![[7u8; 32]; blocks];
            let tree = HashTree::from_leaves(leaves);
            assert_eq!(
                tree.bytes.len(),
                hash_blocks * BLOCK_BYTES,
                "{blocks} blocks"
            );
        }
    }

    #[test]
    fn levels_run_from_the_root_down_with_zero_spare_bytes() {
        let leaves: Vec<Digest32> = (0..130u8).map(|i| [i; 32]).collect();
        let tree = HashTree::from_leaves(leaves);
        let (top, rest) = tree.bytes.split_at(BLOCK_BYTES);
        // Level 0: the 130 leaves, then zeros.
        assert_eq!(&rest[..32], &[0u8; 32]);
        assert_eq!(&rest[129 * 32..130 * 32], &[129u8; 32]);
        assert!(rest[130 * 32..].iter().all(|&b| b == 0));
        // Top level: the digests of level 0's two blocks.
        assert_eq!(top[..32], block_digest(&rest[..BLOCK_BYTES]));
        assert_eq!(top[32..64], block_digest(&rest[BLOCK_BYTES..]));
        assert!(top[64..].iter().all(|&b| b == 0));
        assert_eq!(tree.root, block_digest(top));
    }

    #[test]
    fn one_block_is_its_own_root_and_partial_blocks_pad_with_zeros() {
        let data = vec![5u8; 4096 + 10];
        let digests = digests_of(&data);
        assert_eq!(digests.len(), 2);
        let mut last = vec![0u8; 4096];
        last[..10].fill(5);
        assert_eq!(digests[1], block_digest(&last));
        let tree = HashTree::from_leaves(digests[..1].to_vec());
        assert_eq!(tree.root, block_digest(&data[..4096]));
        assert!(tree.bytes.is_empty());
    }
}
