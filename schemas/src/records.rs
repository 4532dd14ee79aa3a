//! Rust types of the Avro records. Field names and order match the `.avsc` files exactly.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Scheduling class of a request. Workers prefer higher classes without starving lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Interactive,
    #[default]
    Standard,
    Batch,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Interactive, Priority::Standard, Priority::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Standard => "standard",
            Priority::Batch => "batch",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Where a waiting sync caller listens for its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    pub topic: String,
    pub partition: i32,
}

/// What ties a replayed or shadow request to the live one it re-runs (`ReplayTag` in
/// `request.v3`, `result.v4`, `usage.v4`). Only Sluice's replay and shadow code sets it,
/// never a caller; a tagged request's result and usage go to the replay topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayTag {
    pub replay_id: String,
    pub original_request_id: String,
}

/// An accepted LLM request (`request.v3.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub priority: Priority,
    pub model: String,
    pub created_at_ms: i64,
    pub deadline_ms: i64,
    pub traceparent: Option<String>,
    pub reply: Option<ReplyTo>,
    pub prompt_tokens: i32,
    pub max_tokens: Option<i32>,
    /// The OpenAI chat completion request body, as JSON.
    pub body: String,
    pub stream: bool,
    pub attributes: HashMap<String, String>,
    /// A replay or shadow copy (v3); `None` for every live request.
    #[serde(default)]
    pub replay: Option<ReplayTag>,
}

impl Request {
    /// The counted prompt tokens (a negative count, never written, reads as 0).
    pub fn prompt(&self) -> u32 {
        self.prompt_tokens.max(0) as u32
    }

    /// The completion cap the caller set, or `default` when it set none.
    pub fn completion_cap(&self, default: u32) -> u32 {
        self.max_tokens.map_or(default, |m| m.max(0) as u32)
    }

    /// The most tokens the request can use: its prompt plus its completion cap.
    pub fn token_estimate(&self, default_completion: u32) -> u64 {
        u64::from(self.prompt()) + u64::from(self.completion_cap(default_completion))
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Completed,
    Failed,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::Completed, Status::Failed, Status::Expired]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// The outcome of one request (`result.v6.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Result {
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub priority: Priority,
    pub model: String,
    pub traceparent: Option<String>,
    pub status: Status,
    pub http_status: i32,
    /// OpenAI-shaped response (completed) or error body (failed, expired), as JSON.
    pub body: String,
    pub error_kind: Option<String>,
    pub provider: String,
    pub deployment: String,
    pub attempts: i32,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub created_at_ms: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub worker: String,
    /// Deployments passed over (failed, or skipped with an open circuit) before the one
    /// that answered, or failed last. 0 in records written before v2.
    pub fallbacks: i32,
    /// Why the deployments were tried in the order they were (v3).
    #[serde(default)]
    pub routing_reason: Option<String>,
    /// Where the deployment that answered, or failed last, runs (v3).
    #[serde(default)]
    pub location: Option<String>,
    /// A replayed or shadow request's result (v4), published to the replay topic only.
    #[serde(default)]
    pub replay: Option<ReplayTag>,
    /// The request's completed (failed, expired) audit event, folded into the result (v5):
    /// the sink writes that audit row from the result ([`Result::completed_audit`]), and no
    /// separate event is published. `None` in older records, whose event is on the audit
    /// topic, and in replies (the caller's copy).
    #[serde(default)]
    pub audit: Option<ResultAudit>,
    /// Every provider call of this processing as it ended (v6): the sink writes their
    /// `attempts` rows from the result, replacing each call's `started` record, and no
    /// separate ended record is published. Empty in older records (their ended records are
    /// on the attempts topic), in replies (the caller's copy) and for replays.
    #[serde(default)]
    pub calls: Vec<Attempt>,
}

/// What a result's audit row needs beyond the result itself (`ResultAudit` in `result.v5`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResultAudit {
    /// SHA-256 (hex) of the completion's text, unless the team's audit content policy is
    /// `none`; kept when the answer itself was not (`result_too_large`).
    pub completion_sha256: Option<String>,
    /// The audit row keeps the completion's text (policy `full`): the text of the body's
    /// choices.
    pub keep_text: bool,
    /// Policy decisions, comma-separated (location, replay, processing hooks).
    pub policy: Option<String>,
}

impl Result {
    /// The audit event a result with [`Result::audit`] stands for: `completed`, `failed` or
    /// `expired` as its status, at its finish, with the completion's hash (and text, when
    /// kept) and the policy decisions. The same event the worker published before v5, with
    /// the same `event_id`, so a redelivered result is one audit row.
    pub fn completed_audit(&self) -> Option<Audit> {
        let audit = self.audit.as_ref()?;
        let completion_text = match (audit.keep_text, self.status) {
            (true, Status::Completed) => crate::audit_content::completion_text(&self.body),
            _ => None,
        };
        Some(Audit {
            event_id: format!("{}-{}", self.request_id, self.status.as_str()),
            request_id: self.request_id.clone(),
            team: self.team.clone(),
            key_id: self.key_id.clone(),
            action: match self.status {
                Status::Completed => AuditAction::Completed,
                Status::Failed => AuditAction::Failed,
                Status::Expired => AuditAction::Expired,
            },
            model: self.model.clone(),
            priority: self.priority,
            http_status: self.http_status,
            reason: self.error_kind.clone(),
            prompt_tokens: self.prompt_tokens,
            occurred_at_ms: self.finished_at_ms,
            completion_sha256: audit.completion_sha256.clone(),
            completion_text,
            policy: audit.policy.clone(),
            ..Audit::default()
        })
    }
}

/// Billable usage of one request (`usage.v4.avsc`). Cost in nano-USD keeps sums exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub priority: Priority,
    pub model: String,
    pub provider: String,
    pub deployment: String,
    pub status: Status,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cached_tokens: i32,
    pub cost_nanos: i64,
    pub created_at_ms: i64,
    pub latency_ms: i64,
    pub occurred_at_ms: i64,
    /// Token counts were estimated (tiktoken) because the provider reported none.
    pub estimated: bool,
    /// Answered from the response cache (v3): no provider call, `cost_nanos` 0.
    #[serde(default)]
    pub cache_hit: bool,
    /// A cache hit: what the answer would have cost, nano-USD (v3).
    #[serde(default)]
    pub saved_nanos: i64,
    /// A replayed or shadow request's usage (v4), published to the replay topic only: never
    /// billed to the team.
    #[serde(default)]
    pub replay: Option<ReplayTag>,
}

/// What an audit row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuditAction {
    #[default]
    Accepted,
    Rejected,
    Completed,
    Failed,
    Expired,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Accepted => "accepted",
            AuditAction::Rejected => "rejected",
            AuditAction::Completed => "completed",
            AuditAction::Failed => "failed",
            AuditAction::Expired => "expired",
        }
    }
}

/// Who did what and when (`audit.v2.avsc`). Prompt and completion text only when the
/// team's audit policy allows it; otherwise their SHA-256 only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Audit {
    pub event_id: String,
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub action: AuditAction,
    pub model: String,
    pub priority: Priority,
    pub http_status: i32,
    pub reason: Option<String>,
    pub prompt_tokens: i32,
    pub occurred_at_ms: i64,
    /// `accepted`: the budget reservation (nano-USD) held until the request's usage arrives.
    pub reserved_nanos: i64,
    /// `accepted`: the request's deadline (a reservation without usage lapses after it).
    pub deadline_ms: i64,
    pub prompt_sha256: Option<String>,
    pub prompt_text: Option<String>,
    pub completion_sha256: Option<String>,
    pub completion_text: Option<String>,
    /// Policy decisions, comma-separated (e.g. `pii:redact:email`).
    pub policy: Option<String>,
}

/// One streamed event on its way to the waiting caller (`stream_chunk.v1.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    pub request_id: String,
    /// Which processing attempt produced it (worker id).
    pub attempt: String,
    /// The seq of `data`; the events of `more` follow it (seq + 1, ...).
    pub seq: i32,
    /// An OpenAI `chat.completion.chunk`, as JSON.
    pub data: String,
    /// Events coalesced after `data` into this record (v2; none in a v1 record).
    #[serde(default)]
    pub more: Vec<String>,
}

impl StreamChunk {
    /// The record as one chunk per event, numbered from `seq`.
    pub fn events(self) -> impl Iterator<Item = StreamChunk> {
        let StreamChunk {
            request_id,
            attempt,
            seq,
            data,
            more,
        } = self;
        std::iter::once(data)
            .chain(more)
            .zip(seq..)
            .map(move |(data, seq)| StreamChunk {
                request_id: request_id.clone(),
                attempt: attempt.clone(),
                seq,
                data,
                more: Vec::new(),
            })
    }
}

/// The caller went away; workers stop or skip the request (`cancel.v1.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    pub request_id: String,
    pub team: String,
    pub reason: String,
    pub occurred_at_ms: i64,
}

impl Cancel {
    /// `reason` of a caller's explicit cancel (`POST /v1/requests/{id}/cancel`); the others
    /// are `client_disconnected` and `batch`.
    pub const BY_CALLER: &'static str = "cancelled";
}

/// The error code (and `error_kind`) of a request its caller cancelled before it started.
pub const REQUEST_CANCELLED: &str = "request_cancelled";

/// Settled spend of a budget crossed an alert threshold (`budget_alert.v1.avsc`).
/// `alert_id` = `scope:subject:period_start_ms:threshold_pct`, the same on every replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetAlert {
    pub alert_id: String,
    /// `team` or `key`.
    pub scope: String,
    pub subject: String,
    /// `day` or `month`.
    pub period: String,
    pub period_start_ms: i64,
    pub threshold_pct: i32,
    pub limit_nanos: i64,
    pub spent_nanos: i64,
    pub occurred_at_ms: i64,
    pub instance: String,
}

/// The latest state of one API key (`api_key.v1.avsc`), on the compacted keys topic keyed
/// by `key_id`. Holds the secret's SHA-256 only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub key_id: String,
    pub team: String,
    pub label: Option<String>,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    /// Recognisable part of the secret (`sk-sluice-…a1b2`), never the secret.
    pub hint: String,
    /// Models this key may call; empty: every configured model.
    pub allowed_models: Vec<String>,
    pub requests_per_minute: Option<i32>,
    pub expires_at_ms: Option<i64>,
    /// Revocation is final: the ingress never un-revokes a key.
    pub revoked: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One provider call (`attempt.v1.avsc`): what a provider may have billed, recorded for
/// every retry, fallback and redelivery, to reconcile with its invoice. The team is charged
/// from [`Usage`], once per request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Attempt {
    /// Unique per call; the `started` record and the ended one share it.
    pub attempt_id: String,
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub model: String,
    pub provider: String,
    pub deployment: String,
    pub served_model: String,
    /// 1-based, over retries and fallbacks of one processing.
    pub attempt: i32,
    pub worker: String,
    /// `started`, `completed`, or the error kind.
    pub outcome: String,
    /// `reported`, `unknown` or `none`.
    pub billed: String,
    pub http_status: i32,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cached_tokens: i32,
    pub cost_nanos: i64,
    pub max_cost_nanos: i64,
    pub estimated: bool,
    pub created_at_ms: i64,
    pub started_at_ms: i64,
    /// 0 while started.
    pub finished_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt_tokens: i32, max_tokens: Option<i32>) -> Request {
        Request {
            request_id: "r".into(),
            team: "t".into(),
            key_id: "k".into(),
            priority: Priority::Interactive,
            model: "m".into(),
            created_at_ms: 0,
            deadline_ms: 0,
            traceparent: None,
            reply: None,
            prompt_tokens,
            max_tokens,
            body: String::new(),
            stream: false,
            attributes: HashMap::new(),
            replay: None,
        }
    }

    #[test]
    fn token_estimate_is_the_prompt_plus_the_cap_or_the_default() {
        assert_eq!(request(10, Some(5)).token_estimate(100), 15);
        assert_eq!(request(10, None).token_estimate(100), 110);
        assert_eq!(request(-3, Some(-1)).token_estimate(100), 0);
        assert_eq!(request(7, None).prompt(), 7);
        assert_eq!(request(7, Some(2)).completion_cap(100), 2);
    }

    fn finished(status: Status, body: &str, audit: Option<ResultAudit>) -> Result {
        Result {
            request_id: "req_1".into(),
            team: "t".into(),
            key_id: "k".into(),
            priority: Priority::Standard,
            model: "m".into(),
            traceparent: None,
            status,
            http_status: 200,
            body: body.into(),
            error_kind: None,
            provider: "openai".into(),
            deployment: "d".into(),
            attempts: 1,
            prompt_tokens: 7,
            completion_tokens: 2,
            created_at_ms: 1,
            started_at_ms: 2,
            finished_at_ms: 3,
            worker: "w".into(),
            fallbacks: 0,
            routing_reason: None,
            location: None,
            replay: None,
            audit,
            calls: Vec::new(),
        }
    }

    #[test]
    fn a_results_audit_event_is_the_one_the_worker_published_before() {
        let body = r#"{"choices":[{"message":{"role":"assistant","content":"a b"}}]}"#;
        assert_eq!(
            finished(Status::Completed, body, None).completed_audit(),
            None
        );
        let kept = ResultAudit {
            completion_sha256: Some("ab".repeat(32)),
            keep_text: true,
            policy: Some("location:eu".into()),
        };
        let audit = finished(Status::Completed, body, Some(kept.clone()))
            .completed_audit()
            .unwrap();
        assert_eq!(
            audit,
            Audit {
                event_id: "req_1-completed".into(),
                request_id: "req_1".into(),
                team: "t".into(),
                key_id: "k".into(),
                action: AuditAction::Completed,
                model: "m".into(),
                priority: Priority::Standard,
                http_status: 200,
                reason: None,
                prompt_tokens: 7,
                occurred_at_ms: 3,
                completion_sha256: Some("ab".repeat(32)),
                completion_text: Some("a b".into()),
                policy: Some("location:eu".into()),
                ..Audit::default()
            }
        );
        // Hash only: no text. A failure: its action and reason, no text even if kept.
        let hashed = ResultAudit {
            keep_text: false,
            ..kept.clone()
        };
        let audit = finished(Status::Completed, body, Some(hashed))
            .completed_audit()
            .unwrap();
        assert_eq!(audit.completion_text, None);
        let mut failed = finished(Status::Failed, body, Some(kept));
        failed.error_kind = Some("result_too_large".into());
        failed.http_status = 502;
        let audit = failed.completed_audit().unwrap();
        assert_eq!(
            (audit.event_id.as_str(), audit.action, audit.http_status),
            ("req_1-failed", AuditAction::Failed, 502)
        );
        assert_eq!(audit.reason.as_deref(), Some("result_too_large"));
        assert_eq!(audit.completion_text, None);
        assert!(
            audit.completion_sha256.is_some(),
            "the hash outlives the body"
        );
    }
}
