//! RFC 3339 times, as the TOC's `modtime` holds them.

use thiserror::Error;

/// A time that is not RFC 3339 (or not one this parser takes: see [`parse_rfc3339`]).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{found:?} is not an RFC 3339 time")]
pub struct TimeError {
    /// The text given.
    pub found: String,
}

/// Seconds since the epoch of an RFC 3339 time (`2024-01-02T03:04:05Z`, optionally with
/// fractional seconds, which are rounded away as the eStargz writer does, and a `±HH:MM`
/// offset). Empty means the epoch.
pub fn parse_rfc3339(s: &str) -> Result<i64, TimeError> {
    if s.is_empty() {
        return Ok(0);
    }
    let err = || TimeError {
        found: s.to_string(),
    };
    let b = s.as_bytes();
    if !s.is_ascii()
        || b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
    {
        return Err(err());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(err());
    }
    let num = |from: usize, to: usize| -> Result<i64, TimeError> {
        let part = &s[from..to];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse::<i64>().map_err(|_| err())
        } else {
            Err(err())
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, min, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(err());
    }
    let mut rest = &s[19..];
    let mut round_up = false;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(err());
        }
        round_up = frac.as_bytes()[0] >= b'5';
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') && &rest[3..4] == ":" => {
            let h: i64 = rest[1..3].parse().map_err(|_| err())?;
            let m: i64 = rest[4..6].parse().map_err(|_| err())?;
            let v = h * 3600 + m * 60;
            if rest.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return Err(err()),
    };
    // Days from 1970-01-01 to the date (proleptic Gregorian calendar).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hour * 3600 + min * 60 + sec - offset + round_up as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339(""), Ok(0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Ok(951_868_800));
        assert_eq!(parse_rfc3339("2026-11-27T20:31:24Z"), Ok(1_795_811_484));
        assert_eq!(
            parse_rfc3339("2026-11-27T21:31:24+01:00"),
            Ok(1_795_811_484)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Ok(-1));
        assert_eq!(parse_rfc3339("2026-11-27T20:31:23.6Z"), Ok(1_795_811_484));
        for bad in [
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-11-27T20:31:24",
            "2026-11-27T20:31:24.Z",
            "2026-11-27T10:31:2\u{4a5}Z", // found by fuzzing: a multi-byte character
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
