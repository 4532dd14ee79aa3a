-- Analyst views. Each reads its table with FINAL, so a redelivered duplicate never counts
-- twice even before ClickHouse merges it away. Aggregates are computed in a subquery and named
-- there, because ClickHouse 18.16 resolves an alias before a column of the same name.
-- Costs: cost_nanos is exact (Int64 nano-USD); cost_usd = cost_nanos / 1e9 for reading.

CREATE VIEW IF NOT EXISTS {db}.spend_by_team_day AS
SELECT day, team, requests, prompt_tokens, completion_tokens, cached_tokens, cost_nanos,
    cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT day, team,
        count() AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    GROUP BY day, team
);

CREATE VIEW IF NOT EXISTS {db}.spend_by_team_model_day AS
SELECT day, team, model, provider, requests, prompt_tokens, completion_tokens, cached_tokens,
    cost_nanos, cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT day, team, model, provider,
        count() AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    GROUP BY day, team, model, provider
);

CREATE VIEW IF NOT EXISTS {db}.spend_by_key_day AS
SELECT day, team, key_id, requests, prompt_tokens, completion_tokens, cached_tokens,
    cost_nanos, cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT day, team, key_id,
        count() AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    GROUP BY day, team, key_id
);

-- End-to-end latency (accepted -> result) of completed requests, by the hour they were
-- accepted. Exact quantiles: the same numbers on every ClickHouse version.
CREATE VIEW IF NOT EXISTS {db}.latency_by_model_hour AS
SELECT toStartOfHour(created_at) AS hour, model,
    count() AS requests,
    quantileExact(0.5)(latency_ms) AS p50_ms,
    quantileExact(0.95)(latency_ms) AS p95_ms,
    quantileExact(0.99)(latency_ms) AS p99_ms,
    max(latency_ms) AS max_ms
FROM {db}.results FINAL
WHERE status = 'completed'
GROUP BY hour, model;

CREATE VIEW IF NOT EXISTS {db}.outcomes_by_team_day AS
SELECT toDate(created_at) AS day, team,
    count() AS requests,
    countIf(status = 'completed') AS completed,
    countIf(status = 'failed') AS failed,
    countIf(status = 'expired') AS expired
FROM {db}.results FINAL
GROUP BY day, team;
