//! The command line.

use std::time::Duration;

use clap::{Parser, ValueEnum};
pub(crate) use sluice_tests::bench::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    Open,
    Closed,
    E2e,
    Cancel,
    Serial,
}

/// HTTP load generator: open-loop constant rate, closed-loop max throughput (both with
/// `--stream`: time to first token and to [DONE]), accept-to-ClickHouse timing,
/// disconnect-to-provider-cancel timing, or (serial) each chunk's provider-to-client delay.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
pub(crate) struct Args {
    #[arg(long, value_enum, default_value = "open")]
    pub(crate) mode: Mode,
    /// Where to POST, e.g. http://127.0.0.1:18180/v1/chat/completions.
    #[arg(long)]
    pub(crate) url: String,
    /// Sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "LOADGEN_KEY", hide_env_values = true)]
    pub(crate) key: Option<String>,
    /// Request body: JSON text, or @path to read it from a file.
    #[arg(
        long,
        default_value = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}"#
    )]
    pub(crate) body: String,
    /// Requests per second (open mode).
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Measured time, after the warmup: "15s", "500ms", "2m" or seconds.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) duration: Duration,
    /// Open mode: most requests outstanding at once (default 1000); closed mode: connections
    /// (default 32). Ignored in e2e mode.
    #[arg(long)]
    pub(crate) concurrency: Option<usize>,
    /// The status that counts as success; others are counted by status.
    #[arg(long, default_value_t = 200)]
    pub(crate) expect_status: u16,
    /// Load sent before the measured time at the same rate or concurrency; not recorded.
    /// Not used in e2e mode.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub(crate) warmup: Duration,
    /// A request (or, in e2e mode, a wait for its row) failing after this long is an error.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub(crate) timeout: Duration,
    /// Print one JSON line on stdout; the summary goes to stderr.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print answers per second to stderr every second (open and closed modes): shows a
    /// throughput that changes during the run.
    #[arg(long)]
    pub(crate) progress: bool,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// e2e mode: ClickHouse HTTP endpoint.
    #[arg(long, default_value = "http://127.0.0.1:18123")]
    pub(crate) clickhouse_url: String,
    /// e2e mode: the database the analytics sink writes to.
    #[arg(long, default_value = "sluice_bench")]
    pub(crate) database: String,
    /// e2e, cancel and serial modes: requests to time.
    #[arg(long, default_value_t = 50)]
    pub(crate) samples: usize,
    /// Read answers as server-sent events: time to first token and to `[DONE]`. Implied by a
    /// body with `"stream": true`.
    #[arg(long)]
    pub(crate) stream: bool,
    /// Cancel mode: close the connection after this many SSE `data:` events.
    #[arg(long, default_value_t = 5)]
    pub(crate) disconnect_after: u32,
    /// Cancel and serial modes: where the relay listens (the worker's provider base URL must point here).
    #[arg(long)]
    pub(crate) relay_listen: Option<std::net::SocketAddr>,
    /// Cancel and serial modes: the provider the relay forwards to.
    #[arg(long)]
    pub(crate) relay_upstream: Option<std::net::SocketAddr>,
}
