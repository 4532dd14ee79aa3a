-- Replay and shadow traffic (docs/replay.md): requests re-run from the request topics
-- (sluice-replay, POST /admin/replays) or mirrored from live traffic ([[shadows]]) against
-- another model or deployment. Their results and usage come from the replay topics into
-- these tables only: never into results, usage or attempts, so no caller sees them and no
-- team is billed for them. A row is keyed by (replay_id, original_request_id): a request
-- re-run twice in one replay (the tool restarted) counts once.
-- Runs on ClickHouse 18.16 and current releases: one JOIN per SELECT, USING, no NULLs.

CREATE TABLE IF NOT EXISTS {db}.replay_results
(
    replay_id String,
    original_request_id String,
    request_id String,
    team String,
    model String,
    status String,
    http_status Int32,
    error_kind String,
    provider String,
    deployment String,
    prompt_tokens Int32,
    completion_tokens Int32,
    created_at_ms Int64,
    started_at_ms Int64,
    finished_at_ms UInt64,
    -- SHA-256 of the completion's text (as audit rows hash it), '' without text: the
    -- exact-match comparison; the text itself is not kept.
    completion_sha256 String,
    -- Characters of the completion's text.
    output_chars Int32,
    created_at DateTime('UTC') DEFAULT toDateTime(intDiv(created_at_ms, 1000))
)
ENGINE = ReplacingMergeTree(finished_at_ms)
PARTITION BY toYYYYMM(created_at)
ORDER BY (replay_id, original_request_id);

CREATE TABLE IF NOT EXISTS {db}.replay_usage
(
    replay_id String,
    original_request_id String,
    request_id String,
    team String,
    model String,
    provider String,
    deployment String,
    status String,
    prompt_tokens Int32,
    completion_tokens Int32,
    cached_tokens Int32,
    -- What the provider bills the operator for the re-run, nano-USD; never a team's spend.
    cost_nanos Int64,
    estimated UInt8 DEFAULT 0,
    created_at_ms Int64,
    occurred_at_ms UInt64,
    created_at DateTime('UTC') DEFAULT toDateTime(intDiv(created_at_ms, 1000))
)
ENGINE = ReplacingMergeTree(occurred_at_ms)
PARTITION BY toYYYYMM(created_at)
ORDER BY (replay_id, original_request_id);

-- Each re-run beside its original: model, deployment, status, cost, tokens, provider time
-- (finished - started, so queueing does not count against either) and whether the answer's
-- text is the same (exact_match: both hashes known and equal; an original whose team's audit
-- policy is `none` has no hash and never matches). An original no longer in `results` shows
-- empty and zero columns.
CREATE VIEW IF NOT EXISTS {db}.replay_comparison AS
SELECT replay_id, original_request_id, team,
    original_model, replay_model, original_deployment, replay_deployment,
    original_status, replay_status,
    original_cost_nanos, replay_cost_nanos,
    original_prompt_tokens, replay_prompt_tokens,
    original_completion_tokens, replay_completion_tokens,
    original_latency_ms, replay_latency_ms,
    replay_output_chars,
    toUInt8(original_completion_sha256 != '' AND original_completion_sha256 = replay_completion_sha256) AS exact_match
FROM
(
    SELECT * FROM
    (
        SELECT * FROM
        (
            SELECT * FROM
            (
                SELECT replay_id, original_request_id, team,
                    model AS replay_model, deployment AS replay_deployment, status AS replay_status,
                    prompt_tokens AS replay_prompt_tokens, completion_tokens AS replay_completion_tokens,
                    toInt64(finished_at_ms) - started_at_ms AS replay_latency_ms,
                    completion_sha256 AS replay_completion_sha256, output_chars AS replay_output_chars
                FROM {db}.replay_results FINAL
            ) AS runs
            ANY LEFT JOIN
            (
                SELECT replay_id, original_request_id, cost_nanos AS replay_cost_nanos
                FROM {db}.replay_usage FINAL
            ) AS costs USING (replay_id, original_request_id)
        ) AS priced
        ANY LEFT JOIN
        (
            SELECT request_id AS original_request_id,
                model AS original_model, deployment AS original_deployment, status AS original_status,
                prompt_tokens AS original_prompt_tokens, completion_tokens AS original_completion_tokens,
                toInt64(finished_at_ms) - started_at_ms AS original_latency_ms
            FROM {db}.results FINAL
        ) AS originals USING (original_request_id)
    ) AS paired
    ANY LEFT JOIN
    (
        SELECT request_id AS original_request_id, cost_nanos AS original_cost_nanos
        FROM {db}.usage FINAL
    ) AS original_costs USING (original_request_id)
) AS compared
ANY LEFT JOIN
(
    SELECT request_id AS original_request_id, max(completion_sha256) AS original_completion_sha256
    FROM {db}.audit
    WHERE action = 'completed'
    GROUP BY request_id
) AS digests USING (original_request_id);

-- One replay (or shadow) per team, in aggregate (the originals may be of several models): requests re-run, how many
-- of the originals and of the re-runs completed, what each cost, output tokens, mean
-- provider time, and how many answers matched exactly (exact_matches / requests is the
-- exact-match rate).
CREATE VIEW IF NOT EXISTS {db}.replay_summary AS
SELECT replay_id, team, replay_model,
    count() AS requests,
    sum(original_status = 'completed') AS original_completed,
    sum(replay_status = 'completed') AS replay_completed,
    sum(original_cost_nanos) AS original_cost_nanos,
    sum(replay_cost_nanos) AS replay_cost_nanos,
    sum(original_completion_tokens) AS original_completion_tokens,
    sum(replay_completion_tokens) AS replay_completion_tokens,
    intDiv(sum(original_latency_ms), count()) AS original_mean_latency_ms,
    intDiv(sum(replay_latency_ms), count()) AS replay_mean_latency_ms,
    sum(exact_match) AS exact_matches
FROM {db}.replay_comparison
GROUP BY replay_id, team, replay_model;
