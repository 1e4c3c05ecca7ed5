//! The RAFS v5 superblock: 8192 bytes at the start of the bootstrap, of which 80 are used.
//! It locates the inode, prefetch, blob and extended blob tables; the inode records
//! follow the tables.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::ALIGNMENT;
use crate::format::v6::super_block::{flags, MAX_CHUNK_SIZE};
use crate::format::{Compressor, Digester, FormatError};

/// `s_magic`: "RAFS" read as a little-endian u32.
pub const MAGIC: u32 = 0x5241_4653;
/// `s_fs_version` of a v5 bootstrap.
pub const VERSION: u32 = 0x500;
/// Size of the superblock, which is also the offset of the inode table.
pub const SIZE: u64 = 8192;
/// Size of one extended blob table entry.
pub const EXT_BLOB_ENTRY_SIZE: u64 = 64;
/// Every flag bit upstream 2.2.0 knows (`RafsSuperFlags`): the v6 bits plus eight bits
/// reserved for compatible features.
const KNOWN_FLAGS: u64 = 0x1ff | 0xff00_0000;

/// Superblock, 8192 bytes at offset 0 (upstream `RafsV5SuperBlock`).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SuperBlockRaw {
    /// [`MAGIC`].
    pub magic: U32,
    /// [`VERSION`].
    pub fs_version: U32,
    /// [`SIZE`].
    pub sb_size: U32,
    /// Chunk size in bytes (upstream calls it the block size).
    pub block_size: U32,
    /// `RafsSuperFlags` bits: compressor, digester, xattrs, explicit uid/gid (the same
    /// bits as v6's).
    pub flags: U64,
    /// Distinct inodes (hard links counted once).
    pub inodes_count: U64,
    /// Byte offset of the inode table.
    pub inode_table_offset: U64,
    /// Byte offset of the prefetch table.
    pub prefetch_table_offset: U64,
    /// Byte offset of the blob table.
    pub blob_table_offset: U64,
    /// Inode records (table entries in use; the table is padded to 8 bytes).
    pub inode_table_entries: U32,
    /// Inode numbers in the prefetch table.
    pub prefetch_table_entries: U32,
    /// Byte size of the blob table, padding included.
    pub blob_table_size: U32,
    /// Entries of the extended blob table (one per blob, or none in old images).
    pub extended_blob_table_entries: U32,
    /// Byte offset of the extended blob table.
    pub extended_blob_table_offset: U64,
    /// Zero.
    pub reserved: [u8; 8112],
}

const _: () = {
    assert!(size_of::<SuperBlockRaw>() == SIZE as usize);
    assert!(std::mem::offset_of!(SuperBlockRaw, flags) == 16);
    assert!(std::mem::offset_of!(SuperBlockRaw, inode_table_offset) == 32);
    assert!(std::mem::offset_of!(SuperBlockRaw, inode_table_entries) == 56);
    assert!(std::mem::offset_of!(SuperBlockRaw, blob_table_size) == 64);
    assert!(std::mem::offset_of!(SuperBlockRaw, extended_blob_table_offset) == 72);
    assert!(std::mem::offset_of!(SuperBlockRaw, reserved) == 80);
};

/// The validated superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperBlock {
    /// Raw flag bits.
    pub flags: u64,
    /// Chunk compressor.
    pub compressor: Compressor,
    /// Chunk digester.
    pub digester: Digester,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Distinct inodes.
    pub inodes: u64,
    /// Inode table location.
    pub inode_table_offset: u64,
    /// Inode records.
    pub inode_table_entries: u32,
    /// Prefetch table location.
    pub prefetch_table_offset: u64,
    /// Prefetch table entries.
    pub prefetch_table_entries: u32,
    /// Blob table location.
    pub blob_table_offset: u64,
    /// Blob table size in bytes.
    pub blob_table_size: u32,
    /// Extended blob table location.
    pub ext_blob_table_offset: u64,
    /// Extended blob table entries.
    pub ext_blob_table_entries: u32,
}

impl SuperBlock {
    /// Encodes the 8192-byte superblock.
    pub fn encode(&self) -> Vec<u8> {
        let raw = SuperBlockRaw {
            magic: MAGIC.into(),
            fs_version: VERSION.into(),
            sb_size: (SIZE as u32).into(),
            block_size: self.chunk_size.into(),
            flags: self.flags.into(),
            inodes_count: self.inodes.into(),
            inode_table_offset: self.inode_table_offset.into(),
            prefetch_table_offset: self.prefetch_table_offset.into(),
            blob_table_offset: self.blob_table_offset.into(),
            inode_table_entries: self.inode_table_entries.into(),
            prefetch_table_entries: self.prefetch_table_entries.into(),
            blob_table_size: self.blob_table_size.into(),
            extended_blob_table_entries: self.ext_blob_table_entries.into(),
            extended_blob_table_offset: self.ext_blob_table_offset.into(),
            reserved: [0; 8112],
        };
        raw.as_bytes().to_vec()
    }

    /// Decodes and validates the superblock at the start of a bootstrap of `file_size`
    /// bytes: every table must lie after the superblock and inside the file.
    pub fn decode(bytes: &[u8], file_size: u64) -> Result<Self, FormatError> {
        let bad = |offset: u64, what: String| FormatError::Invalid { offset, what };
        let raw = bytes
            .get(..SIZE as usize)
            .and_then(|b| SuperBlockRaw::read_from_bytes(b).ok())
            .ok_or(FormatError::Truncated {
                offset: 0,
                need: SIZE,
                have: bytes.len() as u64,
                what: "RAFS v5 superblock",
            })?;
        if raw.magic.get() != MAGIC || raw.fs_version.get() != VERSION {
            return Err(bad(
                0,
                format!(
                    "magic 0x{:08x} version 0x{:x}, expected 0x{MAGIC:08x} 0x{VERSION:x} (not a RAFS v5 bootstrap)",
                    raw.magic.get(),
                    raw.fs_version.get()
                ),
            ));
        }
        if raw.sb_size.get() as u64 != SIZE {
            return Err(bad(
                8,
                format!("superblock size {}, expected {SIZE}", raw.sb_size.get()),
            ));
        }
        if file_size <= SIZE || !file_size.is_multiple_of(ALIGNMENT) {
            return Err(bad(
                file_size,
                format!("bootstrap size {file_size} is not a multiple of 8 past the superblock"),
            ));
        }
        let chunk_size = raw.block_size.get();
        if !chunk_size.is_power_of_two()
            || chunk_size < 0x1000
            || chunk_size as u64 > MAX_CHUNK_SIZE
        {
            return Err(bad(12, format!("chunk size 0x{chunk_size:x} out of range")));
        }
        let flag_bits = raw.flags.get();
        if flag_bits & !KNOWN_FLAGS != 0 {
            return Err(bad(16, format!("unknown flags 0x{flag_bits:x}")));
        }
        let compressor = Compressor::from_flags(flag_bits).ok_or_else(|| {
            bad(
                16,
                format!("flags 0x{flag_bits:x} name no single compressor"),
            )
        })?;
        let digester = Digester::from_flags(flag_bits)
            .ok_or_else(|| bad(16, format!("flags 0x{flag_bits:x} name no single digester")))?;
        let in_file = |off: u64, size: u64, at: u64, what: &str| -> Result<(), FormatError> {
            match off.checked_add(size) {
                Some(end) if off >= SIZE && off.is_multiple_of(ALIGNMENT) && end <= file_size => Ok(()),
                _ => Err(bad(
                    at,
                    format!(
                        "{what} at 0x{off:x} size 0x{size:x} lies outside the {file_size} byte bootstrap"
                    ),
                )),
            }
        };
        let entries = raw.inode_table_entries.get();
        if entries == 0 {
            return Err(bad(56, "inode table is empty: no root".into()));
        }
        in_file(
            raw.inode_table_offset.get(),
            entries as u64 * 4,
            32,
            "inode table",
        )?;
        if raw.inodes_count.get() > entries as u64 {
            return Err(bad(
                24,
                format!(
                    "{} inodes but {entries} inode table entries",
                    raw.inodes_count.get()
                ),
            ));
        }
        in_file(
            raw.blob_table_offset.get(),
            raw.blob_table_size.get() as u64,
            48,
            "blob table",
        )?;
        if raw.extended_blob_table_entries.get() != 0 {
            in_file(
                raw.extended_blob_table_offset.get(),
                raw.extended_blob_table_entries.get() as u64 * EXT_BLOB_ENTRY_SIZE,
                72,
                "extended blob table",
            )?;
        }
        if raw.prefetch_table_entries.get() != 0 {
            in_file(
                raw.prefetch_table_offset.get(),
                raw.prefetch_table_entries.get() as u64 * 4,
                40,
                "prefetch table",
            )?;
        }
        Ok(SuperBlock {
            flags: flag_bits,
            compressor,
            digester,
            chunk_size,
            inodes: raw.inodes_count.get(),
            inode_table_offset: raw.inode_table_offset.get(),
            inode_table_entries: entries,
            prefetch_table_offset: raw.prefetch_table_offset.get(),
            prefetch_table_entries: raw.prefetch_table_entries.get(),
            blob_table_offset: raw.blob_table_offset.get(),
            blob_table_size: raw.blob_table_size.get(),
            ext_blob_table_offset: raw.extended_blob_table_offset.get(),
            ext_blob_table_entries: raw.extended_blob_table_entries.get(),
        })
    }

    /// Flag bits for a build with these settings (xattrs and uid/gid are the caller's).
    pub fn flags_for(compressor: Compressor, digester: Digester) -> u64 {
        compressor.flag() | digester.flag()
    }
}

/// Whether the xattr flag bit is set.
pub fn has_xattr(flag_bits: u64) -> bool {
    flag_bits & flags::HAS_XATTR != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SuperBlock {
        SuperBlock {
            flags: flags::HASH_BLAKE3 | flags::COMPRESSION_ZSTD | flags::EXPLICIT_UID_GID,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            chunk_size: 0x10_0000,
            inodes: 3,
            inode_table_offset: 8192,
            inode_table_entries: 4,
            prefetch_table_offset: 8208,
            prefetch_table_entries: 0,
            blob_table_offset: 8208,
            blob_table_size: 80,
            ext_blob_table_offset: 8288,
            ext_blob_table_entries: 1,
        }
    }

    #[test]
    fn round_trips() {
        let sb = sample();
        let bytes = sb.encode();
        assert_eq!(bytes.len(), 8192);
        assert_eq!(SuperBlock::decode(&bytes, 9000).unwrap(), sb);
    }

    #[test]
    fn bad_fields_are_named() {
        type Damage = fn(&mut SuperBlock);
        let cases: &[(Damage, u64, &str)] = &[
            (|s| s.chunk_size = 1000, 9000, "chunk size"),
            (
                |s| s.flags = flags::HASH_BLAKE3,
                9000,
                "no single compressor",
            ),
            (|s| s.flags |= 1 << 20, 9000, "unknown flags"),
            (|s| s.inode_table_entries = 0, 9000, "empty"),
            (|s| s.inode_table_offset = 8000, 9000, "inode table"),
            (|s| s.blob_table_size = 4000, 9000, "blob table"),
            (
                |s| s.ext_blob_table_entries = 100,
                9000,
                "extended blob table",
            ),
            (|s| s.inodes = 5, 9000, "inodes but 4"),
            (|_| {}, 8192, "not a multiple"),
        ];
        for (damage, len, says) in cases {
            let mut sb = sample();
            damage(&mut sb);
            let err = SuperBlock::decode(&sb.encode(), *len).unwrap_err();
            assert!(err.to_string().contains(says), "{err} lacks {says}");
        }
        let mut bytes = sample().encode();
        bytes[0] ^= 1;
        assert!(SuperBlock::decode(&bytes, 9000)
            .unwrap_err()
            .to_string()
            .contains("not a RAFS v5"));
        assert!(matches!(
            SuperBlock::decode(&bytes[..100], 9000),
            Err(FormatError::Truncated { .. })
        ));
    }
}
