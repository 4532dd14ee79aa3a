//! `GET /v1/models`: the configured models this key may use.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use sluice_schemas::openai::{Model, ModelList};

use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn models(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, ApiError> {
    let caller = app.keys.authenticate(&headers)?;
    let data = app
        .config
        .models
        .iter()
        .filter(|m| app.keys.allows_model(&caller, &m.id))
        .map(|m| Model {
            id: m.id.clone(),
            object: "model".into(),
            created: 0,
            owned_by: m.owned_by.clone(),
        })
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}
