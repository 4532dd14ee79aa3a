//! OpenAI's embeddings endpoint, `POST /v1/embeddings` (and Azure's
//! `/openai/deployments/{deployment}/embeddings`): injected failures and the key as on chat
//! completions, then the body; vectors and tokens as [`crate::mock::embeddings`] computes
//! them. A call is recorded like a chat completion, with its prompt tokens.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::Value;

use super::errors::{model_not_found, unparseable_json, ErrorAnswer, INVALID_REQUEST};
use super::{deliver, presented_key, refusal, Answer, Plan};
use crate::mock::connection::Conn;
use crate::mock::{embeddings, ApiError, RecordedCall, Shared};

pub(super) async fn embeddings(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    let seq = shared.next_seq();
    let received_at = SystemTime::now();
    let body = serde_json::from_slice::<Value>(&raw_body).ok();
    let presented = presented_key(&headers);
    let model = body.as_ref().and_then(|b| b.get("model")?.as_str());
    let plan = Plan::take(&shared, presented, model);
    let answer = refusal(&plan, body.as_ref(), false, presented).unwrap_or_else(|| {
        let bad = |error| Answer::Error(ErrorAnswer::new(StatusCode::BAD_REQUEST, error));
        let Some(body) = body.as_ref().filter(|b| b.is_object()) else {
            return bad(unparseable_json());
        };
        if !plan.model_exists {
            return Answer::Error(ErrorAnswer::new(
                StatusCode::NOT_FOUND,
                model_not_found(model.unwrap_or_default()),
            ));
        }
        match embeddings::openai_answer(body) {
            Ok((json, tokens)) => Answer::Embeddings {
                json: json.to_string().into_bytes(),
                tokens,
            },
            Err((param, message)) => {
                bad(ApiError::new(INVALID_REQUEST, None, message).with_param(param))
            }
        }
    });
    let model = model.map(str::to_owned);
    let call = || {
        let mut call = RecordedCall::received(seq, received_at, method, &uri, headers, raw_body);
        call.model = model;
        call.body = body;
        call
    };
    deliver(shared, &conn, &plan, seq, answer, call).await
}
