//! OpenAI's Batch API: `POST /v1/batches`, `GET /v1/batches[/{id}]`,
//! `POST /v1/batches/{id}/cancel`; the status lifecycle derived from ClickHouse; output and
//! error file lines.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_schemas::tables::PrivateTable;
use sluice_schemas::{encode, now_ms, Cancel, Topic};

use super::idempotent::{claim, replayed, settle, Keyed};
use super::store::{BatchRow, FileRow, JoinedLine, Progress};
use super::Handles;
use super::{driver, next_version, BatchError};
use crate::auth::Caller;

/// The endpoints Sluice batches serve (OpenAI's others are responses and completions).
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";
pub const EMBEDDINGS_ENDPOINT: &str = "/v1/embeddings";
/// The longest completion window accepted (OpenAI only offers `24h`; shorter ones are a
/// Sluice extension).
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Past the window, the workers answer every line still queued `expired`; a batch with
/// lines still unanswered this long after it is reported expired anyway.
const EXPIRY_GRACE_MS: u64 = 60_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    /// Accepted for SDK compatibility; output files live as long as the batch's rows.
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted for SDK compatibility; Sluice never reads it"
    )]
    output_expires_after: Option<Value>,
    /// Sluice's options: `{"webhook_url": "https://..."}`.
    #[serde(default)]
    sluice: Option<BatchOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchOptions {
    pub webhook_url: Option<String>,
}

/// `24h`, `30m`, `90s`: the completion window.
pub(crate) fn parse_window(window: &str) -> Option<Duration> {
    let (digits, unit) = window.split_at(window.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "h" => n.checked_mul(3600)?,
        "m" => n.checked_mul(60)?,
        "s" => n,
        _ => return None,
    };
    let d = Duration::from_secs(secs);
    (secs > 0 && d <= MAX_WINDOW).then_some(d)
}

/// The batch's webhook URL ("" for none), refused with a 400 naming `sluice.webhook_url`
/// if the team has no signing secret or the destination is not allowed.
pub(crate) async fn check_webhook(
    app: &impl Handles,
    team: &str,
    options: Option<&BatchOptions>,
) -> Result<String, BatchError> {
    let url = options
        .and_then(|o| o.webhook_url.clone())
        .unwrap_or_default();
    if !url.is_empty() {
        app.webhooks()
            .check(team, &url)
            .await
            .map_err(|e| BatchError::InvalidParam {
                param: "sluice.webhook_url",
                problem: e.to_string(),
            })?;
    }
    Ok(url)
}

pub async fn create<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, BatchError> {
    let caller = app.keys().authenticate(&headers)?;
    let request: CreateBatch = serde_json::from_slice(&body).map_err(BatchError::InvalidJson)?;
    let endpoint = match request.endpoint.as_str() {
        CHAT_ENDPOINT => CHAT_ENDPOINT,
        EMBEDDINGS_ENDPOINT => EMBEDDINGS_ENDPOINT,
        other => {
            return Err(BatchError::InvalidParam {
                param: "endpoint",
                problem: format!(
                    "`{other}` is not supported; Sluice batches serve {CHAT_ENDPOINT} and {EMBEDDINGS_ENDPOINT}"
                ),
            })
        }
    };
    let window =
        parse_window(&request.completion_window).ok_or_else(|| BatchError::InvalidParam {
            param: "completion_window",
            problem: format!(
                "`{}` is not a window such as `24h` (at most 168h)",
                request.completion_window
            ),
        })?;
    let fresh_id = format!("batch_{}", uuid::Uuid::now_v7().simple());
    let keyed = claim(
        &*app,
        &headers,
        &caller.team,
        "/v1/batches",
        &body,
        fresh_id,
    )
    .await?;
    let (ticket, batch_id) = match keyed {
        Keyed::Fresh(ticket, id) => (ticket, id),
        Keyed::Created(id) => {
            let row = find(&*app, &caller, &id).await?;
            let view = view(&*app, &row).await?;
            return Ok(replayed(Json(batch_object(&row, &view)).into_response()));
        }
    };
    let stored = async {
        let webhook_url = check_webhook(&*app, &caller.team, request.sluice.as_ref()).await?;
        let file = app
            .batches_store()
            .file(&request.input_file_id, &caller.team)
            .await?
            .ok_or_else(|| BatchError::FileNotFound(request.input_file_id.clone()))?;
        check_caps(&*app, &caller, &file).await?;
        let metadata = Value::Object(request.metadata.unwrap_or_default()).to_string();
        let row = new_batch(
            &caller,
            batch_id,
            "openai",
            endpoint,
            &file.file_id,
            &request.completion_window,
            window,
            file.lines,
            metadata,
            webhook_url,
        );
        app.batches_store()
            .insert(PrivateTable::Batches, std::slice::from_ref(&row))
            .await?;
        Ok::<_, BatchError>(row)
    }
    .await;
    settle(&*app, ticket.as_ref(), stored.is_ok()).await;
    let row = stored?;
    tracing::info!(batch_id = %row.batch_id, team = %row.team, lines = row.total_lines, "batch created");
    driver::spawn(Arc::clone(&app), row.clone());
    Ok(Json(batch_object(&row, &View::fresh(&row))).into_response())
}

/// The `[batch]` caps a new batch must fit: lines per batch, batches per file, open
/// batches per team.
async fn check_caps(app: &impl Handles, caller: &Caller, file: &FileRow) -> Result<(), BatchError> {
    let limits = &app.batches().limits;
    if file.lines > limits.max_lines_per_batch {
        return Err(BatchError::TooManyLines {
            param: "input_file_id",
            limit: limits.max_lines_per_batch,
        });
    }
    let (of_file, _) = app.batches_store().batches_of_file(&file.file_id).await?;
    if of_file >= limits.max_batches_per_file {
        return Err(BatchError::TooManyBatchesForFile {
            file_id: file.file_id.clone(),
            limit: limits.max_batches_per_file,
        });
    }
    if app.batches_store().open_batches(&caller.team).await? >= limits.max_open_batches_per_team {
        return Err(BatchError::TooManyOpenBatches {
            limit: limits.max_open_batches_per_team,
        });
    }
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "the fields of one new batch row, each from a different check"
)]
pub(crate) fn new_batch(
    caller: &Caller,
    batch_id: String,
    dialect: &str,
    endpoint: &str,
    input_file_id: &str,
    completion_window: &str,
    window: Duration,
    total_lines: u64,
    metadata: String,
    webhook_url: String,
) -> BatchRow {
    let now = now_ms().max(0) as u64;
    BatchRow {
        batch_id,
        team: caller.team.clone(),
        key_id: caller.key_id.clone(),
        dialect: dialect.into(),
        endpoint: endpoint.into(),
        input_file_id: input_file_id.into(),
        completion_window: completion_window.into(),
        status: "validating".into(),
        total_lines,
        lines_done: 0,
        created_at_ms: now,
        expires_at_ms: now + window.as_millis() as u64,
        published_at_ms: 0,
        metadata,
        webhook_url,
        error_message: String::new(),
        version: next_version(),
        attempts: 0,
    }
}

/// A batch's status as callers see it, from its row and ClickHouse's counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub status: &'static str,
    pub progress: Progress,
    pub cancelled_at_ms: u64,
    /// When it reached its final status (0 while it has not).
    pub ended_at_ms: u64,
}

impl View {
    fn fresh(row: &BatchRow) -> View {
        View {
            status: if row.status == "failed" {
                "failed"
            } else {
                "validating"
            },
            progress: Progress::default(),
            cancelled_at_ms: 0,
            ended_at_ms: 0,
        }
    }

    pub fn ended(&self) -> bool {
        matches!(
            self.status,
            "completed" | "failed" | "expired" | "cancelled"
        )
    }

    /// Lines that ended without a successful answer (validation errors included).
    pub fn failed(&self) -> u64 {
        let p = &self.progress;
        p.invalid + p.unstarted + p.failed + p.expired + p.cancelled
    }
}

pub(crate) async fn view(app: &impl Handles, row: &BatchRow) -> Result<View, BatchError> {
    if row.status == "failed" {
        return Ok(View {
            ended_at_ms: row.published_at_ms,
            ..View::fresh(row)
        });
    }
    let (progress, cancelled_at_ms) = tokio::try_join!(
        app.batches_store().progress(&row.batch_id),
        app.batches_store().cancelled_at(&row.batch_id),
    )?;
    let now = now_ms().max(0) as u64;
    let published = row.published_at_ms > 0;
    let all_answered = published && progress.results() >= progress.published;
    let end = progress.last_finished_ms.max(row.published_at_ms);
    let (status, ended_at_ms) = if cancelled_at_ms > 0 {
        if all_answered {
            ("cancelled", end.max(cancelled_at_ms))
        } else {
            ("cancelling", 0)
        }
    } else if !published && row.lines_done == 0 && row.status == "validating" {
        ("validating", 0)
    } else if all_answered {
        if progress.expired > 0 {
            ("expired", end)
        } else {
            ("completed", end)
        }
    } else if now > row.expires_at_ms + EXPIRY_GRACE_MS {
        ("expired", row.expires_at_ms)
    } else {
        ("in_progress", 0)
    };
    Ok(View {
        status,
        progress,
        cancelled_at_ms,
        ended_at_ms,
    })
}

fn secs(ms: u64) -> Value {
    if ms == 0 {
        Value::Null
    } else {
        json!(ms / 1000)
    }
}

pub(crate) fn batch_object(row: &BatchRow, view: &View) -> Value {
    let ended = view.ended();
    let at = |s: &str| {
        if view.status == s {
            secs(view.ended_at_ms)
        } else {
            Value::Null
        }
    };
    let errors = if view.status == "failed" {
        json!({"object": "list", "data": [{"code": "invalid_input_file", "message": row.error_message, "param": null, "line": null}]})
    } else {
        Value::Null
    };
    let metadata: Value = serde_json::from_str(&row.metadata).unwrap_or(Value::Null);
    json!({
        "id": row.batch_id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": errors,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": view.status,
        "output_file_id": if ended && view.status != "failed" { json!(format!("file-{}-output", row.batch_id)) } else { Value::Null },
        "error_file_id": if ended && view.failed() > 0 { json!(format!("file-{}-errors", row.batch_id)) } else { Value::Null },
        "created_at": row.created_at_ms / 1000,
        "in_progress_at": if view.status == "validating" || view.status == "failed" { Value::Null } else { secs(row.created_at_ms) },
        "expires_at": row.expires_at_ms / 1000,
        "finalizing_at": if ended && view.status == "completed" { secs(view.ended_at_ms) } else { Value::Null },
        "completed_at": at("completed"),
        "failed_at": at("failed"),
        "expired_at": at("expired"),
        "cancelling_at": secs(view.cancelled_at_ms),
        "cancelled_at": at("cancelled"),
        "request_counts": {
            "total": row.total_lines,
            "completed": view.progress.succeeded,
            "failed": view.failed(),
        },
        "metadata": metadata,
    })
}

async fn find(app: &impl Handles, caller: &Caller, id: &str) -> Result<BatchRow, BatchError> {
    app.batches_store()
        .batch(id, &caller.team)
        .await?
        .filter(|b| b.dialect == "openai")
        .ok_or_else(|| BatchError::BatchNotFound(id.to_string()))
}

pub async fn retrieve<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, BatchError> {
    let caller = app.keys().authenticate(&headers)?;
    let row = find(&*app, &caller, &id).await?;
    let view = view(&*app, &row).await?;
    Ok(Json(batch_object(&row, &view)).into_response())
}

/// `limit` (1 to 100, default 20) and `after` (a batch id) of a list call.
pub(crate) fn page(query: &HashMap<String, String>) -> Result<(u64, Option<String>), BatchError> {
    let limit = match query.get("limit") {
        None => 20,
        Some(l) => l
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| BatchError::InvalidParam {
                param: "limit",
                problem: format!("`{l}` is not a number from 1 to 100"),
            })?,
    };
    let after = query
        .get("after")
        .or_else(|| query.get("after_id"))
        .cloned();
    Ok((limit, after))
}

pub async fn list<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, BatchError> {
    let caller = app.keys().authenticate(&headers)?;
    let (limit, after) = page(&query)?;
    let rows = app
        .batches_store()
        .list(&caller.team, "openai", after.as_deref(), limit + 1)
        .await?;
    let has_more = rows.len() as u64 > limit;
    let mut data = Vec::new();
    for row in rows.iter().take(limit as usize) {
        let view = view(&*app, row).await?;
        data.push(batch_object(row, &view));
    }
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": data.first().map(|b| b["id"].clone()),
        "last_id": data.last().map(|b| b["id"].clone()),
        "has_more": has_more,
    }))
    .into_response())
}

pub async fn cancel<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, BatchError> {
    let caller = app.keys().authenticate(&headers)?;
    let row = find(&*app, &caller, &id).await?;
    let view = request_cancel(&*app, &row).await?;
    Ok(Json(batch_object(&row, &view)).into_response())
}

/// Records the cancellation, stops this replica's driver at its next block, and tells the
/// workers to skip the batch's lines they have not started.
pub(crate) async fn request_cancel(app: &impl Handles, row: &BatchRow) -> Result<View, BatchError> {
    let current = view(app, row).await?;
    if current.ended() {
        return Err(BatchError::NotCancellable(current.status.to_string()));
    }
    if current.cancelled_at_ms > 0 {
        return Ok(current);
    }
    let at = now_ms();
    app.batches().mark_cancelled(&row.batch_id);
    app.batches_store()
        .insert(
            PrivateTable::BatchCancels,
            &[super::store::CancelRow {
                batch_id: row.batch_id.clone(),
                team: row.team.clone(),
                cancelled_at_ms: at.max(0) as u64,
            }],
        )
        .await?;
    let cancel = Cancel {
        request_id: row.batch_id.clone(),
        team: row.team.clone(),
        reason: "batch".into(),
        occurred_at_ms: at,
    };
    let payload = encode(&cancel).map_err(|e| BatchError::Api(crate::ApiError::Encode(e)))?;
    let topic = app.topics().name(&Topic::Cancels);
    crate::kafka::send(app.producer(), &topic, &row.team, &payload, None)
        .await
        .map_err(BatchError::Queue)?;
    tracing::info!(batch_id = %row.batch_id, "batch cancelling");
    view(app, row).await
}

/// How a line's outcome reads.
pub(crate) enum Outcome<'a> {
    /// Still queued or running.
    Pending,
    /// Rejected before publishing: (code, message).
    Invalid(&'a str, &'a str),
    Succeeded,
    /// Answered with an error by the provider or the worker.
    Errored,
    Cancelled,
    Expired,
}

pub(crate) fn outcome(row: &JoinedLine) -> Outcome<'_> {
    if row.request_id.is_empty() {
        Outcome::Invalid(&row.error_code, &row.error_message)
    } else if row.status.is_empty() {
        Outcome::Pending
    } else if row.status == "completed" && row.http_status < 300 {
        Outcome::Succeeded
    } else if row.status == "expired" {
        Outcome::Expired
    } else if row.error_kind == "client_disconnected" {
        Outcome::Cancelled
    } else {
        Outcome::Errored
    }
}

/// Which file of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// OpenAI's output file: successful answers.
    Output,
    /// OpenAI's error file: every other finished line.
    Errors,
    /// Anthropic's results: every finished line.
    Anthropic,
}

impl OutputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Output => "output",
            OutputKind::Errors => "errors",
            OutputKind::Anthropic => "results",
        }
    }
}

/// One JSONL line of a batch file, if this line belongs in it.
pub(crate) fn render_output_line(
    row: &JoinedLine,
    batch_id: &str,
    kind: OutputKind,
) -> Option<String> {
    if kind == OutputKind::Anthropic {
        return super::anthropic::render_result(row);
    }
    let custom_id = if row.custom_id.is_empty() {
        Value::Null
    } else {
        json!(row.custom_id)
    };
    let id = format!("batch_req_{batch_id}-{}", row.line_no);
    let error = |code: &str, message: &str| json!({"id": id, "custom_id": custom_id, "response": null, "error": {"code": code, "message": message, "line": row.line_no + 1}});
    let value = match (outcome(row), kind) {
        (Outcome::Pending, _) => return None,
        (Outcome::Succeeded, OutputKind::Output) | (Outcome::Errored, OutputKind::Errors) => {
            let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
            json!({
                "id": id,
                "custom_id": custom_id,
                "response": {"status_code": row.http_status, "request_id": row.request_id, "body": body},
                "error": null,
            })
        }
        (Outcome::Invalid(code, message), OutputKind::Errors) => error(code, message),
        (Outcome::Cancelled, OutputKind::Errors) => error(
            "batch_cancelled",
            "The batch was cancelled before this request started.",
        ),
        (Outcome::Expired, OutputKind::Errors) => error(
            "batch_expired",
            "The batch's completion window ended before this request ran.",
        ),
        _ => return None,
    };
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(parse_window("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_window("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_window("0h"), None);
        assert_eq!(parse_window("169h"), None);
        assert_eq!(parse_window("1d"), None);
        assert_eq!(parse_window(""), None);
        assert_eq!(parse_window("h"), None);
    }
}
