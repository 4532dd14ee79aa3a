//! Stored conversations of the Responses API (docs/responses.md#stored-conversations), for
//! the teams whose retention policy allows them (`[retention] conversation_teams`).
//!
//! A response made with `store: true` keeps the input items it was answered from (earlier
//! turns included) in the private database, and its output items when the ingress has them
//! at hand (a sync answer). A request with `previous_response_id` is that input, that output
//! (else the answer the sink stored in `result_bodies`), then its own input: the provider
//! sees the whole conversation, as OpenAI's own service sends it. Only the team that made a
//! response can continue it; rows expire after `conversation_days`.

use std::collections::HashSet;
use std::time::Duration;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_schemas::now_ms;
use sluice_schemas::tables::PrivateTable;

use crate::config::Config;
use crate::error::ApiError;
use crate::lookup::ResultStore;

/// How long a continuation waits for the previous answer to land (a streamed or background
/// answer reaches `result_bodies` through the sink, a flush interval after it ended).
const LANDING_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Row, Serialize, Deserialize)]
struct InputRow {
    request_id: String,
    team: String,
    items: String,
    output: String,
    created_at_ms: i64,
    expires_at: u32,
}

#[derive(Debug, Row, Deserialize)]
struct StoredRow {
    items: String,
    output: String,
}

/// The stored conversations.
#[derive(Clone)]
pub struct Conversations {
    client: Client,
    teams: HashSet<String>,
    days: u32,
}

fn invalid(problem: &'static str) -> ApiError {
    ApiError::InvalidParam {
        param: "previous_response_id",
        problem,
    }
}

impl Conversations {
    pub fn new(config: &Config) -> Conversations {
        Conversations {
            client: config.clickhouse.client(),
            teams: config
                .retention
                .conversation_teams
                .iter()
                .cloned()
                .collect(),
            days: config.retention.conversation_days,
        }
    }

    /// Whether `team`'s policy allows stored conversations.
    pub fn allowed(&self, team: &str) -> bool {
        self.teams.contains(team)
    }

    /// Keeps the input `items` (and `output`, when known) of response `request_id`.
    pub async fn keep(
        &self,
        request_id: &str,
        team: &str,
        items: &Value,
        output: Option<&Value>,
    ) -> Result<(), clickhouse::error::Error> {
        let now = now_ms();
        let row = InputRow {
            request_id: request_id.to_string(),
            team: team.to_string(),
            items: items.to_string(),
            output: output.map(Value::to_string).unwrap_or_default(),
            created_at_ms: now,
            expires_at: sluice_schemas::tables::expires_at(now, self.days),
        };
        let mut insert = self
            .client
            .insert::<InputRow>(PrivateTable::ConversationInputs.name())
            .await?;
        insert.write(&row).await?;
        insert.end().await
    }

    /// The items a continuation of response `request_id` of `team` starts with: the stored
    /// input, then the response's output items.
    pub async fn before(
        &self,
        request_id: &str,
        team: &str,
        results: &ResultStore,
    ) -> Result<Vec<Value>, ApiError> {
        let sql = format!(
            "SELECT items, output FROM {} FINAL WHERE request_id = ? AND team = ? \
             AND expires_at > now() LIMIT 1",
            PrivateTable::ConversationInputs.name()
        );
        let stored: Option<StoredRow> = self
            .client
            .query(&sql)
            .bind(request_id)
            .bind(team)
            .fetch_optional()
            .await
            .map_err(ApiError::StoreUnavailable)?;
        let Some(stored) = stored else {
            // Never stored, expired, or another team's: the same answer for each.
            return Err(ApiError::RequestNotFound(format!("resp_{request_id}")));
        };
        let mut items = parse_items(&stored.items)?;
        let output = if stored.output.is_empty() {
            landed_output(request_id, team, results).await?
        } else {
            parse_items(&stored.output)?
        };
        items.extend(output);
        Ok(items)
    }
}

fn parse_items(text: &str) -> Result<Vec<Value>, ApiError> {
    match serde_json::from_str(text) {
        Ok(Value::Array(items)) => Ok(items),
        _ => Err(invalid("the stored conversation could not be read")),
    }
}

/// The output items of a finished response, from the completions the sink stored; waits
/// a little for one that just ended.
async fn landed_output(
    request_id: &str,
    team: &str,
    results: &ResultStore,
) -> Result<Vec<Value>, ApiError> {
    let deadline = tokio::time::Instant::now() + LANDING_WAIT;
    loop {
        let result = results
            .result(request_id, team)
            .await
            .map_err(ApiError::StoreUnavailable)?;
        match result {
            Some(r) if r.status == "completed" => {
                let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                let response =
                    sluice_dialect::responses::response::from_openai(&body, &r.model, request_id);
                return Ok(response["output"].as_array().cloned().unwrap_or_default());
            }
            Some(_) => {
                return Err(invalid(
                    "that response did not complete (it failed, expired or was cancelled): continue from an earlier one",
                ))
            }
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => {
                return Err(invalid(
                    "that response has not finished yet: continue from it once it has",
                ))
            }
        }
    }
}
