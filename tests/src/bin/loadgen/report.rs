//! Tallies, histograms and the summary report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
pub(crate) use sluice_tests::bench::{histogram, micros, ms, own_cpu_seconds, round3};

use crate::args::Mode;
use crate::target::Outcome;

pub(crate) struct Report {
    pub(crate) summary: String,
    pub(crate) json: Value,
}

/// Results of the measured requests.
pub(crate) struct Tally {
    pub(crate) latency: Histogram<u64>,
    /// Streams: to the first event with content.
    pub(crate) ttft: Histogram<u64>,
    /// How late the generator itself sent requests (open mode): its own limit, not the server's.
    pub(crate) send_lag: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) answered: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    /// When the last measured request finished.
    pub(crate) last_done: Option<Instant>,
}

impl Tally {
    pub(crate) fn new() -> anyhow::Result<Tally> {
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

    pub(crate) fn record(
        &mut self,
        outcome: &Outcome,
        expect: u16,
        latency: Duration,
        done: Instant,
    ) {
        self.record_stream(outcome, expect, latency, None, done);
    }

    /// `ttft`: a stream's time to its first token, from the same origin as `latency`.
    pub(crate) fn record_stream(
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

pub(crate) type Shared = Arc<Mutex<Tally>>;

pub(crate) fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The measured time: the planned duration, or longer if answers came in after it.
pub(crate) fn measured_window(t: &Tally, measure_from: Instant, planned: Duration) -> Duration {
    t.last_done
        .map_or(planned, |last| planned.max(last - measure_from))
}

pub(crate) fn summarize(
    mode: Mode,
    t: &Tally,
    sent: u64,
    window: Duration,
    stream: bool,
) -> Report {
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
