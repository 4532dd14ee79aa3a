//! The command line.

use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    Open,
    Closed,
    E2e,
    Cancel,
}

/// HTTP load generator: open-loop constant rate, closed-loop max throughput (both with
/// `--stream`: time to first token and to [DONE]), accept-to-ClickHouse timing, or
/// disconnect-to-provider-cancel timing.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
pub(crate) struct Args {
    #[arg(long, value_enum, default_value = "open")]
    mode: Mode,
    /// Where to POST, e.g. http://127.0.0.1:18180/v1/chat/completions.
    #[arg(long)]
    url: String,
    /// Sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "LOADGEN_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Request body: JSON text, or @path to read it from a file.
    #[arg(
        long,
        default_value = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}"#
    )]
    body: String,
    /// Requests per second (open mode).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Measured time, after the warmup: "15s", "500ms", "2m" or seconds.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Open mode: most requests outstanding at once (default 1000); closed mode: connections
    /// (default 32). Ignored in e2e mode.
    #[arg(long)]
    concurrency: Option<usize>,
    /// The status that counts as success; others are counted by status.
    #[arg(long, default_value_t = 200)]
    expect_status: u16,
    /// Load sent before the measured time at the same rate or concurrency; not recorded.
    /// Not used in e2e mode.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// A request (or, in e2e mode, a wait for its row) failing after this long is an error.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Print one JSON line on stdout; the summary goes to stderr.
    #[arg(long)]
    json: bool,
    /// Print answers per second to stderr every second (open and closed modes): shows a
    /// throughput that changes during the run.
    #[arg(long)]
    progress: bool,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// e2e mode: ClickHouse HTTP endpoint.
    #[arg(long, default_value = "http://127.0.0.1:18123")]
    clickhouse_url: String,
    /// e2e mode: the database the analytics sink writes to.
    #[arg(long, default_value = "sluice_bench")]
    database: String,
    /// e2e and cancel modes: requests to time.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Read answers as server-sent events: time to first token and to `[DONE]`. Implied by a
    /// body with `"stream": true`.
    #[arg(long)]
    stream: bool,
    /// Cancel mode: close the connection after this many SSE `data:` events.
    #[arg(long, default_value_t = 5)]
    disconnect_after: u32,
    /// Cancel mode: where the relay listens (the worker's provider base URL must point here).
    #[arg(long)]
    relay_listen: Option<std::net::SocketAddr>,
    /// Cancel mode: the provider the relay forwards to.
    #[arg(long)]
    relay_upstream: Option<std::net::SocketAddr>,
}

/// "15s", "500ms", "2m", "1.5s" or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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
    use super::*;

    #[test]
    fn durations_parse_with_or_without_a_unit() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
