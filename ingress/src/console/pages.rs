//! The console's pages. Each reads what it shows at request time: the analytics views, this
//! replica's budget ledger and key store, the batch store, the brokers. Nothing is cached.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use sluice_schemas::now_ms;

use super::data::{AuditFilter, By, Period};
use super::html::{bar_chart, page, pct, problem, usd};
use super::{Console, Viewer};

type Params = Query<HashMap<String, String>>;

/// The query parameters a page knows; another one is a 400.
fn known(params: &HashMap<String, String>, names: &[&str]) -> Result<(), String> {
    match params.keys().find(|k| !names.contains(&k.as_str())) {
        Some(unknown) => Err(format!("Unknown parameter `{unknown}`.")),
        None => Ok(()),
    }
}

fn period_of(params: &HashMap<String, String>) -> Result<Period, String> {
    Period::parse(params.get("period").map(String::as_str))
        .ok_or_else(|| "`period` is one of 24h, 7d, 30d.".to_string())
}

/// A filter value: at most 128 characters, or the page refuses it.
fn filter_of(params: &HashMap<String, String>, name: &str) -> Result<String, String> {
    let value = params.get(name).map(|v| v.trim()).unwrap_or_default();
    if value.chars().count() > 128 {
        return Err(format!("`{name}` is at most 128 characters."));
    }
    Ok(value.to_string())
}

impl Console {
    /// A 200 page, or the page's problem with its status.
    pub(super) fn render(
        &self,
        viewer: &Viewer,
        path: &str,
        title: &str,
        body: Result<Markup, (StatusCode, String)>,
    ) -> Response {
        let (status, body) = match body {
            Ok(body) => (StatusCode::OK, body),
            Err((status, message)) => (status, problem(&message)),
        };
        let markup = page(path, title, viewer.session.role, &viewer.session.csrf, body);
        (status, axum::response::Html(markup.into_string())).into_response()
    }
}

fn bad(message: String) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, message)
}

fn store_down(error: impl std::fmt::Display) -> (StatusCode, String) {
    tracing::warn!(%error, "console: a read failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("The analytics store did not answer: {error}"),
    )
}

/// A period picker (GET form) with the page's other parameters kept.
fn period_form(action: &str, period: Period, extra: Markup) -> Markup {
    html! {
        form.filters method="get" action=(action) {
            label { "Period"
                select name="period" {
                    @for p in Period::ALL {
                        option value=(p.as_str()) selected[p == period] { (p.label()) }
                    }
                }
            }
            (extra)
            button type="submit" { "Show" }
        }
    }
}

/// `/console`: spend per team, key, model or provider over a period; top keys and models.
pub(super) async fn spend(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Params,
) -> Response {
    let body = async {
        known(&q, &["period", "by", "only"]).map_err(bad)?;
        let period = period_of(&q).map_err(bad)?;
        let by = By::parse(q.get("by").map(String::as_str))
            .ok_or_else(|| bad("`by` is one of team, key, model, provider.".into()))?;
        let only = filter_of(&q, "only").map_err(bad)?;
        let only = (!only.is_empty()).then_some(only);
        let (rows, series, keys, models) = tokio::try_join!(
            c.data.spend(period, by, 50),
            c.data.series(period, by, only.as_deref()),
            c.data.spend(period, By::Key, 5),
            c.data.spend(period, By::Model, 5),
        )
        .map_err(store_down)?;
        let by_bucket: HashMap<&str, i64> =
            series.iter().map(|b| (b.bucket.as_str(), b.cost)).collect();
        let bars: Vec<(String, i64)> = period
            .buckets(time::OffsetDateTime::now_utc())
            .into_iter()
            .map(|b| {
                let v = by_bucket.get(b.as_str()).copied().unwrap_or(0);
                (b, v)
            })
            .collect();
        let total: i64 = rows.iter().map(|r| r.cost).sum();
        let chart_name = match &only {
            Some(name) => format!("Spend of {} {name}, {}", by.as_str(), period.label()),
            None => format!("Spend, all {}s, {}", by.as_str(), period.label()),
        };
        Ok(html! {
            (period_form("/console", period, html! {
                label { "Group by"
                    select name="by" {
                        @for b in By::ALL {
                            option value=(b.as_str()) selected[b == by] { (b.as_str()) }
                        }
                    }
                }
            }))
            h2 { (chart_name) }
            (bar_chart(&chart_name, &bars))
            @if only.is_some() {
                p { a href=(format!("/console?period={}&by={}", period.as_str(), by.as_str())) { "Show every " (by.as_str()) } }
            }
            table #spend {
                caption { "Spend by " (by.as_str()) ", " (period.label()) " (UTC), from the spend_by_" (by.as_str()) " views" }
                thead { tr {
                    th scope="col" { (by.as_str()) }
                    @if let Some(detail) = by.detail() { th scope="col" { (detail) } }
                    th.num scope="col" { "requests" }
                    th.num scope="col" { "prompt tokens" }
                    th.num scope="col" { "completion tokens" }
                    th.num scope="col" { "cost (USD)" }
                } }
                tbody {
                    @for r in &rows {
                        tr data-name=(r.name) {
                            th scope="row" { a href=(format!("/console?period={}&by={}&only={}", period.as_str(), by.as_str(), urlencode(&r.name))) { (r.name) } }
                            @if by.detail().is_some() { td { (r.detail) } }
                            td.num { (r.req) }
                            td.num { (r.prompt) }
                            td.num { (r.completion) }
                            td.num.cost { (usd(r.cost)) }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="6" { "No spend in this period." } } }
                }
                tfoot { tr { th scope="row" { "total" } @if by.detail().is_some() { td {} } td {} td {} td {} td.num.cost #total { (usd(total)) } } }
            }
            h2 { "Top keys by cost" }
            (top_table("Top keys", "key", &keys))
            h2 { "Top models by cost" }
            (top_table("Top models", "model", &models))
        })
    }
    .await;
    c.render(&viewer, "/console", "Spend", body)
}

fn top_table(caption: &str, what: &str, rows: &[super::data::SpendRow]) -> Markup {
    html! {
        table {
            caption { (caption) }
            thead { tr { th scope="col" { (what) } th scope="col" { @if what == "key" { "team" } @else { "provider" } } th.num scope="col" { "requests" } th.num scope="col" { "cost (USD)" } } }
            tbody {
                @for r in rows { tr { th scope="row" { (r.name) } td { (r.detail) } td.num { (r.req) } td.num { (usd(r.cost)) } } }
                @if rows.is_empty() { tr { td colspan="4" { "None in this period." } } }
            }
        }
    }
}

/// Percent-encodes a query value (`form_urlencoded`, as browsers do).
fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `/console/budgets`: each budget's period, spent, reserved and left, and the alerts.
pub(super) async fn budgets(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Params,
) -> Response {
    let body = async {
        known(&q, &[]).map_err(bad)?;
        let now = now_ms();
        let statuses = c
            .app
            .budgets
            .ledger
            .lock()
            .map(|l| l.status_all(now))
            .unwrap_or_default();
        let alerts = c.data.alerts().await;
        Ok(html! {
            table #budgets {
                caption { "Budgets in their current periods (this replica's ledger: spend from the usage log, reservations in flight)" }
                thead { tr {
                    th scope="col" { "scope" } th scope="col" { "subject" } th scope="col" { "period" }
                    th.num scope="col" { "limit" } th.num scope="col" { "spent" } th.num scope="col" { "reserved" }
                    th.num scope="col" { "remaining" } th.num scope="col" { "used" } th scope="col" { "alerts at" } th scope="col" { "state" }
                } }
                tbody {
                    @for s in &statuses {
                        @let used = s.spent_nanos + s.reserved_nanos;
                        @let crossed: Vec<i32> = s.thresholds_pct.iter().copied().filter(|t| i128::from(s.spent_nanos) * 100 >= i128::from(*t) * i128::from(s.limit_nanos)).collect();
                        tr data-name=(format!("{}:{}", s.scope.as_str(), s.subject)) {
                            td { (s.scope.as_str()) } th scope="row" { (s.subject) } td { (s.period.as_str()) }
                            td.num { (usd(s.limit_nanos)) } td.num { (usd(s.spent_nanos)) } td.num { (usd(s.reserved_nanos)) }
                            td.num { (usd((s.limit_nanos - used).max(0))) }
                            td.num { (pct(s.spent_nanos.max(0) as u64, s.limit_nanos.max(0) as u64)) }
                            td { @for (i, t) in s.thresholds_pct.iter().enumerate() { @if i > 0 { ", " } (t) "%" } }
                            td.state {
                                @if s.spent_nanos >= s.limit_nanos { span.alert { "exhausted: requests are refused" } }
                                @else if let Some(top) = crossed.last() { span.alert { "alert: past " (top) "%" } }
                                @else { span.ok { "ok" } }
                            }
                        }
                    }
                    @if statuses.is_empty() { tr { td colspan="10" { "No budgets configured ([[budgets]])." } } }
                }
            }
            h2 { "Recent budget alerts" }
            @match &alerts {
                Ok(alerts) => {
                    table #alerts {
                        caption { "From budget_alerts (each alert once per budget, period and threshold)" }
                        thead { tr { th scope="col" { "when (UTC)" } th scope="col" { "budget" } th scope="col" { "period" } th.num scope="col" { "threshold" } th.num scope="col" { "spent" } th.num scope="col" { "limit" } } }
                        tbody {
                            @for a in alerts {
                                tr { td { (a.at) } th scope="row" { (a.scope) ":" (a.subject) } td { (a.period) } td.num { (a.pct) "%" } td.num { (usd(a.spent)) } td.num { (usd(a.cap)) } }
                            }
                            @if alerts.is_empty() { tr { td colspan="6" { "No alerts yet." } } }
                        }
                    }
                }
                Err(error) => { (problem(&format!("The analytics store did not answer: {error}"))) }
            }
        })
    }
    .await;
    c.render(&viewer, "/console/budgets", "Budgets", body)
}

/// `/console/latency`: latency per model and deployment, outcomes per model.
pub(super) async fn latency(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Params,
) -> Response {
    let body = async {
        known(&q, &["period"]).map_err(bad)?;
        let period = period_of(&q).map_err(bad)?;
        let (latency, errors, attempts) = tokio::try_join!(
            c.data.latency(period),
            c.data.errors(period),
            c.data.attempts(period)
        )
        .map_err(store_down)?;
        Ok(html! {
            (period_form("/console/latency", period, html! {}))
            h2 { "Error and throttle rates per model" }
            table #errors {
                caption { "From error_rates_by_team_model_hour: failed + expired over all requests, refusals included" }
                thead { tr { th scope="col" { "model" } th.num scope="col" { "requests" } th.num scope="col" { "failed" } th.num scope="col" { "expired" } th.num scope="col" { "refused" } th.num scope="col" { "throttled" } th.num scope="col" { "error rate" } th.num scope="col" { "throttle rate" } } }
                tbody {
                    @for e in &errors {
                        tr data-name=(e.model) { th scope="row" { @if e.model.is_empty() { "(refused before a model was read)" } @else { (e.model) } } td.num { (e.n) } td.num { (e.f) } td.num { (e.e) } td.num { (e.r) } td.num { (e.t) } td.num { (pct(e.f + e.e, e.n)) } td.num { (pct(e.t, e.n)) } }
                    }
                    @if errors.is_empty() { tr { td colspan="8" { "No requests in this period." } } }
                }
            }
            h2 { "Provider attempts per deployment" }
            table #attempts {
                caption { "From the attempts log: every call a worker made; an error was retried, fell back, or failed the request" }
                thead { tr { th scope="col" { "model" } th scope="col" { "deployment" } th.num scope="col" { "attempts" } th.num scope="col" { "answered" } th.num scope="col" { "errors" } th.num scope="col" { "error rate" } } }
                tbody {
                    @for a in &attempts {
                        tr data-name=(a.deployment) { td { (a.model) } th scope="row" { (a.deployment) } td.num { (a.n) } td.num { (a.ok) } td.num { (a.bad) } td.num.rate { (pct(a.bad, a.n)) } }
                    }
                    @if attempts.is_empty() { tr { td colspan="6" { "No provider calls in this period." } } }
                }
            }
            h2 { "Latency per deployment (completed requests, accepted to result)" }
            table #latency {
                caption { "From latency_by_deployment_hour, newest hour first" }
                thead { tr { th scope="col" { "hour (UTC)" } th scope="col" { "model" } th scope="col" { "deployment" } th.num scope="col" { "requests" } th.num scope="col" { "p50 ms" } th.num scope="col" { "p90 ms" } th.num scope="col" { "p99 ms" } th.num scope="col" { "max ms" } } }
                tbody {
                    @for l in &latency {
                        tr { td { (l.h) } td { (l.model) } th scope="row" { (l.deployment) } td.num { (l.n) } td.num { (format!("{:.0}", l.p50)) } td.num { (format!("{:.0}", l.p90)) } td.num { (format!("{:.0}", l.p99)) } td.num { (format!("{:.0}", l.top)) } }
                    }
                    @if latency.is_empty() { tr { td colspan="8" { "No completed requests in this period." } } }
                }
            }
        })
    }
    .await;
    c.render(&viewer, "/console/latency", "Latency & errors", body)
}

/// `/console/backlog`: records the workers have not yet committed, per class and topic.
pub(super) async fn backlog(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Params,
) -> Response {
    let body = async {
        known(&q, &[]).map_err(bad)?;
        let Some(reader) = c.backlog.clone() else {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "No Kafka client for the backlog.".to_string()));
        };
        let rows = tokio::task::spawn_blocking(move || reader.read())
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("Kafka did not answer: {e}")))?;
        Ok(html! {
            table #classes {
                caption { "Per class: records on its request topics not yet committed by the workers' group " (c.app.config.console.worker_group_id) "-<class>" }
                thead { tr { th scope="col" { "class" } th.num scope="col" { "topics" } th.num scope="col" { "backlog (records)" } } }
                tbody {
                    @for class in sluice_schemas::Priority::ALL {
                        @let of: Vec<_> = rows.iter().filter(|r| r.class == class).collect();
                        tr data-name=(class.as_str()) { th scope="row" { (class.as_str()) } td.num { (of.len()) } td.num.records { (of.iter().map(|r| r.records).sum::<i64>()) } }
                    }
                }
            }
            table #topics {
                caption { "Per topic" }
                thead { tr { th scope="col" { "topic" } th scope="col" { "class" } th.num scope="col" { "partitions" } th.num scope="col" { "backlog (records)" } } }
                tbody {
                    @for r in &rows { tr { th scope="row" { (r.topic) } td { (r.class.as_str()) } td.num { (r.partitions) } td.num { (r.records) } } }
                }
            }
            p.note { "Read from the brokers when this page was served (reload to refresh)." }
        })
    }
    .await;
    c.render(&viewer, "/console/backlog", "Backlog", body)
}

/// `/console/batches`: the newest batches of every team, with their progress.
pub(super) async fn batches(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Params,
) -> Response {
    let body = async {
        known(&q, &[]).map_err(bad)?;
        let rows = c.app.batches_store.recent(25).await.map_err(store_down)?;
        let mut views = Vec::with_capacity(rows.len());
        for row in &rows {
            let view = crate::batch::batches::view(&*c.app, row)
                .await
                .map_err(store_down)?;
            views.push(view);
        }
        Ok(html! {
            table #batches {
                caption { "The 25 newest batches, all teams" }
                thead { tr { th scope="col" { "batch" } th scope="col" { "team" } th scope="col" { "API" } th scope="col" { "status" } th.num scope="col" { "lines" } th.num scope="col" { "published" } th.num scope="col" { "succeeded" } th.num scope="col" { "failed" } th.num scope="col" { "expired" } th.num scope="col" { "cancelled" } th scope="col" { "progress" } } }
                tbody {
                    @for (row, view) in rows.iter().zip(&views) {
                        @let done = view.progress.results() + view.progress.invalid + view.progress.unstarted;
                        tr data-name=(row.batch_id) {
                            th scope="row" { (row.batch_id) } td { (row.team) } td { (row.dialect) } td { (view.status) }
                            td.num { (row.total_lines) } td.num { (view.progress.published) } td.num { (view.progress.succeeded) }
                            td.num { (view.progress.failed) } td.num { (view.progress.expired) } td.num { (view.progress.cancelled) }
                            td { progress max=(row.total_lines.max(1)) value=(done.min(row.total_lines)) aria-label=(format!("{} of {} lines", done, row.total_lines)) {} " " (pct(done, row.total_lines)) }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="11" { "No batches." } } }
                }
            }
        })
    }
    .await;
    c.render(&viewer, "/console/batches", "Batches", body)
}

/// The audit actions a filter may pick.
const ACTIONS: &[&str] = &[
    "accepted",
    "rejected",
    "completed",
    "failed",
    "expired",
    "cancelled",
];

/// `/console/audit`: the audit trail with filters. Content is never shown here: the trail
/// holds digests, and a team's kept text (its content policy) stays in the private store.
pub(super) async fn audit(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Params,
) -> Response {
    let body = async {
        known(&q, &["period", "team", "action", "key", "request"]).map_err(bad)?;
        let filter = AuditFilter {
            period: period_of(&q).map_err(bad)?,
            team: filter_of(&q, "team").map_err(bad)?,
            action: filter_of(&q, "action").map_err(bad)?,
            key: filter_of(&q, "key").map_err(bad)?,
            request: filter_of(&q, "request").map_err(bad)?,
        };
        if !filter.action.is_empty() && !ACTIONS.contains(&filter.action.as_str()) {
            return Err(bad(format!("`action` is one of {}.", ACTIONS.join(", "))));
        }
        let rows = c.data.audit(&filter).await.map_err(store_down)?;
        Ok(html! {
            (period_form("/console/audit", filter.period, html! {
                label { "Team" input type="text" name="team" value=(filter.team) maxlength="128"; }
                label { "Action"
                    select name="action" {
                        option value="" selected[filter.action.is_empty()] { "any" }
                        @for a in ACTIONS { option value=(a) selected[filter.action == *a] { (a) } }
                    }
                }
                label { "Key id" input type="text" name="key" value=(filter.key) maxlength="128"; }
                label { "Request id" input type="text" name="request" value=(filter.request) maxlength="128"; }
            }))
            table #audit {
                caption { "From audit_trail, newest first (at most 200)" }
                thead { tr { th scope="col" { "when (UTC)" } th scope="col" { "request" } th scope="col" { "team" } th scope="col" { "key" } th scope="col" { "action" } th scope="col" { "model" } th.num scope="col" { "HTTP" } th scope="col" { "reason" } th scope="col" { "policy" } th scope="col" { "deployment" } th.num scope="col" { "cost" } } }
                tbody {
                    @for r in &rows {
                        tr { td { (r.at) } th scope="row" { (r.request_id) } td { (r.team) } td { (r.key_id) } td { (r.action) } td { (r.model) } td.num { @if r.code > 0 { (r.code) } } td { (r.reason) } td { (r.policy) } td { (r.provider) " " (r.deployment) } td.num { @if r.cost != 0 { (usd(r.cost)) } } }
                    }
                    @if rows.is_empty() { tr { td colspan="11" { "No events match." } } }
                }
            }
        })
    }
    .await;
    c.render(&viewer, "/console/audit", "Audit", body)
}
