//! The prefetch table of an image (`--prefetch-policy fs`): the nids a reader should
//! fetch first, and the paths they are at. Parsed from untrusted bytes: the table's
//! place and size are checked against the bootstrap (the superblock check already did,
//! and this repeats it where the bytes are taken), and each entry must name an inode of
//! the image; a bad one is an error naming its offset.

use std::collections::HashMap;

use super::{Image, Nid, ReadError};
use crate::format::v6::prefetch;
use crate::format::FormatError;

impl Image {
    /// The nids listed in the prefetch table, in order, up to its first zero entry
    /// (upstream leaves the slots of unmatched patterns zero at the end). Empty when the
    /// image has no table. Each must decode as an inode; whether it is reachable from
    /// the root is for [`Image::prefetch_paths`] to say.
    pub fn prefetch_table(&self) -> Result<Vec<Nid>, ReadError> {
        Ok(self
            .prefetch_entries()?
            .into_iter()
            .map(|(_, _, nid)| nid)
            .collect())
    }

    /// The prefetch table's entries with the path of each (a hard-linked inode's first
    /// name in walk order, the root as "/"). An entry whose nid no entry of the tree
    /// has is an error naming its offset.
    pub fn prefetch_paths(&self) -> Result<Vec<(Nid, Vec<u8>)>, ReadError> {
        let entries = self.prefetch_entries()?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut paths: HashMap<Nid, Vec<u8>> = HashMap::new();
        self.walk(|path, nid| {
            paths.entry(nid).or_insert_with(|| path.to_vec());
            Ok(())
        })?;
        entries
            .into_iter()
            .map(|(index, offset, nid)| match paths.get(&nid) {
                Some(path) => Ok((nid, path.clone())),
                None => Err(ReadError::Prefetch {
                    path: self.path.clone(),
                    index,
                    offset,
                    nid,
                    source: Box::new(ReadError::Request(format!(
                        "no entry of the tree has inode {nid}"
                    ))),
                }),
            })
            .collect()
    }

    /// (index, offset, nid) of each listed entry, each nid decoded as an inode (a v6
    /// nid or a v5 inode number: both tables are little-endian u32s).
    fn prefetch_entries(&self) -> Result<Vec<(usize, u64, Nid)>, ReadError> {
        let offset = self.sb.prefetch_table_offset;
        let size = self.sb.prefetch_table_size as u64;
        // Upstream reads a zero offset as no table whatever the size ("legacy" images).
        if offset == 0 || size == 0 {
            return Ok(Vec::new());
        }
        let bytes = self.bytes(offset, size).map_err(|e| match e {
            ReadError::Format {
                path,
                source: FormatError::Truncated { need, have, .. },
            } => ReadError::Format {
                path,
                source: FormatError::Truncated {
                    offset,
                    need,
                    have,
                    what: "prefetch table",
                },
            },
            other => other,
        })?;
        let listed = prefetch::decode(bytes, offset).map_err(|e| self.fmt_err(e))?;
        listed
            .into_iter()
            .enumerate()
            .map(|(index, (at, nid))| match self.stat(nid) {
                Ok(_) => Ok((index, at, nid)),
                Err(e) => Err(ReadError::Prefetch {
                    path: self.path.clone(),
                    index,
                    offset: at,
                    nid,
                    source: Box::new(e),
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Hostile prefetch tables: each is an error naming the table or the entry's offset,
    //! never a panic.

    use super::*;
    use crate::builder::bootstrap::v6::tests::{bootstrap_with_prefetch, open};
    use crate::builder::prefetch::PrefetchNodes;
    use crate::builder::tree::tests::Sketch;
    use crate::storage::blobs::BlobSource;

    /// Offsets of the prefetch fields in the superblock extension.
    const OFFSET_FIELD: usize = 1192;
    const SIZE_FIELD: usize = 1200;

    /// root: d/ (f), l; a table of 3 slots: /d, /d/f, then an unmatched one.
    fn sample() -> Vec<u8> {
        let mut s = Sketch::new();
        let d = s.dir(0, "d");
        let f = s.file(d, "f", 10);
        s.symlink(0, "l", b"d/f");
        let table = PrefetchNodes {
            slots: 3,
            nodes: vec![d, f],
        };
        bootstrap_with_prefetch(&s.tree, &table)
    }

    fn table_offset(bytes: &[u8]) -> usize {
        u64::from_le_bytes(bytes[OFFSET_FIELD..OFFSET_FIELD + 8].try_into().unwrap()) as usize
    }

    fn reopen(bytes: Vec<u8>) -> Result<Image, ReadError> {
        Image::from_bytes("hostile.boot".as_ref(), bytes, BlobSource::None)
    }

    #[test]
    fn a_sound_table_lists_its_entries_and_their_paths() {
        let image = open(sample());
        let d = image.resolve(b"/d").unwrap().unwrap();
        let f = image.resolve(b"/d/f").unwrap().unwrap();
        assert_eq!(image.prefetch_table().unwrap(), [d, f]);
        assert_eq!(
            image.prefetch_paths().unwrap(),
            [(d, b"/d".to_vec()), (f, b"/d/f".to_vec())]
        );
    }

    #[test]
    fn an_entry_naming_no_inode_is_an_error_at_its_offset() {
        let good = sample();
        let at = table_offset(&good);
        let len = good.len() as u32;
        // nid 1: inside block 0 of the metadata area, before the inodes, which decodes
        // as no inode; a nid past the file; one whose slot is inside the root's inode.
        for (entry, nid) in [(0usize, 1u32), (1, len), (1, u32::MAX), (0, 129)] {
            let mut bytes = good.clone();
            let put = at + entry * 4;
            bytes[put..put + 4].copy_from_slice(&nid.to_le_bytes());
            let image = reopen(bytes).expect("the superblock is untouched");
            let err = match image.prefetch_paths() {
                Err(e) => e,
                Ok(list) => panic!("nid {nid}: listed {list:?}"),
            };
            match &err {
                ReadError::Prefetch {
                    index,
                    offset,
                    nid: n,
                    ..
                } => {
                    assert_eq!((*index, *offset, n.0), (entry, put as u64, nid as u64));
                    let says = err.to_string();
                    assert!(says.contains(&format!("0x{put:x}")), "{says}");
                }
                other => panic!("nid {nid}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_place_or_size_is_an_error_naming_it() {
        let good = sample();
        let at = table_offset(&good) as u64;
        let len = good.len() as u64;
        let set = |offset: u64, size: u32| {
            let mut bytes = good.clone();
            bytes[OFFSET_FIELD..OFFSET_FIELD + 8].copy_from_slice(&offset.to_le_bytes());
            bytes[SIZE_FIELD..SIZE_FIELD + 4].copy_from_slice(&size.to_le_bytes());
            bytes
        };
        // Outside the file, or over block 0: the superblock check names the field.
        for (offset, size) in [(len - 4, 8), (u64::MAX - 1, 4), (100, 4), (len, 1)] {
            match reopen(set(offset, size)) {
                Err(ReadError::Format {
                    source:
                        FormatError::Invalid {
                            offset: field,
                            what,
                        },
                    ..
                }) => {
                    assert_eq!(field, OFFSET_FIELD as u64, "{what}");
                    assert!(what.contains("prefetch table"), "{what}");
                }
                Err(other) => panic!("0x{offset:x}+{size}: {other:?}"),
                Ok(_) => panic!("0x{offset:x}+{size}: opened"),
            }
        }
        // Not a whole number of entries: the table's offset is named.
        for size in [1, 6, 11] {
            let image = reopen(set(at, size)).expect("in the file");
            match image.prefetch_table() {
                Err(ReadError::Format {
                    source: FormatError::Invalid { offset, what },
                    ..
                }) => {
                    assert_eq!(offset, at, "{what}");
                }
                other => panic!("size {size}: {other:?}"),
            }
        }
        // A zero offset is no table, whatever the size (upstream reads it so).
        let image = reopen(set(0, 12)).expect("opens");
        assert!(image.prefetch_table().unwrap().is_empty());
        // Every single-byte change of the table and its fields: an answer, never a panic.
        for i in (OFFSET_FIELD..SIZE_FIELD + 4).chain(at as usize..at as usize + 12) {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut bytes = good.clone();
                bytes[i] = v;
                if let Ok(image) = reopen(bytes) {
                    let _ = image.prefetch_paths();
                }
            }
        }
    }
}
