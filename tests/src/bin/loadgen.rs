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

// Printing figures is this binary's job.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Longest latency the histograms hold (larger values are clamped to it): one hour, in µs.
const HIST_MAX_US: u64 = 3_600_000_000;

/// ClickHouse is polled this often in `e2e` mode.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
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
struct Args {
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

struct Report {
    summary: String,
    json: Value,
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
        || args.mode == Mode::Cancel
        || serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["stream"] == json!(true));
    let target = Target {
        url: args.url.clone(),
        headers: headers(args.key.as_deref())?,
        // Bytes: every request shares the one buffer.
        body: Bytes::from(body),
        expect: args.expect_status,
        stream,
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
    };
    if let (Some(before), Some(after)) = (cpu_before, own_cpu_seconds()) {
        report.json["loadgen_cpu_s"] = json!(round3(after - before));
        report.summary += &format!("\nloadgen's own CPU: {:.1} s", after - before);
    }
    Ok(report)
}

fn client(args: &Args, connections: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .timeout(args.timeout)
        .build()
        .context("building the HTTP client")
}

fn headers(key: Option<&str>) -> anyhow::Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = key {
        let mut v = HeaderValue::from_str(&format!("Bearer {key}")).context("--key")?;
        v.set_sensitive(true);
        h.insert(AUTHORIZATION, v);
    }
    Ok(h)
}

/// What every request sends.
struct Target {
    url: String,
    headers: HeaderMap,
    body: Bytes,
    expect: u16,
    /// Read the answer as server-sent events.
    stream: bool,
}

/// How one request ended: its HTTP status, or why there was none.
enum Outcome {
    Status(u16),
    Failed(&'static str),
}

/// One request's answer.
struct Answer {
    outcome: Outcome,
    /// The body (not kept for streams).
    body: Bytes,
    /// Streams: when the first event with content arrived.
    first_token: Option<Instant>,
    /// Streams cut by `disconnect_after`: when the connection was dropped.
    disconnected: Option<Instant>,
}

impl Answer {
    fn failed(kind: &'static str) -> Answer {
        Answer {
            outcome: Outcome::Failed(kind),
            body: Bytes::new(),
            first_token: None,
            disconnected: None,
        }
    }
}

impl Target {
    /// Sends one request and reads the whole response (a stream: to `[DONE]`).
    async fn send(&self, client: &reqwest::Client) -> Answer {
        self.send_until(client, None).await
    }

    /// Sends one request; a stream is dropped after `disconnect_after` data events.
    async fn send_until(&self, client: &reqwest::Client, disconnect_after: Option<u32>) -> Answer {
        let sent = client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(self.body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Answer::failed(error_kind(&e)),
        };
        let status = response.status().as_u16();
        if self.stream && status == self.expect {
            return read_events(response, status, disconnect_after).await;
        }
        // The body is read in full: the response is complete only then, and the
        // connection goes back to the pool only then.
        match response.bytes().await {
            Ok(body) => Answer {
                outcome: Outcome::Status(status),
                body,
                first_token: None,
                disconnected: None,
            },
            Err(e) => Answer::failed(error_kind(&e)),
        }
    }
}

/// What one SSE `data:` payload is.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Done,
    Error,
    Content,
    /// A chunk without content: the role chunk, the finish chunk, the usage chunk.
    Other,
}

fn classify(payload: &[u8]) -> Event {
    if payload == b"[DONE]" {
        return Event::Done;
    }
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return Event::Other;
    };
    if v.get("error").is_some() {
        Event::Error
    } else if v["choices"][0]["delta"]["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
    {
        Event::Content
    } else {
        Event::Other
    }
}

/// Reads a stream's events until `[DONE]`, an error event, its end, or `disconnect_after`
/// data events (then the response is dropped, which closes the connection).
async fn read_events(
    mut response: reqwest::Response,
    status: u16,
    disconnect_after: Option<u32>,
) -> Answer {
    let mut answer = Answer {
        outcome: Outcome::Failed("no_done"),
        body: Bytes::new(),
        first_token: None,
        disconnected: None,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut events = 0u32;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return answer,
            Err(e) => {
                answer.outcome = Outcome::Failed(error_kind(&e));
                return answer;
            }
        };
        let now = Instant::now();
        pending.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(nl) = pending[consumed..].iter().position(|&b| b == b'\n') {
            let line = &pending[consumed..consumed + nl];
            consumed += nl + 1;
            let Some(payload) = line.strip_prefix(b"data:") else {
                continue;
            };
            let payload = payload.trim_ascii();
            events += 1;
            // Once the first token is in, only [DONE] and errors matter: no more JSON parsing
            // than needed (the generator shares the cores with the stack).
            let event = if answer.first_token.is_none() {
                classify(payload)
            } else if payload == b"[DONE]" {
                Event::Done
            } else if payload.starts_with(b"{\"error\"") {
                Event::Error
            } else {
                Event::Other
            };
            match event {
                Event::Done => {
                    answer.outcome = Outcome::Status(status);
                    return answer;
                }
                Event::Error => {
                    answer.outcome = Outcome::Failed("stream_error");
                    return answer;
                }
                Event::Content if answer.first_token.is_none() => answer.first_token = Some(now),
                Event::Content | Event::Other => {}
            }
            if disconnect_after.is_some_and(|n| events >= n) {
                drop(response);
                answer.disconnected = Some(Instant::now());
                answer.outcome = Outcome::Failed("disconnected");
                return answer;
            }
        }
        pending.drain(..consumed);
    }
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "io"
    }
}

/// Results of the measured requests.
struct Tally {
    latency: Histogram<u64>,
    /// Streams: to the first event with content.
    ttft: Histogram<u64>,
    /// How late the generator itself sent requests (open mode): its own limit, not the server's.
    send_lag: Histogram<u64>,
    ok: u64,
    answered: u64,
    errors: BTreeMap<String, u64>,
    /// When the last measured request finished.
    last_done: Option<Instant>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency: histogram()?,
            ttft: histogram()?,
            send_lag: histogram()?,
            ok: 0,
            answered: 0,
            errors: BTreeMap::new(),
            last_done: None,
        })
    }

    fn record(&mut self, outcome: &Outcome, expect: u16, latency: Duration, done: Instant) {
        self.record_stream(outcome, expect, latency, None, done);
    }

    /// `ttft`: a stream's time to its first token, from the same origin as `latency`.
    fn record_stream(
        &mut self,
        outcome: &Outcome,
        expect: u16,
        latency: Duration,
        ttft: Option<Duration>,
        done: Instant,
    ) {
        self.answered += 1;
        self.last_done = Some(self.last_done.map_or(done, |t| t.max(done)));
        match outcome {
            Outcome::Status(s) if *s == expect => {
                self.ok += 1;
                self.latency.saturating_record(micros(latency));
                if let Some(ttft) = ttft {
                    self.ttft.saturating_record(micros(ttft));
                }
            }
            Outcome::Status(s) => *self.errors.entry(s.to_string()).or_default() += 1,
            Outcome::Failed(kind) => *self.errors.entry((*kind).to_string()).or_default() += 1,
        }
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).context("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

type Shared = Arc<Mutex<Tally>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn open_loop(
    args: &Args,
    client: &reqwest::Client,
    target: Arc<Target>,
    cap: usize,
) -> anyhow::Result<Report> {
    let tally: Shared = Arc::new(Mutex::new(Tally::new()?));
    let permits = Arc::new(Semaphore::new(cap));
    let start = Instant::now() + Duration::from_millis(10);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let rate = args.rate;
    let runtime = tokio::runtime::Handle::current();
    let progress = args.progress.then(|| tokio::spawn(progress(tally.clone())));
    let (client2, target2, tally2, permits2) = (
        client.clone(),
        target.clone(),
        tally.clone(),
        permits.clone(),
    );
    // The schedule is kept by a thread of its own: a thread sleep wakes within tens of
    // microseconds, tokio's timer only at the next millisecond, which would add up to 1 ms
    // to every latency measured from the scheduled time.
    let (scheduled_count, dropped) = tokio::task::spawn_blocking(move || {
        let (mut scheduled_count, mut dropped) = (0u64, 0u64);
        for i in 0u64.. {
            let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
            if scheduled >= end {
                break;
            }
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let measured = scheduled >= measure_from;
            scheduled_count += u64::from(measured);
            let Ok(permit) = permits2.clone().try_acquire_owned() else {
                dropped += u64::from(measured);
                continue;
            };
            let (client, target, tally) = (client2.clone(), target2.clone(), tally2.clone());
            runtime.spawn(async move {
                let lag = Instant::now().saturating_duration_since(scheduled);
                let answer = target.send(&client).await;
                let done = Instant::now();
                if measured {
                    let ttft = answer.first_token.map(|f| f - scheduled);
                    let mut t = lock(&tally);
                    t.record_stream(&answer.outcome, target.expect, done - scheduled, ttft, done);
                    t.send_lag.saturating_record(micros(lag));
                }
                // Only now: the final wait takes all permits back as "everything recorded".
                drop(permit);
            });
        }
        (scheduled_count, dropped)
    })
    .await
    .context("the scheduler thread failed")?;
    let drained = wait_all(&permits, cap, args.timeout + Duration::from_secs(5)).await;
    progress.inspect(tokio::task::JoinHandle::abort);
    let mut t = std::mem::replace(&mut *lock(&tally), Tally::new()?);
    if dropped > 0 {
        t.errors.insert("dropped".into(), dropped);
    }
    if !drained {
        let unanswered = scheduled_count - dropped - t.answered;
        t.errors.insert("unanswered".into(), unanswered);
    }
    let window = measured_window(&t, measure_from, args.duration);
    let mut report = summarize(Mode::Open, &t, scheduled_count, window, target.stream);
    report.json["rate"] = json!(args.rate);
    report.json["concurrency_cap"] = json!(cap);
    report.json["send_lag_p50_ms"] = json!(ms(t.send_lag.value_at_quantile(0.5)));
    report.json["send_lag_p99_ms"] = json!(ms(t.send_lag.value_at_quantile(0.99)));
    report.summary = format!(
        "open loop at {} req/s for {:?} (warmup {:?}, cap {cap} outstanding)\n{}\n\
         generator send lag: p50 {:.3} ms, p99 {:.3} ms (included in the latencies)",
        args.rate,
        args.duration,
        args.warmup,
        report.summary,
        ms(t.send_lag.value_at_quantile(0.5)),
        ms(t.send_lag.value_at_quantile(0.99)),
    );
    Ok(report)
}

async fn closed_loop(
    args: &Args,
    client: &reqwest::Client,
    target: Arc<Target>,
    connections: usize,
) -> anyhow::Result<Report> {
    let tally: Shared = Arc::new(Mutex::new(Tally::new()?));
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let progress = args.progress.then(|| tokio::spawn(progress(tally.clone())));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, target, tally) = (client.clone(), target.clone(), tally.clone());
        tasks.spawn(async move {
            let mut sent = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    return sent;
                }
                let answer = target.send(&client).await;
                let done = Instant::now();
                if began >= measure_from {
                    sent += 1;
                    let ttft = answer.first_token.map(|f| f - began);
                    lock(&tally).record_stream(
                        &answer.outcome,
                        target.expect,
                        done - began,
                        ttft,
                        done,
                    );
                }
            }
        });
    }
    let mut sent = 0;
    while let Some(joined) = tasks.join_next().await {
        sent += joined.context("a connection task failed")?;
    }
    progress.inspect(tokio::task::JoinHandle::abort);
    let t = std::mem::replace(&mut *lock(&tally), Tally::new()?);
    let window = measured_window(&t, measure_from, args.duration);
    let mut report = summarize(Mode::Closed, &t, sent, window, target.stream);
    report.json["connections"] = json!(connections);
    report.summary = format!(
        "closed loop, {connections} connections, for {:?} (warmup {:?})\n{}",
        args.duration, args.warmup, report.summary
    );
    Ok(report)
}

/// Prints the measured answers of each second to stderr until aborted.
async fn progress(tally: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut seconds, mut before) = (0u64, 0u64);
    loop {
        tick.tick().await;
        seconds += 1;
        let (answered, ok) = {
            let t = lock(&tally);
            (t.answered, t.ok)
        };
        eprintln!(
            "{seconds:>4}s  {:>7} answers/s  ({ok} ok so far)",
            answered - before
        );
        before = answered;
    }
}

/// The measured time: the planned duration, or longer if answers came in after it.
fn measured_window(t: &Tally, measure_from: Instant, planned: Duration) -> Duration {
    t.last_done
        .map_or(planned, |last| planned.max(last - measure_from))
}

/// Waits until every permit is back (all requests answered), at most `limit`.
async fn wait_all(permits: &Semaphore, cap: usize, limit: Duration) -> bool {
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    tokio::time::timeout(limit, permits.acquire_many(all))
        .await
        .is_ok()
}

fn summarize(mode: Mode, t: &Tally, sent: u64, window: Duration, stream: bool) -> Report {
    let h = &t.latency;
    let achieved = t.answered as f64 / window.as_secs_f64();
    let q = |quantile| ms(h.value_at_quantile(quantile));
    let mut json = json!({
        "mode": format!("{mode:?}").to_lowercase(),
        "sent": sent,
        "ok": t.ok,
        "errors_by_status": t.errors,
        "achieved_rps": round3(achieved),
        "p50_ms": q(0.5),
        "p90_ms": q(0.9),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": ms(h.max()),
        "duration_s": round3(window.as_secs_f64()),
    });
    let errors = if t.errors.is_empty() {
        "none".to_string()
    } else {
        t.errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut summary = format!(
        "sent {sent}, ok {}, errors {errors}; {achieved:.0} answers/s over {:.1} s\n\
         latency of ok answers{} (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        t.ok,
        window.as_secs_f64(),
        match (mode, stream) {
            (Mode::Cancel, _) => ": client disconnect -> provider connection closed",
            (_, true) => ", to [DONE]",
            (_, false) => "",
        },
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        ms(h.max()),
    );
    if stream {
        let f = &t.ttft;
        let tq = |quantile| ms(f.value_at_quantile(quantile));
        json["stream"] = json!(true);
        for (name, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            json[format!("ttft_{name}_ms")] = json!(tq(quantile));
            if mode != Mode::Cancel {
                json[format!("total_{name}_ms")] = json!(q(quantile));
            }
        }
        json["ttft_max_ms"] = json!(ms(f.max()));
        if mode != Mode::Cancel {
            json["total_max_ms"] = json!(ms(h.max()));
        }
        summary += &format!(
            "\ntime to first token (first content event, ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  \
             p99.9 {:.3}  max {:.3}",
            tq(0.5),
            tq(0.9),
            tq(0.99),
            tq(0.999),
            ms(f.max()),
        );
    }
    Report { summary, json }
}

/// Accept-to-ClickHouse time, one request at a time.
async fn e2e(args: &Args, client: &reqwest::Client, target: &Target) -> anyhow::Result<Report> {
    let mut total = Tally::new()?;
    let mut accept = histogram()?;
    // From the ingress's created_at to the worker's start and finish (ClickHouse's results row).
    let mut to_worker_start = histogram()?;
    let mut to_worker_done = histogram()?;
    let deadline_per_sample = args.timeout;
    let start = Instant::now();
    for _ in 0..args.samples {
        let began = Instant::now();
        let Answer { outcome, body, .. } = target.send(client).await;
        let accepted = Instant::now();
        let id = match &outcome {
            Outcome::Status(s) if *s == target.expect => request_id(&body)?,
            _ => {
                total.record(&outcome, target.expect, Duration::ZERO, accepted);
                continue;
            }
        };
        accept.saturating_record(micros(accepted - began));
        let count_sql = format!(
            "SELECT count() FROM {}.usage FINAL WHERE request_id = '{id}'",
            args.database
        );
        let visible = loop {
            if clickhouse(client, &args.clickhouse_url, &count_sql)
                .await?
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                > 0
            {
                break Some(Instant::now());
            }
            if began.elapsed() > deadline_per_sample {
                break None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let Some(visible) = visible else {
            total.record(&Outcome::Failed("not_visible"), 0, Duration::ZERO, accepted);
            continue;
        };
        total.record(&outcome, target.expect, visible - began, visible);
        let times_sql = format!(
            "SELECT started_at_ms - created_at_ms, toInt64(finished_at_ms) - created_at_ms \
             FROM {}.results FINAL WHERE request_id = '{id}'",
            args.database
        );
        let times = clickhouse(client, &args.clickhouse_url, &times_sql).await?;
        let mut fields = times.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(started)), Some(Ok(finished))) = (fields.next(), fields.next()) {
            to_worker_start.saturating_record(started.saturating_mul(1000).max(1));
            to_worker_done.saturating_record(finished.saturating_mul(1000).max(1));
        }
    }
    let mut report = summarize(
        Mode::E2e,
        &total,
        args.samples as u64,
        start.elapsed(),
        false,
    );
    let stages = [
        ("accept", "POST -> 202", &accept),
        (
            "worker_start",
            "created_at -> worker started",
            &to_worker_start,
        ),
        (
            "worker_done",
            "created_at -> worker finished",
            &to_worker_done,
        ),
    ];
    for (name, what, h) in stages {
        // The bucket's lower bound: whole milliseconds from ClickHouse print as such.
        let q = |quantile| ms(h.lowest_equivalent(h.value_at_quantile(quantile)));
        report.json[format!("{name}_p50_ms")] = json!(q(0.5));
        report.json[format!("{name}_p99_ms")] = json!(q(0.99));
        report.summary += &format!(
            "\n  {what}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            q(0.5),
            q(0.99),
            q(1.0),
        );
    }
    report.summary = format!(
        "e2e: {} async requests one at a time, accept -> usage row visible in {}.usage \
         (polled every {POLL_INTERVAL:?})\n{}",
        args.samples, args.database, report.summary
    );
    Ok(report)
}

/// How long the cancel mode waits for the provider connection to close after a disconnect.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Client disconnect -> provider connection closed, one stream at a time: each stream is
/// dropped after `--disconnect-after` data events, and the relay in front of the provider
/// reports when the worker closed its connection. Between samples no other stream runs, so
/// the next close after a disconnect is that stream's.
async fn cancel(args: &Args, client: &reqwest::Client, target: &Target) -> anyhow::Result<Report> {
    let (Some(listen), Some(upstream)) = (args.relay_listen, args.relay_upstream) else {
        bail!("cancel mode needs --relay-listen and --relay-upstream");
    };
    let (mut closes, accepted) = relay(listen, upstream).await?;
    // latency = disconnect -> provider connection closed; ttft from the send.
    let mut tally = Tally::new()?;
    let mut to_disconnect = histogram()?;
    let start = Instant::now();
    for _ in 0..args.samples {
        while closes.try_recv().is_ok() {}
        let began = Instant::now();
        let answer = target.send_until(client, Some(args.disconnect_after)).await;
        let Some(disconnected) = answer.disconnected else {
            let outcome = match answer.outcome {
                // The stream ended before it could be cut.
                Outcome::Status(_) => Outcome::Failed("completed"),
                other => other,
            };
            tally.record(&outcome, target.expect, Duration::ZERO, Instant::now());
            continue;
        };
        to_disconnect.saturating_record(micros(disconnected - began));
        match tokio::time::timeout(CANCEL_WAIT, closes.recv()).await {
            Ok(Some(closed)) => {
                let ttft = answer.first_token.map(|f| f - began);
                let outcome = Outcome::Status(target.expect);
                let latency = closed.saturating_duration_since(disconnected);
                tally.record_stream(&outcome, target.expect, latency, ttft, closed);
            }
            _ => {
                let outcome = Outcome::Failed("not_closed");
                tally.record(&outcome, target.expect, Duration::ZERO, Instant::now());
            }
        }
        // Let the stack settle (the cancelled request's usage, result and audit events).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut report = summarize(
        Mode::Cancel,
        &tally,
        args.samples as u64,
        start.elapsed(),
        true,
    );
    let connections = accepted.load(std::sync::atomic::Ordering::Relaxed);
    report.json["disconnect_after"] = json!(args.disconnect_after);
    report.json["relay_connections"] = json!(connections);
    report.json["send_to_disconnect_p50_ms"] = json!(ms(to_disconnect.value_at_quantile(0.5)));
    report.json["send_to_disconnect_p99_ms"] = json!(ms(to_disconnect.value_at_quantile(0.99)));
    report.summary = format!(
        "cancel: {} streams one at a time, each dropped after {} SSE events; latency = client \
         disconnect -> the worker closed its provider connection (relay {listen} -> \
         {upstream}, {connections} connections)\n{}\nsend -> disconnect: p50 {:.3} ms, p99 {:.3} ms",
        args.samples,
        args.disconnect_after,
        report.summary,
        ms(to_disconnect.value_at_quantile(0.5)),
        ms(to_disconnect.value_at_quantile(0.99)),
    );
    Ok(report)
}

/// A TCP relay from `listen` to `upstream`. Sends the time at which each connection's client
/// side (the worker) went away: its end of stream or reset, or a failed write to it.
/// Also counts the connections accepted.
async fn relay(
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
) -> anyhow::Result<(
    tokio::sync::mpsc::UnboundedReceiver<Instant>,
    Arc<std::sync::atomic::AtomicU64>,
)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("relay: binding {listen}"))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((down, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                // Best effort: without it a small write may wait for an ack.
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let client_gone = tokio::select! {
                    _ = pump(&down, &up) => true,
                    // Ok: the provider closed the connection, not a cancel.
                    r = pump(&up, &down) => r.is_err(),
                };
                if client_gone {
                    let _ = tx.send(Instant::now());
                }
            });
        }
    });
    Ok((rx, accepted))
}

/// Copies bytes from one socket to the other until end of stream (Ok) or an error.
async fn pump(from: &tokio::net::TcpStream, to: &tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < n {
            to.writable().await?;
            match to.try_write(&buf[written..n]) {
                Ok(k) => written += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The `id` of an accepted async request, checked to be safe inside a SQL string literal.
fn request_id(body: &[u8]) -> anyhow::Result<String> {
    let v: Value = serde_json::from_slice(body).context("the 202 body is not JSON")?;
    let id = v["id"].as_str().context("the 202 body has no id")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("unexpected request id {id:?}");
    }
    Ok(id.to_string())
}

async fn clickhouse(client: &reqwest::Client, url: &str, sql: &str) -> anyhow::Result<String> {
    let mut request = client.post(url);
    // scripts/services.sh's users: the environment names the one to query as.
    if let Ok(user) = std::env::var("SLUICE_CLICKHOUSE_USER") {
        request = request.basic_auth(user, std::env::var("SLUICE_CLICKHOUSE_PASSWORD").ok());
    }
    let response = request
        .body(sql.to_string())
        .send()
        .await
        .context("ClickHouse unreachable")?;
    let status = response.status();
    let text = response
        .text()
        .await
        .context("reading ClickHouse's answer")?;
    if !status.is_success() {
        bail!("ClickHouse answered {status} to {sql}: {}", text.trim());
    }
    Ok(text)
}

/// This process's user + system CPU time, from /proc/self/stat (Linux only).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// "15s", "500ms", "2m", "1.5s" or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
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
