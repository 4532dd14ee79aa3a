//! Webhooks of async requests (`"sluice": {"webhook_url"}` on `POST /v1/requests`): the
//! accepting replica watches for the result in ClickHouse and posts a Standard Webhooks
//! event when it lands. The event says how the request ended, not what it answered: the
//! answer is fetched from `GET /v1/requests/{id}`, where the team's output checks apply.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_schemas::retry::{self, Retryable};
use sluice_schemas::{now_ms, Request};

use super::Handles;

/// After the deadline a worker answers `expired`; this covers its round trip and the sink.
const GRACE_MS: i64 = 60_000;

pub fn watch_request(app: Arc<impl Handles>, request: &Request, url: String) {
    let id = request.request_id.clone();
    let team = request.team.clone();
    let until = request.deadline_ms + GRACE_MS;
    tokio::spawn(async move {
        // Not there yet is `None`; a failed lookup is the error.
        let looked_up = (|| async {
            match app.store().result(&id, &team).await {
                Ok(Some(stored)) => Ok(stored),
                Ok(None) => Err(None),
                Err(error) => Err(Some(error)),
            }
        })
        .retry(retry::doubling(
            Duration::from_millis(200),
            Duration::from_secs(2),
        ))
        .when(|missing| {
            if let Some(error) = missing {
                tracing::debug!(%error, request_id = %id, "result lookup failed");
            }
            now_ms() <= until
        })
        .await;
        let Ok(stored) = looked_up else {
            tracing::warn!(request_id = %id, "no result before the deadline; webhook not sent");
            return;
        };
        let data = json!({
            "id": id,
            "object": "sluice.request",
            "status": stored.status,
            "model": stored.model,
            "http_status": stored.http_status,
            "completed_at": stored.finished_at_ms / 1000,
            "url": format!("/v1/requests/{id}"),
        });
        let kind = format!("request.{}", stored.status);
        match app.webhooks().deliver(&team, &url, &id, &kind, &data).await {
            Ok(d) => {
                tracing::info!(request_id = %id, attempts = d.attempts, "request webhook delivered")
            }
            Err(error) => tracing::warn!(request_id = %id, %error, "request webhook not delivered"),
        }
    });
}
