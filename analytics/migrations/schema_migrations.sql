-- Bookkeeping, run before the numbered migrations on every start: the database and the record
-- of applied migrations. Concurrent runners may both record a version; ReplacingMergeTree
-- (and SELECT DISTINCT) make that harmless.
CREATE DATABASE IF NOT EXISTS {db};

CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
ORDER BY version;
