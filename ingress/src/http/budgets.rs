//! `GET /v1/budgets`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use sluice_schemas::now_ms;

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /v1/budgets`: the budgets that apply to the caller's team and key, in their current
/// periods. Amounts in USD and in nano-USD (exact).
pub(super) async fn budgets(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = app.keys.authenticate(&headers)?;
    let now = now_ms();
    let statuses = app
        .budgets
        .ledger
        .lock()
        .map(|l| l.status(&caller.team, &caller.key_id, now))
        .unwrap_or_default();
    let data: Vec<Value> = statuses
        .into_iter()
        .map(|s| {
            let remaining = (s.limit_nanos - s.spent_nanos - s.reserved_nanos).max(0);
            json!({
                "object": "sluice.budget",
                "scope": s.scope.as_str(),
                "subject": s.subject,
                "period": s.period.as_str(),
                "period_start": crate::budget::format_utc(s.period_start_ms),
                "resets_at": crate::budget::format_utc(s.resets_at_ms),
                "limit_usd": s.limit_nanos as f64 / 1e9,
                "spent_usd": s.spent_nanos as f64 / 1e9,
                "reserved_usd": s.reserved_nanos as f64 / 1e9,
                "remaining_usd": remaining as f64 / 1e9,
                "limit_nanos": s.limit_nanos,
                "spent_nanos": s.spent_nanos,
                "reserved_nanos": s.reserved_nanos,
                "remaining_nanos": remaining,
                "alert_at_pct": s.thresholds_pct,
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
