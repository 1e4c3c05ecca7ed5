//! eStargz TOCs: parse mutated TOC JSON, lay out a bootstrap of what parses, and read
//! that bootstrap back whole. Refusals are fine; panics, hangs and huge allocations are
//! bugs, and so is a bootstrap we write that our own `check` rejects.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nydus_image::builder::stargz;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.toc.json");
    let Ok(layer) = stargz::parse(path, data, 1, 0, None, None) else {
        return;
    };
    let described = stargz::describe(layer, None, Vec::new(), &"0".repeat(64));
    let image = Image::from_bytes(Path::new("fuzz.boot"), described.bootstrap, BlobSource::None)
        .expect("our own bootstrap opens");
    nydus_image::check::check(&image, false).expect("our own bootstrap checks");
});
