//! The exact response cache (docs/cache.md): a request asked again, byte for byte as its
//! provider would receive it, is answered from a stored answer without Kafka or a provider.
//!
//! [`plan`] decides, at admission, whether a request uses the cache and under which key: a
//! SHA-256 of its team, its endpoint family and its canonical body (after templates,
//! decorators and PII masking, every parameter that changes the answer; not `stream`,
//! `stream_options` or `user`). A team's entries are never another team's. [`Cache`] keeps
//! the answers ([`store`]): in this replica's memory, or in a shared Redis, where a slow or
//! failed Redis is a miss, never a wait.
//!
//! A leaf: it knows the config, the error type and the records, nothing of routes.

mod store;

use std::time::Duration;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub(crate) use store::{Cache, Entry, Lookup};

use crate::config::CacheConfig;
use crate::error::ApiError;

/// The response header: `hit`, `miss`, or `bypass` (`Cache-Control: no-cache`).
pub(crate) const HEADER: &str = "x-sluice-cache";

/// The endpoint families (answers of one family are never served to another).
pub(crate) const CHAT: &str = "chat";
pub(crate) const EMBEDDINGS: &str = "embeddings";

/// Body fields that do not change the answer: left out of the key.
const NOT_IN_KEY: [&str; 3] = ["stream", "stream_options", "user"];

/// `"sluice": {"cache": {"ttl_s": N}}`: this request opts in, whatever its temperature.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Asked {
    pub(crate) ttl_s: u64,
}

/// How one request uses the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) key: String,
    pub(crate) ttl: Duration,
    /// Look for a stored answer (not with `Cache-Control: no-cache`).
    pub(crate) read: bool,
}

impl Plan {
    /// The `x-sluice-cache` value of an answer that did not come from the cache.
    pub(crate) fn missed(&self) -> &'static str {
        if self.read {
            "miss"
        } else {
            "bypass"
        }
    }
}

/// Whether `team`'s request (its final `body`, JSON) uses the cache, and how: asked for in
/// the body, or the team's default for a deterministic request (`temperature` 0, unless the
/// team caches any). `Cache-Control: no-store` keeps it out; `no-cache` skips the lookup but
/// stores the fresh answer. `family` separates endpoints whose answers differ in kind.
pub(crate) fn plan(
    config: &CacheConfig,
    team: &str,
    family: &str,
    headers: &HeaderMap,
    asked: Option<Asked>,
    body: &str,
) -> Result<Option<Plan>, ApiError> {
    if let Some(asked) = asked {
        if asked.ttl_s == 0 || asked.ttl_s > config.max_ttl_s {
            return Err(ApiError::InvalidParam {
                param: "sluice.cache.ttl_s",
                problem: "must be a number of seconds from 1 to the operator's cache.max_ttl_s (24 h by default)",
            });
        }
    }
    let (no_store, no_cache) = cache_control(headers);
    if no_store {
        return Ok(None);
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(body) else {
        return Ok(None);
    };
    let ttl_s = match (asked, config.teams.iter().find(|t| t.team == team)) {
        (Some(asked), _) => asked.ttl_s,
        (None, Some(default))
            if default.any_temperature || family == EMBEDDINGS || deterministic(&fields) =>
        {
            default.ttl_s.min(config.max_ttl_s)
        }
        (None, _) => return Ok(None),
    };
    for field in NOT_IN_KEY {
        fields.remove(field);
    }
    Ok(Some(Plan {
        key: key(team, family, &Value::Object(fields)),
        ttl: Duration::from_secs(ttl_s),
        read: !no_cache,
    }))
}

/// `temperature` is 0: the same request gets (nearly) the same answer. Absent is the
/// provider's default (1 for OpenAI), which is not.
fn deterministic(fields: &serde_json::Map<String, Value>) -> bool {
    fields
        .get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| t == 0.0)
}

/// (`no-store`, `no-cache`) of the request's `Cache-Control` headers.
fn cache_control(headers: &HeaderMap) -> (bool, bool) {
    let mut seen = (false, false);
    for value in headers.get_all(axum::http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            match directive.trim().to_ascii_lowercase().as_str() {
                "no-store" => seen.0 = true,
                "no-cache" => seen.1 = true,
                _ => {}
            }
        }
    }
    seen
}

/// The key: SHA-256 of the length-prefixed team, family and canonical body (object keys
/// sorted at every depth, so two spellings of one request are one key).
fn key(team: &str, family: &str, body: &Value) -> String {
    let mut canonical = String::with_capacity(256);
    write_canonical(body, &mut canonical);
    let mut hash = Sha256::new();
    for part in [team.as_bytes(), family.as_bytes(), canonical.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("{team}:{}", hex::encode(hash.finalize()))
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        // 0 and 0.0 are one number: an integral float is written as the integer.
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => out.push_str(&(f as i64).to_string()),
            _ => out.push_str(&n.to_string()),
        },
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests;
