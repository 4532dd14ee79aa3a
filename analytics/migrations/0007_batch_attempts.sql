-- A batch driver's attempts at the block of lines after its checkpoint (`lines_done`),
-- counted across restarts: a block that keeps interrupting its driver (a crash, a broker
-- that refuses its lines) fails its unpublished lines after `[batch] max_publish_attempts`
-- instead of being retried forever. 0 for rows written before this column.
ALTER TABLE {private}.batches ADD COLUMN attempts UInt32 DEFAULT 0;
