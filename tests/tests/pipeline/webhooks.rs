//! Webhooks as an attacker with a tenant key would use them (issue #14): pointing them at
//! ClickHouse's HTTP interface or any other internal address, and forging another team's
//! events. Real Kafka and ClickHouse; the receivers are local and allow-listed by port.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_schemas::webhook::{sign, verify, Secret};

use crate::batch::{line, upload};
use crate::common::*;

const SECRET_A: &str = "whsec_dGVhbS1hLXdlYmhvb2stc2VjcmV0";
const SECRET_B: &str = "whsec_dGVhbS1iLXdlYmhvb2stc2VjcmV0";
const WAIT: Duration = Duration::from_secs(60);

/// Team A's receiver: accepts (204) only events signed with team A's secret, 401 otherwise.
async fn receiver_of_team_a() -> (String, Deliveries) {
    webhook_receiver(SECRET_A, |_, valid| {
        if valid {
            axum::http::StatusCode::NO_CONTENT
        } else {
            axum::http::StatusCode::UNAUTHORIZED
        }
    })
    .await
}

/// `base/?query=<sql>`, percent-encoded (`%20`, not `+`: ClickHouse reads the query raw).
fn clickhouse_query_url(base: &str, sql: &str) -> String {
    reqwest::Url::parse_with_params(&format!("{base}/"), [("query", sql)])
        .unwrap()
        .to_string()
        .replace('+', "%20")
}

fn assert_refused(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 400, "{what}: {body}");
    assert_eq!(
        body["error"]["type"], "invalid_request_error",
        "{what}: {body}"
    );
    assert_eq!(
        body["error"]["param"], "sluice.webhook_url",
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_cannot_point_a_webhook_at_clickhouse_or_any_internal_address() {
    let (receiver, received) = receiver_of_team_a().await;
    let stack = Stack::start(StackOptions {
        // Team A may register webhooks; team B has no secret. Only the receiver's exact
        // port is opened, not ClickHouse's on the same host.
        webhooks_toml: format!(
            "allowed_hosts = [\"{}\"]\n[teams.team-a]\nsecret = \"{SECRET_A}\"\n",
            host_port(&receiver)
        ),
        ..StackOptions::default()
    })
    .await;
    let ch = clickhouse_url();
    let db = &stack.database;
    let metadata = json!({"note": "*/ -- "});

    // Control: the attack is real on this ClickHouse. The event body a Sluice webhook
    // posts, with the caller's metadata closing the query's comment, creates a table. (The
    // passwordless `default` user is locked by scripts/services.sh, a second wall: the
    // control posts as the DDL user the tests run as, which is what a webhook would reach
    // on a ClickHouse that still has an open `default`.)
    let control = clickhouse_query_url(
        &ch,
        &format!("CREATE TABLE {db}.probe_control (x UInt8) ENGINE = Memory /*"),
    );
    let event = json!({"type": "batch.completed", "timestamp": "2026-01-01T00:00:00Z",
                       "data": {"id": "batch_x", "metadata": metadata}});
    let mut control_post = stack.http.post(&control).body(event.to_string());
    if let Some(user) = clickhouse_user() {
        control_post = control_post.header("X-ClickHouse-User", user);
    }
    if let Some(password) = clickhouse_password() {
        control_post = control_post.header("X-ClickHouse-Key", password);
    }
    let answer = control_post.send().await.unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text().await);
    assert_eq!(
        stack.ch("EXISTS TABLE {db}.probe_control").await.trim(),
        "1",
        "the direct POST runs the query: the test can fail"
    );

    // The attack from the issue, through every route that takes a webhook.
    let attack = clickhouse_query_url(
        &ch,
        &format!("CREATE TABLE {db}.probe (x UInt8) ENGINE = Memory /*"),
    );
    let (status, file) = upload(&stack, KEY_A, "batch", &line("p-1", "hi")).await;
    assert_eq!(status, 200, "{file}");
    let (status, body) = stack
        .post(
            "/v1/batches",
            KEY_A,
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                   "completion_window": "24h", "metadata": metadata,
                   "sluice": {"webhook_url": attack}}),
        )
        .await;
    assert_refused(status, &body, "batch webhook to ClickHouse");
    let mut request = chat("hi");
    request["sluice"] = json!({"webhook_url": attack});
    let (status, body) = stack.post("/v1/requests", KEY_A, request).await;
    assert_refused(status, &body, "async-request webhook to ClickHouse");
    let (status, body) = stack
        .post(
            "/v1/messages/batches",
            KEY_A,
            json!({"requests": [{"custom_id": "p-1", "params": {"model": MODEL, "max_tokens": 16,
                     "messages": [{"role": "user", "content": "hi"}]}}],
                   "sluice": {"webhook_url": attack}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error", "Anthropic's error shape: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sluice.webhook_url")),
        "{body}"
    );

    // Every other internal address, in the forms a URL parser accepts, and names that
    // resolve to loopback: refused at submission, on both APIs.
    let port = 18123;
    let internal = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.0.0.1:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://localhost.:{port}/"),
        format!("http://LOCALHOST:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://[::ffff:7f00:1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_string(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://172.16.5.4/".to_string(),
        "http://192.168.0.1/".to_string(),
        "http://100.64.0.1/".to_string(),
        "http://[fe80::1]/".to_string(),
        "http://[fc00::1]/".to_string(),
        "http://224.0.0.1/".to_string(),
        "http://[64:ff9b::7f00:1]/".to_string(),
        "http://[2002:7f00:1::1]/".to_string(),
        // Userinfo and other schemes.
        format!("http://{}@example.com/", host_port(&receiver)),
        "https://user:pass@example.com/".to_string(),
        "file:///etc/passwd".to_string(),
        "gopher://127.0.0.1:9000/".to_string(),
        // The allow-listed receiver's host, on another port.
        format!("http://127.0.0.1:{}/", port + 1),
    ];
    for url in &internal {
        let mut request = chat("hi");
        request["sluice"] = json!({"webhook_url": url});
        let (status, body) = stack.post("/v1/requests", KEY_A, request).await;
        assert_refused(status, &body, url);
    }
    for url in internal.iter().step_by(3) {
        let (status, body) = stack
            .post(
                "/v1/batches",
                KEY_A,
                json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                       "completion_window": "24h", "sluice": {"webhook_url": url}}),
            )
            .await;
        assert_refused(status, &body, url);
    }

    // A team without a signing secret cannot register one, even to an allowed receiver.
    let mut request = chat("hi");
    request["sluice"] = json!({"webhook_url": receiver});
    let (status, body) = stack.post("/v1/requests", KEY_B, request).await;
    assert_refused(status, &body, "team without a secret");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("signing secret")),
        "{body}"
    );

    // Nothing was accepted, so nothing can be sent later: no batch, no table.
    let (status, list) = stack.get("/v1/batches", KEY_A).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"], json!([]), "no batch was created");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.ch("EXISTS TABLE {db}.probe").await.trim(), "0");
    assert_eq!(stack.mock.call_count(), 0, "no refused request ran");
    assert!(received.lock().unwrap().is_empty());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_team_signs_with_its_own_secret_and_team_a_rejects_team_b_forgery() {
    let (receiver, received) = receiver_of_team_a().await;
    let stack = Stack::start(StackOptions {
        webhooks_toml: format!(
            "allowed_hosts = [\"{}\"]\n[teams.team-a]\nsecret = \"{SECRET_A}\"\n\
             [teams.team-b]\nsecret = \"{SECRET_B}\"\n",
            host_port(&receiver)
        ),
        ..StackOptions::default()
    })
    .await;
    let submit = |key: &'static str| {
        let mut request = chat("hi");
        request["sluice"] = json!({"webhook_url": receiver});
        let stack = &stack;
        async move {
            let (status, body) = stack.post("/v1/requests", key, request).await;
            assert_eq!(status, 202, "{body}");
            body["id"].as_str().unwrap().to_string()
        }
    };
    let id_a = submit(KEY_A).await;
    // Team B points its webhook at team A's receiver: its events are signed with its own
    // secret, which team A's receiver does not accept.
    let id_b = submit(KEY_B).await;
    let all = eventually(WAIT, || async {
        let all = received.lock().unwrap().clone();
        let has = |id: &str| all.iter().any(|d| d.id == id);
        (has(&id_a) && has(&id_b)).then_some(all)
    })
    .await
    .expect("both events delivered");
    let secret_b = Secret::parse(SECRET_B).unwrap();
    let of = |id: &str| all.iter().find(|d| d.id == id).unwrap();
    let Delivery {
        valid: valid_a,
        headers: headers_a,
        body: body_a,
        ..
    } = of(&id_a);
    assert!(valid_a, "team A's own event carries team A's signature");
    let event: Value = serde_json::from_str(body_a).unwrap();
    assert_eq!(event["data"]["id"], id_a.as_str());
    let ts = |h: &axum::http::HeaderMap| -> i64 {
        h["webhook-timestamp"].to_str().unwrap().parse().unwrap()
    };
    let sig = |h: &axum::http::HeaderMap| h["webhook-signature"].to_str().unwrap().to_string();
    assert!(
        !verify(
            &secret_b,
            &id_a,
            ts(headers_a),
            body_a.as_bytes(),
            &sig(headers_a)
        ),
        "team A's signature is not team B's"
    );
    let Delivery {
        valid: valid_b,
        headers: headers_b,
        body: body_b,
        ..
    } = of(&id_b);
    assert!(!valid_b, "team A's receiver rejected team B's event");
    assert!(
        verify(
            &secret_b,
            &id_b,
            ts(headers_b),
            body_b.as_bytes(),
            &sig(headers_b)
        ),
        "team B's event is signed, with team B's secret"
    );
    // 401 is final: the forgery was not retried into acceptance.
    assert_eq!(all.iter().filter(|d| d.id == id_b).count(), 1);

    // A forgery team B can make by hand (its secret, an event naming team A's request)
    // is rejected the same way.
    let forged = json!({"type": "request.completed", "timestamp": "2026-01-01T00:00:00Z",
                        "data": {"id": id_a, "status": "completed"}})
    .to_string();
    let now = 1_800_000_000;
    let answer = stack
        .http
        .post(&receiver)
        .header("webhook-id", format!("{id_a}-forged"))
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            sign(&secret_b, &format!("{id_a}-forged"), now, forged.as_bytes()),
        )
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    stack.stop().await;
}
