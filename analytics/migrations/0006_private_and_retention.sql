-- Least privilege and retention (docs/security.md). ClickHouse 18.16 grants access per
-- database only (users.xml `allow_databases`), so what only the ingress may read or write
-- moves to the private database {private}: completion bodies (the async API's answers),
-- accepted requests, the batch tables and uploaded files. {db} keeps what analysts read.
-- {db}.results loses its body column: analysts see outcomes and tokens, never completion
-- text (a `full` team's completion text is in audit.completion_text, by its policy).
--
-- Content tables carry expires_at, set by their writer from its retention setting, and are
-- partitioned by its day: the sink's retention job drops past days (all versions), and on
-- servers with TTL (19.6+) the `-- @if ttl` statements make ClickHouse delete rows itself.
-- `-- @if table X` / `-- @if column X c` run the next statement only while X (its column c)
-- exists, so the moves below are safe to re-run (analytics/src/migrations.rs).

CREATE DATABASE IF NOT EXISTS {private};

-- A request's final status and body, for GET /v1/requests/{id} and batch outputs. The same
-- version and partition on every redelivery (expires_at comes from created_at_ms).
CREATE TABLE IF NOT EXISTS {private}.result_bodies
(
    request_id String,
    team String,
    status String,
    http_status Int32,
    body String,
    error_kind String,
    model String,
    created_at_ms Int64,
    finished_at_ms UInt64,
    expires_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(finished_at_ms)
PARTITION BY toYYYYMMDD(expires_at)
ORDER BY (request_id);

-- Requests the ingress accepted (their `accepted` audit events): "queued" until a result.
CREATE TABLE IF NOT EXISTS {private}.accepted_requests
(
    request_id String,
    team String,
    occurred_at_ms UInt64,
    expires_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(occurred_at_ms)
PARTITION BY toYYYYMMDD(expires_at)
ORDER BY (request_id);

-- The tables of 0005, now private; files and their lines expire.
CREATE TABLE IF NOT EXISTS {private}.batch_files
(
    file_id String,
    team String,
    purpose String,
    filename String,
    bytes UInt64,
    lines UInt64,
    created_at_ms UInt64,
    expires_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(created_at_ms)
PARTITION BY toYYYYMMDD(expires_at)
ORDER BY (file_id);

CREATE TABLE IF NOT EXISTS {private}.batch_file_lines
(
    file_id String,
    line_no UInt32,
    line String,
    expires_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(expires_at)
ORDER BY (file_id, line_no);

CREATE TABLE IF NOT EXISTS {private}.batches
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

CREATE TABLE IF NOT EXISTS {private}.batch_cancels
(
    batch_id String,
    team String,
    cancelled_at_ms UInt64
)
ENGINE = ReplacingMergeTree(cancelled_at_ms)
ORDER BY (batch_id);

CREATE TABLE IF NOT EXISTS {private}.batch_lines
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

-- Existing rows move (kept 7 days from their creation, the default retention), then the
-- analyst-readable copies go.
-- @if column {db}.results body
INSERT INTO {private}.result_bodies (request_id, team, status, http_status, body, error_kind,
    model, created_at_ms, finished_at_ms, expires_at)
SELECT request_id, team, status, http_status, body, error_kind, model, created_at_ms,
    finished_at_ms, toDateTime(intDiv(created_at_ms, 1000) + 604800)
FROM {db}.results;
-- @if column {db}.results body
ALTER TABLE {db}.results DROP COLUMN body;

INSERT INTO {private}.accepted_requests (request_id, team, occurred_at_ms, expires_at)
SELECT request_id, team, occurred_at_ms, toDateTime(intDiv(occurred_at_ms, 1000) + 604800)
FROM {db}.audit
WHERE action = 'accepted';

-- @if table {db}.batch_files
INSERT INTO {private}.batch_files (file_id, team, purpose, filename, bytes, lines,
    created_at_ms, expires_at)
SELECT file_id, team, purpose, filename, bytes, lines, created_at_ms,
    toDateTime(intDiv(created_at_ms, 1000) + 604800)
FROM {db}.batch_files;
-- Lines of an upload that never completed have no file row: they expire at once.
-- @if table {db}.batch_file_lines
INSERT INTO {private}.batch_file_lines (file_id, line_no, line, expires_at)
SELECT file_id, line_no, line, expires_at
FROM (SELECT file_id, line_no, line FROM {db}.batch_file_lines) AS l
ANY LEFT JOIN (SELECT file_id, toDateTime(intDiv(created_at_ms, 1000) + 604800) AS expires_at
    FROM {db}.batch_files) AS f USING file_id;
-- @if table {db}.batches
-- Columns named: 0007 adds one to the private table, and a re-run must still fit.
INSERT INTO {private}.batches (batch_id, team, key_id, dialect, endpoint, input_file_id, completion_window, status,
    total_lines, lines_done, created_at_ms, expires_at_ms, published_at_ms, metadata, webhook_url,
    error_message, version)
SELECT batch_id, team, key_id, dialect, endpoint, input_file_id, completion_window, status,
    total_lines, lines_done, created_at_ms, expires_at_ms, published_at_ms, metadata, webhook_url,
    error_message, version
FROM {db}.batches;
-- @if table {db}.batch_cancels
INSERT INTO {private}.batch_cancels SELECT * FROM {db}.batch_cancels;
-- @if table {db}.batch_lines
INSERT INTO {private}.batch_lines SELECT * FROM {db}.batch_lines;
DROP TABLE IF EXISTS {db}.batch_file_lines;
DROP TABLE IF EXISTS {db}.batch_files;
DROP TABLE IF EXISTS {db}.batches;
DROP TABLE IF EXISTS {db}.batch_cancels;
DROP TABLE IF EXISTS {db}.batch_lines;

-- @if ttl
ALTER TABLE {private}.result_bodies MODIFY TTL expires_at;
-- @if ttl
ALTER TABLE {private}.accepted_requests MODIFY TTL expires_at;
-- @if ttl
ALTER TABLE {private}.batch_files MODIFY TTL expires_at;
-- @if ttl
ALTER TABLE {private}.batch_file_lines MODIFY TTL expires_at;
