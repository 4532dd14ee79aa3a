-- The 10 API keys that cost most over the 30 days ending {today} (inclusive).
-- Placeholders: {db} the Sluice database; {today} a Date expression, normally today().
SELECT team, key_id, requests, models, cost_nanos, cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT team, key_id,
        count() AS requests,
        uniqExact(model) AS models,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.usage FINAL
    WHERE day > {today} - 30 AND day <= {today}
    GROUP BY team, key_id
)
ORDER BY cost_nanos DESC, team, key_id
LIMIT 10
