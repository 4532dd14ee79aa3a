//! Data residency end to end: `[[residency]]` in the worker cuts a request's chain to the
//! deployments in its team's allowed locations, fallbacks included, and refuses with a 503
//! naming the rule when none is left.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Failure, MockProvider};

use crate::common::*;

fn worker_toml(eu: &MockProvider) -> String {
    format!(
        r#"
[[deployments]]
name = "us-primary"
model = "resident"
location = "us-east"
max_retries = 0
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[[deployments]]
name = "eu-fallback"
model = "resident"
location = "eu-west"
weight = 0
max_retries = 0
provider = {{ type = "openai", base_url = "{eu}/v1" }}

[[deployments]]
name = "us-only"
model = "us-only"
location = "us-east"
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[[residency]]
team = "team-a"
allowed_locations = ["eu-*", "on-prem"]

[pricing]
free_models = ["resident", "us-only"]
"#,
        eu = eu.origin(),
    )
}

async fn call(stack: &Stack, key: &str, model: &str) -> (u16, Value, String) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "where am I"}]});
    stack.chat_with_id(key, &body).await
}

async fn served_by(stack: &Stack, request_id: &str) -> String {
    stack
        .result_row(request_id, "status, http_status, deployment, fallbacks")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_team_bound_to_a_region_never_leaves_it_even_on_fallback() {
    let eu = MockProvider::start(Behaviour::default()).await.unwrap();
    let stack = Stack::start(StackOptions {
        extra_worker_toml: worker_toml(&eu),
        extra_models: vec!["resident".into(), "us-only".into()],
        ..StackOptions::default()
    })
    .await;

    // Team A may run in eu-* only: the EU fallback serves it first; the US primary is skipped.
    let (status, body, id) = call(&stack, KEY_A, "resident").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        served_by(&stack, &id).await,
        "completed\t200\teu-fallback\t0"
    );
    assert_eq!((stack.mock.call_count(), eu.call_count()), (0, 1));
    // Where it ran: in the result, and in the audit trail.
    assert_eq!(stack.result_row(&id, "location").await, "eu-west");
    let audit = format!(
        "SELECT policy FROM {{db}}.audit FINAL WHERE request_id = '{id}' AND action = 'completed'"
    );
    let policy = eventually(Duration::from_secs(60), || async {
        Some(stack.ch(&audit).await.trim().to_string()).filter(|p| !p.is_empty())
    })
    .await;
    assert_eq!(policy.as_deref(), Some("location:eu-west"));

    // Team B has no rule: the primary, as configured.
    let (status, body, id) = call(&stack, KEY_B, "resident").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        served_by(&stack, &id).await,
        "completed\t200\tus-primary\t0"
    );
    assert_eq!((stack.mock.call_count(), eu.call_count()), (1, 1));

    // The EU deployment fails: team A gets its error; the fallback chain stops at the
    // border and the US deployment is never called.
    eu.fail_next([Failure::server_error()]);
    let (status, body, id) = call(&stack, KEY_A, "resident").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(served_by(&stack, &id).await, "failed\t500\teu-fallback\t0");
    assert_eq!((stack.mock.call_count(), eu.call_count()), (1, 2));

    // A model served only outside team A's locations: a 503 naming the rule, no call.
    let (status, body, id) = call(&stack, KEY_A, "us-only").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "location_not_allowed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("team \"team-a\": eu-*, on-prem") && message.contains("`us-only`"),
        "{message}"
    );
    assert!(served_by(&stack, &id).await.starts_with("failed\t503"));
    assert_eq!((stack.mock.call_count(), eu.call_count()), (1, 2));
    // Team B may use it.
    let (status, body, _) = call(&stack, KEY_B, "us-only").await;
    assert_eq!(status, 200, "{body}");
    stack.stop().await;
}
