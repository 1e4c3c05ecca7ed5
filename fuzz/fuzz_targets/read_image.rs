//! The whole reader on mutated bootstraps: open, check, walk every entry, read every
//! file, xattr and symlink. Errors are fine; panics, hangs and huge allocations are bugs.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

fuzz_target!(|data: &[u8]| {
    let Ok(image) = Image::from_bytes(Path::new("fuzz.boot"), data.to_vec(), BlobSource::None) else {
        return;
    };
    let _ = nydus_image::check::check(&image, true);
    let _ = image.walk(|_, nid| {
        let st = image.stat(nid)?;
        let _ = image.xattrs(nid);
        match st.mode & libc_s_ifmt() {
            0o100000 => {
                let _ = image.chunk_addrs(nid);
                let mut buf = [0u8; 4096];
                let _ = image.read(nid, 0, &mut buf);
            }
            0o120000 => {
                let _ = image.readlink(nid);
            }
            _ => {}
        }
        Ok(())
    });
});

fn libc_s_ifmt() -> u32 {
    0o170000
}
