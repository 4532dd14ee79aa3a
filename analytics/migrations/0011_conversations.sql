-- Stored conversations of the Responses API (docs/responses.md#stored-conversations): for a
-- team whose retention policy allows it (`[responses] store_teams` in the ingress config), a
-- response made with `store: true` keeps the input items it was answered from; a later
-- request with `previous_response_id` continues from them and the stored answer
-- ({private}.result_bodies). Caller content: private, and it expires with its day like the
-- other content tables (the retention job drops past days; `@if ttl` on current servers).
-- Runs on ClickHouse 18.16 and current releases.

CREATE TABLE IF NOT EXISTS {private}.conversation_inputs
(
    request_id String,
    team String,
    -- The Responses API input items the response was answered from, earlier turns
    -- included (a JSON array), without `instructions` (they are not carried over).
    items String,
    -- The response's output items (a JSON array) when the ingress had them at hand (a sync
    -- answer); '' when they are read from result_bodies (streamed and background answers).
    output String,
    created_at_ms Int64,
    expires_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(created_at_ms)
PARTITION BY toYYYYMMDD(expires_at)
ORDER BY (request_id);

-- @if ttl
ALTER TABLE {private}.conversation_inputs MODIFY TTL expires_at;
