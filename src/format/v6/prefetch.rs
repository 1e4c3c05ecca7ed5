//! The RAFS v6 prefetch table (upstream 2.2.0's `--prefetch-policy fs`): an array of
//! little-endian u32 nids at `prefetch_table_offset` in the bootstrap, right after the
//! blob table, `prefetch_table_size` bytes long (a multiple of 4). A writer reserves one
//! slot per prefetch pattern and fills the slots of the patterns that matched from the
//! front; the rest stay zero, and a zero nid ends the list for readers (upstream's
//! nydusd stops there: the root's nid is never 0, RAFS keeping one block before it).

use super::Nid;
use crate::format::FormatError;

/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 4;

/// The table's bytes: `nids` in order, then zeros up to `slots` entries.
pub fn encode(nids: &[u32], slots: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(slots.max(nids.len()) * ENTRY_SIZE as usize);
    for nid in nids {
        out.extend_from_slice(&nid.to_le_bytes());
    }
    out.resize(slots.max(nids.len()) * ENTRY_SIZE as usize, 0);
    out
}

/// The nids listed in `bytes`, the table read from bootstrap offset `offset`, up to the
/// first zero entry; each with the bootstrap offset of its entry. A size that is not a
/// whole number of entries is an error naming the table's offset.
pub fn decode(bytes: &[u8], offset: u64) -> Result<Vec<(u64, Nid)>, FormatError> {
    if !(bytes.len() as u64).is_multiple_of(ENTRY_SIZE) {
        return Err(FormatError::Invalid {
            offset,
            what: format!(
                "prefetch table of {} bytes is not a whole number of 4-byte entries",
                bytes.len()
            ),
        });
    }
    let mut out = Vec::new();
    for (i, entry) in bytes.chunks_exact(ENTRY_SIZE as usize).enumerate() {
        let nid = u32::from_le_bytes(entry.try_into().expect("chunks_exact gives 4 bytes"));
        if nid == 0 {
            break;
        }
        out.push((offset + i as u64 * ENTRY_SIZE, Nid(nid as u64)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_up_to_the_first_zero() {
        let bytes = encode(&[128, 0x1234_5678], 4);
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[4..8], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(
            decode(&bytes, 0x1100).unwrap(),
            [(0x1100, Nid(128)), (0x1104, Nid(0x1234_5678))]
        );
        // Anything after a zero entry is not listed, as upstream's reader stops there.
        let mut stray = bytes.clone();
        stray[12] = 9;
        assert_eq!(decode(&stray, 0x1100).unwrap().len(), 2);
        assert!(decode(&[], 0x1100).unwrap().is_empty());
        assert!(decode(&[0; 8], 0x1100).unwrap().is_empty());
    }

    #[test]
    fn a_partial_entry_is_an_error_naming_the_table() {
        for len in [1, 2, 3, 5, 7] {
            match decode(&vec![1; len], 0x2200) {
                Err(FormatError::Invalid { offset, what }) => {
                    assert_eq!(offset, 0x2200);
                    assert!(what.contains(&format!("{len} bytes")), "{what}");
                }
                other => panic!("{len} bytes: {other:?}"),
            }
        }
    }
}
