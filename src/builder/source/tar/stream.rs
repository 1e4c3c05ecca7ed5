//! The tar stream, read once front to back: header blocks (ustar, GNU, v7), the extension
//! headers that describe the member after them (PAX `x` records, GNU `L`/`K` long names),
//! PAX global headers, and sparse files (GNU `S` headers and PAX sparse formats 0.0, 0.1
//! and 1.0), turned into [`Member`]s whose data reads back expanded (holes as zeros).
//!
//! Headers are decoded with the `tar` crate's layouts; the framing is ours, so that every
//! error names the byte offset where it happened and nothing is ever sought or buffered
//! beyond a block. (`tar`'s own iterator splits PAX records at newlines, which xattr values
//! may hold, and then silently drops the `size`, `uid` and `gid` records after them; that
//! is the bug behind upstream 2.2.0's failures on such values.)
//!
//! The archive ends at its first all-zero block, as GNU tar, Go and Python read it (the
//! rest of the stream is drained, unread, by [`TarStream::finish`]), or where the stream
//! ends at a block boundary.

use std::io::{self, Read};

use super::fields::{numeric, pax_decimal, pax_records, pax_time, Records};
use super::TarError;

/// Bytes in a tar block.
const BLOCK: u64 = 512;
/// Largest extension header (PAX records, GNU long name) accepted, in bytes.
const MAX_EXTENSION: u64 = 16 << 20;
/// Most data segments a sparse file may list.
const MAX_SEGMENTS: usize = 1 << 20;

/// What a member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemberKind {
    /// A regular file (its data follows, expanded if sparse).
    File,
    /// Another name for an earlier member (`Member::link`).
    HardLink,
    /// A symbolic link to `Member::link`.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A directory.
    Dir,
    /// A named pipe.
    Fifo,
}

/// One member of the archive, with its extension headers applied.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    /// Where its own header block starts (after any extension headers).
    pub header_at: u64,
    /// Its path as the archive spells it.
    pub path: Vec<u8>,
    /// Hard-link or symlink target as the archive spells it (empty for other kinds).
    pub link: Vec<u8>,
    /// Its kind.
    pub kind: MemberKind,
    /// Permission bits (07777).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device major number (devices only).
    pub major: u64,
    /// Device minor number (devices only).
    pub minor: u64,
    /// Size of a regular file's data, holes included (0 for other kinds).
    pub size: u64,
    /// `SCHILY.xattr.*` records: (name, value), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Member {
    /// Its path for messages.
    pub fn shown(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// The member whose data is being read.
struct Current {
    /// Path, for errors.
    entry: String,
    /// Its header's offset, for errors.
    header_at: u64,
    /// Stored bytes of its data not yet read.
    stored_left: u64,
    /// Padding after the stored data, to the next block.
    pad: u64,
    /// Data segments as (offset, length) in the expanded file, in order; everything
    /// else is holes. A file that is not sparse has one segment.
    segments: Vec<(u64, u64)>,
    /// Size of the expanded data.
    size: u64,
    /// How far the expanded data has been read.
    read: u64,
    /// The segment `read` is in or before.
    segment: usize,
}

/// A tar archive being read from `R`.
pub(crate) struct TarStream<R> {
    inner: R,
    /// Bytes of the stream consumed.
    pos: u64,
    current: Option<Current>,
    /// PAX global records in force.
    globals: Records,
    /// The last member's path, to place a bad header in errors.
    last: Option<String>,
    /// Whether the end-of-archive block was seen.
    ended: bool,
}

/// What one or more extension headers said about the member after them.
#[derive(Default)]
struct Extensions {
    /// Where the first of them starts.
    first_at: Option<u64>,
    pax: Records,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Extensions {
    fn pending(&self) -> bool {
        self.first_at.is_some()
    }
}

/// How a member's data is laid out, before its segments are checked.
enum Layout {
    /// Stored as is.
    Plain,
    /// Sparse: these segments, this expanded size.
    Sparse(Vec<(u64, u64)>, u64),
    /// PAX sparse 1.0: the segment map opens the stored data; this expanded size.
    MapInData(u64),
}

impl<R: Read> TarStream<R> {
    /// Starts reading an archive at the beginning of `inner`.
    pub fn new(inner: R) -> Self {
        TarStream {
            inner,
            pos: 0,
            current: None,
            globals: Vec::new(),
            last: None,
            ended: false,
        }
    }

    /// Bytes of the tar stream consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Reads up to `buf.len()` bytes, less only at the stream's end.
    fn fill(&mut self, buf: &mut [u8], context: &dyn Fn() -> String) -> Result<usize, TarError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TarError::Read {
                        context: context(),
                        pos: self.pos,
                        source,
                    })
                }
            }
        }
        Ok(got)
    }

    /// Reads and drops `n` bytes; the number actually there.
    fn skip(&mut self, mut n: u64, context: &dyn Fn() -> String) -> Result<u64, TarError> {
        let mut scratch = [0u8; 8192];
        let mut done = 0;
        while n > 0 {
            let want = n.min(scratch.len() as u64) as usize;
            let got = self.fill(&mut scratch[..want], context)?;
            if got == 0 {
                break;
            }
            done += got as u64;
            n -= got as u64;
        }
        Ok(done)
    }

    fn after(&self) -> Option<String> {
        self.last.clone()
    }

    fn header_error(&self, at: u64, what: impl Into<String>) -> TarError {
        TarError::Header {
            at,
            after: self.after(),
            what: what.into(),
        }
    }

    /// Skips what is left of the current member's data and its padding.
    fn skip_current(&mut self) -> Result<(), TarError> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let context = || format!("entry {:?} (header at byte {})", cur.entry, cur.header_at);
        let want = cur.stored_left.saturating_add(cur.pad);
        let got = self.skip(want, &context)?;
        if got < cur.stored_left {
            return Err(TarError::Entry {
                entry: cur.entry.clone(),
                at: cur.header_at,
                what: format!(
                    "the stream ends at byte {}, {} bytes short of the entry's data",
                    self.pos,
                    cur.stored_left - got
                ),
            });
        }
        // A stream that ends in the padding of the last member is only missing the end
        // of the archive; the data is whole.
        Ok(())
    }

    /// The next block, or None at the stream's end (exactly between blocks).
    fn block(&mut self) -> Result<Option<[u8; 512]>, TarError> {
        let at = self.pos;
        let after = self.after();
        let context = || match &after {
            Some(name) => format!("the tar header at byte {at}, after entry {name:?}"),
            None => format!("the tar header at byte {at}"),
        };
        let mut block = [0u8; 512];
        match self.fill(&mut block, &context)? {
            0 => Ok(None),
            512 => Ok(Some(block)),
            n => Err(self.header_error(at, format!("the stream ends {n} bytes into this header"))),
        }
    }

    /// The data of an extension header of `size` bytes at `at`, and its padding.
    fn extension_data(&mut self, at: u64, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_EXTENSION {
            return Err(self.header_error(
                at,
                format!("extension header of {size} bytes; at most {MAX_EXTENSION} are accepted"),
            ));
        }
        let mut data = vec![0u8; size as usize];
        let context = || format!("the extension header at byte {at}");
        let got = self.fill(&mut data, &context)?;
        if got < data.len() {
            return Err(self.header_error(
                at,
                format!(
                    "the stream ends at byte {}, {} bytes short of this extension header's data",
                    self.pos,
                    data.len() - got
                ),
            ));
        }
        self.skip(padding(size), &context)?;
        Ok(data)
    }

    /// The next member, or None at the end of the archive.
    pub fn next_member(&mut self) -> Result<Option<Member>, TarError> {
        self.skip_current()?;
        if self.ended {
            return Ok(None);
        }
        let mut ext = Extensions::default();
        loop {
            let at = self.pos;
            let Some(block) = self.block()? else {
                return self.end(&ext);
            };
            if block.iter().all(|&b| b == 0) {
                self.ended = true;
                return self.end(&ext);
            }
            check_sum(&block).map_err(|what| self.header_error(at, what))?;
            let header = tar::Header::from_byte_slice(&block);
            let old = header.as_old();
            let size = numeric(&old.size)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| self.header_error(at, "malformed size field"))?;
            let typeflag = old.linkflag[0];
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    ext.first_at.get_or_insert(at);
                    let data = self.extension_data(at, size)?;
                    match typeflag {
                        b'x' => {
                            let records = pax_records(&data).map_err(|e| {
                                self.header_error(
                                    at,
                                    format!("PAX record at byte {} of its data: {}", e.at, e.what),
                                )
                            })?;
                            ext.pax.extend(records);
                        }
                        b'g' => {
                            let records = pax_records(&data).map_err(|e| {
                                self.header_error(
                                    at,
                                    format!("PAX record at byte {} of its data: {}", e.at, e.what),
                                )
                            })?;
                            for (key, value) in records {
                                self.globals.retain(|(k, _)| *k != key);
                                if !value.is_empty() {
                                    self.globals.push((key, value));
                                }
                            }
                        }
                        b'L' => ext.long_name = Some(until_nul(&data).to_vec()),
                        _ => ext.long_link = Some(until_nul(&data).to_vec()),
                    }
                    continue;
                }
                b'V' => {
                    // A GNU volume label: nothing to extract.
                    let context = || format!("the volume label at byte {at}");
                    self.skip(size.saturating_add(padding(size)), &context)?;
                    continue;
                }
                b'M' | b'N' => {
                    return Err(self.header_error(
                        at,
                        format!(
                            "GNU {} entries are not supported",
                            if typeflag == b'M' {
                                "multi-volume continuation"
                            } else {
                                "old long-name"
                            }
                        ),
                    ))
                }
                _ => {}
            }
            let member = self.member(at, &block, size, ext)?;
            self.last = Some(member.shown());
            return Ok(Some(member));
        }
    }

    /// The end of the archive: an error if extension headers were waiting for a member.
    fn end(&self, ext: &Extensions) -> Result<Option<Member>, TarError> {
        if let (true, Some(first)) = (ext.pending(), ext.first_at) {
            return Err(self.header_error(
                first,
                "extension headers describe a member, but the archive ends after them",
            ));
        }
        Ok(None)
    }

    /// Builds the member whose header is `block` at `at`, after extension headers `ext`,
    /// and makes it current (its data is next in the stream).
    fn member(
        &mut self,
        at: u64,
        block: &[u8; 512],
        stored: u64,
        ext: Extensions,
    ) -> Result<Member, TarError> {
        let header = tar::Header::from_byte_slice(block);
        let old = header.as_old();
        // The member's own records after the global ones: the last of a key wins.
        let records: Records = self.globals.iter().chain(&ext.pax).cloned().collect();
        let record = |key: &[u8]| lookup(&records, key);
        let mut path = match (record(b"path"), &ext.long_name) {
            (Some(p), _) => p.to_vec(),
            (None, Some(long)) => long.clone(),
            (None, None) => header.path_bytes().into_owned(),
        };
        let entry = String::from_utf8_lossy(&path).into_owned();
        let bad = |what: String| TarError::Entry {
            entry: entry.clone(),
            at,
            what,
        };
        let link = match (record(b"linkpath"), &ext.long_link) {
            (Some(p), _) => p.to_vec(),
            (None, Some(long)) => long.clone(),
            (None, None) => header
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default(),
        };
        let decimal = |key: &str| -> Result<Option<u64>, TarError> {
            match record(key.as_bytes()) {
                None => Ok(None),
                Some(v) => pax_decimal(v).map(Some).ok_or_else(|| {
                    bad(format!(
                        "malformed PAX {key} {:?}",
                        String::from_utf8_lossy(v)
                    ))
                }),
            }
        };
        let stored = decimal("size")?.unwrap_or(stored);
        let field = |name: &str, raw: &[u8]| {
            numeric(raw).ok_or_else(|| bad(format!("malformed {name} field")))
        };
        let id = |name: &str, raw: &[u8]| -> Result<u32, TarError> {
            let v = match decimal(name)? {
                Some(v) => i128::from(v),
                None => field(name, raw)?,
            };
            u32::try_from(v).map_err(|_| bad(format!("{name} {v} does not fit 32 bits")))
        };
        let uid = id("uid", &old.uid)?;
        let gid = id("gid", &old.gid)?;
        let (mtime, mtime_nsec) = match record(b"mtime") {
            Some(v) => pax_time(v).ok_or_else(|| {
                bad(format!(
                    "malformed PAX mtime {:?}",
                    String::from_utf8_lossy(v)
                ))
            })?,
            None => {
                let v = field("mtime", &old.mtime)?;
                let secs = i64::try_from(v).map_err(|_| bad(format!("mtime {v} out of range")))?;
                (secs, 0)
            }
        };
        let perm = u32::try_from(field("mode", &old.mode)? & 0o7777).expect("masked");
        let typeflag = old.linkflag[0];
        let mut layout = Layout::Plain;
        let kind = match typeflag {
            b'0' | 0 | b'7' if path.ends_with(b"/") => MemberKind::Dir,
            b'0' | 0 | b'7' => MemberKind::File,
            b'1' => MemberKind::HardLink,
            b'2' => MemberKind::Symlink,
            b'3' => MemberKind::CharDevice,
            b'4' => MemberKind::BlockDevice,
            b'5' | b'D' => MemberKind::Dir,
            b'6' => MemberKind::Fifo,
            b'S' => {
                let gnu = header
                    .as_gnu()
                    .ok_or_else(|| bad("a GNU sparse entry without a GNU header".into()))?;
                let real = field("sparse real size", &gnu.realsize)?;
                let real = u64::try_from(real)
                    .map_err(|_| bad(format!("sparse real size {real} out of range")))?;
                let mut segments = Vec::new();
                push_segments(&mut segments, &gnu.sparse).map_err(&bad)?;
                let mut more = gnu.isextended[0] != 0;
                while more {
                    let ext_at = self.pos;
                    let Some(block) = self.block()? else {
                        return Err(bad(format!(
                            "the stream ends at byte {ext_at}, inside the sparse map"
                        )));
                    };
                    let mut ext = tar::GnuExtSparseHeader::new();
                    ext.as_mut_bytes().copy_from_slice(&block);
                    push_segments(&mut segments, &ext.sparse).map_err(|what| {
                        bad(format!("sparse map block at byte {ext_at}: {what}"))
                    })?;
                    more = ext.isextended[0] != 0;
                }
                layout = Layout::Sparse(segments, real);
                MemberKind::File
            }
            other => {
                // POSIX: an unknown type is read as a regular file.
                log::warn!(
                    "tar entry {entry:?} at byte {at}: unknown type {:?}, taken as a regular file",
                    char::from(other)
                );
                MemberKind::File
            }
        };
        if kind == MemberKind::File {
            if let Some(sparse) = pax_sparse(&records, &ext.pax, &bad)? {
                if let Some(name) = record(b"GNU.sparse.name") {
                    path = name.to_vec();
                }
                layout = sparse;
            }
        }
        let (mut major, mut minor) = (0, 0);
        if matches!(kind, MemberKind::CharDevice | MemberKind::BlockDevice) {
            let (raw_major, raw_minor) = match (header.as_ustar(), header.as_gnu()) {
                (Some(u), _) => (Some(u.dev_major), Some(u.dev_minor)),
                (None, Some(g)) => (Some(g.dev_major), Some(g.dev_minor)),
                (None, None) => (None, None),
            };
            let dev = |name: &str, raw: Option<[u8; 8]>| -> Result<u64, TarError> {
                if let Some(v) = decimal(&format!("SCHILY.{name}"))? {
                    return Ok(v);
                }
                let v = raw.map_or(Ok(0), |r| field(name, &r))?;
                u64::try_from(v).map_err(|_| bad(format!("{name} {v} out of range")))
            };
            major = dev("devmajor", raw_major)?;
            minor = dev("devminor", raw_minor)?;
        }
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (key, value) in &records {
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.retain(|(n, _)| n != name);
                xattrs.push((name.to_vec(), value.clone()));
            }
        }
        xattrs.sort();

        let (segments, size, stored_left) = match layout {
            Layout::Plain if kind == MemberKind::File => (vec![(0, stored)], stored, stored),
            Layout::Plain => (Vec::new(), 0, stored),
            Layout::Sparse(segments, real) => (segments, real, stored),
            Layout::MapInData(real) => {
                let (segments, map_bytes) = self.data_map(at, &entry, stored)?;
                (segments, real, stored - map_bytes)
            }
        };
        if kind == MemberKind::File {
            check_segments(&segments, size, stored_left).map_err(&bad)?;
        }
        self.current = Some(Current {
            entry: entry.clone(),
            header_at: at,
            stored_left,
            pad: padding(stored),
            segments,
            size,
            read: 0,
            segment: 0,
        });
        Ok(Member {
            header_at: at,
            path,
            link,
            kind,
            perm,
            uid,
            gid,
            mtime,
            mtime_nsec,
            major,
            minor,
            size,
            xattrs,
        })
    }

    /// Reads the segment map that opens the data of a PAX sparse 1.0 member: decimal
    /// numbers, one a line (the count, then offset and size of each segment), padded to
    /// a block. Returns the segments and the bytes the map took.
    fn data_map(
        &mut self,
        at: u64,
        entry: &str,
        stored: u64,
    ) -> Result<(Vec<(u64, u64)>, u64), TarError> {
        let bad = |what: String| TarError::Entry {
            entry: entry.to_string(),
            at,
            what,
        };
        let mut numbers: Vec<u64> = Vec::new();
        let mut want: Option<usize> = None;
        let mut partial: Vec<u8> = Vec::new();
        let mut used = 0u64;
        while want.is_none_or(|w| numbers.len() < w) {
            if used + BLOCK > stored {
                return Err(bad("the sparse map runs past the entry's data".into()));
            }
            let Some(block) = self.block()? else {
                return Err(bad(format!(
                    "the stream ends at byte {}, inside the sparse map",
                    self.pos
                )));
            };
            used += BLOCK;
            for &b in &block {
                if want.is_some_and(|w| numbers.len() >= w) {
                    break;
                }
                if b != b'\n' {
                    if !b.is_ascii_digit() || partial.len() > 20 {
                        return Err(bad("malformed sparse map in the entry's data".into()));
                    }
                    partial.push(b);
                    continue;
                }
                let n = pax_decimal(&partial)
                    .ok_or_else(|| bad("malformed sparse map in the entry's data".into()))?;
                partial.clear();
                match want {
                    None => match usize::try_from(n) {
                        Ok(n) if n <= MAX_SEGMENTS => want = Some(2 * n),
                        _ => return Err(bad(format!("sparse map of {n} segments"))),
                    },
                    Some(_) => numbers.push(n),
                }
            }
        }
        Ok((numbers.chunks(2).map(|p| (p[0], p[1])).collect(), used))
    }

    /// Appends the next `len` bytes of the current member's expanded data to `out`.
    ///
    /// # Panics
    /// If there is no current member or it has fewer than `len` bytes left.
    pub fn read_data(&mut self, out: &mut Vec<u8>, len: usize) -> Result<(), TarError> {
        let mut cur = self.current.take().expect("a member is being read");
        let result = self.read_into(&mut cur, out, len);
        self.current = Some(cur);
        result
    }

    fn read_into(
        &mut self,
        cur: &mut Current,
        out: &mut Vec<u8>,
        len: usize,
    ) -> Result<(), TarError> {
        let end = cur.read + len as u64;
        assert!(end <= cur.size, "read past the member's data");
        while cur.read < end {
            while cur
                .segments
                .get(cur.segment)
                .is_some_and(|&(o, l)| cur.read >= o + l)
            {
                cur.segment += 1;
            }
            let (start, seg_end) = match cur.segments.get(cur.segment) {
                Some(&(o, l)) => (o, o + l),
                None => (cur.size, cur.size),
            };
            if cur.read < start {
                // A hole: zeros up to the next segment.
                let n = (start.min(end) - cur.read) as usize;
                out.resize(out.len() + n, 0);
                cur.read += n as u64;
                continue;
            }
            let n = seg_end.min(end) - cur.read;
            let context = || format!("entry {:?} (header at byte {})", cur.entry, cur.header_at);
            let before = out.len();
            let got = (&mut self.inner)
                .take(n)
                .read_to_end(out)
                .map_err(|source| TarError::Read {
                    context: context(),
                    pos: self.pos + (out.len() - before) as u64,
                    source,
                })?;
            self.pos += got as u64;
            cur.stored_left -= got as u64;
            cur.read += got as u64;
            if (got as u64) < n {
                return Err(TarError::Entry {
                    entry: cur.entry.clone(),
                    at: cur.header_at,
                    what: format!(
                        "the stream ends at byte {}, {} bytes short of the entry's data",
                        self.pos, cur.stored_left
                    ),
                });
            }
        }
        Ok(())
    }

    /// After the end of the archive: reads the rest of the stream without looking at it,
    /// so that a writer on the other side of a FIFO is never cut off and a compressed
    /// stream's trailer is checked. Returns the bytes drained.
    pub fn finish(&mut self) -> Result<u64, TarError> {
        self.skip_current()?;
        let at = self.pos;
        let context = || format!("the stream after the end of the archive at byte {at}");
        self.skip(u64::MAX, &context)
    }
}

/// The value of PAX record `key` in `records` (the last one given); empty values mean "not
/// given".
fn lookup<'a>(records: &'a [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'a [u8]> {
    records
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
        .filter(|v| !v.is_empty())
}

/// The layout PAX sparse records give a regular file (formats 0.0, 0.1 and 1.0), or None
/// if it has none. `records` are all in force, `own` the member's own (0.0 lists its map
/// as repeated records).
fn pax_sparse(
    records: &[(Vec<u8>, Vec<u8>)],
    own: &[(Vec<u8>, Vec<u8>)],
    bad: &dyn Fn(String) -> TarError,
) -> Result<Option<Layout>, TarError> {
    let number = |key: &str| -> Result<Option<u64>, TarError> {
        match lookup(records, key.as_bytes()) {
            None => Ok(None),
            Some(v) => pax_decimal(v).map(Some).ok_or_else(|| {
                bad(format!(
                    "malformed PAX {key} {:?}",
                    String::from_utf8_lossy(v)
                ))
            }),
        }
    };
    if let Some(major) = number("GNU.sparse.major")? {
        let minor = number("GNU.sparse.minor")?.unwrap_or(0);
        if (major, minor) != (1, 0) {
            return Err(bad(format!(
                "PAX sparse format {major}.{minor} is not supported"
            )));
        }
        let real = number("GNU.sparse.realsize")?
            .ok_or_else(|| bad("PAX sparse 1.0 without GNU.sparse.realsize".into()))?;
        return Ok(Some(Layout::MapInData(real)));
    }
    let Some(real) = number("GNU.sparse.size")? else {
        return Ok(None);
    };
    let mut numbers = Vec::new();
    if let Some(map) = lookup(records, b"GNU.sparse.map") {
        for part in map.split(|&b| b == b',') {
            numbers
                .push(pax_decimal(part).ok_or_else(|| bad("malformed PAX GNU.sparse.map".into()))?);
        }
    } else {
        // 0.0: offset and numbytes records alternate, in order.
        for (key, value) in own {
            if key == b"GNU.sparse.offset" || key == b"GNU.sparse.numbytes" {
                let want_offset = numbers.len() % 2 == 0;
                if want_offset != (key == b"GNU.sparse.offset") {
                    return Err(bad("PAX GNU.sparse.offset and numbytes out of order".into()));
                }
                numbers
                    .push(pax_decimal(value).ok_or_else(|| {
                        bad("malformed PAX GNU.sparse.offset or numbytes".into())
                    })?);
            }
        }
    }
    if numbers.len() % 2 != 0 || numbers.len() / 2 > MAX_SEGMENTS {
        return Err(bad(format!(
            "PAX sparse map of {} numbers is not a list of (offset, size) pairs",
            numbers.len()
        )));
    }
    if let Some(count) = number("GNU.sparse.numblocks")? {
        if count != (numbers.len() / 2) as u64 {
            return Err(bad(format!(
                "PAX sparse map lists {} blocks, GNU.sparse.numblocks says {count}",
                numbers.len() / 2
            )));
        }
    }
    let segments = numbers.chunks(2).map(|p| (p[0], p[1])).collect();
    Ok(Some(Layout::Sparse(segments, real)))
}

/// Bytes of padding after `size` bytes of data, to the next block.
fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// `data` up to its first NUL.
fn until_nul(data: &[u8]) -> &[u8] {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    &data[..end]
}

/// Checks a header block's checksum: the sum of its bytes with the checksum field read
/// as spaces (unsigned, or signed as some old writers summed).
fn check_sum(block: &[u8; 512]) -> Result<(), String> {
    let field = &block[148..156];
    let Some(want) = numeric(field) else {
        return Err("malformed checksum field: not a tar header".into());
    };
    let spaces = 8 * i128::from(b' ');
    let rest = block[..148].iter().chain(&block[156..]);
    let unsigned: i128 = rest.clone().map(|&b| i128::from(b)).sum::<i128>() + spaces;
    let signed: i128 = rest.map(|&b| i128::from(b as i8)).sum::<i128>() + spaces;
    if want == unsigned || want == signed {
        return Ok(());
    }
    Err(format!(
        "checksum mismatch: the header says {want}, its bytes sum to {unsigned}"
    ))
}

/// Adds the used entries of a GNU sparse map (up to the first empty one).
fn push_segments(
    segments: &mut Vec<(u64, u64)>,
    entries: &[tar::GnuSparseHeader],
) -> Result<(), String> {
    for e in entries {
        if e.offset.iter().all(|&b| b == 0) && e.numbytes.iter().all(|&b| b == 0) {
            break;
        }
        let parse = |raw: &[u8], what: &str| {
            numeric(raw)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| format!("malformed sparse map {what}"))
        };
        segments.push((parse(&e.offset, "offset")?, parse(&e.numbytes, "size")?));
        if segments.len() > MAX_SEGMENTS {
            return Err(format!("sparse map of more than {MAX_SEGMENTS} segments"));
        }
    }
    Ok(())
}

/// Checks that sparse segments are in order, do not overlap, lie within `size` and hold
/// exactly the `stored` bytes.
fn check_segments(segments: &[(u64, u64)], size: u64, stored: u64) -> Result<(), String> {
    let mut end = 0u64;
    let mut total = 0u64;
    for &(offset, len) in segments {
        if offset < end {
            return Err(format!(
                "sparse segment at {offset} overlaps or precedes the one before it"
            ));
        }
        end = offset
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                format!(
                    "sparse segment at {offset} of {len} bytes runs past the file's {size} bytes"
                )
            })?;
        total = total.saturating_add(len);
    }
    if total != stored {
        return Err(format!(
            "the sparse map lists {total} bytes of data, the entry stores {stored}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_must_be_ordered_within_the_file_and_add_up() {
        assert!(check_segments(&[(0, 10), (100, 5), (200, 0)], 200, 15).is_ok());
        assert!(check_segments(&[], 0, 0).is_ok());
        type Case<'a> = (&'a [(u64, u64)], u64, u64, &'a str);
        let cases: [Case; 4] = [
            (&[(0, 10), (5, 5)], 100, 15, "overlaps"),
            (&[(0, 10), (95, 10)], 100, 20, "runs past"),
            (&[(0, 10)], 100, 11, "lists 10 bytes"),
            (&[(u64::MAX, 2)], u64::MAX, 2, "runs past"),
        ];
        for (segments, size, stored, what) in cases {
            let err = check_segments(segments, size, stored).unwrap_err();
            assert!(err.contains(what), "{segments:?}: {err}");
        }
    }

    #[test]
    fn padding_reaches_the_next_block() {
        assert_eq!([0, 1, 511, 512, 513].map(padding), [0, 511, 1, 0, 511]);
    }
}
