-- Spend per team over the 7 days ending {today} (inclusive), most expensive first.
-- Placeholders: {db} the Sluice database; {today} a Date expression, normally today().
SELECT team, requests, prompt_tokens, completion_tokens, cost_nanos, cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT team,
        sum(requests) AS requests,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.spend_by_team_day
    WHERE day > {today} - 7 AND day <= {today}
    GROUP BY team
)
ORDER BY cost_nanos DESC, team
