//! eStargz layers: the tree is read from the layer's table of contents (TOC, the
//! `stargz.index.json` the eStargz writer stores at the end of the layer) instead of a
//! directory, and file data stays where it is: every chunk is a gzip member of the
//! eStargz file at the TOC's `offset`, and the image's data blob is that file.
//!
//! The TOC, as the containerd stargz library writes it (version 1):
//! - one entry per tar entry, types `dir`, `reg`, `symlink`, `hardlink`, `char`,
//!   `block`, `fifo`, plus `chunk` for the second and later chunks of a regular file;
//! - names relative to the layer root, spelled `./a/b` or `a/b`, directories with a
//!   trailing `/`; the root may appear as `./`;
//! - `mode` holds permission bits only (the type is `type`), `modtime` is RFC 3339 in
//!   whole seconds (empty for the epoch), xattr values are base64;
//! - a regular file's first chunk sits in the `reg` entry: `offset` (its gzip member),
//!   `chunkOffset` 0, `chunkSize` (absent when the chunk runs to the end of the file) and
//!   `chunkDigest` (sha256 of the chunk's bytes); empty files carry only `digest`;
//! - `.prefetch.landmark` / `.no.prefetch.landmark` are markers for the prefetcher,
//!   not part of the layer's tree: they are left out, as upstream does.
//!
//! Nothing of the TOC is trusted: names are checked component by component and may
//! not nest deeper than the reader walks, xattrs must fit an inode, chunks must tile
//! their file, and offsets must increase with the data they address. A path listed more
//! than once ends up as tar extraction would leave it: the later entry wins.
//!
//! Like the directory source, this one hands the build a flat, breadth-first [`Tree`],
//! whose files already have their chunks. Only layering it onto a parent image goes
//! through the nested [`overlay::Entry`](crate::builder::overlay::Entry) form, as it does
//! for a directory.
//!
//! The work is split by job:
//! - `error.rs`: what can go wrong, naming the TOC, the entry and the offset;
//! - `toc.rs`: the TOC's JSON schema, its names and digests, and reading it entry by
//!   entry into the layer's tree;
//! - `namespace.rs`: the names the entries make, applied in order as tar extraction
//!   would (a later entry for a path wins), flattened into the tree;
//! - `time.rs`: RFC 3339 modification times;
//! - `layer.rs`: placing chunks in the layer, and checking them against the layer file;
//! - `mod.rs`: the options, the bootstrap description, and the build.

mod error;
mod layer;
mod namespace;
mod time;
mod toc;

pub use error::{EntryError, LayerChunkError, NameError, StargzError};
pub use layer::{check_layer, gzip_bound};
pub use time::{parse_rfc3339, TimeError};
pub use toc::{load, parse};

use std::path::{Path, PathBuf};

use crate::builder::overlay::Entry;
use crate::builder::tree::{FileData, Tree};
use crate::builder::BuildError;
use crate::format::v6::tables::ChunkInfo;

/// Prefetch markers the eStargz writer adds at the layer root.
pub const LANDMARKS: [&[u8]; 2] = [b".prefetch.landmark", b".no.prefetch.landmark"];
/// The eStargz writer's default chunk size, used when no file of the layer is split.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;

/// Settings of an eStargz build beyond [`crate::builder::BuildOptions`].
#[derive(Clone, Debug, Default)]
pub struct StargzOptions {
    /// Chunk size the layer must have (`--chunk-size`); by default the layer's own.
    pub chunk_size: Option<u32>,
    /// The layer's size in bytes (`--blob-data-size`), if known without the layer.
    pub data_size: Option<u64>,
    /// The layer file: when given, every chunk is checked against it before anything is
    /// written.
    pub layer_file: Option<PathBuf>,
}

impl StargzOptions {
    /// The layer file given as `blob`, or else the file named `blob_id` in `blob_dir`
    /// (which must then exist); `None` when neither is given.
    pub fn find_layer(
        blob: Option<&Path>,
        blob_dir: Option<&Path>,
        blob_id: Option<&str>,
    ) -> Result<Option<PathBuf>, StargzError> {
        match (blob, blob_dir, blob_id) {
            (Some(b), _, _) => Ok(Some(b.to_path_buf())),
            (None, Some(d), Some(id)) => {
                let f = d.join(id);
                if !f.is_file() {
                    return Err(StargzError::LayerMissing { layer: f });
                }
                Ok(Some(f))
            }
            _ => Ok(None),
        }
    }
}

/// A layer's tree and chunks, read from its TOC.
#[derive(Debug)]
pub struct StargzLayer {
    /// The layer's tree, every regular file's data as chunks of the layer's blob.
    pub tree: Tree,
    /// Chunk size: every chunk but a file's last is exactly this long.
    pub chunk_size: u32,
    /// Distinct chunks, in blob order.
    pub chunks: Vec<ChunkInfo>,
    /// Uncompressed bytes of file data.
    pub data_bytes: u64,
    /// For error messages: the entry each chunk came from, by index in the TOC and name.
    pub chunk_entries: Vec<(usize, String)>,
}

/// Checks `--blob-id` for an eStargz layer: its sha256 digest in hex, without the
/// `sha256:` prefix.
pub fn check_blob_id(id: &str) -> Result<(), StargzError> {
    if let Some(hex_part) = id.strip_prefix("sha256:") {
        return Err(StargzError::BlobIdPrefixed {
            id: id.to_string(),
            bare: hex_part.to_string(),
        });
    }
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StargzError::BlobIdNotDigest { id: id.to_string() });
    }
    Ok(())
}

/// A layer's bootstrap, with what went into it.
pub struct Described {
    /// The bootstrap's bytes.
    pub bootstrap: Vec<u8>,
    /// The merged tree it describes.
    pub tree: Tree,
    /// Its blob table: the parent's blobs, then the layer.
    pub blobs: Vec<crate::format::v6::tables::BlobEntry>,
    /// Chunk references to the layer that survive upper whiteouts.
    pub used_chunks: u64,
}

/// Lays out the bootstrap of `layer` applied over the parent (or nothing), with the
/// prefetch table `prefetch` asks for (the layer is its own blob: no policy reorders it).
/// Fails only if the merged tree holds what the bootstrap cannot (xattrs of a parent
/// image, say).
pub fn describe(
    layer: StargzLayer,
    parent_tree: Option<Entry>,
    parent_blobs: Vec<crate::format::v6::tables::BlobEntry>,
    blob_id: &str,
    prefetch: &crate::builder::prefetch::Prefetch,
) -> Result<Described, BuildError> {
    use crate::builder::{bootstrap, overlay};
    use crate::format::v6::tables::{blob_features, BlobEntry};
    use crate::format::{Compressor, Digester};

    let blob_index = parent_blobs.len() as u32;
    let StargzLayer {
        tree: upper,
        chunk_size,
        chunks: layer_chunks,
        ..
    } = layer;
    let tree = match parent_tree {
        Some(mut merged) => {
            overlay::apply(
                &mut merged,
                overlay::nest(upper, 1),
                overlay::WhiteoutSpec::Oci,
            );
            overlay::flatten(merged)
        }
        None => overlay::first_layer(upper, overlay::WhiteoutSpec::Oci),
    };

    let used = {
        // Chunks of this layer that survive the whiteouts of upper entries.
        let mut n = 0u64;
        for node in &tree.nodes {
            if let (FileData::Chunks(list), None) = (&node.data, node.hardlink_of) {
                n += list.iter().filter(|c| c.blob_index == blob_index).count() as u64;
            }
        }
        n
    };
    let uncompressed_size = layer_chunks
        .last()
        .map(|c| c.uncompressed_offset + (c.uncompressed_size as u64).div_ceil(0x1000) * 0x1000)
        .unwrap_or(0);
    let entry = BlobEntry {
        blob_id: blob_id.to_string(),
        chunk_size,
        chunk_count: layer_chunks.len() as u32,
        compressor: Compressor::Gzip,
        digester: Digester::Sha256,
        features: blob_features::ALIGNED | blob_features::CAP_TAR_TOC,
        compressed_size: layer_chunks
            .iter()
            .map(|c| c.compressed_offset + c.compressed_size as u64)
            .max()
            .unwrap_or(0),
        uncompressed_size,
        toc_size: 0,
        ci_compressor: Compressor::None,
        ci_offset: 0,
        // No chunk-info array exists (the chunk table in the bootstrap has everything),
        // but upstream's loader insists on this size; a stored size of 0 says "none".
        ci_compressed_size: 0,
        ci_uncompressed_size: 16 * layer_chunks.len() as u64,
        toc_digest: [0; 32],
    };
    let mut blobs = parent_blobs;
    blobs.push(entry);
    let (image, blobs) = crate::builder::stored_tree_bootstrap_with(
        &tree,
        blobs,
        bootstrap::v6::BootstrapOptions {
            chunk_size,
            compressor: Compressor::Gzip,
            digester: Digester::Sha256,
        },
        prefetch,
        crate::builder::FsVersion::V6,
        &[],
    )?;
    Ok(Described {
        bootstrap: image,
        tree,
        blobs,
        used_chunks: used,
    })
}

/// Builds a RAFS v6 bootstrap describing the eStargz layer whose TOC is at `toc`,
/// optionally over `opts.parent_bootstrap`. The layer itself is the image's data blob,
/// recorded under `opts.blob_id` (its sha256 digest). When `layer_file` is given, every
/// chunk is checked against it first. Only the bootstrap is written.
pub fn build(
    toc: &Path,
    bootstrap_path: &Path,
    sopts: &StargzOptions,
    opts: &crate::builder::BuildOptions,
) -> Result<crate::builder::BuildSummary, BuildError> {
    use crate::builder::BuildSummary;
    use crate::format::{Compressor, Digester};

    let blob_id = opts.blob_id.clone().ok_or_else(|| {
        BuildError::Options(
            "--blob-id is required with stargz_index: the layer's sha256 digest, without the \"sha256:\" prefix".into(),
        )
    })?;
    check_blob_id(&blob_id)?;
    if opts.compressor != Compressor::Gzip {
        return Err(BuildError::Options(format!(
            "an eStargz layer is gzip-compressed; --compressor {} cannot describe it",
            opts.compressor.name()
        )));
    }
    if opts.chunk_dict.is_some() {
        return Err(BuildError::Options(
            "a chunk dictionary cannot be used with an eStargz layer: the layer's data is not rewritten".into(),
        ));
    }
    if opts.whiteout_spec != crate::builder::overlay::WhiteoutSpec::Oci {
        return Err(BuildError::Options(
            "eStargz layers carry OCI whiteouts; the whiteout spec must be oci".into(),
        ));
    }
    if opts.digester != Digester::Sha256 {
        return Err(BuildError::Options(format!(
            "eStargz chunk digests are sha256 (the TOC's chunkDigest); --digester {} cannot describe them",
            opts.digester.name()
        )));
    }
    let parent = crate::builder::load_parent(opts, None)?;
    let (parent_tree, parent_blobs, parent_chunk_size) = match parent {
        Some((t, b, c, _)) => (Some(t), b, Some(c)),
        None => (None, Vec::new(), None),
    };
    if parent_blobs.iter().any(|b| b.blob_id == blob_id) {
        return Err(BuildError::Options(format!(
            "the parent image already references blob {blob_id}: this layer is already in it"
        )));
    }
    let want = match (parent_chunk_size, sopts.chunk_size) {
        (Some(p), Some(c)) if p != c => {
            return Err(BuildError::Options(format!(
                "--chunk-size 0x{c:x} differs from the parent image's 0x{p:x}"
            )))
        }
        (p, c) => p.or(c),
    };
    let layer_len = match &sopts.layer_file {
        Some(f) => Some(
            std::fs::metadata(f)
                .map_err(|e| BuildError::io(f, "cannot stat the eStargz layer", e))?
                .len(),
        ),
        None => None,
    };
    if let (Some(len), Some(said)) = (layer_len, sopts.data_size) {
        if len != said {
            return Err(BuildError::Options(format!(
                "--blob-data-size 0x{said:x} differs from the layer's size 0x{len:x}"
            )));
        }
    }
    let blob_index = parent_blobs.len() as u32;
    let layer = load(toc, blob_index, want, layer_len.or(sopts.data_size))?;
    let layer_size = match &sopts.layer_file {
        Some(f) => Some(check_layer(f, &layer)?),
        None => None,
    };

    let (data_bytes, unique_chunks, chunk_size) = (
        layer.data_bytes,
        layer.chunks.len() as u64,
        layer.chunk_size,
    );
    let described = describe(layer, parent_tree, parent_blobs, &blob_id, &opts.prefetch)?;
    let image = &described.bootstrap;
    let bootstrap =
        crate::builder::output::PendingFile::write_whole(bootstrap_path, image, "bootstrap")?;
    Ok(BuildSummary {
        bootstrap,
        blob_path: sopts.layer_file.clone(),
        blob_id: Some(blob_id),
        blob_size: layer_size.unwrap_or(0),
        bootstrap_size: image.len() as u64,
        entries: described.tree.nodes.len() as u64,
        inodes: described.tree.inode_count() as u64,
        total_chunks: described.used_chunks,
        unique_chunks,
        data_bytes,
        dict_chunks: 0,
        dict_bytes: 0,
        blobs: described.blobs.iter().map(|b| b.blob_id.clone()).collect(),
        compressor: Compressor::Gzip,
        digester: Digester::Sha256,
        chunk_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::tree::Kind;
    use base64::Engine;

    /// A TOC of `entries` (JSON objects), version 1.
    fn toc(entries: &[serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "version": 1, "entries": entries })).unwrap()
    }

    /// A `reg` entry of one chunk at layer offset `offset`.
    fn reg(name: &str, size: u64, offset: u64, byte: u8) -> serde_json::Value {
        let digest = format!("sha256:{}", hex::encode([byte; 32]));
        serde_json::json!({
            "name": name, "type": "reg", "size": size, "offset": offset,
            "digest": digest, "chunkDigest": digest
        })
    }

    /// Parses and describes `toc` as a first layer; the bootstrap must read back whole.
    fn described(toc: &[u8]) -> Described {
        let layer = parse(Path::new("t.json"), toc, 0, None, None).unwrap();
        let d = describe(
            layer,
            None,
            Vec::new(),
            &"0".repeat(64),
            &Default::default(),
        )
        .unwrap();
        let image = crate::reader::Image::from_bytes(
            Path::new("t.boot"),
            d.bootstrap.clone(),
            crate::storage::blobs::BlobSource::None,
        )
        .unwrap();
        crate::ops::check::check(&image, false).unwrap();
        d
    }

    /// `--prefetch-policy fs` with stargz_index: the bootstrap carries the table (the
    /// layer is its own blob, so nothing is reordered); `blob` writes none.
    #[test]
    fn a_toc_layer_takes_a_prefetch_table() {
        use crate::builder::prefetch::{Prefetch, PrefetchPolicy};
        let toc = toc(&[
            serde_json::json!({"name": "d/", "type": "dir", "mode": 0o755}),
            reg("d/f", 10, 0, 1),
            reg("z", 10, 100, 2),
        ]);
        for (policy, want) in [
            (PrefetchPolicy::Fs, vec![&b"/z"[..], b"/d"]),
            (PrefetchPolicy::Blob, vec![]),
        ] {
            let layer = parse(Path::new("t.json"), &toc, 0, None, None).unwrap();
            let prefetch = Prefetch {
                policy,
                patterns: ["/z", "/missing", "/d"].iter().map(Into::into).collect(),
            };
            let d = describe(layer, None, Vec::new(), &"0".repeat(64), &prefetch).unwrap();
            let image = crate::reader::Image::from_bytes(
                Path::new("t.boot"),
                d.bootstrap,
                crate::storage::blobs::BlobSource::None,
            )
            .unwrap();
            let paths: Vec<Vec<u8>> = image
                .prefetch_paths()
                .unwrap()
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            assert_eq!(paths, want, "{policy:?}");
        }
    }

    fn node<'t>(tree: &'t Tree, path: &str) -> &'t crate::builder::tree::Node {
        let id = (0..tree.nodes.len())
            .find(|&id| tree.image_path(id) == path.as_bytes())
            .unwrap_or_else(|| panic!("{path} is not in the tree"));
        &tree.nodes[id]
    }

    fn chunk_offsets(n: &crate::builder::tree::Node) -> Vec<u64> {
        match &n.data {
            FileData::Chunks(list) => list.iter().map(|c| c.compressed_offset).collect(),
            FileData::Source | FileData::Chunked(_) => {
                panic!("{}: no stored chunks", n.source.display())
            }
        }
    }

    /// Found by fuzzing `stargz_toc` (tests/fuzz-regressions/stargz_toc/repeated-paths-*):
    /// a TOC that lists paths again. As tar extraction does, the later entry wins: a file
    /// with its own chunks, a directory with new metadata and its children kept, a type
    /// change with what was below gone; a hard link made before its target was replaced
    /// keeps the old file. A hard link used to keep no data at all (a debug build failed
    /// an assertion, a release build wrote a file without chunks).
    #[test]
    fn repeated_paths_replace_earlier_entries_as_tar_would() {
        let d = described(&toc(&[
            reg("./a", 5, 100, 1),
            serde_json::json!({"name": "./link", "type": "hardlink", "linkName": "./a"}),
            reg("./a", 7, 200, 2),
            serde_json::json!({"name": "./d/", "type": "dir", "mode": 0o700}),
            reg("./d/x", 3, 300, 3),
            serde_json::json!({"name": "./d/", "type": "dir", "mode": 0o750}),
            serde_json::json!({"name": "./t/", "type": "dir"}),
            serde_json::json!({"name": "./t/y", "type": "fifo"}),
            reg("./t", 0, 0, 4),
        ]));
        let tree = &d.tree;
        let (a, link) = (node(tree, "/a"), node(tree, "/link"));
        assert_eq!((a.size, chunk_offsets(a)), (7, vec![200]));
        assert_eq!((link.size, chunk_offsets(link)), (5, vec![100]));
        assert_eq!((a.hardlink_of, a.nlink, link.hardlink_of), (None, 1, None));
        let dir = node(tree, "/d");
        assert_eq!(dir.mode, libc::S_IFDIR | 0o750);
        assert_eq!(chunk_offsets(node(tree, "/d/x")), [300]);
        assert_eq!(node(tree, "/t").kind, Kind::File);
        assert_eq!(tree.nodes.len(), 6, "{:#?}", tree.nodes);
        assert_eq!(d.used_chunks, 3);
    }

    /// `depth` components, all `a` but the last.
    fn deep_name(depth: usize, last: &str) -> String {
        let mut name = "a/".repeat(depth - 1);
        name.push_str(last);
        name
    }

    /// A name of 100,000 components overflowed the stack in the recursive walks and drop
    /// of the nested tree; names are now refused past the depth the reader accepts.
    #[test]
    fn names_deeper_than_the_reader_allows_are_refused() {
        for depth in [toc::MAX_COMPONENTS + 1, 100_000] {
            let text = toc(&[
                serde_json::json!({"name": "./", "type": "dir"}),
                serde_json::json!({"name": deep_name(depth, "f"), "type": "fifo"}),
            ]);
            let Err(err) = parse(Path::new("t.json"), &text, 0, None, None) else {
                panic!("a name of {depth} components is accepted");
            };
            assert!(
                matches!(
                    &err,
                    StargzError::Entry {
                        index: 1,
                        problem: EntryError::Name(NameError::TooDeep { found, max: 4095 }),
                        ..
                    } if *found == depth
                ),
                "{err:?}"
            );
            let shown = format!("{:#}", anyhow::Error::from(err));
            assert!(shown.contains("t.json: entry 1 (\"a/a/"), "{shown}");
            assert!(shown.len() < 400, "the name is shortened: {shown}");
            assert!(
                shown.contains(&format!("{depth} path components")),
                "{shown}"
            );
        }
    }

    /// As deep as the reader allows still builds and reads back, on its own (with a
    /// whiteout, which takes the nested path through the overlay) and over a parent read
    /// back from its bootstrap. The overlay's walks and the parent's loading recursed per
    /// level and overflowed the test thread's stack here.
    #[test]
    fn names_as_deep_as_the_reader_allows_build() {
        let depth = toc::MAX_COMPONENTS;
        let first = described(&toc(&[
            serde_json::json!({"name": deep_name(depth, "d"), "type": "dir"}),
            serde_json::json!({"name": deep_name(depth, "f"), "type": "fifo"}),
            serde_json::json!({"name": deep_name(depth, ".wh.gone"), "type": "reg"}),
        ]));
        // The root, depth - 1 directories `a`, then `d` and `f`.
        assert_eq!(first.tree.nodes.len(), depth + 2);
        let upper = parse(
            Path::new("t.json"),
            &toc(&[
                serde_json::json!({"name": deep_name(depth, ".wh.f"), "type": "reg"}),
                serde_json::json!({"name": deep_name(depth, "g"), "type": "fifo"}),
            ]),
            1,
            None,
            None,
        )
        .unwrap();
        let parent = crate::reader::Image::from_bytes(
            Path::new("first.boot"),
            first.bootstrap,
            crate::storage::blobs::BlobSource::None,
        )
        .unwrap();
        let parent_tree = crate::builder::parent::load(&parent, 0).unwrap();
        let second = describe(
            upper,
            Some(parent_tree),
            first.blobs,
            &"1".repeat(64),
            &Default::default(),
        )
        .unwrap();
        let deepest = second.tree.nodes.last().unwrap();
        assert_eq!(
            (deepest.name.as_slice(), &deepest.kind),
            (&b"g"[..], &Kind::Fifo)
        );
        assert_eq!(second.tree.nodes.len(), depth + 2);
        let image = crate::reader::Image::from_bytes(
            Path::new("t.boot"),
            second.bootstrap,
            crate::storage::blobs::BlobSource::None,
        )
        .unwrap();
        crate::ops::check::check(&image, false).unwrap();
    }

    /// An xattr name of 261 to 279 bytes passed the old check (255 + 24 bytes whole) and
    /// was stored with its suffix length cut to a byte, and more xattrs than one inode
    /// holds had their count cut to 16 bits: corrupt bootstraps. Both are now an error
    /// naming the entry (and the xattr).
    #[test]
    fn xattrs_that_do_not_fit_are_refused_naming_the_entry() {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let long_name = format!("user.{}", "n".repeat(256));
        let longest_name = format!("trusted.{}", "n".repeat(271));
        let big: serde_json::Map<String, serde_json::Value> = (0..4)
            .map(|i| (format!("user.k{i}"), b64(&[0u8; 65535]).into()))
            .collect();
        let cases = [
            (
                serde_json::json!({ long_name.clone(): b64(b"v") }),
                format!("xattr \"{long_name}\": its name is 256 bytes after the \"user.\" prefix; RAFS v6 stores at most 255"),
            ),
            (
                serde_json::json!({ longest_name.clone(): b64(b"v") }),
                format!("xattr \"{longest_name}\": its name is 271 bytes after the \"trusted.\" prefix"),
            ),
            (
                serde_json::Value::Object(big),
                "4 xattrs take 262188 bytes inline; one RAFS v6 inode holds at most 262148"
                    .to_string(),
            ),
        ];
        for (xattrs, want) in cases {
            let text = toc(&[
                serde_json::json!({"name": "./", "type": "dir"}),
                serde_json::json!({"name": "./f", "type": "fifo", "xattrs": xattrs}),
            ]);
            let Err(err) = parse(Path::new("t.json"), &text, 0, None, None) else {
                panic!("accepted: {want}");
            };
            let shown = format!("{:#}", anyhow::Error::from(err));
            assert!(
                shown.starts_with("eStargz TOC t.json: entry 1 (\"./f\"): ")
                    && shown.contains(&want),
                "{shown}"
            );
        }
    }

    #[test]
    fn blob_ids() {
        let hex = "a".repeat(64);
        assert!(check_blob_id(&hex).is_ok());
        let e = check_blob_id(&format!("sha256:{hex}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("--blob-id {hex}")), "{e}");
        assert!(check_blob_id("abc").is_err());
    }
}
