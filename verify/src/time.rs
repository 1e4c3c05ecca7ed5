//! Modification times as differences hold them (`SECONDS.NANOSECONDS`) and as they are
//! shown (UTC dates), with our own civil-date arithmetic.

/// An mtime as a difference holds it (`SECONDS.NANOSECONDS`), or `None`.
pub fn parse_mtime(value: &str) -> Option<(i64, u32)> {
    let (secs, nsec) = value.split_once('.')?;
    Some((secs.parse().ok()?, nsec.parse().ok()?))
}

pub(crate) fn exact_mtime(secs: i64, nsec: u32) -> String {
    format!("{secs}.{nsec:09}")
}

/// A time as UTC, `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (proleptic Gregorian calendar; years
/// before 1 or after 9999 get a sign or more digits).
pub fn utc(secs: i64, nsec: u32) -> String {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nsec:09}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The Gregorian date `days` after 1970-01-01: count in 400-year eras (146,097 days
/// each) from 0000-03-01, so that a leap day ends each year of the count; then the year
/// of the era, the day of that March-based year, and its month (153 days per 5 months).
pub(crate) fn civil_date(days: i64) -> (i64, u32, u32) {
    // 0000-03-01 is 719,468 days before 1970-01-01. i128: no overflow for any i64 input.
    let z = days as i128 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + (month <= 2) as i128;
    (year as i64, month as u32, day as u32)
}
