//! The operators' web console (docs/console.md): spend, budgets, latency and errors, the
//! backlog, batches, the audit trail and API keys, as server-rendered pages on a listener of
//! its own (`[console] listen`), never the tenants'.
//!
//! Who gets in: the console key (read-only) or the admin key (also changes keys); see
//! [`session`]. Pages read the analytics views with `[console]`'s ClickHouse user (the
//! analysts' read-only one in a deployment), and this replica's ledger, key store and
//! batch store.

mod backlog;
mod data;
mod html;
mod keys;
mod pages;
mod session;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;
use session::{Session, Sessions};

/// The console's state.
pub(crate) struct Console {
    app: Arc<AppState>,
    data: data::Data,
    sessions: Sessions,
    backlog: Option<Arc<backlog::Backlog>>,
    /// Login attempts, all callers together: a guesser gets 5 a second.
    logins: DefaultDirectRateLimiter,
}

/// A logged-in caller (else the page redirects to the login).
pub(crate) struct Viewer {
    id: String,
    session: Session,
}

impl FromRequestParts<Arc<Console>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        match c.sessions.find(&parts.headers) {
            Some((id, session)) => Ok(Viewer { id, session }),
            None => Err(Redirect::to("/console/login").into_response()),
        }
    }
}

/// Serves the console on `[console] listen` until `shutdown`; its address, or none when it
/// is off.
pub(crate) async fn start(
    app: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<Option<SocketAddr>, crate::StartError> {
    let Some(listen) = app.config.console.listen.clone() else {
        return Ok(None);
    };
    let listener =
        TcpListener::bind(&listen)
            .await
            .map_err(|source| crate::StartError::Listen {
                addr: listen.clone(),
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| crate::StartError::Listen {
            addr: listen,
            source,
        })?;
    let console = Arc::new(Console::new(app));
    let router = router(console);
    tokio::spawn(async move {
        let serving = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(error) = serving.await {
            tracing::warn!(%error, "console listener stopped");
        }
    });
    tracing::info!(%addr, "console listening (/console)");
    Ok(Some(addr))
}

impl Console {
    fn new(app: Arc<AppState>) -> Console {
        let config = &app.config;
        let ch = &config.clickhouse;
        let (user, password) = match &config.console.clickhouse_user {
            Some(user) => (Some(user), config.console.clickhouse_password.as_ref()),
            None => (ch.user.as_ref(), ch.password.as_ref()),
        };
        // Bound to the analytics database (the analysts' user may not use the private one).
        let client = ch.client_for(
            &ch.database,
            user.map(String::as_str),
            password.map(String::as_str),
        );
        let data = data::Data::new(client, ch.database.clone());
        let backlog = match backlog::Backlog::new(config) {
            Ok(b) => Some(Arc::new(b)),
            Err(error) => {
                tracing::warn!(%error, "console: no Kafka client for the backlog page");
                None
            }
        };
        Console {
            sessions: Sessions::new(config),
            data,
            backlog,
            logins: governor::RateLimiter::direct(
                Quota::per_second(NonZeroU32::MIN.saturating_add(4))
                    .allow_burst(NonZeroU32::MIN.saturating_add(9)),
            ),
            app,
        }
    }
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(pages::spend))
        .route("/console/budgets", get(pages::budgets))
        .route("/console/latency", get(pages::latency))
        .route("/console/backlog", get(pages::backlog))
        .route("/console/batches", get(pages::batches))
        .route("/console/audit", get(pages::audit))
        .route("/console/keys", get(keys::page).post(keys::create))
        .route("/console/keys/{id}/rotate", post(keys::rotate))
        .route("/console/keys/{id}/revoke", post(keys::revoke))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/style.css", get(style))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not found") })
        // A login or a key form is a few hundred bytes.
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(axum::middleware::from_fn(headers))
        .with_state(console)
}

/// Every answer: no caching, no framing, no script, no sniffing, no referrer to elsewhere.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: with it a browser sends `Origin: null` on the console's own forms,
        // which the CSRF check refuses.
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::STYLE,
    )
        .into_response()
}

fn login_answer(status: StatusCode, problem: Option<&str>) -> Response {
    (status, Html(html::login(problem).into_string())).into_response()
}

async fn login_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.sessions.find(&headers).is_some() {
        return Redirect::to("/console").into_response();
    }
    login_answer(StatusCode::OK, None)
}

/// `POST /console/login`: the key in the form; a session cookie and the spend page.
async fn login(
    State(c): State<Arc<Console>>,
    form: Result<Form<std::collections::HashMap<String, String>>, FormRejection>,
) -> Response {
    if c.logins.check().is_err() {
        return login_answer(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many login attempts: wait a second and try again."),
        );
    }
    let Ok(Form(form)) = form else {
        return login_answer(StatusCode::BAD_REQUEST, Some("The form could not be read."));
    };
    let key = form.get("key").map(String::as_str).unwrap_or_default();
    let role = (key.len() <= 512)
        .then(|| session::role_of(&c.app.config, key))
        .flatten();
    let Some(role) = role else {
        tracing::warn!(
            "console: a login with a key that is neither the console key nor the admin key"
        );
        return login_answer(
            StatusCode::UNAUTHORIZED,
            Some("That is neither the console key nor the admin key."),
        );
    };
    let Some(cookie) = c.sessions.open(role) else {
        return login_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("No session could be made."),
        );
    };
    tracing::info!(role = role.as_str(), "console: login");
    let mut response = Redirect::to("/console").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /console/logout` (with the session's CSRF token).
async fn logout(
    State(c): State<Arc<Console>>,
    viewer: Viewer,
    headers: HeaderMap,
    form: Result<Form<std::collections::HashMap<String, String>>, FormRejection>,
) -> Response {
    let token = form
        .as_ref()
        .ok()
        .and_then(|Form(f)| f.get("csrf").cloned())
        .unwrap_or_default();
    if !session::change_allowed(&viewer.session, &token, &headers) {
        return c.render(
            &viewer,
            "/console",
            "Log out",
            Err((
                StatusCode::FORBIDDEN,
                "CSRF check failed: reload the page and try again.".into(),
            )),
        );
    }
    c.sessions.close(&viewer.id);
    let mut response = Redirect::to("/console/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&c.sessions.cleared()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
