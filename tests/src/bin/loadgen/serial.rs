//! One stream at a time, each content chunk timed from the provider to the client.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::args::{Args, Mode};
use crate::report::{histogram, micros, ms, summarize, Report, Tally};
use crate::scenarios::relay;
use crate::target::{Outcome, Target};

/// Each stream of `--samples` is sent when the previous one ended (after a short pause), its
/// provider connection through the relay, which notes when each content event came from the
/// provider; the client notes when it arrived. Nothing else streams through the relay, so
/// the i-th content event the relay saw during a stream is that stream's i-th.
pub(crate) async fn serial(
    args: &Args,
    client: &reqwest::Client,
    target: &Target,
) -> anyhow::Result<Report> {
    let (Some(listen), Some(upstream)) = (args.relay_listen, args.relay_upstream) else {
        bail!("serial mode needs --relay-listen and --relay-upstream");
    };
    let (tx, mut from_provider) = tokio::sync::mpsc::unbounded_channel();
    let _relay = relay(listen, upstream, Some(tx)).await?;
    let mut tally = Tally::new()?;
    // Provider -> client, each content event; the client's gaps between content events.
    let mut delay = histogram()?;
    let mut gaps = histogram()?;
    let (mut chunks, mut unmatched) = (0u64, 0u64);
    let start = Instant::now();
    for _ in 0..args.samples {
        while from_provider.try_recv().is_ok() {}
        let began = Instant::now();
        let answer = target.send(client).await;
        let done = Instant::now();
        let mut provider_at = Vec::new();
        while let Ok(at) = from_provider.try_recv() {
            provider_at.push(at);
        }
        let ttft = answer.first_token.map(|f| f - began);
        tally.record_stream(&answer.outcome, target.expect, done - began, ttft, done);
        if matches!(answer.outcome, Outcome::Status(s) if s == target.expect) {
            if provider_at.len() != answer.content_at.len() {
                unmatched += 1;
            }
            for (sent, arrived) in provider_at.iter().zip(&answer.content_at) {
                delay.saturating_record(micros(arrived.saturating_duration_since(*sent)));
                chunks += 1;
            }
            for pair in answer.content_at.windows(2) {
                gaps.saturating_record(micros(pair[1] - pair[0]));
            }
        }
        // Let the stack settle (the request's result, usage and audit events).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut report = summarize(
        Mode::Serial,
        &tally,
        args.samples as u64,
        start.elapsed(),
        true,
    );
    for (name, h) in [("chunk_delay", &delay), ("chunk_gap", &gaps)] {
        for (q, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            report.json[format!("{name}_{q}_ms")] = json!(ms(h.value_at_quantile(quantile)));
        }
        report.json[format!("{name}_max_ms")] = json!(ms(h.max()));
    }
    report.json["chunks"] = json!(chunks);
    report.json["streams_unmatched"] = json!(unmatched);
    report.summary = format!(
        "serial: {} streams one at a time through the relay {listen} -> {upstream}\n{}\n\
         provider -> client, each of {chunks} content chunks (ms): p50 {:.3}  p90 {:.3}  \
         p99 {:.3}  max {:.3}\n\
         gap between content chunks at the client (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  \
         max {:.3}\n\
         streams whose chunk counts differ at the relay and the client: {unmatched}",
        args.samples,
        report.summary,
        ms(delay.value_at_quantile(0.5)),
        ms(delay.value_at_quantile(0.9)),
        ms(delay.value_at_quantile(0.99)),
        ms(delay.max()),
        ms(gaps.value_at_quantile(0.5)),
        ms(gaps.value_at_quantile(0.9)),
        ms(gaps.value_at_quantile(0.99)),
        ms(gaps.max()),
    );
    Ok(report)
}
