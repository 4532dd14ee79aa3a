-- Sluice's fact tables, one row per Kafka record. The sink delivers at least once, so every
-- table is a ReplacingMergeTree whose sorting key identifies the record: a redelivered
-- duplicate collapses on merge, and readers use FINAL (the views do) so it never counts twice.
-- Duplicates land in the same partition because the partition key comes from a field that is
-- identical across redeliveries (created_at is when the ingress accepted the request).
-- Runs on ClickHouse 18.16 and current releases: no LowCardinality, DateTime64 or TTL.
-- Derived columns have DEFAULTs so every writer (the sink, fixtures) sends only record fields.

CREATE TABLE IF NOT EXISTS {db}.results
(
    request_id String,
    team String,
    key_id String,
    priority String,
    model String,
    traceparent String,
    status String,
    http_status Int32,
    body String,
    error_kind String,
    provider String,
    deployment String,
    attempts Int32,
    prompt_tokens Int32,
    completion_tokens Int32,
    created_at_ms Int64,
    started_at_ms Int64,
    finished_at_ms UInt64,
    worker String,
    -- Deployments passed over (failed, or skipped with an open circuit) before the last.
    fallbacks Int32 DEFAULT 0,
    created_at DateTime('UTC') DEFAULT toDateTime(intDiv(created_at_ms, 1000)),
    -- What the caller waited: queueing, retries and the provider call.
    latency_ms Int64 DEFAULT finished_at_ms - created_at_ms
)
ENGINE = ReplacingMergeTree(finished_at_ms)
PARTITION BY toYYYYMM(created_at)
ORDER BY (request_id);

CREATE TABLE IF NOT EXISTS {db}.usage
(
    request_id String,
    team String,
    key_id String,
    priority String,
    model String,
    provider String,
    deployment String,
    status String,
    prompt_tokens Int32,
    completion_tokens Int32,
    cached_tokens Int32,
    -- nano-USD (1e-9 USD): integer sums are exact.
    cost_nanos Int64,
    created_at_ms Int64,
    latency_ms Int64,
    occurred_at_ms UInt64,
    -- 1 when the token counts are a tiktoken estimate: the provider reported none (a stream
    -- cut before its usage chunk, a caller that went away).
    estimated UInt8 DEFAULT 0,
    created_at DateTime('UTC') DEFAULT toDateTime(intDiv(created_at_ms, 1000)),
    day Date DEFAULT toDate(created_at)
)
ENGINE = ReplacingMergeTree(occurred_at_ms)
PARTITION BY toYYYYMM(created_at)
ORDER BY (team, request_id);

CREATE TABLE IF NOT EXISTS {db}.audit
(
    event_id String,
    request_id String,
    team String,
    key_id String,
    action String,
    model String,
    priority String,
    http_status Int32,
    reason String,
    prompt_tokens Int32,
    occurred_at_ms UInt64,
    occurred_at DateTime('UTC') DEFAULT toDateTime(intDiv(occurred_at_ms, 1000))
)
ENGINE = ReplacingMergeTree(occurred_at_ms)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (team, request_id, event_id);
