//! The kernel's own EROFS driver as a reader of our images: a RAFS v6 bootstrap is an
//! EROFS image whose chunk indexes address blocks of extra devices, one per blob, in
//! blob table order. The kernel here refuses file-backed EROFS, so the bootstrap and each
//! blob go on a read-only loop device and the mount names the blobs' devices with one
//! `device=` option each (device id n in a chunk index is the n-th option).
//!
//! The kernel reads a chunk as whole blocks at its block address on its device, so only
//! images whose blobs are uncompressed and laid out at those addresses (what
//! `create --compressor none` writes, see `builder::blob`) can be read this way:
//! [`kernel_blob_paths`] says which blob files to use or why the image cannot be.
//!
//! Loop devices and mounts are machine-wide resources: [`LoopDevice`] and [`ErofsMount`]
//! release them when dropped, on every error path and on unwinding, and
//! [`ErofsMount::unmount`] releases them with errors reported.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::format::Compressor;
use crate::reader::Image;
use crate::storage::blobs::BlobSource;

/// Why the kernel cannot read an image, or a loop device or mount failed.
#[derive(Debug, Error)]
pub enum KernelError {
    /// A blob is compressed: the kernel reads chunks as stored.
    #[error(
        "blob {blob_id} is compressed ({compressor:?}): the kernel's EROFS reads only \
         uncompressed chunks at their block addresses; build with --compressor none, or \
         make one block image with `export --block`"
    )]
    Compressed {
        /// The blob.
        blob_id: String,
        /// Its compressor.
        compressor: Compressor,
    },
    /// A chunk is not stored at the block address its chunk index names.
    #[error(
        "blob {blob_id}: chunk {index} is stored at offset 0x{stored_at:x}, not at its \
         block address (offset 0x{block_at:x}) as the kernel reads it; rebuild the image \
         with this nydus-image (--compressor none), or make a block image with \
         `export --block`"
    )]
    NotAligned {
        /// The blob.
        blob_id: String,
        /// The chunk's index in the blob.
        index: u32,
        /// Where its bytes are (compressed offset).
        stored_at: u64,
        /// Where the kernel reads them (uncompressed offset).
        block_at: u64,
    },
    /// The bootstrap is inside its blob: the kernel needs it as a device of its own.
    #[error(
        "{}: the bootstrap is inside a data blob; the kernel mounts a bootstrap file \
         (build without --blob-inline-meta)",
        path.display()
    )]
    Inline {
        /// The blob holding the bootstrap.
        path: PathBuf,
    },
    /// A blob is not a local file (a backend serves it, or none was given).
    #[error("blob {blob_id} is not a local file: the kernel reads blobs from loop devices")]
    NotLocal {
        /// The blob.
        blob_id: String,
    },
    /// `losetup` could not be run.
    #[error("cannot run losetup for {}", path.display())]
    LosetupSpawn {
        /// The file to attach, or the device to detach.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `losetup` failed.
    #[error("losetup {action} {}: {stderr}", path.display())]
    Losetup {
        /// `--find --show --read-only` or `--detach`.
        action: &'static str,
        /// The file or device.
        path: PathBuf,
        /// What losetup said.
        stderr: String,
    },
    /// The kernel refused the mount.
    #[error(
        "mount -t erofs -o ro,{options} {} {}: the kernel refused it (see dmesg)",
        bootstrap.display(),
        mountpoint.display()
    )]
    Mount {
        /// The bootstrap (on the loop device given first).
        bootstrap: PathBuf,
        /// Mount point.
        mountpoint: PathBuf,
        /// The `device=` options.
        options: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The mount could not be unmounted.
    #[error("cannot unmount {}", mountpoint.display())]
    Unmount {
        /// Mount point.
        mountpoint: PathBuf,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// A path holds a NUL byte (cannot be passed to the kernel).
    #[error("{}: a path with a NUL byte", path.display())]
    NulInPath {
        /// The path.
        path: PathBuf,
    },
}

/// The blob files to give the kernel as extra devices, in blob table (device) order, or
/// why the image cannot be read by the kernel: an image inside its blob, a compressed
/// blob, a chunk not at its block address, a blob that is not a local file.
pub fn kernel_blob_paths(image: &Image, blobs: &BlobSource) -> Result<Vec<PathBuf>, KernelError> {
    if image.inline().is_some() {
        return Err(KernelError::Inline {
            path: image.path().to_path_buf(),
        });
    }
    let entries = image.blobs();
    if let Some(b) = entries.iter().find(|b| b.compressor != Compressor::None) {
        return Err(KernelError::Compressed {
            blob_id: b.blob_id.clone(),
            compressor: b.compressor,
        });
    }
    for c in image.chunk_table() {
        if c.compressed || c.compressed_offset != c.uncompressed_offset {
            let blob_id = entries
                .get(c.blob_index as usize)
                .map_or_else(|| format!("#{}", c.blob_index), |b| b.blob_id.clone());
            return Err(KernelError::NotAligned {
                blob_id,
                index: c.index,
                stored_at: c.compressed_offset,
                block_at: c.uncompressed_offset,
            });
        }
    }
    let ids: Vec<String> = entries.iter().map(|b| b.blob_id.clone()).collect();
    blobs
        .resolve(&ids)
        .into_iter()
        .zip(ids)
        .map(|(path, blob_id)| path.ok_or(KernelError::NotLocal { blob_id }))
        .collect()
}

/// A read-only loop device over a file, detached when dropped.
#[derive(Debug)]
pub struct LoopDevice {
    device: PathBuf,
    attached: bool,
}

impl LoopDevice {
    /// Attaches `file` to a free loop device, read-only.
    pub fn attach(file: &Path) -> Result<Self, KernelError> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(file)
            .output()
            .map_err(|source| KernelError::LosetupSpawn {
                path: file.to_path_buf(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let device = stdout.lines().find(|l| l.starts_with("/dev/"));
        match (out.status.success(), device) {
            (true, Some(device)) => {
                log::debug!("{} on {device}", file.display());
                Ok(LoopDevice {
                    device: PathBuf::from(device.trim()),
                    attached: true,
                })
            }
            _ => Err(KernelError::Losetup {
                action: "--find --show --read-only",
                path: file.to_path_buf(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
        }
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.device
    }

    /// Detaches the device, reporting a failure.
    pub fn detach(mut self) -> Result<(), KernelError> {
        self.attached = false;
        detach(&self.device)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.attached {
            if let Err(e) = detach(&self.device) {
                log::warn!("{}", crate::error::Chain(&e));
            }
        }
    }
}

fn detach(device: &Path) -> Result<(), KernelError> {
    let out = Command::new("losetup")
        .arg("--detach")
        .arg(device)
        .output()
        .map_err(|source| KernelError::LosetupSpawn {
            path: device.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KernelError::Losetup {
            action: "--detach",
            path: device.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn c_path(path: &Path) -> Result<CString, KernelError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| KernelError::NulInPath {
        path: path.to_path_buf(),
    })
}

/// A read-only kernel EROFS mount of a bootstrap with its blobs as extra devices,
/// unmounted and its loop devices detached when dropped.
#[derive(Debug)]
pub struct ErofsMount {
    mountpoint: PathBuf,
    mounted: bool,
    /// The bootstrap's device, then one per blob. Dropped after the unmount in `drop`.
    devices: Vec<LoopDevice>,
}

impl ErofsMount {
    /// Attaches `bootstrap` and `blobs` (device order) to loop devices and mounts them
    /// read-only at `mountpoint` (an existing directory). On failure nothing stays
    /// attached.
    pub fn mount(
        bootstrap: &Path,
        blobs: &[PathBuf],
        mountpoint: &Path,
    ) -> Result<Self, KernelError> {
        let target = c_path(mountpoint)?;
        let mut devices = vec![LoopDevice::attach(bootstrap)?];
        for blob in blobs {
            devices.push(LoopDevice::attach(blob)?);
        }
        let options = devices[1..]
            .iter()
            .map(|d| format!("device={}", d.path().display()))
            .collect::<Vec<_>>()
            .join(",");
        let source = c_path(devices[0].path())?;
        let data = CString::new(options.as_str()).expect("device paths were checked");
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                c"erofs".as_ptr(),
                libc::MS_RDONLY,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(KernelError::Mount {
                bootstrap: bootstrap.to_path_buf(),
                mountpoint: mountpoint.to_path_buf(),
                options,
                source: std::io::Error::last_os_error(),
            });
        }
        log::debug!("EROFS mounted at {}", mountpoint.display());
        Ok(ErofsMount {
            mountpoint: mountpoint.to_path_buf(),
            mounted: true,
            devices,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and detaches the loop devices, reporting the first failure (the devices
    /// are detached whatever happens to the unmount).
    pub fn unmount(mut self) -> Result<(), KernelError> {
        self.mounted = false;
        let unmounted = unmount(&self.mountpoint);
        let mut detached = Ok(());
        for d in std::mem::take(&mut self.devices) {
            let r = d.detach();
            if detached.is_ok() {
                detached = r;
            }
        }
        unmounted.and(detached)
    }
}

impl Drop for ErofsMount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount(&self.mountpoint) {
                log::warn!("{}: detaching it lazily", crate::error::Chain(&e));
                if let Ok(target) = c_path(&self.mountpoint) {
                    // SAFETY: a NUL-terminated path that outlives the call.
                    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        // The devices drop (and detach) after this.
    }
}

/// Unmounts `mountpoint`, retrying briefly while it is busy (a comparison that just
/// closed its last file).
fn unmount(mountpoint: &Path) -> Result<(), KernelError> {
    let target = c_path(mountpoint)?;
    let mut tries = 0;
    loop {
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        tries += 1;
        if err.raw_os_error() != Some(libc::EBUSY) || tries >= 20 {
            return Err(KernelError::Unmount {
                mountpoint: mountpoint.to_path_buf(),
                source: err,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
