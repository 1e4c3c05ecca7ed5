//! Compaction's plan: from the blobs' sizes and use alone, which blobs are dropped,
//! rebuilt, merged or left alone (the rules are in [`super`]'s note). A pure function, so
//! the rules are tested on their own.

use std::collections::BTreeMap;

use super::CompactConfig;

/// What planning needs to know of one blob.
#[derive(Clone, Debug)]
pub(super) struct BlobFacts {
    /// Compressed bytes of its chunk data.
    pub(super) data_size: u64,
    /// Compressed bytes of the distinct chunks the tree uses.
    pub(super) used_bytes: u64,
    /// Whether the tree uses any of its chunks.
    pub(super) used: bool,
    /// Shared with a chunk dictionary: referenced as it is, never rewritten.
    pub(super) shared: bool,
    /// Whether its compressor is one this tool writes (not gzip, as eStargz layers are).
    pub(super) writable: bool,
    /// Compressor, digester and chunk size: only blobs alike merge.
    pub(super) kind: (u32, u32, u32),
}

/// What becomes of an image's blobs. Blobs in neither list stay as they are.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Blobs no file uses, dropped from the table, ascending.
    pub(super) dropped: Vec<usize>,
    /// One new blob each: the blobs whose used chunks go into it, in the order they are
    /// written (least used data first); one blob alone is rebuilt, several are merged.
    /// Sorted.
    pub(super) groups: Vec<Vec<usize>>,
}

/// `used` as a percentage of `size` (100 when `size` is 0).
pub(super) fn percent(used: u64, size: u64) -> u128 {
    (used as u128 * 100)
        .checked_div(size as u128)
        .unwrap_or(100)
}

/// Decides, from the blobs' sizes and use alone, which blobs are dropped, rebuilt, merged
/// or left alone (the rules are in the module's note).
pub(super) fn plan(blobs: &[BlobFacts], cfg: &CompactConfig) -> Plan {
    let mut out = Plan::default();
    // Rebuilt: sparsely used (used bytes below min_used_ratio percent of the data).
    let mut rebuild = vec![false; blobs.len()];
    for (i, b) in blobs.iter().enumerate() {
        if !b.used {
            out.dropped.push(i);
        } else if !b.shared
            && b.writable
            && b.data_size > 0
            && (b.used_bytes as u128) * 100 < cfg.min_used_ratio as u128 * b.data_size as u128
        {
            rebuild[i] = true;
        }
    }
    // Merge candidates, by kind: small blobs, and rebuilt ones whose used data is small,
    // each with the bytes it brings.
    let mut candidates: BTreeMap<(u32, u32, u32), Vec<(u64, usize)>> = BTreeMap::new();
    for (i, b) in blobs.iter().enumerate() {
        let small = if rebuild[i] {
            b.used_bytes < cfg.compact_blob_size
        } else {
            b.used && !b.shared && b.writable && b.data_size < cfg.compact_blob_size
        };
        if small {
            candidates
                .entry(b.kind)
                .or_default()
                .push((b.used_bytes, i));
        }
    }
    // Smallest first, into new blobs of at most max_compact_size bytes; a candidate that
    // fits with nothing stays as it is (or is rebuilt alone).
    let mut grouped = vec![false; blobs.len()];
    for (_, mut list) in candidates {
        list.sort_unstable();
        let mut current: Vec<usize> = Vec::new();
        let mut current_bytes = 0u64;
        for (bytes, i) in list {
            let together = current_bytes.saturating_add(bytes);
            if !current.is_empty() && together <= cfg.max_compact_size {
                current.push(i);
                current_bytes = together;
            } else {
                if current.len() > 1 {
                    out.groups.push(std::mem::take(&mut current));
                }
                current = vec![i];
                current_bytes = bytes;
            }
        }
        if current.len() > 1 {
            out.groups.push(current);
        }
    }
    for &i in out.groups.iter().flatten() {
        grouped[i] = true;
    }
    for i in 0..blobs.len() {
        if rebuild[i] && !grouped[i] {
            out.groups.push(vec![i]);
        }
    }
    out.groups.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZSTD: (u32, u32, u32) = (3, 0, 0x10_0000);

    /// A blob of `data_size` bytes of which the tree uses `used_bytes`, of our kind.
    fn blob(data_size: u64, used_bytes: u64) -> BlobFacts {
        BlobFacts {
            data_size,
            used_bytes,
            used: used_bytes > 0,
            shared: false,
            writable: true,
            kind: ZSTD,
        }
    }

    fn shared(b: BlobFacts) -> BlobFacts {
        BlobFacts { shared: true, ..b }
    }

    fn gzip(b: BlobFacts) -> BlobFacts {
        BlobFacts {
            writable: false,
            kind: (2, 1, 0x10_0000),
            ..b
        }
    }

    fn lz4(b: BlobFacts) -> BlobFacts {
        BlobFacts {
            kind: (1, 0, 0x10_0000),
            ..b
        }
    }

    /// Which blobs are dropped, rebuilt, merged or left alone. Settings unless a case
    /// changes them: rebuild below 50% used, merge blobs under 100 bytes into new blobs of
    /// at most 250.
    #[test]
    fn planning_drops_rebuilds_merges_and_leaves_alone() {
        let base = CompactConfig {
            min_used_ratio: 50,
            compact_blob_size: 100,
            max_compact_size: 250,
            ..CompactConfig::default()
        };
        let with = |f: fn(&mut CompactConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c
        };
        let plan_of = |dropped: &[usize], groups: &[&[usize]]| Plan {
            dropped: dropped.to_vec(),
            groups: groups.iter().map(|g| g.to_vec()).collect(),
        };
        let cases: Vec<(&str, Vec<BlobFacts>, CompactConfig, Plan)> = vec![
            (
                "an unused blob is dropped",
                vec![blob(1000, 0), blob(1000, 900)],
                base.clone(),
                plan_of(&[0], &[]),
            ),
            (
                "a sparse large blob is rebuilt alone",
                vec![blob(1000, 400)],
                base.clone(),
                plan_of(&[], &[&[0]]),
            ),
            (
                "a blob used at exactly the ratio is left alone",
                vec![blob(1000, 500)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "two small blobs are merged, least used data first",
                vec![blob(90, 60), blob(50, 50)],
                base.clone(),
                plan_of(&[], &[&[1, 0]]),
            ),
            (
                "a small blob with nothing to merge with is left alone",
                vec![blob(50, 50), blob(1000, 900)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "a blob of exactly compact_blob_size is not small",
                vec![blob(100, 100), blob(50, 50)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "merged blobs hold at most max_compact_size; the rest stays",
                vec![blob(90, 90), blob(80, 80), blob(70, 70), blob(60, 60)],
                base.clone(),
                plan_of(&[], &[&[3, 2, 1]]),
            ),
            (
                "a full second merge group",
                vec![
                    blob(90, 90),
                    blob(80, 80),
                    blob(70, 70),
                    blob(60, 60),
                    blob(95, 95),
                ],
                base.clone(),
                plan_of(&[], &[&[0, 4], &[3, 2, 1]]),
            ),
            (
                "a sparse blob with little used data joins a merge",
                vec![blob(1000, 30), blob(50, 50)],
                base.clone(),
                plan_of(&[], &[&[0, 1]]),
            ),
            (
                "a sparse blob with nothing to merge with is rebuilt alone",
                vec![blob(1000, 30)],
                base.clone(),
                plan_of(&[], &[&[0]]),
            ),
            (
                "dictionary blobs are never rebuilt or merged",
                vec![shared(blob(1000, 10)), shared(blob(50, 50)), blob(60, 60)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "an unused dictionary blob is dropped",
                vec![shared(blob(50, 0)), blob(1000, 900)],
                base.clone(),
                plan_of(&[0], &[]),
            ),
            (
                "gzip (eStargz) blobs are left alone",
                vec![gzip(blob(1000, 10)), gzip(blob(50, 50)), blob(60, 60)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "only blobs of one kind merge",
                vec![
                    blob(50, 50),
                    lz4(blob(60, 60)),
                    blob(70, 70),
                    lz4(blob(40, 40)),
                ],
                base.clone(),
                plan_of(&[], &[&[0, 2], &[3, 1]]),
            ),
            (
                "min_used_ratio 0 rebuilds nothing",
                vec![blob(1000, 1)],
                with(|c| c.min_used_ratio = 0),
                plan_of(&[], &[]),
            ),
            (
                "compact_blob_size 0 merges nothing",
                vec![blob(50, 50), blob(60, 60), blob(1000, 100)],
                with(|c| c.compact_blob_size = 0),
                plan_of(&[], &[&[2]]),
            ),
            (
                "a blob of no recorded size is not rebuilt",
                vec![blob(0, 500)],
                base.clone(),
                plan_of(&[], &[]),
            ),
            (
                "sizes near 2^64 do not overflow",
                vec![
                    blob(u64::MAX, u64::MAX / 4),
                    blob(10, u64::MAX),
                    blob(10, u64::MAX),
                ],
                with(|c| {
                    c.compact_blob_size = u64::MAX;
                    c.max_compact_size = u64::MAX;
                    c.min_used_ratio = 99;
                }),
                plan_of(&[], &[&[0, 1, 2]]),
            ),
        ];
        for (name, blobs, cfg, want) in cases {
            assert_eq!(plan(&blobs, &cfg), want, "{name}");
        }
    }
}
