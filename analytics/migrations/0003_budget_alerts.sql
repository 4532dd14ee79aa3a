-- Budget alerts (docs/budgets.md): one row per alert_id = scope:subject:period_start_ms:threshold_pct.
-- Every ingress replica may emit the same alert and the sink delivers at least once: the
-- ReplacingMergeTree keyed by alert_id collapses the copies; read with FINAL.
-- Runs on ClickHouse 18.16 and current releases.

CREATE TABLE IF NOT EXISTS {db}.budget_alerts
(
    alert_id String,
    scope String,
    subject String,
    period String,
    period_start_ms Int64,
    threshold_pct Int32,
    -- nano-USD (1e-9 USD).
    limit_nanos Int64,
    spent_nanos Int64,
    occurred_at_ms Int64,
    instance String,
    period_start DateTime('UTC') DEFAULT toDateTime(intDiv(period_start_ms, 1000)),
    occurred_at DateTime('UTC') DEFAULT toDateTime(intDiv(occurred_at_ms, 1000))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(period_start)
ORDER BY (alert_id);
