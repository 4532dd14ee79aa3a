//! The driver of one batch: streams its input lines from ClickHouse, validates each like an
//! async request, publishes the good ones at batch priority and records every line's
//! custom_id, request id or error, a block at a time, checkpointing after each block.
//!
//! Crash safety: a block's `batch_lines` rows are written before its lines are published,
//! and the checkpoint (`lines_done`) after. A driver resumed from the checkpoint (at
//! start-up, by any replica) redoes at most one block, under the same request ids, and
//! publishes again only the lines of that block without a receipt (a result or an
//! `accepted` audit row in ClickHouse), so results and usage collapse and no line is lost
//! or answered twice. Each start on a block counts as an attempt (`attempts`, kept in the
//! checkpoint across restarts): past `[batch] max_publish_attempts` the block's lines
//! without a receipt fail with `publish_attempts_exhausted` and the driver moves on.
//!
//! Duplicate custom_ids are caught a block at a time: within the block in memory, against
//! earlier lines with one ClickHouse query (`batch_lines`), so a driver's memory does not
//! grow with the batch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde_json::Value;
use sluice_schemas::now_ms;
use sluice_schemas::retry::{self, Retryable, RetryableWithContext};
use sluice_schemas::tables::PrivateTable;

use super::batches::{batch_object, view};
use super::store::{BatchRow, LineRow};
use super::Handles;
use super::{line_request_id, next_version, BatchError};
use crate::admission::{validate_line, Dialect, Line};
use crate::auth::Caller;
use crate::error::ApiError;

/// Lines per block: published concurrently, then checkpointed.
const BLOCK: usize = 2_000;

/// Starts the driver of a batch on this replica (unless one already runs here).
pub fn spawn(app: Arc<impl Handles>, row: BatchRow) {
    if !app.batches().claim(&row.batch_id) {
        return;
    }
    tokio::spawn(async move {
        let batch_id = row.batch_id.clone();
        run(&*app, row).await;
        app.batches().release(&batch_id);
    });
}

/// Resumes, in the background, every batch whose driver did not finish (an ingress that
/// stopped mid-batch). Tables may not exist yet on a fresh deployment: then nothing to do.
pub fn resume_all(app: Arc<impl Handles>) {
    tokio::spawn(async move {
        match app.batches_store().unfinished().await {
            Ok(rows) => {
                for row in rows {
                    tracing::info!(batch_id = %row.batch_id, lines_done = row.lines_done, "resuming batch");
                    spawn(Arc::clone(&app), row);
                }
            }
            Err(error) => tracing::debug!(%error, "no batches to resume"),
        }
    });
}

async fn run(app: &impl Handles, row: BatchRow) {
    let batch_id = row.batch_id.clone();
    // Each try resumes from the checkpoint the last one left in `row`.
    let (row, driven) = (|mut row: BatchRow| async move {
        let driven = drive(app, &mut row).await;
        (row, driven)
    })
    .retry(retry::doubling(
        Duration::from_millis(200),
        Duration::from_secs(10),
    ))
    .context(row)
    .when(|_| !app.batches().shutting_down())
    .notify(|error, _| {
        tracing::warn!(batch_id = %batch_id, error = ?error, "batch driver interrupted; retrying from its checkpoint");
    })
    .await;
    if driven.is_err() {
        tracing::info!(batch_id = %row.batch_id, lines_done = row.lines_done, "batch driver stopped by shutdown; resumed at the next start");
        return;
    }
    if !row.webhook_url.is_empty() {
        notify_when_ended(app, &row).await;
    }
}

async fn checkpoint(app: &impl Handles, row: &mut BatchRow) -> Result<(), BatchError> {
    row.version = next_version();
    app.batches_store()
        .insert(PrivateTable::Batches, std::slice::from_ref(row))
        .await?;
    Ok(())
}

async fn cancelled(app: &impl Handles, batch_id: &str) -> Result<bool, BatchError> {
    Ok(app.batches().is_cancelled(batch_id)
        || app.batches_store().cancelled_at(batch_id).await? > 0)
}

/// A line read from the input file, before the block-wide checks.
enum Read {
    /// Accounted for, never examined (the batch stopped publishing).
    Stopped(LineRow),
    /// Malformed: its record says why.
    Invalid(LineRow),
    /// Well formed: its custom_id and request body.
    Parsed(LineRow, String, Bytes),
}

fn empty_record(row: &BatchRow, line_no: u32) -> LineRow {
    LineRow {
        batch_id: row.batch_id.clone(),
        line_no,
        custom_id: String::new(),
        request_id: String::new(),
        error_code: String::new(),
        error_message: String::new(),
    }
}

/// The shape checks of one line: its custom_id and the request body.
fn parse(row: &BatchRow, line_no: u32, line: &str) -> Read {
    let mut record = empty_record(row, line_no);
    let anthropic = row.dialect == "anthropic";
    // Known as soon as it is read: a line refused after that keeps it in the error file.
    let mut known_id = String::new();
    let checked = (|| -> Result<(String, Bytes), (&'static str, String)> {
        let value: Value = serde_json::from_str(line).map_err(|e| {
            (
                "invalid_json",
                format!("Line {} is not valid JSON: {e}", line_no + 1),
            )
        })?;
        let object = value
            .as_object()
            .ok_or(("invalid_json", "The line is not a JSON object.".to_string()))?;
        let custom_id = object
            .get("custom_id")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or((
                "missing_custom_id",
                "The line has no `custom_id` string.".to_string(),
            ))?
            .to_string();
        if custom_id.len() > 512 {
            return Err((
                "invalid_custom_id",
                "`custom_id` is longer than 512 characters.".into(),
            ));
        }
        known_id.clone_from(&custom_id);
        let body = if anthropic {
            object.get("params")
        } else {
            if object.get("method").and_then(Value::as_str) != Some("POST") {
                return Err(("invalid_method", "`method` must be `POST`.".into()));
            }
            let url = object.get("url").and_then(Value::as_str).unwrap_or("");
            if url != row.endpoint {
                return Err((
                    "invalid_url",
                    format!(
                        "`url` must be the batch's endpoint `{}`, not `{url}`.",
                        row.endpoint
                    ),
                ));
            }
            object.get("body")
        };
        let body = body.filter(|b| b.is_object()).ok_or((
            "invalid_body",
            if anthropic {
                "The request has no `params` object.".to_string()
            } else {
                "The line has no `body` object.".to_string()
            },
        ))?;
        Ok((custom_id, Bytes::from(body.to_string())))
    })();
    match checked {
        Ok((custom_id, body)) => {
            record.custom_id = custom_id.clone();
            Read::Parsed(record, custom_id, body)
        }
        Err((code, message)) => {
            record.custom_id = known_id;
            record.error_code = code.into();
            record.error_message = message;
            Read::Invalid(record)
        }
    }
}

/// Marks the lines whose custom_id an earlier line used: earlier in the block (a set of
/// at most one block), or before the block (one ClickHouse query for the block's ids).
async fn mark_duplicates(
    app: &impl Handles,
    row: &BatchRow,
    block_start: u32,
    reads: &mut [Read],
) -> Result<(), BatchError> {
    let ids: Vec<&str> = reads
        .iter()
        .filter_map(|r| match r {
            Read::Parsed(_, id, _) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let earlier: HashSet<String> = app
        .batches_store()
        .used_custom_ids(&row.batch_id, block_start, &ids)
        .await?
        .into_iter()
        .collect();
    let mut in_block: HashSet<String> = HashSet::new();
    for read in reads.iter_mut() {
        let Read::Parsed(record, custom_id, _) = read else {
            continue;
        };
        if earlier.contains(custom_id.as_str()) || !in_block.insert(custom_id.clone()) {
            let mut record = record.clone();
            record.error_code = "duplicate_custom_id".into();
            record.error_message = "Another line of this batch has the same `custom_id`.".into();
            *read = Read::Invalid(record);
        }
    }
    Ok(())
}

/// A well-formed, unique line validated like an async request: its record, and the
/// request to publish if it passed.
fn examine(
    app: &impl Handles,
    caller: &Caller,
    row: &BatchRow,
    mut record: LineRow,
    body: Bytes,
) -> (LineRow, Option<Line>) {
    let dialect = if row.dialect == "anthropic" {
        Dialect::Anthropic
    } else if row.endpoint == super::batches::EMBEDDINGS_ENDPOINT {
        Dialect::Embeddings
    } else {
        Dialect::OpenAi
    };
    let request_id = line_request_id(&row.batch_id, record.line_no);
    match validate_line(
        app,
        caller,
        body,
        dialect,
        request_id.clone(),
        row.expires_at_ms as i64,
    ) {
        Ok(line) => {
            record.request_id = request_id;
            (record, Some(line))
        }
        Err(e) => {
            reject(&mut record, &e);
            (record, None)
        }
    }
}

fn custom_id_of(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| {
            v.get("custom_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn reject(record: &mut LineRow, error: &ApiError) {
    record.error_code = error
        .body()
        .error
        .code
        .unwrap_or_else(|| "invalid_request".into());
    record.error_message = error.to_string();
    record.request_id.clear();
}

async fn drive(app: &impl Handles, row: &mut BatchRow) -> Result<(), BatchError> {
    if row.published_at_ms > 0 {
        return Ok(());
    }
    let caller = Caller {
        key_id: row.key_id.clone(),
        team: row.team.clone(),
    };
    if row.status == "validating" {
        if app
            .batches_store()
            .file(&row.input_file_id, &row.team)
            .await?
            .is_none()
        {
            row.status = "failed".into();
            row.error_message = format!("The input file {} does not exist.", row.input_file_id);
            row.published_at_ms = now_ms().max(0) as u64;
            return checkpoint(app, row).await;
        }
        row.status = "in_progress".into();
    }
    // This start is an attempt at the block after the checkpoint (counted before any of
    // its lines is published, so a crash mid-block counts too).
    row.attempts = row.attempts.saturating_add(1);
    checkpoint(app, row).await?;
    let max_attempts = app.batches().limits.max_publish_attempts.max(1);
    // Only the first block of a start can have been (partly) published by an earlier one.
    let mut resumed_block = true;
    let mut cursor = app
        .batches_store()
        .file_lines(&row.input_file_id, row.lines_done as u32)?;
    // Why the remaining lines are not published: (error code, message).
    let mut stopped: Option<(&str, &str)> = None;
    loop {
        if app.batches().shutting_down() {
            return Err(BatchError::Api(ApiError::ShuttingDown));
        }
        if stopped.is_none() && cancelled(app, &row.batch_id).await? {
            tracing::info!(batch_id = %row.batch_id, lines_done = row.lines_done, "batch cancelled: no more lines published");
            stopped = Some((
                "batch_cancelled",
                "The batch was cancelled before this request started.",
            ));
        }
        let block_start = row.lines_done as u32;
        let mut reads = Vec::with_capacity(BLOCK);
        let mut end = false;
        while reads.len() < BLOCK {
            let Some(input) = cursor.next().await? else {
                end = true;
                break;
            };
            // A key revoked (or expired) while its batch runs stops the batch's publishing
            // at the next line, on every replica: lines already published still run.
            if stopped.is_none() {
                stopped = key_refusal(app, &row.key_id);
                if let Some((code, _)) = stopped {
                    tracing::info!(batch_id = %row.batch_id, line_no = input.line_no, code, "batch key no longer valid: no more lines published");
                }
            }
            if let Some((code, message)) = stopped {
                // Accounted for, never published: the batch's counts add up to its lines.
                reads.push(Read::Stopped(LineRow {
                    custom_id: custom_id_of(&input.line),
                    error_code: code.into(),
                    error_message: message.into(),
                    ..empty_record(row, input.line_no)
                }));
                continue;
            }
            reads.push(parse(row, input.line_no, &input.line));
        }
        mark_duplicates(app, row, block_start, &mut reads).await?;
        // Lines an interrupted start already published are not published again.
        let receipts: HashSet<String> = if resumed_block {
            let ids: Vec<String> = reads
                .iter()
                .filter_map(|r| match r {
                    Read::Parsed(record, _, _) => {
                        Some(line_request_id(&row.batch_id, record.line_no))
                    }
                    _ => None,
                })
                .collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            app.batches_store()
                .receipts(&row.batch_id, &row.team, &ids)
                .await?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        resumed_block = false;
        let exhausted = row.attempts > max_attempts;
        if exhausted {
            tracing::warn!(batch_id = %row.batch_id, block_start, attempts = row.attempts, "batch block out of attempts: its unpublished lines fail");
        }
        let mut records = Vec::with_capacity(reads.len());
        let mut lines = Vec::with_capacity(reads.len());
        let mut republished = 0u64;
        for read in reads {
            match read {
                Read::Stopped(record) | Read::Invalid(record) => {
                    records.push(record);
                    lines.push(None);
                }
                Read::Parsed(mut record, _, body) => {
                    let request_id = line_request_id(&row.batch_id, record.line_no);
                    if receipts.contains(&request_id) {
                        record.request_id = request_id;
                        records.push(record);
                        lines.push(None);
                    } else if exhausted {
                        record.error_code = "publish_attempts_exhausted".into();
                        record.error_message = format!(
                            "Sluice gave up publishing this request after {max_attempts} attempts."
                        );
                        records.push(record);
                        lines.push(None);
                    } else {
                        // Parsing, guard scans and token counting of a line: off the async threads.
                        let (record, line) =
                            crate::cpu::in_place(|| examine(app, &caller, row, record, body));
                        republished += u64::from(line.is_some());
                        records.push(record);
                        lines.push(line);
                    }
                }
            }
        }
        if !receipts.is_empty() {
            tracing::info!(batch_id = %row.batch_id, block_start, with_receipt = receipts.len(), republished, "resumed block: lines with a receipt not published again");
        }
        // Moderation (when the team has it) may refuse lines; a refusal is the line's error.
        let moderated = futures::future::join_all(lines.iter().map(|l| async move {
            match l {
                Some(line) => line.moderate().await,
                None => Ok(()),
            }
        }))
        .await;
        for (i, verdict) in moderated.into_iter().enumerate() {
            if let Err(e) = verdict {
                if matches!(e, ApiError::ModerationUnavailable(_)) {
                    return Err(BatchError::Api(e));
                }
                reject(&mut records[i], &e);
                lines[i] = None;
            }
        }
        app.batches_store()
            .insert(PrivateTable::BatchLines, &records)
            .await?;
        publish_all(
            app,
            &row.key_id,
            &mut records,
            &lines,
            row.expires_at_ms as i64,
        )
        .await?;
        row.lines_done += records.len() as u64;
        if end {
            break;
        }
        // The next block's first attempt is this start's.
        row.attempts = 1;
        checkpoint(app, row).await?;
    }
    row.published_at_ms = now_ms().max(0) as u64;
    row.attempts = 0;
    checkpoint(app, row).await?;
    tracing::info!(batch_id = %row.batch_id, lines = row.lines_done, "batch published");
    Ok(())
}

/// Why a line that passed validation was not published after all.
enum Refusal {
    Api(ApiError),
    /// The batch's key was revoked or expired: (error code, message).
    Key(&'static str, &'static str),
}

/// Why a batch's key may no longer publish lines: (error code, message).
fn key_refusal(app: &impl Handles, key_id: &str) -> Option<(&'static str, &'static str)> {
    match app.keys().get(key_id)?.refusal(now_ms())? {
        ApiError::KeyRevoked => Some((
            "key_revoked",
            "The batch's API key was revoked before this request was published.",
        )),
        _ => Some((
            "key_expired",
            "The batch's API key expired before this request was published.",
        )),
    }
}

/// Publishes a block's lines concurrently. Kafka being unreachable interrupts the block
/// (the driver retries it from its checkpoint). A budget that only in-flight reservations
/// fill is waited for: those settle as answers arrive, so a batch paces itself to its
/// team's budget instead of failing lines. A line refused for good (the budget is spent)
/// is re-recorded with its error: the error file gets it.
async fn publish_all(
    app: &impl Handles,
    key_id: &str,
    records: &mut [LineRow],
    lines: &[Option<Line>],
    expires_at_ms: i64,
) -> Result<(), BatchError> {
    let outcomes = futures::future::join_all(lines.iter().map(|line| async move {
        let Some(line) = line else {
            return Ok(None);
        };
        let mut queue_retries = 0;
        let published = (|| async {
            // Lines wait here (for budget, for Kafka): the key may be revoked meanwhile.
            if let Some((code, message)) = key_refusal(app, key_id) {
                return Ok(Some(Refusal::Key(code, message)));
            }
            line.publish(app).await.map(|()| None)
        })
        .retry(retry::doubling(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .when(|error| match error {
            ApiError::QueueUnavailable(e) if queue_retries < 8 => {
                tracing::warn!(error = %e, "batch line not published yet; retrying");
                queue_retries += 1;
                true
            }
            ApiError::BudgetExceeded(e) if e.fits_once_settled() && now_ms() < expires_at_ms => {
                tracing::debug!("batch line waits for budget reservations to settle");
                true
            }
            _ => false,
        })
        .await;
        match published {
            Ok(refusal) => Ok(refusal),
            Err(e @ ApiError::QueueUnavailable(_)) => Err(e),
            Err(e) => Ok(Some(Refusal::Api(e))),
        }
    }))
    .await;
    let mut refused = Vec::new();
    for (record, outcome) in records.iter_mut().zip(outcomes) {
        match outcome? {
            Some(Refusal::Api(error)) => reject(record, &error),
            Some(Refusal::Key(code, message)) => {
                record.error_code = code.into();
                record.error_message = message.into();
                record.request_id.clear();
            }
            None => continue,
        }
        refused.push(record.clone());
    }
    if !refused.is_empty() {
        // Replaces the rows written before publishing (the last insert wins under FINAL).
        app.batches_store()
            .insert(PrivateTable::BatchLines, &refused)
            .await?;
    }
    Ok(())
}

/// Waits for the batch to end, then delivers its webhook (Standard Webhooks, signed with
/// the team's secret, retried).
async fn notify_when_ended(app: &impl Handles, row: &BatchRow) {
    /// Why the batch has not been seen ended yet.
    enum Waiting {
        /// Shutting down, or the batch is gone: no webhook from this replica.
        Over,
        /// Its state could not be read: looked at again after 2 s.
        Unavailable(clickhouse::error::Error),
        /// Still running (or its progress unreadable): looked at again after 1 s.
        Running,
    }
    let ended = (|| async {
        if app.batches().shutting_down() {
            return Err(Waiting::Over);
        }
        let current = match app.batches_store().batch(&row.batch_id, &row.team).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Waiting::Over),
            Err(error) => return Err(Waiting::Unavailable(error)),
        };
        match view(app, &current).await {
            Ok(v) if v.ended() => Ok((v, current)),
            Ok(_) => Err(Waiting::Running),
            Err(error) => {
                tracing::debug!(%error, "batch progress unavailable");
                Err(Waiting::Running)
            }
        }
    })
    .retry(retry::steady(Duration::from_secs(1)))
    .when(|waiting| !matches!(waiting, Waiting::Over))
    .adjust(|waiting, wait| match waiting {
        Waiting::Unavailable(error) => {
            tracing::debug!(%error, "batch state unavailable");
            Some(Duration::from_secs(2))
        }
        _ => wait,
    })
    .await;
    let Ok((view, current)) = ended else {
        return;
    };
    let (kind, data) = if current.dialect == "anthropic" {
        (
            "message_batch.ended".to_string(),
            super::anthropic::batch_object(&current, &view),
        )
    } else {
        (
            format!("batch.{}", view.status),
            batch_object(&current, &view),
        )
    };
    let id = format!("{}-{}", current.batch_id, view.status);
    match app
        .webhooks()
        .deliver(&current.team, &current.webhook_url, &id, &kind, &data)
        .await
    {
        Ok(d) => {
            tracing::info!(batch_id = %current.batch_id, attempts = d.attempts, "batch webhook delivered")
        }
        Err(error) => {
            tracing::warn!(batch_id = %current.batch_id, %error, "batch webhook not delivered")
        }
    }
}
