//! What audit events record of a request's content, per team: the ingress's `[audit]`
//! policy, carried to the workers in the request's `attributes` under [`AUDIT_ATTRIBUTE`].
//!
//! - `hash` (the default): `prompt_sha256` and `completion_sha256` only.
//! - `full`: the hashes and `prompt_text` / `completion_text`.
//! - `none`: neither.
//!
//! The prompt is the final messages array (after guardrail redaction, templates and
//! decorators) as compact JSON, exactly what the workers send; the completion is the text of
//! the answer's choices ([`completion_text`]). Both sides hash with [`sha256_hex`], so an
//! auditor can check a hash against what was sent.

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Request attribute naming the audit content mode (`full`, `hash` or `none`). The ingress
/// always sets it from the team's policy, overriding whatever a caller sent.
pub const AUDIT_ATTRIBUTE: &str = "sluice.audit";

/// How much of a request's content its audit events keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditContent {
    Full,
    #[default]
    Hash,
    None,
}

impl AuditContent {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditContent::Full => "full",
            AuditContent::Hash => "hash",
            AuditContent::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<AuditContent> {
        match s {
            "full" => Some(AuditContent::Full),
            "hash" => Some(AuditContent::Hash),
            "none" => Some(AuditContent::None),
            _ => None,
        }
    }

    /// The mode named in a request's attributes; `hash` when absent or unknown (a request
    /// from an older ingress).
    pub fn of_attributes(attributes: &std::collections::HashMap<String, String>) -> Self {
        attributes
            .get(AUDIT_ATTRIBUTE)
            .and_then(|v| AuditContent::parse(v))
            .unwrap_or_default()
    }

    /// `(sha256, text)` of `content` under this mode.
    pub fn record(self, content: &str) -> (Option<String>, Option<String>) {
        match self {
            AuditContent::Full => (Some(sha256_hex(content.as_bytes())), Some(content.into())),
            AuditContent::Hash => (Some(sha256_hex(content.as_bytes())), None),
            AuditContent::None => (None, None),
        }
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The text of a chat completion (JSON): its choices' `message.content`, in order, joined
/// with `\n`. `None` when the body is not a completion with text.
pub fn completion_text(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let texts: Vec<&str> = value["choices"]
        .as_array()?
        .iter()
        .filter_map(|c| c["message"]["content"].as_str())
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn modes_and_hashes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for mode in [AuditContent::Full, AuditContent::Hash, AuditContent::None] {
            assert_eq!(AuditContent::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(AuditContent::parse("FULL"), None);
        let (hash, text) = AuditContent::Full.record("hi");
        assert_eq!(hash.as_deref(), Some(sha256_hex(b"hi").as_str()));
        assert_eq!(text.as_deref(), Some("hi"));
        assert_eq!(AuditContent::Hash.record("hi").1, None);
        assert_eq!(AuditContent::None.record("hi"), (None, None));

        let mut attributes = std::collections::HashMap::new();
        assert_eq!(AuditContent::of_attributes(&attributes), AuditContent::Hash);
        attributes.insert(AUDIT_ATTRIBUTE.to_string(), "full".to_string());
        assert_eq!(AuditContent::of_attributes(&attributes), AuditContent::Full);
        attributes.insert(AUDIT_ATTRIBUTE.to_string(), "bogus".to_string());
        assert_eq!(AuditContent::of_attributes(&attributes), AuditContent::Hash);
    }

    #[test]
    fn completion_text_of_choices() {
        let body = r#"{"choices":[{"message":{"role":"assistant","content":"a b"}},{"message":{"content":"c"}}]}"#;
        assert_eq!(completion_text(body).as_deref(), Some("a b\nc"));
        assert_eq!(
            completion_text(r#"{"choices":[{"message":{"tool_calls":[]}}]}"#),
            None
        );
        assert_eq!(completion_text(r#"{"error":{"message":"x"}}"#), None);
        assert_eq!(completion_text("not json"), None);
    }
}
