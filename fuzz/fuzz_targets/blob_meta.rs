//! The blob's own metadata: the meta header and chunk info entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nydus_image::format::blob_meta::{ChunkLocation, Header, CHUNK_INFO_V1_SIZE};

fuzz_target!(|data: &[u8]| {
    let _ = Header::decode(data, 0);
    for entry in data.chunks_exact(CHUNK_INFO_V1_SIZE) {
        let loc = ChunkLocation::decode_v1(entry.try_into().expect("exact chunks"));
        let mut again = Vec::new();
        if loc.compressed_offset < 1 << 40 && loc.uncompressed_offset % 4096 == 0 {
            loc.encode_v1(&mut again);
            assert_eq!(ChunkLocation::decode_v1(again.as_slice().try_into().unwrap()), loc);
        }
    }
});
