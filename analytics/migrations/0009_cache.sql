-- The response cache (docs/cache.md): a usage row of an answer served from the cache has
-- cache_hit = 1, cost_nanos 0 (no provider was called, no team is charged) and in
-- saved_nanos what the answer would have cost at the model's price. Older rows read 0.
-- Runs on ClickHouse 18.16 and current releases (one column per ALTER: see 0004).

ALTER TABLE {db}.usage ADD COLUMN cache_hit UInt8 DEFAULT 0;

ALTER TABLE {db}.usage ADD COLUMN saved_nanos Int64 DEFAULT 0;

-- Hit rate and savings per team, model and day (of the request's acceptance): of the
-- completed requests, how many the cache answered, what they saved and what the rest cost.
-- hits / requests is the hit rate.
CREATE VIEW IF NOT EXISTS {db}.cache_by_team_model_day AS
SELECT day, team, model, requests, hits, saved_nanos, saved_nanos / 1e9 AS saved_usd, cost_nanos
FROM
(
    SELECT day, team, model,
        count() AS requests,
        sum(cache_hit) AS hits,
        sum(saved_nanos) AS saved_nanos,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    WHERE status = 'completed'
    GROUP BY day, team, model
);
