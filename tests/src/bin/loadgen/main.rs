//! Load generator for Sluice's benchmarks (scripts/bench.sh runs it; docs/benchmarks.md has
//! the figures). Three modes:
//!
//! - `open`: constant rate. Request i is scheduled at t0 + i/rate whether or not earlier
//!   ones have answered, and its latency is measured from that scheduled time, so a server
//!   that stalls is charged for the queueing it causes (no coordinated omission). Requests
//!   outstanding are capped by `--concurrency`; what the cap refuses is counted as `dropped`.
//! - `closed`: `--concurrency` connections, each sending its next request as soon as the
//!   previous one answered: maximum throughput, latency measured per request.
//! - `e2e`: one async request at a time, then polls ClickHouse every 20 ms until its usage row
//!   is visible: accept-to-analytics time.
//! - `cancel`: one streamed request at a time, dropped after `--disconnect-after` SSE events;
//!   a TCP relay in this process (`--relay-listen`, forwarding to `--relay-upstream`) sits
//!   in front of the provider and times when the worker closes its provider connection.
//! - `serial`: one streamed request at a time through the same relay, which notes when each
//!   content event leaves the provider; the client notes when it arrives: each chunk's
//!   provider-to-client delay, and the gaps between chunks (a chunk held back by Nagle's
//!   algorithm and a delayed ACK shows as a ~40 ms delay).
//!
//! With `--stream` (or a body with `"stream": true`) open and closed modes read each answer
//! as server-sent events and record two latencies: to the first `data:` event whose
//! `choices[0].delta.content` is a non-empty string (time to first token; the role-only first
//! chunk does not count), and to `data: [DONE]` (the whole stream; the usual `p50_ms`...).
//! A stream that ends without `[DONE]` counts as error `no_done`, an error event as
//! `stream_error`.
//!
//! `loadgen --mode open --url http://127.0.0.1:18180/v1/requests --key sk-sluice-demo
//!  --rate 5000 --duration 15s --expect-status 202 --json`
//!
//! Latencies are HDR histograms with microsecond resolution. `--json` prints one JSON line
//! on stdout (the human-readable summary then goes to stderr).

#![expect(clippy::print_stdout, reason = "printing figures is this binary's job")]

mod args;
mod report;
mod scenarios;
mod serial;
mod target;

use std::sync::Arc;

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use clap::Parser;
use serde_json::{json, Value};

use crate::args::{Args, Mode};
use crate::report::{own_cpu_seconds, round3, Report};
use crate::scenarios::{cancel, closed_loop, e2e, open_loop};
use crate::serial::serial;
use crate::target::{client, headers, Target};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = runtime.enable_all().build().context("starting tokio")?;
    let report = runtime.block_on(run(&args))?;
    if args.json {
        eprintln!("{}", report.summary);
        println!("{}", report.json);
    } else {
        println!("{}", report.summary);
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    if !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--rate must be a positive number");
    }
    let body = match args.body.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("reading --body {path}"))?,
        None => args.body.clone().into_bytes(),
    };
    let stream = args.stream
        || matches!(args.mode, Mode::Cancel | Mode::Serial)
        || serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["stream"] == json!(true));
    let target = Target {
        url: args.url.clone(),
        headers: headers(args.key.as_deref())?,
        // Bytes: every request shares the one buffer.
        body: Bytes::from(body),
        expect: args.expect_status,
        stream,
        record_content: args.mode == Mode::Serial,
    };
    let cpu_before = own_cpu_seconds();
    let mut report = match args.mode {
        Mode::Open => {
            let cap = args.concurrency.unwrap_or(1000).max(1);
            open_loop(args, &client(args, cap)?, Arc::new(target), cap).await?
        }
        Mode::Closed => {
            let connections = args.concurrency.unwrap_or(32).max(1);
            closed_loop(
                args,
                &client(args, connections)?,
                Arc::new(target),
                connections,
            )
            .await?
        }
        Mode::E2e => e2e(args, &client(args, 4)?, &target).await?,
        Mode::Cancel => cancel(args, &client(args, 4)?, &target).await?,
        Mode::Serial => serial(args, &client(args, 4)?, &target).await?,
    };
    if let (Some(before), Some(after)) = (cpu_before, own_cpu_seconds()) {
        report.json["loadgen_cpu_s"] = json!(round3(after - before));
        report.summary += &format!("\nloadgen's own CPU: {:.1} s", after - before);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use crate::scenarios::request_id;
    use crate::target::{classify, ContentScanner, Event};

    #[test]
    fn the_relay_counts_content_events_across_reads_and_chunk_framing() {
        let mut scanner = ContentScanner::default();
        let role = b"5a\r\ndata: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\r\n";
        assert_eq!(scanner.feed(role), 0);
        assert_eq!(
            scanner.feed(b"30\r\ndata: {\"choices\":[{\"delta\":{\"cont"),
            0
        );
        assert_eq!(scanner.feed(b"ent\":\"hi\"}}]}\n\n\r\n"), 1);
        let two = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(scanner.feed(two), 2);
    }

    #[test]
    fn sse_events_are_classified() {
        assert_eq!(classify(b"[DONE]"), Event::Done);
        let role = br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(classify(role), Event::Other);
        let content = br#"{"choices":[{"index":0,"delta":{"content":"hi"}}]}"#;
        assert_eq!(classify(content), Event::Content);
        assert_eq!(classify(br#"{"error":{"message":"x"}}"#), Event::Error);
        assert_eq!(classify(br#"{"choices":[],"usage":{}}"#), Event::Other);
    }

    #[test]
    fn request_ids_must_be_safe_in_sql() {
        assert_eq!(
            request_id(br#"{"id": "req_0190abc"}"#).ok().as_deref(),
            Some("req_0190abc")
        );
        assert!(request_id(br#"{"id": "x' OR 1=1 --"}"#).is_err());
        assert!(request_id(b"{}").is_err());
    }
}
