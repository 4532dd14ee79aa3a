//! `Idempotency-Key` on batch creation (`POST /v1/batches`, `POST /v1/messages/batches`): a
//! key names one batch of the team. The claim is taken once the body is valid and names the
//! new batch's id; a retry with the same key and body gets that batch as it is now
//! (`x-sluice-idempotent-replayed: true`), never a second one. A different body is 422, a
//! creation still under way 409. A claim whose creator died before the batch was stored is
//! taken over once it is stale (docs/idempotency.md).

use axum::http::HeaderMap;

use super::{BatchError, Handles};
use crate::idempotency::{Claim, Scope, Ticket};

/// What a valid creation does about its key.
pub(super) enum Keyed {
    /// Create the batch with this id (holding the key's claim, if it has a key).
    Fresh(Option<Ticket>, String),
    /// The key names this batch already: answer it.
    Created(String),
}

/// Claims the key (if the request has one) for the batch `fresh_id`.
pub(super) async fn claim(
    app: &impl Handles,
    headers: &HeaderMap,
    team: &str,
    route: &str,
    body: &[u8],
    fresh_id: String,
) -> Result<Keyed, BatchError> {
    let Some(scope) = Scope::of(headers, team, &[route.as_bytes(), body])? else {
        return Ok(Keyed::Fresh(None, fresh_id));
    };
    let store = app.idempotency();
    let held = match store.claim(&scope, &fresh_id).await? {
        Claim::Won(ticket) => return Ok(Keyed::Fresh(Some(ticket), fresh_id)),
        Claim::Taken(held) => held,
    };
    if held.accepted {
        crate::ops::idempotency("replayed");
        return Ok(Keyed::Created(held.request_id));
    }
    // Pending: stored already (its creator could not mark the claim), under way, or its
    // creator died before storing it.
    if app
        .batches_store()
        .batch(&held.request_id, team)
        .await?
        .is_some()
    {
        crate::ops::idempotency("replayed");
        return Ok(Keyed::Created(held.request_id));
    }
    if store.may_take_over(&held) {
        if let Some(ticket) = store.take_over(&scope, &held, &fresh_id).await? {
            return Ok(Keyed::Fresh(Some(ticket), fresh_id));
        }
    }
    crate::ops::idempotency("in_progress");
    Err(BatchError::BatchInProgress(held.request_id))
}

/// After the batch row was (or was not) stored: the claim says so, or the key is free again.
pub(super) async fn settle(app: &impl Handles, ticket: Option<&Ticket>, stored: bool) {
    let Some(ticket) = ticket else { return };
    if stored {
        app.idempotency().accepted(ticket).await;
        crate::ops::idempotency("new");
    } else {
        app.idempotency().release(ticket).await;
    }
}

pub(super) use crate::idempotency::replayed;
