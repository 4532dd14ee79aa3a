//! `GET /v1/models`: the configured models this key may use, in OpenAI's list shape, each
//! with Sluice's additions (price, context window) in its `sluice` field.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use sluice_schemas::openai::{Model, ModelExtensions, ModelList, ModelPrice};

use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn models(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, ApiError> {
    let caller = app.keys.authenticate(&headers)?;
    let prices = app.config.resolved_prices();
    let data = app
        .config
        .models
        .iter()
        .filter(|m| app.keys.allows_model(&caller, &m.id))
        .map(|m| {
            let price = prices.iter().find(|p| p.model == m.id).map(|p| ModelPrice {
                input_per_million: p.input_per_million,
                output_per_million: p.output_per_million,
                cached_input_per_million: p.cached_input_per_million,
            });
            let extensions = ModelExtensions {
                price,
                context_window: m.context_window,
            };
            Model {
                id: m.id.clone(),
                object: "model".into(),
                created: 0,
                owned_by: m.owned_by.clone(),
                sluice: (extensions != ModelExtensions::default()).then_some(extensions),
            }
        })
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}
