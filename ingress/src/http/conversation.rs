//! `store: true` and `previous_response_id` on `POST /v1/responses`, for a team whose
//! retention policy allows stored conversations ([`crate::conversations`]). For any other
//! team the body goes on untouched, and the Responses translation refuses both by name.
//!
//! Before the call, `previous_response_id` becomes the stored conversation prepended to the
//! request's `input`; after it, a stored response's input items (and its output, when the
//! answer is at hand) are kept under its request id.

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::REQUEST_ID_HEADER;
use crate::error::ApiError;
use crate::state::AppState;

/// The largest sync answer read back to keep its output (bigger ones are read from the
/// stored completion instead, as a stream's are).
const MAX_KEPT_ANSWER: usize = 16 * 1024 * 1024;

/// What to keep once the response is made.
pub(super) struct Keep {
    team: String,
    /// `store: true`: keep the input (else only show `previous_response_id`).
    store: bool,
    items: Value,
    previous: Option<String>,
    /// The answer is one JSON body (not a stream, not queued).
    whole: bool,
}

/// Whether a body names `previous_response_id` or `store: true` (scanned, not built).
fn asks(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Scan {
        #[serde(default)]
        previous_response_id: Option<Value>,
        #[serde(default)]
        store: Option<Value>,
    }
    serde_json::from_slice::<Scan>(body).is_ok_and(|s| {
        s.previous_response_id.is_some_and(|v| !v.is_null()) || s.store == Some(Value::Bool(true))
    })
}

/// The input items of `input` (a string is one user message); none for another shape
/// (the translation refuses it in its own words).
fn items_of(input: Option<&Value>) -> Option<Vec<Value>> {
    match input {
        Some(Value::String(text)) => Some(vec![json!({"role": "user", "content": text})]),
        Some(Value::Array(items)) => Some(items.clone()),
        _ => None,
    }
}

type CallBody = Result<Bytes, BytesRejection>;

/// The body to call with, and what to keep after.
pub(super) async fn prepare(
    app: &AppState,
    headers: &HeaderMap,
    body: CallBody,
) -> Result<(CallBody, Option<Keep>), ApiError> {
    let Ok(bytes) = &body else {
        return Ok((body, None));
    };
    if !asks(bytes) {
        return Ok((body, None));
    }
    let caller = app.keys.authenticate(headers)?;
    if !app.conversations.allowed(&caller.team) {
        return Ok((body, None));
    }
    let Ok(mut fields) = serde_json::from_slice::<Map<String, Value>>(bytes) else {
        return Ok((body, None));
    };
    let Some(mut items) = items_of(fields.get("input")) else {
        return Ok((body, None));
    };
    let previous = match fields.remove("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(_) => {
            return Err(ApiError::InvalidParam {
                param: "previous_response_id",
                problem: "must be a response id (a string)",
            })
        }
    };
    if let Some(id) = &previous {
        let request_id = sluice_dialect::responses::response::request_id(id)
            .ok_or_else(|| ApiError::RequestNotFound(id.clone()))?;
        let before = app
            .conversations
            .before(&request_id, &caller.team, &app.store)
            .await?;
        items = before.into_iter().chain(items).collect();
    }
    let store = match fields.remove("store") {
        Some(Value::Bool(b)) => b,
        None | Some(Value::Null) => false,
        Some(_) => {
            return Err(ApiError::InvalidParam {
                param: "store",
                problem: "must be a boolean",
            })
        }
    };
    let items = Value::Array(items);
    fields.insert("input".into(), items.clone());
    let flag = |name: &str| fields.get(name) == Some(&Value::Bool(true));
    let whole = !flag("stream") && !flag("background");
    let bytes = serde_json::to_vec(&fields).map_err(ApiError::InvalidJson)?;
    let keep = (store || previous.is_some()).then(|| Keep {
        team: caller.team.clone(),
        store,
        items,
        previous,
        whole,
    });
    Ok((Ok(Bytes::from(bytes)), keep))
}

/// Keeps a stored response's input (and output when the answer is whole), and shows
/// `store` and `previous_response_id` on a whole answer as OpenAI does. A refused or failed
/// call keeps nothing.
pub(super) async fn keep(app: &AppState, keep: Keep, response: Response) -> Response {
    if !response.status().is_success() {
        return response;
    }
    let Some(request_id) = response
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return response;
    };
    let (response, output) = if keep.whole {
        let (mut parts, body) = response.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_KEPT_ANSWER).await else {
            tracing::warn!(%request_id, "a stored response's answer could not be read back");
            return Response::from_parts(parts, Body::empty());
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut answer) if answer["object"] == "response" => {
                answer["store"] = json!(keep.store);
                answer["previous_response_id"] = json!(keep.previous);
                let output = (answer["status"] == "completed").then(|| answer["output"].clone());
                let body = answer.to_string();
                parts.headers.remove(axum::http::header::CONTENT_LENGTH);
                (Response::from_parts(parts, Body::from(body)), output)
            }
            _ => (Response::from_parts(parts, Body::from(bytes)), None),
        }
    } else {
        (response, None)
    };
    if !keep.store {
        return response;
    }
    if let Err(error) = app
        .conversations
        .keep(&request_id, &keep.team, &keep.items, output.as_ref())
        .await
    {
        // The answer stands; continuing from it will say it was not found.
        tracing::error!(%error, %request_id, "a stored response's input could not be kept");
    }
    response
}
