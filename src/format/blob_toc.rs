//! The tail of a data blob that carries its own metadata: upstream 2.2.0's
//! `create --blob-inline-meta` (alias `--inline-bootstrap`), optionally with
//! `--features blob-toc`. Layouts and their checks only; the reader and the blob writer do
//! the I/O.
//!
//! Such a blob is a run of sections, each *followed* by a 512-byte GNU tar header that
//! names it and gives its size. A writer can stream the blob (a FIFO, say) without knowing
//! a section's size before writing it, and a reader finds every section by walking back
//! from the blob's end:
//!
//! ```text
//! chunk data          | hdr "image.blob"
//! chunk info array, blob meta header (4096 bytes)   | hdr "blob.meta"
//! chunk digests       | hdr "blob.digest"            (blob-toc only)
//! bootstrap           | hdr "image.boot"
//! TOC (128 bytes each)| hdr "rafs.blob.toc"          (blob-toc only)
//! ```
//!
//! A blob without chunks has only the bootstrap (and the TOC). With blob-toc the bootstrap
//! is stored zstd-compressed when that makes it smaller, and the TOC lists, in this order,
//! `image.blob`, `blob.meta`, `blob.meta.header`, `blob.digest`, `image.boot`: each with
//! its stored offset and size, its uncompressed size and the sha256 of its uncompressed
//! bytes. Without blob-toc the bootstrap is stored as is and the last header names it.
//!
//! Upstream 2.2.0 facts a writer must copy to be byte-compatible (`nydus-rs` 2.2.0
//! `builder/mod.rs`, `core/blob.rs`; `nydus-storage` 0.6.2 `meta/toc.rs`):
//! - the `image.blob` record's digest covers the chunk data *and* its tar header;
//! - the `blob.meta` section is the chunk info array and the blob meta header, but its
//!   TOC record covers the array only (`blob.meta.header` has its own record);
//! - headers carry only name, size, type `'0'`, mtime 0 and the checksum; mode, uid and
//!   gid are left as NUL bytes.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::{Compressor, FormatError};

/// Size of a tar header, and of the tar block.
pub const TAR_HEADER_SIZE: usize = 512;
/// Size of one TOC record.
pub const TOC_ENTRY_SIZE: usize = 128;
/// Most TOC records a reader accepts: upstream bounds the TOC with its header at 64 KiB.
pub const MAX_TOC_ENTRIES: usize = (0x10000 - TAR_HEADER_SIZE) / TOC_ENTRY_SIZE;

/// Section names, as the tar headers and TOC records spell them (at most 16 bytes).
pub mod names {
    /// The chunk data.
    pub const BLOB_DATA: &str = "image.blob";
    /// The chunk info array (TOC record), or array plus header (tar header).
    pub const BLOB_META: &str = "blob.meta";
    /// The 4096-byte blob meta header (TOC record only).
    pub const BLOB_META_HEADER: &str = "blob.meta.header";
    /// The chunk digest array: 32 bytes per chunk, in chunk index order.
    pub const CHUNK_DIGESTS: &str = "blob.digest";
    /// The bootstrap.
    pub const BOOTSTRAP: &str = "image.boot";
    /// The table of contents.
    pub const TOC: &str = "rafs.blob.toc";
}

/// Compression flags of a TOC record (upstream `TocEntryFlags`): exactly one is set.
pub mod toc_flags {
    /// Stored as is.
    pub const COMPRESSION_NONE: u32 = 0x1;
    /// A zstd frame.
    pub const COMPRESSION_ZSTD: u32 = 0x2;
    /// An LZ4 block (upstream 2.2.0 writes none and cannot extract one).
    pub const COMPRESSION_LZ4_BLOCK: u32 = 0x4;
}

/// A GNU tar header, 512 bytes, right after the section it describes. Numeric fields are
/// ASCII octal ending in NUL; a size of 8 GiB or more is a big-endian binary number with
/// the field's top bit set (GNU's extension). Only name, size, type, mtime, checksum and
/// magic are written; the rest stays zero.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct TarHeaderRaw {
    /// Section name, NUL padded.
    pub name: [u8; 100],
    /// Permission bits (left as NUL bytes).
    pub mode: [u8; 8],
    /// Owner (left as NUL bytes).
    pub uid: [u8; 8],
    /// Group (left as NUL bytes).
    pub gid: [u8; 8],
    /// Size of the section in bytes.
    pub size: [u8; 12],
    /// Modification time: octal 0.
    pub mtime: [u8; 12],
    /// Sum of all header bytes, this field counted as eight spaces: seven octal digits and
    /// a NUL as tar-rs writes it (classic tar: six digits, NUL, space).
    pub checksum: [u8; 8],
    /// Entry type: `'0'`, a regular file.
    pub typeflag: u8,
    /// Link target (zero).
    pub linkname: [u8; 100],
    /// `"ustar "` (GNU) or `"ustar\0"` (POSIX).
    pub magic: [u8; 6],
    /// `" \0"` (GNU) or `"00"` (POSIX).
    pub version: [u8; 2],
    /// Owner name (zero).
    pub uname: [u8; 32],
    /// Group name (zero).
    pub gname: [u8; 32],
    /// Device major (zero).
    pub devmajor: [u8; 8],
    /// Device minor (zero).
    pub devminor: [u8; 8],
    /// GNU extension fields (times, sparse map, long name flags): zero.
    pub gnu_extra: [u8; 167],
}

/// TOC record, 128 bytes (upstream `TocEntry`). The TOC is an array of these, right
/// before the blob's last tar header.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct TocEntryRaw {
    /// One of `toc_flags`: how the section is stored.
    pub flags: U32,
    /// Zero.
    pub reserved1: U32,
    /// Section name (`names`), NUL padded.
    pub name: [u8; 16],
    /// sha256 of the uncompressed section (all zero: not recorded).
    pub uncompressed_digest: [u8; 32],
    /// Byte offset of the stored section in the blob.
    pub compressed_offset: U64,
    /// Bytes stored.
    pub compressed_size: U64,
    /// Bytes once decompressed.
    pub uncompressed_size: U64,
    /// Zero.
    pub reserved2: [u8; 48],
}

const _: () = {
    use std::mem::offset_of;
    assert!(size_of::<TarHeaderRaw>() == TAR_HEADER_SIZE);
    assert!(offset_of!(TarHeaderRaw, mode) == 100);
    assert!(offset_of!(TarHeaderRaw, size) == 124);
    assert!(offset_of!(TarHeaderRaw, mtime) == 136);
    assert!(offset_of!(TarHeaderRaw, checksum) == 148);
    assert!(offset_of!(TarHeaderRaw, typeflag) == 156);
    assert!(offset_of!(TarHeaderRaw, magic) == 257);
    assert!(offset_of!(TarHeaderRaw, version) == 263);
    assert!(offset_of!(TarHeaderRaw, gnu_extra) == 345);
    assert!(size_of::<TocEntryRaw>() == TOC_ENTRY_SIZE);
    assert!(offset_of!(TocEntryRaw, name) == 8);
    assert!(offset_of!(TocEntryRaw, uncompressed_digest) == 24);
    assert!(offset_of!(TocEntryRaw, compressed_offset) == 56);
    assert!(offset_of!(TocEntryRaw, uncompressed_size) == 72);
    assert!(offset_of!(TocEntryRaw, reserved2) == 80);
};

/// A section's tar header: what it names and how many bytes before it the section holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarHeader {
    /// Section name.
    pub name: String,
    /// Section size in bytes.
    pub size: u64,
}

/// Values from this one on go in the binary form: octal fills the 11 digits of the field
/// below it.
const OCTAL_SIZE_LIMIT: u64 = 1 << 33;

impl TarHeader {
    /// Encodes the header as upstream writes it. `name` is one of [`names`] (our own
    /// constants, at most 100 bytes).
    pub fn encode(name: &str, size: u64) -> [u8; TAR_HEADER_SIZE] {
        let mut raw = TarHeaderRaw::new_zeroed();
        let n = name.len().min(raw.name.len());
        raw.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        if size < OCTAL_SIZE_LIMIT {
            octal_into(&mut raw.size, size);
        } else {
            raw.size[4..].copy_from_slice(&size.to_be_bytes());
            raw.size[0] |= 0x80;
        }
        octal_into(&mut raw.mtime, 0);
        raw.typeflag = b'0';
        raw.magic = *b"ustar ";
        raw.version = *b" \0";
        let sum = checksum(raw.as_bytes());
        octal_into(&mut raw.checksum, sum as u64);
        let mut out = [0u8; TAR_HEADER_SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Whether `bytes` (a blob's last 512) carry a tar magic: the sign that the blob has a
    /// tail of sections rather than being a bootstrap. [`decode`](Self::decode) then says
    /// whether the header is sound.
    pub fn has_magic(bytes: &[u8]) -> bool {
        bytes.get(257..262) == Some(b"ustar")
    }

    /// Decodes and checks a header found at blob byte `offset`: magic, checksum, a
    /// regular-file type, a NUL-terminated UTF-8 name and a numeric size.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, FormatError> {
        let raw = TarHeaderRaw::read_from_bytes(bytes).map_err(|_| FormatError::Truncated {
            offset,
            need: TAR_HEADER_SIZE as u64,
            have: bytes.len() as u64,
            what: "tar header",
        })?;
        let bad = |at: usize, what: String| FormatError::Invalid {
            offset: offset + at as u64,
            what: format!("tar header: {what}"),
        };
        if &raw.magic[..5] != b"ustar" {
            return Err(bad(
                257,
                format!("magic {:?}, expected \"ustar\"", raw.magic),
            ));
        }
        let stored = octal_from(&raw.checksum).ok_or_else(|| {
            bad(
                148,
                format!("checksum field {:?} is not octal", raw.checksum),
            )
        })?;
        let sum = checksum(raw.as_bytes());
        if stored != sum as u64 {
            return Err(bad(
                148,
                format!("checksum 0o{stored:o}, the header sums to 0o{sum:o}"),
            ));
        }
        if !matches!(raw.typeflag, b'0' | 0) {
            return Err(bad(
                156,
                format!(
                    "entry type {:?}, expected a regular file",
                    raw.typeflag as char
                ),
            ));
        }
        let name = nul_padded_str(&raw.name)
            .ok_or_else(|| bad(0, "name is not NUL-padded UTF-8".into()))?;
        let size = if raw.size[0] & 0x80 != 0 {
            if raw.size[..4] != [0x80, 0, 0, 0] {
                return Err(bad(124, "binary size does not fit 64 bits".into()));
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&raw.size[4..]);
            u64::from_be_bytes(be)
        } else {
            octal_from(&raw.size)
                .ok_or_else(|| bad(124, format!("size field {:?} is not octal", raw.size)))?
        };
        Ok(TarHeader {
            name: name.to_string(),
            size,
        })
    }
}

/// Writes `value` as octal digits, zero filled, into all bytes but the last (left NUL),
/// as tar-rs does; a value too large for the field keeps its low digits (our callers
/// stay below that).
fn octal_into(field: &mut [u8], value: u64) {
    let Some((_, digits)) = field.split_last_mut() else {
        return;
    };
    let mut v = value;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (v & 7) as u8;
        v >>= 3;
    }
}

/// Reads an octal field: digits, with leading and trailing spaces, ending at the first
/// NUL or at the field's end. `None` when anything else is there or it overflows.
fn octal_from(field: &[u8]) -> Option<u64> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?.trim_matches(' ');
    if text.is_empty() || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u64::from_str_radix(text, 8).ok()
}

/// The tar checksum: every byte summed, the checksum field counted as eight spaces.
fn checksum(header: &[u8]) -> u32 {
    header
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { b' ' } else { b } as u32)
        .sum()
}

/// A name field: UTF-8 up to the first NUL, only NULs after it, not empty.
fn nul_padded_str(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    if end == 0 || field[end..].iter().any(|&b| b != 0) {
        return None;
    }
    std::str::from_utf8(&field[..end]).ok()
}

/// One TOC record, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    /// Section name (one of [`names`], or a name a later writer added).
    pub name: String,
    /// How the section is stored: none, zstd or lz4_block.
    pub compressor: Compressor,
    /// sha256 of the uncompressed section; `None` when the record leaves it zero.
    pub uncompressed_sha256: Option<[u8; 32]>,
    /// Byte offset of the stored section.
    pub compressed_offset: u64,
    /// Bytes stored.
    pub compressed_size: u64,
    /// Bytes once decompressed.
    pub uncompressed_size: u64,
}

impl TocEntry {
    /// Encodes the record. `name` must fit 16 bytes (our [`names`] do) and the
    /// compressor must be none, zstd or lz4_block.
    pub fn encode(&self) -> [u8; TOC_ENTRY_SIZE] {
        let mut raw = TocEntryRaw::new_zeroed();
        let n = self.name.len().min(raw.name.len());
        raw.name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        raw.flags = match self.compressor {
            Compressor::Zstd => toc_flags::COMPRESSION_ZSTD,
            Compressor::Lz4Block => toc_flags::COMPRESSION_LZ4_BLOCK,
            Compressor::None | Compressor::Gzip => toc_flags::COMPRESSION_NONE,
        }
        .into();
        raw.uncompressed_digest = self.uncompressed_sha256.unwrap_or([0; 32]);
        raw.compressed_offset = self.compressed_offset.into();
        raw.compressed_size = self.compressed_size.into();
        raw.uncompressed_size = self.uncompressed_size.into();
        let mut out = [0u8; TOC_ENTRY_SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decodes and checks a record found at blob byte `offset`: a known compression
    /// flag and nothing else, a name, and a stored range that does not overflow. Sizes
    /// are not compared: `image.blob` is "stored as is" with its chunks' stored and
    /// uncompressed sizes.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, FormatError> {
        let raw = TocEntryRaw::read_from_bytes(bytes).map_err(|_| FormatError::Truncated {
            offset,
            need: TOC_ENTRY_SIZE as u64,
            have: bytes.len() as u64,
            what: "TOC record",
        })?;
        let bad = |at: u64, what: String| FormatError::Invalid {
            offset: offset + at,
            what: format!("TOC record: {what}"),
        };
        let name = nul_padded_str(&raw.name)
            .ok_or_else(|| bad(8, "name is not NUL-padded UTF-8".into()))?
            .to_string();
        let compressor = match raw.flags.get() {
            toc_flags::COMPRESSION_NONE => Compressor::None,
            toc_flags::COMPRESSION_ZSTD => Compressor::Zstd,
            toc_flags::COMPRESSION_LZ4_BLOCK => Compressor::Lz4Block,
            other => {
                return Err(bad(
                    0,
                    format!("{name}: flags 0x{other:x}, expected one compression flag"),
                ))
            }
        };
        let compressed_offset = raw.compressed_offset.get();
        let compressed_size = raw.compressed_size.get();
        let uncompressed_size = raw.uncompressed_size.get();
        if compressed_offset.checked_add(compressed_size).is_none() {
            return Err(bad(
                56,
                format!("{name}: 0x{compressed_offset:x} + 0x{compressed_size:x} overflows"),
            ));
        }
        let digest = raw.uncompressed_digest;
        Ok(TocEntry {
            name,
            compressor,
            uncompressed_sha256: (digest != [0; 32]).then_some(digest),
            compressed_offset,
            compressed_size,
            uncompressed_size,
        })
    }

    /// Byte offset right after the stored section (checked at decode).
    pub fn compressed_end(&self) -> u64 {
        self.compressed_offset.saturating_add(self.compressed_size)
    }
}

/// A table of contents: its records in stored order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toc {
    /// The records.
    pub entries: Vec<TocEntry>,
}

impl Toc {
    /// Encodes the records back to back.
    pub fn encode(&self) -> Vec<u8> {
        self.entries.iter().flat_map(|e| e.encode()).collect()
    }

    /// Decodes a TOC found at blob byte `offset`: a whole number of records, at most
    /// [`MAX_TOC_ENTRIES`], each checked.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, FormatError> {
        if bytes.is_empty()
            || !bytes.len().is_multiple_of(TOC_ENTRY_SIZE)
            || bytes.len() / TOC_ENTRY_SIZE > MAX_TOC_ENTRIES
        {
            return Err(FormatError::Invalid {
                offset,
                what: format!(
                    "TOC of {} bytes: expected 1 to {MAX_TOC_ENTRIES} records of {TOC_ENTRY_SIZE}",
                    bytes.len()
                ),
            });
        }
        let entries = bytes
            .chunks_exact(TOC_ENTRY_SIZE)
            .zip((offset..).step_by(TOC_ENTRY_SIZE))
            .map(|(b, at)| TocEntry::decode(b, at))
            .collect::<Result<_, _>>()?;
        Ok(Toc { entries })
    }

    /// The first record named `name`.
    pub fn find(&self, name: &str) -> Option<&TocEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// What a blob's last tar header leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// A TOC of `size` bytes at `offset` (right before the header).
    Toc {
        /// Byte offset of the TOC.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// No TOC: the bootstrap itself, stored as is, right before the header.
    Bootstrap(TocEntry),
}

impl Tail {
    /// Reads the last tar header of a blob of `blob_len` bytes (`last` = its last 512
    /// bytes): it must name the TOC or the bootstrap, and the section must fit before it.
    pub fn from_last_header(last: &[u8], blob_len: u64) -> Result<Self, FormatError> {
        let header_at =
            blob_len
                .checked_sub(TAR_HEADER_SIZE as u64)
                .ok_or(FormatError::Truncated {
                    offset: 0,
                    need: TAR_HEADER_SIZE as u64,
                    have: blob_len,
                    what: "blob tail",
                })?;
        let header = TarHeader::decode(last, header_at)?;
        let offset = header_at
            .checked_sub(header.size)
            .ok_or_else(|| FormatError::Invalid {
                offset: header_at + 124,
                what: format!(
                    "tar header {:?}: size {} is more than the {header_at} bytes before it",
                    header.name, header.size
                ),
            })?;
        match header.name.as_str() {
            names::TOC => Ok(Tail::Toc {
                offset,
                size: header.size,
            }),
            names::BOOTSTRAP => Ok(Tail::Bootstrap(TocEntry {
                name: names::BOOTSTRAP.to_string(),
                compressor: Compressor::None,
                uncompressed_sha256: None,
                compressed_offset: offset,
                compressed_size: header.size,
                uncompressed_size: header.size,
            })),
            other => Err(FormatError::Invalid {
                offset: header_at,
                what: format!(
                    "last tar header names {other:?}, expected {:?} or {:?}",
                    names::TOC,
                    names::BOOTSTRAP
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_header_round_trips_at_the_size_limits() {
        for size in [0, 640, OCTAL_SIZE_LIMIT - 1, OCTAL_SIZE_LIMIT, u64::MAX] {
            let bytes = TarHeader::encode(names::BLOB_DATA, size);
            let h = TarHeader::decode(&bytes, 0).unwrap();
            assert_eq!(
                h,
                TarHeader {
                    name: names::BLOB_DATA.into(),
                    size
                },
                "{size}"
            );
        }
        // The octal form up to 8 GiB - 1, the binary form from there.
        assert_eq!(&TarHeader::encode("x", 640)[124..136], b"00000001200\0");
        assert_eq!(
            &TarHeader::encode("x", OCTAL_SIZE_LIMIT)[124..136],
            &[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]
        );
    }

    /// The bytes tar-rs (upstream's writer) gives for the TOC header of 640 bytes, as
    /// found at the end of a blob upstream 2.2.0 wrote: every byte but these is zero.
    #[test]
    fn tar_header_matches_upstream_bytes() {
        let bytes = TarHeader::encode(names::TOC, 640);
        let mut want = [0u8; TAR_HEADER_SIZE];
        want[..13].copy_from_slice(b"rafs.blob.toc");
        want[124..136].copy_from_slice(b"00000001200\0");
        want[136..148].copy_from_slice(b"00000000000\0");
        want[148..156].copy_from_slice(b"0006257\0");
        want[156] = b'0';
        want[257..265].copy_from_slice(b"ustar  \0");
        assert_eq!(bytes, want);
    }

    #[test]
    fn tar_header_decode_rejects_damage() {
        let good = TarHeader::encode(names::BOOTSTRAP, 4096);
        let cases: [(&str, usize, u8); 5] = [
            ("checksum", 0, b'X'), // a name byte changed: the sum no longer matches
            ("magic", 257, b'x'),
            ("type", 156, b'5'),
            ("size", 130, b'9'),
            ("checksum digits", 150, b'8'),
        ];
        for (what, at, value) in cases {
            let mut bad = good;
            bad[at] = value;
            if what != "checksum" && what != "checksum digits" {
                // Keep the checksum right so that the field itself is what fails.
                let sum = checksum(&bad);
                octal_into(&mut bad[148..156], sum as u64);
            }
            let err = TarHeader::decode(&bad, 0x1000).unwrap_err();
            assert!(
                matches!(err, FormatError::Invalid { offset, .. } if offset >= 0x1000),
                "{what}: {err}"
            );
        }
        assert!(TarHeader::decode(&good[..511], 0).is_err());
    }

    #[test]
    fn toc_entry_round_trips_and_checks_its_fields() {
        let entry = TocEntry {
            name: names::BLOB_META_HEADER.into(),
            compressor: Compressor::Zstd,
            uncompressed_sha256: Some([7; 32]),
            compressed_offset: 0x495e6,
            compressed_size: 0x17a,
            uncompressed_size: 0x5000,
        };
        let bytes = entry.encode();
        assert_eq!(TocEntry::decode(&bytes, 0).unwrap(), entry);
        assert_eq!(&bytes[8..24], b"blob.meta.header");
        let toc = Toc {
            entries: vec![
                entry.clone(),
                TocEntry {
                    uncompressed_sha256: None,
                    ..entry
                },
            ],
        };
        assert_eq!(Toc::decode(&toc.encode(), 0).unwrap(), toc);
        type Patch = fn(&mut [u8; TOC_ENTRY_SIZE]);
        let patches: [(&str, Patch); 3] = [
            ("two flags", |b| b[0] = 3),
            ("no name", |b| b[8..24].fill(0)),
            ("overflow", |b| b[56..64].fill(0xff)),
        ];
        for (what, patch) in patches {
            let mut bad = bytes;
            patch(&mut bad);
            assert!(TocEntry::decode(&bad, 0).is_err(), "{what} accepted");
        }
        for len in [0, 100, 129 * 2, (MAX_TOC_ENTRIES + 1) * TOC_ENTRY_SIZE] {
            assert!(
                Toc::decode(&vec![0u8; len], 0).is_err(),
                "{len} bytes accepted"
            );
        }
    }

    #[test]
    fn tail_leads_to_the_toc_or_the_bootstrap() {
        let last = TarHeader::encode(names::TOC, 640);
        assert_eq!(
            Tail::from_last_header(&last, 10_000).unwrap(),
            Tail::Toc {
                offset: 10_000 - 512 - 640,
                size: 640
            }
        );
        let last = TarHeader::encode(names::BOOTSTRAP, 8192);
        match Tail::from_last_header(&last, 8192 + 512).unwrap() {
            Tail::Bootstrap(e) => assert_eq!((e.compressed_offset, e.compressed_size), (0, 8192)),
            other => panic!("{other:?}"),
        }
        // A section larger than what lies before its header; a header naming another
        // section; a blob shorter than a header.
        assert!(Tail::from_last_header(&last, 8192 + 511 + 512).is_ok());
        assert!(Tail::from_last_header(&last, 8191 + 512).is_err());
        let last = TarHeader::encode(names::BLOB_META, 10);
        assert!(Tail::from_last_header(&last, 10_000).is_err());
        assert!(Tail::from_last_header(&last, 100).is_err());
    }

    /// Walks back over every section of a blob, header by header, checking each against
    /// the TOC record of its name where there is one; returns (name, data offset, size).
    fn sections(blob: &[u8], toc: &Toc) -> Vec<(String, u64, u64)> {
        let mut end = blob.len() as u64;
        let mut out = Vec::new();
        while end > 0 {
            let at = end - TAR_HEADER_SIZE as u64;
            let h = TarHeader::decode(&blob[at as usize..end as usize], at).unwrap();
            let start = at - h.size;
            out.push((h.name.clone(), start, h.size));
            end = start;
        }
        out.reverse();
        for (name, start, size) in &out {
            if let Some(e) = toc.find(name) {
                assert_eq!(e.compressed_offset, *start, "{name}");
                // blob.meta's header covers the array and the meta header.
                let want = if name == names::BLOB_META {
                    size - 4096
                } else {
                    *size
                };
                assert_eq!(e.compressed_size, want, "{name}");
            }
        }
        out
    }

    /// Parses the tail of a blob upstream 2.2.0 made from a tar (GNU tar), with inline
    /// metadata and a TOC: every section walks back to offset 0, the TOC lists the five
    /// sections upstream writes, and the bootstrap it points to decompresses to a RAFS v6
    /// superblock whose sha256 the TOC records.
    #[test]
    fn parses_the_tail_of_an_upstream_blob() {
        use sha2::Digest;
        let upstream = std::env::var_os("NYDUS_UPSTREAM_ROOT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/opt/nydus-upstream-2.2.0".into())
            .join("bin/nydus-image");
        assert!(
            upstream.exists(),
            "upstream nydus-image 2.2.0 is not at {}",
            upstream.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("small"), b"hello\n").unwrap();
        let big: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(src.join("d/big"), &big).unwrap();
        let tar = dir.path().join("layer.tar");
        let ok = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .expect("run GNU tar");
        assert!(ok.success());
        let blob_path = dir.path().join("OUT");
        let out = std::process::Command::new(&upstream)
            .args(["create", "--log-level", "warn", "--type", "tar-rafs"])
            .args(["--blob-inline-meta", "--features", "blob-toc", "--blob"])
            .arg(&blob_path)
            .arg(&tar)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let blob = std::fs::read(&blob_path).unwrap();
        let len = blob.len() as u64;

        let Tail::Toc { offset, size } =
            Tail::from_last_header(&blob[blob.len() - TAR_HEADER_SIZE..], len).unwrap()
        else {
            panic!("upstream's blob has no TOC");
        };
        let toc = Toc::decode(&blob[offset as usize..(offset + size) as usize], offset).unwrap();
        let listed: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            listed,
            [
                names::BLOB_DATA,
                names::BLOB_META,
                names::BLOB_META_HEADER,
                names::CHUNK_DIGESTS,
                names::BOOTSTRAP
            ]
        );
        let walked: Vec<String> = sections(&blob, &toc).into_iter().map(|s| s.0).collect();
        assert_eq!(
            walked,
            [
                names::BLOB_DATA,
                names::BLOB_META,
                names::CHUNK_DIGESTS,
                names::BOOTSTRAP,
                names::TOC
            ]
        );

        let boot = toc.find(names::BOOTSTRAP).unwrap();
        assert_eq!(boot.compressor, Compressor::Zstd);
        let stored = &blob[boot.compressed_offset as usize..boot.compressed_end() as usize];
        let mut bootstrap = vec![0u8; boot.uncompressed_size as usize];
        crate::storage::compress::decompress(boot.compressor, stored, &mut bootstrap).unwrap();
        assert_eq!(
            Some(<[u8; 32]>::from(sha2::Sha256::digest(&bootstrap))),
            boot.uncompressed_sha256
        );
        assert_eq!(&bootstrap[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());

        // The quirk a writer copies: image.blob's digest covers its tar header too.
        let data = toc.find(names::BLOB_DATA).unwrap();
        let with_header = &blob[..(data.compressed_end() + TAR_HEADER_SIZE as u64) as usize];
        assert_eq!(
            Some(<[u8; 32]>::from(sha2::Sha256::digest(with_header))),
            data.uncompressed_sha256
        );
        // The two chunks' digests, stored as is.
        let digests = toc.find(names::CHUNK_DIGESTS).unwrap();
        assert_eq!(
            (digests.compressor, digests.compressed_size),
            (Compressor::None, 64)
        );
    }
}
