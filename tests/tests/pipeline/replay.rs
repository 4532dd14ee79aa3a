//! Replay and shadow traffic (docs/replay.md): recorded requests re-run against another
//! model land in the replay tables at the candidate's exact price and nowhere else; a team
//! whose policy forbids it is never replayed; a replay stops at its own budget; a shadow
//! copies live requests without the caller seeing or paying for them.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, MockProvider};

use crate::common::*;

const CANDIDATE: &str = "candidate";
const WAIT: Duration = Duration::from_secs(90);

/// The candidate: an Anthropic-format deployment of its own mock, $1 / $4 per million.
fn candidate_toml(candidate: &MockProvider) -> String {
    format!(
        r#"
[[deployments]]
name = "candidate-anthropic"
model = "{CANDIDATE}"
max_retries = 0
provider = {{ type = "anthropic", base_url = "{origin}" }}

[[prices]]
model = "{CANDIDATE}"
input_per_million = 1.0
output_per_million = 4.0
"#,
        origin = candidate.origin(),
    )
}

fn ingress_prices(config: &mut sluice_ingress::Config) {
    config.prices.push(candidate_price());
    config.replay.forbidden_teams = vec!["team-b".into()];
}

fn candidate_price() -> sluice_schemas::pricing::Price {
    sluice_schemas::pricing::Price {
        model: CANDIDATE.into(),
        input_per_million: 1.0,
        output_per_million: 4.0,
        cached_input_per_million: None,
    }
}

async fn stack_with(candidate: &MockProvider, config: fn(&mut sluice_ingress::Config)) -> Stack {
    Stack::start(StackOptions {
        extra_worker_toml: candidate_toml(candidate),
        extra_models: vec![CANDIDATE.into()],
        ingress_config: Some(config),
        ..StackOptions::default()
    })
    .await
}

async fn admin(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = stack
        .http
        .request(method, format!("{}{path}", stack.base))
        .bearer_auth(ADMIN_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json_answer(request).await
}

/// Polls the replay until it is no longer running; its last progress.
async fn finished(stack: &Stack, id: &str) -> Value {
    eventually(WAIT, || async {
        let (status, progress) = admin(
            stack,
            reqwest::Method::GET,
            &format!("/admin/replays/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{progress}");
        (progress["state"] != "running").then_some(progress)
    })
    .await
    .expect("the replay ends")
}

fn count(text: String) -> u64 {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("a count, got {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_mixed_hour_costs_the_candidates_price_in_the_replay_tables_only() {
    let candidate = MockProvider::start(Behaviour::default()).await.unwrap();
    let stack = stack_with(&candidate, ingress_prices).await;
    let from_ms = sluice_schemas::now_ms() - 1;

    // The hour: team A's sync calls, a stream and async requests; team B's sync calls.
    for i in 0..3 {
        let (status, body, _) = stack.chat_with_id(KEY_A, &chat(&format!("sync {i}"))).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut stream = chat("a stream");
    stream["stream"] = json!(true);
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.text().await.unwrap().contains("[DONE]"));
    stack.submit_many(2, KEY_A).await;
    for i in 0..2 {
        let (status, body, _) = stack
            .chat_with_id(KEY_B, &chat(&format!("team b {i}")))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let live = "SELECT count() FROM {db}.usage FINAL";
    assert_eq!(stack.wait_count(live, 8, WAIT).await, 8);
    let to_ms = sluice_schemas::now_ms() + 1;
    let live_state = "SELECT count(), sum(cost_nanos) FROM {db}.usage FINAL";
    let (usage_before, results_before, attempts_before) = (
        stack.ch(live_state).await,
        count(stack.ch("SELECT count() FROM {db}.results FINAL").await),
        count(stack.ch("SELECT count() FROM {db}.attempts FINAL").await),
    );
    assert_eq!(stack.mock.call_count(), 8);
    assert_eq!(candidate.call_count(), 0);

    // Bad inputs first: each is refused in the API's shape, and nothing starts.
    let (status, body) = admin(
        &stack,
        reqwest::Method::POST,
        "/admin/replays",
        Some(json!({"from_ms": from_ms, "to_ms": to_ms, "target_model": "gpt-9", "budget_usd": 1})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("target_model")),
        "{body}"
    );
    let (status, body) = admin(&stack, reqwest::Method::POST, "/admin/replays",
        Some(json!({"from_ms": from_ms, "to_ms": to_ms, "target_model": CANDIDATE, "budget_usd": 1, "team": "team-b"}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("replay_forbidden")),
        "{body}"
    );
    let (status, body) = admin(&stack, reqwest::Method::POST, "/admin/replays",
        Some(json!({"from_ms": from_ms, "to_ms": to_ms, "target_model": CANDIDATE, "budget_usd": 1, "bill_to": "x"}))).await;
    assert_eq!(status, 400, "an unknown field: {body}");
    let (status, _) = json_answer(stack.http.post(format!("{}/admin/replays", stack.base)).bearer_auth(KEY_A)
        .json(&json!({"from_ms": from_ms, "to_ms": to_ms, "target_model": CANDIDATE, "budget_usd": 1}))).await;
    assert_eq!(status, 401, "a tenant's key is not the admin key");
    let (status, _) = admin(&stack, reqwest::Method::GET, "/admin/replays/rp_nope", None).await;
    assert_eq!(status, 404);

    // The replay: every request of the hour but team B's (its policy forbids replay).
    let (status, started) = admin(
        &stack,
        reqwest::Method::POST,
        "/admin/replays",
        Some(
            json!({"replay_id": "rp_hour", "from_ms": from_ms, "to_ms": to_ms,
                    "target_model": CANDIDATE, "budget_usd": 1, "rate_per_s": 20}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let progress = finished(&stack, "rp_hour").await;
    assert_eq!(progress["state"], "done", "{progress}");
    assert_eq!(
        (
            progress["replayed"].as_u64(),
            progress["forbidden"].as_u64()
        ),
        (Some(6), Some(2)),
        "{progress}"
    );
    let (status, again) = admin(&stack, reqwest::Method::POST, "/admin/replays",
        Some(json!({"replay_id": "rp_hour", "from_ms": from_ms, "to_ms": to_ms, "target_model": CANDIDATE, "budget_usd": 1}))).await;
    assert_eq!(
        (status, again["error"]["param"].as_str()),
        (400, Some("replay_id")),
        "an id is used once"
    );

    let replayed = "SELECT count() FROM {db}.replay_usage FINAL WHERE replay_id = 'rp_hour'";
    assert_eq!(stack.wait_count(replayed, 6, WAIT).await, 6);
    assert_eq!(
        count(stack.ch("SELECT count() FROM {db}.replay_results FINAL WHERE replay_id = 'rp_hour' AND status = 'completed'").await),
        6
    );
    // Exactly the candidate's price for what its provider reported, call by call.
    let calls = candidate.calls();
    assert_eq!(calls.len(), 6, "one call per replayed request");
    let expected: i64 = calls
        .iter()
        .map(|c| i64::from(c.prompt_tokens) * 1_000 + i64::from(c.completion_tokens) * 4_000)
        .sum();
    let cost = stack
        .ch("SELECT sum(cost_nanos) FROM {db}.replay_usage FINAL WHERE replay_id = 'rp_hour'")
        .await;
    assert_eq!(cost.trim().parse::<i64>().unwrap(), expected);
    assert!(expected > 0);
    assert!(calls
        .iter()
        .all(|c| c.model.as_deref() == Some(CANDIDATE) && !c.stream));
    // Only team A's requests, each tied to its original.
    let pairs = stack.ch("SELECT countIf(team = 'team-a'), countIf(request_id = concat('rp_hour.', original_request_id)) FROM {db}.replay_results FINAL").await;
    assert_eq!(pairs.trim(), "6\t6");

    // The live tables and the live provider saw nothing of it; no team is billed for it.
    assert_eq!(stack.ch(live_state).await, usage_before);
    assert_eq!(
        count(stack.ch("SELECT count() FROM {db}.results FINAL").await),
        results_before
    );
    assert_eq!(
        count(stack.ch("SELECT count() FROM {db}.attempts FINAL").await),
        attempts_before
    );
    for table in ["results", "usage", "attempts"] {
        let sql = format!("SELECT count() FROM {{db}}.{table} WHERE request_id LIKE 'rp_hour.%'");
        assert_eq!(count(stack.ch(&sql).await), 0, "{table}");
    }
    assert_eq!(stack.mock.call_count(), 8);
    // The audit trail says where each prompt went.
    let audited = "SELECT count() FROM {db}.audit FINAL WHERE action = 'completed' AND policy LIKE 'replay:rp_hour%'";
    assert_eq!(stack.wait_count(audited, 6, WAIT).await, 6);

    // The comparison, per replay: six originals and six re-runs, both completed, costs apart.
    let summary = stack
        .ch("SELECT requests, original_completed, replay_completed, replay_cost_nanos, original_cost_nanos > 0 FROM {db}.replay_summary WHERE replay_id = 'rp_hour'")
        .await;
    assert_eq!(summary.trim(), format!("6\t6\t6\t{expected}\t1"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_replays_within_its_budget_and_stops_at_it() {
    let candidate = MockProvider::start(Behaviour::default()).await.unwrap();
    let stack = stack_with(&candidate, ingress_prices).await;
    let from_ms = sluice_schemas::now_ms() - 1;
    stack.submit_many(5, KEY_A).await;
    let live = "SELECT count() FROM {db}.usage FINAL";
    assert_eq!(stack.wait_count(live, 5, WAIT).await, 5);

    let config = std::env::temp_dir().join(format!("{}-replay.toml", stack.prefix));
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap = \"{}\"\ntopic_prefix = \"{}\"\n\n[[models]]\nid = \"{MODEL}\"\n\n[[models]]\nid = \"{CANDIDATE}\"\n\n[[prices]]\nmodel = \"{CANDIDATE}\"\ninput_per_million = 1.0\noutput_per_million = 4.0\n",
            stack.bootstrap, stack.prefix
        ),
    )
    .unwrap();
    // One copy's worst case: its counted prompt and its completion cap at the candidate's
    // price. A budget of two and a half of them lets two go, never a third.
    let prompt: i64 = stack
        .ch("SELECT max(prompt_tokens) FROM {db}.audit FINAL WHERE action = 'accepted'")
        .await
        .trim()
        .parse()
        .unwrap();
    let cap = i64::from(stack.ingress_config.budget.default_completion_tokens);
    let worst = prompt * 1_000 + cap * 4_000;
    let budget_usd = (worst * 5 / 2) as f64 / 1e9;
    let run = |extra: &[&str]| {
        let mut command = std::process::Command::new(workspace_bin("sluice-replay"));
        command
            .arg("--config")
            .arg(&config)
            .args([
                "--from",
                &from_ms.to_string(),
                "--target-model",
                CANDIDATE,
                "--id",
                "rp_cli",
                "--rate",
                "50",
            ])
            .args(extra)
            .env_remove("SLUICE_CONFIG");
        command.output().unwrap()
    };
    let out = run(&["--budget-usd", &budget_usd.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progress: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            progress["state"].as_str(),
            progress["stopped_because"].as_str()
        ),
        (Some("stopped"), Some("budget")),
        "{progress}"
    );
    assert_eq!(progress["replayed"], 2, "{progress}");
    assert!(
        progress["reserved_nanos"].as_i64().unwrap() <= progress["budget_nanos"].as_i64().unwrap()
    );
    let replayed = "SELECT count() FROM {db}.replay_usage FINAL WHERE replay_id = 'rp_cli'";
    assert_eq!(stack.wait_count(replayed, 2, WAIT).await, 2);
    let spent: i64 = stack
        .ch("SELECT sum(cost_nanos) FROM {db}.replay_usage FINAL WHERE replay_id = 'rp_cli'")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(spent > 0 && spent <= (budget_usd * 1e9) as i64, "{spent}");

    // Bad input: a clear error, nothing published.
    let out = run(&["--budget-usd=-1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("budget_usd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--budget-usd", "1", "--to", "soon"]);
    assert!(!out.status.success());
    assert_eq!(candidate.call_count(), 2);
    std::fs::remove_file(&config).ok();
    stack.stop().await;
}

fn shadow_everything(config: &mut sluice_ingress::Config) {
    config.prices.push(candidate_price());
    config.shadows = vec![sluice_ingress::config::ShadowConfig {
        name: "cand".into(),
        model: MODEL.into(),
        target_model: CANDIDATE.into(),
        percent: 100.0,
        teams: vec!["team-a".into()],
    }];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_copies_live_requests_without_the_caller_seeing_or_paying() {
    let candidate = MockProvider::start(Behaviour::default()).await.unwrap();
    let stack = stack_with(&candidate, shadow_everything).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let (status, body, id) = stack.chat_with_id(KEY_A, &chat(&format!("live {i}"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["model"], MODEL,
            "the caller's answer is the live model's"
        );
        ids.push(id);
    }
    // Another team is not in the shadow's teams.
    let (status, _, _) = stack.chat_with_id(KEY_B, &chat("not shadowed")).await;
    assert_eq!(status, 200);
    let shadowed = "SELECT count() FROM {db}.replay_results FINAL WHERE replay_id = 'shadow-cand'";
    assert_eq!(stack.wait_count(shadowed, 4, WAIT).await, 4);
    let originals = stack.ch("SELECT arraySort(groupArray(original_request_id)) FROM {db}.replay_results FINAL WHERE replay_id = 'shadow-cand'").await;
    ids.sort();
    assert_eq!(originals.trim(), format!("['{}']", ids.join("','")));
    assert_eq!(
        stack
            .wait_count("SELECT count() FROM {db}.replay_usage FINAL", 4, WAIT)
            .await,
        4
    );
    // The live usage is the callers' five requests only, at the live model's price.
    assert_eq!(
        stack
            .wait_count("SELECT count() FROM {db}.usage FINAL", 5, WAIT)
            .await,
        5
    );
    let live = stack
        .ch("SELECT count(), countIf(model = 'candidate') FROM {db}.usage FINAL")
        .await;
    assert_eq!(live.trim(), "5\t0");
    assert_eq!((stack.mock.call_count(), candidate.call_count()), (5, 4));

    // The attack: a caller dressing its request as a copy to be served and not billed. The
    // tag is no option a caller has: asked for, it is refused by name; in metadata it is a
    // label, and the request is live, billed like any other.
    let mut dressed = chat("bill me not");
    dressed["sluice"] = json!({"replay": {"replay_id": "shadow-cand", "original_request_id": "x"}});
    let (status, body) = stack.post("/v1/chat/completions", KEY_B, dressed).await;
    assert_eq!(status, 400, "{body}");
    let mut labelled = chat("bill me not");
    labelled["metadata"] = json!({"replay": "shadow-cand", "replay_id": "shadow-cand"});
    let (status, body, id) = stack.chat_with_id(KEY_B, &labelled).await;
    assert_eq!(status, 200, "{body}");
    let billed = stack.usage_row(&id, "team, cost_nanos > 0").await;
    assert_eq!(billed, "team-b\t1");
    let copies = format!("SELECT count() FROM {{db}}.replay_results WHERE original_request_id = '{id}' OR request_id = '{id}'");
    assert_eq!(count(stack.ch(&copies).await), 0);
    stack.stop().await;
}
