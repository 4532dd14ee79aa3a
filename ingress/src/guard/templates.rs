//! Named, versioned prompt templates. A request names one with
//! `"sluice": {"template": "support-reply@2", "variables": {"product": "Sluice"}}` (no
//! `@version` = the highest version); its messages, with `{{variable}}` replaced, come
//! before the caller's own messages.
//!
//! Rendering is one pass: a value that itself contains `{{x}}` is inserted as written,
//! never expanded, so callers cannot reach other variables or template text through it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};
use sluice_schemas::openai::{ChatMessage, MessageContent, Role};

use super::config::{TemplateConfig, TemplateRole};
use crate::error::{ApiError, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Var(String),
}

#[derive(Debug)]
struct Template {
    /// `name@version`, for errors.
    id: String,
    teams: Vec<String>,
    messages: Vec<(Role, Vec<Segment>)>,
    variables: BTreeSet<String>,
}

/// Every configured template, by name then version.
#[derive(Debug, Default)]
pub struct Templates {
    by_name: HashMap<String, BTreeMap<u32, Template>>,
}

fn parse(content: &str) -> Option<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut rest = content;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            segments.push(Segment::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        let name = after[..close].trim();
        if !valid_name(name) {
            return None;
        }
        segments.push(Segment::Var(name.to_string()));
        rest = &after[close + 2..];
    }
    if rest.contains("}}") {
        return None;
    }
    if !rest.is_empty() {
        segments.push(Segment::Text(rest.to_string()));
    }
    Some(segments)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

impl Templates {
    pub fn from_config(configs: &[TemplateConfig]) -> Result<Templates, ConfigError> {
        let mut by_name: HashMap<String, BTreeMap<u32, Template>> = HashMap::new();
        for (i, t) in configs.iter().enumerate() {
            let field = |f: &str| format!("guard.templates[{i}].{f}");
            if !valid_name(&t.name) || t.name.contains('@') {
                return Err(ConfigError::Field {
                    field: field("name"),
                    problem: "must be letters, digits, '-', '_' or '.'",
                });
            }
            if t.messages.is_empty() {
                return Err(ConfigError::Field {
                    field: field("messages"),
                    problem: "a template needs at least one message",
                });
            }
            let mut messages = Vec::new();
            let mut variables = BTreeSet::new();
            for (j, m) in t.messages.iter().enumerate() {
                let segments = parse(&m.content).ok_or_else(|| ConfigError::Field {
                    field: field(&format!("messages[{j}].content")),
                    problem: "has an unbalanced `{{`/`}}` or a variable name that is not letters, digits, '-', '_' or '.'",
                })?;
                for s in &segments {
                    if let Segment::Var(v) = s {
                        variables.insert(v.clone());
                    }
                }
                let role = match m.role {
                    TemplateRole::System => Role::System,
                    TemplateRole::Developer => Role::Developer,
                    TemplateRole::User => Role::User,
                    TemplateRole::Assistant => Role::Assistant,
                };
                messages.push((role, segments));
            }
            let versions = by_name.entry(t.name.clone()).or_default();
            if versions.contains_key(&t.version) {
                return Err(ConfigError::Field {
                    field: field("version"),
                    problem: "this name and version appear twice",
                });
            }
            versions.insert(
                t.version,
                Template {
                    id: format!("{}@{}", t.name, t.version),
                    teams: t.teams.clone(),
                    messages,
                    variables,
                },
            );
        }
        Ok(Templates { by_name })
    }

    fn find(&self, team: &str, reference: &str) -> Option<&Template> {
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) => (n, Some(v.parse::<u32>().ok()?)),
            None => (reference, None),
        };
        let versions = self.by_name.get(name)?;
        let template = match version {
            Some(v) => versions.get(&v)?,
            None => versions.values().next_back()?,
        };
        (template.teams.is_empty() || template.teams.iter().any(|t| t == team)).then_some(template)
    }

    /// The `name@version` that `reference` resolves to for `team`.
    pub fn id(&self, team: &str, reference: &str) -> Option<&str> {
        self.find(team, reference).map(|t| t.id.as_str())
    }

    /// The variables a request gave, as text: strings as they are, numbers and booleans
    /// written out.
    pub fn variables(raw: &Map<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
        raw.iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(ApiError::TemplateVariableInvalid(k.clone())),
                };
                Ok((k.clone(), text))
            })
            .collect()
    }

    /// Checks that `reference` exists for `team` and `variables` are exactly its variables.
    pub fn check(
        &self,
        team: &str,
        reference: &str,
        variables: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let template = self
            .find(team, reference)
            .ok_or_else(|| ApiError::TemplateNotFound(reference.to_string()))?;
        if let Some(missing) = template
            .variables
            .iter()
            .find(|v| !variables.contains_key(*v))
        {
            return Err(ApiError::TemplateVariableMissing {
                template: template.id.clone(),
                variable: missing.clone(),
            });
        }
        if let Some(unknown) = variables.keys().find(|k| !template.variables.contains(*k)) {
            return Err(ApiError::TemplateVariableUnknown {
                template: template.id.clone(),
                variable: unknown.clone(),
            });
        }
        Ok(())
    }

    /// The template's messages with `variables` filled in (checked by [`Templates::check`]).
    pub fn render(
        &self,
        team: &str,
        reference: &str,
        variables: &BTreeMap<String, String>,
    ) -> Result<Vec<ChatMessage>, ApiError> {
        self.check(team, reference, variables)?;
        let template = self
            .find(team, reference)
            .ok_or_else(|| ApiError::TemplateNotFound(reference.to_string()))?;
        Ok(template
            .messages
            .iter()
            .map(|(role, segments)| {
                let mut text = String::new();
                for s in segments {
                    match s {
                        Segment::Text(t) => text.push_str(t),
                        Segment::Var(v) => {
                            text.push_str(variables.get(v).map(String::as_str).unwrap_or(""))
                        }
                    }
                }
                ChatMessage {
                    role: *role,
                    content: Some(MessageContent::Text(text)),
                    extra: Map::new(),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::guard::config::TemplateMessage;

    fn config(name: &str, version: u32, teams: &[&str], contents: &[&str]) -> TemplateConfig {
        TemplateConfig {
            name: name.into(),
            version,
            teams: teams.iter().map(|t| t.to_string()).collect(),
            messages: contents
                .iter()
                .enumerate()
                .map(|(i, c)| TemplateMessage {
                    role: if i == 0 {
                        TemplateRole::System
                    } else {
                        TemplateRole::User
                    },
                    content: c.to_string(),
                })
                .collect(),
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn text(m: &ChatMessage) -> String {
        m.text().collect()
    }

    #[test]
    fn renders_versions_and_latest() {
        let t = Templates::from_config(&[
            config("support", 1, &[], &["v1 for {{product}}"]),
            config(
                "support",
                2,
                &[],
                &[
                    "You support {{ product }}.",
                    "Q: {{question}} ({{product}})",
                ],
            ),
        ])
        .unwrap();
        let v = vars(&[("product", "Sluice"), ("question", "why {{product}}?")]);
        let m = t.render("a", "support@2", &v).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].role, Role::System);
        assert_eq!(text(&m[0]), "You support Sluice.");
        // One pass: a value's own braces are not expanded.
        assert_eq!(text(&m[1]), "Q: why {{product}}? (Sluice)");
        assert_eq!(
            text(&t.render("a", "support", &v).unwrap()[0]),
            "You support Sluice."
        );
        let m = t
            .render("a", "support@1", &vars(&[("product", "X")]))
            .unwrap();
        assert_eq!(text(&m[0]), "v1 for X");
    }

    #[test]
    fn errors_name_the_template_and_variable() {
        let t = Templates::from_config(&[
            config("support", 2, &[], &["{{product}} {{question}}"]),
            config("private", 1, &["acme"], &["secret"]),
        ])
        .unwrap();
        let err = t.render("a", "support@3", &vars(&[])).unwrap_err();
        assert!(
            matches!(&err, ApiError::TemplateNotFound(r) if r == "support@3"),
            "{err}"
        );
        assert!(t.render("a", "nope", &vars(&[])).is_err());
        assert!(t.render("a", "support@x", &vars(&[])).is_err());
        let err = t
            .render("a", "support@2", &vars(&[("product", "p")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("question") && err.to_string().contains("support@2"),
            "{err}"
        );
        let err = t
            .render(
                "a",
                "support@2",
                &vars(&[("product", "p"), ("question", "q"), ("colour", "red")]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        // Another team's template does not exist for you.
        assert!(matches!(
            t.render("a", "private", &vars(&[])),
            Err(ApiError::TemplateNotFound(_))
        ));
        assert!(t.render("acme", "private", &vars(&[])).is_ok());
    }

    #[test]
    fn bad_templates_are_refused_at_start_up() {
        let err = Templates::from_config(&[config("t", 1, &[], &["{{open"])]).unwrap_err();
        assert!(
            err.to_string()
                .contains("guard.templates[0].messages[0].content"),
            "{err}"
        );
        let err = Templates::from_config(&[config("t", 1, &[], &["{{bad name}}"])]).unwrap_err();
        assert!(err.to_string().contains("messages[0].content"), "{err}");
        let err =
            Templates::from_config(&[config("t", 1, &[], &["a"]), config("t", 1, &[], &["b"])])
                .unwrap_err();
        assert!(
            err.to_string().contains("guard.templates[1].version"),
            "{err}"
        );
        let err = Templates::from_config(&[config("a@b", 1, &[], &["a"])]).unwrap_err();
        assert!(err.to_string().contains("guard.templates[0].name"), "{err}");
    }

    #[test]
    fn variables_accept_scalars_only() {
        let raw: Map<String, Value> =
            serde_json::from_str(r#"{"a": "x", "n": 3, "b": true}"#).unwrap();
        let v = Templates::variables(&raw).unwrap();
        assert_eq!(v["n"], "3");
        assert_eq!(v["b"], "true");
        let raw: Map<String, Value> = serde_json::from_str(r#"{"o": {"x": 1}}"#).unwrap();
        assert!(
            matches!(Templates::variables(&raw), Err(ApiError::TemplateVariableInvalid(k)) if k == "o")
        );
    }
}
