//! The pluggable moderation hook: an external HTTP classifier asked before a prompt is
//! published and before a completion reaches the caller.
//!
//! Wire format, OpenAI's `/v1/moderations`, so OpenAI's endpoint, Azure's or any service
//! that speaks it can be plugged in:
//!
//! ```text
//! POST <url>   Authorization: Bearer $<api_key_env> (if configured)
//! {"input": ["text 1", "text 2"], "model": "<model, if configured>"}
//!
//! 200 {"results": [{"flagged": false, "categories": {"violence": false, ...}}, ...]}
//! ```
//!
//! The verdict is "flagged" if any result is flagged (restricted to the policy's
//! `categories`, if it lists some). Anything else (a timeout, a non-2xx status, an answer
//! that is not this shape) is an error, which the policy's `on_error` turns into a pass
//! (`open`) or a refusal (`closed`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use super::config::{ModerationConfig, OnError};
use crate::error::{ApiError, ModerationError};

/// Which side of the provider call is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Input,
    Output,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// The flagged categories (may be empty if the classifier named none).
    Flagged(Vec<String>),
}

#[derive(Deserialize)]
struct Response {
    results: Vec<Classification>,
}

#[derive(Deserialize)]
struct Classification {
    flagged: bool,
    #[serde(default)]
    categories: BTreeMap<String, serde_json::Value>,
}

/// A team's classifier.
pub struct Classifier {
    pub config: ModerationConfig,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    pub fn new(config: ModerationConfig, http: reqwest::Client) -> Classifier {
        let token = config
            .api_key_env
            .as_deref()
            .and_then(|name| std::env::var(name).ok());
        Classifier {
            config,
            token,
            http,
        }
    }

    /// Asks the classifier about `texts`.
    pub async fn classify(&self, texts: &[String]) -> Result<Verdict, ModerationError> {
        let mut body = json!({"input": texts});
        if let Some(model) = &self.config.model {
            body["model"] = json!(model);
        }
        let mut request = self
            .http
            .post(&self.config.url)
            .timeout(self.config.timeout_ms)
            .json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(ModerationError::from_reqwest)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ModerationError::Status(status.as_u16()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(ModerationError::from_reqwest)?;
        let parsed: Response = serde_json::from_slice(&bytes).map_err(ModerationError::Invalid)?;
        if parsed.results.is_empty() {
            return Err(ModerationError::NoResults);
        }
        let mut flagged = false;
        let mut categories: Vec<String> = Vec::new();
        for result in &parsed.results {
            let named = result
                .categories
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone());
            let named: Vec<String> = if self.config.categories.is_empty() {
                named.collect()
            } else {
                named
                    .filter(|k| self.config.categories.iter().any(|c| c == k))
                    .collect()
            };
            let counts = if self.config.categories.is_empty() {
                result.flagged
            } else {
                result.flagged && !named.is_empty()
            };
            if counts {
                flagged = true;
                categories.extend(named);
            }
        }
        categories.sort();
        categories.dedup();
        Ok(if flagged {
            Verdict::Flagged(categories)
        } else {
            Verdict::Clean
        })
    }

    /// Checks `texts` at `stage` and applies the policy: Ok to go on, or the error the
    /// caller gets.
    pub async fn check(&self, stage: Stage, texts: &[String]) -> Result<(), ApiError> {
        let enabled = match stage {
            Stage::Input => self.config.input,
            Stage::Output => self.config.output,
        };
        if !enabled || texts.iter().all(|t| t.trim().is_empty()) {
            return Ok(());
        }
        match self.classify(texts).await {
            Ok(Verdict::Clean) => Ok(()),
            Ok(Verdict::Flagged(categories)) => Err(match stage {
                Stage::Input => ApiError::ContentFlagged { categories },
                Stage::Output => ApiError::OutputFlagged { categories },
            }),
            Err(error) if self.config.on_error == OnError::Open => {
                tracing::warn!(%error, stage = ?stage, "moderation unavailable; failing open");
                Ok(())
            }
            Err(error) => Err(ApiError::ModerationUnavailable(error)),
        }
    }
}
