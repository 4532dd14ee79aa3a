//! One team's compiled policy: its prompt guard, PII actions, decorators and classifier.

use super::config::{DecoratorConfig, PiiAction, PiiConfig, PolicyConfig};
use super::moderation::{Classifier, Stage};
use super::pii::Category;
use super::prompt_guard::PromptGuard;
use crate::error::{ApiError, ConfigError};

/// One team's compiled policy.
#[derive(Debug, Default)]
pub struct Policy {
    pub(super) prompt: PromptGuard,
    pub(super) pii: PiiConfig,
    pub(super) decorators: DecoratorConfig,
    pub(super) moderation: Option<Classifier>,
}

impl Policy {
    pub(super) fn from_config(
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

    pub(super) fn pii_wanted(&self, category: Category) -> bool {
        self.pii.action(category) != PiiAction::Allow
    }

    pub(super) fn output_classifier(&self) -> Option<&Classifier> {
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
