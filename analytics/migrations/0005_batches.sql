-- The Files and Batch API (ingress/src/batch/). The ingress writes these tables directly;
-- results of batch lines land in `results` like any request's, under request ids
-- `<batch_id>-<line_no>`, so a batch's progress is a primary-key range count there.
-- Every table is a ReplacingMergeTree read with FINAL: a driver that resumes after a crash
-- rewrites rows it may already have written, and they collapse.
-- Runs on ClickHouse 18.16 and current releases (no TTL, no LowCardinality).

-- Uploaded files (purpose `batch`): the row is written after the last line, so a file is
-- listed only once its upload completed.
CREATE TABLE IF NOT EXISTS {db}.batch_files
(
    file_id String,
    team String,
    purpose String,
    filename String,
    bytes UInt64,
    lines UInt64,
    created_at_ms UInt64
)
ENGINE = ReplacingMergeTree(created_at_ms)
ORDER BY (file_id);

-- The lines of uploaded files, inserted in blocks while the upload streams in.
CREATE TABLE IF NOT EXISTS {db}.batch_file_lines
(
    file_id String,
    line_no UInt32,
    line String
)
ENGINE = ReplacingMergeTree()
ORDER BY (file_id, line_no);

-- A batch's state as its driver last wrote it (one writer per batch: the driver).
-- `lines_done` is the driver's checkpoint: input lines validated and published.
-- `published_at_ms` > 0 once the driver stopped for good (every line, or a cancel).
CREATE TABLE IF NOT EXISTS {db}.batches
(
    batch_id String,
    team String,
    key_id String,
    dialect String,
    endpoint String,
    input_file_id String,
    completion_window String,
    status String,
    total_lines UInt64,
    lines_done UInt64,
    created_at_ms UInt64,
    expires_at_ms UInt64,
    published_at_ms UInt64,
    metadata String,
    webhook_url String,
    error_message String,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (batch_id);

-- Cancellation requests, apart from `batches` so the driver's checkpoints never undo them.
CREATE TABLE IF NOT EXISTS {db}.batch_cancels
(
    batch_id String,
    team String,
    cancelled_at_ms UInt64
)
ENGINE = ReplacingMergeTree(cancelled_at_ms)
ORDER BY (batch_id);

-- One row per input line: its custom_id and request id, or why it was not published.
CREATE TABLE IF NOT EXISTS {db}.batch_lines
(
    batch_id String,
    line_no UInt32,
    custom_id String,
    request_id String,
    error_code String,
    error_message String
)
ENGINE = ReplacingMergeTree()
ORDER BY (batch_id, line_no);
