//! The modes: open and closed loop, accept-to-ClickHouse, disconnect-to-cancel.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::args::{Args, Mode};
use crate::report::{
    histogram, lock, measured_window, micros, ms, summarize, Report, Shared, Tally,
};
use crate::target::{Answer, Outcome, Target};

/// ClickHouse is polled this often in `e2e` mode.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub(crate) async fn open_loop(
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
    let (scheduled_count, dropped, sent_total) = tokio::task::spawn_blocking(move || {
        let (mut scheduled_count, mut dropped, mut sent_total) = (0u64, 0u64, 0u64);
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
            sent_total += 1;
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
        (scheduled_count, dropped, sent_total)
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
    // Warmup included: what the stack's CPU and Kafka traffic of the step were spent on.
    report.json["sent_total"] = json!(sent_total);
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

pub(crate) async fn closed_loop(
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
            let (mut sent, mut sent_total) = (0u64, 0u64);
            loop {
                let began = Instant::now();
                if began >= end {
                    return (sent, sent_total);
                }
                sent_total += 1;
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
    let (mut sent, mut sent_total) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (measured, all) = joined.context("a connection task failed")?;
        sent += measured;
        sent_total += all;
    }
    progress.inspect(tokio::task::JoinHandle::abort);
    let t = std::mem::replace(&mut *lock(&tally), Tally::new()?);
    let window = measured_window(&t, measure_from, args.duration);
    let mut report = summarize(Mode::Closed, &t, sent, window, target.stream);
    report.json["connections"] = json!(connections);
    report.json["sent_total"] = json!(sent_total);
    report.summary = format!(
        "closed loop, {connections} connections, for {:?} (warmup {:?})\n{}",
        args.duration, args.warmup, report.summary
    );
    Ok(report)
}

/// Prints the measured answers of each second to stderr until aborted.
pub(crate) async fn progress(tally: Shared) {
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

/// Waits until every permit is back (all requests answered), at most `limit`.
pub(crate) async fn wait_all(permits: &Semaphore, cap: usize, limit: Duration) -> bool {
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    tokio::time::timeout(limit, permits.acquire_many(all))
        .await
        .is_ok()
}

/// Accept-to-ClickHouse time, one request at a time.
pub(crate) async fn e2e(
    args: &Args,
    client: &reqwest::Client,
    target: &Target,
) -> anyhow::Result<Report> {
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
pub(crate) const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Client disconnect -> provider connection closed, one stream at a time: each stream is
/// dropped after `--disconnect-after` data events, and the relay in front of the provider
/// reports when the worker closed its connection. Between samples no other stream runs, so
/// the next close after a disconnect is that stream's.
pub(crate) async fn cancel(
    args: &Args,
    client: &reqwest::Client,
    target: &Target,
) -> anyhow::Result<Report> {
    let (Some(listen), Some(upstream)) = (args.relay_listen, args.relay_upstream) else {
        bail!("cancel mode needs --relay-listen and --relay-upstream");
    };
    let (mut closes, accepted) = relay(listen, upstream, None).await?;
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
/// Also counts the connections accepted. With `content`, sends the time at which each SSE
/// content event came from the upstream (when its bytes were read, before they are passed on).
pub(crate) async fn relay(
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    content: Option<tokio::sync::mpsc::UnboundedSender<Instant>>,
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
            let content = content.clone();
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                // Best effort: without it a small write may wait for an ack.
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let mut scanner = crate::target::ContentScanner::default();
                let mut watch = |bytes: &[u8], at: Instant| {
                    if let Some(content) = &content {
                        for _ in 0..scanner.feed(bytes) {
                            let _ = content.send(at);
                        }
                    }
                };
                let mut ignore = |_: &[u8], _: Instant| {};
                let client_gone = tokio::select! {
                    _ = pump(&down, &up, &mut ignore) => true,
                    // Ok: the provider closed the connection, not a cancel.
                    r = pump(&up, &down, &mut watch) => r.is_err(),
                };
                if client_gone {
                    let _ = tx.send(Instant::now());
                }
            });
        }
    });
    Ok((rx, accepted))
}

/// Copies bytes from one socket to the other until end of stream (Ok) or an error; shows
/// `on_read` each read and when it returned.
pub(crate) async fn pump(
    from: &tokio::net::TcpStream,
    to: &tokio::net::TcpStream,
    on_read: &mut (dyn FnMut(&[u8], Instant) + Send),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        on_read(&buf[..n], Instant::now());
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
pub(crate) fn request_id(body: &[u8]) -> anyhow::Result<String> {
    let v: Value = serde_json::from_slice(body).context("the 202 body is not JSON")?;
    let id = v["id"].as_str().context("the 202 body has no id")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("unexpected request id {id:?}");
    }
    Ok(id.to_string())
}

pub(crate) async fn clickhouse(
    client: &reqwest::Client,
    url: &str,
    sql: &str,
) -> anyhow::Result<String> {
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
