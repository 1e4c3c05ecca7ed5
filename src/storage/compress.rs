//! Chunk compression and digests, with upstream's framing: LZ4 raw blocks without a size
//! prefix, zstd frames at level 3, and data kept as is whenever compressing does not make
//! it smaller.

use std::io::Read;

use crate::format::{Compressor, Digester};

/// zstd level upstream uses (`zstd::DEFAULT_COMPRESSION_LEVEL`).
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    static ZSTD_ENCODER: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static ZSTD_DECODER: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    /// Output buffer of this thread's zstd encoder, reused across chunks.
    static ZSTD_OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Compresses `data`. Returns `None` when the result would not be smaller (or the
/// compressor is `None`): the chunk is then stored uncompressed and flagged so.
pub fn compress(algo: Compressor, data: &[u8]) -> Option<Vec<u8>> {
    if data.is_empty() {
        return None;
    }
    let out = match algo {
        Compressor::None => return None,
        Compressor::Lz4Block => lz4_flex::block::compress(data),
        Compressor::Zstd => return zstd_scratch(data, |_, packed| packed.map(<[u8]>::to_vec)),
        Compressor::Gzip => {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).ok()?;
            enc.finish().ok()?
        }
    };
    (out.len() < data.len()).then_some(out)
}

/// Like [`compress`] for data the caller gives up: `Ok` with the compressed form, or the
/// data back when compressing does not make it smaller. With zstd the data is freed
/// before the compressed form is copied out of the encoder's buffer, so a chunk never
/// exists three times (data, encoder output, result) at once.
pub fn compress_owned(algo: Compressor, data: Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
    if !matches!(algo, Compressor::Zstd) {
        return compress(algo, &data).ok_or(data);
    }
    zstd_scratch(data, |data, packed| match packed {
        Some(packed) => {
            drop(data);
            Ok(packed.to_vec())
        }
        None => Err(data),
    })
}

/// Compresses `data` with zstd into this thread's reused buffer, no bigger than the input
/// (a larger result is not kept anyway), and hands `then` the data back with the result
/// when it is smaller. A chunk waiting for the writer then holds its compressed size, not
/// the worst case.
fn zstd_scratch<D: AsRef<[u8]>, R>(data: D, then: impl FnOnce(D, Option<&[u8]>) -> R) -> R {
    ZSTD_ENCODER.with(|c| {
        // One encoder context per thread: creating one per chunk cost a tenth of the
        // build's CPU time.
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        ZSTD_OUT.with(|out| {
            let mut out = out.borrow_mut();
            out.clear();
            let bytes = data.as_ref();
            let len = bytes.len();
            // Exactly: amortized growth could leave this buffer twice the chunk size.
            out.reserve_exact(len);
            let n = match c.as_mut() {
                Some(c) if len > 0 => c.compress_to_buffer(bytes, &mut *out).ok(),
                _ => None,
            };
            match n {
                Some(n) if n < len => then(data, Some(&out[..n])),
                _ => then(data, None),
            }
        })
    })
}

/// Decompresses `src` into exactly `dst.len()` bytes.
pub fn decompress(algo: Compressor, src: &[u8], dst: &mut [u8]) -> Result<(), String> {
    let got = match algo {
        Compressor::None => {
            if src.len() != dst.len() {
                return Err(format!(
                    "stored size {} differs from expected {}",
                    src.len(),
                    dst.len()
                ));
            }
            dst.copy_from_slice(src);
            dst.len()
        }
        Compressor::Lz4Block => {
            lz4_flex::block::decompress_into(src, dst).map_err(|e| format!("lz4: {e}"))?
        }
        Compressor::Zstd => ZSTD_DECODER.with(|d| -> Result<usize, String> {
            // One decoder context per thread: creating one per chunk costs more than
            // decompressing a small chunk.
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
            }
            d.as_mut()
                .expect("just set")
                .decompress_to_buffer(src, dst)
                .map_err(|e| format!("zstd: {e}"))
        })?,
        Compressor::Gzip => {
            let mut dec = flate2::read::GzDecoder::new(src);
            dec.read_exact(dst).map_err(|e| format!("gzip: {e}"))?;
            dst.len()
        }
    };
    if got != dst.len() {
        return Err(format!(
            "decompressed to {got} bytes, expected {}",
            dst.len()
        ));
    }
    Ok(())
}

/// Digest of a chunk's uncompressed data.
pub fn digest(algo: Digester, data: &[u8]) -> [u8; 32] {
    match algo {
        Digester::Blake3 => *blake3::hash(data).as_bytes(),
        Digester::Sha256 => {
            use sha2::Digest;
            sha2::Sha256::digest(data).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compressor_round_trips() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for algo in [Compressor::Lz4Block, Compressor::Zstd, Compressor::Gzip] {
            let packed = compress(algo, &data).expect("compressible");
            assert!(packed.len() < data.len());
            let mut out = vec![0u8; data.len()];
            decompress(algo, &packed, &mut out).unwrap();
            assert_eq!(out, data);
        }
        assert_eq!(compress(Compressor::None, &data), None);
    }

    #[test]
    fn incompressible_data_is_stored() {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(compress(Compressor::Lz4Block, &data[..16]), None);
        let mut out = vec![0u8; 8];
        assert!(decompress(Compressor::Zstd, b"garbage!", &mut out).is_err());
    }

    #[test]
    fn digests_match_known_values() {
        assert_eq!(
            hex::encode(digest(Digester::Sha256, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(digest(Digester::Blake3, b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
