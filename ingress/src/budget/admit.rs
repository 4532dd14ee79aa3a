//! Budget admission on the publish path, and `GET /v1/budgets`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use sluice_schemas::{encode, now_ms, AuditAction, Request, Topic};

use crate::api::audit_event;
use crate::error::ApiError;
use crate::kafka::send;
use crate::state::AppState;

impl AppState {
    /// Reserves `r`'s worst-case cost under every budget of its team and key, or refuses it
    /// with `budget_exceeded` (and a `rejected` audit event, written in the background).
    /// Every path that publishes a request calls this first; the reservation (0 when no
    /// budget applies) goes into the `accepted` audit event.
    pub(crate) fn reserve_budget(&self, r: &Request) -> Result<i64, ApiError> {
        let exceeded = match self.budgets.admit(r, now_ms()) {
            Ok(reserved) => return Ok(reserved),
            Err(exceeded) => exceeded,
        };
        let error = ApiError::BudgetExceeded(Box::new(exceeded));
        let mut audit = audit_event(
            r,
            AuditAction::Rejected,
            i32::from(error.status().as_u16()),
            Some(error.audit_reason()),
        );
        if let ApiError::BudgetExceeded(e) = &error {
            audit.policy = Some(format!(
                "budget:{}:{}:{}:exceeded",
                e.scope.as_str(),
                e.subject,
                e.period.as_str()
            ));
        }
        match encode(&audit) {
            Ok(payload) => {
                let producer = self.producer.clone();
                let topic = self.topics.name(&Topic::Audit);
                tokio::spawn(async move {
                    if let Err(error) = send(&producer, &topic, &audit.team, &payload, None).await {
                        tracing::warn!(%error, "budget rejection audit event not written");
                    }
                });
            }
            Err(error) => tracing::error!(%error, "audit event not encodable"),
        }
        Err(error)
    }
}

/// `GET /v1/budgets`: the budgets that apply to the caller's team and key, in their current
/// periods. Amounts in USD and in nano-USD (exact).
pub async fn budgets(
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
                "period_start": super::format_utc(s.period_start_ms),
                "resets_at": super::format_utc(s.resets_at_ms),
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
