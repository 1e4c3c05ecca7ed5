//! On-disk layouts of RAFS bootstraps and blobs. No I/O happens here: each layout is a
//! `repr(C)` struct of little-endian fields with its size pinned at compile time, plus a
//! native type that encodes to and decodes (with validation) from bytes.

pub mod blob_meta;
pub mod blob_toc;
pub mod v5;
pub mod v6;

use thiserror::Error;

/// A layout that does not hold what the format requires. Offsets are byte offsets in the
/// file being decoded; callers add the file name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("at 0x{offset:x}: {what} needs {need} bytes, only {have} available")]
    Truncated {
        /// Where the structure starts.
        offset: u64,
        /// Bytes it needs.
        need: u64,
        /// Bytes present.
        have: u64,
        /// The structure.
        what: &'static str,
    },
    /// A field holds a value the format forbids.
    #[error("at 0x{offset:x}: {what}")]
    Invalid {
        /// Where the bad field is.
        offset: u64,
        /// What is wrong, with the value found.
        what: String,
    },
}

/// Chunk compression algorithm; the discriminant is upstream's on-disk code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compressor {
    /// Stored as is.
    None = 0,
    /// LZ4 block format, no size prefix.
    Lz4Block = 1,
    /// gzip (read only: upstream may write it, we do not).
    Gzip = 2,
    /// zstd frame.
    Zstd = 3,
}

impl Compressor {
    /// From upstream's numeric code.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Compressor::None,
            1 => Compressor::Lz4Block,
            2 => Compressor::Gzip,
            3 => Compressor::Zstd,
            _ => return None,
        })
    }

    /// From bootstrap superblock flags; `None` unless exactly one compressor bit is set.
    pub fn from_flags(flags: u64) -> Option<Self> {
        use v6::super_block::flags as f;
        let bits = flags
            & (f::COMPRESSION_NONE
                | f::COMPRESSION_LZ4
                | f::COMPRESSION_GZIP
                | f::COMPRESSION_ZSTD);
        Some(match bits {
            f::COMPRESSION_NONE => Compressor::None,
            f::COMPRESSION_LZ4 => Compressor::Lz4Block,
            f::COMPRESSION_GZIP => Compressor::Gzip,
            f::COMPRESSION_ZSTD => Compressor::Zstd,
            _ => return None,
        })
    }

    /// The superblock flag bit.
    pub fn flag(self) -> u64 {
        use v6::super_block::flags as f;
        match self {
            Compressor::None => f::COMPRESSION_NONE,
            Compressor::Lz4Block => f::COMPRESSION_LZ4,
            Compressor::Gzip => f::COMPRESSION_GZIP,
            Compressor::Zstd => f::COMPRESSION_ZSTD,
        }
    }

    /// Name as upstream's CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::None => "none",
            Compressor::Lz4Block => "lz4_block",
            Compressor::Gzip => "gzip",
            Compressor::Zstd => "zstd",
        }
    }
}

/// Chunk digest algorithm; the discriminant is upstream's on-disk code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Digester {
    /// BLAKE3, 32 bytes.
    Blake3 = 0,
    /// SHA-256, 32 bytes.
    Sha256 = 1,
}

impl Digester {
    /// From upstream's numeric code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Digester::Blake3),
            1 => Some(Digester::Sha256),
            _ => None,
        }
    }

    /// From bootstrap superblock flags; `None` unless exactly one digester bit is set.
    pub fn from_flags(flags: u64) -> Option<Self> {
        use v6::super_block::flags as f;
        match flags & (f::HASH_BLAKE3 | f::HASH_SHA256) {
            f::HASH_BLAKE3 => Some(Digester::Blake3),
            f::HASH_SHA256 => Some(Digester::Sha256),
            _ => None,
        }
    }

    /// The superblock flag bit.
    pub fn flag(self) -> u64 {
        use v6::super_block::flags as f;
        match self {
            Digester::Blake3 => f::HASH_BLAKE3,
            Digester::Sha256 => f::HASH_SHA256,
        }
    }

    /// Name as upstream's CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Digester::Blake3 => "blake3",
            Digester::Sha256 => "sha256",
        }
    }
}
