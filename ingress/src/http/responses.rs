//! OpenAI's Responses API: `POST /v1/responses` through the same sync path as chat
//! completions (the request is translated to the internal chat shape by
//! `sluice_dialect::responses`), answered as a `response` object or its typed events;
//! stored conversations for the teams allowed them ([`super::conversation`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sluice_dialect::responses::{response, stream};
use sluice_schemas::{Result as ResultRecord, Status};

use super::anthropic::events;
use super::requests::AsyncState;
use super::REQUEST_ID_HEADER;
use crate::admission::Dialect;
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /v1/responses`: sync or streamed; `"background": true` queues it as an async
/// request, to be read at `GET /v1/responses/{id}`.
pub(super) async fn responses(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (body, keep) = match super::conversation::prepare(&app, &headers, body).await {
        Ok(prepared) => prepared,
        Err(error) => return error.into_response(),
    };
    let response = if body.as_ref().is_ok_and(|b| background(b)) {
        super::requests::submit_in(Arc::clone(&app), headers, body, Dialect::Responses).await
    } else {
        super::chat::sync_call(Arc::clone(&app), headers, body, Dialect::Responses).await
    };
    match keep {
        Some(keep) => super::conversation::keep(&app, keep, response).await,
        None => response,
    }
}

/// Whether a body asks for `"background": true` (a body that does not parse is the sync
/// path's to refuse). The other fields are skipped, not built; a large body is scanned off
/// the runtime's worker thread, as admission parses it.
fn background(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Flag {
        #[serde(default)]
        background: Option<bool>,
    }
    let scan = || serde_json::from_slice::<Flag>(body).is_ok_and(|f| f.background == Some(true));
    if body.len() < crate::cpu::HEAVY_BYTES {
        scan()
    } else {
        crate::cpu::in_place(scan)
    }
}

/// `GET /v1/responses/{id}`: a background response as it stands (queued, completed,
/// incomplete, failed or cancelled); only its team sees it.
pub(super) async fn retrieve(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.keys.authenticate(&headers)?;
    let request_id = request_id_of(&id)?;
    let state = super::requests::async_state(&app, &caller, &request_id).await;
    Ok(axum::Json(response_of(&id, &request_id, state)?).into_response())
}

/// `POST /v1/responses/{id}/cancel` ([`super::cancel`]): the response as it stands after
/// the cancel, `cancelled` when a worker skipped it.
pub(super) async fn cancel(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.keys.authenticate(&headers)?;
    let request_id = request_id_of(&id)?;
    let state = super::cancel::cancel(&app, &caller, &request_id).await;
    Ok(axum::Json(response_of(&id, &request_id, state)?).into_response())
}

fn request_id_of(id: &str) -> Result<String, ApiError> {
    response::request_id(id).ok_or_else(|| ApiError::RequestNotFound(id.to_string()))
}

/// The `response` object of a background request's state.
fn response_of(
    id: &str,
    request_id: &str,
    state: Result<AsyncState, ApiError>,
) -> Result<Value, ApiError> {
    Ok(match state {
        Ok(AsyncState::Done {
            status,
            model,
            finished_at_ms,
            response: completion,
            error,
            ..
        }) => {
            let created_at = u64::try_from(finished_at_ms / 1000).unwrap_or_default();
            if status == "cancelled" {
                response::cancelled(request_id, created_at, &model)
            } else if completion.is_null() {
                response::failed(request_id, created_at, &model, &error)
            } else {
                response::from_openai(&completion, &model, request_id)
            }
        }
        Ok(AsyncState::Queued) => response::queued(request_id, 0, ""),
        Err(ApiError::RequestNotFound(_)) => return Err(ApiError::RequestNotFound(id.to_string())),
        Err(e) => return Err(e),
    })
}

/// A worker's result as a `response` object; a failure is OpenAI's error body as it is.
pub(crate) fn result_response(result: &ResultRecord) -> Response {
    let status = StatusCode::from_u16(result.http_status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let body: Value = serde_json::from_str(&result.body).unwrap_or(Value::Null);
    let json = match result.status {
        Status::Completed => response::from_openai(&body, &result.model, &result.request_id),
        Status::Failed | Status::Expired => body,
    };
    let mut response = (status, axum::Json(json)).into_response();
    if let Ok(v) = HeaderValue::from_str(&result.request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Turns the OpenAI chunks of one stream into the Responses API's events.
pub(crate) struct StreamWriter(stream::FromOpenAi);

impl StreamWriter {
    pub(crate) fn new(request_id: &str, model: &str, created_at_ms: i64) -> StreamWriter {
        let created_at = u64::try_from(created_at_ms / 1000).unwrap_or_default();
        StreamWriter(stream::FromOpenAi::new(request_id, model, created_at))
    }

    pub(crate) fn chunk(&mut self, data: &str) -> Vec<Event> {
        events(self.0.chunk(data))
    }

    pub(crate) fn done(&mut self) -> Vec<Event> {
        events(self.0.done())
    }

    pub(crate) fn error(&mut self, body: &str) -> Vec<Event> {
        events(self.0.error(body))
    }
}
