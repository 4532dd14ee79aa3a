//! Anthropic's Message Batches API: `POST /v1/messages/batches` with inline
//! `{custom_id, params}` requests, retrieve, list, cancel, and `/results` as JSONL. The
//! requests are stored as an input file and driven like an OpenAI batch; only the shapes
//! differ (and errors are in Anthropic's shape).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_dialect::anthropic::{error, response};
use sluice_schemas::now_ms;
use sluice_schemas::tables::PrivateTable;

use super::batches::{
    check_webhook, new_batch, outcome, page, request_cancel, view, Outcome, OutputKind, View,
};
use super::files::{Discard, Quota, BLOCK_LINES, MAX_LINE_BYTES};
use super::idempotent::{claim, replayed, settle, Keyed};
use super::inline::{self, InlineLimits};
use super::store::{BatchRow, FileLineRow, FileRow, JoinedLine};
use super::Handles;
use super::{driver, rfc3339, BatchError};
use crate::error::ApiError;

/// Anthropic's limit: 256 MB per batch (requests per batch: `[batch] max_lines_per_batch`).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// Anthropic batches expire after 24 hours.
const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A batch API error in Anthropic's shape.
pub struct AnthropicError(BatchError);

impl<E: Into<BatchError>> From<E> for AnthropicError {
    fn from(e: E) -> AnthropicError {
        AnthropicError(e.into())
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        match self.0 {
            BatchError::Api(e) => e.into_anthropic_response(),
            e => {
                let status = e.status();
                let retry = status.is_server_error() || status.as_u16() == 429;
                let body = error::for_status(status.as_u16(), &e.to_string());
                let mut response = (status, Json(body)).into_response();
                if retry {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                response
            }
        }
    }
}

pub async fn create<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AnthropicError> {
    let caller = app.keys().authenticate(&headers)?;
    let _permit = app.batches().uploads.try_enter()?;
    let limits = &app.batches().limits;
    // A keyed retry of a created batch must reach its replay: its cap is checked once the
    // key is claimed.
    let keyed = headers.contains_key(crate::idempotency::HEADER);
    if !keyed {
        check_open(&*app, &caller.team).await?;
    }
    let (used_bytes, used_lines) = app.batches_store().team_usage(&caller.team).await?;
    let quota = Quota::left(limits, used_bytes, used_lines)?;
    let file_id = format!("file-{}", uuid::Uuid::now_v7().simple());
    // Lines stored so far are removed if the request fails or is abandoned midway.
    let mut discard = Discard::new(app.batches_store(), &file_id);
    let inline = InlineLimits {
        max_body_bytes: (MAX_BODY_BYTES as u64).min(quota.bytes),
        max_request_bytes: MAX_LINE_BYTES,
        max_requests: limits.max_lines_per_batch.min(quota.lines),
        max_depth: limits.max_nesting_depth,
        block: BLOCK_LINES,
    };
    let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel(4);
    let (blocks_tx, mut blocks_rx) = tokio::sync::mpsc::channel(1);
    let pumped = tokio::spawn(pump(body, chunks_tx));
    let parser = tokio::task::spawn_blocking(move || {
        inline::parse(inline::ChunkReader::new(chunks_rx), inline, blocks_tx)
    });
    let expires_at = app.batches_store().expires_at();
    let mut line_no = 0u32;
    while let Some(block) = blocks_rx.recv().await {
        let rows: Vec<FileLineRow> = block
            .into_iter()
            .map(|line| {
                let row = FileLineRow {
                    file_id: file_id.clone(),
                    line_no,
                    line,
                    expires_at,
                };
                line_no += 1;
                row
            })
            .collect();
        discard.arm();
        app.batches_store()
            .insert(PrivateTable::BatchFileLines, &rows)
            .await?;
    }
    let parsed = match parser.await {
        Ok(Ok(parsed)) => parsed,
        // The team's quota was the tighter bound: say so.
        Ok(Err(BatchError::TooManyLines { limit, .. })) if limit < limits.max_lines_per_batch => {
            return Err(quota.lines_exceeded().into())
        }
        Ok(Err(BatchError::Api(ApiError::BodyTooLarge { limit })))
            if (limit as u64) < MAX_BODY_BYTES as u64 =>
        {
            return Err(quota.bytes_exceeded().into())
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(ApiError::ShuttingDown.into()),
    };
    if parsed.bytes > quota.bytes {
        return Err(quota.bytes_exceeded().into());
    }
    // The body's digest, as the pump read it: the key's fingerprint.
    let Ok(Some(digest)) = pumped.await else {
        return Err(ApiError::ShuttingDown.into());
    };
    let fresh_id = format!("msgbatch_{}", uuid::Uuid::now_v7().simple());
    let route = "/v1/messages/batches";
    let (ticket, batch_id) =
        match claim(&*app, &headers, &caller.team, route, &digest, fresh_id).await? {
            Keyed::Fresh(ticket, id) => (ticket, id),
            Keyed::Created(id) => {
                // The lines just stored are discarded; the key's batch is the answer.
                let row = find(&*app, &headers, &id).await?;
                let view = view(&*app, &row).await?;
                let body = with_url(&*app, batch_object(&row, &view), &headers, &row);
                return Ok(replayed(Json(body).into_response()));
            }
        };
    let stored = store_batch(
        &*app, &caller, keyed, &parsed, &file_id, expires_at, batch_id,
    )
    .await;
    settle(&*app, ticket.as_ref(), stored.is_ok()).await;
    let row = stored?;
    discard.keep();
    tracing::info!(batch_id = %row.batch_id, team = %row.team, lines = row.total_lines, "message batch created");
    driver::spawn(Arc::clone(&app), row.clone());
    let view = view(&*app, &row).await?;
    Ok(Json(with_url(&*app, batch_object(&row, &view), &headers, &row)).into_response())
}

/// The team's open batches are under its cap.
async fn check_open(app: &impl Handles, team: &str) -> Result<(), BatchError> {
    let limit = app.batches().limits.max_open_batches_per_team;
    if app.batches_store().open_batches(team).await? >= limit {
        return Err(BatchError::TooManyOpenBatches { limit });
    }
    Ok(())
}

/// Stores the input file's row and the batch's (lines are stored already).
async fn store_batch(
    app: &impl Handles,
    caller: &crate::auth::Caller,
    keyed: bool,
    parsed: &inline::Parsed,
    file_id: &str,
    expires_at: u32,
    batch_id: String,
) -> Result<BatchRow, BatchError> {
    if keyed {
        check_open(app, &caller.team).await?;
    }
    let webhook_url = check_webhook(app, &caller.team, parsed.sluice.as_ref()).await?;
    let total = parsed.requests;
    let file = FileRow {
        file_id: file_id.to_string(),
        team: caller.team.clone(),
        purpose: "anthropic_batch".into(),
        filename: String::new(),
        bytes: parsed.bytes,
        lines: total,
        created_at_ms: now_ms().max(0) as u64,
        expires_at,
    };
    app.batches_store()
        .insert(PrivateTable::BatchFiles, &[file])
        .await?;
    let row = new_batch(
        caller,
        batch_id,
        "anthropic",
        "/v1/messages",
        file_id,
        "24h",
        WINDOW,
        total,
        "{}".into(),
        webhook_url,
    );
    app.batches_store()
        .insert(PrivateTable::Batches, std::slice::from_ref(&row))
        .await?;
    Ok(row)
}

/// Feeds the body's chunks to the parser until it ends, fails, or the parser stops
/// reading (it refused the body: the rest is never read). The SHA-256 of the whole body,
/// when it was read to its end.
async fn pump(
    body: Body,
    chunks: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> Option<[u8; 32]> {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(std::io::Error::other);
        if let Ok(bytes) = &chunk {
            digest.update(bytes);
        }
        let failed = chunk.is_err();
        if chunks.send(chunk).await.is_err() || failed {
            return None;
        }
    }
    Some(digest.finalize().into())
}

/// Request counts in Anthropic's terms: every line is processing until it ends.
fn counts(row: &BatchRow, view: &View) -> Value {
    let p = &view.progress;
    let canceled = p.cancelled + p.unstarted;
    let errored = p.invalid + p.failed;
    let ended = p.succeeded + errored + canceled + p.expired;
    json!({
        "processing": row.total_lines.saturating_sub(ended),
        "succeeded": p.succeeded,
        "errored": errored,
        "canceled": canceled,
        "expired": p.expired,
    })
}

pub(crate) fn batch_object(row: &BatchRow, view: &View) -> Value {
    let processing_status = if view.ended() {
        "ended"
    } else if view.cancelled_at_ms > 0 {
        "canceling"
    } else {
        "in_progress"
    };
    let time = |ms: u64| {
        if ms == 0 {
            Value::Null
        } else {
            json!(rfc3339(ms))
        }
    };
    json!({
        "id": row.batch_id,
        "type": "message_batch",
        "processing_status": processing_status,
        "request_counts": counts(row, view),
        "ended_at": if view.ended() { time(view.ended_at_ms) } else { Value::Null },
        "created_at": time(row.created_at_ms),
        "expires_at": time(row.expires_at_ms),
        "archived_at": null,
        "cancel_initiated_at": time(view.cancelled_at_ms),
        "results_url": null,
    })
}

/// `results_url` once the batch ended, absolute as Anthropic gives it, with the scheme and
/// host the caller used (`crate::public_url`).
fn with_url(app: &impl Handles, mut object: Value, headers: &HeaderMap, row: &BatchRow) -> Value {
    if object["processing_status"] == "ended" {
        let base = crate::public_url::base_url(&app.config().server, headers);
        object["results_url"] = json!(format!(
            "{base}/v1/messages/batches/{}/results",
            row.batch_id
        ));
    }
    object
}

async fn find(
    app: &impl Handles,
    headers: &HeaderMap,
    id: &str,
) -> Result<BatchRow, AnthropicError> {
    let caller = app.keys().authenticate(headers)?;
    Ok(app
        .batches_store()
        .batch(id, &caller.team)
        .await?
        .filter(|b| b.dialect == "anthropic")
        .ok_or_else(|| BatchError::BatchNotFound(id.to_string()))?)
}

pub async fn retrieve<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AnthropicError> {
    let row = find(&*app, &headers, &id).await?;
    let view = view(&*app, &row).await?;
    Ok(Json(with_url(&*app, batch_object(&row, &view), &headers, &row)).into_response())
}

/// `DELETE /v1/messages/batches/{id}`: an ended batch of the caller's team, with its
/// stored requests (which count against the team's file quota until then).
pub async fn delete<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AnthropicError> {
    let row = find(&*app, &headers, &id).await?;
    if !view(&*app, &row).await?.ended() {
        return Err(BatchError::NotEnded(id).into());
    }
    app.batches_store().delete_batch(&row).await?;
    if let Some(file) = app
        .batches_store()
        .file(&row.input_file_id, &row.team)
        .await?
    {
        app.batches_store().delete_file(&file).await?;
    }
    tracing::info!(batch_id = %row.batch_id, "message batch deleted");
    Ok(Json(json!({"id": id, "type": "message_batch_deleted"})).into_response())
}

pub async fn list<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, AnthropicError> {
    let caller = app.keys().authenticate(&headers)?;
    let (limit, after) = page(&query)?;
    let rows = app
        .batches_store()
        .list(&caller.team, "anthropic", after.as_deref(), limit + 1)
        .await?;
    let has_more = rows.len() as u64 > limit;
    let mut data = Vec::new();
    for row in rows.iter().take(limit as usize) {
        let view = view(&*app, row).await?;
        data.push(with_url(&*app, batch_object(row, &view), &headers, row));
    }
    Ok(Json(json!({
        "data": data,
        "has_more": has_more,
        "first_id": data.first().map(|b| b["id"].clone()),
        "last_id": data.last().map(|b| b["id"].clone()),
    }))
    .into_response())
}

pub async fn cancel<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AnthropicError> {
    let row = find(&*app, &headers, &id).await?;
    let view = request_cancel(&*app, &row).await?;
    Ok(Json(with_url(&*app, batch_object(&row, &view), &headers, &row)).into_response())
}

pub async fn results<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AnthropicError> {
    let caller = app.keys().authenticate(&headers)?;
    let row = find(&*app, &headers, &id).await?;
    let cursor = app.batches_store().joined(&row.batch_id)?;
    let mut response = super::files::output_body(
        Arc::clone(&app),
        caller,
        cursor,
        row.batch_id,
        OutputKind::Anthropic,
    )
    .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-jsonl"),
    );
    Ok(response)
}

/// One line of Anthropic's results file.
pub(crate) fn render_result(row: &JoinedLine) -> Option<String> {
    let errored = |error: Value| json!({"type": "errored", "error": error});
    let result = match outcome(row) {
        Outcome::Pending => return None,
        Outcome::Invalid("batch_cancelled", _) | Outcome::Cancelled => json!({"type": "canceled"}),
        Outcome::Invalid(_, message) => errored(error::body("invalid_request_error", message)),
        Outcome::Expired => json!({"type": "expired"}),
        Outcome::Succeeded => {
            let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
            json!({"type": "succeeded", "message": response::from_openai(&body, &row.model)})
        }
        Outcome::Errored => {
            let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
            errored(error::from_openai(row.http_status.max(0) as u16, &body))
        }
    };
    Some(json!({"custom_id": row.custom_id, "result": result}).to_string())
}
