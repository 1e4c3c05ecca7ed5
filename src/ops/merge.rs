//! `merge`: combines the bootstraps of separately built layers (bottom first) into one,
//! applying each upper layer's OCI whiteouts as upstream's merge does. No blob is read or
//! written: the result references every layer's blobs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::builder::output::PendingFile;
use crate::builder::overlay::{self, Entry, WhiteoutSpec};
use crate::builder::tree::FileData;
use crate::builder::{bootstrap, parent, BuildError};
use crate::format::v6::tables::BlobEntry;
use crate::reader::Image;
use crate::storage::blobs::BlobSource;

/// What a merge produced.
#[derive(Clone, Debug)]
pub struct MergeSummary {
    /// The merged bootstrap.
    pub bootstrap: PathBuf,
    /// Blob ids it references, in table order.
    pub blobs: Vec<String>,
    /// Entries in the merged tree.
    pub entries: u64,
}

fn remap(e: &mut Entry, map: &[u32]) {
    if let FileData::Chunks(list) = &mut e.node.data {
        for c in list {
            c.blob_index = map[c.blob_index as usize];
        }
    }
    for child in e.children.values_mut() {
        remap(child, map);
    }
}

/// Merges `layers` (bottom first) into `out`.
pub fn merge(layers: &[PathBuf], out: &Path) -> Result<MergeSummary, BuildError> {
    if layers.is_empty() {
        return Err(BuildError::Options(
            "merge needs at least one bootstrap".into(),
        ));
    }
    let mut blobs: Vec<BlobEntry> = Vec::new();
    let mut by_id: HashMap<String, u32> = HashMap::new();
    let mut merged: Option<Entry> = None;
    let mut settings = None;
    for (i, path) in layers.iter().enumerate() {
        let image =
            Image::open(path, BlobSource::None).map_err(|source| BuildError::ParentRead {
                path: path.clone(),
                source,
            })?;
        let sb = image.super_block();
        let these = (sb.chunk_size, sb.digester, sb.compressor);
        match settings {
            None => settings = Some(these),
            Some((cs, dg, _)) if cs != these.0 || dg != these.1 => {
                return Err(BuildError::Parent {
                    path: path.clone(),
                    what: format!(
                        "chunk size 0x{:x} and digester {} differ from the first layer's 0x{cs:x} and {}",
                        these.0,
                        these.1.name(),
                        dg.name()
                    ),
                })
            }
            Some(_) => settings = Some(these),
        }
        let map: Vec<u32> = image
            .blobs()
            .iter()
            .map(|b| {
                *by_id.entry(b.blob_id.clone()).or_insert_with(|| {
                    blobs.push(b.clone());
                    blobs.len() as u32 - 1
                })
            })
            .collect();
        if blobs.len() > 254 {
            return Err(BuildError::Parent {
                path: path.clone(),
                what: "the merged image would reference more than 254 blobs".into(),
            });
        }
        let mut entry = parent::load(&image, i as u32)?;
        remap(&mut entry, &map);
        match &mut merged {
            None => {
                let mut root = overlay::empty_root(&entry.node);
                overlay::apply(&mut root, entry, WhiteoutSpec::Oci);
                merged = Some(root);
            }
            Some(m) => overlay::apply(m, entry, WhiteoutSpec::Oci),
        }
    }
    let tree = overlay::flatten(merged.expect("at least one layer"));
    let (chunk_size, digester, compressor) = settings.expect("at least one layer");
    let (bytes, blobs) = crate::builder::stored_tree_bootstrap(
        &tree,
        blobs,
        bootstrap::v6::BootstrapOptions {
            chunk_size,
            compressor,
            digester,
        },
    )?;
    let bootstrap = PendingFile::write_whole(out, &bytes, "bootstrap")?;
    Ok(MergeSummary {
        bootstrap,
        blobs: blobs.iter().map(|b| b.blob_id.clone()).collect(),
        entries: tree.nodes.len() as u64,
    })
}
