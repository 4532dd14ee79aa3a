//! Processing hooks (`[[hooks]]`): an HTTP service the worker asks before a chat request
//! goes to its provider (`pre`) or before a sync answer is published (`post`). It may pass,
//! change the messages (pre) or the answer's text (post), or refuse. The moderation hook's
//! contract (ingress/src/guard/moderation.rs) generalized, run where the provider is called so
//! it sees exactly what the provider gets (after templates, decorators and PII masking) and
//! applies per team and per model or route.
//!
//! ```text
//! POST <url>   content-type: application/json   x-sluice-request-id: <id>
//! {"stage": "pre", "request_id", "team", "model", "request": {OpenAI chat body}}
//! {"stage": "post", "request_id", "team", "model", "request": {...}, "response": {chat.completion}}
//!
//! 200 {"action": "pass"}
//! 200 {"action": "change", "messages": [...]}                          pre: the new messages
//! 200 {"action": "change", "choices": [{"index": 0, "content": "..."}]}  post: new texts
//! {"stage": "post", ..., "chunk": {chat.completion.chunk}}          per_chunk post hooks
//! 200 {"action": "change", "choices": [{"index": 0, "content": "..."}]}  the deltas' texts
//! 200 {"action": "refuse", "reason": "..."}
//! ```
//!
//! Bounded: `timeout_ms` per call, answers over `max_bytes` are errors, the URL follows the
//! same outbound policy as webhooks (`[hooks_outbound] allowed_hosts`; nothing non-public
//! otherwise, checked at connect time). A hook that cannot be asked (timeout, non-2xx, an
//! answer not of this shape) passes the request with `on_error = "open"` and refuses it with
//! 503 `hook_unavailable` with `"closed"` (the default). Streams: pre hooks apply; post
//! hooks see the final text before the stream's end and may refuse it (the stream then ends
//! with the error), a change cannot apply to text already sent; a post hook with
//! `per_chunk = true` is also asked about every chunk before it is forwarded, and may change
//! its delta texts or refuse the stream there. A pre change may only replace
//! `messages`; a post change only the texts of the choices it names: nothing a hook says can
//! change the model, the limits or what is billed. Every decision lands in the audit row's
//! `policy` (`hook:<name>:changed`, `:refused`, `:error-open`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_schemas::openai::ChatMessage;
use sluice_schemas::outbound::{OutboundConfig, OutboundPolicy, Route};
use sluice_schemas::Request;

/// Which side of the provider call a hook runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Pre,
    Post,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Pre => "pre",
            Stage::Post => "post",
        }
    }
}

/// What a hook that cannot be asked means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Open,
    #[default]
    Closed,
}

/// One `[[hooks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Named in audit rows and errors.
    pub name: String,
    pub stage: Stage,
    pub url: String,
    /// Teams it runs for; empty: every team.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Names callers use (models or routes) it runs for; empty: every one.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default = "default_timeout", with = "sluice_schemas::config::millis")]
    pub timeout_ms: Duration,
    /// The largest answer read.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    #[serde(default)]
    pub on_error: OnError,
    /// Post hooks: also ask about every chunk of a stream before it is forwarded (its
    /// `delta` texts may be changed, or the stream refused there). A call per chunk: for
    /// hooks that answer in a millisecond or two.
    #[serde(default)]
    pub per_chunk: bool,
}

fn default_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_max_bytes() -> usize {
    1024 * 1024
}

impl HookConfig {
    fn applies(&self, request: &Request) -> bool {
        (self.teams.is_empty() || self.teams.contains(&request.team))
            && (self.models.is_empty() || self.models.contains(&request.model))
    }
}

/// Start-up checks: names unique and non-empty, URLs the outbound policy allows, bounds.
/// `Err`: the field and its problem.
pub fn validate(
    hooks: &[HookConfig],
    outbound: &OutboundConfig,
) -> Result<(), (String, &'static str)> {
    let policy = OutboundPolicy::new(outbound).map_err(|_| {
        (
            "hooks_outbound.allowed_hosts".to_string(),
            "entries must be host[:port]",
        )
    })?;
    let mut names = std::collections::HashSet::new();
    for (i, h) in hooks.iter().enumerate() {
        let field = |f: &str| format!("hooks[{i}].{f}");
        if h.name.trim().is_empty() || !names.insert(h.name.as_str()) {
            return Err((field("name"), "must be non-empty and unique"));
        }
        if policy.check(&h.url).is_err() {
            return Err((
                field("url"),
                "is refused by the outbound policy (not http(s), or a loopback, private or link-local address): allow it in [hooks_outbound] allowed_hosts",
            ));
        }
        if h.per_chunk && h.stage != Stage::Post {
            return Err((field("per_chunk"), "is for post hooks only"));
        }
        if h.timeout_ms.is_zero() || h.timeout_ms > Duration::from_secs(60) {
            return Err((field("timeout_ms"), "must be 1 to 60000"));
        }
        if h.max_bytes == 0 || h.max_bytes > 16 * 1024 * 1024 {
            return Err((field("max_bytes"), "must be 1 to 16777216"));
        }
    }
    Ok(())
}

/// A refusal: the caller's answer (status, code, message).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: i32,
    pub code: &'static str,
    pub message: String,
    /// The audit decision (`hook:<name>:refused`, `...:unavailable`).
    pub decision: String,
}

/// How a hook call went.
enum Answer {
    Pass,
    Change(Map<String, Value>),
    Refuse(String),
}

/// The configured hooks and the clients that reach them.
pub struct Hooks {
    hooks: Vec<HookConfig>,
    policy: OutboundPolicy,
    /// Allow-listed destinations, and the guarded client for the rest; `None` if they could
    /// not be built (then every call is an error, and `on_error` decides).
    clients: Option<(reqwest::Client, reqwest::Client)>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("hooks", &self.hooks).finish()
    }
}

/// The longest refusal reason passed on to a caller.
const MAX_REASON: usize = 500;

impl Hooks {
    /// Start-up has validated `outbound` ([`validate`]); were it invalid, the strict default
    /// policy (nothing non-public) would apply.
    pub fn new(hooks: &[HookConfig], outbound: &OutboundConfig) -> Hooks {
        let policy = OutboundPolicy::new(outbound).unwrap_or_default();
        let longest = hooks
            .iter()
            .map(|h| h.timeout_ms)
            .max()
            .unwrap_or(default_timeout());
        let clients = sluice_schemas::outbound::clients(&policy, longest).ok();
        Hooks {
            hooks: hooks.to_vec(),
            policy,
            clients,
        }
    }

    fn of<'a>(
        &'a self,
        stage: Stage,
        request: &'a Request,
    ) -> impl Iterator<Item = &'a HookConfig> + 'a {
        self.hooks
            .iter()
            .filter(move |h| h.stage == stage && h.applies(request))
    }

    /// Whether a per-chunk post hook runs for `request`'s stream.
    pub fn has_chunk(&self, request: &Request) -> bool {
        request.stream && self.of(Stage::Post, request).any(|h| h.per_chunk)
    }

    /// Runs the per-chunk post hooks on one stream chunk (changed in place: its delta texts).
    /// Ok: the decisions for the audit row.
    pub async fn chunk(
        &self,
        request: &Request,
        chunk: &mut Value,
    ) -> Result<Vec<String>, Refusal> {
        let mut decisions = Vec::new();
        for hook in self.of(Stage::Post, request).filter(|h| h.per_chunk) {
            let payload = json!({
                "stage": "post", "request_id": request.request_id, "team": request.team,
                "model": request.model, "chunk": chunk,
            });
            let changed = match self.ask(hook, request, &payload).await {
                Ok(Answer::Pass) => continue,
                Ok(Answer::Refuse(reason)) => return Err(refused(hook, Stage::Post, &reason)),
                Ok(Answer::Change(change)) => retext_field(chunk, &change, "delta"),
                Err(error) => Err(error),
            };
            match changed {
                Ok(()) => decisions.push(format!("hook:{}:changed", hook.name)),
                Err(error) => decisions.push(unavailable(hook, error)?),
            }
        }
        Ok(decisions)
    }

    /// Whether a post hook runs for `request`.
    pub fn has_post(&self, request: &Request) -> bool {
        self.of(Stage::Post, request).next().is_some()
    }

    /// Runs the pre hooks in config order on `body` (changed in place). Ok: the decisions
    /// for the audit row.
    pub async fn pre(
        &self,
        request: &Request,
        body: &mut Map<String, Value>,
    ) -> Result<Vec<String>, Refusal> {
        let mut decisions = Vec::new();
        for hook in self.of(Stage::Pre, request) {
            let payload = json!({
                "stage": "pre", "request_id": request.request_id, "team": request.team,
                "model": request.model, "request": body,
            });
            let messages = match self.ask(hook, request, &payload).await {
                Ok(Answer::Pass) => continue,
                Ok(Answer::Refuse(reason)) => return Err(refused(hook, Stage::Pre, &reason)),
                Ok(Answer::Change(mut answer)) => answer
                    .remove("messages")
                    .filter(|m| {
                        serde_json::from_value::<Vec<ChatMessage>>(m.clone())
                            .is_ok_and(|m| !m.is_empty())
                    })
                    .ok_or("a pre change must carry non-empty `messages` in OpenAI's shape"),
                Err(error) => Err(error),
            };
            match messages {
                Ok(messages) => {
                    body.insert("messages".into(), messages);
                    decisions.push(format!("hook:{}:changed", hook.name));
                }
                Err(error) => decisions.push(unavailable(hook, error)?),
            }
        }
        Ok(decisions)
    }

    /// Runs the post hooks on a completed answer (`answer`, a chat.completion as JSON,
    /// changed in place). A `streamed` answer has reached the caller already: a change
    /// cannot apply (`hook:<name>:unapplied`), a refusal still ends the stream with its
    /// error instead of its normal end. Ok: the decisions for the audit row.
    pub async fn post(
        &self,
        request: &Request,
        body: &Map<String, Value>,
        answer: &mut String,
        streamed: bool,
    ) -> Result<Vec<String>, Refusal> {
        let mut decisions = Vec::new();
        for hook in self.of(Stage::Post, request) {
            let Ok(mut response) = serde_json::from_str::<Value>(answer) else {
                break;
            };
            let payload = json!({
                "stage": "post", "request_id": request.request_id, "team": request.team,
                "model": request.model, "request": body, "response": response,
            });
            let changed = match self.ask(hook, request, &payload).await {
                Ok(Answer::Pass) => continue,
                Ok(Answer::Refuse(reason)) => return Err(refused(hook, Stage::Post, &reason)),
                Ok(Answer::Change(_)) if streamed => {
                    decisions.push(format!("hook:{}:unapplied", hook.name));
                    continue;
                }
                Ok(Answer::Change(change)) => retext(&mut response, &change).map(|()| response),
                Err(error) => Err(error),
            };
            match changed {
                Ok(response) => {
                    *answer = response.to_string();
                    decisions.push(format!("hook:{}:changed", hook.name));
                }
                Err(error) => decisions.push(unavailable(hook, error)?),
            }
        }
        Ok(decisions)
    }

    /// One call, bounded in time and size.
    async fn ask(
        &self,
        hook: &HookConfig,
        request: &Request,
        payload: &Value,
    ) -> Result<Answer, &'static str> {
        let (url, route) = self
            .policy
            .check(&hook.url)
            .map_err(|_| "the hook URL is refused by the outbound policy")?;
        let (allowed, guarded) = self.clients.as_ref().ok_or("no HTTP client for hooks")?;
        let client = match route {
            Route::AllowListed => allowed,
            Route::Public => guarded,
        };
        let call = async {
            let mut response = client
                .post(url)
                .header("x-sluice-request-id", &request.request_id)
                .json(payload)
                .send()
                .await
                .map_err(|_| "the hook could not be reached")?;
            if !response.status().is_success() {
                return Err("the hook answered a non-2xx status");
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|_| "the hook's answer broke off")?
            {
                if bytes.len() + chunk.len() > hook.max_bytes {
                    return Err("the hook's answer is over max_bytes");
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        };
        let bytes = tokio::time::timeout(hook.timeout_ms, call)
            .await
            .map_err(|_| "the hook did not answer within timeout_ms")??;
        let mut answer: Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|_| "the hook's answer is not a JSON object")?;
        match answer.remove("action").as_ref().and_then(Value::as_str) {
            Some("pass") => Ok(Answer::Pass),
            Some("change") => Ok(Answer::Change(answer)),
            Some("refuse") => Ok(Answer::Refuse(
                answer
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
                    .chars()
                    .take(MAX_REASON)
                    .collect(),
            )),
            _ => Err("the hook's answer has no action pass, change or refuse"),
        }
    }
}

/// A post change: `{"choices": [{"index": i, "content": "..."}]}` replaces those choices'
/// message texts, and nothing else.
fn retext(response: &mut Value, change: &Map<String, Value>) -> Result<(), &'static str> {
    retext_field(response, change, "message")
}

/// [`retext`] on `choices[].<field>.content` (`message` of an answer, `delta` of a chunk).
fn retext_field(
    response: &mut Value,
    change: &Map<String, Value>,
    field: &str,
) -> Result<(), &'static str> {
    const SHAPE: &str = "a post change must carry `choices` of {index, content}";
    let edits = change
        .get("choices")
        .and_then(Value::as_array)
        .ok_or(SHAPE)?;
    let choices = response["choices"].as_array_mut().ok_or(SHAPE)?;
    for edit in edits {
        let index = edit["index"].as_u64().ok_or(SHAPE)?;
        let content = edit["content"].as_str().ok_or(SHAPE)?;
        let choice = choices
            .iter_mut()
            .find(|c| c["index"].as_u64() == Some(index))
            .ok_or("a post change names a choice the answer does not have")?;
        choice[field]["content"] = Value::String(content.to_string());
    }
    Ok(())
}

fn refused(hook: &HookConfig, stage: Stage, reason: &str) -> Refusal {
    let (status, code, what) = match stage {
        Stage::Pre => (400, "hook_refused", "request"),
        Stage::Post => (422, "hook_refused_output", "answer"),
    };
    Refusal {
        status,
        code,
        message: format!(
            "The {what} was refused by the `{}` {} hook: {reason}",
            hook.name,
            stage.as_str()
        ),
        decision: format!("hook:{}:refused", hook.name),
    }
}

/// A hook that could not be asked: passed (open) with a decision, or a 503 (closed).
fn unavailable(hook: &HookConfig, error: &str) -> Result<String, Refusal> {
    tracing::warn!(hook = %hook.name, error, on_error = ?hook.on_error, "processing hook unavailable");
    match hook.on_error {
        OnError::Open => Ok(format!("hook:{}:error-open", hook.name)),
        OnError::Closed => Err(Refusal {
            status: 503,
            code: "hook_unavailable",
            message: format!(
                "The `{}` {} hook could not be asked ({error}); retry later.",
                hook.name,
                hook.stage.as_str()
            ),
            decision: format!("hook:{}:unavailable", hook.name),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_change_replaces_only_the_texts_it_names() {
        let mut response = json!({
            "id": "x", "usage": {"total_tokens": 9},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}}],
        });
        let change =
            json!({"choices": [{"index": 0, "content": "b"}], "usage": {"total_tokens": 0}});
        retext(&mut response, change.as_object().unwrap()).unwrap();
        assert_eq!(response["choices"][0]["message"]["content"], "b");
        assert_eq!(
            response["usage"]["total_tokens"], 9,
            "usage is never the hook's"
        );
        let bad = json!({"choices": [{"index": 3, "content": "c"}]});
        assert!(retext(&mut response, bad.as_object().unwrap()).is_err());
        assert!(retext(&mut response, &Map::new()).is_err());
    }

    /// A hook server answering every call with `status` and `body`.
    async fn answering(status: u16, body: String) -> String {
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move {
                axum::http::Response::builder()
                    .status(status)
                    .body(axum::body::Body::from(body))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        host
    }

    fn request() -> Request {
        serde_json::from_value(json!({
            "request_id": "req_1", "team": "t", "key_id": "k", "priority": "interactive",
            "model": "m", "created_at_ms": 0, "deadline_ms": 1, "traceparent": null,
            "reply": null, "prompt_tokens": 1, "max_tokens": null, "body": "{}",
            "stream": false, "attributes": {},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_bad_answer_is_an_error_that_on_error_decides() {
        let messages = json!({"messages": [{"role": "user", "content": "hi"}]});
        let mut body = messages.as_object().unwrap().clone();
        for (status, answer, why) in [
            (500, "{}".to_string(), "a 5xx"),
            (200, "not json".to_string(), "not JSON"),
            (
                200,
                r#"{"action": "maybe"}"#.to_string(),
                "an unknown action",
            ),
            (
                200,
                r#"{"action": "change", "messages": []}"#.to_string(),
                "no messages",
            ),
            (
                200,
                r#"{"action": "change", "messages": [{"role": "wizard"}]}"#.to_string(),
                "a bad role",
            ),
            (
                200,
                format!(r#"{{"action": "pass", "pad": "{}"}}"#, "x".repeat(2048)),
                "over max_bytes",
            ),
        ] {
            let host = answering(status, answer).await;
            let hook = |on_error| HookConfig {
                name: "h".into(),
                stage: Stage::Pre,
                url: format!("http://{host}/"),
                teams: Vec::new(),
                models: Vec::new(),
                timeout_ms: default_timeout(),
                max_bytes: 1024,
                on_error,
                per_chunk: false,
            };
            let outbound = OutboundConfig {
                allowed_hosts: vec![host.clone()],
                ..OutboundConfig::default()
            };
            let closed = Hooks::new(&[hook(OnError::Closed)], &outbound);
            let refusal = closed.pre(&request(), &mut body).await.unwrap_err();
            assert_eq!(
                (refusal.status, refusal.code),
                (503, "hook_unavailable"),
                "{why}"
            );
            let open = Hooks::new(&[hook(OnError::Open)], &outbound);
            let decisions = open.pre(&request(), &mut body).await.unwrap();
            assert_eq!(decisions, ["hook:h:error-open"], "{why}");
            assert_eq!(Value::Object(body.clone()), messages, "{why}: unchanged");
        }
    }

    #[test]
    fn start_up_refuses_private_urls_unless_allow_listed_and_duplicate_names() {
        let hook = |name: &str, url: &str| HookConfig {
            name: name.into(),
            stage: Stage::Pre,
            url: url.into(),
            teams: Vec::new(),
            models: Vec::new(),
            timeout_ms: default_timeout(),
            max_bytes: default_max_bytes(),
            on_error: OnError::Closed,
            per_chunk: false,
        };
        let strict = OutboundConfig::default();
        let (field, _) = validate(&[hook("a", "http://127.0.0.1:9/pre")], &strict).unwrap_err();
        assert_eq!(field, "hooks[0].url");
        let listed = OutboundConfig {
            allowed_hosts: vec!["127.0.0.1:9".into()],
            ..OutboundConfig::default()
        };
        assert_eq!(
            validate(&[hook("a", "http://127.0.0.1:9/pre")], &listed),
            Ok(())
        );
        let twice = [
            hook("a", "http://127.0.0.1:9/a"),
            hook("a", "http://127.0.0.1:9/b"),
        ];
        assert_eq!(validate(&twice, &listed).unwrap_err().0, "hooks[1].name");
        let metadata = [hook("a", "http://169.254.169.254/latest")];
        assert_eq!(validate(&metadata, &listed).unwrap_err().0, "hooks[0].url");
    }
}
