//! The audit content policy (`[audit]` in the ingress config) and what it puts into audit
//! events: the prompt's SHA-256 (and its text for `full` teams) and the policy decisions that
//! applied. Workers learn the mode from the request's [`AUDIT_ATTRIBUTE`] attribute and record
//! the completion the same way. Text goes only into audit events, never into logs.

use sluice_schemas::audit_content::{AuditContent, AUDIT_ATTRIBUTE};
use sluice_schemas::openai::ChatMessage;
use sluice_schemas::Audit;

pub use crate::config::AuditConfig;
use crate::error::{ApiError, ConfigError};

/// What the `accepted` audit event records of a request's content.
#[derive(Debug, Clone, Default)]
pub struct PromptAudit {
    pub prompt_sha256: Option<String>,
    pub prompt_text: Option<String>,
    /// Comma-separated guardrail decisions; `None` when none applied.
    pub policy: Option<String>,
}

impl PromptAudit {
    /// Records the final `messages` (after the guardrails) under `mode`, and marks the
    /// request's attributes with the mode so the worker records the completion alike.
    pub fn new(
        mode: AuditContent,
        messages: &[ChatMessage],
        decisions: &[String],
        attributes: &mut std::collections::HashMap<String, String>,
    ) -> PromptAudit {
        PromptAudit::of(mode, messages, decisions, attributes)
    }

    /// [`PromptAudit::new`] of any prompt: an embeddings request's `input`.
    pub fn of(
        mode: AuditContent,
        prompt: &(impl serde::Serialize + ?Sized),
        decisions: &[String],
        attributes: &mut std::collections::HashMap<String, String>,
    ) -> PromptAudit {
        attributes.insert(AUDIT_ATTRIBUTE.to_string(), mode.as_str().to_string());
        let (prompt_sha256, prompt_text) = match mode {
            AuditContent::None => (None, None),
            // Compact JSON through a `Value`, as the workers re-serialize the body for the
            // provider: the same bytes the provider receives in `messages`.
            _ => match serde_json::to_value(prompt).and_then(|v| serde_json::to_string(&v)) {
                Ok(json) => mode.record(&json),
                Err(_) => (None, None),
            },
        };
        PromptAudit {
            prompt_sha256,
            prompt_text,
            policy: (!decisions.is_empty()).then(|| decisions.join(",")),
        }
    }

    /// Fills the content fields of an `accepted` audit event.
    pub fn fill(&self, audit: &mut Audit) {
        audit.prompt_sha256.clone_from(&self.prompt_sha256);
        audit.prompt_text.clone_from(&self.prompt_text);
        audit.policy.clone_from(&self.policy);
    }
}

impl crate::config::Section for AuditConfig {
    fn check(&self, _: &crate::config::Config) -> Result<(), ConfigError> {
        self.validate()
    }
}

/// The policy decision behind a refusal, for the `rejected` audit event's `policy`.
pub fn rejection_policy(error: &ApiError) -> Option<String> {
    match error {
        ApiError::PromptBlocked { rule } => Some(format!("prompt_guard:block:{rule}")),
        ApiError::PiiBlocked { categories, .. } => Some(
            categories
                .iter()
                .map(|c| format!("pii:block:{c}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        ApiError::ContentFlagged { .. } => Some("moderation:input:flagged".into()),
        ApiError::OutputFlagged { .. } => Some("moderation:output:flagged".into()),
        ApiError::RateLimited { .. } => Some("rate_limit:key".into()),
        ApiError::BudgetExceeded(e) => Some(e.audit_policy()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    use sluice_schemas::audit_content::sha256_hex;
    use sluice_schemas::openai::{MessageContent, Role};

    use super::*;

    fn messages() -> Vec<ChatMessage> {
        vec![ChatMessage {
            role: Role::User,
            content: Some(MessageContent::Text("hello [EMAIL]".into())),
            extra: serde_json::Map::new(),
        }]
    }

    #[test]
    fn per_team_modes() {
        use figment::providers::Format;
        let config: AuditConfig = figment::Figment::from(figment::providers::Toml::string(
            "content = \"none\"\n[teams]\nt-full = \"full\"\n",
        ))
        .extract()
        .unwrap();
        assert_eq!(config.content_for("t-full"), AuditContent::Full);
        assert_eq!(config.content_for("other"), AuditContent::None);
        assert_eq!(AuditConfig::default().content_for("x"), AuditContent::Hash);
        let bad = AuditConfig {
            teams: [("a b".to_string(), AuditContent::Full)].into(),
            ..AuditConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn prompt_hash_text_and_attribute() {
        let json = serde_json::to_string(&serde_json::to_value(messages()).unwrap()).unwrap();
        let mut attributes = [(AUDIT_ATTRIBUTE.to_string(), "full".to_string())].into();
        let hashed = PromptAudit::new(
            AuditContent::Hash,
            &messages(),
            &["pii:redact:email".into()],
            &mut attributes,
        );
        assert_eq!(
            attributes[AUDIT_ATTRIBUTE], "hash",
            "a caller cannot pick its mode"
        );
        assert_eq!(hashed.prompt_sha256, Some(sha256_hex(json.as_bytes())));
        assert_eq!(hashed.prompt_text, None);
        assert_eq!(hashed.policy.as_deref(), Some("pii:redact:email"));

        let full = PromptAudit::new(AuditContent::Full, &messages(), &[], &mut attributes);
        assert_eq!(full.prompt_text.as_deref(), Some(json.as_str()));
        assert_eq!(full.policy, None);
        let none = PromptAudit::new(AuditContent::None, &messages(), &[], &mut attributes);
        assert_eq!((none.prompt_sha256, none.prompt_text), (None, None));
        assert_eq!(attributes[AUDIT_ATTRIBUTE], "none");
    }

    #[test]
    fn refusals_name_their_rule() {
        let e = ApiError::PromptBlocked {
            rule: "injection.ignore_previous".into(),
        };
        assert_eq!(
            rejection_policy(&e).as_deref(),
            Some("prompt_guard:block:injection.ignore_previous")
        );
        assert_eq!(rejection_policy(&ApiError::EmptyMessages), None);
    }
}
