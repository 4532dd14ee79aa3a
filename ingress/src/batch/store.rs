//! The batch tables in ClickHouse's private database (`analytics/migrations/0005_batches.sql`,
//! moved by `0006_private_and_retention.sql`): names from [`PrivateTable`], uploaded content
//! kept for `[retention] file_days` ([`BatchStore::expires_at`]).
//!
//! Rows go as RowBinary without server-side validation (ClickHouse 18.16 cannot validate):
//! each field's Rust type is the exact type of its column.

use clickhouse::query::RowCursor;
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use sluice_schemas::tables::{private_database, PrivateTable};

use crate::config::{ClickHouseConfig, RetentionConfig};

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct FileRow {
    pub file_id: String,
    pub team: String,
    pub purpose: String,
    pub filename: String,
    pub bytes: u64,
    pub lines: u64,
    pub created_at_ms: u64,
    /// When the file and its lines go ([`BatchStore::expires_at`]).
    pub expires_at: u32,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct FileLineRow {
    pub file_id: String,
    pub line_no: u32,
    pub line: String,
    pub expires_at: u32,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct BatchRow {
    pub batch_id: String,
    pub team: String,
    pub key_id: String,
    /// `openai` or `anthropic`: how lines are read and results rendered.
    pub dialect: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    /// `validating`, `in_progress` or `failed` as the driver wrote it; the status callers
    /// see is derived (`batches.rs`).
    pub status: String,
    pub total_lines: u64,
    /// Input lines validated and published (or rejected): the driver's checkpoint.
    pub lines_done: u64,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// When the driver stopped for good (all lines, or a cancel); 0 while it runs.
    pub published_at_ms: u64,
    /// The caller's metadata, as a JSON object.
    pub metadata: String,
    pub webhook_url: String,
    pub error_message: String,
    pub version: u64,
    /// The driver's attempts at the block after `lines_done` (across restarts).
    pub attempts: u32,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct CancelRow {
    pub batch_id: String,
    pub team: String,
    pub cancelled_at_ms: u64,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct LineRow {
    pub batch_id: String,
    pub line_no: u32,
    pub custom_id: String,
    /// '' when the line was not published (then `error_code` says why).
    pub request_id: String,
    pub error_code: String,
    pub error_message: String,
}

/// One input line joined with its result ('' / 0 while it has none).
#[derive(Debug, Clone, Row, Deserialize)]
pub struct JoinedLine {
    pub line_no: u32,
    pub custom_id: String,
    pub request_id: String,
    pub error_code: String,
    pub error_message: String,
    pub status: String,
    pub http_status: i32,
    pub body: String,
    pub error_kind: String,
    pub model: String,
}

/// Counts behind a batch's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Lines published (with a request id).
    pub published: u64,
    /// Lines rejected by validation.
    pub invalid: u64,
    /// Lines never published because the batch was cancelled first.
    pub unstarted: u64,
    /// Results landed, by kind.
    pub succeeded: u64,
    pub failed: u64,
    pub expired: u64,
    pub cancelled: u64,
    /// When the last result finished.
    pub last_finished_ms: u64,
}

impl Progress {
    pub fn results(&self) -> u64 {
        self.succeeded + self.failed + self.expired + self.cancelled
    }
}

/// Splits ids bound into a query so that each query's text stays well under ClickHouse's
/// `max_query_size` (256 KiB by default): 2,000 custom_ids may be 1 MB.
fn by_query_size<'a>(ids: &'a [&'a str]) -> Vec<&'a [&'a str]> {
    const MAX_BYTES: usize = 96 * 1024;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        // Quoted, escaped (at most doubled) and comma-separated.
        let cost = id.len() * 2 + 3;
        if i > start && bytes + cost > MAX_BYTES {
            out.push(&ids[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += cost;
    }
    if start < ids.len() {
        out.push(&ids[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::by_query_size;

    #[test]
    fn bound_ids_are_split_by_query_size() {
        let long = "x".repeat(512);
        let ids: Vec<&str> = (0..2_000).map(|_| long.as_str()).collect();
        let parts = by_query_size(&ids);
        assert!(parts.len() > 10);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), 2_000);
        assert!(parts.iter().all(|p| p.len() * (512 * 2 + 3) <= 96 * 1024));
        let short = ["a", "b"];
        assert_eq!(by_query_size(&short), vec![&short[..]]);
        assert!(by_query_size(&[]).is_empty());
    }
}

#[derive(Clone)]
pub struct BatchStore {
    /// Bound to the private database.
    client: Client,
    /// The private database (`<clickhouse.database>_private`).
    database: String,
    file_days: u32,
}

impl BatchStore {
    pub fn new(config: &ClickHouseConfig, retention: &RetentionConfig) -> BatchStore {
        BatchStore {
            client: config.client(),
            database: private_database(&config.database),
            file_days: retention.file_days,
        }
    }

    /// `expires_at` of content uploaded now (files and their lines).
    pub fn expires_at(&self) -> u32 {
        sluice_schemas::tables::expires_at(sluice_schemas::now_ms(), self.file_days)
    }

    /// `<private db>.<table>`.
    fn table(&self, table: PrivateTable) -> String {
        format!("{}.{}", self.database, table.name())
    }

    pub async fn insert<R>(
        &self,
        table: PrivateTable,
        rows: &[R],
    ) -> Result<(), clickhouse::error::Error>
    where
        R: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<R>(table.name()).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    /// A team's file (not deleted).
    pub async fn file(
        &self,
        file_id: &str,
        team: &str,
    ) -> Result<Option<FileRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT ?fields FROM {} FINAL \
             WHERE file_id = ? AND team = ? AND purpose != 'deleted' LIMIT 1",
            self.table(PrivateTable::BatchFiles)
        );
        self.client
            .query(&sql)
            .bind(file_id)
            .bind(team)
            .fetch_optional()
            .await
    }

    /// The lines of a file from `from` on, in order, streamed.
    pub fn file_lines(
        &self,
        file_id: &str,
        from: u32,
    ) -> Result<RowCursor<FileLineRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT ?fields FROM {} FINAL \
             WHERE file_id = ? AND line_no >= ? ORDER BY line_no",
            self.table(PrivateTable::BatchFileLines)
        );
        self.client
            .query(&sql)
            .bind(file_id)
            .bind(from)
            .fetch::<FileLineRow>()
    }

    pub async fn batch(
        &self,
        batch_id: &str,
        team: &str,
    ) -> Result<Option<BatchRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT ?fields FROM {} FINAL \
             WHERE batch_id = ? AND team = ? AND status != 'deleted' LIMIT 1",
            self.table(PrivateTable::Batches)
        );
        self.client
            .query(&sql)
            .bind(batch_id)
            .bind(team)
            .fetch_optional()
            .await
    }

    /// A team's batches of one dialect, newest first, older than `before` (a batch id).
    pub async fn list(
        &self,
        team: &str,
        dialect: &str,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<BatchRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT ?fields FROM {} FINAL WHERE team = ? AND dialect = ? AND batch_id < ? \
             AND status != 'deleted' ORDER BY batch_id DESC LIMIT ?",
            self.table(PrivateTable::Batches)
        );
        // Ids are time-ordered (UUIDv7): `~` sorts after every id.
        self.client
            .query(&sql)
            .bind(team)
            .bind(dialect)
            .bind(before.unwrap_or("~"))
            .bind(limit)
            .fetch_all()
            .await
    }

    /// The newest batches of every team (the operators' console), newest first.
    pub async fn recent(&self, limit: u64) -> Result<Vec<BatchRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT ?fields FROM {} FINAL WHERE status != 'deleted' ORDER BY batch_id DESC LIMIT ?",
            self.table(PrivateTable::Batches)
        );
        self.client.query(&sql).bind(limit).fetch_all().await
    }

    /// Batches whose driver has not finished (to resume at start-up).
    pub async fn unfinished(&self) -> Result<Vec<BatchRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT ?fields FROM {} FINAL WHERE published_at_ms = 0 AND status != 'failed'",
            self.table(PrivateTable::Batches)
        );
        self.client.query(&sql).fetch_all().await
    }

    pub async fn cancelled_at(&self, batch_id: &str) -> Result<u64, clickhouse::error::Error> {
        let sql = format!(
            "SELECT toUInt64(max(cancelled_at_ms)) FROM {} WHERE batch_id = ?",
            self.table(PrivateTable::BatchCancels)
        );
        self.client.query(&sql).bind(batch_id).fetch_one().await
    }

    /// Which of `custom_ids` lines before `before_line` already used (the driver's
    /// duplicate check, one block at a time: exact, and memory bounded by the block).
    pub async fn used_custom_ids(
        &self,
        batch_id: &str,
        before_line: u32,
        custom_ids: &[&str],
    ) -> Result<Vec<String>, clickhouse::error::Error> {
        if custom_ids.is_empty() || before_line == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT DISTINCT custom_id FROM {} FINAL \
             WHERE batch_id = ? AND line_no < ? AND custom_id IN (SELECT arrayJoin(?))",
            self.table(PrivateTable::BatchLines)
        );
        let mut used = Vec::new();
        for ids in by_query_size(custom_ids) {
            let found: Vec<String> = self
                .client
                .query(&sql)
                .bind(batch_id)
                .bind(before_line)
                .bind(ids)
                .fetch_all()
                .await?;
            used.extend(found);
        }
        Ok(used)
    }

    /// Which of a batch's line request ids have a receipt: a result, or an `accepted`
    /// audit row (the line reached Kafka). A resumed driver publishes only the others.
    pub async fn receipts(
        &self,
        batch_id: &str,
        team: &str,
        request_ids: &[&str],
    ) -> Result<Vec<String>, clickhouse::error::Error> {
        if request_ids.is_empty() {
            return Ok(Vec::new());
        }
        let (from, to) = super::request_id_range(batch_id);
        // Both tables live in the private database, the only one the ingress may read.
        let sql = format!(
            "SELECT request_id FROM {} \
             WHERE request_id >= ? AND request_id < ? AND request_id IN (SELECT arrayJoin(?)) \
             UNION ALL SELECT request_id FROM {} \
             WHERE team = ? AND request_id >= ? AND request_id < ? AND request_id IN (SELECT arrayJoin(?))",
            self.table(PrivateTable::ResultBodies),
            self.table(PrivateTable::AcceptedRequests),
        );
        let mut found = Vec::new();
        for ids in by_query_size(request_ids) {
            let some: Vec<String> = self
                .client
                .query(&sql)
                .bind(&from)
                .bind(&to)
                .bind(ids)
                .bind(team)
                .bind(&from)
                .bind(&to)
                .bind(ids)
                .fetch_all()
                .await?;
            found.extend(some);
        }
        Ok(found)
    }

    /// (bytes, lines) of the files a team stores.
    pub async fn team_usage(&self, team: &str) -> Result<(u64, u64), clickhouse::error::Error> {
        let sql = format!(
            "SELECT toUInt64(sum(bytes)), toUInt64(sum(lines)) FROM {} FINAL \
             WHERE team = ? AND purpose != 'deleted'",
            self.table(PrivateTable::BatchFiles)
        );
        self.client.query(&sql).bind(team).fetch_one().await
    }

    /// How many batches read the file, and how many of them are still being published.
    pub async fn batches_of_file(
        &self,
        file_id: &str,
    ) -> Result<(u64, u64), clickhouse::error::Error> {
        let sql = format!(
            "SELECT toUInt64(count()), \
             toUInt64(countIf(published_at_ms = 0 AND status != 'failed')) \
             FROM {} FINAL WHERE input_file_id = ?",
            self.table(PrivateTable::Batches)
        );
        self.client.query(&sql).bind(file_id).fetch_one().await
    }

    /// A team's batches whose driver has not finished publishing.
    pub async fn open_batches(&self, team: &str) -> Result<u64, clickhouse::error::Error> {
        let sql = format!(
            "SELECT toUInt64(count()) FROM {} FINAL \
             WHERE team = ? AND published_at_ms = 0 AND status != 'failed'",
            self.table(PrivateTable::Batches)
        );
        self.client.query(&sql).bind(team).fetch_one().await
    }

    /// Deletes a file: a tombstone hides it at once (it wins under FINAL), then its lines
    /// are removed (an asynchronous mutation on ClickHouse).
    pub async fn delete_file(&self, file: &FileRow) -> Result<(), clickhouse::error::Error> {
        let tombstone = FileRow {
            purpose: "deleted".into(),
            filename: String::new(),
            bytes: 0,
            lines: 0,
            created_at_ms: file.created_at_ms + 1,
            ..file.clone()
        };
        self.insert(PrivateTable::BatchFiles, std::slice::from_ref(&tombstone))
            .await?;
        self.discard_lines(&file.file_id).await
    }

    /// Deletes an ended batch: a newer row with status `deleted` hides it; its line
    /// records and results stay for analytics (and the retention that applies to them).
    pub async fn delete_batch(&self, batch: &BatchRow) -> Result<(), clickhouse::error::Error> {
        let deleted = BatchRow {
            status: "deleted".into(),
            version: super::next_version(),
            ..batch.clone()
        };
        self.insert(PrivateTable::Batches, std::slice::from_ref(&deleted))
            .await
    }

    /// Removes the stored lines of a file (a failed upload's, a deleted file's).
    ///
    /// A mutation is DDL to ClickHouse 18.16: the ingress user's profile has `allow_ddl=0`,
    /// and this one query lifts it (what bounds the ingress user is its database, the private
    /// one; scripts/services.sh). Current ClickHouse grants it `ALTER DELETE` there instead.
    pub async fn discard_lines(&self, file_id: &str) -> Result<(), clickhouse::error::Error> {
        let sql = format!(
            "ALTER TABLE {} DELETE WHERE file_id = ?",
            self.table(PrivateTable::BatchFileLines)
        );
        self.client
            .query(&sql)
            .bind(file_id)
            .with_setting("allow_ddl", "1")
            .execute()
            .await
    }

    pub async fn progress(&self, batch_id: &str) -> Result<Progress, clickhouse::error::Error> {
        let lines_sql = format!(
            "SELECT toUInt64(countIf(request_id != '')), \
             toUInt64(countIf(request_id = '' AND error_code != 'batch_cancelled')), \
             toUInt64(countIf(error_code = 'batch_cancelled')) \
             FROM {} FINAL WHERE batch_id = ?",
            self.table(PrivateTable::BatchLines)
        );
        let (published, invalid, unstarted): (u64, u64, u64) = self
            .client
            .query(&lines_sql)
            .bind(batch_id)
            .fetch_one()
            .await?;
        let (from, to) = super::request_id_range(batch_id);
        let results_sql = format!(
            "SELECT toUInt64(countIf(status = 'completed' AND http_status < 300)), \
             toUInt64(countIf(status = 'expired')), \
             toUInt64(countIf(status != 'expired' AND error_kind = 'client_disconnected')), \
             toUInt64(count()), toUInt64(max(finished_at_ms)) \
             FROM {} FINAL WHERE request_id >= ? AND request_id < ?",
            self.table(PrivateTable::ResultBodies)
        );
        let (succeeded, expired, cancelled, all, last_finished_ms): (u64, u64, u64, u64, u64) =
            self.client
                .query(&results_sql)
                .bind(&from)
                .bind(&to)
                .fetch_one()
                .await?;
        Ok(Progress {
            published,
            invalid,
            unstarted,
            succeeded,
            failed: all.saturating_sub(succeeded + expired + cancelled),
            expired,
            cancelled,
            last_finished_ms,
        })
    }

    /// Every line of a batch with its result, in line order, streamed. (Current ClickHouse
    /// requires the subquery aliases; 18.16 accepts them.)
    pub fn joined(
        &self,
        batch_id: &str,
    ) -> Result<RowCursor<JoinedLine>, clickhouse::error::Error> {
        let (from, to) = super::request_id_range(batch_id);
        let lines = self.table(PrivateTable::BatchLines);
        let results = self.table(PrivateTable::ResultBodies);
        let sql = format!(
            "SELECT toUInt32(line_no), custom_id, request_id, error_code, error_message, \
             status, toInt32(http_status), body, error_kind, model \
             FROM (SELECT line_no, custom_id, request_id, error_code, error_message \
                   FROM {lines} FINAL WHERE batch_id = ?) AS l \
             ANY LEFT JOIN (SELECT request_id, status, http_status, body, error_kind, model \
                   FROM {results} FINAL WHERE request_id >= ? AND request_id < ?) AS r \
             USING request_id ORDER BY line_no"
        );
        self.client
            .query(&sql)
            .bind(batch_id)
            .bind(&from)
            .bind(&to)
            .fetch::<JoinedLine>()
    }
}
