//! Validation of `POST /v1/embeddings` (and of embeddings batch lines): OpenAI's request
//! shape, the same checks as a chat request (model, key, class and timeout, guardrails on
//! the input, size), input tokens counted with the model's tokenizer. Only input is billed:
//! the record's `max_tokens` is 0.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use serde_json::{Map, Value};
use sluice_schemas::embeddings::{
    EmbeddingsRequest, EncodingFormat, Input, Unreadable, EMBEDDINGS, ENDPOINT_ATTRIBUTE,
};

use super::validate::{body_of, cache_plan, schedule, seal, Accepted, Draft, Mode, SluiceOptions};
use super::Handles;
use crate::cache::EMBEDDINGS as EMBEDDINGS_FAMILY;
use crate::error::ApiError;
use crate::keys::Caller;

/// Bytes per vector value in an answer: JSON floats as providers print them (about 20
/// characters with the comma: a 1536-dimension vector is ~30 KB), or base64 of `f32`s
/// (4 bytes as 5.33 characters).
const FLOAT_VALUE_BYTES: u64 = 20;
const BASE64_VALUE_BYTES: u64 = 6;
/// Each vector's object (`{"object":"embedding","index":N,"embedding":...}`).
const VECTOR_BYTES: u64 = 100;
/// The vector length assumed for a model whose default is known neither to its
/// `[[models]]` entry nor to the catalogue: the largest of current models.
const UNKNOWN_DIMENSIONS: u32 = 3072;

/// Refuses a request whose answer could not travel back as one Kafka record: a provider
/// would bill it and the caller would get 502 `result_too_large` instead of vectors.
fn bound_answer(app: &impl Handles, request: &EmbeddingsRequest) -> Result<(), ApiError> {
    let dimensions = request
        .dimensions
        .or_else(|| {
            let models = &app.config().models;
            models.iter().find(|m| m.id == request.model)?.dimensions
        })
        .or_else(|| sluice_schemas::pricing::Catalogue::builtin().dimensions(&request.model))
        .unwrap_or(UNKNOWN_DIMENSIONS);
    let per_value = match request.encoding_format {
        Some(EncodingFormat::Base64) => BASE64_VALUE_BYTES,
        Some(EncodingFormat::Float) | None => FLOAT_VALUE_BYTES,
    };
    let answer = request.input.len() as u64 * (u64::from(dimensions) * per_value + VECTOR_BYTES);
    if answer > app.config().kafka.max_message_bytes as u64 {
        return Err(ApiError::InvalidParam {
            param: "input",
            problem: "the answer (inputs x dimensions) would be larger than one Kafka record carries ([kafka] max_message_bytes); send fewer inputs, ask for fewer dimensions, or use encoding_format \"base64\" (about 3x smaller)",
        });
    }
    Ok(())
}

pub(super) fn validate(
    app: &impl Handles,
    caller: &Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    mode: Mode,
) -> Result<Accepted, ApiError> {
    let body = body_of(app, body)?;
    let mut fields: Map<String, Value> =
        serde_json::from_slice(&body).map_err(ApiError::InvalidJson)?;
    let options = SluiceOptions::take(&mut fields)?;
    if options.template.is_some() || options.variables.is_some() || options.restore.is_some() {
        return Err(ApiError::InvalidParam {
            param: "sluice",
            problem: "embeddings take priority, timeout_ms, attributes, route and (async) webhook_url; templates and restore are for chat",
        });
    }
    options.check_webhook(app, caller, mode)?;
    let mut request = EmbeddingsRequest::from_fields(fields).map_err(|e| match e {
        Unreadable::Field(e) => ApiError::InvalidParam {
            param: e.param,
            problem: e.problem,
        },
        Unreadable::Json(e) => ApiError::InvalidJson(e),
    })?;
    request.check().map_err(|e| ApiError::InvalidParam {
        param: e.param,
        problem: e.problem,
    })?;
    let tokenizer = *app
        .models()
        .get(&request.model)
        .ok_or_else(|| ApiError::UnknownModel(request.model.clone()))?;
    app.keys().check_model(caller, &request.model)?;
    bound_answer(app, &request)?;
    let (priority, timeout) = schedule(
        app,
        headers,
        options.priority.as_deref(),
        options.timeout_ms,
    )?;
    let guard = app.guard();
    let (prepared, prompt_tokens) = match &mut request.input {
        Input::Text(text) => {
            let prepared = guard.prepare_texts(&caller.team, std::slice::from_mut(text))?;
            (prepared, tokenizer.count(text))
        }
        Input::Texts(texts) => {
            let prepared = guard.prepare_texts(&caller.team, texts)?;
            (prepared, texts.iter().map(|t| tokenizer.count(t)).sum())
        }
        Input::Tokens(tokens) => (guard.prepare_tokens(&caller.team)?, tokens.len()),
        Input::TokenArrays(arrays) => (
            guard.prepare_tokens(&caller.team)?,
            arrays.iter().map(Vec::len).sum(),
        ),
    };
    let mut attributes = options.attributes;
    attributes.insert(ENDPOINT_ATTRIBUTE.to_string(), EMBEDDINGS.to_string());
    SluiceOptions::route_into(options.route, &mut attributes)?;
    let prompt_audit = crate::audit::PromptAudit::of(
        app.config().audit.content_for(&caller.team),
        &request.input,
        &prepared.decisions,
        &mut attributes,
    );
    let body = serde_json::to_string(&request).map_err(ApiError::InvalidJson)?;
    let cache = cache_plan(
        options.cache,
        app,
        caller,
        headers,
        mode,
        EMBEDDINGS_FAMILY,
        &body,
    )?;
    let (record, topic) = seal(
        app,
        caller,
        headers,
        mode,
        Draft {
            model: request.model,
            priority,
            timeout,
            prompt_tokens,
            max_tokens: 0,
            body,
            stream: false,
            attributes,
        },
    )?;
    Ok(Accepted {
        record,
        topic,
        policy: prepared.policy,
        restorer: None,
        moderation_input: prepared.moderation_input,
        prompt_audit,
        webhook_url: options.webhook_url,
        cache,
    })
}
