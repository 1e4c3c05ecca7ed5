//! Verifying an image against what it was built from: a stack of layer directories
//! (bottom first) over an optional parent image, compared entry by entry and byte by
//! byte by the `nydus-verify` crate, which shares no code with the builder.
//!
//! The image is read through a FUSE mount (what the kernel shows a user), directly
//! through the library reader, or through the kernel's own EROFS over loop devices
//! (`crate::kernel`; uncompressed v6 images laid out at their block addresses, and v5
//! images of any compression through a temporary `export --block` image).

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::builder::overlay::WhiteoutSpec;
use crate::mount::{BackgroundMount, ImageTree};
use crate::reader::{Image, ReadError};
use crate::storage::blobs::BlobSource;

/// What an image is compared with.
#[derive(Clone, Debug)]
pub struct Stack {
    /// A parent image the layers were built over, read through the library.
    pub parent: Option<PathBuf>,
    /// Layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// How whiteouts are spelled in the layers.
    pub whiteouts: WhiteoutSpec,
    /// Compare modification times to the second (an eStargz TOC holds no more).
    pub mtime_seconds: bool,
}

/// How the image is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Through a FUSE mount on a temporary mount point.
    Fuse,
    /// Through the library reader.
    Library,
    /// Through a kernel EROFS mount with loop devices over the bootstrap and blobs (a
    /// RAFS v5 image: over its block export, in the temporary directory).
    Kernel,
}

/// Why a comparison could not be made (differences are not errors: they are the report).
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The image (or its parent) cannot be opened.
    #[error("cannot open {}", path.display())]
    Open {
        /// The bootstrap.
        path: PathBuf,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// Blobs the image references are missing or unreadable.
    #[error("blobs of {} are not available: {}", path.display(), list.join("; "))]
    MissingBlobs {
        /// The bootstrap.
        path: PathBuf,
        /// Each blob with the reason.
        list: Vec<String>,
    },
    /// FUSE cannot be mounted here (no /dev/fuse, no permission, ...).
    #[error("cannot mount FUSE")]
    FuseUnavailable(#[source] std::io::Error),
    /// The temporary mount point could not be made or removed.
    #[error("verification mount point")]
    MountPoint(#[source] std::io::Error),
    /// The verification mount could not be unmounted.
    #[error("cannot unmount the verification mount")]
    Unmount(#[source] std::io::Error),
    /// The kernel cannot read the image, or its mount failed.
    #[error("kernel EROFS mount of {}", path.display())]
    Kernel {
        /// The bootstrap.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::kernel::KernelError,
    },
    /// A RAFS v5 image could not be exported as a block image for the kernel.
    #[error("block export of {} for the kernel", path.display())]
    Export {
        /// The bootstrap.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<crate::ops::export::ExportError>,
    },
    /// The comparison itself failed (a source entry unreadable, ...).
    #[error("could not compare")]
    Compare(#[source] nydus_verify::Error),
}

impl From<WhiteoutSpec> for nydus_verify::Whiteouts {
    fn from(spec: WhiteoutSpec) -> Self {
        match spec {
            WhiteoutSpec::Oci => nydus_verify::Whiteouts::Oci,
            WhiteoutSpec::Overlayfs => nydus_verify::Whiteouts::Overlayfs,
            WhiteoutSpec::None => nydus_verify::Whiteouts::None,
        }
    }
}

/// Compares the image at `bootstrap` (blobs from `blobs`) with `stack`, reading the image
/// `via` FUSE or the library. The parent image, if any, takes its blobs from `blobs` too.
/// `bootstrap` may be a data blob with inline metadata ([`Image::open_any`]).
pub fn verify(
    stack: &Stack,
    bootstrap: &Path,
    blobs: BlobSource,
    via: Via,
) -> Result<nydus_verify::Report, VerifyError> {
    let open = |path: &Path, blobs: BlobSource| {
        Image::open_any(path, blobs).map_err(|source| VerifyError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    let image = open(bootstrap, blobs.clone())?;
    let missing = image.missing_blobs();
    if !missing.is_empty() {
        return Err(VerifyError::MissingBlobs {
            path: bootstrap.to_path_buf(),
            list: missing
                .iter()
                .map(|(id, why)| format!("{id} ({why})"))
                .collect(),
        });
    }
    let parent = stack
        .parent
        .as_deref()
        .map(|p| open(p, blobs.clone()))
        .transpose()?;
    let parent_tree = parent.as_ref().map(ImageTree);
    let dirs: Vec<nydus_verify::FsTree> =
        stack.layers.iter().map(nydus_verify::FsTree::new).collect();
    let mut layers: Vec<&dyn nydus_verify::Tree> = Vec::new();
    if let Some(t) = &parent_tree {
        layers.push(t);
    }
    layers.extend(dirs.iter().map(|d| d as &dyn nydus_verify::Tree));
    let source = nydus_verify::OverlayTree::new(layers, stack.whiteouts.into());
    let opts = nydus_verify::Options {
        mtime_seconds: stack.mtime_seconds,
    };
    let report = match via {
        Via::Library => nydus_verify::compare_with(&source, &ImageTree(&image), opts),
        Via::Fuse => {
            let dir = tempfile::Builder::new()
                .prefix("nydus-verify-")
                .tempdir()
                .map_err(VerifyError::MountPoint)?;
            let mount = BackgroundMount::start(image, dir.path(), nydus_fuse::default_threads())
                .map_err(VerifyError::FuseUnavailable)?;
            let report =
                nydus_verify::compare_with(&source, &nydus_verify::FsTree::new(dir.path()), opts);
            mount.stop().map_err(VerifyError::Unmount)?;
            report
        }
        Via::Kernel => {
            let kernel = |source| VerifyError::Kernel {
                path: bootstrap.to_path_buf(),
                source,
            };
            let dir = tempfile::Builder::new()
                .prefix("nydus-verify-kernel-")
                .tempdir()
                .map_err(VerifyError::MountPoint)?;
            let mnt = dir.path().join("mnt");
            std::fs::create_dir(&mnt).map_err(VerifyError::MountPoint)?;
            let mount = if image.fs_version() == 5 {
                // The kernel has no RAFS v5 driver: it reads the image's block export,
                // written beside the mount point and removed with it.
                drop(image);
                let block = dir.path().join("block.img");
                crate::ops::export::export_block(
                    bootstrap,
                    blobs,
                    &block,
                    &crate::ops::export::ExportOptions::default(),
                )
                .map_err(|source| VerifyError::Export {
                    path: bootstrap.to_path_buf(),
                    source: Box::new(source),
                })?;
                crate::kernel::ErofsMount::mount(&block, &[], &mnt).map_err(kernel)?
            } else {
                let blob_paths =
                    crate::kernel::kernel_blob_paths(&image, &blobs).map_err(kernel)?;
                crate::kernel::ErofsMount::mount(bootstrap, &blob_paths, &mnt).map_err(kernel)?
            };
            let report =
                nydus_verify::compare_with(&source, &nydus_verify::FsTree::new(&mnt), opts);
            // A failed comparison still unmounts (and detaches) first.
            mount.unmount().map_err(kernel)?;
            report
        }
    };
    report.map_err(VerifyError::Compare)
}
