//! The metric catalog the services export (docs/operations.md "Metrics"): what alerts,
//! recording rules and dashboards may name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every exported metric (Prometheus names, histograms without their suffixes).
pub const METRICS: &[&str] = &[
    // OpenTelemetry GenAI semantic conventions (workers).
    "gen_ai_client_token_usage",
    "gen_ai_server_request_duration_seconds",
    "gen_ai_server_time_to_first_token_seconds",
    "gen_ai_server_time_per_output_token_seconds",
    // Ingress.
    "sluice_requests_total",
    "sluice_request_duration_seconds",
    "sluice_enqueued_requests_total",
    "sluice_enqueued_tokens_total",
    "sluice_sync_reply_wait_seconds",
    "sluice_budget_spend_usd",
    "sluice_budget_reserved_usd",
    "sluice_budget_limit_usd",
    "sluice_cache_lookups_total",
    "sluice_cache_stores_total",
    "sluice_cache_errors_total",
    // Every producer.
    "sluice_kafka_produce_duration_seconds",
    "sluice_kafka_produce_errors_total",
    // Workers.
    "sluice_worker_in_flight",
    "sluice_worker_queued_requests",
    "sluice_worker_queued_tokens",
    "sluice_time_in_queue_seconds",
    "sluice_dequeued_tokens_total",
    "sluice_consumer_lag_records",
    "sluice_throttle_wait_seconds",
    "sluice_throttle_tokens_available",
    "sluice_provider_responses_total",
    "sluice_provider_retries_total",
    "sluice_fallbacks_total",
    "sluice_breaker_state",
    "sluice_routing_decisions_total",
    "sluice_deployment_latency_seconds",
    "sluice_redelivery_skipped_total",
    "sluice_redelivery_lookup_failures_total",
    "sluice_stream_records_total",
    "sluice_stream_events_total",
    // Analytics sink.
    "sluice_sink_rows_inserted_total",
    "sluice_sink_insert_duration_seconds",
    "sluice_sink_insert_errors_total",
    "sluice_sink_lag_seconds",
    "sluice_sink_consumer_replacements_total",
    "sluice_dead_letter_records_total",
];

/// Label names that look like metric names (OpenTelemetry attributes).
const LABELS: &[&str] = &[
    "gen_ai_token_type",
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
];

/// The recording rules of deploy/prometheus/alerts.yml.
pub const RECORDED: &[&str] = &[
    "sluice:backlog_tokens:sum",
    "sluice:backlog_records:sum",
    "sluice:backlog_records:class",
    "sluice:time_in_queue_seconds:p50",
    "sluice:time_in_queue_seconds:p99",
    "sluice:provider_responses:rate5m",
    "sluice:provider_error_ratio:rate5m",
    "sluice:budget_used:ratio",
];

/// Metric-like names in a PromQL text: `sluice_...`, `gen_ai_...` and `sluice:...:...`
/// (the OpenTelemetry label names excepted).
pub fn names_in(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = promql.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        let starts_name = (i == 0 || !ident(bytes[i - 1]))
            && (promql[i..].starts_with("sluice_")
                || promql[i..].starts_with("sluice:")
                || promql[i..].starts_with("gen_ai_"));
        if starts_name {
            let end = (i..bytes.len())
                .find(|&j| !ident(bytes[j]))
                .unwrap_or(bytes.len());
            if !LABELS.contains(&&promql[i..end]) {
                names.insert(promql[i..end].to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Whether `name` is a catalog metric (a histogram's `_bucket`/`_sum`/`_count` too) or a
/// recording rule.
pub fn known(name: &str) -> bool {
    if RECORDED.contains(&name) || METRICS.contains(&name) {
        return true;
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .any(|base| METRICS.contains(&base))
}

pub fn deploy_dir() -> PathBuf {
    crate::common::repo_root().join("deploy/prometheus")
}

/// A tool of Debian's `prometheus` package; fails the test when it is missing.
pub fn prometheus_tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not on PATH: install Debian's `prometheus` package \
         (`bash scripts/prometheus.sh install`; .ci/run does)"
    );
    Command::new(name)
}

/// Runs `command` in `dir`; its output when it succeeds, a failed assertion with it otherwise.
pub fn run_ok(mut command: Command, dir: &Path) -> String {
    let output = command.current_dir(dir).output().expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

/// deploy/prometheus/prometheus.yml.tmpl rendered as scripts/prometheus.sh does.
pub fn render_config(
    scrape_interval: &str,
    ingress: &[String],
    workers: &[String],
    analytics: &[String],
    rule_files: &[PathBuf],
) -> String {
    let list = |items: Vec<String>| {
        let quoted: Vec<String> = items.iter().map(|t| format!("\"{t}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    std::fs::read_to_string(deploy_dir().join("prometheus.yml.tmpl"))
        .expect("template")
        .replace("${SCRAPE_INTERVAL}", scrape_interval)
        .replace("${INGRESS_TARGETS}", &list(ingress.to_vec()))
        .replace("${WORKER_TARGETS}", &list(workers.to_vec()))
        .replace("${ANALYTICS_TARGETS}", &list(analytics.to_vec()))
        .replace(
            "${RULE_FILES}",
            &list(rule_files.iter().map(|p| p.display().to_string()).collect()),
        )
}

#[test]
fn names_are_found_in_promql() {
    let names = names_in(
        r#"histogram_quantile(0.99, sum by (le) (rate(sluice_time_in_queue_seconds_bucket{class="x"}[5m]))) + sum by (gen_ai_request_model) (x) / sluice:budget_used:ratio + gen_ai_client_token_usage_sum"#,
    );
    let want: BTreeSet<String> = [
        "sluice_time_in_queue_seconds_bucket",
        "sluice:budget_used:ratio",
        "gen_ai_client_token_usage_sum",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
    assert!(known("sluice_time_in_queue_seconds_bucket"));
    assert!(!known("sluice_time_in_queue_bucket"));
    assert!(!known("sluice_nothing_total"));
}
