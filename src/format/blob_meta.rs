//! The metadata at the end of a data blob, as upstream 2.2.0 writes it: after the chunk
//! data comes the chunk info array (16-byte v1 entries, compressed with the chunk
//! compressor), then a 4096-byte header whose first and last words are a magic number.
//! `nydusd` reads these to map chunks without the bootstrap's chunk table.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Compressor, FormatError};

/// Magic at both ends of the blob meta header.
pub const HEADER_MAGIC: u32 = 0xb10b_b10b;
/// Size of the blob meta header.
pub const HEADER_SIZE: usize = 4096;
/// Size of a v1 chunk info entry.
pub const CHUNK_INFO_V1_SIZE: usize = 16;
/// Largest chunk a v1 entry can describe (24-bit size minus one).
pub const MAX_CHUNK_BYTES: u64 = 1 << 24;

/// Blob meta header, 4096 bytes (upstream `BlobCompressionContextHeader`).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct HeaderRaw {
    /// `HEADER_MAGIC`.
    pub magic: U32,
    /// Blob feature bits (`format::v6::tables::blob_features`).
    pub features: U32,
    /// Compressor code of the chunk info array.
    pub ci_compressor: U32,
    /// Number of chunk info entries.
    pub ci_entries: U32,
    /// Byte offset of the chunk info array in the blob.
    pub ci_offset: U64,
    /// Compressed size of the array.
    pub ci_compressed_size: U64,
    /// Uncompressed size of the array.
    pub ci_uncompressed_size: U64,
    /// ZRAN context offset (unused here).
    pub zran_offset: U64,
    /// ZRAN context size (unused here).
    pub zran_size: U64,
    /// ZRAN context entries (unused here).
    pub zran_count: U32,
    /// Zero.
    pub reserved: [u8; 4032],
    /// `HEADER_MAGIC` again.
    pub magic2: U32,
}

/// v1 chunk info entry, 16 bytes. `uncomp_info`: bits 44..64 low 20 bits of (size - 1),
/// bits 12..44 the 4 KiB aligned offset, bits 8..12 bits 20..24 of (size - 1).
/// `comp_info`: bits 44..64 low 20 bits of (size - 1), bits 40..44 bits 20..24 of
/// (size - 1), bits 0..40 the offset. A chunk is compressed when the sizes differ.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ChunkInfoV1Raw {
    /// Uncompressed offset and size.
    pub uncomp_info: U64,
    /// Compressed offset and size.
    pub comp_info: U64,
}

const _: () = {
    assert!(size_of::<HeaderRaw>() == HEADER_SIZE);
    assert!(std::mem::offset_of!(HeaderRaw, ci_offset) == 16);
    assert!(std::mem::offset_of!(HeaderRaw, zran_count) == 56);
    assert!(std::mem::offset_of!(HeaderRaw, magic2) == 4092);
    assert!(size_of::<ChunkInfoV1Raw>() == CHUNK_INFO_V1_SIZE);
};

/// The blob meta header's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Blob feature bits.
    pub features: u32,
    /// Compressor of the chunk info array.
    pub ci_compressor: Compressor,
    /// Number of chunk info entries.
    pub ci_entries: u32,
    /// Offset of the array in the blob.
    pub ci_offset: u64,
    /// Compressed size of the array.
    pub ci_compressed_size: u64,
    /// Uncompressed size of the array.
    pub ci_uncompressed_size: u64,
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        let raw = HeaderRaw {
            magic: HEADER_MAGIC.into(),
            features: self.features.into(),
            ci_compressor: (self.ci_compressor as u32).into(),
            ci_entries: self.ci_entries.into(),
            ci_offset: self.ci_offset.into(),
            ci_compressed_size: self.ci_compressed_size.into(),
            ci_uncompressed_size: self.ci_uncompressed_size.into(),
            zran_offset: 0.into(),
            zran_size: 0.into(),
            zran_count: 0.into(),
            reserved: [0; 4032],
            magic2: HEADER_MAGIC.into(),
        };
        raw.as_bytes().to_vec()
    }

    /// Decodes a header found at blob byte `offset`.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, FormatError> {
        let raw = HeaderRaw::read_from_bytes(bytes).map_err(|_| FormatError::Truncated {
            offset,
            need: HEADER_SIZE as u64,
            have: bytes.len() as u64,
            what: "blob meta header",
        })?;
        if raw.magic.get() != HEADER_MAGIC || raw.magic2.get() != HEADER_MAGIC {
            return Err(FormatError::Invalid {
                offset,
                what: format!(
                    "blob meta header magic 0x{:x}/0x{:x}, expected 0x{HEADER_MAGIC:x}",
                    raw.magic.get(),
                    raw.magic2.get()
                ),
            });
        }
        let ci_compressor =
            Compressor::from_code(raw.ci_compressor.get()).ok_or_else(|| FormatError::Invalid {
                offset: offset + 8,
                what: format!("unknown chunk info compressor {}", raw.ci_compressor.get()),
            })?;
        Ok(Header {
            features: raw.features.get(),
            ci_compressor,
            ci_entries: raw.ci_entries.get(),
            ci_offset: raw.ci_offset.get(),
            ci_compressed_size: raw.ci_compressed_size.get(),
            ci_uncompressed_size: raw.ci_uncompressed_size.get(),
        })
    }
}

/// Where one chunk sits in its blob, as the blob's own chunk info array records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// Offset of the stored bytes.
    pub compressed_offset: u64,
    /// Stored size (1..=16 MiB).
    pub compressed_size: u32,
    /// 4 KiB aligned offset in the uncompressed address space.
    pub uncompressed_offset: u64,
    /// Uncompressed size (1..=16 MiB).
    pub uncompressed_size: u32,
}

impl ChunkLocation {
    /// Encodes a v1 entry. Sizes must be 1..=16 MiB, the uncompressed offset 4 KiB aligned
    /// below 2^44 and the compressed offset below 2^40: the builder checks these first.
    pub fn encode_v1(&self, out: &mut Vec<u8>) {
        let usize1 = self.uncompressed_size as u64 - 1;
        let csize1 = self.compressed_size as u64 - 1;
        let uncomp = ((usize1 & 0xf_ffff) << 44)
            | (self.uncompressed_offset & 0xfff_ffff_f000)
            | ((usize1 & 0xf0_0000) >> 12);
        let comp = ((csize1 & 0xf_ffff) << 44)
            | ((csize1 & 0xf0_0000) << 20)
            | (self.compressed_offset & 0xff_ffff_ffff);
        let raw = ChunkInfoV1Raw {
            uncomp_info: uncomp.into(),
            comp_info: comp.into(),
        };
        out.extend_from_slice(raw.as_bytes());
    }

    /// Decodes a v1 entry.
    pub fn decode_v1(bytes: &[u8; CHUNK_INFO_V1_SIZE]) -> Self {
        let raw = ChunkInfoV1Raw::read_from_bytes(bytes).expect("sized array");
        let u = raw.uncomp_info.get();
        let c = raw.comp_info.get();
        ChunkLocation {
            compressed_offset: c & 0xff_ffff_ffff,
            compressed_size: (((c >> 44) | ((c & 0xf00_0000_0000) >> 20)) + 1) as u32,
            uncompressed_offset: u & 0xfff_ffff_f000,
            uncompressed_size: (((u >> 44) | ((u & 0xf00) << 12)) + 1) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_location_round_trips_at_the_limits() {
        for loc in [
            ChunkLocation {
                compressed_offset: 0,
                compressed_size: 1,
                uncompressed_offset: 0,
                uncompressed_size: 1,
            },
            ChunkLocation {
                compressed_offset: (1 << 40) - 1,
                compressed_size: 1 << 24,
                uncompressed_offset: (1 << 44) - 4096,
                uncompressed_size: 1 << 24,
            },
            ChunkLocation {
                compressed_offset: 6,
                compressed_size: 0x12_3456,
                uncompressed_offset: 0x101000,
                uncompressed_size: 0x10_0000,
            },
        ] {
            let mut buf = Vec::new();
            loc.encode_v1(&mut buf);
            assert_eq!(
                ChunkLocation::decode_v1(buf.as_slice().try_into().unwrap()),
                loc
            );
        }
    }

    #[test]
    fn header_round_trips_and_checks_magic() {
        let h = Header {
            features: 0x4000_0001,
            ci_compressor: Compressor::Zstd,
            ci_entries: 4,
            ci_offset: 0x2dc6c6,
            ci_compressed_size: 0x3c,
            ci_uncompressed_size: 0x40,
        };
        let mut bytes = h.encode();
        assert_eq!(Header::decode(&bytes, 0).unwrap(), h);
        bytes[4095] ^= 1;
        assert!(Header::decode(&bytes, 0).is_err());
    }
}
