-- The response cache (docs/cache.md): a usage row of an answer served from the cache has
-- cache_hit = 1, cost_nanos 0 (no provider was called, no team is charged) and in
-- saved_nanos what the answer would have cost at the model's price. Older rows read 0.
-- Runs on ClickHouse 18.16 and current releases (one column per ALTER: see 0004).

ALTER TABLE {db}.usage ADD COLUMN cache_hit UInt8 DEFAULT 0;

ALTER TABLE {db}.usage ADD COLUMN saved_nanos Int64 DEFAULT 0;
