-- Failures, expiries, refusals and throttling per team over the 7 days ending {today}
-- (inclusive), most throttled first. throttled = 429s and rate-limit or budget refusals.
-- Placeholders: {db} the Sluice database; {today} a Date expression, normally today().
SELECT team, requests, failed, expired, rejected, throttled,
    (failed + expired) / requests AS error_rate,
    throttled / requests AS throttle_rate
FROM
(
    SELECT team,
        sum(requests) AS requests,
        sum(failed) AS failed,
        sum(expired) AS expired,
        sum(rejected) AS rejected,
        sum(throttled) AS throttled
    FROM {db}.error_rates_by_team_model_hour
    WHERE toDate(hour) > {today} - 7 AND toDate(hour) <= {today}
    GROUP BY team
)
ORDER BY throttled DESC, team
