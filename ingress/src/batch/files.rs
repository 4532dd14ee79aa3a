//! `POST /v1/files` (purpose `batch`), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
//! `DELETE /v1/files/{id}`.
//!
//! Input files stream into `batch_file_lines` in blocks, within the team's quota (`[batch]`
//! `max_file_bytes_per_team`, `max_file_lines_per_team`) and the per-file line cap; an
//! upload that fails midway (too large, a bad line, the client gone) has its stored lines
//! removed. Output and error files are not stored: `file-<batch_id>-output` / `-errors` are
//! the batch's lines joined with their results, rendered as JSONL while ClickHouse streams
//! them, each completion through the team's output moderation as `GET /v1/requests/{id}`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use clickhouse::query::RowCursor;
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_schemas::now_ms;
use sluice_schemas::tables::PrivateTable;

use super::batches::{outcome, render_output_line, Outcome, OutputKind};
use super::jsonl::Lines;
use super::limits::BatchLimits;
use super::store::{BatchStore, FileLineRow, FileRow, JoinedLine};
use super::BatchError;
use super::Handles;
use crate::auth::Caller;
use crate::error::ApiError;

/// Largest upload (OpenAI's limit for batch input files is 200 MB).
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;
/// Largest line of an input file.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// Lines per insert while an upload streams in.
pub(crate) const BLOCK_LINES: usize = 2_000;
const BLOCK_BYTES: usize = 8 * 1024 * 1024;
/// Output-moderation calls one output file read makes at once.
const MODERATION_CONCURRENCY: usize = 16;

pub async fn upload<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, BatchError> {
    let caller = app.keys().authenticate(&headers)?;
    let _permit = app.batches().uploads.try_enter()?;
    let (used_bytes, used_lines) = app.batches_store().team_usage(&caller.team).await?;
    let quota = Quota::left(&app.batches().limits, used_bytes, used_lines)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| BatchError::NotMultipart)?;
    let mut form = multer::Multipart::with_constraints(
        body.into_data_stream(),
        boundary,
        multer::Constraints::new().size_limit(
            multer::SizeLimit::new()
                .whole_stream(MAX_FILE_BYTES + 64 * 1024)
                .for_field("purpose", 256),
        ),
    );
    let file_id = format!("file-{}", uuid::Uuid::now_v7().simple());
    // Lines stored so far are removed if the upload fails or is abandoned midway.
    let mut discard = Discard::new(app.batches_store(), &file_id);
    let mut purpose = None;
    let mut stored: Option<(String, u64, u64)> = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("purpose") => {
                let p = field.text().await.map_err(multipart_error)?;
                if p.trim() != "batch" {
                    return Err(BatchError::WrongPurpose(p.trim().to_string()));
                }
                purpose = Some(p);
            }
            Some("file") => {
                // `purpose` comes first from the SDKs; checked again below either way.
                let filename = field.file_name().unwrap_or_default().to_string();
                let (lines, bytes) =
                    store_lines(&*app, &file_id, field, &quota, &mut discard).await?;
                stored = Some((filename, lines, bytes));
            }
            // Other fields are read past (multer skips their data).
            _ => {}
        }
    }
    if purpose.is_none() {
        return Err(BatchError::WrongPurpose(String::new()));
    }
    let (filename, lines, bytes) = stored.ok_or(BatchError::MissingFile)?;
    let row = FileRow {
        file_id,
        team: caller.team,
        purpose: "batch".into(),
        filename,
        bytes,
        lines,
        created_at_ms: now_ms().max(0) as u64,
        expires_at: app.batches_store().expires_at(),
    };
    app.batches_store()
        .insert(PrivateTable::BatchFiles, std::slice::from_ref(&row))
        .await?;
    discard.keep();
    tracing::info!(file_id = %row.file_id, lines, bytes, "batch input file stored");
    Ok(Json(file_object(&row)).into_response())
}

/// Streams the `file` part into ClickHouse; returns (lines, bytes). Refuses a file whose
/// first line is not a JSON object (not JSONL at all); later bad lines are the batch's
/// per-line errors.
async fn store_lines(
    app: &impl Handles,
    file_id: &str,
    mut field: multer::Field<'_>,
    quota: &Quota,
    discard: &mut Discard,
) -> Result<(u64, u64), BatchError> {
    let max_lines = app.batches().limits.max_lines_per_batch;
    let mut splitter = Lines::default();
    let mut block: Vec<FileLineRow> = Vec::new();
    let mut block_bytes = 0;
    let mut line_no: u32 = 0;
    let mut bytes: u64 = 0;
    let expires_at = app.batches_store().expires_at();
    let mut done = false;
    while !done {
        let lines = match field.chunk().await.map_err(multipart_error)? {
            Some(chunk) => {
                bytes += chunk.len() as u64;
                if bytes > MAX_FILE_BYTES {
                    return Err(BatchError::FileTooLarge {
                        limit: MAX_FILE_BYTES,
                    });
                }
                if bytes > quota.bytes {
                    return Err(quota.bytes_exceeded());
                }
                splitter.push(&chunk, MAX_LINE_BYTES)?
            }
            None => {
                done = true;
                splitter.finish().into_iter().collect()
            }
        };
        for line in lines {
            let line = String::from_utf8(line)
                .map_err(|_| BatchError::NotJsonl(format!("line {} is not UTF-8", line_no + 1)))?;
            if line_no == 0
                && !crate::cpu::in_place(|| {
                    serde_json::from_str::<Value>(&line).is_ok_and(|v| v.is_object())
                })
            {
                return Err(BatchError::NotJsonl(
                    "the first line is not a JSON object; expected one JSON request per line"
                        .into(),
                ));
            }
            if u64::from(line_no) >= max_lines {
                return Err(BatchError::TooManyLines {
                    param: "file",
                    limit: max_lines,
                });
            }
            if u64::from(line_no) >= quota.lines {
                return Err(quota.lines_exceeded());
            }
            block_bytes += line.len();
            block.push(FileLineRow {
                file_id: file_id.to_string(),
                line_no,
                line,
                expires_at,
            });
            line_no += 1;
            if block.len() >= BLOCK_LINES || block_bytes >= BLOCK_BYTES {
                discard.arm();
                app.batches_store()
                    .insert(PrivateTable::BatchFileLines, &block)
                    .await?;
                block.clear();
                block_bytes = 0;
            }
        }
    }
    discard.arm();
    app.batches_store()
        .insert(PrivateTable::BatchFileLines, &block)
        .await?;
    if line_no == 0 {
        return Err(BatchError::NotJsonl("the file has no lines".into()));
    }
    Ok((u64::from(line_no), bytes))
}

/// What a team may still store.
pub(crate) struct Quota {
    pub bytes: u64,
    pub lines: u64,
    max_bytes: u64,
    max_lines: u64,
}

impl Quota {
    pub fn left(
        limits: &BatchLimits,
        used_bytes: u64,
        used_lines: u64,
    ) -> Result<Quota, BatchError> {
        let quota = Quota {
            bytes: limits.max_file_bytes_per_team.saturating_sub(used_bytes),
            lines: limits.max_file_lines_per_team.saturating_sub(used_lines),
            max_bytes: limits.max_file_bytes_per_team,
            max_lines: limits.max_file_lines_per_team,
        };
        if quota.bytes == 0 {
            return Err(quota.bytes_exceeded());
        }
        if quota.lines == 0 {
            return Err(quota.lines_exceeded());
        }
        Ok(quota)
    }

    pub fn bytes_exceeded(&self) -> BatchError {
        BatchError::QuotaExceeded {
            limit: self.max_bytes,
            unit: "bytes",
        }
    }

    pub fn lines_exceeded(&self) -> BatchError {
        BatchError::QuotaExceeded {
            limit: self.max_lines,
            unit: "lines",
        }
    }
}

/// Removes an unfinished upload's stored lines when dropped before `keep`: on an error
/// return, and when the handler is dropped because the client went away. Only an upload
/// that stored a block is cleaned (a ClickHouse mutation), not one refused up front.
pub(crate) struct Discard {
    store: BatchStore,
    file_id: String,
    armed: bool,
    kept: bool,
}

impl Discard {
    pub fn new(store: &BatchStore, file_id: &str) -> Discard {
        Discard {
            store: store.clone(),
            file_id: file_id.to_string(),
            armed: false,
            kept: false,
        }
    }

    /// Lines are about to be stored.
    pub fn arm(&mut self) {
        self.armed = true;
    }

    /// The upload completed: its lines stay.
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for Discard {
    fn drop(&mut self) {
        if self.kept || !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let file_id = std::mem::take(&mut self.file_id);
        runtime.spawn(async move {
            match store.discard_lines(&file_id).await {
                Ok(()) => tracing::info!(%file_id, "lines of a failed upload removed"),
                Err(error) => {
                    tracing::warn!(%file_id, %error, "lines of a failed upload not removed")
                }
            }
        });
    }
}

/// An oversized stream is the caller's too-large file; anything else is a malformed body.
fn multipart_error(error: multer::Error) -> BatchError {
    match error {
        multer::Error::StreamSizeExceeded { .. } => BatchError::FileTooLarge {
            limit: MAX_FILE_BYTES,
        },
        other => BatchError::Multipart(other),
    }
}

pub(crate) fn file_object(row: &FileRow) -> Value {
    json!({
        "id": row.file_id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at_ms / 1000,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": null,
    })
}

/// What a file id names.
enum FileRef {
    Input(String),
    Output(String, OutputKind),
}

fn parse_file_id(id: &str) -> FileRef {
    let output = id.strip_prefix("file-").and_then(|rest| {
        if let Some(b) = rest.strip_suffix("-output") {
            Some((b, OutputKind::Output))
        } else {
            rest.strip_suffix("-errors")
                .map(|b| (b, OutputKind::Errors))
        }
    });
    match output {
        Some((batch, kind)) => FileRef::Output(batch.to_string(), kind),
        None => FileRef::Input(id.to_string()),
    }
}

pub async fn retrieve<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, BatchError> {
    let caller = app.keys().authenticate(&headers)?;
    match parse_file_id(&id) {
        FileRef::Input(file_id) => {
            let row = app
                .batches_store()
                .file(&file_id, &caller.team)
                .await?
                .ok_or(BatchError::FileNotFound(id))?;
            Ok(Json(file_object(&row)).into_response())
        }
        FileRef::Output(batch_id, kind) => {
            let batch = app
                .batches_store()
                .batch(&batch_id, &caller.team)
                .await?
                .ok_or(BatchError::FileNotFound(id.clone()))?;
            Ok(Json(json!({
                "id": id,
                "object": "file",
                "bytes": 0,
                "created_at": batch.created_at_ms / 1000,
                "filename": format!("{batch_id}_{}.jsonl", kind.as_str()),
                "purpose": "batch_output",
                "status": "processed",
                "status_details": null,
            }))
            .into_response())
        }
    }
}

/// `DELETE /v1/files/{id}`: the owning team's input file, unless a batch still being
/// published reads it (409 `file_in_use`; cancel the batch or wait). Output and error
/// files are views of their batch and go with it.
pub async fn delete<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, BatchError> {
    let caller = app.keys().authenticate(&headers)?;
    let FileRef::Input(file_id) = parse_file_id(&id) else {
        return Err(BatchError::InvalidParam {
            param: "file_id",
            problem: "a batch's output and error files are kept with the batch".into(),
        });
    };
    let row = app
        .batches_store()
        .file(&file_id, &caller.team)
        .await?
        .ok_or_else(|| BatchError::FileNotFound(id.clone()))?;
    let (_, publishing) = app.batches_store().batches_of_file(&file_id).await?;
    if publishing > 0 {
        return Err(BatchError::FileInUse(id));
    }
    app.batches_store().delete_file(&row).await?;
    tracing::info!(%file_id, team = %caller.team, "batch input file deleted");
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})).into_response())
}

pub async fn content<S: Handles>(
    State(app): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, BatchError> {
    let caller = app.keys().authenticate(&headers)?;
    let body = match parse_file_id(&id) {
        FileRef::Input(file_id) => {
            app.batches_store()
                .file(&file_id, &caller.team)
                .await?
                .ok_or(BatchError::FileNotFound(id))?;
            let cursor = app.batches_store().file_lines(&file_id, 0)?;
            input_body(cursor)
        }
        FileRef::Output(batch_id, kind) => {
            let batch = app
                .batches_store()
                .batch(&batch_id, &caller.team)
                .await?
                .ok_or(BatchError::FileNotFound(id))?;
            let cursor = app.batches_store().joined(&batch_id)?;
            output_body(Arc::clone(&app), caller, cursor, batch.batch_id, kind)
        }
    };
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl"),
    );
    Ok(response)
}

fn input_body(cursor: RowCursor<FileLineRow>) -> Body {
    let stream = futures::stream::unfold(cursor, |mut cursor| async move {
        match cursor.next().await {
            Ok(Some(row)) => {
                let mut line = row.line;
                line.push('\n');
                Some((Ok::<_, clickhouse::error::Error>(Bytes::from(line)), cursor))
            }
            Ok(None) => None,
            Err(e) => Some((Err(e), cursor)),
        }
    });
    Body::from_stream(stream)
}

/// The batch's output or error file, rendered while it streams (pending lines are left
/// out: a file read before the batch ended holds what has finished so far). With output
/// moderation on for the team, each completion is checked as it is read, like
/// `GET /v1/requests/{id}`: a refused one is rendered as that line's error (in the error
/// file, or `errored` in Anthropic's results), never as its answer.
pub(crate) fn output_body(
    app: Arc<impl Handles>,
    caller: Caller,
    cursor: RowCursor<JoinedLine>,
    batch_id: String,
    kind: OutputKind,
) -> Body {
    let reader = OutputReader {
        app,
        caller,
        cursor,
        batch_id,
        kind,
        failed: false,
    };
    let stream = futures::stream::unfold(reader, |mut reader| async move {
        if reader.failed {
            return None;
        }
        match reader.chunk().await {
            Ok(Some(out)) => Some((Ok(Bytes::from(out)), reader)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, batch_id = %reader.batch_id, "batch output stream failed");
                reader.failed = true;
                Some((Err(e), reader))
            }
        }
    });
    Body::from_stream(stream)
}

/// Why an output stream stopped early.
#[derive(Debug, thiserror::Error)]
enum OutputError {
    #[error(transparent)]
    Store(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Moderation(ApiError),
}

struct OutputReader<S> {
    app: Arc<S>,
    caller: Caller,
    cursor: RowCursor<JoinedLine>,
    batch_id: String,
    kind: OutputKind,
    failed: bool,
}

impl<S: Handles> OutputReader<S> {
    /// The next few lines (fewer, larger writes), or `None` at the end.
    async fn chunk(&mut self) -> Result<Option<String>, OutputError> {
        let mut rows = Vec::new();
        let mut size = 0;
        while size < 64 * 1024 && rows.len() < 256 {
            match self.cursor.next().await? {
                Some(row) => {
                    size += row.body.len() + 64;
                    rows.push(row);
                }
                None => break,
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        moderate(&self.app, &self.caller, &mut rows).await?;
        let mut out = String::new();
        for row in &rows {
            if let Some(line) = render_output_line(row, &self.batch_id, self.kind) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        Ok(Some(out))
    }
}

/// Checks a chunk's completions with the team's output classifier (concurrently); a
/// refused one becomes a failed line carrying the refusal.
async fn moderate(
    app: &Arc<impl Handles>,
    caller: &Caller,
    rows: &mut [JoinedLine],
) -> Result<(), OutputError> {
    let policy = app.guard().policy(&caller.team);
    if !policy.moderates_output() {
        return Ok(());
    }
    // A few classifier calls at a time, in line order (owned futures: the stream is Send).
    let checks: Vec<_> = rows
        .iter()
        .map(|row| {
            let texts = matches!(outcome(row), Outcome::Succeeded)
                .then(|| crate::guard::completion_texts(&row.body));
            let policy = Arc::clone(&policy);
            async move {
                match texts {
                    Some(texts) => policy.moderate_output(&texts).await,
                    None => Ok(()),
                }
            }
        })
        .collect();
    let verdicts: Vec<Result<(), ApiError>> = futures::stream::iter(checks)
        .buffered(MODERATION_CONCURRENCY)
        .collect()
        .await;
    for (row, verdict) in rows.iter_mut().zip(verdicts) {
        match verdict {
            Ok(()) => {}
            Err(e @ ApiError::ModerationUnavailable(_)) => return Err(OutputError::Moderation(e)),
            Err(e) => {
                app.audits().reject(
                    sluice_schemas::Audit {
                        request_id: row.request_id.clone(),
                        team: caller.team.clone(),
                        key_id: caller.key_id.clone(),
                        model: row.model.clone(),
                        priority: sluice_schemas::Priority::Batch,
                        ..sluice_schemas::Audit::default()
                    },
                    &e,
                );
                row.status = "failed".into();
                row.http_status = i32::from(e.status().as_u16());
                row.body = json!({"error": e.body().error}).to_string();
            }
        }
    }
    Ok(())
}
