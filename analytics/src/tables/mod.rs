//! ClickHouse tables and their rows. Columns with a DEFAULT in the migrations (`created_at`,
//! `day`, `results.latency_ms`, `audit.occurred_at`) are derived by ClickHouse and not sent.
//! Rows name their columns on insert, so a column added by a later migration (the audit
//! content of 0004) goes into the row type wherever it fits.
//!
//! Rows go as RowBinary without server-side validation (ClickHouse 18.16 cannot validate):
//! each field's Rust type must be the exact width and signedness of its column. The
//! integration tests read every column back to hold this.

use std::time::Duration;

use clickhouse::{Client, Row, RowOwned, RowWrite};
use serde::{Deserialize, Serialize};
use sluice_schemas::tables::{expires_at, PrivateTable};
use sluice_schemas::{Audit, AuditAction, Usage};

mod replay;

pub use replay::{ReplayResultRow, ReplayUsageRow};

use crate::config::Compression;
use crate::error::Error;

/// Every table (and view) Sluice writes or reads, by its unqualified name. All but
/// [`Table::Private`] are in the analyst database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// A table of the private database (`<db>_private`), which analysts cannot read.
    Private(PrivateTable),
    Results,
    Usage,
    Audit,
    BudgetAlerts,
    Attempts,
    SchemaMigrations,
    SpendByTeamDay,
    SpendByTeamModelDay,
    SpendByKeyDay,
    LatencyByModelHour,
    OutcomesByTeamDay,
    SpendByTeamHour,
    SpendByKeyHour,
    SpendByModelHour,
    SpendByModelDay,
    SpendByProviderHour,
    SpendByProviderDay,
    LatencyByDeploymentHour,
    ErrorRatesByTeamModelHour,
    AuditTrail,
    ReconciliationByDeploymentDay,
    CacheByTeamModelDay,
    ReplayResults,
    ReplayUsage,
    ReplayComparison,
    ReplaySummary,
}

impl Table {
    pub const VIEWS: [Table; 18] = [
        Table::SpendByTeamDay,
        Table::SpendByTeamModelDay,
        Table::SpendByKeyDay,
        Table::LatencyByModelHour,
        Table::OutcomesByTeamDay,
        Table::SpendByTeamHour,
        Table::SpendByKeyHour,
        Table::SpendByModelHour,
        Table::SpendByModelDay,
        Table::SpendByProviderHour,
        Table::SpendByProviderDay,
        Table::LatencyByDeploymentHour,
        Table::ErrorRatesByTeamModelHour,
        Table::AuditTrail,
        Table::ReconciliationByDeploymentDay,
        Table::CacheByTeamModelDay,
        Table::ReplayComparison,
        Table::ReplaySummary,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Private(table) => table.name(),
            Table::Results => "results",
            Table::Usage => "usage",
            Table::Audit => "audit",
            Table::BudgetAlerts => "budget_alerts",
            Table::Attempts => "attempts",
            Table::SchemaMigrations => "schema_migrations",
            Table::SpendByTeamDay => "spend_by_team_day",
            Table::SpendByTeamModelDay => "spend_by_team_model_day",
            Table::SpendByKeyDay => "spend_by_key_day",
            Table::LatencyByModelHour => "latency_by_model_hour",
            Table::OutcomesByTeamDay => "outcomes_by_team_day",
            Table::SpendByTeamHour => "spend_by_team_hour",
            Table::SpendByKeyHour => "spend_by_key_hour",
            Table::SpendByModelHour => "spend_by_model_hour",
            Table::SpendByModelDay => "spend_by_model_day",
            Table::SpendByProviderHour => "spend_by_provider_hour",
            Table::SpendByProviderDay => "spend_by_provider_day",
            Table::LatencyByDeploymentHour => "latency_by_deployment_hour",
            Table::ErrorRatesByTeamModelHour => "error_rates_by_team_model_hour",
            Table::AuditTrail => "audit_trail",
            Table::ReconciliationByDeploymentDay => "reconciliation_by_deployment_day",
            Table::CacheByTeamModelDay => "cache_by_team_model_day",
            Table::ReplayResults => "replay_results",
            Table::ReplayUsage => "replay_usage",
            Table::ReplayComparison => "replay_comparison",
            Table::ReplaySummary => "replay_summary",
        }
    }
}

impl Table {
    /// `database.table`, for the analyst database `db`.
    pub fn qualified(self, db: &str) -> String {
        match self {
            Table::Private(table) => table.qualified(db),
            other => format!("{db}.{}", other.name()),
        }
    }
}

/// A row type and the table it goes to.
pub trait TableRow: RowOwned + RowWrite + Send + Sync {
    const TABLE: Table;
}

/// One request outcome (`results`), from [`sluice_schemas::Result`].
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct ResultRow {
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub priority: String,
    pub model: String,
    /// W3C traceparent, '' when absent.
    pub traceparent: String,
    pub status: String,
    pub http_status: i32,
    /// '' when the request did not fail.
    pub error_kind: String,
    pub provider: String,
    pub deployment: String,
    pub attempts: i32,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub created_at_ms: i64,
    pub started_at_ms: i64,
    /// Also the ReplacingMergeTree version: a re-processed request keeps its latest result.
    pub finished_at_ms: u64,
    pub worker: String,
    /// Deployments passed over before the one that answered (or failed last).
    pub fallbacks: i32,
    /// Why its deployments were tried in that order; '' before v3 results.
    pub routing_reason: String,
    /// Where the deployment that answered (or failed last) runs; '' when it has none.
    pub location: String,
}

impl TableRow for ResultRow {
    const TABLE: Table = Table::Results;
}

impl From<sluice_schemas::Result> for ResultRow {
    fn from(r: sluice_schemas::Result) -> Self {
        ResultRow {
            request_id: r.request_id,
            team: r.team,
            key_id: r.key_id,
            priority: r.priority.as_str().to_owned(),
            model: r.model,
            traceparent: r.traceparent.unwrap_or_default(),
            status: r.status.as_str().to_owned(),
            http_status: r.http_status,
            error_kind: r.error_kind.unwrap_or_default(),
            provider: r.provider,
            deployment: r.deployment,
            attempts: r.attempts,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: non_negative(r.finished_at_ms),
            worker: r.worker,
            fallbacks: r.fallbacks,
            routing_reason: r.routing_reason.unwrap_or_default(),
            location: r.location.unwrap_or_default(),
        }
    }
}

/// A request's final status and its whole response body, for the async and batch APIs only
/// (private `result_bodies`; analysts never read it). Kept until `expires_at`.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct ResultBodyRow {
    pub request_id: String,
    pub team: String,
    pub status: String,
    pub http_status: i32,
    /// OpenAI-shaped response or error body (JSON).
    pub body: String,
    pub error_kind: String,
    pub model: String,
    pub created_at_ms: i64,
    /// The ReplacingMergeTree version.
    pub finished_at_ms: u64,
    /// Seconds since the epoch: `created_at_ms` plus the retention.
    pub expires_at: u32,
}

impl TableRow for ResultBodyRow {
    const TABLE: Table = Table::Private(PrivateTable::ResultBodies);
}

impl ResultBodyRow {
    pub fn new(r: &sluice_schemas::Result, retention_days: u32) -> ResultBodyRow {
        ResultBodyRow {
            request_id: r.request_id.clone(),
            team: r.team.clone(),
            status: r.status.as_str().to_owned(),
            http_status: r.http_status,
            body: r.body.clone(),
            error_kind: r.error_kind.clone().unwrap_or_default(),
            model: r.model.clone(),
            created_at_ms: r.created_at_ms,
            finished_at_ms: non_negative(r.finished_at_ms),
            expires_at: expires_at(r.created_at_ms, retention_days),
        }
    }
}

/// A request the ingress accepted (private `accepted_requests`), so any ingress replica
/// answers "queued" for it until its result lands.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AcceptedRow {
    pub request_id: String,
    pub team: String,
    pub occurred_at_ms: u64,
    pub expires_at: u32,
}

impl TableRow for AcceptedRow {
    const TABLE: Table = Table::Private(PrivateTable::AcceptedRequests);
}

impl AcceptedRow {
    /// The row of an `accepted` audit event; none for other events.
    pub fn of(a: &Audit, retention_days: u32) -> Option<AcceptedRow> {
        (a.action == AuditAction::Accepted).then(|| AcceptedRow {
            request_id: a.request_id.clone(),
            team: a.team.clone(),
            occurred_at_ms: non_negative(a.occurred_at_ms),
            expires_at: expires_at(a.occurred_at_ms, retention_days),
        })
    }
}

/// Billable usage of one request (`usage`), from [`sluice_schemas::Usage`].
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct UsageRow {
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub priority: String,
    pub model: String,
    pub provider: String,
    pub deployment: String,
    pub status: String,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cached_tokens: i32,
    pub cost_nanos: i64,
    pub created_at_ms: i64,
    pub latency_ms: i64,
    /// The ReplacingMergeTree version.
    pub occurred_at_ms: u64,
    /// 1 when the token counts are a tiktoken estimate (the provider reported none).
    pub estimated: u8,
    /// 1 for an answer from the response cache (cost 0, `saved_nanos` what it saved).
    pub cache_hit: u8,
    pub saved_nanos: i64,
}

impl TableRow for UsageRow {
    const TABLE: Table = Table::Usage;
}

impl From<Usage> for UsageRow {
    fn from(u: Usage) -> Self {
        UsageRow {
            request_id: u.request_id,
            team: u.team,
            key_id: u.key_id,
            priority: u.priority.as_str().to_owned(),
            model: u.model,
            provider: u.provider,
            deployment: u.deployment,
            status: u.status.as_str().to_owned(),
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
            cost_nanos: u.cost_nanos,
            created_at_ms: u.created_at_ms,
            latency_ms: u.latency_ms,
            occurred_at_ms: non_negative(u.occurred_at_ms),
            estimated: u8::from(u.estimated),
            cache_hit: u8::from(u.cache_hit),
            saved_nanos: u.saved_nanos,
        }
    }
}

/// One audit event (`audit`), from [`sluice_schemas::Audit`].
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AuditRow {
    pub event_id: String,
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub action: String,
    pub model: String,
    pub priority: String,
    pub http_status: i32,
    /// '' when there is none.
    pub reason: String,
    pub prompt_tokens: i32,
    /// The ReplacingMergeTree version.
    pub occurred_at_ms: u64,
    /// '' when the team's audit content policy is `none` (and on events without content).
    pub prompt_sha256: String,
    /// '' unless the team's audit content policy is `full`.
    pub prompt_text: String,
    pub completion_sha256: String,
    pub completion_text: String,
    /// Policy decisions, comma-separated; '' when none applied.
    pub policy: String,
}

impl TableRow for AuditRow {
    const TABLE: Table = Table::Audit;
}

impl From<Audit> for AuditRow {
    fn from(a: Audit) -> Self {
        AuditRow {
            event_id: a.event_id,
            request_id: a.request_id,
            team: a.team,
            key_id: a.key_id,
            action: a.action.as_str().to_owned(),
            model: a.model,
            priority: a.priority.as_str().to_owned(),
            http_status: a.http_status,
            reason: a.reason.unwrap_or_default(),
            prompt_tokens: a.prompt_tokens,
            occurred_at_ms: non_negative(a.occurred_at_ms),
            prompt_sha256: a.prompt_sha256.unwrap_or_default(),
            prompt_text: a.prompt_text.unwrap_or_default(),
            completion_sha256: a.completion_sha256.unwrap_or_default(),
            completion_text: a.completion_text.unwrap_or_default(),
            policy: a.policy.unwrap_or_default(),
        }
    }
}

/// A budget threshold crossing (`budget_alerts`), from [`sluice_schemas::BudgetAlert`].
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct BudgetAlertRow {
    /// `scope:subject:period_start_ms:threshold_pct`, the same on every replica.
    pub alert_id: String,
    pub scope: String,
    pub subject: String,
    pub period: String,
    pub period_start_ms: i64,
    pub threshold_pct: i32,
    pub limit_nanos: i64,
    pub spent_nanos: i64,
    pub occurred_at_ms: i64,
    pub instance: String,
}

impl TableRow for BudgetAlertRow {
    const TABLE: Table = Table::BudgetAlerts;
}

impl From<sluice_schemas::BudgetAlert> for BudgetAlertRow {
    fn from(a: sluice_schemas::BudgetAlert) -> Self {
        BudgetAlertRow {
            alert_id: a.alert_id,
            scope: a.scope,
            subject: a.subject,
            period: a.period,
            period_start_ms: a.period_start_ms,
            threshold_pct: a.threshold_pct,
            limit_nanos: a.limit_nanos,
            spent_nanos: a.spent_nanos,
            occurred_at_ms: a.occurred_at_ms,
            instance: a.instance,
        }
    }
}

/// One provider call (`attempts`), from [`sluice_schemas::Attempt`].
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AttemptRow {
    pub attempt_id: String,
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub model: String,
    pub provider: String,
    pub deployment: String,
    pub served_model: String,
    pub attempt: i32,
    pub worker: String,
    pub outcome: String,
    pub billed: String,
    pub http_status: i32,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cached_tokens: i32,
    pub cost_nanos: i64,
    pub max_cost_nanos: i64,
    pub estimated: u8,
    pub created_at_ms: i64,
    pub started_at_ms: i64,
    /// Also the ReplacingMergeTree version: the ended record replaces the started one.
    pub finished_at_ms: u64,
}

impl TableRow for AttemptRow {
    const TABLE: Table = Table::Attempts;
}

impl From<sluice_schemas::Attempt> for AttemptRow {
    fn from(a: sluice_schemas::Attempt) -> Self {
        AttemptRow {
            attempt_id: a.attempt_id,
            request_id: a.request_id,
            team: a.team,
            key_id: a.key_id,
            model: a.model,
            provider: a.provider,
            deployment: a.deployment,
            served_model: a.served_model,
            attempt: a.attempt,
            worker: a.worker,
            outcome: a.outcome,
            billed: a.billed,
            http_status: a.http_status,
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
            cached_tokens: a.cached_tokens,
            cost_nanos: a.cost_nanos,
            max_cost_nanos: a.max_cost_nanos,
            estimated: u8::from(a.estimated),
            created_at_ms: a.created_at_ms,
            started_at_ms: a.started_at_ms,
            finished_at_ms: non_negative(a.finished_at_ms),
        }
    }
}

/// Wire timestamps are `long`; the version columns are UInt64.
pub(crate) fn non_negative(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

/// A ClickHouse client for `config` (validation off: ClickHouse 18.16 cannot validate),
/// as the sink's user, bound to the analyst database.
pub fn client(config: &crate::config::ClickHouseConfig) -> Client {
    connect(
        config,
        &config.database,
        config.user.as_deref(),
        config.password.as_deref(),
    )
}

/// [`client`] bound to the private database, for [`Table::Private`] rows.
pub fn private_client(config: &crate::config::ClickHouseConfig) -> Client {
    connect(
        config,
        &sluice_schemas::tables::private_database(&config.database),
        config.user.as_deref(),
        config.password.as_deref(),
    )
}

/// A client as the migrator (DDL: migrations, retention), `user` when none is configured.
pub fn migrator_client(config: &crate::config::ClickHouseConfig) -> Client {
    match &config.migrator_user {
        Some(user) => connect(
            config,
            "default",
            Some(user),
            config.migrator_password.as_deref(),
        ),
        None => client(config).with_database("default"),
    }
}

fn connect(
    config: &crate::config::ClickHouseConfig,
    database: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Client {
    let mut client = Client::default()
        .with_url(&config.url)
        .with_database(database)
        .with_validation(false)
        .with_compression(match config.compression {
            Compression::Lz4 => clickhouse::Compression::Lz4,
            Compression::None => clickhouse::Compression::None,
        });
    if let Some(user) = user {
        client = client.with_user(user);
    }
    if let Some(password) = password {
        client = client.with_password(password);
    }
    client
}

/// Inserts `rows` into their table in one INSERT. The client must be bound to the table's
/// database (the private one for [`Table::Private`] rows).
pub async fn insert<R: TableRow>(
    client: &Client,
    rows: &[R],
    timeout: Duration,
) -> Result<(), Error> {
    let table = R::TABLE.name();
    let mut insert = client
        .insert::<R>(table)
        .await
        .map_err(Error::clickhouse("insert"))?
        .with_timeouts(Some(timeout), Some(timeout));
    for row in rows {
        insert
            .write(row)
            .await
            .map_err(Error::clickhouse("insert"))?;
    }
    insert.end().await.map_err(Error::clickhouse("insert"))
}

/// The final result of `request_id` of `team` (without its body), if it has landed
/// (duplicates collapsed).
pub async fn find_result(
    client: &Client,
    database: &str,
    request_id: &str,
    team: &str,
) -> Result<Option<ResultRow>, Error> {
    let sql = format!(
        "SELECT ?fields FROM {database}.{} FINAL WHERE request_id = ? AND team = ? LIMIT 1",
        Table::Results.name()
    );
    client
        .query(&sql)
        .bind(request_id)
        .bind(team)
        .fetch_optional::<ResultRow>()
        .await
        .map_err(Error::clickhouse("result lookup"))
}

/// The stored body of `request_id` of `team`, if kept (duplicates collapsed).
pub async fn find_result_body(
    client: &Client,
    database: &str,
    request_id: &str,
    team: &str,
) -> Result<Option<ResultBodyRow>, Error> {
    let sql = format!(
        "SELECT ?fields FROM {} FINAL WHERE request_id = ? AND team = ? LIMIT 1",
        Table::Private(PrivateTable::ResultBodies).qualified(database)
    );
    client
        .query(&sql)
        .bind(request_id)
        .bind(team)
        .fetch_optional::<ResultBodyRow>()
        .await
        .map_err(Error::clickhouse("result body lookup"))
}

#[cfg(test)]
mod tests {
    use sluice_schemas::{AuditAction, Priority, Status};

    use super::*;

    #[test]
    fn result_row_maps_options_and_enums() {
        let result = sluice_schemas::Result {
            request_id: "r1".into(),
            team: "acme".into(),
            key_id: "k1".into(),
            priority: Priority::Interactive,
            model: "gpt-4o-mini".into(),
            traceparent: None,
            status: Status::Failed,
            http_status: 502,
            body: r#"{"error":{"message":"upstream"}}"#.into(),
            error_kind: Some("upstream_error".into()),
            provider: "openai".into(),
            deployment: "openai-east".into(),
            attempts: 3,
            prompt_tokens: 12,
            completion_tokens: 0,
            created_at_ms: 1_700_000_000_000,
            started_at_ms: 1_700_000_000_100,
            finished_at_ms: 1_700_000_001_000,
            worker: "w-1".into(),
            fallbacks: 1,
            routing_reason: Some("cost: d at $0.000001 for this request".into()),
            location: None,
            replay: None,
            audit: None,
            calls: Vec::new(),
        };
        let row = ResultRow::from(result);
        assert_eq!(row.priority, "interactive");
        assert_eq!(row.status, "failed");
        assert_eq!(row.traceparent, "");
        assert_eq!(row.error_kind, "upstream_error");
        assert_eq!(row.finished_at_ms, 1_700_000_001_000);
        assert_eq!(row.attempts, 3);
        assert_eq!(row.fallbacks, 1);
        assert_eq!(row.routing_reason, "cost: d at $0.000001 for this request");
        assert_eq!(row.location, "");
    }

    #[test]
    fn usage_and_audit_rows() {
        let usage = Usage {
            request_id: "r1".into(),
            team: "acme".into(),
            key_id: "k1".into(),
            priority: Priority::Batch,
            model: "m".into(),
            provider: "p".into(),
            deployment: "d".into(),
            status: Status::Expired,
            prompt_tokens: 5,
            completion_tokens: 0,
            cached_tokens: 2,
            cost_nanos: 123_456_789_012,
            created_at_ms: 1,
            latency_ms: 9,
            occurred_at_ms: -5,
            estimated: true,
            cache_hit: true,
            saved_nanos: 42,
            replay: None,
        };
        let row = UsageRow::from(usage);
        assert_eq!(row.estimated, 1);
        assert_eq!((row.cache_hit, row.saved_nanos), (1, 42));
        assert_eq!(
            (row.priority.as_str(), row.status.as_str()),
            ("batch", "expired")
        );
        assert_eq!(row.cost_nanos, 123_456_789_012);
        assert_eq!(row.cached_tokens, 2);
        assert_eq!(
            row.occurred_at_ms, 0,
            "a negative version is clamped, not wrapped"
        );

        let audit = Audit {
            event_id: "e1".into(),
            request_id: "r1".into(),
            team: "acme".into(),
            key_id: "k1".into(),
            action: AuditAction::Rejected,
            model: "m".into(),
            priority: Priority::Standard,
            http_status: 429,
            reason: Some("budget_exceeded".into()),
            prompt_tokens: 7,
            occurred_at_ms: 42,
            prompt_sha256: Some("ab".into()),
            policy: Some("pii:redact:email".into()),
            ..Audit::default()
        };
        let row = AuditRow::from(audit);
        assert_eq!(row.prompt_sha256, "ab");
        assert_eq!(row.prompt_text, "", "no text unless the policy is full");
        assert_eq!(row.policy, "pii:redact:email");
        assert_eq!(row.action, "rejected");
        assert_eq!(row.reason, "budget_exceeded");
        assert_eq!(row.occurred_at_ms, 42);
    }
}
