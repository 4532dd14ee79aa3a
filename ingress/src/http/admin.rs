//! The admin API's routes (docs/keys.md): thin shells that hand the request to
//! [`keys::Admin`], built from the app state.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use crate::error::ApiError;
use crate::keys;
use crate::state::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/keys", post(create).get(list))
        .route("/admin/keys/{id}", get(show).patch(update).delete(revoke))
        .route("/admin/keys/{id}/rotate", post(rotate))
        .route("/admin/keys/{id}/revoke", post(revoke))
        .route("/admin/replays", post(start_replay).get(list_replays))
        .route("/admin/replays/{id}", get(show_replay))
}

/// `POST /admin/replays` (docs/replay.md): checks the spec and starts it; 202 with its
/// progress so far.
async fn start_replay(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    keys::authorize_admin(&app.config, &headers)?;
    let body = body.map_err(|_| ApiError::NotJson)?;
    let spec: crate::replay::Spec = serde_json::from_slice(&body).map_err(ApiError::InvalidJson)?;
    let started = app.replays.start(spec.check(&app.config)?)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(started)).into_response())
}

async fn list_replays(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    keys::authorize_admin(&app.config, &headers)?;
    Ok(Json(
        serde_json::json!({"object": "list", "data": app.replays.list()}),
    ))
}

async fn show_replay(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::replay::Progress>, ApiError> {
    keys::authorize_admin(&app.config, &headers)?;
    app.replays
        .get(&id)
        .map(Json)
        .ok_or(ApiError::ReplayNotFound(id))
}

fn admin(app: &AppState) -> keys::Admin<'_> {
    keys::Admin {
        config: &app.config,
        keys: &app.keys,
        log: app.key_log.as_ref(),
        producer: &app.producer,
    }
}

async fn create(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    admin(&app).create(&headers, body).await
}

async fn list(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    admin(&app).list(&headers, query).await
}

async fn show(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&app).show(&headers, id).await
}

async fn rotate(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&app).rotate(&headers, id).await
}

async fn revoke(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&app).revoke(&headers, id).await
}

async fn update(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    admin(&app).update(&headers, id, body).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use serde_json::json;
    use sluice_schemas::ApiKey;

    use super::*;
    use crate::config::Config;
    use crate::keys::auth;

    const ADMIN: &str = "sk-admin-test";

    fn app(admin: Option<&str>) -> Router {
        use figment::providers::Format;
        let mut config: Config = figment::Figment::from(figment::providers::Toml::string(
            "[[models]]\nid = \"m1\"\ntokenizer = \"o200k_base\"\n",
        ))
        .extract()
        .unwrap();
        config.admin.key_sha256 = admin.map(auth::hex_digest);
        config.kafka.bootstrap = "127.0.0.1:1".into();
        let producer = crate::kafka::producer(&config.kafka).unwrap();
        let state = AppState::new(config, producer, Default::default());
        let keys = state.keys.clone();
        keys.apply(
            ApiKey {
                key_id: "key_1".into(),
                team: "acme".into(),
                label: Some("app".into()),
                sha256: auth::hex_digest("sk-sluice-one"),
                hint: auth::hint("sk-sluice-one"),
                allowed_models: vec![],
                requests_per_minute: None,
                expires_at_ms: None,
                revoked: false,
                created_at_ms: 1000,
                updated_at_ms: 1000,
            },
            0,
        );
        crate::http::router(Arc::new(state))
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn without_an_admin_key_the_admin_api_is_off() {
        let app = app(None);
        let (status, body) = call(&app, "GET", "/admin/keys", Some(ADMIN), "").await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "admin_api_disabled");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key_sha256"));
    }

    #[tokio::test]
    async fn admin_key_is_required_and_checked() {
        let app = app(Some(ADMIN));
        for key in [None, Some("sk-wrong"), Some("sk-sluice-one")] {
            let (status, body) = call(&app, "GET", "/admin/keys", key, "").await;
            assert_eq!(status, 401, "{key:?}: {body}");
            assert_eq!(body["error"]["code"], "invalid_api_key");
        }
        let (status, body) = call(&app, "POST", "/admin/keys", None, r#"{"team":"t"}"#).await;
        assert_eq!(status, 401, "{body}");
    }

    #[tokio::test]
    async fn lists_and_shows_keys_without_secrets() {
        let app = app(Some(ADMIN));
        let (status, body) = call(&app, "GET", "/admin/keys", Some(ADMIN), "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"][0]["id"], "key_1");
        assert_eq!(body["data"][0]["status"], "active");
        assert!(!body.to_string().contains("sk-sluice-one"));
        assert!(!body
            .to_string()
            .contains(&auth::hex_digest("sk-sluice-one")));
        let (_, body) = call(&app, "GET", "/admin/keys?team=other", Some(ADMIN), "").await;
        assert_eq!(body["data"], json!([]));
        let (status, body) = call(&app, "GET", "/admin/keys?tema=x", Some(ADMIN), "").await;
        assert_eq!(
            (status, body["error"]["param"].clone()),
            (400, json!("tema"))
        );
        let (status, body) = call(&app, "GET", "/admin/keys/key_1", Some(ADMIN), "").await;
        assert_eq!((status, body["label"].clone()), (200, json!("app")));
        let (status, body) = call(&app, "GET", "/admin/keys/key_nope", Some(ADMIN), "").await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "key_not_found");
    }

    #[tokio::test]
    async fn bad_bodies_name_their_parameter() {
        let app = app(Some(ADMIN));
        let cases = [
            (r#"{"label":"x"}"#, "team"),
            (r#"{"team":"a b"}"#, "team"),
            (r#"{"team":"t","bogus":1}"#, "bogus"),
            (
                r#"{"team":"t","allowed_models":["nope"]}"#,
                "allowed_models",
            ),
            (r#"{"team":"t","allowed_models":"m1"}"#, "allowed_models"),
            (
                r#"{"team":"t","requests_per_minute":0}"#,
                "requests_per_minute",
            ),
            (
                r#"{"team":"t","requests_per_minute":"5"}"#,
                "requests_per_minute",
            ),
            (r#"{"team":"t","expires_at":1}"#, "expires_at"),
            (r#"{"team":"t","ttl_seconds":-5}"#, "ttl_seconds"),
            (
                r#"{"team":"t","ttl_seconds":5,"expires_at":99999999999}"#,
                "ttl_seconds",
            ),
            (r#"{"team":"t","label":7}"#, "label"),
        ];
        for (body, param) in cases {
            let (status, answer) = call(&app, "POST", "/admin/keys", Some(ADMIN), body).await;
            assert_eq!(status, 400, "{body}: {answer}");
            assert_eq!(answer["error"]["param"], param, "{body}: {answer}");
            assert_eq!(answer["error"]["type"], "invalid_request_error");
        }
        let (status, answer) = call(&app, "POST", "/admin/keys", Some(ADMIN), "not json").await;
        assert_eq!(status, 400, "{answer}");
        let (status, answer) = call(
            &app,
            "PATCH",
            "/admin/keys/key_1",
            Some(ADMIN),
            r#"{"team":"other"}"#,
        )
        .await;
        assert_eq!(
            (status, answer["error"]["param"].clone()),
            (400, json!("team"))
        );
    }
}
