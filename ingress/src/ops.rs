//! The ingress's ops listener (`[ops] listen`): `/metrics`, `/healthz`, and `/readyz`
//! (Kafka and ClickHouse reachable, keys loaded). Shared parts: `sluice_schemas::ops`.

use std::time::Instant;

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, histogram};
use sluice_schemas::ops::{global, kafka_probe, serve, OpsError};
use tokio_util::sync::CancellationToken;

use crate::error::ErrorCode;
use crate::Config;

/// The readiness flag set once the key log is read.
pub(crate) const KEYS: &str = "keys";

/// Starts the ops listener when `[ops] listen` is set (before the keys load: `/readyz` says
/// "keys" until then).
pub(crate) async fn start(config: &Config, shutdown: &CancellationToken) -> Result<(), OpsError> {
    if config.ops.listen.is_none() {
        return Ok(());
    }
    let ready = global();
    ready.expect(KEYS);
    let cc =
        sluice_schemas::kafka::client_config(&config.kafka.bootstrap, &config.kafka.options, &[]);
    let topics = sluice_schemas::Topics::new(config.kafka.topic_prefix.clone());
    match kafka_probe(&cc, topics.name(&sluice_schemas::Topic::Keys)) {
        Ok(probe) => ready.probe("kafka", probe),
        Err(error) => tracing::warn!(%error, "no Kafka readiness probe"),
    }
    let clickhouse = config.clickhouse.client();
    ready.probe("clickhouse", move || {
        let clickhouse = clickhouse.clone();
        async move {
            clickhouse
                .query("SELECT 1")
                .execute()
                .await
                .map_err(|e| e.to_string())
        }
    });
    let shutdown = shutdown.clone();
    serve(&config.ops, "ingress", None, ready.clone(), async move {
        shutdown.cancelled().await
    })
    .await?;
    Ok(())
}

/// Keys are loaded: the ingress may serve.
pub(crate) fn keys_loaded() {
    global().set(KEYS, true);
}

/// The router's outermost layer: `sluice_requests_total{api, status, reason}` (reason:
/// `accepted` for a 2xx, else the error code [`ErrorCode`] left on the response) and
/// `sluice_request_duration_seconds{api, stream}` (to the response head; a stream's
/// duration is its time to first byte).
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let api = api(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let reason = match response.extensions().get::<ErrorCode>() {
        Some(code) => code.0,
        None if status.is_success() || status.is_redirection() => "accepted",
        None => "other",
    };
    let stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    counter!(
        "sluice_requests_total",
        "api" => api,
        "status" => status.as_u16().to_string(),
        "reason" => reason
    )
    .increment(1);
    histogram!(
        "sluice_request_duration_seconds",
        "api" => api,
        "stream" => if stream { "true" } else { "false" }
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// The `api` label of a path (a fixed set).
fn api(path: &str) -> &'static str {
    const APIS: &[(&str, &str)] = &[
        ("/v1/chat/completions", "chat"),
        ("/v1/messages/count_tokens", "count_tokens"),
        ("/v1/messages", "messages"),
        ("/v1/requests", "requests"),
        ("/v1/responses", "responses"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/batches", "batches"),
        ("/v1/files", "files"),
        ("/v1/models", "models"),
        ("/v1/budgets", "budgets"),
        ("/admin", "admin"),
        ("/healthz", "health"),
    ];
    APIS.iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map_or("other", |(_, api)| api)
}

/// A request produced to its topic: `sluice_enqueued_requests_total{class, team}` and
/// `sluice_enqueued_tokens_total{class}` (prompt + completion cap, the workers' estimate).
pub(crate) fn enqueued(request: &sluice_schemas::Request, default_completion: u32) {
    let class = request.priority.as_str();
    counter!("sluice_enqueued_requests_total", "class" => class, "team" => request.team.clone())
        .increment(1);
    counter!("sluice_enqueued_tokens_total", "class" => class)
        .increment(request.token_estimate(default_completion));
}

/// What became of a request with an `Idempotency-Key`:
/// `sluice_idempotency_total{outcome}`: `new` (first use, published), `replayed` (the first
/// request's answer or id given again), `in_progress` (409), `mismatch` (422, another
/// request under the key), `taken_over` (a pending claim given to a retry), `unavailable`
/// (the store failed; 503).
pub(crate) fn idempotency(outcome: &'static str) {
    counter!("sluice_idempotency_total", "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_api_has_its_label() {
        for (path, label) in [
            ("/v1/chat/completions", "chat"),
            ("/v1/messages/count_tokens", "count_tokens"),
            ("/v1/messages/batches", "messages"),
            ("/v1/responses/resp_1/cancel", "responses"),
            ("/v1/embeddings", "embeddings"),
            ("/v1/requests/req_1", "requests"),
            ("/somewhere", "other"),
        ] {
            assert_eq!(super::api(path), label, "{path}");
        }
    }
}
