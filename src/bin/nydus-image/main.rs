//! The `nydus-image` command line: a thin shell over the `nydus_image` library.
//!
//! Each subcommand has its own module: its flags, the validated options value they
//! become before any work starts, one call into the library, and the exit code.

mod args;
mod check;
mod compact;
mod create;
mod export;
mod inspect;
mod merge;
mod mount;
mod stat;
mod unpack;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::LogLevel;

#[derive(Parser)]
#[command(
    name = "nydus-image",
    version,
    about = "Build, check and read RAFS (Nydus) filesystem images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a RAFS filesystem from a directory, a tar layer (tar-rafs, targz-rafs,
    /// estargz-rafs) or an eStargz layer's TOC.
    Create(Box<create::CreateArgs>),
    /// Validate a RAFS bootstrap and list its blobs and features.
    Check(check::CheckArgs),
    /// Mount an image read-only through FUSE.
    Mount(mount::MountArgs),
    /// Unmount a mounted image.
    Umount(mount::UmountArgs),
    /// Merge the bootstraps of separately built layers (bottom first) into one, applying
    /// OCI whiteouts kept in upper layers (build them with --whiteout-spec none).
    Merge(merge::MergeArgs),
    /// Compare an image with its source directory, entry by entry and byte by byte.
    /// Exit status: 0 identical, 1 differences found, 2 could not compare.
    Verify(verify::VerifyArgs),
    /// Write an image as one raw EROFS block image (metadata and all file data) that
    /// the kernel mounts from a single device.
    Export(export::ExportArgs),
    /// Rewrite an image's unused, sparsely used and small blobs into fewer, fuller ones.
    Compact(Box<compact::CompactArgs>),
    /// Write an image's tree as a tar (a file, or a FIFO written in order).
    Unpack(unpack::UnpackArgs),
    /// Inspect an image's metadata: one request (-R) or an interactive session.
    Inspect(inspect::InspectArgs),
    /// Chunk and file statistics of images, and what chunk deduplication would save.
    Stat(stat::StatArgs),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`nydus-image check -v | head`), as Unix tools do.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let (level, log_file) = match &cli.command {
        Command::Create(a) => (a.log_level, None),
        Command::Check(a) => (a.log_level, None),
        Command::Mount(a) => (a.log_level, a.log_file.as_deref()),
        Command::Umount(_) => (LogLevel::Info, None),
        Command::Merge(a) => (a.log_level, None),
        Command::Compact(a) => (a.log_level, None),
        Command::Verify(a) => (a.log_level, None),
        Command::Export(a) => (a.log_level, None),
        Command::Unpack(a) => (a.log_level, None),
        Command::Inspect(a) => (a.log_level, None),
        Command::Stat(a) => (a.log_level, None),
    };
    if let Err(e) = args::init_logger(level, log_file) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    // `verify` has its own exit codes: 1 for differences, 2 for a failure to compare.
    let failure = match &cli.command {
        Command::Verify(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    };
    let result = match cli.command {
        Command::Create(a) => a.options().and_then(create::run),
        Command::Check(a) => a.options().and_then(check::run),
        Command::Mount(a) => a.options().and_then(mount::run),
        Command::Umount(a) => mount::unmount(&a.mountpoint),
        Command::Merge(a) => a.options().and_then(merge::run),
        Command::Verify(a) => a.options().and_then(verify::run),
        Command::Compact(a) => a.options().and_then(compact::run),
        Command::Export(a) => a.options().and_then(export::run),
        Command::Unpack(a) => a.options().and_then(unpack::run),
        Command::Inspect(a) => a.options().and_then(inspect::run),
        Command::Stat(a) => a.options().and_then(stat::run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            failure
        }
    }
}
