//! Why an eStargz layer cannot be described: every error names the TOC (or the layer
//! file), and a problem with one entry names the entry by its index in the TOC's
//! `entries` and its name, with what was expected and what was found.

use std::path::PathBuf;

use thiserror::Error;

use super::time::TimeError;
use crate::format::v6::inode::XattrError;

/// Why the eStargz source failed.
#[derive(Debug, Error)]
pub enum StargzError {
    /// The TOC file could not be read.
    #[error("eStargz TOC {}: cannot read it", toc.display())]
    ReadToc {
        /// The TOC.
        toc: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TOC is not JSON of the TOC's shape.
    #[error("eStargz TOC {}: not an eStargz TOC", toc.display())]
    NotToc {
        /// The TOC.
        toc: PathBuf,
        /// What the JSON parser found.
        #[source]
        source: serde_json::Error,
    },
    /// The TOC's version is not 1.
    #[error("eStargz TOC {}: TOC version {found} is not supported (only version 1)", toc.display())]
    Version {
        /// The TOC.
        toc: PathBuf,
        /// The version it gives.
        found: i64,
    },
    /// One entry of the TOC is wrong or cannot be represented.
    #[error("eStargz TOC {}: entry {index} ({})", toc.display(), quoted(name))]
    Entry {
        /// The TOC.
        toc: PathBuf,
        /// Index of the entry in the TOC's `entries`.
        index: usize,
        /// The entry's name as the TOC spells it.
        name: String,
        /// What is wrong with it.
        #[source]
        problem: EntryError,
    },
    /// A chunk the TOC places does not hold what the TOC says, in the layer file.
    #[error(
        "eStargz layer {}: chunk at offset {offset} of TOC entry {index} ({})",
        layer.display(),
        quoted(name)
    )]
    LayerChunk {
        /// The layer file.
        layer: PathBuf,
        /// Index of the TOC entry the chunk belongs to (its first user, for a shared chunk).
        index: usize,
        /// That entry's name.
        name: String,
        /// Where the chunk's gzip member starts in the layer.
        offset: u64,
        /// What is wrong with it.
        #[source]
        problem: LayerChunkError,
    },
    /// The layer file could not be opened or read.
    #[error("eStargz layer {}: {what}", layer.display())]
    LayerIo {
        /// The layer file.
        layer: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The layer is not where `--blob-dir` and `--blob-id` say it is.
    #[error(
        "eStargz layer {}: not in the blob directory (it must be named by its blob id)",
        layer.display()
    )]
    LayerMissing {
        /// Where it was looked for.
        layer: PathBuf,
    },
    /// `--blob-id` carries the digest's `sha256:` prefix.
    #[error(
        "--blob-id {id:?}: give the layer digest without the \"sha256:\" prefix: --blob-id {bare}"
    )]
    BlobIdPrefixed {
        /// The id given.
        id: String,
        /// The id without its prefix.
        bare: String,
    },
    /// `--blob-id` is not a sha256 digest in hex.
    #[error("--blob-id {id:?}: an eStargz layer's blob id is its sha256 digest, 64 hex digits")]
    BlobIdNotDigest {
        /// The id given.
        id: String,
    },
}

impl From<StargzError> for crate::builder::BuildError {
    fn from(e: StargzError) -> Self {
        Box::new(e).into()
    }
}

/// Longest name a message shows whole, in bytes.
const SHOWN_NAME_BYTES: usize = 200;

/// `name` quoted for a message: whole when short, else its start and its length, since a
/// TOC name can run to hundreds of KiB.
fn quoted(name: &str) -> String {
    if name.len() <= SHOWN_NAME_BYTES {
        return format!("{name:?}");
    }
    let mut end = SHOWN_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &name[..end], name.len())
}

/// What is wrong with a name in the TOC (an entry's, or a hard link's target).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    /// It starts with `/`.
    #[error("absolute names are not allowed in a layer")]
    Absolute,
    /// Two slashes in a row.
    #[error("empty path component")]
    EmptyComponent,
    /// A `.` or `..` component.
    #[error("{0:?} path component")]
    DotComponent(&'static str),
    /// A component longer than a file name may be.
    #[error("a component is {found} bytes, the limit is 255")]
    LongComponent {
        /// Its length in bytes.
        found: usize,
    },
    /// A NUL byte.
    #[error("NUL byte in name")]
    Nul,
    /// More components than directories may nest.
    #[error(
        "{found} path components, more than the {max} an image may nest (the reader's depth limit)"
    )]
    TooDeep {
        /// Components in the name.
        found: usize,
        /// Most allowed.
        max: usize,
    },
}

/// What is wrong with one TOC entry.
#[derive(Debug, Error)]
pub enum EntryError {
    /// Its name is not a relative path of plain components.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Its type is none of the TOC's.
    #[error("unknown entry type {found:?}")]
    UnknownType {
        /// The type given.
        found: String,
    },
    /// It has zstd:chunked's `innerOffset`.
    #[error("innerOffset {found} (zstd:chunked) is not supported; only gzip eStargz")]
    InnerOffset {
        /// The offset given.
        found: u64,
    },
    /// A `chunk` entry naming the root.
    #[error("a chunk entry names the root")]
    ChunkOfRoot,
    /// A `chunk` entry that does not follow its file's `reg` entry (or its other chunks).
    #[error("chunk entry does not follow its regular file")]
    ChunkWithoutFile,
    /// The root entry is not a directory.
    #[error("the root is a {found:?} entry, not a directory")]
    RootNotDir {
        /// The type given.
        found: String,
    },
    /// A symlink without `linkName`.
    #[error("symlink without a target (linkName)")]
    SymlinkWithoutTarget,
    /// A symlink target longer than Linux allows, or holding a NUL byte.
    #[error("symlink target of {found} bytes is longer than 4095 or holds a NUL byte")]
    SymlinkTarget {
        /// Its length in bytes.
        found: usize,
    },
    /// A hard link whose `linkName` is not a relative path of plain components.
    #[error("hard link target {}", quoted(target))]
    HardLinkName {
        /// The target given.
        target: String,
        /// What is wrong with it.
        #[source]
        problem: NameError,
    },
    /// A hard link to the root.
    #[error("hard link to the root")]
    HardLinkToRoot,
    /// A hard link to something that is not an earlier non-directory.
    #[error(
        "hard link to {}, which is not an earlier non-directory entry",
        quoted(target)
    )]
    HardLinkTarget {
        /// The target given.
        target: String,
    },
    /// A path goes through something that is not a directory.
    #[error("{} is not a directory", quoted(path))]
    NotADirectory {
        /// The path of the non-directory, from the layer root.
        path: String,
    },
    /// `mode` has type bits that disagree with `type`.
    #[error("mode 0o{mode:o} disagrees with type {kind:?}")]
    ModeType {
        /// The mode given.
        mode: u32,
        /// The type given.
        kind: String,
    },
    /// `modtime` is not an RFC 3339 time.
    #[error("modtime")]
    Modtime(#[source] TimeError),
    /// A device number RAFS v6 cannot hold.
    #[error("device {major}:{minor} does not fit RAFS v6's 32-bit device numbers (major at most 4095, minor at most 1048575)")]
    Device {
        /// Major number given.
        major: u32,
        /// Minor number given.
        minor: u32,
    },
    /// An xattr value that is not base64.
    #[error("xattr {xattr:?}: value is not base64")]
    XattrValue {
        /// The xattr's name.
        xattr: String,
        /// What the decoder found.
        #[source]
        source: base64::DecodeError,
    },
    /// Xattrs RAFS v6 cannot store.
    #[error(transparent)]
    Xattr(#[from] XattrError),
    /// A digest that is not `sha256:` and 64 hex digits.
    #[error("{field} {found:?} is not a sha256 digest (\"sha256:\" and 64 hex digits)")]
    Digest {
        /// `digest` or `chunkDigest`.
        field: &'static str,
        /// The digest given.
        found: String,
    },
    /// A file's chunks leave a gap or overlap.
    #[error(
        "chunks do not tile the file: a chunk starts at {found} where {expected} was expected"
    )]
    ChunksNotTiling {
        /// Where the next chunk should start in the file.
        expected: u64,
        /// Where it starts.
        found: u64,
    },
    /// A chunk without a size that is not the file's last.
    #[error("chunk at {file_offset} has no size but is not the file's last")]
    ChunkWithoutSize {
        /// Where the chunk starts in its file.
        file_offset: u64,
    },
    /// A chunk that runs past the end of its file, or is empty.
    #[error("chunk at {file_offset} of {size} bytes overruns the file's {file_size} bytes")]
    ChunkOverrun {
        /// Where the chunk starts in its file.
        file_offset: u64,
        /// Its size.
        size: u64,
        /// The file's size.
        file_size: u64,
    },
    /// Chunks that cover less than the file.
    #[error("chunks cover {covered} of the file's {file_size} bytes")]
    ChunksShort {
        /// Bytes the chunks cover.
        covered: u64,
        /// The file's size.
        file_size: u64,
    },
    /// A full chunk whose size differs from other files' full chunks.
    #[error("chunk size {found} differs from the layer's {expected}; RAFS v6 needs one chunk size per image")]
    ChunkSizeDiffers {
        /// The layer's chunk size, from earlier files.
        expected: u64,
        /// This file's.
        found: u64,
    },
    /// A chunk size RAFS v6 cannot use.
    #[error(
        "chunk size {found} is not a power of two between 4 KiB and 16 MiB, which RAFS v6 needs"
    )]
    ChunkSizeInvalid {
        /// The layer's chunk size.
        found: u64,
    },
    /// The layer's chunk size differs from the one the image must have.
    #[error("chunk size 0x{found:x} differs from the image's 0x{expected:x} (the parent image's, or --chunk-size)")]
    ChunkSizeNotImage {
        /// The image's chunk size.
        expected: u32,
        /// The layer's.
        found: u64,
    },
    /// A single chunk larger than the image's chunk size.
    #[error("a single chunk of {found} bytes exceeds the image's chunk size 0x{chunk_size:x}; rebuild the layer with a chunk size of at most 16 MiB")]
    ChunkTooLarge {
        /// The chunk's size.
        found: u64,
        /// The image's chunk size.
        chunk_size: u32,
    },
    /// A chunk without a digest.
    #[error("chunk at {file_offset} has no chunkDigest (nor a file digest covering it)")]
    ChunkWithoutDigest {
        /// Where the chunk starts in its file.
        file_offset: u64,
    },
    /// Two chunks at one layer offset that disagree.
    #[error("chunk at layer offset {offset} is also entry {other}'s, with other contents")]
    ChunkConflict {
        /// Where the chunk starts in the layer.
        offset: u64,
        /// Index of the other entry.
        other: usize,
    },
    /// A chunk that starts past the end of the layer.
    #[error("chunk at offset {offset} lies beyond the layer's {layer_size} bytes")]
    ChunkBeyondLayer {
        /// Where the chunk starts in the layer.
        offset: u64,
        /// The layer's size.
        layer_size: u64,
    },
    /// Too little room for a gzip member before the next chunk or the layer's end.
    #[error("chunk at layer offset {offset} has only {room} bytes before the next one or the layer's end; a gzip member takes at least 19")]
    ChunkNoRoom {
        /// Where the chunk starts in the layer.
        offset: u64,
        /// Bytes up to the next chunk or the layer's end.
        room: u64,
    },
    /// A chunk whose stored size does not fit the chunk table's 32 bits.
    #[error("chunk at layer offset {offset} may take {bound} bytes, more than a chunk table entry holds")]
    ChunkStoredSize {
        /// Where the chunk starts in the layer.
        offset: u64,
        /// The bound on its stored size.
        bound: u64,
    },
}

/// What is wrong with a chunk in the layer file.
#[derive(Debug, Error)]
pub enum LayerChunkError {
    /// It starts past the end of the file.
    #[error("it lies beyond the layer's {layer_size} bytes")]
    Beyond {
        /// The layer file's size.
        layer_size: u64,
    },
    /// It is not a gzip member of the chunk's size.
    #[error("it does not inflate to its {size} bytes")]
    Inflate {
        /// The chunk's size.
        size: u32,
        /// What the decompressor found.
        #[source]
        reason: crate::storage::compress::DecompressError,
    },
    /// Its bytes have another digest.
    #[error("it has sha256 {found}, the TOC says {expected}")]
    Digest {
        /// The TOC's digest, in hex.
        expected: String,
        /// The digest of its bytes, in hex.
        found: String,
    },
}
