//! OpenAI's moderation endpoint, `POST /v1/moderations`, as api.openai.com answers it: `input`
//! is a string, an array of strings, or an array of content parts (`{"type": "text", "text"}`
//! or `{"type": "image_url", ...}`); the answer has one result per input with every category
//! OpenAI names, its score and the input types it was applied to.
//!
//! The verdict is deterministic: a text is flagged in category `violence` when it contains one
//! of [`Behaviour::moderation_flag_words`](crate::mock::Behaviour) as a word (ASCII case
//! ignored); images are never flagged. [`Behaviour::moderation_fails`](crate::mock::Behaviour)
//! answers 500 `server_error` instead, so a guard's `on_error` can be exercised. The API key
//! is checked as on chat completions.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::errors::{
    invalid_type, missing_key, missing_parameter, server_error, unparseable_json, wrong_key,
    ErrorAnswer,
};
use super::{bearer_key, json_response};
use crate::mock::{check_key, KeyCheck, Shared};

/// The model answered when a request names none, as OpenAI does.
pub const DEFAULT_MODEL: &str = "omni-moderation-latest";

/// The categories OpenAI's omni moderation model reports, in its order.
const CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];
const FLAGGED_CATEGORY: &str = "violence";

pub(super) async fn moderations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    shared.count_moderation();
    let (fails, flag_words, expected_key) = {
        let behaviour = shared.behaviour();
        (
            behaviour.moderation_fails,
            behaviour.moderation_flag_words.clone(),
            behaviour.api_key.clone(),
        )
    };
    let error = |status, error| ErrorAnswer::new(status, error).into_response(Default::default());
    if fails {
        return error(StatusCode::INTERNAL_SERVER_ERROR, server_error());
    }
    let presented = bearer_key(&headers);
    match check_key(expected_key.as_deref(), presented) {
        KeyCheck::Accepted => {}
        KeyCheck::Missing => return error(StatusCode::UNAUTHORIZED, missing_key()),
        KeyCheck::Wrong => {
            return error(
                StatusCode::UNAUTHORIZED,
                wrong_key(presented.unwrap_or_default()),
            )
        }
    }
    let Ok(body) = serde_json::from_slice::<Value>(&raw_body) else {
        return error(StatusCode::BAD_REQUEST, unparseable_json());
    };
    let model = match body.get("model") {
        None | Some(Value::Null) => DEFAULT_MODEL,
        Some(Value::String(model)) => model.as_str(),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                invalid_type("model", "a string", other),
            )
        }
    };
    let inputs = match inputs(body.get("input")) {
        Ok(inputs) => inputs,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let results: Vec<Value> = inputs
        .iter()
        .map(|input| classify(input, &flag_words))
        .collect();
    let answer = json!({
        "id": format!("modr-{}", uuid::Uuid::new_v4().simple()),
        "model": model,
        "results": results,
    });
    json_response(answer.to_string().into_bytes())
}

/// One moderation input: its text, or an image (never flagged).
enum Input<'a> {
    Text(&'a str),
    Image,
}

fn inputs(input: Option<&Value>) -> Result<Vec<Input<'_>>, crate::mock::ApiError> {
    match input {
        None | Some(Value::Null) => Err(missing_parameter("input")),
        Some(Value::String(text)) => Ok(vec![Input::Text(text)]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(text) => Ok(Input::Text(text)),
                Value::Object(part) => match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(text)) => Ok(Input::Text(text)),
                        _ => Err(missing_parameter(&format!("input[{i}].text"))),
                    },
                    Some("image_url") => Ok(Input::Image),
                    _ => Err(invalid_type(
                        &format!("input[{i}].type"),
                        "'text' or 'image_url'",
                        item,
                    )),
                },
                other => Err(invalid_type(
                    &format!("input[{i}]"),
                    "a string or an object",
                    other,
                )),
            })
            .collect(),
        Some(other) => Err(invalid_type("input", "a string or an array", other)),
    }
}

fn classify(input: &Input<'_>, flag_words: &[String]) -> Value {
    let (flagged, kind) = match input {
        Input::Text(text) => (
            text.split(|c: char| !c.is_alphanumeric())
                .any(|word| flag_words.iter().any(|w| w.eq_ignore_ascii_case(word))),
            "text",
        ),
        Input::Image => (false, "image"),
    };
    let mut categories = Map::new();
    let mut scores = Map::new();
    let mut applied = Map::new();
    for category in CATEGORIES {
        let hit = flagged && category == FLAGGED_CATEGORY;
        categories.insert(category.into(), Value::Bool(hit));
        scores.insert(category.into(), json!(if hit { 0.97 } else { 0.0001 }));
        applied.insert(category.into(), json!([kind]));
    }
    json!({
        "flagged": flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    })
}
