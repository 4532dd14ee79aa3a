-- Spend per team from the first of the month of {today} to {today} (inclusive): what budgets
-- are checked against. Placeholders: {db} the Sluice database; {today} a Date expression,
-- normally today().
SELECT team, requests, cost_nanos, cost_nanos / 1e9 AS cost_usd
FROM
(
    SELECT team,
        sum(requests) AS requests,
        sum(cost_nanos) AS cost_nanos
    FROM {db}.spend_by_team_day
    WHERE day >= toStartOfMonth({today}) AND day <= {today}
    GROUP BY team
)
ORDER BY cost_nanos DESC, team
