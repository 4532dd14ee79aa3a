//! Replays (docs/replay.md): re-running the recorded requests of a time range, team, model
//! or priority class from the request topics against a target model, at a rate limit and
//! within a budget of their own. The copies are tagged ([`sluice_schemas::ReplayTag`]):
//! workers publish their results and usage to the replay topics, which only the replay
//! tables read, so no caller sees them and no team is billed for them.
//!
//! One engine, two doors: `sluice-replay` (the CLI) and `POST /admin/replays`.

mod registry;
mod scan;

use serde::{Deserialize, Serialize};
use sluice_schemas::replay::{valid_id, SHADOW_PREFIX};
use sluice_schemas::{now_ms, Priority};

use crate::config::Config;
use crate::error::ApiError;

pub(crate) use registry::Registry;
pub(crate) use scan::Replayer;

/// The most requests one replay may re-run.
pub const MAX_LIMIT: u64 = 1_000_000;

/// What a replay re-runs, and within what. `POST /admin/replays`'s body; the CLI's flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Its id (`[a-z0-9_-]`, at most 48, not `shadow-...`); one is made when absent.
    #[serde(default)]
    pub replay_id: Option<String>,
    /// Requests accepted from this time on (Unix ms) ...
    pub from_ms: i64,
    /// ... until this one (exclusive).
    pub to_ms: i64,
    /// Only this team's requests.
    #[serde(default)]
    pub team: Option<String>,
    /// Only requests for this model.
    #[serde(default)]
    pub model: Option<String>,
    /// Only requests of this class.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// The model the copies ask for (one of `[[models]]`).
    pub target_model: String,
    /// Copies published per second, 1 to `[replay] max_rate_per_s` (default 10, or that
    /// maximum if lower).
    #[serde(default)]
    pub rate_per_s: Option<u32>,
    /// The most the copies may cost, USD (each is reserved at its worst case before it is
    /// published; the replay stops at the first that would not fit).
    pub budget_usd: f64,
    /// The most requests re-run.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// A [`Spec`] that passed [`Spec::check`].
#[derive(Debug, Clone)]
pub struct Checked {
    pub replay_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub team: Option<String>,
    pub model: Option<String>,
    pub priority: Option<Priority>,
    pub target_model: String,
    pub rate_per_s: u32,
    pub budget_nanos: i64,
    pub limit: u64,
}

impl Spec {
    /// Checks every field against `config`; the error names the first bad one.
    pub(crate) fn check(self, config: &Config) -> Result<Checked, ApiError> {
        let bad = |param, problem| Err(ApiError::InvalidParam { param, problem });
        let replay_id = match self.replay_id {
            Some(id) if !valid_id(&id) || id.starts_with(SHADOW_PREFIX) => {
                return bad(
                    "replay_id",
                    "must be 1 to 48 of a-z, 0-9, '_' and '-', not starting with `shadow-`",
                )
            }
            Some(id) => id,
            None => format!("rp_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
        };
        if self.from_ms < 0 || self.from_ms >= self.to_ms || self.from_ms > now_ms() {
            return bad(
                "from_ms",
                "must be a Unix time in ms before `to_ms` and not in the future",
            );
        }
        if !config.models.iter().any(|m| m.id == self.target_model) {
            return bad("target_model", "must be one of the ingress's models");
        }
        if let Some(team) = &self.team {
            if !config.replay.allows(config, team) {
                return Err(ApiError::ReplayForbidden(team.clone()));
            }
        }
        let max_rate = config.replay.max_rate_per_s;
        let rate_per_s = self.rate_per_s.unwrap_or(10.min(max_rate));
        if rate_per_s == 0 || rate_per_s > max_rate {
            return bad(
                "rate_per_s",
                "must be from 1 to the operator's [replay] max_rate_per_s",
            );
        }
        let max_budget = config.replay.max_budget_usd;
        if !(self.budget_usd.is_finite() && self.budget_usd > 0.0 && self.budget_usd <= max_budget)
        {
            return bad(
                "budget_usd",
                "must be a number of USD above 0 and at most the operator's [replay] max_budget_usd",
            );
        }
        let limit = self.limit.unwrap_or(MAX_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return bad("limit", "must be from 1 to 1000000");
        }
        Ok(Checked {
            replay_id,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            team: self.team,
            model: self.model,
            priority: self.priority,
            target_model: self.target_model,
            rate_per_s,
            budget_nanos: (self.budget_usd * 1e9) as i64,
            limit,
        })
    }
}

/// Where a replay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    /// Every matching request in the range was re-run.
    Done,
    /// It stopped early: see `stopped_because`.
    Stopped,
    /// The request topics could not be read; see `error`.
    Failed,
}

/// What a replay has done so far (`GET /admin/replays/{id}`, the CLI's last line).
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub replay_id: String,
    pub target_model: String,
    pub state: State,
    /// Records read from the request topics in the range.
    pub scanned: u64,
    /// Copies published (the workers re-run them; results arrive in `replay_results`).
    pub replayed: u64,
    /// Left out: another team, model or class, or outside the range.
    pub not_matching: u64,
    /// Left out: the team's policy forbids replay.
    pub forbidden: u64,
    /// Left out: embeddings requests, and copies (shadow or replay) themselves.
    pub not_replayable: u64,
    /// The replay's budget, and the worst cost of what it published, nano-USD.
    pub budget_nanos: i64,
    pub reserved_nanos: i64,
    /// `budget` (the next copy would not fit), `limit`, or `shutdown`.
    pub stopped_because: Option<&'static str>,
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

impl Progress {
    pub fn new(spec: &Checked) -> Progress {
        Progress {
            replay_id: spec.replay_id.clone(),
            target_model: spec.target_model.clone(),
            state: State::Running,
            scanned: 0,
            replayed: 0,
            not_matching: 0,
            forbidden: 0,
            not_replayable: 0,
            budget_nanos: spec.budget_nanos,
            reserved_nanos: 0,
            stopped_because: None,
            error: None,
            started_at_ms: now_ms(),
            finished_at_ms: None,
        }
    }
}

/// The CLI's door: checks `spec`, runs it in this process to its end, and returns how it
/// ended (or why it could not start).
pub async fn run_once(
    config: &Config,
    spec: Spec,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Progress, String> {
    let checked = spec.check(config).map_err(|e| e.to_string())?;
    let producer = crate::kafka::producer(&config.kafka).map_err(|e| e.to_string())?;
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Progress::new(&checked)));
    Replayer::new(config, producer)
        .run(&checked, &progress, shutdown)
        .await;
    let ended = progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(ended)
}

#[cfg(test)]
mod tests;
