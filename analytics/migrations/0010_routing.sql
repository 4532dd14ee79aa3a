-- Routing (docs/scheduling.md#routing): why a request's deployments were tried in the order
-- they were (the strategy and what it saw, e.g. `latency: eu-1 (21.0 ms, 0 in flight) over
-- us-1 (480.0 ms, 2 in flight) of 2 drawn`), and where the deployment that answered runs.
-- Results written before v3 read ''.
-- Runs on ClickHouse 18.16 and current releases (one column per ALTER: see 0004).

ALTER TABLE {db}.results ADD COLUMN routing_reason String DEFAULT '';

ALTER TABLE {db}.results ADD COLUMN location String DEFAULT '';
