//! `POST /v1/files` (purpose `batch`), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`.
//!
//! Input files stream into `batch_file_lines` in blocks. Output and error files are not
//! stored: `file-<batch_id>-output` / `-errors` are the batch's lines joined with their
//! results, rendered as JSONL while ClickHouse streams them.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use clickhouse::query::RowCursor;
use serde_json::{json, Value};
use sluice_schemas::now_ms;

use super::batches::{render_output_line, OutputKind};
use super::jsonl::Lines;
use super::store::{FileLineRow, FileRow, JoinedLine};
use super::BatchError;
use crate::state::AppState;

/// Largest upload (OpenAI's limit for batch input files is 200 MB).
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;
/// Largest line of an input file.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// Lines per insert while an upload streams in.
const BLOCK_LINES: usize = 2_000;
const BLOCK_BYTES: usize = 8 * 1024 * 1024;

pub async fn upload(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, BatchError> {
    let caller = app.keys.authenticate(&headers)?;
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
                let (lines, bytes) = store_lines(&app, &file_id, field).await?;
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
    };
    app.batches_store
        .insert("batch_files", std::slice::from_ref(&row))
        .await?;
    tracing::info!(file_id = %row.file_id, lines, bytes, "batch input file stored");
    Ok(Json(file_object(&row)).into_response())
}

/// Streams the `file` part into ClickHouse; returns (lines, bytes). Refuses a file whose
/// first line is not a JSON object (not JSONL at all); later bad lines are the batch's
/// per-line errors.
async fn store_lines(
    app: &AppState,
    file_id: &str,
    mut field: multer::Field<'_>,
) -> Result<(u64, u64), BatchError> {
    let mut splitter = Lines::default();
    let mut block: Vec<FileLineRow> = Vec::new();
    let mut block_bytes = 0;
    let mut line_no: u32 = 0;
    let mut bytes: u64 = 0;
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
            block_bytes += line.len();
            block.push(FileLineRow {
                file_id: file_id.to_string(),
                line_no,
                line,
            });
            line_no += 1;
            if block.len() >= BLOCK_LINES || block_bytes >= BLOCK_BYTES {
                app.batches_store.insert("batch_file_lines", &block).await?;
                block.clear();
                block_bytes = 0;
            }
        }
    }
    app.batches_store.insert("batch_file_lines", &block).await?;
    if line_no == 0 {
        return Err(BatchError::NotJsonl("the file has no lines".into()));
    }
    Ok((u64::from(line_no), bytes))
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

pub async fn retrieve(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, BatchError> {
    let caller = app.keys.authenticate(&headers)?;
    match parse_file_id(&id) {
        FileRef::Input(file_id) => {
            let row = app
                .batches_store
                .file(&file_id, &caller.team)
                .await?
                .ok_or(BatchError::FileNotFound(id))?;
            Ok(Json(file_object(&row)).into_response())
        }
        FileRef::Output(batch_id, kind) => {
            let batch = app
                .batches_store
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

pub async fn content(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, BatchError> {
    let caller = app.keys.authenticate(&headers)?;
    let body = match parse_file_id(&id) {
        FileRef::Input(file_id) => {
            app.batches_store
                .file(&file_id, &caller.team)
                .await?
                .ok_or(BatchError::FileNotFound(id))?;
            let cursor = app.batches_store.file_lines(&file_id, 0)?;
            input_body(cursor)
        }
        FileRef::Output(batch_id, kind) => {
            let batch = app
                .batches_store
                .batch(&batch_id, &caller.team)
                .await?
                .ok_or(BatchError::FileNotFound(id))?;
            let cursor = app.batches_store.joined(&batch_id)?;
            output_body(cursor, batch.batch_id, kind)
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
/// out: a file read before the batch ended holds what has finished so far).
pub(crate) fn output_body(
    cursor: RowCursor<JoinedLine>,
    batch_id: String,
    kind: OutputKind,
) -> Body {
    let stream = futures::stream::unfold(
        (cursor, batch_id, false),
        move |(mut cursor, batch_id, failed)| async move {
            if failed {
                return None;
            }
            let mut out = String::new();
            // A few lines per chunk: fewer, larger writes.
            while out.len() < 64 * 1024 {
                match cursor.next().await {
                    Ok(Some(row)) => {
                        if let Some(line) = render_output_line(&row, &batch_id, kind) {
                            out.push_str(&line);
                            out.push('\n');
                        }
                    }
                    Ok(None) if out.is_empty() => return None,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, %batch_id, "batch output stream failed");
                        return Some((Err(e), (cursor, batch_id, true)));
                    }
                }
            }
            Some((Ok(Bytes::from(out)), (cursor, batch_id, false)))
        },
    );
    Body::from_stream(stream)
}
