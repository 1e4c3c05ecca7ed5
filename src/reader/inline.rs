//! Opening an image from a data blob that carries its own bootstrap (upstream 2.2.0's
//! `create --blob-inline-meta`, see `format::blob_toc`), wherever a bootstrap is
//! expected: `check`, `mount` and `verify` take such a blob as `--bootstrap`.
//!
//! The blob's last tar header leads to the bootstrap: through the TOC's `image.boot`
//! record (blob-toc), or directly when the header names `image.boot`. The bootstrap is
//! read, decompressed and checked against the sizes and sha256 the TOC records.
//!
//! Such a bootstrap does not know its blob's id: upstream writes 64 `x` characters in its
//! blob table and device table, and marks the blob `INLINED_FS_META`; the consumer names
//! it (upstream: by the file name it was given). Here the blob is the file itself, so its
//! id is the file's name when that is a blob id (64 lowercase hex digits, as a blob
//! directory names blobs), or else the blob's sha256. Every blob table entry marked
//! `INLINED_FS_META` is served by the file; other entries (the layers below, for a
//! layered build) come from the blob source as usual.
//!
//! A RAFS v5 bootstrap sits in its blob the same way (upstream 2.2.0 writes it without
//! a TOC and without blob meta: chunk data, `image.blob` header, the bootstrap as it is,
//! `image.boot` header), with the same placeholder id in its blob table.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Image, ReadError, MAX_BOOTSTRAP};
use crate::format::blob_toc::{
    names, Tail, TarHeader, Toc, TocEntry, MAX_TOC_ENTRIES, TAR_HEADER_SIZE, TOC_ENTRY_SIZE,
};
use crate::format::Compressor;
use crate::storage::blobs::BlobSource;
use crate::storage::compress;

/// How an image was found inside a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineSource {
    /// The blob file.
    pub blob_path: PathBuf,
    /// The id given to the blob: its file name or its sha256.
    pub blob_id: String,
    /// The blob's TOC, when it has one.
    pub toc: Option<Toc>,
    /// Where the bootstrap is stored in the blob (a TOC record, or one made from the
    /// bootstrap's tar header).
    pub bootstrap: TocEntry,
}

/// The blob the image's own blob table entries (`INLINED_FS_META`) are served from.
pub(super) struct OwnBlob<'a> {
    pub id: &'a str,
    pub path: &'a Path,
}

/// Whether `path` is a blob with inline metadata rather than a bootstrap: its last 512
/// bytes carry a tar magic (a bootstrap ends in its tables, never in a tar header).
/// Whether the tail is sound is for [`Image::open_any`] to say.
pub fn is_inline_blob(path: &Path) -> std::io::Result<bool> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok(last_header(&file, len)?.is_some_and(|h| TarHeader::has_magic(&h)))
}

/// The file's last 512 bytes, if it has that many.
fn last_header(file: &File, len: u64) -> std::io::Result<Option<[u8; TAR_HEADER_SIZE]>> {
    let Some(at) = len.checked_sub(TAR_HEADER_SIZE as u64) else {
        return Ok(None);
    };
    let mut buf = [0u8; TAR_HEADER_SIZE];
    file.read_exact_at(&mut buf, at)?;
    Ok(Some(buf))
}

/// An error about the blob at `path`, with its cause.
fn inline_err(
    path: &Path,
    what: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ReadError {
    ReadError::Inline {
        path: path.to_path_buf(),
        what: what.into(),
        source: Some(source.into()),
    }
}

/// An error about the blob at `path` without an underlying cause.
fn inline_bad(path: &Path, what: impl Into<String>) -> ReadError {
    ReadError::Inline {
        path: path.to_path_buf(),
        what: what.into(),
        source: None,
    }
}

impl Image {
    /// Opens an image from `path`: a bootstrap, or a data blob carrying its bootstrap
    /// (inline metadata; see [`is_inline_blob`] for how they are told apart). For a blob,
    /// the blob itself serves the image's own blob and `blobs` the others, if any.
    pub fn open_any(path: &Path, blobs: BlobSource) -> Result<Self, ReadError> {
        let io = |what: &str, e| ReadError::Io {
            path: path.to_path_buf(),
            what: what.to_string(),
            source: e,
        };
        let file = File::open(path).map_err(|e| io("cannot open", e))?;
        let len = file.metadata().map_err(|e| io("cannot stat", e))?.len();
        match last_header(&file, len).map_err(|e| io("cannot read the last 512 bytes", e))? {
            Some(last) if TarHeader::has_magic(&last) => {
                Self::open_inline(path, &file, len, &last, blobs)
            }
            _ => Self::open(path, blobs),
        }
    }

    /// How the image was found inside a blob, if it was.
    pub fn inline(&self) -> Option<&InlineSource> {
        self.inline.as_ref()
    }

    fn open_inline(
        path: &Path,
        file: &File,
        len: u64,
        last: &[u8; TAR_HEADER_SIZE],
        blobs: BlobSource,
    ) -> Result<Self, ReadError> {
        let tail = Tail::from_last_header(last, len).map_err(|e| inline_err(path, "tail", e))?;
        let (toc, bootstrap, limit) = match tail {
            Tail::Toc { offset, size } => {
                let toc = read_toc(path, file, offset, size)?;
                let entry = toc.find(names::BOOTSTRAP).cloned().ok_or_else(|| {
                    inline_bad(
                        path,
                        format!("the TOC has no {:?} record", names::BOOTSTRAP),
                    )
                })?;
                (Some(toc), entry, offset)
            }
            Tail::Bootstrap(entry) => {
                let end = entry.compressed_end();
                (None, entry, end)
            }
        };
        let meta = read_section(path, file, &bootstrap, limit)?;
        let at = bootstrap.compressed_offset;
        let blob_id = blob_id_for(path, file, len)?;
        log::debug!(
            "{}: bootstrap of 0x{:x} bytes at 0x{at:x} ({}), blob id {blob_id}",
            path.display(),
            meta.len(),
            bootstrap.compressor.name()
        );
        // Offsets in format errors are in the bootstrap section, not in the blob.
        let shown = PathBuf::from(format!("{} ({})", path.display(), names::BOOTSTRAP));
        let own = OwnBlob { id: &blob_id, path };
        let mut image = Self::from_parts(&shown, meta, blobs, Some(own))?;
        image.inline = Some(InlineSource {
            blob_path: path.to_path_buf(),
            blob_id,
            toc,
            bootstrap,
        });
        Ok(image)
    }
}

/// Reads the section `entry` describes from `file` (the blob at `path`), checked: it must
/// end by `limit` (where the TOC or the tail starts), fit in memory, decompress to its
/// recorded size and match the sha256 its record holds, if any.
fn read_section(
    path: &Path,
    file: &File,
    entry: &TocEntry,
    limit: u64,
) -> Result<Vec<u8>, ReadError> {
    let label = if entry.name == names::BOOTSTRAP {
        "bootstrap"
    } else {
        entry.name.as_str()
    };
    let at = entry.compressed_offset;
    if entry.compressed_end() > limit {
        return Err(inline_bad(
            path,
            format!(
                "{label} section at 0x{at:x} (0x{:x} bytes) runs past 0x{limit:x}, where the TOC starts",
                entry.compressed_size
            ),
        ));
    }
    if entry.uncompressed_size > MAX_BOOTSTRAP || entry.compressed_size > MAX_BOOTSTRAP {
        return Err(inline_bad(
            path,
            format!(
                "{label} section at 0x{at:x}: 0x{:x} bytes, 0x{:x} uncompressed, more than the 2 GiB limit",
                entry.compressed_size, entry.uncompressed_size
            ),
        ));
    }
    if entry.compressor == Compressor::None && entry.compressed_size != entry.uncompressed_size {
        return Err(inline_bad(
            path,
            format!(
                "{label} section at 0x{at:x}: stored as is in 0x{:x} bytes but 0x{:x} uncompressed",
                entry.compressed_size, entry.uncompressed_size
            ),
        ));
    }
    let mut stored = vec![0u8; entry.compressed_size as usize];
    file.read_exact_at(&mut stored, at).map_err(|e| {
        inline_err(
            path,
            format!(
                "cannot read the {label} section at 0x{at:x} (0x{:x} bytes)",
                entry.compressed_size
            ),
            e,
        )
    })?;
    let bytes = if entry.compressor == Compressor::None {
        stored
    } else {
        let mut out = vec![0u8; entry.uncompressed_size as usize];
        compress::decompress(entry.compressor, &stored, &mut out).map_err(|e| {
            inline_err(
                path,
                format!(
                    "{label} section at 0x{at:x}: cannot decompress it ({})",
                    entry.compressor.name()
                ),
                e,
            )
        })?;
        out
    };
    if let Some(want) = entry.uncompressed_sha256 {
        let got: [u8; 32] = Sha256::digest(&bytes).into();
        if got != want {
            return Err(inline_bad(
                path,
                format!(
                    "{label} section at 0x{at:x}: sha256 {}, the TOC records {}",
                    hex::encode(got),
                    hex::encode(want)
                ),
            ));
        }
    }
    Ok(bytes)
}

/// Takes the metadata section `name` (one of [`names`] but `image.blob`, say `image.boot`) out of the blob at
/// `path`, as containerd's converter takes a layer's bootstrap out of its blob: found
/// through the TOC at the blob's end (or, for `image.boot` in a blob without a TOC, right
/// before the last tar header), read, decompressed and checked against its record.
pub fn extract_section(path: &Path, name: &str) -> Result<Vec<u8>, ReadError> {
    if name == names::BLOB_DATA {
        // Its record's digest and sizes describe the chunks, not bytes to copy out.
        return Err(inline_bad(
            path,
            format!("{name:?} is the blob's chunk data: only metadata sections are extracted"),
        ));
    }
    let io = |what: &str, e| ReadError::Io {
        path: path.to_path_buf(),
        what: what.to_string(),
        source: e,
    };
    let file = File::open(path).map_err(|e| io("cannot open", e))?;
    let len = file.metadata().map_err(|e| io("cannot stat", e))?.len();
    let last = last_header(&file, len)
        .map_err(|e| io("cannot read the last 512 bytes", e))?
        .filter(|h| TarHeader::has_magic(h))
        .ok_or_else(|| inline_bad(path, "does not end in a tar header: no inline metadata"))?;
    let tail = Tail::from_last_header(&last, len).map_err(|e| inline_err(path, "tail", e))?;
    let (entry, limit) = match tail {
        Tail::Toc { offset, size } => {
            let toc = read_toc(path, &file, offset, size)?;
            let entry = toc.find(name).cloned().ok_or_else(|| {
                inline_bad(
                    path,
                    format!("the TOC at 0x{offset:x} has no {name:?} record"),
                )
            })?;
            (entry, offset)
        }
        Tail::Bootstrap(entry) if name == names::BOOTSTRAP => {
            let end = entry.compressed_end();
            (entry, end)
        }
        Tail::Bootstrap(_) => {
            return Err(inline_bad(
                path,
                format!("the blob has no TOC, so no {name:?} section can be found"),
            ))
        }
    };
    read_section(path, &file, &entry, limit)
}

/// Reads and decodes the TOC of `size` bytes at `offset`.
fn read_toc(path: &Path, file: &File, offset: u64, size: u64) -> Result<Toc, ReadError> {
    let most = (MAX_TOC_ENTRIES * TOC_ENTRY_SIZE) as u64;
    if size > most {
        return Err(inline_bad(
            path,
            format!("the TOC at 0x{offset:x} is 0x{size:x} bytes, more than 0x{most:x}"),
        ));
    }
    let mut bytes = vec![0u8; size as usize];
    file.read_exact_at(&mut bytes, offset).map_err(|e| {
        inline_err(
            path,
            format!("cannot read the TOC at 0x{offset:x} (0x{size:x} bytes)"),
            e,
        )
    })?;
    Toc::decode(&bytes, offset).map_err(|e| inline_err(path, "TOC", e))
}

/// Whether `name` is a blob id as blob directories name blobs: 64 lowercase hex digits.
fn is_blob_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The blob's id: its file name if that is a blob id, or else its sha256.
fn blob_id_for(path: &Path, file: &File, len: u64) -> Result<String, ReadError> {
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        if is_blob_id(name) {
            return Ok(name.to_string());
        }
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut hashed = 0u64;
    while hashed < len {
        let n = file.read_at(&mut buf, hashed).map_err(|e| {
            inline_err(
                path,
                format!("cannot read at 0x{hashed:x} to hash the blob"),
                e,
            )
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        hashed += n as u64;
    }
    if hashed != len {
        return Err(inline_bad(
            path,
            format!("the blob shrank from {len} to {hashed} bytes while it was hashed"),
        ));
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_are_64_lowercase_hex_digits() {
        assert!(is_blob_id(&"0a".repeat(32)));
        for name in [
            "0a".repeat(31),
            "0A".repeat(32),
            "x".repeat(64),
            "OUT".into(),
        ] {
            assert!(!is_blob_id(&name), "{name}");
        }
    }
}
