-- Requests that did not complete over the 7 days ending {today} (inclusive), by model,
-- provider and cause. Placeholders: {db} the Sluice database; {today} a Date expression,
-- normally today().
SELECT model, provider, status, error_kind, count() AS requests
FROM {db}.results FINAL
WHERE status != 'completed'
    AND toDate(created_at) > {today} - 7 AND toDate(created_at) <= {today}
GROUP BY model, provider, status, error_kind
ORDER BY requests DESC, model, provider, status, error_kind
