//! Budget periods: UTC calendar days and months, and how their boundaries are written.

use crate::config::Period;

const DAY_MS: i64 = 86_400_000;

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// Start (ms since the epoch, UTC) of the period containing `at_ms`.
    pub fn start_ms(self, at_ms: i64) -> i64 {
        let day = at_ms.div_euclid(DAY_MS) * DAY_MS;
        match self {
            Period::Day => day,
            Period::Month => month_start(at_ms, 0).unwrap_or(day),
        }
    }

    /// Start of the period after the one containing `at_ms` (when a budget resets).
    pub fn end_ms(self, at_ms: i64) -> i64 {
        let day = at_ms.div_euclid(DAY_MS) * DAY_MS;
        match self {
            Period::Day => day + DAY_MS,
            Period::Month => month_start(at_ms, 1).unwrap_or(day + DAY_MS),
        }
    }
}

/// Midnight UTC on the first day of the month containing `at_ms`, or of the next month
/// (`ahead` = 1). None only for instants outside years ±9999.
fn month_start(at_ms: i64, ahead: u8) -> Option<i64> {
    let date = time::OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
        .ok()?
        .date();
    let (mut year, mut month) = (date.year(), date.month());
    for _ in 0..ahead {
        if month == time::Month::December {
            year += 1;
        }
        month = month.next();
    }
    let first = time::Date::from_calendar_date(year, month, 1).ok()?;
    Some(first.midnight().assume_utc().unix_timestamp() * 1000)
}

/// `2026-12-01T00:00:00Z` for a period boundary.
pub fn format_utc(ms: i64) -> String {
    sluice_schemas::rfc3339(ms, false)
}
