//! `[guard]` in the ingress TOML: guardrail policies per team, moderation hooks and prompt
//! templates. Everything is checked at start-up (patterns compile, templates parse, names
//! are unique) and a problem is reported with the field that has it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::millis;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// The policy of every team that has no entry in `teams`. By default nothing is
    /// checked or changed.
    pub default: PolicyConfig,
    /// Per-team policies. A team's policy replaces `default` whole (no merging), so what a
    /// team gets is what its own table says.
    pub teams: BTreeMap<String, PolicyConfig>,
    /// Named, versioned prompt templates (`"sluice": {"template": "name@version"}`).
    pub templates: Vec<TemplateConfig>,
}

/// What is checked and changed for one team's requests.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The built-in prompt-injection heuristics (docs/security.md lists them).
    pub injection: bool,
    /// Built-in injection rules switched off for this team, by id.
    pub injection_exclude: Vec<String>,
    /// Patterns (regex) that block a request.
    pub deny: Vec<DenyRule>,
    /// Exceptions: a deny or injection match that lies inside a match of one of these
    /// patterns does not block.
    pub allow: Vec<String>,
    pub pii: PiiConfig,
    pub decorators: DecoratorConfig,
    /// The external classifier, if any.
    pub moderation: Option<ModerationConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    /// Named in the error and in the audit row as `deny.<id>`.
    pub id: String,
    pub pattern: String,
}

/// What happens to a detected value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiAction {
    /// Sent as is.
    #[default]
    Allow,
    /// Replaced with `[EMAIL]`, `[CARD]`, ...
    Redact,
    /// Replaced with a placeholder per value (`[EMAIL_1]`), restorable in the response.
    Mask,
    /// The request is refused (400 `pii_detected`).
    Block,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiiConfig {
    pub email: PiiAction,
    pub phone: PiiAction,
    pub card: PiiAction,
    pub iban: PiiAction,
    pub ssn: PiiAction,
    pub ip: PiiAction,
    pub secret: PiiAction,
    /// Put the original values of masked placeholders back into sync responses (bodies and
    /// stream chunks). Never for async requests: their results are stored, and the mapping
    /// never leaves the ingress.
    pub restore: bool,
}

/// System messages the ingress adds around every request of the team.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecoratorConfig {
    /// A system message put first.
    pub prepend_system: Option<String>,
    /// A system message put last.
    pub append_system: Option<String>,
}

/// What to do when the classifier cannot be asked (timeout, error, bad answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Let the request (or answer) through.
    Open,
    /// Refuse it: 503 `moderation_unavailable`.
    #[default]
    Closed,
}

/// An external HTTP classifier speaking OpenAI's `/v1/moderations` shape.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationConfig {
    pub url: String,
    /// Per classifier call.
    #[serde(default = "default_moderation_timeout", with = "millis")]
    pub timeout_ms: Duration,
    #[serde(default)]
    pub on_error: OnError,
    /// Check the prompt before it is published.
    #[serde(default = "yes")]
    pub input: bool,
    /// Check completions before the caller gets them (streams: see `stream_check_every`).
    #[serde(default = "yes")]
    pub output: bool,
    /// Streams: also check the text so far every this many chunks (0 = only at the end,
    /// before the final event).
    #[serde(default)]
    pub stream_check_every: u32,
    /// Only these flagged categories block; empty = any flagged result blocks.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Sent as `model` (e.g. `omni-moderation-latest` for OpenAI's endpoint).
    #[serde(default)]
    pub model: Option<String>,
    /// Name of an environment variable holding a bearer token for the classifier.
    #[serde(default)]
    pub api_key_env: Option<String>,
}

impl fmt::Debug for ModerationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModerationConfig")
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("on_error", &self.on_error)
            .field("input", &self.input)
            .field("output", &self.output)
            .field("stream_check_every", &self.stream_check_every)
            .field("categories", &self.categories)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .finish()
    }
}

fn default_moderation_timeout() -> Duration {
    Duration::from_millis(1000)
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub name: String,
    pub version: u32,
    /// Teams that may use it; empty = every team.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Messages with `{{variable}}` placeholders; the caller's messages follow them.
    pub messages: Vec<TemplateMessage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMessage {
    pub role: TemplateRole,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateRole {
    System,
    Developer,
    User,
    Assistant,
}
