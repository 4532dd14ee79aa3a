//! `[audit]`: what audit events keep of prompts and completions, per team.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_schemas::audit_content::AuditContent;

use crate::error::ConfigError;

/// `[audit]`: `content = "hash" | "full" | "none"` for every team, `[audit.teams]` per team.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub content: AuditContent,
    pub teams: BTreeMap<String, AuditContent>,
}

impl AuditConfig {
    /// The content mode of `team`.
    pub fn content_for(&self, team: &str) -> AuditContent {
        self.teams.get(team).copied().unwrap_or(self.content)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for team in self.teams.keys() {
            if !sluice_schemas::topics::is_valid_team_name(team) {
                return Err(ConfigError::Field {
                    field: format!("audit.teams.{team}"),
                    problem: "team names use letters, digits, '-' and '_' (at most 64)",
                });
            }
        }
        Ok(())
    }
}
