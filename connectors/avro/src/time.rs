//! Dates, times and timestamps between ISO 8601 text and Avro's numbers.
//!
//! Text output matches what the Postgres CDC source writes, so a value
//! round-trips unchanged: `1969-07-20`, `13:45:00.5`, `2024-05-01T12:00:00.5Z`
//! (fractions without trailing zeros; `Z` only for UTC instants).

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date")
}

/// `YYYY-MM-DD` to days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<i32> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    i32::try_from(d.signed_duration_since(epoch()).num_days()).ok()
}

pub fn format_date(days: i32) -> Option<String> {
    let d = epoch().checked_add_signed(chrono::Duration::days(days.into()))?;
    Some(d.format("%Y-%m-%d").to_string())
}

/// `HH:MM:SS[.f]` to microseconds after midnight.
pub fn parse_time(s: &str) -> Option<i64> {
    let t = NaiveTime::parse_from_str(s, "%H:%M:%S%.f").ok()?;
    // Nanoseconds would be cut: refused instead.
    (t.nanosecond() % 1000 == 0)
        .then(|| i64::from(t.num_seconds_from_midnight()) * 1_000_000 + i64::from(t.nanosecond() / 1000))
}

pub fn format_time(micros: i64) -> String {
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    push_fraction(&mut s, frac as u32 * 1000);
    s
}

/// A timestamp to nanoseconds since the epoch. With `local`, the text has no
/// offset (`2024-05-01T12:00:00`); otherwise an offset is required, except that
/// text without one is taken as UTC. A space may stand for the `T`.
pub fn parse_timestamp(s: &str, local: bool) -> Option<i128> {
    let t: std::borrow::Cow<'_, str> =
        if s.as_bytes().get(10) == Some(&b' ') { s.replacen(' ', "T", 1).into() } else { s.into() };
    let naive = match DateTime::parse_from_rfc3339(&t) {
        Ok(dt) if !local => dt.naive_utc(),
        Ok(_) => return None,
        Err(_) => NaiveDateTime::parse_from_str(&t, "%Y-%m-%dT%H:%M:%S%.f").ok()?,
    };
    let utc = naive.and_utc();
    Some(i128::from(utc.timestamp()) * 1_000_000_000 + i128::from(utc.timestamp_subsec_nanos()))
}

pub fn format_timestamp(nanos: i128, local: bool) -> Option<String> {
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?;
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    let dt = DateTime::from_timestamp(secs, sub)?.naive_utc();
    let mut s = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
    push_fraction(&mut s, sub);
    if !local {
        s.push('Z');
    }
    Some(s)
}

/// `.5`, `.000123`, `.000000001`; nothing for whole seconds.
fn push_fraction(s: &mut String, nanos: u32) {
    if nanos == 0 {
        return;
    }
    let digits = format!("{nanos:09}");
    s.push('.');
    s.push_str(digits.trim_end_matches('0'));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_before_and_after_1970() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("1969-07-20"), Some(-165));
        assert_eq!(format_date(-165).as_deref(), Some("1969-07-20"));
        assert_eq!(format_date(-719_162).as_deref(), Some("0001-01-01"));
        assert_eq!(parse_date("2024-02-30"), None);
    }

    #[test]
    fn times_keep_their_fraction() {
        assert_eq!(parse_time("13:45:00.5"), Some(49_500_500_000));
        assert_eq!(format_time(49_500_500_000), "13:45:00.5");
        assert_eq!(format_time(1), "00:00:00.000001");
        assert_eq!(parse_time("25:00:00"), None);
    }

    #[test]
    fn timestamps_round_trip_in_the_cdc_form() {
        for (text, local) in [
            ("2024-05-01T12:00:00.5Z", false),
            ("1969-12-31T23:59:59.999999Z", false),
            ("1900-01-01T00:00:00Z", false),
            ("1969-12-31T23:59:59.999999", true),
        ] {
            let n = parse_timestamp(text, local).unwrap();
            assert_eq!(format_timestamp(n, local).as_deref(), Some(text));
        }
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.999999Z", false), Some(-1000));
        assert_eq!(parse_timestamp("2024-05-01 14:00:00+02:00", false), parse_timestamp("2024-05-01T12:00:00Z", false));
        assert_eq!(parse_timestamp("2024-05-01T12:00:00Z", true), None);
    }
}
