//! `/console/keys`: every API key (never a secret, only its hint); with the admin login,
//! create, rotate and revoke, through the same code as `/admin/keys` (written to the keys
//! topic before the page answers).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde_json::{Map, Value};

use super::html::csrf_field;
use super::session::{change_allowed, Role};
use super::{Console, Viewer};
use crate::keys::auth::{KeySource, StoredKey};
use crate::keys::Admin;

/// What a change left to show: a message, and a new secret (shown this once).
struct Outcome {
    message: String,
    secret: Option<(String, String)>,
}

fn admin(c: &Console) -> Admin<'_> {
    Admin {
        config: &c.app.config,
        keys: &c.app.keys,
        log: c.app.key_log.as_ref(),
        producer: &c.app.producer,
    }
}

fn list(c: &Console, viewer: &Viewer, team: &str, outcome: Option<&Outcome>) -> Markup {
    let keys: Vec<StoredKey> = c
        .app
        .keys
        .list((!team.is_empty()).then_some(team))
        .into_iter()
        .take(500)
        .collect();
    let admin = viewer.session.role == Role::Admin;
    let csrf = viewer.session.csrf.as_str();
    html! {
        @if let Some(outcome) = outcome {
            p.ok role="status" { (outcome.message) }
            @if let Some((id, secret)) = &outcome.secret {
                p { "The new secret of " (id) ", shown only now:" }
                p { code.secret #secret { (secret) } }
            }
        }
        @if admin {
            h2 { "Create a key" }
            form.filters method="post" action="/console/keys" {
                (csrf_field(csrf))
                label { "Team" input type="text" name="team" required maxlength="64" pattern="[A-Za-z0-9_-]+"; }
                label { "Label" input type="text" name="label" maxlength="256"; }
                button type="submit" { "Create key" }
            }
        } @else {
            p.note { "This login only reads: log in with the admin key to create, rotate or revoke keys." }
        }
        form.filters method="get" action="/console/keys" {
            label { "Team" input type="text" name="team" value=(team) maxlength="64"; }
            button.secondary type="submit" { "Filter" }
        }
        table #keys {
            caption { "API keys (at most 500 shown)" }
            thead { tr { th scope="col" { "key id" } th scope="col" { "team" } th scope="col" { "label" } th scope="col" { "secret" } th scope="col" { "source" } th scope="col" { "created (UTC)" } th scope="col" { "expires (UTC)" } th scope="col" { "state" } @if admin { th scope="col" { "actions" } } } }
            tbody {
                @for k in &keys {
                    @let r = &k.record;
                    tr data-name=(r.key_id) {
                        th scope="row" { (r.key_id) } td { (r.team) } td { (r.label.as_deref().unwrap_or("")) } td { code { (r.hint) } }
                        td { @if k.source == KeySource::Config { "config" } @else { "admin API" } }
                        td { (crate::budget::format_utc(r.created_at_ms)) } td { @if let Some(e) = r.expires_at_ms { (crate::budget::format_utc(e)) } }
                        td.state { @if r.revoked { "revoked" } @else if k.expired(sluice_schemas::now_ms()) { "expired" } @else { "active" } }
                        @if admin {
                            td {
                                @if k.source == KeySource::Admin && !r.revoked {
                                    form.inline method="post" action=(format!("/console/keys/{}/rotate", r.key_id)) {
                                        (csrf_field(csrf))
                                        button.secondary type="submit" aria-label=(format!("Rotate {}", r.key_id)) { "Rotate" }
                                    }
                                    " "
                                    form.inline method="post" action=(format!("/console/keys/{}/revoke", r.key_id)) {
                                        (csrf_field(csrf))
                                        button.danger type="submit" aria-label=(format!("Revoke {}", r.key_id)) { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
                @if keys.is_empty() { tr { td colspan="9" { "No keys." } } }
            }
        }
    }
}

/// `GET /console/keys[?team=]`.
pub(super) async fn page(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let team = q.get("team").cloned().unwrap_or_default();
    let body = if let Some(unknown) = q.keys().find(|k| *k != "team") {
        Err((
            StatusCode::BAD_REQUEST,
            format!("Unknown parameter `{unknown}`."),
        ))
    } else if team.len() > 64 {
        Err((
            StatusCode::BAD_REQUEST,
            "`team` is at most 64 characters.".into(),
        ))
    } else {
        Ok(list(&c, &viewer, &team, None))
    };
    c.render(&viewer, "/console/keys", "Keys", body)
}

/// A change's checks: an admin login, the session's CSRF token, this site's origin.
fn may_change(
    viewer: &Viewer,
    form: &Result<Form<HashMap<String, String>>, FormRejection>,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, String)> {
    let Ok(Form(form)) = form else {
        return Err((
            StatusCode::BAD_REQUEST,
            "The form could not be read.".into(),
        ));
    };
    let token = form.get("csrf").map(String::as_str).unwrap_or_default();
    if !change_allowed(&viewer.session, token, headers) {
        return Err((
            StatusCode::FORBIDDEN,
            "This change did not come from a console page of this session (CSRF check); reload the page and try again.".into(),
        ));
    }
    if viewer.session.role != Role::Admin {
        return Err((
            StatusCode::FORBIDDEN,
            "This login only reads: changes need the admin key.".into(),
        ));
    }
    Ok(())
}

async fn change(
    c: &Console,
    viewer: &Viewer,
    headers: &HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
    act: impl AsyncFnOnce(
        &Admin<'_>,
        HashMap<String, String>,
    ) -> Result<Outcome, crate::error::ApiError>,
) -> Response {
    let body = match may_change(viewer, &form, headers) {
        Err(refused) => Err(refused),
        Ok(()) => {
            let fields = form.map(|Form(f)| f).unwrap_or_default();
            match act(&admin(c), fields).await {
                Ok(outcome) => Ok(list(c, viewer, "", Some(&outcome))),
                Err(error) => Err((error.status(), error.to_string())),
            }
        }
    };
    c.render(viewer, "/console/keys", "Keys", body)
}

/// `POST /console/keys`: a new key (team, label).
pub(super) async fn create(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    change(&c, &viewer, &headers, form, async |admin, fields| {
        let mut map = Map::new();
        for name in ["team", "label"] {
            if let Some(v) = fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
                map.insert(name.into(), Value::String(v.to_string()));
            }
        }
        let (key, secret) = admin.create_key(&map).await?;
        Ok(Outcome {
            message: format!(
                "Created {} for team {}.",
                key.record.key_id, key.record.team
            ),
            secret: Some((key.record.key_id, secret)),
        })
    })
    .await
}

/// `POST /console/keys/{id}/rotate`.
pub(super) async fn rotate(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    change(&c, &viewer, &headers, form, async |admin, _| {
        let (key, secret) = admin.rotate_key(&id).await?;
        Ok(Outcome {
            message: format!(
                "Rotated {}: its old secret no longer works.",
                key.record.key_id
            ),
            secret: Some((key.record.key_id, secret)),
        })
    })
    .await
}

/// `POST /console/keys/{id}/revoke`.
pub(super) async fn revoke(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    change(&c, &viewer, &headers, form, async |admin, _| {
        let key = admin.revoke_key(&id).await?;
        Ok(Outcome {
            message: format!("Revoked {}.", key.record.key_id),
            secret: None,
        })
    })
    .await
}
