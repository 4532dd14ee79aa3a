//! What the benchmark binaries (`loadgen`, `kafka-floor`) share: durations on the command
//! line, microsecond HDR histograms, millisecond figures, the process's own CPU time.

use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;

/// Longest latency the histograms hold (larger values are clamped to it): one hour, in µs.
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// A latency histogram: 1 µs to an hour, 3 significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).context("histogram bounds")
}

/// Whole microseconds, at least 1 (the histograms' lowest value).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Microseconds as milliseconds with three decimals.
pub fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// This process's user + system CPU time, from /proc/self/stat (Linux only).
pub fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// "15s", "500ms", "2m", "1.5s" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 15s or 500ms"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{micros, ms, parse_duration};

    #[test]
    fn durations_parse_with_or_without_a_unit() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn figures_are_whole_microseconds_printed_as_milliseconds() {
        assert_eq!(micros(Duration::ZERO), 1);
        assert_eq!(micros(Duration::from_nanos(2_500)), 2);
        assert!((ms(1_234_567) - 1234.567).abs() < 1e-9);
    }
}
