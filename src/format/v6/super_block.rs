//! The EROFS superblock at byte 1024, the RAFS v6 extension that follows it, and the
//! device table: everything a reader needs before it can find a single inode.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{BLOCK_BITS, BLOCK_SIZE};
use crate::format::{Compressor, Digester, FormatError};

/// Byte offset of the EROFS superblock in the bootstrap.
pub const SUPER_OFFSET: u64 = 1024;
/// EROFS superblock magic, `EROFS_SUPER_MAGIC_V1`.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// Compat feature bit that marks a RAFS v6 bootstrap.
pub const FEATURE_COMPAT_RAFS_V6: u32 = 0x4000_0000;
/// Incompat feature: chunk-based regular files (Linux 5.15+).
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x0000_0004;
/// Incompat feature: multiple devices through a device table (Linux 5.16+).
pub const FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 0x0000_0008;
/// Byte offset of the device table: right after the superblock and its extension.
pub const DEVTABLE_OFFSET: u64 = SUPER_OFFSET + 128 + 256;
/// Largest chunk size RAFS accepts.
pub const MAX_CHUNK_SIZE: u64 = 0x100_0000;

/// EROFS superblock, 128 bytes at byte 1024 (`struct erofs_super_block`).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SuperBlockRaw {
    /// `EROFS_MAGIC`.
    pub magic: U32,
    /// Must be 0 for RAFS.
    pub checksum: U32,
    /// Compat features; RAFS sets `FEATURE_COMPAT_RAFS_V6`.
    pub feature_compat: U32,
    /// log2 of the block size: always 12.
    pub blkszbits: u8,
    /// Extra superblock slots: 0.
    pub extslots: u8,
    /// nid of the root directory (`offset = meta_blkaddr * 4096 + nid * 32`).
    pub root_nid: U16,
    /// Number of inodes.
    pub inos: U64,
    /// Build time, seconds (upstream leaves 0).
    pub build_time: U64,
    /// Build time, nanoseconds.
    pub build_time_nsec: U32,
    /// Size of the bootstrap in blocks.
    pub blocks: U32,
    /// Block where inode slots start.
    pub meta_blkaddr: U32,
    /// Block of the shared xattr area; RAFS uses none, so 0.
    pub xattr_blkaddr: U32,
    /// Volume UUID (unused, zero).
    pub uuid: [u8; 16],
    /// Volume name (unused, zero).
    pub volume_name: [u8; 16],
    /// Incompat features: chunked files and device table.
    pub feature_incompat: U32,
    /// Union, must be 0.
    pub u: U16,
    /// Devices besides the bootstrap: one per blob.
    pub extra_devices: U16,
    /// Device table offset in 128-byte slots.
    pub devt_slotoff: U16,
    /// Zero.
    pub reserved: [u8; 38],
}

/// RAFS v6 superblock extension, 256 bytes at byte 1152.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SuperBlockExtRaw {
    /// `RafsFlags` bits: compressor, digester, xattr, explicit uid/gid.
    pub flags: U64,
    /// Byte offset of the blob table (block aligned).
    pub blob_table_offset: U64,
    /// Byte size of the blob table (256 per blob).
    pub blob_table_size: U32,
    /// Chunk size in bytes.
    pub chunk_size: U32,
    /// Byte offset of the chunk info table (block aligned).
    pub chunk_table_offset: U64,
    /// Byte size of the chunk info table (80 per chunk).
    pub chunk_table_size: U64,
    /// Byte offset of the prefetch table (u32 inode numbers).
    pub prefetch_table_offset: U64,
    /// Byte size of the prefetch table.
    pub prefetch_table_size: U32,
    /// Zero.
    pub padding: U32,
    /// Zero.
    pub reserved: [u8; 200],
}

/// One device table slot, 128 bytes: a blob as an EROFS extra device.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct DeviceSlotRaw {
    /// Blob id, 64 ASCII hex characters.
    pub blob_id: [u8; 64],
    /// Size of the blob's uncompressed data in blocks.
    pub blocks: U32,
    /// Must be 0.
    pub mapped_blkaddr: U32,
    /// Zero.
    pub reserved: [u8; 56],
}

/// Rewrites, in place, the superblock of the v6 bootstrap `meta` for an image that holds
/// its file data itself (`export --block`): `blocks` blocks in all, no extra devices.
pub fn set_self_contained(meta: &mut [u8], blocks: u32) {
    let sb = SUPER_OFFSET as usize;
    let blocks_at = sb + std::mem::offset_of!(SuperBlockRaw, blocks);
    meta[blocks_at..blocks_at + 4].copy_from_slice(&blocks.to_le_bytes());
    let devices_at = sb + std::mem::offset_of!(SuperBlockRaw, extra_devices);
    meta[devices_at..devices_at + 2].copy_from_slice(&0u16.to_le_bytes());
}

const _: () = {
    assert!(size_of::<SuperBlockRaw>() == 128);
    assert!(std::mem::offset_of!(SuperBlockRaw, root_nid) == 14);
    assert!(std::mem::offset_of!(SuperBlockRaw, meta_blkaddr) == 40);
    assert!(std::mem::offset_of!(SuperBlockRaw, feature_incompat) == 80);
    assert!(std::mem::offset_of!(SuperBlockRaw, devt_slotoff) == 88);
    assert!(size_of::<SuperBlockExtRaw>() == 256);
    assert!(std::mem::offset_of!(SuperBlockExtRaw, chunk_table_offset) == 24);
    assert!(std::mem::offset_of!(SuperBlockExtRaw, prefetch_table_size) == 48);
    assert!(size_of::<DeviceSlotRaw>() == 128);
};

/// Flag bits of `SuperBlockExtRaw::flags` (upstream `RafsSuperFlags`).
pub mod flags {
    /// Chunks are stored uncompressed.
    pub const COMPRESSION_NONE: u64 = 0x1;
    /// LZ4 block compression.
    pub const COMPRESSION_LZ4: u64 = 0x2;
    /// blake3 chunk digests.
    pub const HASH_BLAKE3: u64 = 0x4;
    /// sha256 chunk digests.
    pub const HASH_SHA256: u64 = 0x8;
    /// uid/gid are stored as found (not squashed to the builder's).
    pub const EXPLICIT_UID_GID: u64 = 0x10;
    /// Some inode has xattrs.
    pub const HAS_XATTR: u64 = 0x20;
    /// gzip compression.
    pub const COMPRESSION_GZIP: u64 = 0x40;
    /// zstd compression.
    pub const COMPRESSION_ZSTD: u64 = 0x80;
    /// Chunk digests are kept in the blob.
    pub const INLINED_CHUNK_DIGEST: u64 = 0x100;
}

/// The validated content of the superblock and its extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperBlock {
    /// nid of the root directory.
    pub root_nid: u16,
    /// Number of inodes.
    pub inodes: u64,
    /// Bootstrap size in blocks.
    pub blocks: u32,
    /// First block of the inode area.
    pub meta_blkaddr: u32,
    /// Number of blobs (extra devices).
    pub extra_devices: u16,
    /// Raw flag bits.
    pub flags: u64,
    /// Chunk compressor.
    pub compressor: Compressor,
    /// Chunk digester.
    pub digester: Digester,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Blob table location.
    pub blob_table_offset: u64,
    /// Blob table size in bytes.
    pub blob_table_size: u32,
    /// Chunk table location.
    pub chunk_table_offset: u64,
    /// Chunk table size in bytes.
    pub chunk_table_size: u64,
    /// Prefetch table location.
    pub prefetch_table_offset: u64,
    /// Prefetch table size in bytes.
    pub prefetch_table_size: u32,
}

impl SuperBlock {
    /// Encodes the first block of the bootstrap: zeros, superblock at 1024 and its extension.
    /// The device table is written separately, right after.
    pub fn encode(&self) -> ([u8; 128], [u8; 256]) {
        let sb = SuperBlockRaw {
            magic: EROFS_MAGIC.into(),
            checksum: 0.into(),
            feature_compat: FEATURE_COMPAT_RAFS_V6.into(),
            blkszbits: BLOCK_BITS as u8,
            extslots: 0,
            root_nid: self.root_nid.into(),
            inos: self.inodes.into(),
            build_time: 0.into(),
            build_time_nsec: 0.into(),
            blocks: self.blocks.into(),
            meta_blkaddr: self.meta_blkaddr.into(),
            xattr_blkaddr: 0.into(),
            uuid: [0; 16],
            volume_name: [0; 16],
            feature_incompat: (FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE)
                .into(),
            u: 0.into(),
            extra_devices: self.extra_devices.into(),
            devt_slotoff: ((DEVTABLE_OFFSET / 128) as u16).into(),
            reserved: [0; 38],
        };
        let ext = SuperBlockExtRaw {
            flags: self.flags.into(),
            blob_table_offset: self.blob_table_offset.into(),
            blob_table_size: self.blob_table_size.into(),
            chunk_size: self.chunk_size.into(),
            chunk_table_offset: self.chunk_table_offset.into(),
            chunk_table_size: self.chunk_table_size.into(),
            prefetch_table_offset: self.prefetch_table_offset.into(),
            prefetch_table_size: self.prefetch_table_size.into(),
            padding: 0.into(),
            reserved: [0; 200],
        };
        let mut a = [0u8; 128];
        a.copy_from_slice(sb.as_bytes());
        let mut b = [0u8; 256];
        b.copy_from_slice(ext.as_bytes());
        (a, b)
    }

    /// Decodes and validates the superblock and extension from the first block of a bootstrap
    /// whose total length is `file_size`.
    pub fn decode(block: &[u8], file_size: u64) -> Result<Self, FormatError> {
        let bad = |offset: u64, what: String| FormatError::Invalid { offset, what };
        if file_size < BLOCK_SIZE || block.len() < BLOCK_SIZE as usize {
            return Err(FormatError::Truncated {
                offset: 0,
                need: BLOCK_SIZE,
                have: file_size,
                what: "superblock block",
            });
        }
        let sb = SuperBlockRaw::read_from_bytes(&block[1024..1152]).expect("sized slice");
        let ext = SuperBlockExtRaw::read_from_bytes(&block[1152..1408]).expect("sized slice");
        if sb.magic.get() != EROFS_MAGIC {
            return Err(bad(
                1024,
                format!(
                    "magic 0x{:08x}, expected EROFS 0x{:08x} (not a RAFS v6 bootstrap)",
                    sb.magic.get(),
                    EROFS_MAGIC
                ),
            ));
        }
        if sb.blkszbits as u32 != BLOCK_BITS {
            return Err(bad(
                1036,
                format!("block size bits {}, expected 12", sb.blkszbits),
            ));
        }
        if sb.feature_compat.get() & FEATURE_COMPAT_RAFS_V6 == 0 {
            return Err(bad(
                1032,
                format!(
                    "compat features 0x{:x} lack the RAFS v6 bit (a plain EROFS image?)",
                    sb.feature_compat.get()
                ),
            ));
        }
        let incompat = sb.feature_incompat.get();
        if incompat & !(FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE) != 0 {
            return Err(bad(
                1104,
                format!("unsupported incompat features 0x{incompat:x}"),
            ));
        }
        if sb.devt_slotoff.get() as u64 * 128 != DEVTABLE_OFFSET {
            return Err(bad(
                1112,
                format!(
                    "device table slot offset {}, expected 11",
                    sb.devt_slotoff.get()
                ),
            ));
        }
        if sb.xattr_blkaddr.get() != 0 {
            return Err(bad(
                1068,
                "shared xattr area is not supported by RAFS".into(),
            ));
        }
        if sb.inos.get() == 0 {
            return Err(bad(1040, "inode count is 0".into()));
        }
        let meta_start = sb.meta_blkaddr.get() as u64 * BLOCK_SIZE;
        if meta_start >= file_size {
            return Err(bad(
                1064,
                format!(
                    "metadata block {} lies outside the {} byte bootstrap",
                    sb.meta_blkaddr.get(),
                    file_size
                ),
            ));
        }
        let flag_bits = ext.flags.get();
        let compressor = Compressor::from_flags(flag_bits).ok_or_else(|| {
            bad(
                1152,
                format!("flags 0x{flag_bits:x} name no single compressor"),
            )
        })?;
        let digester = Digester::from_flags(flag_bits).ok_or_else(|| {
            bad(
                1152,
                format!("flags 0x{flag_bits:x} name no single digester"),
            )
        })?;
        let chunk_size = ext.chunk_size.get();
        if !chunk_size.is_power_of_two()
            || (chunk_size as u64) < BLOCK_SIZE
            || chunk_size as u64 > MAX_CHUNK_SIZE
        {
            return Err(bad(
                1172,
                format!("chunk size 0x{chunk_size:x} out of range"),
            ));
        }
        let in_file = |off: u64, size: u64, at: u64, what: &str| -> Result<(), FormatError> {
            match off.checked_add(size) {
                Some(end) if end <= file_size && (size == 0 || off >= BLOCK_SIZE) => Ok(()),
                _ => Err(bad(
                    at,
                    format!(
                        "{what} at 0x{off:x} size 0x{size:x} lies outside the {file_size} byte bootstrap"
                    ),
                )),
            }
        };
        in_file(
            ext.blob_table_offset.get(),
            ext.blob_table_size.get() as u64,
            1160,
            "blob table",
        )?;
        if ext.blob_table_size.get() % 256 != 0 {
            return Err(bad(1168, "blob table size is not a multiple of 256".into()));
        }
        in_file(
            ext.chunk_table_offset.get(),
            ext.chunk_table_size.get(),
            1176,
            "chunk table",
        )?;
        if ext.chunk_table_size.get() % 80 != 0 {
            return Err(bad(1184, "chunk table size is not a multiple of 80".into()));
        }
        if ext.prefetch_table_offset.get() != 0 {
            in_file(
                ext.prefetch_table_offset.get(),
                ext.prefetch_table_size.get() as u64,
                1192,
                "prefetch table",
            )?;
        }
        Ok(SuperBlock {
            root_nid: sb.root_nid.get(),
            inodes: sb.inos.get(),
            blocks: sb.blocks.get(),
            meta_blkaddr: sb.meta_blkaddr.get(),
            extra_devices: sb.extra_devices.get(),
            flags: flag_bits,
            compressor,
            digester,
            chunk_size,
            blob_table_offset: ext.blob_table_offset.get(),
            blob_table_size: ext.blob_table_size.get(),
            chunk_table_offset: ext.chunk_table_offset.get(),
            chunk_table_size: ext.chunk_table_size.get(),
            prefetch_table_offset: ext.prefetch_table_offset.get(),
            prefetch_table_size: ext.prefetch_table_size.get(),
        })
    }
}

/// A device table slot: one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSlot {
    /// Blob id (64 hex characters).
    pub blob_id: String,
    /// Uncompressed blob size in blocks.
    pub blocks: u32,
}

impl DeviceSlot {
    /// Encodes the slot.
    pub fn encode(&self) -> [u8; 128] {
        let mut raw = DeviceSlotRaw {
            blob_id: [0; 64],
            blocks: self.blocks.into(),
            mapped_blkaddr: 0.into(),
            reserved: [0; 56],
        };
        let id = self.blob_id.as_bytes();
        let n = id.len().min(64);
        raw.blob_id[..n].copy_from_slice(&id[..n]);
        let mut out = [0u8; 128];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decodes a slot found at byte `offset`.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, FormatError> {
        let raw = DeviceSlotRaw::read_from_bytes(bytes).map_err(|_| FormatError::Truncated {
            offset,
            need: 128,
            have: bytes.len() as u64,
            what: "device slot",
        })?;
        let blob_id =
            super::blob_id_from_bytes(&raw.blob_id).ok_or_else(|| FormatError::Invalid {
                offset,
                what: "device slot blob id is not 64 hex characters".into(),
            })?;
        Ok(DeviceSlot {
            blob_id,
            blocks: raw.blocks.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bootstrap size the sample superblock describes.
    const FILE_SIZE: u64 = 16 * BLOCK_SIZE;

    fn sample() -> SuperBlock {
        SuperBlock {
            root_nid: 128,
            inodes: 10,
            blocks: 3,
            meta_blkaddr: 1,
            extra_devices: 1,
            flags: flags::COMPRESSION_ZSTD
                | flags::HASH_BLAKE3
                | flags::EXPLICIT_UID_GID
                | flags::HAS_XATTR,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            chunk_size: 0x10_0000,
            blob_table_offset: BLOCK_SIZE,
            blob_table_size: 256,
            chunk_table_offset: 3 * BLOCK_SIZE,
            chunk_table_size: 160,
            prefetch_table_offset: 0,
            prefetch_table_size: 0,
        }
    }

    /// The first block of a bootstrap holding `sb`.
    fn block_of(sb: &SuperBlock) -> Vec<u8> {
        let (a, b) = sb.encode();
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        block[1024..1152].copy_from_slice(&a);
        block[1152..1408].copy_from_slice(&b);
        block
    }

    fn put(block: &mut [u8], at: usize, bytes: &[u8]) {
        block[at..at + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn round_trips_and_lays_out_fields_where_erofs_expects_them() {
        let variants = [
            sample(),
            SuperBlock {
                flags: flags::COMPRESSION_LZ4 | flags::HASH_SHA256,
                compressor: Compressor::Lz4Block,
                digester: Digester::Sha256,
                chunk_size: 0x1000,
                chunk_table_offset: 0,
                chunk_table_size: 0,
                ..sample()
            },
            SuperBlock {
                flags: flags::COMPRESSION_NONE | flags::HASH_BLAKE3,
                compressor: Compressor::None,
                chunk_size: MAX_CHUNK_SIZE as u32,
                prefetch_table_offset: 4 * BLOCK_SIZE,
                prefetch_table_size: 12,
                root_nid: u16::MAX,
                inodes: u64::MAX,
                ..sample()
            },
        ];
        for sb in variants {
            let block = block_of(&sb);
            assert_eq!(SuperBlock::decode(&block, FILE_SIZE), Ok(sb.clone()));
            // Fixed fields, at the offsets of `struct erofs_super_block`.
            assert_eq!(block[1024..1028], EROFS_MAGIC.to_le_bytes());
            assert_eq!(block[1032..1036], FEATURE_COMPAT_RAFS_V6.to_le_bytes());
            assert_eq!(block[1036], 12, "blkszbits");
            assert_eq!(block[1038..1040], sb.root_nid.to_le_bytes());
            assert_eq!(block[1040..1048], sb.inodes.to_le_bytes());
            assert_eq!(block[1064..1068], sb.meta_blkaddr.to_le_bytes());
            assert_eq!(block[1104..1108], 12u32.to_le_bytes(), "incompat");
            assert_eq!(block[1110..1112], sb.extra_devices.to_le_bytes());
            assert_eq!(block[1112..1114], 11u16.to_le_bytes(), "devt_slotoff");
            assert_eq!(block[1152..1160], sb.flags.to_le_bytes());
            assert_eq!(block[1172..1176], sb.chunk_size.to_le_bytes());
            // Nothing else is written in the block.
            assert!(block[..1024].iter().all(|&b| b == 0));
            assert!(block[1408..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn refuses_each_bad_field_naming_its_offset() {
        type Edit = fn(&mut Vec<u8>);
        let cases: &[(&str, Edit, u64, &str)] = &[
            ("magic", |b| put(b, 1024, &[0; 4]), 1024, "magic 0x00000000"),
            ("block size", |b| b[1036] = 9, 1036, "block size bits 9"),
            (
                "no RAFS v6 bit",
                |b| put(b, 1032, &0u32.to_le_bytes()),
                1032,
                "lack the RAFS v6 bit",
            ),
            (
                "unknown incompat feature",
                |b| put(b, 1104, &0x1fu32.to_le_bytes()),
                1104,
                "incompat features 0x1f",
            ),
            (
                "device table elsewhere",
                |b| put(b, 1112, &12u16.to_le_bytes()),
                1112,
                "slot offset 12",
            ),
            (
                "shared xattrs",
                |b| put(b, 1068, &1u32.to_le_bytes()),
                1068,
                "shared xattr",
            ),
            (
                "no inodes",
                |b| put(b, 1040, &0u64.to_le_bytes()),
                1040,
                "inode count is 0",
            ),
            (
                "metadata past the end",
                |b| put(b, 1064, &16u32.to_le_bytes()),
                1064,
                "metadata block 16",
            ),
            (
                "two compressors",
                |b| b[1152] |= flags::COMPRESSION_LZ4 as u8,
                1152,
                "no single compressor",
            ),
            (
                "no digester",
                |b| b[1152] &= !(flags::HASH_BLAKE3 as u8),
                1152,
                "no single digester",
            ),
            (
                "chunk size not a power of two",
                |b| put(b, 1172, &0x3000u32.to_le_bytes()),
                1172,
                "chunk size 0x3000",
            ),
            (
                "chunk size below a block",
                |b| put(b, 1172, &0x800u32.to_le_bytes()),
                1172,
                "chunk size 0x800",
            ),
            (
                "chunk size above 16 MiB",
                |b| put(b, 1172, &0x200_0000u32.to_le_bytes()),
                1172,
                "chunk size 0x2000000",
            ),
            (
                "blob table past the end",
                |b| put(b, 1160, &(FILE_SIZE - 128).to_le_bytes()),
                1160,
                "blob table",
            ),
            (
                "blob table offset overflows",
                |b| put(b, 1160, &u64::MAX.to_le_bytes()),
                1160,
                "blob table",
            ),
            (
                "blob table in the superblock's block",
                |b| put(b, 1160, &1024u64.to_le_bytes()),
                1160,
                "blob table at 0x400",
            ),
            (
                "blob table of a partial entry",
                |b| put(b, 1168, &300u32.to_le_bytes()),
                1168,
                "multiple of 256",
            ),
            (
                "chunk table past the end",
                |b| put(b, 1184, &FILE_SIZE.to_le_bytes()),
                1176,
                "chunk table",
            ),
            (
                "chunk table of a partial entry",
                |b| put(b, 1184, &100u64.to_le_bytes()),
                1184,
                "multiple of 80",
            ),
            (
                "prefetch table past the end",
                |b| {
                    put(b, 1192, &(FILE_SIZE - 4).to_le_bytes());
                    put(b, 1200, &8u32.to_le_bytes());
                },
                1192,
                "prefetch table",
            ),
        ];
        for (name, edit, offset, says) in cases {
            let mut block = block_of(&sample());
            edit(&mut block);
            match SuperBlock::decode(&block, FILE_SIZE) {
                Err(FormatError::Invalid { offset: at, what }) => {
                    assert_eq!(at, *offset, "{name}: {what}");
                    assert!(what.contains(says), "{name}: {what:?} lacks {says:?}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_short_file_or_block_is_truncated() {
        let block = block_of(&sample());
        for (len, file_size) in [(4096, 4095), (4095, FILE_SIZE), (0, 0)] {
            assert!(
                matches!(
                    SuperBlock::decode(&block[..len], file_size),
                    Err(FormatError::Truncated { offset: 0, .. })
                ),
                "{len} bytes of a {file_size} byte file"
            );
        }
    }

    #[test]
    fn device_slots_round_trip_and_refuse_bad_ids() {
        let slot = DeviceSlot {
            blob_id: "0123456789abcdef".repeat(4),
            blocks: 77,
        };
        let bytes = slot.encode();
        assert_eq!(bytes[64..68], 77u32.to_le_bytes());
        assert_eq!(DeviceSlot::decode(&bytes, 1408), Ok(slot));
        let short = DeviceSlot {
            blob_id: "short-id".into(),
            blocks: 1,
        };
        assert_eq!(DeviceSlot::decode(&short.encode(), 0), Ok(short));
        type Edit = fn(&mut [u8; 128]);
        let cases: &[(&str, Edit)] = &[
            ("empty id", |b| b[..64].fill(0)),
            ("byte after the NUL padding", |b| {
                b[10] = 0;
                b[20] = b'x';
            }),
            ("control character", |b| b[3] = b'\n'),
        ];
        for (name, edit) in cases {
            let mut bytes = DeviceSlot {
                blob_id: "ab".repeat(32),
                blocks: 1,
            }
            .encode();
            edit(&mut bytes);
            assert!(
                matches!(
                    DeviceSlot::decode(&bytes, 1536),
                    Err(FormatError::Invalid { offset: 1536, .. })
                ),
                "{name}"
            );
        }
        assert!(matches!(
            DeviceSlot::decode(&[0; 100], 1408),
            Err(FormatError::Truncated { need: 128, .. })
        ));
    }
}
