-- Spend per model (as asked for: an alias stays an alias) and serving provider over the 7 days
-- ending {today} (inclusive), most expensive first. Placeholders: {db} the Sluice database;
-- {today} a Date expression, normally today().
SELECT model, provider, requests, prompt_tokens, completion_tokens, cached_tokens, cost_nanos,
    cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT model, provider,
        sum(requests) AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.spend_by_model_day
    WHERE day > {today} - 7 AND day <= {today}
    GROUP BY model, provider
)
ORDER BY cost_nanos DESC, model, provider
