-- Requests the ingress rejected (audit), over the 7 days ending {today} (inclusive), by team
-- and reason. Placeholders: {db} the Sluice database; {today} a Date expression, normally
-- today().
SELECT team, reason, http_status, count() AS rejections
FROM {db}.audit FINAL
WHERE action = 'rejected'
    AND toDate(occurred_at) > {today} - 7 AND toDate(occurred_at) <= {today}
GROUP BY team, reason, http_status
ORDER BY rejections DESC, team, reason, http_status
