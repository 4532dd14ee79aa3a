//! The tenants' HTTP listener, hardened against slow and oversized callers (issue #14):
//! a cap on open connections, a deadline for each request head (which also closes idle
//! keep-alive connections), a deadline for reading a body, TCP_NODELAY, and the caller's key
//! checked from the headers before any body byte is read.
//!
//! `axum::serve` has none of these knobs, so the accept loop is ours and each connection
//! is served by hyper's HTTP/1 connection builder.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admission::Dialect;
pub use crate::config::ListenerConfig;
use crate::error::ApiError;
use crate::state::AppState;

impl crate::config::Section for ListenerConfig {
    fn check(&self, _: &crate::config::Config) -> Result<(), crate::error::ConfigError> {
        if self.max_connections == 0
            || self.header_read_timeout_ms.is_zero()
            || self.body_read_timeout_ms.is_zero()
        {
            return Err(crate::error::ConfigError::Field {
                field: "listener.max_connections/header_read_timeout_ms/body_read_timeout_ms"
                    .into(),
                problem: "must be more than 0",
            });
        }
        Ok(())
    }
}

/// The process's soft open-files limit (Linux), to warn about a cap it cannot honour.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// How long shutdown waits for open requests (a sync caller waiting for its answer) to end.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown`, then drains open connections (bounded).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ListenerConfig,
    shutdown: CancellationToken,
) {
    if let Some(limit) = open_files_limit() {
        // Kafka, ClickHouse and webhook clients need descriptors too.
        if config.max_connections + 256 > limit {
            tracing::warn!(
                max_connections = config.max_connections,
                open_files_limit = limit,
                "[listener] max_connections is near the open-files limit (ulimit -n): accepts will fail before the cap"
            );
        }
    }
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout_ms)
        .keep_alive(true);
    loop {
        // A slot first: at the cap, new connections wait in the backlog, not in memory.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning; the slot is freed.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(waited = ?DRAIN, "connections still open at shutdown; closing them");
    }
}

/// Route middleware: authenticates from the headers before the body is read (an unknown
/// caller never makes the ingress read a body), then reads a JSON body within
/// `[server] max_body_bytes` and `[listener] body_read_timeout_ms`.
pub(crate) async fn intake(
    State(app): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let dialect = if path.starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    let authorized = if path.starts_with("/admin/") {
        crate::keys::authorize_admin(&app.config, request.headers())
    } else if path.starts_with("/v1/") {
        app.keys.authenticate(request.headers()).map(|_| ())
    } else {
        Ok(())
    };
    if let Err(error) = authorized {
        return closing(dialect.error(error), &request);
    }
    let streamed =
        request.method() == Method::POST && (path == "/v1/files" || path == "/v1/messages/batches");
    let timeout = app.config.listener.body_read_timeout_ms;
    let (parts, body) = request.into_parts();
    let body = if streamed {
        Body::new(tower_http::timeout::TimeoutBody::new(timeout, body))
    } else {
        let limit = app.config.server.max_body_bytes;
        match tokio::time::timeout(timeout, read_within(body, limit)).await {
            Ok(Ok(bytes)) => Body::from(bytes),
            Ok(Err(error)) => return with_close(dialect.error(error)),
            Err(_) => {
                return with_close(dialect.error(ApiError::BodyTimeout {
                    ms: timeout.as_millis(),
                }))
            }
        }
    };
    next.run(Request::from_parts(parts, body)).await
}

/// Reads a body of at most `limit` bytes. Past the limit it goes on reading, and
/// discarding, up to `limit` more bytes before refusing: a caller still writing its
/// oversized body then reads the 413 instead of a reset connection (a lingering close,
/// bounded in bytes here and in time by the caller's body deadline).
async fn read_within(mut body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map(|f| f.into_data()) else {
            return Err(ApiError::NotJson);
        };
        let Ok(data) = data else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen > limit.saturating_mul(2) {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(kept.freeze())
}

/// A refusal sent before the body was read: the connection closes after it (the unread
/// body is never drained).
fn closing(response: Response, request: &Request) -> Response {
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        with_close(response)
    } else {
        response
    }
}

fn with_close(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
