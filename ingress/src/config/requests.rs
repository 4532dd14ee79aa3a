//! `[deadlines]`, `[routing]`, `[[models]]` and `[billing]`: what a request may ask for
//! and where it goes.

use std::time::Duration;

use serde::Deserialize;
use sluice_schemas::Priority;

use super::millis;

/// Default time a request may wait before it must not reach a provider, per class.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadlineConfig {
    #[serde(with = "millis")]
    pub interactive_ms: Duration,
    #[serde(with = "millis")]
    pub standard_ms: Duration,
    #[serde(with = "millis")]
    pub batch_ms: Duration,
    /// Longest deadline a caller may ask for.
    #[serde(with = "millis")]
    pub max_ms: Duration,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        DeadlineConfig {
            interactive_ms: Duration::from_secs(120),
            standard_ms: Duration::from_secs(30 * 60),
            batch_ms: Duration::from_secs(24 * 3600),
            max_ms: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl DeadlineConfig {
    pub fn default_for(&self, priority: Priority) -> Duration {
        match priority {
            Priority::Interactive => self.interactive_ms,
            Priority::Standard => self.standard_ms,
            Priority::Batch => self.batch_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Teams whose requests go to dedicated topics (`<prefix>.requests.<class>.team.<team>`).
    pub team_topics: Vec<String>,
    /// A team's requests spread over this many consecutive partitions of a request topic
    /// (starting at a hash of the team): several workers can serve one team, while a
    /// flooding team never occupies every partition.
    pub partitions_per_team: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            team_topics: Vec::new(),
            partitions_per_team: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: String,
    #[serde(default = "default_owner")]
    pub owned_by: String,
    /// Tokenizer for prompt counting: "o200k_base" or "cl100k_base" (default: by model name).
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// The model's context window in tokens, shown in `GET /v1/models` (`sluice`).
    #[serde(default)]
    pub context_window: Option<u32>,
    /// An embeddings model's default vector length (bounds an answer's size before it is
    /// asked for; the catalogue knows OpenAI's and Google's, others fall back to 3072).
    #[serde(default)]
    pub dimensions: Option<u32>,
}

fn default_owner() -> String {
    "sluice".into()
}

/// `[billing]`: bounds on what one request may cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// Most completions (`n`) one request may ask for.
    pub max_n: u32,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig { max_n: 8 }
    }
}
