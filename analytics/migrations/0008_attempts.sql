-- Provider attempts (docs/budgets.md#what-providers-bill): every call a worker made for a
-- request, retries, fallbacks and redeliveries included, with the tokens the provider
-- reported (or Sluice's estimate when it could not know). A worker sends a `started` row
-- before the call and the ended row after, under one attempt_id: the ReplacingMergeTree
-- keeps the ended one (larger finished_at_ms), a worker killed mid-call leaves the started
-- one. Teams are still charged from `usage`, once per request; this is what providers bill.
-- Runs on ClickHouse 18.16 and current releases.

CREATE TABLE IF NOT EXISTS {db}.attempts
(
    attempt_id String,
    request_id String,
    team String,
    key_id String,
    model String,
    provider String,
    deployment String,
    served_model String,
    attempt Int32,
    worker String,
    -- started, completed, or the error kind.
    outcome String,
    -- reported | unknown (may have been billed: timeout, broken connection, never ended) | none.
    billed String,
    http_status Int32,
    prompt_tokens Int32,
    completion_tokens Int32,
    cached_tokens Int32,
    -- nano-USD at the served model's price; max_cost_nanos is the most it may have cost.
    cost_nanos Int64,
    max_cost_nanos Int64,
    estimated UInt8,
    created_at_ms Int64,
    started_at_ms Int64,
    finished_at_ms UInt64,
    created_at DateTime('UTC') DEFAULT toDateTime(intDiv(created_at_ms, 1000)),
    day Date DEFAULT toDate(created_at)
)
ENGINE = ReplacingMergeTree(finished_at_ms)
PARTITION BY toYYYYMM(created_at)
ORDER BY (attempt_id);

-- Reconciliation with providers' invoices, per deployment and day (of the request's
-- acceptance, as the spend views): what the attempts cost at our prices against what teams
-- were charged. unbilled_cost_nanos is spend no team was charged for (retries after a
-- timeout, redeliveries, failed attempts a provider billed); unknown_attempts may have been
-- billed up to unknown_max_cost_nanos.
CREATE VIEW IF NOT EXISTS {db}.reconciliation_by_deployment_day AS
SELECT day, deployment, attempts, reported_attempts, unknown_attempts,
    attempt_prompt_tokens, attempt_completion_tokens, attempt_cost_nanos,
    unknown_max_cost_nanos, charged_requests, charged_cost_nanos,
    attempt_cost_nanos - charged_cost_nanos AS unbilled_cost_nanos
FROM
(
    SELECT day, deployment,
        count() AS attempts,
        countIf(billed = 'reported') AS reported_attempts,
        countIf(billed = 'unknown') AS unknown_attempts,
        sum(prompt_tokens) AS attempt_prompt_tokens,
        sum(completion_tokens) AS attempt_completion_tokens,
        sum(cost_nanos) AS attempt_cost_nanos,
        sumIf(max_cost_nanos, billed = 'unknown') AS unknown_max_cost_nanos
    FROM {db}.attempts FINAL
    GROUP BY day, deployment
) AS tried
ANY LEFT JOIN
(
    SELECT day, deployment,
        count() AS charged_requests,
        sum(cost_nanos) AS charged_cost_nanos
    FROM {db}.usage FINAL
    GROUP BY day, deployment
) AS charged USING (day, deployment);
