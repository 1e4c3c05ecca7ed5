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

/// A codec failed while compressing. Data that merely does not shrink is no error: it is
/// stored raw. A failure is, so that a chunk is never stored raw because of one.
#[derive(Debug, thiserror::Error)]
#[error("{} compression failed", algo.name())]
pub struct CompressError {
    /// The compressor.
    pub algo: Compressor,
    /// The codec's error.
    #[source]
    pub source: std::io::Error,
}

/// Compresses `data`. `Ok(None)` when the result would not be smaller (or the compressor
/// is `None`): the chunk is then stored uncompressed and flagged so.
pub fn compress(algo: Compressor, data: &[u8]) -> Result<Option<Vec<u8>>, CompressError> {
    if data.is_empty() {
        return Ok(None);
    }
    let out = match algo {
        Compressor::None => return Ok(None),
        Compressor::Lz4Block => lz4_flex::block::compress(data),
        Compressor::Zstd => return zstd_scratch(data, |_, packed| packed.map(<[u8]>::to_vec)),
        Compressor::Gzip => {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data)
                .and_then(|_| enc.finish())
                .map_err(|source| CompressError { algo, source })?
        }
    };
    Ok((out.len() < data.len()).then_some(out))
}

/// Compresses metadata (a bootstrap) with zstd at upstream's level, whole, as upstream
/// does: never judged from a sample. `Ok(None)` when the result would not be smaller.
pub fn zstd_whole(data: &[u8]) -> Result<Option<Vec<u8>>, CompressError> {
    if data.is_empty() {
        return Ok(None);
    }
    let out = zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|source| CompressError {
        algo: Compressor::Zstd,
        source,
    })?;
    Ok((out.len() < data.len()).then_some(out))
}

/// What [`compress_owned`] made of a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Owned {
    /// Compressed smaller: the compressed form, and the data's buffer, emptied, for the
    /// caller to read its next chunk into.
    Packed {
        /// The compressed bytes.
        packed: Vec<u8>,
        /// The data's buffer, emptied.
        buffer: Vec<u8>,
    },
    /// Compressing does not make it smaller: the data back, to be stored raw.
    Raw(Vec<u8>),
}

/// Like [`compress`] for data the caller gives up.
pub fn compress_owned(algo: Compressor, data: Vec<u8>) -> Result<Owned, CompressError> {
    if !matches!(algo, Compressor::Zstd) {
        return Ok(match compress(algo, &data)? {
            Some(packed) => Owned::Packed {
                packed,
                buffer: emptied(data),
            },
            None => Owned::Raw(data),
        });
    }
    zstd_scratch(data, |data, packed| match packed {
        Some(packed) => Owned::Packed {
            packed: packed.to_vec(),
            buffer: emptied(data),
        },
        None => Owned::Raw(data),
    })
}

fn emptied(mut data: Vec<u8>) -> Vec<u8> {
    data.clear();
    data
}

/// Compresses `data` with zstd into this thread's reused buffer and hands `then` the data
/// back with the result when it is smaller. A chunk waiting for the writer then holds its
/// compressed size, not the worst case.
fn zstd_scratch<D: AsRef<[u8]>, R>(
    data: D,
    then: impl FnOnce(D, Option<&[u8]>) -> R,
) -> Result<R, CompressError> {
    let failed = |source| CompressError {
        algo: Compressor::Zstd,
        source,
    };
    ZSTD_ENCODER.with(|c| {
        // One encoder context per thread: creating one per chunk cost a tenth of the
        // build's CPU time.
        let mut c = c.borrow_mut();
        let c = match &mut *c {
            Some(c) => c,
            empty => empty.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(failed)?),
        };
        ZSTD_OUT.with(|out| {
            let mut out = out.borrow_mut();
            let bytes = data.as_ref();
            // Always the worst case's room, as upstream gives it: zstd encodes a block
            // differently when its output might not fit (it falls back to storing it), so
            // a room that depended on the previous chunks' sizes made the same tree
            // compress to different bytes from one build to the next.
            let room = zstd::zstd_safe::compress_bound(bytes.len());
            let n =
                if bytes.is_empty() || looks_incompressible(c, &mut out, bytes).map_err(failed)? {
                    None
                } else {
                    zstd_smaller(c, &mut out, bytes, room).map_err(failed)?
                };
            Ok(match n {
                Some(n) => then(data, Some(&out[..n])),
                None => then(data, None),
            })
        })
    })
}

/// Compresses `data` whole into `out`, offering zstd `room` bytes: the compressed length
/// when it is smaller than the data, `None` when it is not. A zstd error is an error, never
/// taken for data that does not shrink.
fn zstd_smaller(
    c: &mut zstd::bulk::Compressor<'static>,
    out: &mut Vec<u8>,
    data: &[u8],
    room: usize,
) -> std::io::Result<Option<usize>> {
    // Grown only now, for a chunk that is compressed whole: a buffer of a chunk's size
    // taken for a sample kept a chunk's worth of memory resident in each worker that only
    // ever sampled. Exactly: amortized growth could leave it twice the chunk size.
    out.clear();
    out.reserve_exact(room);
    let n = c.compress_to_buffer(data, &mut Room::new(out, room))?;
    Ok((n < data.len()).then_some(n))
}

/// Chunks at least this long are sampled before they are compressed.
const SAMPLE_FROM: usize = 128 << 10;
/// Pieces in a sample, spread evenly from the chunk's first byte to its last.
const SAMPLE_PIECES: usize = 8;
/// Bytes in each piece.
const SAMPLE_PIECE: usize = 2 << 10;

/// Whether zstd would not shrink a long chunk, judged from a sample: evenly spaced pieces
/// of it, compressed together, that do not get any smaller. Random, encrypted and already
/// compressed data is then stored as it is, without spending the time (a fifth of a build
/// of such data) and the memory (the whole chunk a second time) of compressing it all.
///
/// This is our choice, not upstream's, which compresses every chunk. Chunks that shrink
/// get the very bytes they always did: the sample only decides whether to try. What it can
/// miss is a chunk whose only redundancy lies between the pieces, such as a stretch of
/// random bytes repeated further on; that chunk is stored raw.
fn looks_incompressible(
    c: &mut zstd::bulk::Compressor<'static>,
    out: &mut Vec<u8>,
    data: &[u8],
) -> std::io::Result<bool> {
    if data.len() < SAMPLE_FROM {
        return Ok(false);
    }
    let mut sample = [0u8; SAMPLE_PIECES * SAMPLE_PIECE];
    let step = (data.len() - SAMPLE_PIECE) / (SAMPLE_PIECES - 1);
    for (i, piece) in sample.chunks_exact_mut(SAMPLE_PIECE).enumerate() {
        piece.copy_from_slice(&data[i * step..][..SAMPLE_PIECE]);
    }
    let room = zstd::zstd_safe::compress_bound(sample.len());
    out.clear();
    out.reserve_exact(room);
    let n = c.compress_to_buffer(&sample[..], &mut Room::new(out, room))?;
    Ok(n >= sample.len())
}

/// The first `room` bytes of an empty vector's capacity, as zstd's output buffer: unlike
/// the vector itself it offers exactly that room, whatever the capacity left by earlier
/// chunks, and unlike a slice it needs no zero-filling first.
struct Room<'a> {
    out: &'a mut Vec<u8>,
    room: usize,
}

impl<'a> Room<'a> {
    fn new(out: &'a mut Vec<u8>, room: usize) -> Self {
        assert!(out.is_empty() && out.capacity() >= room);
        Room { out, room }
    }
}

// SAFETY: the room offered lies within the vector's allocation (checked in `new`), and
// only the bytes zstd reports as written become part of the vector.
unsafe impl zstd::zstd_safe::WriteBuf for Room<'_> {
    fn as_slice(&self) -> &[u8] {
        self.out
    }
    fn capacity(&self) -> usize {
        self.room
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.out.as_mut_ptr()
    }
    unsafe fn filled_until(&mut self, n: usize) {
        // SAFETY: zstd wrote the first `n` bytes, `n <= room <= capacity`.
        unsafe { self.out.set_len(n) }
    }
}

/// Why stored chunk bytes did not give the chunk back.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// Data stored uncompressed is not of the chunk's size.
    #[error("stored size {stored} differs from the expected {expected}")]
    StoredSize {
        /// Bytes stored.
        stored: usize,
        /// Bytes the chunk holds.
        expected: usize,
    },
    /// The LZ4 block does not decode.
    #[error("lz4 block does not decode")]
    Lz4(#[source] lz4_flex::block::DecompressError),
    /// The zstd frame does not decode (or no decoder could be made).
    #[error("zstd frame does not decode")]
    Zstd(#[source] std::io::Error),
    /// The gzip member does not decode.
    #[error("gzip member does not decode")]
    Gzip(#[source] std::io::Error),
    /// The data decoded to another size than the chunk's.
    #[error("decompressed to {got} bytes, {expected} expected")]
    Length {
        /// Bytes decoded.
        got: usize,
        /// Bytes the chunk holds.
        expected: usize,
    },
}

/// Decompresses `src` into exactly `dst.len()` bytes.
pub fn decompress(algo: Compressor, src: &[u8], dst: &mut [u8]) -> Result<(), DecompressError> {
    let got = match algo {
        Compressor::None => {
            if src.len() != dst.len() {
                return Err(DecompressError::StoredSize {
                    stored: src.len(),
                    expected: dst.len(),
                });
            }
            dst.copy_from_slice(src);
            dst.len()
        }
        Compressor::Lz4Block => {
            lz4_flex::block::decompress_into(src, dst).map_err(DecompressError::Lz4)?
        }
        Compressor::Zstd => ZSTD_DECODER.with(|d| -> Result<usize, DecompressError> {
            // One decoder context per thread: creating one per chunk costs more than
            // decompressing a small chunk.
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new().map_err(DecompressError::Zstd)?);
            }
            d.as_mut()
                .expect("just set")
                .decompress_to_buffer(src, dst)
                .map_err(DecompressError::Zstd)
        })?,
        Compressor::Gzip => {
            let mut dec = flate2::read::GzDecoder::new(src);
            dec.read_exact(dst).map_err(DecompressError::Gzip)?;
            dst.len()
        }
    };
    if got != dst.len() {
        return Err(DecompressError::Length {
            got,
            expected: dst.len(),
        });
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

    /// Barely compressible data: pseudo-random bytes with a run of zeros every so often.
    fn barely(len: usize, seed: u64, run_every: usize, run: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..len)
            .map(|i| {
                if i % run_every < run {
                    return 0;
                }
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    /// A chunk compresses to the same bytes whatever the thread compressed before: the
    /// encoder's room once depended on earlier chunks, and zstd stores a block it cannot
    /// be sure fits, so builds of one tree differed from run to run. These inputs (found
    /// by search) compress by a few bytes with room and not at all without.
    #[test]
    fn zstd_output_does_not_depend_on_earlier_chunks() {
        let cases: Vec<Vec<u8>> = [(348, 4, 54, 5), (385, 5, 55, 6), (414, 222, 272, 13)]
            .iter()
            .map(|&(len, seed, every, run)| barely(len, seed, every, run))
            .collect();
        let fresh: Vec<_> = std::thread::scope(|s| {
            cases
                .iter()
                .map(|c| {
                    s.spawn(move || compress(Compressor::Zstd, c).unwrap())
                        .join()
                        .unwrap()
                })
                .collect()
        });
        assert!(
            fresh.iter().all(Option::is_some),
            "every case compresses a little"
        );
        let after_big: Vec<_> = std::thread::spawn({
            let cases = cases.clone();
            move || {
                let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 7) as u8).collect();
                compress(Compressor::Zstd, &big)
                    .unwrap()
                    .expect("compressible");
                cases
                    .iter()
                    .map(|c| compress(Compressor::Zstd, c).unwrap())
                    .collect()
            }
        })
        .join()
        .unwrap();
        assert_eq!(fresh, after_big);
    }

    /// Pseudo-random bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        barely(len, seed, usize::MAX, 0)
    }

    /// A long chunk is compressed when any of its sampled pieces shows it can be, and then
    /// to exactly the bytes plain zstd at upstream's level gives; the other chunks are stored.
    #[test]
    fn long_chunks_are_sampled_before_compressing() {
        let text = b"compressible text, said once and then again. ".repeat(30_000);
        // Whether `data` is compressed, and then to plain zstd's bytes (lengths in messages:
        // the data is megabytes).
        let packs_as_plain = |data: &[u8]| -> Option<bool> {
            let ours = compress(Compressor::Zstd, data).unwrap()?;
            let Owned::Packed { packed: owned, .. } =
                compress_owned(Compressor::Zstd, data.to_vec()).unwrap()
            else {
                return None;
            };
            Some(ours == owned && ours == zstd::bulk::compress(data, ZSTD_LEVEL).unwrap())
        };
        let mut random = noise(1 << 20, 7);
        assert_eq!(packs_as_plain(&random), None);
        assert!(
            compress_owned(Compressor::Zstd, random.clone()).unwrap() == Owned::Raw(random.clone())
        );

        // Random but for one stretch of text where the fourth piece is taken.
        let at = 3 * ((1 << 20) - SAMPLE_PIECE) / (SAMPLE_PIECES - 1) - 1000;
        random[at..at + 100_000].copy_from_slice(&text[..100_000]);
        assert_eq!(packs_as_plain(&random), Some(true));

        // Short chunks are not sampled: a short stretch of text between the pieces counts.
        let mut short = noise(SAMPLE_FROM - 1, 9);
        short[5000..25_000].copy_from_slice(&text[..20_000]);
        assert_eq!(packs_as_plain(&short), Some(true));

        // The limit, pinned: random bytes repeated at a distance the pieces do not span.
        let half = noise(512 << 10, 11);
        let twice = [half.clone(), half].concat();
        assert!(zstd::bulk::compress(&twice, ZSTD_LEVEL).unwrap().len() < twice.len() * 3 / 4);
        assert_eq!(packs_as_plain(&twice), None);

        // Text, long or short, compresses as plain zstd does.
        for len in [SAMPLE_FROM, 1 << 20, text.len()] {
            assert_eq!(
                packs_as_plain(&text[..len]),
                Some(true),
                "{len} bytes of text"
            );
        }
    }

    #[test]
    fn every_compressor_round_trips() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for algo in [Compressor::Lz4Block, Compressor::Zstd, Compressor::Gzip] {
            let packed = compress(algo, &data).unwrap().expect("compressible");
            assert!(packed.len() < data.len());
            let mut out = vec![0u8; data.len()];
            decompress(algo, &packed, &mut out).unwrap();
            assert_eq!(out, data);
        }
        assert_eq!(compress(Compressor::None, &data).unwrap(), None);
    }

    #[test]
    fn incompressible_data_is_stored() {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(compress(Compressor::Lz4Block, &data[..16]).unwrap(), None);
        let mut out = vec![0u8; 8];
        assert!(decompress(Compressor::Zstd, b"garbage!", &mut out).is_err());
    }

    /// Issue 17: a zstd failure is an error, never taken for data that does not shrink
    /// (which is stored raw). Here zstd is offered too little room to finish; in a build
    /// the room is the worst case, and only a real failure (no memory) gets this far.
    #[test]
    fn zstd_failure_is_not_taken_for_incompressible_data() {
        let text = b"compressible text, said once and then again. ".repeat(100);
        let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        let mut out = Vec::new();
        let room = zstd::zstd_safe::compress_bound(text.len());
        let n = zstd_smaller(&mut c, &mut out, &text, room).unwrap();
        assert!(n.is_some_and(|n| n < text.len() / 10), "{n:?}");
        assert!(zstd_smaller(&mut c, &mut out, &text, 8).is_err());
        // Incompressible data is no error.
        let noise = noise(4096, 3);
        let room = zstd::zstd_safe::compress_bound(noise.len());
        assert_eq!(zstd_smaller(&mut c, &mut out, &noise, room).unwrap(), None);
    }

    /// Each way stored bytes can fail to give the chunk back is its own error, and a
    /// codec's error stays the cause.
    #[test]
    fn decompress_errors_say_what_failed() {
        let zstd_of_10 = zstd::bulk::compress(&[7u8; 10], ZSTD_LEVEL).unwrap();
        type Check = fn(&DecompressError) -> bool;
        let cases: [(&str, Compressor, &[u8], usize, Check); 5] = [
            ("raw, short", Compressor::None, b"abc", 4, |e| {
                matches!(
                    e,
                    DecompressError::StoredSize {
                        stored: 3,
                        expected: 4
                    }
                )
            }),
            (
                "lz4 garbage",
                Compressor::Lz4Block,
                b"\xff\xff\xff",
                64,
                |e| matches!(e, DecompressError::Lz4(_)),
            ),
            ("zstd garbage", Compressor::Zstd, b"garbage!", 8, |e| {
                matches!(e, DecompressError::Zstd(_))
            }),
            ("gzip garbage", Compressor::Gzip, b"garbage!", 8, |e| {
                matches!(e, DecompressError::Gzip(_))
            }),
            ("zstd, short", Compressor::Zstd, &zstd_of_10, 20, |e| {
                matches!(
                    e,
                    DecompressError::Length {
                        got: 10,
                        expected: 20
                    }
                )
            }),
        ];
        for (name, algo, stored, len, check) in cases {
            let mut out = vec![0u8; len];
            let e = decompress(algo, stored, &mut out).expect_err(name);
            assert!(check(&e), "{name}: {e:?}");
            let has_cause = std::error::Error::source(&e).is_some();
            let codec = matches!(
                e,
                DecompressError::Lz4(_) | DecompressError::Zstd(_) | DecompressError::Gzip(_)
            );
            assert_eq!(has_cause, codec, "{name}: {e:?}");
        }
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
