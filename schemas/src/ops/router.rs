//! The ops router (`/metrics`, `/healthz`, `/readyz`) and its listener.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use super::{OpsConfig, Readiness};

/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often histograms are drained into their buckets between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("metrics recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
    #[error("ops listener on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct Ops {
    handle: PrometheusHandle,
    readiness: Readiness,
}

/// `GET /metrics` (Prometheus text), `/healthz` (200 while the process serves), `/readyz`
/// (200, or 503 with `{"ready":false,"not_ready":{check: why}}`).
pub fn router(handle: PrometheusHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Ops { handle, readiness })
}

async fn metrics(State(ops): State<Ops>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.handle.render(),
    )
        .into_response()
}

async fn ready(State(ops): State<Ops>) -> Response {
    let report = ops.readiness.check(PROBE_TIMEOUT).await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// With `[ops] listen` set: installs the recorder (`service`, `worker` global labels),
/// binds the listener and serves [`router`] with `readiness` until `shutdown`; returns the
/// bound address. Without it: nothing (no recorder: the services' metric calls are no-ops).
pub async fn serve(
    config: &OpsConfig,
    service: &str,
    worker: Option<&str>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<SocketAddr>, OpsError> {
    let Some(listen) = config.listen.as_deref() else {
        return Ok(None);
    };
    let handle = super::install(service, worker)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| OpsError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| OpsError::Bind {
        addr: listen.to_string(),
        source,
    })?;
    let upkeep = handle.clone();
    let upkeep = tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = router(handle, readiness);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%error, "ops listener stopped");
        }
        upkeep.abort();
    });
    tracing::info!(%addr, service, "ops listener (/metrics, /healthz, /readyz)");
    Ok(Some(addr))
}
