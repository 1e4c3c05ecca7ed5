//! Operations on whole images, apart from the build pipeline: each takes an image (a
//! bootstrap and its blobs) and produces another image, a report or a file.
//!
//! - [`check`]: validate a bootstrap, optionally reading and verifying every chunk;
//! - [`merge`]: join separately built layers into one image;
//! - [`compact`]: rewrite sparsely used and small blobs into fewer, fuller ones;
//! - [`export`]: one raw EROFS block image holding metadata and file data;
//! - [`unpack`]: write an image's tree as a tar, streamed;
//! - [`inspect`]: answer questions about one image's metadata (upstream's `inspect`);
//! - [`stat`]: file and chunk statistics of images, and what deduplication would save;
//! - [`verify`]: compare an image with the directories (and parent image) it was built from.

pub mod check;
pub mod compact;
pub mod export;
pub mod inspect;
pub mod merge;
pub mod stat;
pub mod unpack;
pub mod verify;
