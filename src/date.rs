//! Calendar dates as whole days since 1970-01-01.
//!
//! Policies only need `YYYY-MM-DD` and day differences (`days_since`, `days_until`,
//! tenure), so a proleptic-Gregorian day count is all there is; no time zones, no clock.

/// Parses a strict `YYYY-MM-DD` date and returns its day number (1970-01-01 is 0).
pub fn parse_days(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter().try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's `days_from_civil`: exact for every Gregorian date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day) of a day number.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` of a day number.
pub fn format_days(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(parse_days("1970-01-01"), Some(0));
        assert_eq!(parse_days("2000-03-01"), Some(11017));
        assert_eq!(
            parse_days("2026-11-01").zip(parse_days("2025-11-01")).map(|(a, b)| a - b),
            Some(365)
        );
        assert_eq!(
            parse_days("2024-02-29").zip(parse_days("2024-03-01")).map(|(a, b)| b - a),
            Some(1)
        );
    }

    #[test]
    fn day_numbers_round_trip() {
        for day in [-719_162, -1, 0, 59, 60, 11_017, 20_393, 2_932_896] {
            assert_eq!(parse_days(&format_days(day)), Some(day), "{day}");
        }
    }

    #[test]
    fn rejects_bad_dates() {
        for s in [
            "2023-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "26-01-01",
            "2026-01-32",
            "2026/01/01",
            "２０２６-01-01",
        ] {
            assert_eq!(parse_days(s), None, "{s}");
        }
    }
}
