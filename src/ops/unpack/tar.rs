//! The tar side of `unpack`: one member's headers (a POSIX.1-2001 extended header when
//! the ustar fields cannot hold a value, then the ustar header), laid out by hand so that
//! the member's data can follow them straight from the blob, chunk by chunk.
//!
//! What goes into an extended (PAX, typeflag `x`) header: `path` and `linkpath` longer
//! than the 100-byte fields (with `hdrcharset=BINARY` when they are not UTF-8, as GNU tar
//! writes it), `size`, `uid` and `gid` past the 11- and 7-digit octal fields, `mtime`
//! with its nanoseconds (or when negative or too large for the octal field), and every
//! xattr as `SCHILY.xattr.NAME`, whose value may hold any bytes (a record carries its own
//! length). A numeric value the PAX header carries is also put in the ustar field in
//! GNU's base-256 form where it fits, for readers that ignore the extended header.

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// A member's type flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `0`: a regular file, its data following.
    File,
    /// `1`: another name for a member written before.
    HardLink,
    /// `2`: a symbolic link.
    Symlink,
    /// `3`: a character device.
    CharDevice,
    /// `4`: a block device.
    BlockDevice,
    /// `5`: a directory.
    Directory,
    /// `6`: a FIFO.
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::CharDevice => b'3',
            Kind::BlockDevice => b'4',
            Kind::Directory => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// What one member's headers say.
#[derive(Clone, Debug)]
pub struct Member<'a> {
    /// Name in the archive (relative; a directory's ends in `/`).
    pub path: &'a [u8],
    /// Type.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes of data following the header (regular files only).
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Symlink target or hard link's earlier name.
    pub link: Option<&'a [u8]>,
    /// Device major and minor numbers.
    pub device: (u32, u32),
    /// Extended attributes, in the order given.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// Why a member cannot be written as tar.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// An xattr name with `=` cannot be a PAX record's key.
    #[error("xattr name {0:?} holds '=', which a PAX record's key cannot")]
    XattrName(String),
}

/// Offsets and widths of the ustar header fields used here.
mod field {
    pub const NAME: (usize, usize) = (0, 100);
    pub const MODE: (usize, usize) = (100, 8);
    pub const UID: (usize, usize) = (108, 8);
    pub const GID: (usize, usize) = (116, 8);
    pub const SIZE: (usize, usize) = (124, 12);
    pub const MTIME: (usize, usize) = (136, 12);
    pub const CHKSUM: (usize, usize) = (148, 8);
    pub const TYPEFLAG: usize = 156;
    pub const LINKNAME: (usize, usize) = (157, 100);
    pub const MAGIC: (usize, usize) = (257, 8);
    pub const DEVMAJOR: (usize, usize) = (329, 8);
    pub const DEVMINOR: (usize, usize) = (337, 8);
}

/// Appends the headers of `member` (an extended header and its records, if needed, then
/// the ustar header) to `out`. The member's data and its padding are the caller's.
pub fn write_headers(member: &Member<'_>, out: &mut Vec<u8>) -> Result<(), TarError> {
    let mut records = Vec::new();
    let mut header = [0u8; BLOCK];
    let binary = !is_utf8(member.path) || member.link.is_some_and(|l| !is_utf8(l));
    if binary {
        record(&mut records, b"hdrcharset", b"BINARY");
    }
    if !put_bytes(&mut header, field::NAME, member.path) {
        record(&mut records, b"path", member.path);
    }
    if let Some(link) = member.link {
        if !put_bytes(&mut header, field::LINKNAME, link) {
            record(&mut records, b"linkpath", link);
        }
    }
    put_octal(&mut header, field::MODE, (member.mode & 0o7777) as u64);
    for (key, at, value) in [
        (&b"uid"[..], field::UID, member.uid as u64),
        (b"gid", field::GID, member.gid as u64),
        (b"size", field::SIZE, member.size),
    ] {
        if !put_octal(&mut header, at, value) {
            put_base256(&mut header, at, value);
            record(&mut records, key, value.to_string().as_bytes());
        }
    }
    let whole = u64::try_from(member.mtime)
        .ok()
        .filter(|&s| put_octal(&mut header, field::MTIME, s));
    if whole.is_none() || member.mtime_nsec != 0 {
        if whole.is_none() {
            put_octal(&mut header, field::MTIME, 0);
        }
        record(
            &mut records,
            b"mtime",
            pax_time(member.mtime, member.mtime_nsec).as_bytes(),
        );
    }
    for (name, value) in member.xattrs {
        if name.contains(&b'=') {
            return Err(TarError::XattrName(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        record(&mut records, &key, value);
    }
    header[field::TYPEFLAG] = member.kind.flag();
    header[field::MAGIC.0..field::MAGIC.0 + field::MAGIC.1].copy_from_slice(b"ustar\x0000");
    if matches!(member.kind, Kind::CharDevice | Kind::BlockDevice) {
        put_octal(&mut header, field::DEVMAJOR, member.device.0 as u64);
        put_octal(&mut header, field::DEVMINOR, member.device.1 as u64);
    }
    if !records.is_empty() {
        let mut ext = [0u8; BLOCK];
        put_bytes(&mut ext, field::NAME, &pax_name(member.path));
        put_octal(&mut ext, field::MODE, 0o644);
        put_octal(&mut ext, field::UID, 0);
        put_octal(&mut ext, field::GID, 0);
        put_octal(&mut ext, field::SIZE, records.len() as u64);
        put_octal(&mut ext, field::MTIME, 0);
        ext[field::TYPEFLAG] = b'x';
        ext[field::MAGIC.0..field::MAGIC.0 + field::MAGIC.1].copy_from_slice(b"ustar\x0000");
        seal(&mut ext);
        out.extend_from_slice(&ext);
        out.extend_from_slice(&records);
        out.resize(out.len() + padding(records.len() as u64), 0);
    }
    seal(&mut header);
    out.extend_from_slice(&header);
    Ok(())
}

/// Zero bytes that complete a member of `size` data bytes to whole blocks.
pub fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

fn is_utf8(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok()
}

/// The extended header's own name: `PaxHeaders/` and the member's last component, cut to
/// the 100-byte field (readers ignore it; GNU tar names them alike).
fn pax_name(path: &[u8]) -> Vec<u8> {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(b"");
    let mut name = b"PaxHeaders/".to_vec();
    name.extend_from_slice(base);
    name.truncate(field::NAME.1);
    name
}

/// Copies `value` into a text field when it fits (it need not be NUL terminated when it
/// fills the field); otherwise stores its first bytes and returns false.
fn put_bytes(header: &mut [u8; BLOCK], (at, width): (usize, usize), value: &[u8]) -> bool {
    let n = value.len().min(width);
    header[at..at + n].copy_from_slice(&value[..n]);
    value.len() <= width
}

/// Writes `value` as zero-padded octal digits and a NUL when it fits; returns whether it did.
fn put_octal(header: &mut [u8; BLOCK], (at, width): (usize, usize), value: u64) -> bool {
    let digits = width - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        return false;
    }
    header[at..at + digits].copy_from_slice(text.as_bytes());
    header[at + digits] = 0;
    true
}

/// GNU's base-256 form: the top bit of the first byte set, the value big-endian in the rest.
fn put_base256(header: &mut [u8; BLOCK], (at, width): (usize, usize), value: u64) {
    let field = &mut header[at..at + width];
    field.fill(0);
    let bytes = value.to_be_bytes();
    field[width - 8..].copy_from_slice(&bytes);
    field[0] |= 0x80;
}

/// Fills in the checksum: the sum of the header's bytes with the checksum field taken as
/// spaces, as six octal digits, a NUL and a space.
fn seal(header: &mut [u8; BLOCK]) {
    let (at, width) = field::CHKSUM;
    header[at..at + width].fill(b' ');
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    let text = format!("{sum:06o}\0 ");
    header[at..at + width].copy_from_slice(text.as_bytes());
}

/// A PAX time: seconds and a nine-digit fraction; a negative time is the real number
/// `mtime + nsec / 10^9`, so -2 s plus 0.5 s is `-1.5`.
fn pax_time(secs: i64, nsec: u32) -> String {
    // An image may hold any 32-bit value here; no time has more than 999999999 ns.
    let nsec = nsec.min(999_999_999);
    if nsec == 0 {
        return secs.to_string();
    }
    if secs >= 0 {
        return format!("{secs}.{nsec:09}");
    }
    let whole = -(secs as i128) - 1;
    format!("-{whole}.{:09}", 1_000_000_000 - nsec)
}

/// Appends the record `LEN KEY=VALUE\n`, where LEN counts the whole record, its own
/// digits included.
fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(path: &[u8]) -> Member<'_> {
        Member {
            path,
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            link: None,
            device: (0, 0),
            xattrs: &[],
        }
    }

    /// The records of an extended header, as (key, value).
    fn records(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let size = usize::from_str_radix(
            std::str::from_utf8(&bytes[124..135])
                .unwrap()
                .trim_end_matches('\0'),
            8,
        )
        .unwrap();
        let mut data = &bytes[BLOCK..BLOCK + size];
        let mut out = Vec::new();
        while !data.is_empty() {
            let sp = data.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&data[..sp]).unwrap().parse().unwrap();
            let rec = &data[sp + 1..len - 1];
            assert_eq!(data[len - 1], b'\n');
            let eq = rec.iter().position(|&b| b == b'=').unwrap();
            out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
            data = &data[len..];
        }
        out
    }

    #[test]
    fn record_lengths_count_their_own_digits() {
        for (key, vlen) in [("a", 0), ("path", 90), ("path", 91), ("x", 994), ("x", 995)] {
            let mut out = Vec::new();
            record(&mut out, key.as_bytes(), &vec![b'v'; vlen]);
            let sp = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "{key} {vlen}");
        }
    }

    #[test]
    fn times_are_real_numbers() {
        for (s, ns, want) in [
            (5, 0, "5"),
            (1_700_000_000, 123_456_789, "1700000000.123456789"),
            (0, 1, "0.000000001"),
            (-1, 0, "-1"),
            (-2, 500_000_000, "-1.500000000"),
            (-1, 1, "-0.999999999"),
        ] {
            assert_eq!(pax_time(s, ns), want);
        }
    }

    #[test]
    fn short_plain_members_need_no_extended_header() {
        let mut out = Vec::new();
        write_headers(&member(b"a/b"), &mut out).unwrap();
        assert_eq!(out.len(), BLOCK);
        assert_eq!(&out[257..265], b"ustar\x0000");
    }

    #[test]
    fn what_ustar_cannot_hold_goes_to_pax_records() {
        let long = vec![b'n'; 150];
        let xattrs = vec![(b"user.bin".to_vec(), vec![0, b'\n', 0xff, b'='])];
        let m = Member {
            uid: 4_000_000_000,
            gid: 2_097_152,
            size: 1 << 40,
            mtime: -5,
            mtime_nsec: 7,
            link: Some(b"\xff"),
            kind: Kind::Symlink,
            xattrs: &xattrs,
            ..member(&long)
        };
        let mut out = Vec::new();
        write_headers(&m, &mut out).unwrap();
        let recs = records(&out);
        let want: Vec<(&[u8], Vec<u8>)> = vec![
            (b"hdrcharset", b"BINARY".to_vec()),
            (b"path", long.clone()),
            (b"uid", b"4000000000".to_vec()),
            (b"gid", b"2097152".to_vec()),
            (b"size", b"1099511627776".to_vec()),
            (b"mtime", b"-4.999999993".to_vec()),
            (b"SCHILY.xattr.user.bin", vec![0, b'\n', 0xff, b'=']),
        ];
        let got: Vec<(&[u8], Vec<u8>)> = recs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.clone()))
            .collect();
        assert_eq!(got, want);
        // The ustar header follows the records, checksummed, with base-256 numbers.
        let header = &out[out.len() - BLOCK..];
        assert_eq!(header[108] & 0x80, 0x80);
        assert_eq!(header[124] & 0x80, 0x80);
        let mut copy = header.to_vec();
        copy[148..156].fill(b' ');
        let sum: u32 = copy.iter().map(|&b| b as u32).sum();
        assert_eq!(&header[148..156], format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn xattr_names_with_equals_are_refused() {
        let xattrs = vec![(b"user.a=b".to_vec(), b"v".to_vec())];
        let m = Member {
            xattrs: &xattrs,
            ..member(b"f")
        };
        assert!(write_headers(&m, &mut Vec::new()).is_err());
    }
}
