//! Guardrails, applied at the ingress to every endpoint's messages before anything is
//! published (chat completions sync and streaming, `/v1/requests`, `/v1/messages`), and
//! to sync answers on the way back. In order:
//!
//! 1. [`prompt_guard`]: the team's deny patterns (with allow exceptions) and the built-in
//!    prompt-injection heuristics, over the caller's text; a match blocks (400
//!    `prompt_blocked`, audit reason = rule id).
//! 2. [`pii`]: PII and secrets in the caller's text are allowed, redacted, masked (with
//!    restoration in sync answers, [`restore`]) or block the request, per category.
//! 3. [`templates`]: a named template's messages, rendered with the (already redacted)
//!    variables, go before the caller's messages.
//! 4. Decorators: the team's system messages, first and last.
//! 5. [`moderation`]: the external classifier sees the final messages (what the provider
//!    will see) before the request is published, and completions before the caller does.
//!
//! Text from config (templates, decorators) is trusted and not scanned; text from the
//! caller (messages of every role, tool-call arguments, template variables) is.

pub mod moderation;
pub mod pii;
pub mod prompt_guard;
pub mod restore;
pub mod templates;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_schemas::openai::{ChatMessage, MessageContent, Role};
use sluice_schemas::{Result as ResultRecord, Status};

use self::config::{DecoratorConfig, GuardConfig, PiiAction, PiiConfig, PolicyConfig};
use self::moderation::{Classifier, Stage};
use self::pii::{Category, Finding};
use self::prompt_guard::PromptGuard;
use self::restore::{Masker, Restorer, StreamRestorer};
use self::templates::Templates;
pub use crate::config::guard as config;
use crate::error::{ApiError, ConfigError};

/// One team's compiled policy.
#[derive(Debug, Default)]
pub struct Policy {
    prompt: PromptGuard,
    pii: PiiConfig,
    decorators: DecoratorConfig,
    moderation: Option<Classifier>,
}

impl Policy {
    fn from_config(
        config: &PolicyConfig,
        field: &str,
        http: &reqwest::Client,
    ) -> Result<Policy, ConfigError> {
        if config.pii.restore
            && !Category::ALL
                .iter()
                .any(|c| config.pii.action(*c) == PiiAction::Mask)
        {
            return Err(ConfigError::Field {
                field: format!("{field}.pii.restore"),
                problem: "restores masked values, but no category is set to \"mask\"",
            });
        }
        if let Some(m) = &config.moderation {
            let url_ok =
                reqwest::Url::parse(&m.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !url_ok {
                return Err(ConfigError::Field {
                    field: format!("{field}.moderation.url"),
                    problem: "must be an http:// or https:// URL",
                });
            }
            if m.timeout_ms.is_zero() {
                return Err(ConfigError::Field {
                    field: format!("{field}.moderation.timeout_ms"),
                    problem: "must be more than 0",
                });
            }
            if let Some(var) = &m.api_key_env {
                if std::env::var(var).is_err() {
                    return Err(ConfigError::Field {
                        field: format!("{field}.moderation.api_key_env"),
                        problem: "names an environment variable that is not set",
                    });
                }
            }
        }
        Ok(Policy {
            prompt: PromptGuard::from_config(config, field)?,
            pii: config.pii.clone(),
            decorators: config.decorators.clone(),
            moderation: config
                .moderation
                .clone()
                .map(|m| Classifier::new(m, http.clone())),
        })
    }

    fn pii_wanted(&self, category: Category) -> bool {
        self.pii.action(category) != PiiAction::Allow
    }

    fn output_classifier(&self) -> Option<&Classifier> {
        self.moderation.as_ref().filter(|c| c.config.output)
    }

    /// Checks the prompt with the classifier (if the policy has one for input).
    pub async fn moderate_input(&self, texts: &[String]) -> Result<(), ApiError> {
        match &self.moderation {
            Some(c) => c.check(Stage::Input, texts).await,
            None => Ok(()),
        }
    }

    /// Checks a completion's text with the classifier (if the policy has one for output).
    pub async fn moderate_output(&self, texts: &[String]) -> Result<(), ApiError> {
        match self.output_classifier() {
            Some(c) => c.check(Stage::Output, texts).await,
            None => Ok(()),
        }
    }

    /// Whether sync answers get masked values back by default (`pii.restore`).
    pub fn restores(&self) -> bool {
        self.pii.restore
    }

    pub fn moderates_output(&self) -> bool {
        self.output_classifier().is_some()
    }
}

/// All teams' policies and the templates.
#[derive(Debug, Default)]
pub struct Guard {
    default: Arc<Policy>,
    teams: HashMap<String, Arc<Policy>>,
    templates: Templates,
}

/// What the request's `"sluice"` options ask of the guardrails.
#[derive(Debug, Default)]
pub struct Asked<'a> {
    pub template: Option<&'a str>,
    pub variables: Option<&'a Map<String, Value>>,
    /// Keep the masking map to restore the answer (sync calls only).
    pub restore: bool,
}

/// The outcome of [`Guard::prepare`].
#[derive(Debug)]
pub struct Prepared {
    pub policy: Arc<Policy>,
    /// Set when values were masked and the answer is to be restored.
    pub restorer: Option<Restorer>,
    /// The final messages' text, for the input moderation check; empty without one.
    pub moderation_input: Vec<String>,
    /// The guardrail decisions that applied, for the audit event's `policy`
    /// (`prompt_guard:pass`, `pii:redact:email`, `template:name@2`, `decorator:prepend`, ...).
    pub decisions: Vec<String>,
}

/// Start-up check of `[guard]` (config.rs's `Section`): it compiles.
impl crate::config::Section for GuardConfig {
    fn check(&self, _: &crate::config::Config) -> Result<(), ConfigError> {
        Guard::from_config(self).map(drop)
    }
}

impl Guard {
    pub fn from_config(config: &GuardConfig) -> Result<Guard, ConfigError> {
        if !pii::detectors_ok() {
            return Err(ConfigError::Field {
                field: "guard".into(),
                problem: "a built-in PII detector failed to compile (a build defect)",
            });
        }
        // One pool of connections to the classifiers. No redirects: a 3xx would resend the
        // prompt (a 307 keeps the body) to wherever `Location` points.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| ConfigError::Field {
                field: "guard".into(),
                problem: "the moderation HTTP client could not be built",
            })?;
        let default = Arc::new(Policy::from_config(
            &config.default,
            "guard.default",
            &http,
        )?);
        let mut teams = HashMap::new();
        for (team, policy) in &config.teams {
            let field = format!("guard.teams.{team}");
            if !sluice_schemas::topics::is_valid_team_name(team) {
                return Err(ConfigError::Field {
                    field,
                    problem: "team names use letters, digits, '-' and '_' (at most 64)",
                });
            }
            teams.insert(
                team.clone(),
                Arc::new(Policy::from_config(policy, &field, &http)?),
            );
        }
        Ok(Guard {
            default,
            teams,
            templates: Templates::from_config(&config.templates)?,
        })
    }

    pub fn policy(&self, team: &str) -> Arc<Policy> {
        Arc::clone(self.teams.get(team).unwrap_or(&self.default))
    }

    /// Applies the guardrails that need no network to `messages`, in place: prompt guard,
    /// PII, template, decorators.
    pub fn prepare(
        &self,
        team: &str,
        messages: &mut Vec<ChatMessage>,
        asked: Asked<'_>,
    ) -> Result<Prepared, ApiError> {
        let policy = self.policy(team);
        let mut variables = match asked.variables {
            Some(raw) => Templates::variables(raw)?,
            None => BTreeMap::new(),
        };
        match asked.template {
            Some(reference) => self.templates.check(team, reference, &variables)?,
            None if !variables.is_empty() => {
                return Err(ApiError::InvalidParam {
                    param: "sluice.variables",
                    problem: "variables are only used with a template (sluice.template)",
                })
            }
            None => {}
        }

        let mut decisions = Vec::new();
        if !policy.prompt.is_empty() {
            decisions.push("prompt_guard:pass".to_string());
            for m in messages.iter() {
                let untrusted = matches!(m.role, Role::User | Role::Tool | Role::Function);
                for text in m.text() {
                    policy
                        .prompt
                        .check(text, untrusted)
                        .map_err(|b| ApiError::PromptBlocked { rule: b.0 })?;
                }
            }
            for value in variables.values() {
                policy
                    .prompt
                    .check(value, true)
                    .map_err(|b| ApiError::PromptBlocked { rule: b.0 })?;
            }
        }

        let mut masker = Masker::default();
        if Category::ALL.iter().any(|c| policy.pii_wanted(*c)) {
            let mut slots = text_slots(messages, &mut variables);
            let findings: Vec<Vec<Finding>> = slots
                .iter()
                .map(|s| pii::scan(s, |c| policy.pii_wanted(c)))
                .collect();
            let blocked: BTreeSet<Category> = findings
                .iter()
                .flatten()
                .map(|f| f.category)
                .filter(|c| policy.pii.action(*c) == PiiAction::Block)
                .collect();
            if !blocked.is_empty() {
                return Err(ApiError::PiiBlocked {
                    categories: blocked.iter().copied().map(Category::as_str).collect(),
                    described: blocked.into_iter().map(Category::describe).collect(),
                });
            }
            let applied: BTreeSet<Category> =
                findings.iter().flatten().map(|f| f.category).collect();
            decisions.extend(applied.into_iter().filter_map(|c| {
                let action = match policy.pii.action(c) {
                    PiiAction::Redact => "redact",
                    PiiAction::Mask => "mask",
                    PiiAction::Allow | PiiAction::Block => return None,
                };
                Some(format!("pii:{action}:{}", c.as_str()))
            }));
            if findings.iter().any(|f| !f.is_empty()) {
                for s in &slots {
                    masker.reserve_existing(s);
                }
                for (slot, found) in slots.iter_mut().zip(&findings) {
                    if !found.is_empty() {
                        **slot = replace(slot, found, &policy.pii, &mut masker);
                    }
                }
            }
        }

        if let Some(reference) = asked.template {
            let id = self.templates.id(team, reference).unwrap_or(reference);
            decisions.push(format!("template:{id}"));
            let mut rendered = self.templates.render(team, reference, &variables)?;
            rendered.append(messages);
            *messages = rendered;
        }
        if let Some(text) = &policy.decorators.prepend_system {
            messages.insert(0, system_message(text));
            decisions.push("decorator:prepend".to_string());
        }
        if let Some(text) = &policy.decorators.append_system {
            messages.push(system_message(text));
            decisions.push("decorator:append".to_string());
        }
        if policy.moderation.as_ref().is_some_and(|c| c.config.input) {
            decisions.push("moderation:input".to_string());
        }

        let moderation_input = if policy.moderation.as_ref().is_some_and(|c| c.config.input) {
            messages
                .iter()
                .flat_map(ChatMessage::text)
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let restorer = if asked.restore {
            masker.into_restorer()
        } else {
            None
        };
        Ok(Prepared {
            policy,
            restorer,
            moderation_input,
            decisions,
        })
    }
}

fn system_message(text: &str) -> ChatMessage {
    ChatMessage {
        role: Role::System,
        content: Some(MessageContent::Text(text.to_string())),
        extra: Map::new(),
    }
}

/// Every piece of caller text that reaches the provider: message contents and text parts,
/// tool-call arguments, template variables.
fn text_slots<'a>(
    messages: &'a mut [ChatMessage],
    variables: &'a mut BTreeMap<String, String>,
) -> Vec<&'a mut String> {
    let mut slots = Vec::new();
    for m in messages.iter_mut() {
        match &mut m.content {
            Some(MessageContent::Text(t)) => slots.push(t),
            Some(MessageContent::Parts(parts)) => {
                slots.extend(parts.iter_mut().filter_map(|p| p.text.as_mut()))
            }
            None => {}
        }
        if let Some(Value::Array(calls)) = m.extra.get_mut("tool_calls") {
            for call in calls {
                if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                    slots.push(args);
                }
            }
        }
    }
    slots.extend(variables.values_mut());
    slots
}

/// `text` with each finding redacted or masked.
fn replace(text: &str, findings: &[Finding], pii: &PiiConfig, masker: &mut Masker) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in findings {
        out.push_str(&text[at..f.start]);
        let value = &text[f.start..f.end];
        match pii.action(f.category) {
            PiiAction::Redact => {
                out.push('[');
                out.push_str(f.category.label());
                out.push(']');
            }
            PiiAction::Mask => out.push_str(&masker.placeholder(f.category, value)),
            // Not scanned for (allow), or refused before replacing (block).
            PiiAction::Allow | PiiAction::Block => out.push_str(value),
        }
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The text a completion (JSON) shows the caller: its choices' message contents.
pub fn completion_texts(body: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    value["choices"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|c| c["message"]["content"].as_str())
        .map(str::to_string)
        .collect()
}

/// The guardrails on the answer of one sync call: output moderation, then restoration.
#[derive(Debug)]
pub struct Output {
    policy: Arc<Policy>,
    restorer: Option<Restorer>,
}

impl Output {
    pub fn new(policy: Arc<Policy>, restorer: Option<Restorer>) -> Output {
        Output { policy, restorer }
    }

    /// Nothing to check or restore.
    pub fn is_noop(&self) -> bool {
        self.restorer.is_none() && !self.policy.moderates_output()
    }

    /// A whole answer: an error if moderation refuses it, else the answer with masked
    /// values restored.
    pub async fn finish(&self, result: &mut ResultRecord) -> Result<(), ApiError> {
        if result.status != Status::Completed {
            return Ok(());
        }
        if self.policy.moderates_output() {
            self.policy
                .moderate_output(&completion_texts(&result.body))
                .await?;
        }
        if let Some(restored) = self
            .restorer
            .as_ref()
            .and_then(|r| r.restore_completion(&result.body))
        {
            result.body = restored;
        }
        Ok(())
    }

    pub fn into_stream(self) -> StreamOutput {
        let every = self
            .policy
            .output_classifier()
            .map_or(0, |c| c.config.stream_check_every);
        StreamOutput {
            moderated: self.policy.moderates_output(),
            policy: self.policy,
            restorer: self.restorer.map(StreamRestorer::new),
            text: String::new(),
            every,
            since_check: 0,
        }
    }
}

/// The guardrails on a streamed answer: restoration chunk by chunk, moderation of the text
/// so far every `stream_check_every` chunks and of the whole text before the final event.
#[derive(Debug)]
pub struct StreamOutput {
    policy: Arc<Policy>,
    restorer: Option<StreamRestorer>,
    moderated: bool,
    /// The provider's text so far (with placeholders: the classifier sees no PII).
    text: String,
    every: u32,
    since_check: u32,
}

impl StreamOutput {
    /// One chunk (JSON) in, the chunk for the caller out.
    pub fn chunk(&mut self, data: String) -> String {
        if self.moderated {
            if let Ok(chunk) = serde_json::from_str::<Value>(&data) {
                for choice in chunk["choices"].as_array().map_or(&[][..], Vec::as_slice) {
                    if let Some(text) = choice["delta"]["content"].as_str() {
                        self.text.push_str(text);
                    }
                }
            }
            self.since_check += 1;
        }
        match &mut self.restorer {
            Some(r) => r.chunk(data),
            None => data,
        }
    }

    /// The periodic check, when one is due.
    pub async fn check_due(&mut self) -> Result<(), ApiError> {
        if !self.moderated || self.every == 0 || self.since_check < self.every {
            return Ok(());
        }
        self.since_check = 0;
        self.policy
            .moderate_output(std::slice::from_ref(&self.text))
            .await
    }

    /// The check of the whole text, before the stream's final event.
    pub async fn check_final(&mut self) -> Result<(), ApiError> {
        if !self.moderated {
            return Ok(());
        }
        self.policy
            .moderate_output(std::slice::from_ref(&self.text))
            .await
    }

    /// A last chunk with text held back for restoration, if any.
    pub fn finish(&mut self) -> Option<String> {
        self.restorer.as_mut().and_then(StreamRestorer::finish)
    }
}

#[cfg(test)]
mod tests;
