//! `GET /v1/models` and `GET /v1/models/{model}`: the configured models.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde::Serialize;

use super::errors::{missing_key, model_not_found, simple_answer, wrong_key, ErrorAnswer};
use super::wire::{ModelJson, ModelListJson};
use super::{bearer_key, common_headers, internal_error, json_response, RecordedCall, Shared};
use crate::mock::{check_key, KeyCheck};

/// `GET /v1/models`: the configured models.
pub(super) async fn list_models(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let models = shared.behaviour().models.clone();
    let list = ModelListJson {
        object: "list",
        data: models.iter().map(|id| ModelJson::new(id)).collect(),
    };
    models_answer(&shared, method, uri, headers, Ok(&list))
}

/// `GET /v1/models/{model}`: the model, or 404 if it is not configured.
pub(super) async fn retrieve_model(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let exists = {
        let behaviour = shared.behaviour();
        behaviour.models.is_empty() || behaviour.models.contains(&model)
    };
    let found = ModelJson::new(&model);
    let answer = if exists {
        Ok(&found)
    } else {
        Err(ErrorAnswer::new(
            StatusCode::NOT_FOUND,
            model_not_found(&model),
        ))
    };
    models_answer(&shared, method, uri, headers, answer)
}

/// Check the key, record, and answer `json` (or its error).
fn models_answer<T: Serialize>(
    shared: &Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    json: Result<&T, ErrorAnswer>,
) -> Response {
    let key = {
        let behaviour = shared.behaviour();
        check_key(behaviour.api_key.as_deref(), bearer_key(&headers))
    };
    let json = match key {
        KeyCheck::Accepted => json,
        KeyCheck::Missing => Err(ErrorAnswer::new(StatusCode::UNAUTHORIZED, missing_key())),
        KeyCheck::Wrong => Err(ErrorAnswer::new(
            StatusCode::UNAUTHORIZED,
            wrong_key(bearer_key(&headers).unwrap_or_default()),
        )),
    };
    let json = match json.map(serde_json::to_vec) {
        Ok(Ok(json)) => json,
        Ok(Err(error)) => return internal_error(&error, Duration::ZERO),
        Err(answer) => return simple_answer(shared, method, uri, headers, Bytes::new(), answer),
    };
    let seq = shared.next_seq();
    let received_at = SystemTime::now();
    if let Some(max) = shared.record_limit() {
        let mut call =
            RecordedCall::received(seq, received_at, method, &uri, headers, Bytes::new());
        call.status = Some(200);
        shared.record(call, max);
    }
    let mut response = json_response(json);
    common_headers(response.headers_mut(), Duration::ZERO);
    response
}
