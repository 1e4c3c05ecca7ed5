//! The values inside tar headers, parsed exactly: numeric header fields (octal, or GNU's
//! base-256 for values octal cannot hold, negative ones included), PAX extended header
//! records (`LENGTH KEY=VALUE\n`, where the length, not a newline, ends a record, so values
//! may hold newlines and any byte) and PAX decimal numbers and times (`-12.5`, to the
//! nanosecond).

/// PAX records: (key, value) in the order given.
pub(crate) type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// A malformed PAX record: where in the extended header's data, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordError {
    /// Byte offset of the record in the extended header's data.
    pub at: usize,
    /// What is wrong with it.
    pub what: &'static str,
}

/// The records of a PAX extended header, in order: (key, value). Trailing NUL padding is
/// tolerated; anything else that is not a whole record is an error.
pub(crate) fn pax_records(data: &[u8]) -> Result<Records, RecordError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let rest = &data[at..];
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let err = |what| RecordError { at, what };
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || rest.get(digits) != Some(&b' ') {
            return Err(err(
                "a record must start with its decimal length and a space",
            ));
        }
        let len: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("record length out of range"))?;
        if len <= digits + 1 || len > rest.len() {
            return Err(err("record length runs past the extended header's data"));
        }
        let record = &rest[digits + 1..len];
        let Some((&b'\n', body)) = record.split_last() else {
            return Err(err(
                "record does not end with a newline where its length says",
            ));
        };
        let Some(eq) = body.iter().position(|&b| b == b'=') else {
            return Err(err("record has no '='"));
        };
        if eq == 0 {
            return Err(err("record has an empty key"));
        }
        out.push((body[..eq].to_vec(), body[eq + 1..].to_vec()));
        at += len;
    }
    Ok(out)
}

/// A numeric header field: octal digits (leading spaces, ending in a space or NUL, all
/// blank meaning 0), or GNU's base-256 form (first byte's top bit set; the next bit is
/// the sign of a big-endian two's complement number). None if malformed.
pub(crate) fn numeric(field: &[u8]) -> Option<i128> {
    let (&first, rest) = field.split_first()?;
    if first & 0x80 != 0 {
        if field.len() > 12 {
            return None;
        }
        // Sign-extend the 7 bits of the first byte, then shift in the rest.
        let mut v = i128::from(first & 0x7f);
        if first & 0x40 != 0 {
            v -= 0x80;
        }
        for &b in rest {
            v = v.checked_mul(256)?.checked_add(i128::from(b))?;
        }
        return Some(v);
    }
    let body = field.iter().skip_while(|&&b| b == b' ');
    let mut v: i128 = 0;
    let mut ended = false;
    for &b in body {
        match b {
            b'0'..=b'7' if !ended => v = v.checked_mul(8)?.checked_add(i128::from(b - b'0'))?,
            b' ' | 0 => ended = true,
            _ => return None,
        }
    }
    Some(v)
}

/// A PAX decimal value (`size`, `uid`, ...): digits only. None if malformed.
pub(crate) fn pax_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A PAX time (`mtime`): `[-]SECONDS[.FRACTION]`, as (seconds, nanoseconds) rounded
/// down to the nanosecond: `-1.25` is (-2, 750000000). None if malformed or out of
/// range.
pub(crate) fn pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let (negative, digits) = match value.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, value),
    };
    let (whole, fraction) = match digits.iter().position(|&b| b == b'.') {
        Some(dot) => (&digits[..dot], &digits[dot + 1..]),
        None => (digits, &[][..]),
    };
    if whole.is_empty() || !whole.iter().chain(fraction).all(u8::is_ascii_digit) {
        return None;
    }
    let secs: i64 = std::str::from_utf8(whole).ok()?.parse().ok()?;
    // Nanoseconds: the first nine digits of the fraction; the digits past them only
    // matter for rounding a negative time down.
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let d = fraction.get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + d;
    }
    let beyond = fraction.iter().skip(9).any(|&b| b != b'0');
    if !negative {
        return Some((secs, nanos));
    }
    // -S.F is -(S + 1) + (1 - .F) when the fraction is not zero.
    if nanos == 0 && !beyond {
        return Some((secs.checked_neg()?, 0));
    }
    let up = u32::from(beyond);
    let secs = secs.checked_neg()?.checked_sub(1)?;
    Some((secs, 1_000_000_000 - nanos - up))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_split_by_their_lengths_not_by_newlines() {
        let mut data = b"30 mtime=1700000000.123456789\n".to_vec();
        data.extend_from_slice(b"27 SCHILY.xattr.user.x=a\nb\n");
        data.extend_from_slice(b"24 SCHILY.xattr.user.e=\n");
        data.extend_from_slice(&[0; 11]);
        let records = pax_records(&data).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"mtime".to_vec(), b"1700000000.123456789".to_vec()),
            (b"SCHILY.xattr.user.x".to_vec(), b"a\nb".to_vec()),
            (b"SCHILY.xattr.user.e".to_vec(), b"".to_vec()),
        ];
        assert_eq!(records, want);
    }

    #[test]
    fn malformed_records_are_refused_where_they_start() {
        let cases: [(&[u8], usize, &str); 6] = [
            (b"x mtime=1\n", 0, "decimal length"),
            (b"11 mtime=1\n99 size=1\n", 11, "runs past"),
            (b"11 mtime=12", 0, "newline"),
            (b"8 mtime\n", 0, "'='"),
            (b"6 =ab\n", 0, "empty key"),
            (b"12 mtime=1\nX", 0, "newline"),
        ];
        for (data, at, what) in cases {
            let err = pax_records(data).expect_err(what);
            assert_eq!(err.at, at, "{:?}", String::from_utf8_lossy(data));
            assert!(err.what.contains(what), "{}: {}", what, err.what);
        }
    }

    #[test]
    fn numeric_fields_in_octal_and_base_256() {
        let cases: [(&[u8], Option<i128>); 10] = [
            (b"0000644\0", Some(0o644)),
            (b"  755 \0", Some(0o755)),
            (b"\0\0\0\0", Some(0)),
            (b"00000000017 ", Some(0o17)),
            (b"0008\0", None),
            (b"12 3\0", None),
            (&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], Some(256)),
            (&[0x80, 0, 0, 0, 0xee, 0x6b, 0x28, 0], Some(4_000_000_000)),
            (&[0xff; 12], Some(-1)),
            (
                &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xae, 0x80,
                ],
                Some(-86_400),
            ),
        ];
        for (field, want) in cases {
            assert_eq!(numeric(field), want, "{field:?}");
        }
    }

    #[test]
    fn pax_times_round_down_to_the_nanosecond() {
        let cases: [(&str, Option<(i64, u32)>); 11] = [
            ("1700000000", Some((1_700_000_000, 0))),
            ("1700000000.5", Some((1_700_000_000, 500_000_000))),
            ("1700000000.123456789", Some((1_700_000_000, 123_456_789))),
            ("1700000000.1234567891", Some((1_700_000_000, 123_456_789))),
            ("-86400", Some((-86_400, 0))),
            ("-86399.999999995", Some((-86_400, 5))),
            ("-1.25", Some((-2, 750_000_000))),
            ("-0.0000000001", Some((-1, 999_999_999))),
            ("1.", Some((1, 0))),
            ("", None),
            ("1e9", None),
        ];
        for (text, want) in cases {
            assert_eq!(pax_time(text.as_bytes()), want, "{text}");
        }
        assert_eq!(pax_decimal(b"4000000000"), Some(4_000_000_000));
        assert_eq!(pax_decimal(b"-1"), None);
        assert_eq!(pax_decimal(b""), None);
    }
}
