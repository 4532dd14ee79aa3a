//! The guardrails on a request's messages: [`Guard`] holds every team's policy and the
//! templates, and [`Guard::prepare`] applies them in the order the room's door lists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_schemas::openai::{ChatMessage, MessageContent, Role};

use super::config::{GuardConfig, PiiAction, PiiConfig};
use super::pii;
use super::pii::{Category, Finding};
use super::policy::Policy;
use super::restore::{Masker, Restorer};
use super::templates::Templates;
use crate::error::{ApiError, ConfigError};

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
        let texts = messages.iter().flat_map(|m| {
            let untrusted = matches!(m.role, Role::User | Role::Tool | Role::Function);
            m.text().map(move |text| (text, untrusted))
        });
        let variable_texts = variables.values().map(|v| (v.as_str(), true));
        screen_prompt(&policy, texts.chain(variable_texts), &mut decisions)?;
        let masker = mask_pii(
            &policy,
            text_slots(messages, &mut variables),
            &mut decisions,
        )?;

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
    /// The guardrails of an input that is not a conversation (the texts of an embeddings
    /// request), in place: prompt guard and PII. Templates, decorators and masking restore
    /// do not apply: nothing is generated from them.
    pub fn prepare_texts(&self, team: &str, texts: &mut [String]) -> Result<Prepared, ApiError> {
        let policy = self.policy(team);
        let mut decisions = Vec::new();
        screen_prompt(
            &policy,
            texts.iter().map(|t| (t.as_str(), true)),
            &mut decisions,
        )?;
        mask_pii(&policy, texts.iter_mut().collect(), &mut decisions)?;
        let moderation_input = if policy.moderation.as_ref().is_some_and(|c| c.config.input) {
            decisions.push("moderation:input".to_string());
            texts.to_vec()
        } else {
            Vec::new()
        };
        Ok(Prepared {
            policy,
            restorer: None,
            moderation_input,
            decisions,
        })
    }
}

impl Guard {
    /// The guardrails of token-array input, which they cannot read: allowed only when the
    /// team's policy screens no input (prompt guard, PII or input moderation).
    pub fn prepare_tokens(&self, team: &str) -> Result<Prepared, ApiError> {
        let policy = self.policy(team);
        let screens = !policy.prompt.is_empty()
            || Category::ALL.iter().any(|c| policy.pii_wanted(*c))
            || policy.moderation.as_ref().is_some_and(|c| c.config.input);
        if screens {
            return Err(ApiError::InvalidParam {
                param: "input",
                problem: "token arrays cannot be screened by this team's guardrails (prompt guard, PII, moderation); send the text instead",
            });
        }
        Ok(Prepared {
            policy,
            restorer: None,
            moderation_input: Vec::new(),
            decisions: Vec::new(),
        })
    }
}

/// The prompt guard over every `(text, untrusted)`: a blocked text refuses the request.
fn screen_prompt<'a>(
    policy: &Policy,
    texts: impl Iterator<Item = (&'a str, bool)>,
    decisions: &mut Vec<String>,
) -> Result<(), ApiError> {
    if policy.prompt.is_empty() {
        return Ok(());
    }
    decisions.push("prompt_guard:pass".to_string());
    for (text, untrusted) in texts {
        policy
            .prompt
            .check(text, untrusted)
            .map_err(|b| ApiError::PromptBlocked { rule: b.0 })?;
    }
    Ok(())
}

/// Scans every slot for the PII the policy wants found: refuses what it blocks, redacts or
/// masks the rest in place. The masker holds what masking replaced.
fn mask_pii(
    policy: &Policy,
    mut slots: Vec<&mut String>,
    decisions: &mut Vec<String>,
) -> Result<Masker, ApiError> {
    let mut masker = Masker::default();
    if !Category::ALL.iter().any(|c| policy.pii_wanted(*c)) {
        return Ok(masker);
    }
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
    let applied: BTreeSet<Category> = findings.iter().flatten().map(|f| f.category).collect();
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
    Ok(masker)
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
