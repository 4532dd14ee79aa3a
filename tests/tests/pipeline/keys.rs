//! API keys made through the admin API, end to end on the real Kafka: two ingress replicas
//! on one keys topic, revocation and rotation seen by both, model and rate limits, expiry,
//! and a restarted replica that still knows every key.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);
/// How long a change may take to reach another replica before the test fails (measured
/// figures are printed; see docs/keys.md).
const PROPAGATION: Duration = Duration::from_secs(10);
const OTHER_MODEL: &str = "other-model";

async fn call(
    stack: &Stack,
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = stack.http.request(method, url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("ingress answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn admin(
    stack: &Stack,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call(
        stack,
        method,
        &format!("{base}{path}"),
        Some(ADMIN_KEY),
        body,
    )
    .await
}

/// `GET /v1/models` with `key` on `base`: the cheapest authenticated call.
async fn models(stack: &Stack, base: &str, key: &str) -> (u16, Value) {
    call(stack, "GET", &format!("{base}/v1/models"), Some(key), None).await
}

/// Polls (every few milliseconds, to measure propagation) until `key` gets `want` from
/// `base`; returns how long that took.
async fn until_status(stack: &Stack, base: &str, key: &str, want: u16) -> Duration {
    let started = Instant::now();
    let poll = async {
        while models(stack, base, key).await.0 != want {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    if tokio::time::timeout(PROPAGATION, poll).await.is_err() {
        panic!("{base} did not answer {want} for the key within {PROPAGATION:?}");
    }
    started.elapsed()
}

/// Revokes `id` on `r1` while polling `r2` with `secret` every few milliseconds, both from
/// the moment the revoke is sent. Returns when `r1` answered and when `r2` first refused.
async fn revoke_and_time(
    stack: &Stack,
    r1: &str,
    r2: &str,
    id: &str,
    secret: &str,
) -> (Duration, Duration) {
    let sent = Instant::now();
    let revoke = async {
        let (status, body) =
            admin(stack, r1, "POST", &format!("/admin/keys/{id}/revoke"), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "revoked");
        sent.elapsed()
    };
    let poll = async {
        loop {
            if models(stack, r2, secret).await.0 == 401 {
                return sent.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let (answered, seen) = tokio::join!(revoke, tokio::time::timeout(PROPAGATION, poll));
    let seen = seen
        .unwrap_or_else(|_| panic!("{r2} still accepts {id} {PROPAGATION:?} after its revocation"));
    (answered, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_created_and_revoked_on_one_replica_reach_the_other_and_survive_restarts() {
    let stack = Stack::start(StackOptions::default()).await;
    let r1 = stack.base.clone();
    let r2 = stack.start_ingress_replica(1).await;

    let (status, created) = admin(
        &stack,
        &r1,
        "POST",
        "/admin/keys",
        Some(json!({"team": "team-a", "label": "billing-app"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("sk-sluice-") && secret.len() == 74,
        "{secret}"
    );
    assert_eq!(created["team"], "team-a");
    assert_eq!(created["status"], "active");
    assert_eq!(created["hint"], format!("sk-sluice-…{}", &secret[70..]));

    // Read-your-writes on the replica that answered: no wait.
    assert_eq!(models(&stack, &r1, &secret).await.0, 200);
    let (_, one) = admin(&stack, &r1, "GET", &format!("/admin/keys/{id}"), None).await;
    assert_eq!(one["label"], "billing-app");
    assert!(one.get("key").is_none(), "the secret is shown once: {one}");

    let created_on_r2 = until_status(&stack, &r2.base, &secret, 200).await;
    eprintln!("key creation visible on the other replica after {created_on_r2:?}");
    // The key works end to end on replica 2 and is billed to its id.
    let (status, body) = call(
        &stack,
        "POST",
        &format!("{}/v1/chat/completions", r2.base),
        Some(&secret),
        Some(chat("hello")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let n = stack
        .wait_count(
            &format!(
                "SELECT count() FROM {{db}}.usage FINAL WHERE key_id = '{id}' AND team = 'team-a'"
            ),
            1,
            WAIT,
        )
        .await;
    assert_eq!(n, 1, "usage billed to the new key's id");

    // A second key that stays active, for the restart check.
    let (status, kept) = admin(
        &stack,
        &r2.base,
        "POST",
        "/admin/keys",
        Some(json!({"team": "team-b"})),
    )
    .await;
    assert_eq!(status, 201, "{kept}");
    let kept_secret = kept["key"].as_str().unwrap().to_string();

    let (answered, seen) = revoke_and_time(&stack, &r1, &r2.base, &id, &secret).await;
    eprintln!("revocation: replica 1 answered after {answered:?}, replica 2 refused the key after {seen:?} (both from the request)");
    let (status, body) = models(&stack, &r1, &secret).await;
    assert_eq!(
        status, 401,
        "revoked on the replica that revoked it: {body}"
    );
    let (_, body) = models(&stack, &r2.base, &secret).await;
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    // Anthropic's endpoint refuses it too, in Anthropic's shape.
    let response = stack
        .http
        .post(format!("{}/v1/messages", r2.base))
        .header("x-api-key", &secret)
        .json(&json!({"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );

    // Revoked keys stay listed, as revoked, on both replicas; never with a secret.
    for base in [&r1, &r2.base] {
        let (status, list) = admin(&stack, base, "GET", "/admin/keys?team=team-a", None).await;
        assert_eq!(status, 200, "{list}");
        let listed = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed on {base}: {list}"));
        assert_eq!(listed["status"], "revoked");
        assert!(!list.to_string().contains(&secret));
        assert!(list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["team"] == "team-a"));
    }

    // More revocations, for the propagation figures in docs/keys.md.
    let mut times = Vec::new();
    let mut creations = Vec::new();
    for _ in 0..10 {
        let sent = Instant::now();
        let (_, k) = admin(
            &stack,
            &r1,
            "POST",
            "/admin/keys",
            Some(json!({"team": "team-a"})),
        )
        .await;
        let (kid, ksecret) = (k["id"].as_str().unwrap(), k["key"].as_str().unwrap());
        until_status(&stack, &r2.base, ksecret, 200).await;
        creations.push(sent.elapsed());
        times.push(revoke_and_time(&stack, &r1, &r2.base, kid, ksecret).await);
    }
    creations.sort();
    eprintln!(
        "10 creations: usable on replica 2 after median {:?} / max {:?} (from the request)",
        creations[5], creations[9]
    );
    let mut seen: Vec<Duration> = times.iter().map(|t| t.1).collect();
    seen.sort();
    let mut answered: Vec<Duration> = times.iter().map(|t| t.0).collect();
    answered.sort();
    eprintln!(
        "10 revocations: replica 2 refused after min {:?} / median {:?} / max {:?}; replica 1 answered after median {:?} / max {:?}",
        seen[0], seen[5], seen[9], answered[5], answered[9]
    );

    // A fresh replica on the same topics knows both keys before it serves anything.
    r2.stop().await;
    let r3 = stack.start_ingress_replica(2).await;
    let (status, body) = models(&stack, &r3.base, &secret).await;
    assert_eq!(
        status, 401,
        "restarted replica still refuses the revoked key: {body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    let (status, body) = models(&stack, &r3.base, &kept_secret).await;
    assert_eq!(
        status, 200,
        "restarted replica knows the key made on another: {body}"
    );
    r3.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_model_lists_rate_limits_and_expiry_are_enforced() {
    let stack = Stack::start(StackOptions {
        extra_models: vec![OTHER_MODEL.into()],
        ..Default::default()
    })
    .await;
    let base = stack.base.clone();
    let (status, created) = admin(
        &stack,
        &base,
        "POST",
        "/admin/keys",
        Some(json!({"team": "team-a", "allowed_models": [OTHER_MODEL]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let old = created["key"].as_str().unwrap().to_string();

    // Allowed models: 403 on every endpoint that takes a model, and /v1/models lists only
    // the allowed ones.
    let (status, body) = stack.post("/v1/chat/completions", &old, chat("hi")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert_eq!(body["error"]["param"], "model");
    let (status, body) = stack.post("/v1/requests", &old, chat("hi")).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("model_not_allowed"))
    );
    let (status, body) = models(&stack, &base, &old).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["data"][0]["id"], OTHER_MODEL);
    assert!(
        body["data"][0].get("sluice").is_none(),
        "no price or context window configured for it: {body}"
    );
    // Sluice's additions, beside OpenAI's fields: the price budgets use, the context window.
    let (status, body) = models(&stack, &base, KEY_A).await;
    assert_eq!(status, 200, "{body}");
    let listed = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == MODEL)
        .unwrap_or_else(|| panic!("{MODEL} listed: {body}"));
    assert_eq!(listed["object"], "model");
    assert_eq!(
        listed["sluice"],
        json!({"price": {"input_per_million": PRICE_IN, "output_per_million": PRICE_OUT},
               "context_window": 128_000})
    );
    let mut other = chat("hi");
    other["model"] = json!(OTHER_MODEL);
    let (status, body) = stack.post("/v1/requests", &old, other).await;
    assert_eq!(status, 202, "{body}");

    // Open it to every model, with a limit of 1 sync request a minute.
    let (status, body) = admin(
        &stack,
        &base,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"allowed_models": [], "requests_per_minute": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["allowed_models"], json!([]));
    let (status, body) = stack.post("/v1/chat/completions", &old, chat("one")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stack.post("/v1/chat/completions", &old, chat("two")).await;
    assert_eq!(status, 429, "{body}");
    // Raising the limit takes effect at once.
    let (status, _) = admin(
        &stack,
        &base,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"requests_per_minute": 100})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = stack
        .post("/v1/chat/completions", &old, chat("three"))
        .await;
    assert_eq!(status, 200, "{body}");

    // Rotation: same id and settings, new secret; the old secret stops working.
    let (status, rotated) = admin(
        &stack,
        &base,
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(rotated["requests_per_minute"], 100);
    let new = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let (status, body) = models(&stack, &base, &old).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(models(&stack, &base, &new).await.0, 200);

    // Expiry: a short TTL runs out, the key says so; clearing the expiry brings it back.
    let (status, body) = admin(
        &stack,
        &base,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"ttl_seconds": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_at"].as_i64().is_some(), "{body}");
    until_status(&stack, &base, &new, 401).await;
    let (_, body) = stack.post("/v1/chat/completions", &new, chat("late")).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    let (_, shown) = admin(&stack, &base, "GET", &format!("/admin/keys/{id}"), None).await;
    assert_eq!(shown["status"], "expired");
    let (status, _) = admin(
        &stack,
        &base,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"expires_at": null})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(models(&stack, &base, &new).await.0, 200);

    // DELETE revokes; revocation is final.
    let (status, body) = admin(&stack, &base, "DELETE", &format!("/admin/keys/{id}"), None).await;
    assert_eq!(
        (status, body["revoked"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (status, body) = admin(
        &stack,
        &base,
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("key_not_changeable")),
        "{body}"
    );
    let (status, body) = models(&stack, &base, &new).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));

    // Config keys are listed but changed in the config only.
    let (status, body) = admin(&stack, &base, "POST", "/admin/keys/key_a/revoke", None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(models(&stack, &base, KEY_A).await.0, 200);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_refuses_bad_credentials_bodies_and_ids() {
    let stack = Stack::start(StackOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let url = format!("{}/admin/keys", stack.base);
    let team = Some(json!({"team": "team-a"}));
    for key in [None, Some("sk-wrong"), Some(KEY_A)] {
        let (status, body) = call(&stack, "POST", &url, key, team.clone()).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        let (status, _) = call(&stack, "GET", &url, key, None).await;
        assert_eq!(status, 401);
    }
    let (_, list) = admin(&stack, &stack.base, "GET", "/admin/keys", None).await;
    let before = list["data"].as_array().unwrap().len();
    assert_eq!(before, 3, "the config keys: {list}");

    for (body, param) in [
        (json!({}), "team"),
        (json!({"team": "no/slash"}), "team"),
        (json!({"team": "team-a", "lable": "typo"}), "lable"),
        (
            json!({"team": "team-a", "allowed_models": ["gpt-9"]}),
            "allowed_models",
        ),
        (
            json!({"team": "team-a", "requests_per_minute": -1}),
            "requests_per_minute",
        ),
        (
            json!({"team": "team-a", "expires_at": 1_000_000}),
            "expires_at",
        ),
        (json!({"team": "team-a", "ttl_seconds": 0}), "ttl_seconds"),
    ] {
        let (status, answer) = admin(
            &stack,
            &stack.base,
            "POST",
            "/admin/keys",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}: {answer}");
    }
    let (status, answer) = call(&stack, "POST", &url, Some(ADMIN_KEY), None).await;
    assert_eq!(status, 400, "empty body: {answer}");
    // Nothing was created by any of them.
    let (_, list) = admin(&stack, &stack.base, "GET", "/admin/keys", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), before);

    for (method, path) in [
        ("GET", "/admin/keys/key_missing"),
        ("PATCH", "/admin/keys/key_missing"),
        ("POST", "/admin/keys/key_missing/rotate"),
        ("POST", "/admin/keys/key_missing/revoke"),
        ("DELETE", "/admin/keys/key_missing"),
    ] {
        let body = (method == "PATCH").then(|| json!({"label": "x"}));
        let (status, answer) = admin(&stack, &stack.base, method, path, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "key_not_found");
    }
    stack.stop().await;
}

/// The demo keys are published: the real binary refuses to start with them unless told it
/// runs a demo (`--demo`, as scripts/run.sh and the Python tests pass).
#[test]
fn the_ingress_binary_refuses_the_published_demo_keys_without_demo() {
    let output = std::process::Command::new(workspace_bin("sluice-ingress"))
        .arg("--config")
        .arg(repo_root().join("config/ingress.toml"))
        // Nothing listens here: the refusal comes before any connection.
        .env("SLUICE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .env_remove("SLUICE_DEMO")
        .output()
        .expect("runs sluice-ingress");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("`keys[0].sha256` is the digest of the published demo key `sk-sluice-demo`"),
        "{stderr}"
    );
    assert!(stderr.contains("--demo"), "{stderr}");
}
