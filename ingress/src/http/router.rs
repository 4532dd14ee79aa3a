//! The routes, and what answers outside them (unknown URL, wrong method, too many headers).

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_body_bytes;
    let header_limits = (
        state.config.server.max_header_count,
        state.config.server.max_header_bytes,
    );
    Router::new()
        .route("/v1/chat/completions", post(super::chat::chat_completions))
        .route("/v1/embeddings", post(super::chat::embeddings))
        .route("/v1/responses", post(super::responses::responses))
        .route("/v1/responses/{id}", get(super::responses::retrieve))
        .route("/v1/responses/{id}/cancel", post(super::responses::cancel))
        .route("/v1/messages", post(crate::http::anthropic::messages))
        .route(
            "/v1/messages/count_tokens",
            post(crate::http::anthropic::count_tokens),
        )
        .route("/v1/requests", post(super::requests::submit))
        .route("/v1/requests/{id}", get(super::requests::request_status))
        .route(
            "/v1/requests/{id}/cancel",
            post(super::requests::cancel_request),
        )
        .route("/v1/models", get(super::models::models))
        .merge(crate::batch::routes())
        .route("/v1/budgets", get(super::budgets::budgets))
        .merge(super::admin::routes())
        // Key first, then the body (bounded in time and size): only for matched routes, so
        // an unknown URL is still a 404.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::listener::intake,
        ))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let (count, bytes) = header_limits;
                async move {
                    let headers = request.headers();
                    let size: usize = headers
                        .iter()
                        .map(|(k, v)| k.as_str().len() + v.len())
                        .sum();
                    if headers.len() > count || size > bytes {
                        return ApiError::HeadersTooLarge { count, bytes }.into_response();
                    }
                    next.run(request).await
                }
            },
        ))
        .layer(axum::middleware::from_fn(crate::ops::track))
        .with_state(state)
}

async fn not_found() -> Response {
    let body = sluice_schemas::openai::ErrorBody::new(
        "invalid_request_error",
        Some("unknown_url"),
        "Unknown request URL. See the README for the endpoints Sluice serves.",
    );
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    let body = sluice_schemas::openai::ErrorBody::new(
        "invalid_request_error",
        Some("method_not_allowed"),
        "Method not allowed for this URL.",
    );
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
