//! The Prometheus recorder: buckets per histogram, the `service` (and `worker`) global labels.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// GenAI token counts (OpenTelemetry semantic conventions' advisory buckets).
const TOKENS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// `gen_ai.server.request.duration`.
const REQUEST_DURATION: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// `gen_ai.server.time_to_first_token`.
const TIME_TO_FIRST_TOKEN: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// `gen_ai.server.time_per_output_token`.
const TIME_PER_OUTPUT_TOKEN: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// Waits that may last minutes (queueing, sync replies, HTTP requests, throttles).
const WAIT: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Kafka produce acks and ClickHouse inserts.
const IO: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every histogram of the catalog and its buckets.
pub const BUCKETS: &[(&str, &[f64])] = &[
    ("gen_ai_client_token_usage", TOKENS),
    ("gen_ai_server_request_duration_seconds", REQUEST_DURATION),
    (
        "gen_ai_server_time_to_first_token_seconds",
        TIME_TO_FIRST_TOKEN,
    ),
    (
        "gen_ai_server_time_per_output_token_seconds",
        TIME_PER_OUTPUT_TOKEN,
    ),
    ("sluice_request_duration_seconds", WAIT),
    ("sluice_sync_reply_wait_seconds", WAIT),
    ("sluice_time_in_queue_seconds", WAIT),
    ("sluice_throttle_wait_seconds", WAIT),
    ("sluice_kafka_produce_duration_seconds", IO),
    ("sluice_sink_insert_duration_seconds", IO),
];

/// The buckets of histogram `name`, if it is in the catalog.
pub fn buckets_for(name: &str) -> Option<&'static [f64]> {
    BUCKETS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// A recorder with the catalog's buckets and these global labels, not installed.
pub(super) fn builder(
    service: &str,
    worker: Option<&str>,
) -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new().add_global_label("service", service);
    if let Some(worker) = worker {
        builder = builder.add_global_label("worker", worker);
    }
    for (name, buckets) in BUCKETS {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).to_string()), buckets)?;
    }
    Ok(builder)
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// A recorder is installed (an ops listener runs): worth spending work on gauges.
pub(super) fn installed() -> bool {
    HANDLE.get().is_some()
}

/// Installs the process's recorder once (`service` = ingress|worker|analytics, `worker` =
/// the worker id) and returns its handle; a second call returns the first one's handle
/// (one process, one recorder: the first service's labels win).
pub fn install(service: &str, worker: Option<&str>) -> Result<PrometheusHandle, BuildError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = builder(service, worker)?.build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => Ok(HANDLE.get_or_init(|| handle).clone()),
        // Another recorder won a race (or a test installed one): render what we have.
        Err(_) => Ok(HANDLE.get_or_init(|| handle).clone()),
    }
}
