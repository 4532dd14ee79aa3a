//! `Idempotency-Key` on the endpoints that publish: claim the key once the request is
//! valid, settle the claim after the publish, and for a retry, wait for (or point at) the
//! request that holds the key (docs/idempotency.md).

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue};

use crate::admission::{PRIORITY_HEADER, TIMEOUT_HEADER};
use crate::error::ApiError;
use crate::idempotency::{Claim, Existing, Scope, Ticket};
use crate::keys::Caller;
use crate::lookup::StoredResult;
use crate::state::AppState;

/// The caller's key scoped to its team, with what a retry must repeat: the endpoint, the
/// headers that change the request, the body. A body that could not be read has none (it
/// is refused anyway).
pub(super) fn scope(
    headers: &HeaderMap,
    caller: &Caller,
    route: &str,
    body: &Result<Bytes, BytesRejection>,
) -> Result<Option<Scope>, ApiError> {
    let Ok(body) = body else { return Ok(None) };
    let header = |name: &str| headers.get(name).map_or(&b""[..], HeaderValue::as_bytes);
    Scope::of(
        headers,
        &caller.team,
        &[
            route.as_bytes(),
            header(PRIORITY_HEADER),
            header(TIMEOUT_HEADER),
            body,
        ],
    )
}

/// What a valid request does about its key.
pub(super) enum Keyed {
    /// Publish it (holding the key's claim, if it has a key).
    Fresh(Option<Ticket>),
    /// Another request holds the key.
    Retry(Existing),
}

/// Claims the key (if any) for `request_id`.
pub(super) async fn claim(
    app: &AppState,
    scope: Option<&Scope>,
    request_id: &str,
) -> Result<Keyed, ApiError> {
    let Some(scope) = scope else {
        return Ok(Keyed::Fresh(None));
    };
    Ok(match app.idempotency.claim(scope, request_id).await? {
        Claim::Won(ticket) => Keyed::Fresh(Some(ticket)),
        Claim::Taken(held) => Keyed::Retry(held),
    })
}

/// After the publish: accepted, the claim says so; refused before Kafka had it, the key is
/// free again; a produce that failed may still have landed (outcome unknown), so the claim
/// stays pending until [`wait`] sees it never arrived.
pub(super) async fn published(
    app: &AppState,
    ticket: Option<&Ticket>,
    outcome: &Result<(), ApiError>,
) {
    let Some(ticket) = ticket else { return };
    match outcome {
        Ok(()) => {
            app.idempotency.accepted(ticket).await;
            crate::ops::idempotency("new");
        }
        Err(ApiError::QueueUnavailable(_)) => {}
        Err(_) => app.idempotency.release(ticket).await,
    }
}

/// What a retry waited for.
pub(super) enum Waited {
    /// The first request's result.
    Result(StoredResult, String),
    /// The first request never reached Kafka: this one holds the key now and publishes.
    Mine(Ticket),
}

/// Waits up to `limit` for the result of the request that holds the key (from the results
/// store, so whichever replica took it). A claim still pending after `takeover_after_ms`
/// whose request ClickHouse never saw accepted is taken over for `request_id`. Past
/// `limit`: 409, naming the request to poll.
pub(super) async fn wait(
    app: &AppState,
    scope: &Scope,
    mut held: Existing,
    team: &str,
    request_id: &str,
    limit: Duration,
) -> Result<Waited, ApiError> {
    let until = Instant::now() + limit;
    loop {
        let stored = app
            .store
            .result(&held.request_id, team)
            .await
            .map_err(ApiError::StoreUnavailable)?;
        if let Some(stored) = stored {
            crate::ops::idempotency("replayed");
            return Ok(Waited::Result(stored, held.request_id));
        }
        if app.idempotency.may_take_over(&held)
            && !app
                .store
                .was_accepted(&held.request_id, team)
                .await
                .map_err(ApiError::StoreUnavailable)?
        {
            if let Some(ticket) = app.idempotency.take_over(scope, &held, request_id).await? {
                return Ok(Waited::Mine(ticket));
            }
            // Another retry took it over first, or it expired: look again.
            match app.idempotency.claim(scope, request_id).await? {
                Claim::Won(ticket) => return Ok(Waited::Mine(ticket)),
                Claim::Taken(now) => held = now,
            }
        }
        let now = Instant::now();
        if now >= until {
            crate::ops::idempotency("in_progress");
            return Err(ApiError::IdempotencyInProgress(held.request_id));
        }
        tokio::time::sleep(app.idempotency.poll.min(until - now)).await;
    }
}

pub(super) use crate::idempotency::replayed;
