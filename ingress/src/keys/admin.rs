//! The admin API for API keys (docs/keys.md): create, list, show, rotate, revoke and
//! change keys. Protected by the admin key (`[admin] key_sha256`); every change is written
//! to the keys topic (acks=all) before the answer, and applied on this replica at once.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::producer::FutureProducer;
use serde_json::{json, Map, Value};
use sluice_schemas::topics::is_valid_team_name;
use sluice_schemas::{now_ms, ApiKey};
use subtle::ConstantTimeEq;

use super::auth::{self, KeySource, KeyStore, StoredKey};
use super::KeyLog;
use crate::config::Config;
use crate::error::ApiError;

/// Longest `label`.
const MAX_LABEL_CHARS: usize = 256;
/// Longest lifetime a key may be given (`ttl_seconds`, `expires_at`): 10 years.
const MAX_TTL_SECONDS: i64 = 10 * 365 * 24 * 3600;

/// What the admin API works on: the key store, the keys topic (none until the ingress
/// has started reading it: changes answer 503), the producer that writes to it, and the
/// config (the admin key, the body limit, the models a key may be limited to). The HTTP
/// room builds one per request from its state.
pub(crate) struct Admin<'a> {
    pub(crate) config: &'a Config,
    pub(crate) keys: &'a KeyStore,
    pub(crate) log: Option<&'a KeyLog>,
    pub(crate) producer: &'a FutureProducer,
}

/// The admin key is `Authorization: Bearer <admin key>`; compared by digest, in constant
/// time.
pub(crate) fn authorize(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let stored = config
        .admin
        .key_sha256
        .as_deref()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(ApiError::AdminDisabled)?;
    let presented = auth::presented_key(headers).ok_or(ApiError::InvalidAdminKey)?;
    if bool::from(auth::digest(presented).ct_eq(&stored)) {
        Ok(())
    } else {
        Err(ApiError::InvalidAdminKey)
    }
}

/// What the admin API shows of a key: never the secret, only its hint.
fn view(key: &StoredKey) -> Value {
    let r = &key.record;
    let now = now_ms();
    let status = if r.revoked {
        "revoked"
    } else if key.expired(now) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": r.key_id,
        "object": "api_key",
        "team": r.team,
        "label": r.label,
        "hint": r.hint,
        "allowed_models": r.allowed_models,
        "requests_per_minute": r.requests_per_minute,
        "expires_at": r.expires_at_ms.map(|ms| ms / 1000),
        "revoked": r.revoked,
        "status": status,
        "source": key.source.as_str(),
        "created_at": r.created_at_ms / 1000,
        "updated_at": r.updated_at_ms / 1000,
    })
}

/// A view with the new secret, shown this once.
fn with_secret(key: &StoredKey, secret: &str) -> Value {
    let mut v = view(key);
    v["key"] = Value::String(secret.to_string());
    v
}

/// The body as a JSON object whose every field is one of `allowed`.
fn fields(
    body: Result<Bytes, BytesRejection>,
    allowed: &[&'static str],
    max_body: usize,
) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit: max_body }
        } else {
            ApiError::NotJson
        }
    })?;
    let map: Map<String, Value> = serde_json::from_slice(&body).map_err(ApiError::InvalidJson)?;
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::UnknownParam(unknown.clone()));
    }
    Ok(map)
}

/// The changes a create or update body asks for. Outer `None`: not given; inner `None`:
/// given as `null` (cleared).
#[derive(Debug, Default)]
struct Changes {
    label: Option<Option<String>>,
    allowed_models: Option<Vec<String>>,
    requests_per_minute: Option<Option<i32>>,
    expires_at_ms: Option<Option<i64>>,
}

impl Changes {
    fn parse(config: &Config, map: &Map<String, Value>, now: i64) -> Result<Changes, ApiError> {
        let mut changes = Changes::default();
        if let Some(v) = map.get("label") {
            changes.label = Some(match v {
                Value::Null => None,
                Value::String(s) if s.chars().count() <= MAX_LABEL_CHARS => Some(s.clone()),
                _ => {
                    return Err(ApiError::InvalidParam {
                        param: "label",
                        problem: "must be a string of at most 256 characters, or null",
                    })
                }
            });
        }
        if let Some(v) = map.get("allowed_models") {
            let bad = ApiError::InvalidParam {
                param: "allowed_models",
                problem: "must be an array of model names (empty or null: every model)",
            };
            let mut models: Vec<String> = Vec::new();
            match v {
                Value::Null => {}
                Value::Array(items) => {
                    for item in items {
                        let Value::String(m) = item else {
                            return Err(bad);
                        };
                        if !config.models.iter().any(|model| model.id == *m) {
                            return Err(ApiError::UnknownAllowedModel(m.clone()));
                        }
                        if !models.contains(m) {
                            models.push(m.clone());
                        }
                    }
                }
                _ => return Err(bad),
            }
            changes.allowed_models = Some(models);
        }
        if let Some(v) = map.get("requests_per_minute") {
            changes.requests_per_minute = Some(match v {
                Value::Null => None,
                v => Some(
                    v.as_i64()
                        .filter(|n| *n > 0)
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or(ApiError::InvalidParam {
                            param: "requests_per_minute",
                            problem: "must be a positive integer, or null for no limit",
                        })?,
                ),
            });
        }
        let expires_at = map.get("expires_at");
        let ttl = map.get("ttl_seconds");
        if expires_at.is_some() && ttl.is_some() {
            return Err(ApiError::InvalidParam {
                param: "ttl_seconds",
                problem: "give either expires_at or ttl_seconds, not both",
            });
        }
        let now_s = now / 1000;
        if let Some(v) = expires_at {
            changes.expires_at_ms = Some(match v {
                Value::Null => None,
                v => Some(
                    v.as_i64()
                        .filter(|s| *s > now_s && *s - now_s <= MAX_TTL_SECONDS)
                        .map(|s| s * 1000)
                        .ok_or(ApiError::InvalidParam {
                            param: "expires_at",
                            problem: "must be a Unix time in seconds, in the future (at most 10 years ahead), or null for no expiry",
                        })?,
                ),
            });
        }
        if let Some(v) = ttl {
            changes.expires_at_ms = Some(match v {
                Value::Null => None,
                v => Some(
                    v.as_i64()
                        .filter(|s| *s > 0 && *s <= MAX_TTL_SECONDS)
                        .map(|s| now + s * 1000)
                        .ok_or(ApiError::InvalidParam {
                            param: "ttl_seconds",
                            problem: "must be a positive number of seconds (at most 10 years), or null for no expiry",
                        })?,
                ),
            });
        }
        Ok(changes)
    }

    fn apply_to(self, record: &mut ApiKey) {
        if let Some(label) = self.label {
            record.label = label;
        }
        if let Some(models) = self.allowed_models {
            record.allowed_models = models;
        }
        if let Some(rpm) = self.requests_per_minute {
            record.requests_per_minute = rpm;
        }
        if let Some(expires) = self.expires_at_ms {
            record.expires_at_ms = expires;
        }
    }
}

fn new_secret() -> Result<String, ApiError> {
    auth::new_secret().map_err(|error| {
        tracing::error!(%error, "no randomness for a new key");
        ApiError::ShuttingDown
    })
}

/// The fields a key's JSON body may have (create and update).
const KEY_FIELDS: &[&str] = &[
    "team",
    "label",
    "allowed_models",
    "requests_per_minute",
    "expires_at",
    "ttl_seconds",
];

impl Admin<'_> {
    fn log(&self) -> Result<&KeyLog, ApiError> {
        self.log.ok_or(ApiError::ShuttingDown)
    }

    /// `POST /admin/keys`: a new key; its secret is in this answer and nowhere else.
    pub(crate) async fn create(
        &self,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Response, ApiError> {
        authorize(self.config, headers)?;
        let map = fields(body, KEY_FIELDS, self.config.server.max_body_bytes)?;
        let (stored, secret) = self.create_key(&map).await?;
        Ok((StatusCode::CREATED, Json(with_secret(&stored, &secret))).into_response())
    }

    /// A new key from `map` (the fields of [`KEY_FIELDS`]), and its secret. The caller has
    /// checked the admin key (the HTTP API) or an admin login (the console).
    pub(crate) async fn create_key(
        &self,
        map: &Map<String, Value>,
    ) -> Result<(StoredKey, String), ApiError> {
        if let Some(unknown) = map.keys().find(|k| !KEY_FIELDS.contains(&k.as_str())) {
            return Err(ApiError::UnknownParam(unknown.clone()));
        }
        let team = match map.get("team") {
            Some(Value::String(t)) if is_valid_team_name(t) => t.clone(),
            _ => {
                return Err(ApiError::InvalidParam {
                    param: "team",
                    problem: "required: a team name of letters, digits, '-' and '_' (at most 64)",
                })
            }
        };
        let now = now_ms();
        let changes = Changes::parse(self.config, map, now)?;
        let secret = new_secret()?;
        let mut record = ApiKey {
            key_id: format!("key_{}", uuid::Uuid::now_v7().simple()),
            team,
            label: None,
            sha256: auth::hex_digest(&secret),
            hint: auth::hint(&secret),
            allowed_models: Vec::new(),
            requests_per_minute: None,
            expires_at_ms: None,
            revoked: false,
            created_at_ms: now,
            updated_at_ms: now,
        };
        changes.apply_to(&mut record);
        let log = self.log()?;
        let stored = StoredKey {
            record: record.clone(),
            source: KeySource::Admin,
        };
        log.write(self.producer, self.keys, record).await?;
        tracing::info!(key_id = %stored.record.key_id, team = %stored.record.team, "api key created");
        Ok((stored, secret))
    }

    /// `GET /admin/keys[?team=]`.
    pub(crate) async fn list(
        &self,
        headers: &HeaderMap,
        query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ) -> Result<Json<Value>, ApiError> {
        authorize(self.config, headers)?;
        let Query(query) = query.map_err(|_| ApiError::InvalidParam {
            param: "team",
            problem: "the query string must be `?team=<team>`",
        })?;
        if let Some(unknown) = query.keys().find(|k| *k != "team") {
            return Err(ApiError::UnknownParam(unknown.clone()));
        }
        let data: Vec<Value> = self
            .keys
            .list(query.get("team").map(String::as_str))
            .iter()
            .map(view)
            .collect();
        Ok(Json(json!({"object": "list", "data": data})))
    }

    /// `GET /admin/keys/{id}`.
    pub(crate) async fn show(
        &self,
        headers: &HeaderMap,
        id: String,
    ) -> Result<Json<Value>, ApiError> {
        authorize(self.config, headers)?;
        let key = self.keys.get(&id).ok_or(ApiError::KeyNotFound(id))?;
        Ok(Json(view(&key)))
    }

    /// The key as the admin API may change it: made by the admin API, and not revoked.
    fn changeable(&self, id: &str) -> Result<StoredKey, ApiError> {
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| ApiError::KeyNotFound(id.to_string()))?;
        if key.source == KeySource::Config {
            return Err(ApiError::KeyNotChangeable {
                id: id.to_string(),
                reason: "it is configured in the ingress config ([[keys]]); change it there",
            });
        }
        if key.record.revoked {
            return Err(ApiError::KeyNotChangeable {
                id: id.to_string(),
                reason: "it is revoked, and revocation is final; create a new key",
            });
        }
        Ok(key)
    }

    /// `POST /admin/keys/{id}/rotate`: a new secret for the same key; the old one stops working.
    pub(crate) async fn rotate(
        &self,
        headers: &HeaderMap,
        id: String,
    ) -> Result<Json<Value>, ApiError> {
        authorize(self.config, headers)?;
        let (key, secret) = self.rotate_key(&id).await?;
        Ok(Json(with_secret(&key, &secret)))
    }

    /// A new secret for key `id`, and the key. The caller has checked the admin's right.
    pub(crate) async fn rotate_key(&self, id: &str) -> Result<(StoredKey, String), ApiError> {
        let log = self.log()?;
        let _writing = log.begin(self.keys).await?;
        let mut key = self.changeable(id)?;
        let secret = new_secret()?;
        key.record.sha256 = auth::hex_digest(&secret);
        key.record.hint = auth::hint(&secret);
        key.record.updated_at_ms = now_ms();
        log.write(self.producer, self.keys, key.record.clone())
            .await?;
        tracing::info!(key_id = %id, team = %key.record.team, "api key rotated");
        Ok((key, secret))
    }

    /// `POST /admin/keys/{id}/revoke` and `DELETE /admin/keys/{id}`: the key stops working for
    /// good and stays listed as revoked. Revoking a revoked key changes nothing.
    pub(crate) async fn revoke(
        &self,
        headers: &HeaderMap,
        id: String,
    ) -> Result<Json<Value>, ApiError> {
        authorize(self.config, headers)?;
        Ok(Json(view(&self.revoke_key(&id).await?)))
    }

    /// Revokes key `id` (a revoked key stays as it is). The caller has checked the admin's
    /// right.
    pub(crate) async fn revoke_key(&self, id: &str) -> Result<StoredKey, ApiError> {
        let log = self.log()?;
        let _writing = log.begin(self.keys).await?;
        if let Some(key) = self.keys.get(id) {
            if key.source == KeySource::Admin && key.record.revoked {
                return Ok(key);
            }
        }
        let mut key = self.changeable(id)?;
        key.record.revoked = true;
        key.record.updated_at_ms = now_ms();
        log.write(self.producer, self.keys, key.record.clone())
            .await?;
        tracing::info!(key_id = %id, team = %key.record.team, "api key revoked");
        Ok(key)
    }

    /// `PATCH /admin/keys/{id}`: change label, allowed models, rate limit or expiry.
    pub(crate) async fn update(
        &self,
        headers: &HeaderMap,
        id: String,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Json<Value>, ApiError> {
        authorize(self.config, headers)?;
        let map = fields(body, KEY_FIELDS, self.config.server.max_body_bytes)?;
        if map.contains_key("team") {
            return Err(ApiError::InvalidParam {
                param: "team",
                problem: "a key's team cannot change; create a key for the other team",
            });
        }
        let now = now_ms();
        let changes = Changes::parse(self.config, &map, now)?;
        let log = self.log()?;
        let _writing = log.begin(self.keys).await?;
        let mut key = self.changeable(&id)?;
        changes.apply_to(&mut key.record);
        key.record.updated_at_ms = now_ms();
        log.write(self.producer, self.keys, key.record.clone())
            .await?;
        tracing::info!(key_id = %id, team = %key.record.team, "api key changed");
        Ok(Json(view(&key)))
    }
}
