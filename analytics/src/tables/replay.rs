//! Rows of the replay tables (migration 0012, docs/replay.md): the results and usage of
//! replayed and shadow requests, from the replay topics only.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use sluice_schemas::{ReplayTag, Result as ResultRecord, Usage};

use super::{non_negative, Table, TableRow};

/// One re-run's outcome (`replay_results`): no body, only its text's hash and length.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct ReplayResultRow {
    pub replay_id: String,
    pub original_request_id: String,
    pub request_id: String,
    pub team: String,
    pub model: String,
    pub status: String,
    pub http_status: i32,
    pub error_kind: String,
    pub provider: String,
    pub deployment: String,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub created_at_ms: i64,
    pub started_at_ms: i64,
    /// The ReplacingMergeTree version.
    pub finished_at_ms: u64,
    /// SHA-256 of the completion's text, as audit rows hash it; '' without text.
    pub completion_sha256: String,
    pub output_chars: i32,
}

impl TableRow for ReplayResultRow {
    const TABLE: Table = Table::ReplayResults;
}

impl ReplayResultRow {
    /// The row of a tagged result; `None` for a live one (it has no place here).
    pub fn of(r: ResultRecord) -> Option<ReplayResultRow> {
        let ReplayTag {
            replay_id,
            original_request_id,
        } = r.replay?;
        let text = sluice_schemas::audit_content::completion_text(&r.body);
        Some(ReplayResultRow {
            replay_id,
            original_request_id,
            request_id: r.request_id,
            team: r.team,
            model: r.model,
            status: r.status.as_str().to_owned(),
            http_status: r.http_status,
            error_kind: r.error_kind.unwrap_or_default(),
            provider: r.provider,
            deployment: r.deployment,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: non_negative(r.finished_at_ms),
            completion_sha256: text
                .as_deref()
                .map(|t| sluice_schemas::audit_content::sha256_hex(t.as_bytes()))
                .unwrap_or_default(),
            output_chars: text.map_or(0, |t| i32::try_from(t.chars().count()).unwrap_or(i32::MAX)),
        })
    }
}

/// One re-run's usage (`replay_usage`): what the provider bills the operator for it.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct ReplayUsageRow {
    pub replay_id: String,
    pub original_request_id: String,
    pub request_id: String,
    pub team: String,
    pub model: String,
    pub provider: String,
    pub deployment: String,
    pub status: String,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cached_tokens: i32,
    pub cost_nanos: i64,
    pub estimated: u8,
    pub created_at_ms: i64,
    /// The ReplacingMergeTree version.
    pub occurred_at_ms: u64,
}

impl TableRow for ReplayUsageRow {
    const TABLE: Table = Table::ReplayUsage;
}

impl ReplayUsageRow {
    /// The row of tagged usage; `None` for live usage.
    pub fn of(u: Usage) -> Option<ReplayUsageRow> {
        let ReplayTag {
            replay_id,
            original_request_id,
        } = u.replay?;
        Some(ReplayUsageRow {
            replay_id,
            original_request_id,
            request_id: u.request_id,
            team: u.team,
            model: u.model,
            provider: u.provider,
            deployment: u.deployment,
            status: u.status.as_str().to_owned(),
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
            cost_nanos: u.cost_nanos,
            estimated: u8::from(u.estimated),
            created_at_ms: u.created_at_ms,
            occurred_at_ms: non_negative(u.occurred_at_ms),
        })
    }
}
