//! `POST /v1/requests/{id}/cancel` and `POST /v1/responses/{id}/cancel`: a caller stops one
//! of its team's requests that has not ended.
//!
//! The ingress publishes a `Cancel` (reason [`Cancel::BY_CALLER`]) on the cancels topic,
//! which every worker reads whole. A worker that has not started the request skips it and
//! publishes its end: failed, 499, code `request_cancelled`, nothing billed; the caller sees
//! `cancelled`. A request already at a provider is not stopped when it does not stream (the
//! provider bills a call whose client goes away anyway, and its answer is kept); a stream
//! ends as if its caller left, billed for what was generated. The answer is the request as
//! it stands after a short wait for the worker's outcome: `cancelled`, or `completed` if
//! the provider answered first, or still `queued` (with `cancel_requested`) when no worker
//! has reached it yet; it ends `cancelled` when one does. Cancelling an ended request
//! changes nothing and answers it as it is.

use std::time::{Duration, Instant};

use sluice_schemas::{encode, now_ms, Cancel, Topic};

use super::requests::{async_state, AsyncState};
use crate::error::ApiError;
use crate::kafka::send;
use crate::keys::Caller;
use crate::state::AppState;

/// How long a cancel waits for the worker's outcome before it answers.
const WAIT: Duration = Duration::from_secs(3);
/// How often it looks meanwhile.
const POLL: Duration = Duration::from_millis(250);

/// Cancels the caller's request `id` (another team's is not found) and returns where it
/// stands (see the module docs).
pub(super) async fn cancel(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<AsyncState, ApiError> {
    let state = async_state(app, caller, id).await?;
    if let AsyncState::Done { .. } = state {
        return Ok(state);
    }
    let cancel = Cancel {
        request_id: id.to_string(),
        team: caller.team.clone(),
        reason: Cancel::BY_CALLER.into(),
        occurred_at_ms: now_ms(),
    };
    let payload = encode(&cancel).map_err(ApiError::Encode)?;
    let topic = app.topics.name(&Topic::Cancels);
    send(&app.producer, &topic, id, &payload, None)
        .await
        .map_err(ApiError::QueueUnavailable)?;
    tracing::info!(request_id = %id, team = %caller.team, "cancel requested");
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        tokio::time::sleep(POLL).await;
        if let state @ AsyncState::Done { .. } = async_state(app, caller, id).await? {
            return Ok(state);
        }
    }
    Ok(AsyncState::Queued)
}
