//! An example processing hook (workers/src/hooks.rs has the contract): a small service that
//! holds a team to a house style. Used by the end-to-end tests, and a template for a real one.
//!
//! - `pre`: a prompt mentioning `forbidden` is refused; one mentioning `slow-hook` is answered
//!   after 2 s (longer than any test hook's timeout); otherwise account numbers
//!   (`ACCT-` and digits) are redacted to `ACCT-[REDACTED]` and a house-style system message is
//!   put first.
//! - `post`: the answer to a prompt mentioning `withhold` is refused; otherwise `[reviewed]`
//!   is appended to every choice's text.
//! - `post` per chunk (a hook with `per_chunk = true`): `secret` in a delta becomes `[CUT]`; a
//!   delta with `stopword` refuses the stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The system message the pre stage puts first.
pub const HOUSE_STYLE: &str = "House style: answer briefly and never repeat account numbers.";

/// A running example hook.
pub struct ExampleHook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    server: tokio::task::JoinHandle<()>,
}

impl ExampleHook {
    pub async fn start() -> anyhow::Result<ExampleHook> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(Arc::clone(&received));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(ExampleHook {
            addr,
            received,
            server,
        })
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// `127.0.0.1:PORT`, for `[hooks_outbound] allowed_hosts`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every payload received, oldest first.
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for ExampleHook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Every text of a chat body's messages.
fn texts(request: &Value) -> String {
    request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("ACCT-") {
        out.push_str(&rest[..at + 5]);
        let after = &rest[at + 5..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            out.push_str("[REDACTED]");
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

async fn hook(
    State(received): State<Arc<Mutex<Vec<Value>>>>,
    Json(payload): Json<Value>,
) -> Json<Value> {
    if let Ok(mut r) = received.lock() {
        r.push(payload.clone());
    }
    let request = &payload["request"];
    match payload["stage"].as_str() {
        Some("pre") => {
            let text = texts(request);
            if text.contains("forbidden") {
                return Json(
                    json!({"action": "refuse", "reason": "house rule: no forbidden topics"}),
                );
            }
            if text.contains("slow-hook") {
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Json(json!({"action": "pass"}));
            }
            let mut messages: Vec<Value> = vec![json!({"role": "system", "content": HOUSE_STYLE})];
            for m in request["messages"].as_array().into_iter().flatten() {
                let mut m = m.clone();
                if let Some(content) = m["content"].as_str() {
                    m["content"] = Value::String(redact(content));
                }
                messages.push(m);
            }
            Json(json!({"action": "change", "messages": messages}))
        }
        Some("post") if payload.get("chunk").is_some() => {
            // Per chunk: `secret` never leaves in a delta; `stopword` ends the stream.
            let mut choices = Vec::new();
            for c in payload["chunk"]["choices"].as_array().into_iter().flatten() {
                let text = c["delta"]["content"].as_str().unwrap_or_default();
                if text.contains("stopword") {
                    return Json(json!({"action": "refuse", "reason": "house rule: stopword"}));
                }
                choices
                    .push(json!({"index": c["index"], "content": text.replace("secret", "[CUT]")}));
            }
            Json(json!({"action": "change", "choices": choices}))
        }
        Some("post") => {
            if texts(request).contains("withhold") {
                return Json(
                    json!({"action": "refuse", "reason": "house rule: this answer is withheld"}),
                );
            }
            let choices: Vec<Value> = payload["response"]["choices"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let text = c["message"]["content"].as_str().unwrap_or_default();
                    json!({"index": c["index"], "content": format!("{text} [reviewed]")})
                })
                .collect();
            Json(json!({"action": "change", "choices": choices}))
        }
        _ => Json(json!({"action": "pass"})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_numbers_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact("pay ACCT-12345 and ACCT-9, not ACCT-x"),
            "pay ACCT-[REDACTED] and ACCT-[REDACTED], not ACCT-x"
        );
        assert_eq!(redact("nothing here"), "nothing here");
    }
}
