//! The routes of the Files and Batch APIs, OpenAI's and Anthropic's.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use super::{anthropic, batches, files, Handles};

/// The routes of both batch APIs, merged into the main router.
pub fn routes<S: Handles>() -> Router<Arc<S>> {
    Router::new()
        .route("/v1/files", post(files::upload::<S>))
        .route(
            "/v1/files/{id}",
            get(files::retrieve::<S>).delete(files::delete::<S>),
        )
        .route("/v1/files/{id}/content", get(files::content::<S>))
        .route(
            "/v1/batches",
            post(batches::create::<S>).get(batches::list::<S>),
        )
        .route("/v1/batches/{id}", get(batches::retrieve::<S>))
        .route("/v1/batches/{id}/cancel", post(batches::cancel::<S>))
        .route(
            "/v1/messages/batches",
            post(anthropic::create::<S>).get(anthropic::list::<S>),
        )
        .route(
            "/v1/messages/batches/{id}",
            get(anthropic::retrieve::<S>).delete(anthropic::delete::<S>),
        )
        .route(
            "/v1/messages/batches/{id}/cancel",
            post(anthropic::cancel::<S>),
        )
        .route(
            "/v1/messages/batches/{id}/results",
            get(anthropic::results::<S>),
        )
}
