-- Audit content and policy columns (Audit v2), and the cost-governance views: spend per team,
-- key, model and provider per hour and day; latency percentiles per model and deployment;
-- error and throttling rates; the audit trail.
-- Runs on ClickHouse 18.16 and current releases. 18.16 has no ADD COLUMN IF NOT EXISTS: the
-- migration runner skips an `ALTER TABLE ... ADD COLUMN c` whose column already exists, so
-- each ALTER adds exactly one column.
-- Views follow 0002: FINAL reads, aggregates named in a subquery (18.16 resolves an alias
-- before a column of the same name), exact quantiles, costs in exact nano-USD.

-- SHA-256 (hex) of the final messages JSON after the guardrails (`accepted` events).
ALTER TABLE {db}.audit ADD COLUMN prompt_sha256 String DEFAULT '';
-- The messages JSON itself, only for teams whose audit content policy is `full`.
ALTER TABLE {db}.audit ADD COLUMN prompt_text String DEFAULT '';
-- SHA-256 (hex) of the completion text (`completed` events).
ALTER TABLE {db}.audit ADD COLUMN completion_sha256 String DEFAULT '';
-- The completion text, only for `full` teams.
ALTER TABLE {db}.audit ADD COLUMN completion_text String DEFAULT '';
-- Policy decisions that applied, comma-separated (pii:redact:email,template:faq@2,...).
ALTER TABLE {db}.audit ADD COLUMN policy String DEFAULT '';

CREATE VIEW IF NOT EXISTS {db}.spend_by_team_hour AS
SELECT hour, team, requests, prompt_tokens, completion_tokens, cached_tokens, cost_nanos,
    cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT toStartOfHour(created_at) AS hour, team,
        count() AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    GROUP BY hour, team
);

CREATE VIEW IF NOT EXISTS {db}.spend_by_key_hour AS
SELECT hour, team, key_id, requests, prompt_tokens, completion_tokens, cached_tokens,
    cost_nanos, cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT toStartOfHour(created_at) AS hour, team, key_id,
        count() AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    GROUP BY hour, team, key_id
);

-- `model` is what callers asked for (an alias stays an alias); `provider` served it.
CREATE VIEW IF NOT EXISTS {db}.spend_by_model_hour AS
SELECT hour, model, provider, requests, prompt_tokens, completion_tokens, cached_tokens,
    cost_nanos, cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT toStartOfHour(created_at) AS hour, model, provider,
        count() AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    GROUP BY hour, model, provider
);

CREATE VIEW IF NOT EXISTS {db}.spend_by_model_day AS
SELECT day, model, provider, requests, prompt_tokens, completion_tokens, cached_tokens,
    cost_nanos, cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT day, model, provider,
        count() AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    GROUP BY day, model, provider
);

CREATE VIEW IF NOT EXISTS {db}.spend_by_provider_hour AS
SELECT hour, provider, requests, prompt_tokens, completion_tokens, cached_tokens, cost_nanos,
    cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT toStartOfHour(created_at) AS hour, provider,
        count() AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    GROUP BY hour, provider
);

CREATE VIEW IF NOT EXISTS {db}.spend_by_provider_day AS
SELECT day, provider, requests, prompt_tokens, completion_tokens, cached_tokens, cost_nanos,
    cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT day, provider,
        count() AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    GROUP BY day, provider
);

-- End-to-end latency (accepted -> result) of completed requests per model and the deployment
-- that answered, by the hour they were accepted.
CREATE VIEW IF NOT EXISTS {db}.latency_by_deployment_hour AS
SELECT toStartOfHour(created_at) AS hour, model, deployment,
    count() AS requests,
    quantileExact(0.5)(latency_ms) AS p50_ms,
    quantileExact(0.9)(latency_ms) AS p90_ms,
    quantileExact(0.99)(latency_ms) AS p99_ms,
    max(latency_ms) AS max_ms
FROM {db}.results FINAL
WHERE status = 'completed'
GROUP BY hour, model, deployment;

-- Per team and model and hour: requests that reached a worker (results) and requests the
-- ingress refused (audit `rejected`). `throttled` = answered 429 (a provider's rate limit
-- after retries, a key's rate limit) or refused for a rate limit or budget (audit reasons
-- rate_limit*/budget*). Rates are over all requests, refused ones included. Refusals before
-- the body was read carry model ''.
CREATE VIEW IF NOT EXISTS {db}.error_rates_by_team_model_hour AS
SELECT hour, team, model, requests, failed, expired, rejected, throttled,
    (failed + expired) / requests AS error_rate,
    throttled / requests AS throttle_rate
FROM
(
    SELECT hour, team, model,
        count() AS requests,
        sum(is_failed) AS failed,
        sum(is_expired) AS expired,
        sum(is_rejected) AS rejected,
        sum(is_throttled) AS throttled
    FROM
    (
        SELECT toStartOfHour(created_at) AS hour, team, model,
            toUInt64(status = 'failed') AS is_failed,
            toUInt64(status = 'expired') AS is_expired,
            toUInt64(0) AS is_rejected,
            toUInt64(http_status = 429) AS is_throttled
        FROM {db}.results FINAL
        UNION ALL
        SELECT toStartOfHour(occurred_at) AS hour, team, model,
            toUInt64(0) AS is_failed,
            toUInt64(0) AS is_expired,
            toUInt64(1) AS is_rejected,
            toUInt64(http_status = 429 OR reason LIKE 'rate_limit%' OR reason LIKE 'budget%')
                AS is_throttled
        FROM {db}.audit FINAL
        WHERE action = 'rejected'
    )
    GROUP BY hour, team, model
);

-- Who did what and when: every audit event with its request's usage. Usage columns are
-- filled on the terminal event (completed, failed, expired) only, so sums over the trail
-- count each request once; `accepted` carries the prompt hash and the guardrail decisions.
CREATE VIEW IF NOT EXISTS {db}.audit_trail AS
SELECT occurred_at, occurred_at_ms, event_id, request_id, team, key_id, action, model,
    priority, http_status, reason, policy, prompt_sha256, completion_sha256,
    if(terminal, usage_provider, '') AS provider,
    if(terminal, usage_deployment, '') AS deployment,
    if(terminal, usage_prompt_tokens, 0) AS prompt_tokens,
    if(terminal, usage_completion_tokens, 0) AS completion_tokens,
    if(terminal, usage_cached_tokens, 0) AS cached_tokens,
    if(terminal, usage_cost_nanos, 0) AS cost_nanos,
    if(terminal, usage_status, '') AS status
FROM
(
    SELECT occurred_at, occurred_at_ms, event_id, request_id, team, key_id, action, model,
        priority, http_status, reason, policy, prompt_sha256, completion_sha256,
        action IN ('completed', 'failed', 'expired') AS terminal
    FROM {db}.audit FINAL
) AS events
ANY LEFT JOIN
(
    SELECT request_id,
        provider AS usage_provider,
        deployment AS usage_deployment,
        prompt_tokens AS usage_prompt_tokens,
        completion_tokens AS usage_completion_tokens,
        cached_tokens AS usage_cached_tokens,
        cost_nanos AS usage_cost_nanos,
        status AS usage_status
    FROM {db}.usage FINAL
) AS billed USING request_id;
