//! Cost governance end to end (docs/analytics.md): what ClickHouse bills equals the tokens the
//! provider reported times the configured prices, to the nano-USD, per team and model; every
//! outcome leaves an audit row; audit content follows each team's policy.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sluice_tests::mock::{Behaviour, Failure, Latency, RecordedCall};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(90);

/// Three priced models besides MODEL, one of them behind an alias, on two provider kinds.
const MODELS_TOML: &str = r#"
[[deployments]]
name = "mock-gpt-4o"
model = "gpt-4o"
provider = { type = "openai", base_url = "{origin}/v1" }

[[deployments]]
name = "anthropic-claude"
model = "claude"
provider = { type = "anthropic", base_url = "{origin}", model = "claude-sonnet-4-5" }

[[routes]]
name = "smart"
models = ["claude"]

[[prices]]
model = "gpt-4o"
input_per_million = 2.5
output_per_million = 10.0
cached_input_per_million = 1.25

[[prices]]
model = "claude"
input_per_million = 3.0
output_per_million = 15.0
"#;

/// nano-USD per (input, cached input, output) token, written out independently of the
/// worker's price table: $1 per million tokens = 1,000 nano-USD per token.
fn price_nanos(model: &str) -> (i64, i64, i64) {
    match model {
        // No cached price configured: cached input costs the input price.
        MODEL => (150, 150, 600),
        "gpt-4o" => (2_500, 1_250, 10_000),
        // The alias is billed at the price of the model that served it.
        "claude" | "smart" => (3_000, 3_000, 15_000),
        other => panic!("no price for {other}"),
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The one provider call whose body carries `marker`.
fn call_with<'a>(calls: &'a [RecordedCall], marker: &str) -> &'a RecordedCall {
    let found: Vec<&RecordedCall> = calls
        .iter()
        .filter(|c| String::from_utf8_lossy(&c.raw_body).contains(marker))
        .collect();
    assert_eq!(found.len(), 1, "one provider call for {marker}");
    found[0]
}

fn rows(tsv: &str) -> Vec<Vec<String>> {
    tsv.lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_workload_is_billed_exactly_per_team_and_model() {
    let stack = Stack::start(StackOptions {
        extra_worker_toml: MODELS_TOML.into(),
        extra_models: vec!["gpt-4o".into(), "claude".into(), "smart".into()],
        behaviour: Behaviour {
            completion_tokens: 24,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;

    // 40 requests: 4 models (one an alias), 2 teams, sync, streamed and async.
    let models = [MODEL, "gpt-4o", "claude", "smart"];
    let mut sent = Vec::new();
    for i in 0..40usize {
        let model = models[i % 4];
        let (key, team) = if (i / 4) % 2 == 0 {
            (KEY_A, "team-a")
        } else {
            (KEY_B, "team-b")
        };
        let marker = format!("govmarker{i:03}x");
        // Prompts of different lengths, so token counts differ between requests.
        let text = format!("{marker} {}", "budget ".repeat(i % 7));
        let mut body = ask(model, &text);
        if i % 3 == 1 {
            body["max_tokens"] = json!(5 + i);
        }
        // The OpenAI mock reports half the prompt as cached when asked to use the cache.
        let cached = (i / 2) % 2 == 0 && (model == MODEL || model == "gpt-4o");
        if cached {
            body["prompt_cache_key"] = json!("governance");
        }
        let (status, answer) = match i % 5 {
            0 | 1 => stack.post("/v1/chat/completions", key, body).await,
            2 => {
                body["stream"] = json!(true);
                stack.post("/v1/chat/completions", key, body).await
            }
            _ => stack.post("/v1/requests", key, body).await,
        };
        assert!(status == 200 || status == 202, "{i}: {status} {answer}");
        sent.push((marker, team, model, cached));
    }
    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 40, WAIT)
        .await;
    assert_eq!(n, 40);

    // What the provider reported, priced here.
    let calls = stack.mock.calls();
    assert_eq!(calls.len(), 40, "one provider call per request");
    let mut want: BTreeMap<(String, String), (u64, i64)> = BTreeMap::new();
    let mut want_team: BTreeMap<String, i64> = BTreeMap::new();
    let mut want_model: BTreeMap<String, i64> = BTreeMap::new();
    let mut total = 0i64;
    let mut total_cached = 0i64;
    for (marker, team, model, cached) in &sent {
        let call = call_with(&calls, marker);
        assert!(
            call.prompt_tokens > 0 && call.completion_tokens > 0,
            "{marker}"
        );
        let (input, cached_input, output) = price_nanos(model);
        let prompt = i64::from(call.prompt_tokens);
        let cached = if *cached { prompt / 2 } else { 0 };
        total_cached += cached;
        let cost = (prompt - cached) * input
            + cached * cached_input
            + i64::from(call.completion_tokens) * output;
        let entry = want
            .entry((team.to_string(), model.to_string()))
            .or_default();
        entry.0 += 1;
        entry.1 += cost;
        *want_team.entry(team.to_string()).or_default() += cost;
        *want_model.entry(model.to_string()).or_default() += cost;
        total += cost;
    }

    let billed = stack
        .ch("SELECT team, model, count(), sum(cost_nanos), sum(estimated) FROM {db}.usage FINAL GROUP BY team, model ORDER BY team, model")
        .await;
    let got: BTreeMap<(String, String), (u64, i64)> = rows(&billed)
        .into_iter()
        .map(|r| {
            assert_eq!(r[4], "0", "provider-reported tokens, not estimates: {r:?}");
            (
                (r[0].clone(), r[1].clone()),
                (r[2].parse().unwrap(), r[3].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(got, want, "billed per team and model (count, nano-USD)");
    assert_eq!(got.len(), 8, "2 teams x 4 models");
    let cached = stack
        .ch("SELECT sum(cached_tokens) FROM {db}.usage FINAL")
        .await;
    assert!(total_cached > 0);
    assert_eq!(
        cached.trim(),
        total_cached.to_string(),
        "cached prompt tokens billed"
    );

    // The analyst views agree, exactly.
    let by_team = stack
        .ch("SELECT team, sum(cost_nanos) FROM {db}.spend_by_team_day GROUP BY team ORDER BY team")
        .await;
    let want_lines: Vec<String> = want_team.iter().map(|(t, c)| format!("{t}\t{c}")).collect();
    assert_eq!(by_team.lines().collect::<Vec<_>>(), want_lines);
    let by_model = stack
        .ch("SELECT model, sum(cost_nanos) FROM {db}.spend_by_model_day GROUP BY model ORDER BY model")
        .await;
    let want_lines: Vec<String> = want_model
        .iter()
        .map(|(m, c)| format!("{m}\t{c}"))
        .collect();
    assert_eq!(by_model.lines().collect::<Vec<_>>(), want_lines);
    let hourly = stack
        .ch("SELECT sum(cost_nanos) FROM {db}.spend_by_key_hour")
        .await;
    assert_eq!(hourly.trim(), total.to_string());
    // The alias was served by claude's deployment, and billed at its price.
    let alias = stack
        .ch("SELECT provider, requests FROM {db}.spend_by_model_hour WHERE model = 'smart'")
        .await;
    assert_eq!(alias.trim(), "anthropic\t10");
    let alias = stack
        .ch("SELECT DISTINCT provider, deployment FROM {db}.usage FINAL WHERE model = 'smart'")
        .await;
    assert_eq!(alias.trim(), "anthropic\tanthropic-claude");

    // The audit trail counts each request's cost once (on its terminal event).
    let terminal = stack
        .wait_count(
            "SELECT count() FROM {db}.audit FINAL WHERE action = 'completed'",
            40,
            WAIT,
        )
        .await;
    assert_eq!(terminal, 40);
    let trail = stack
        .ch("SELECT sum(cost_nanos), countIf(cost_nanos > 0), countIf(action = 'accepted' AND cost_nanos = 0) FROM {db}.audit_trail")
        .await;
    assert_eq!(trail.trim(), format!("{total}\t40\t40"));
    stack.stop().await;
}

/// Team A's guardrails for the audit tests: a deny rule and e-mail redaction.
const GUARD: &str = r#"
[teams.team-a]
deny = [{ id = "codename", pattern = "(?i)project\\s+falcon" }]
[teams.team-a.pii]
email = "redact"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_outcome_leaves_an_audit_row() {
    // One request at a time, so a slow call holds the next request in the queue.
    let stack = Stack::start(StackOptions {
        max_in_flight: 1,
        guard_toml: GUARD.into(),
        ..StackOptions::default()
    })
    .await;

    // Completed.
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat("all fine"))
        .await;
    assert_eq!(status, 200, "{body}");
    // Failed at the provider (a 400 is not retried).
    stack.mock.fail_next([Failure::status(400)]);
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat("the provider refuses"))
        .await;
    assert_eq!(status, 400, "{body}");
    // Rejected: bad input, and a guardrail.
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_B, ask("gpt-9", "which model?"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (status, body) = stack
        .post(
            "/v1/chat/completions",
            KEY_A,
            chat("tell me about Project Falcon"),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("prompt_blocked"))
    );
    // Expired: a slow call holds the only slot past the next request's deadline.
    stack.mock.set_behaviour(Behaviour {
        latency: Latency::Fixed(Duration::from_millis(2500)),
        ..Behaviour::default()
    });
    let (status, slow) = stack.post("/v1/requests", KEY_B, chat("slow one")).await;
    assert_eq!(status, 202, "{slow}");
    let mut late = chat("too late");
    late["sluice"] = json!({"timeout_ms": 800});
    let (status, late) = stack.post("/v1/requests", KEY_B, late).await;
    assert_eq!(status, 202, "{late}");
    let late_id = late["id"].as_str().unwrap().to_string();
    let expired = eventually(WAIT, || async {
        let (_, body) = stack.get(&format!("/v1/requests/{late_id}"), KEY_B).await;
        (body["status"] == "expired").then_some(body)
    })
    .await
    .expect("the late request expires");
    assert_eq!(expired["error"]["code"], "deadline_exceeded");

    // 4 accepted + 1 completed + 1 failed + 2 rejected + 1 completed (slow) + 1 expired.
    let n = stack
        .wait_count("SELECT count() FROM {db}.audit FINAL", 10, WAIT)
        .await;
    assert_eq!(n, 10);
    let summary = stack
        .ch("SELECT action, team, http_status, reason, policy FROM {db}.audit FINAL ORDER BY action, team, http_status, reason")
        .await;
    assert_eq!(
        summary,
        "accepted\tteam-a\t200\t\tprompt_guard:pass\n\
         accepted\tteam-a\t200\t\tprompt_guard:pass\n\
         accepted\tteam-b\t200\t\t\n\
         accepted\tteam-b\t200\t\t\n\
         completed\tteam-a\t200\t\t\n\
         completed\tteam-b\t200\t\t\n\
         expired\tteam-b\t504\texpired\t\n\
         failed\tteam-a\t400\tupstream_rejected\t\n\
         rejected\tteam-a\t400\tdeny.codename\tprompt_guard:block:deny.codename\n\
         rejected\tteam-b\t404\tmodel_not_found\t\n"
    );
    // The expired request is in the trail with its request id, unbilled.
    let trail = stack
        .ch(&format!(
            "SELECT action, status, cost_nanos FROM {{db}}.audit_trail WHERE request_id = '{late_id}' ORDER BY occurred_at_ms"
        ))
        .await;
    assert_eq!(trail, "accepted\t\t0\nexpired\texpired\t0\n");
    // And in the error rates: refusals before the model was known carry model ''.
    let rates = stack
        .ch("SELECT team, model, sum(requests), sum(failed), sum(expired), sum(rejected) FROM {db}.error_rates_by_team_model_hour GROUP BY team, model ORDER BY team, model")
        .await;
    assert_eq!(
        rates,
        format!(
            "team-a\t\t1\t0\t0\t1\nteam-a\t{MODEL}\t2\t1\t0\t0\nteam-b\t\t1\t0\t0\t1\nteam-b\t{MODEL}\t2\t0\t1\t0\n"
        )
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_content_follows_each_teams_policy() {
    let stack = Stack::start(StackOptions {
        guard_toml: GUARD.into(),
        audit_toml: "content = \"hash\"\n[teams]\nteam-a = \"full\"\n".into(),
        ..StackOptions::default()
    })
    .await;
    let (status, a) = stack
        .post(
            "/v1/chat/completions",
            KEY_A,
            chat("fullmarker write to jane.doe@example.com about the invoice"),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    let mut b_body = chat("hashmarker summarise the quarterly numbers");
    b_body["sluice"] = json!({"attributes": {"sluice.audit": "full"}});
    let (status, b) = stack.post("/v1/chat/completions", KEY_B, b_body).await;
    assert_eq!(status, 200, "{b}");

    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.audit FINAL WHERE action = 'completed'",
            2,
            WAIT,
        )
        .await;
    assert_eq!(n, 2);
    let calls = stack.mock.calls();
    let audit = |team: &'static str, action: &'static str| {
        let stack = &stack;
        async move {
            let row = stack
                .ch(&format!(
                    "SELECT prompt_sha256, prompt_text, completion_sha256, completion_text, policy \
                     FROM {{db}}.audit FINAL WHERE team = '{team}' AND action = '{action}' FORMAT JSONEachRow"
                ))
                .await;
            serde_json::from_str::<Value>(row.trim()).unwrap()
        }
    };

    // Team A (full): the text the provider received (e-mail redacted) and the answer.
    let sent_a =
        serde_json::to_string(&call_with(&calls, "fullmarker").body.as_ref().unwrap()["messages"])
            .unwrap();
    assert!(
        sent_a.contains("[EMAIL]") && !sent_a.contains("jane.doe"),
        "{sent_a}"
    );
    let accepted = audit("team-a", "accepted").await;
    assert_eq!(accepted["prompt_text"], sent_a.as_str());
    assert_eq!(accepted["prompt_sha256"], sha256_hex(&sent_a).as_str());
    assert_eq!(accepted["policy"], "prompt_guard:pass,pii:redact:email");
    let answer_a = a["choices"][0]["message"]["content"].as_str().unwrap();
    let completed = audit("team-a", "completed").await;
    assert_eq!(completed["completion_text"], answer_a);
    assert_eq!(
        completed["completion_sha256"],
        sha256_hex(answer_a).as_str()
    );

    // Team B (hash), though it asked for `full` in its attributes: hashes only, and they
    // match what was sent and answered.
    let sent_b =
        serde_json::to_string(&call_with(&calls, "hashmarker").body.as_ref().unwrap()["messages"])
            .unwrap();
    let accepted = audit("team-b", "accepted").await;
    assert_eq!(accepted["prompt_text"], "");
    assert_eq!(accepted["prompt_sha256"], sha256_hex(&sent_b).as_str());
    let answer_b = b["choices"][0]["message"]["content"].as_str().unwrap();
    let completed = audit("team-b", "completed").await;
    assert_eq!(completed["completion_text"], "");
    assert_eq!(
        completed["completion_sha256"],
        sha256_hex(answer_b).as_str()
    );
    // Nor is team B's answer anywhere else analysts read (issue 14): `results` has no body;
    // the async API's copy is in the private database only.
    stack
        .wait_count("SELECT count() FROM {db}.results FINAL", 2, WAIT)
        .await;
    let columns = stack
        .ch("SELECT table, name FROM system.columns WHERE database = '{db}' AND type = 'String' \
             AND table IN (SELECT table FROM system.columns WHERE database = '{db}' AND name = 'team') \
             AND table IN (SELECT name FROM system.tables WHERE database = '{db}' AND engine LIKE '%MergeTree')")
        .await;
    assert!(columns.contains("completion_text"), "{columns}");
    assert!(answer_b.len() > 3, "{answer_b}");
    for line in columns.lines() {
        let (table, column) = line.split_once('\t').unwrap();
        let found = stack
            .ch(&format!(
                "SELECT count() FROM {{db}}.{table} WHERE team = 'team-b' AND position({column}, '{}') > 0",
                answer_b.replace('\'', "\\'")
            ))
            .await;
        assert_eq!(found.trim(), "0", "team B's answer is in {table}.{column}");
    }

    // A streamed answer is recorded whole: the text of all its deltas.
    let mut streamed = chat("streammarker count the sheep");
    streamed["stream"] = json!(true);
    let (status, _) = stack.post("/v1/chat/completions", KEY_A, streamed).await;
    assert_eq!(status, 200);
    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.audit FINAL WHERE action = 'completed'",
            3,
            WAIT,
        )
        .await;
    assert_eq!(n, 3);
    let calls = stack.mock.calls();
    let deltas = &call_with(&calls, "streammarker").content;
    assert!(deltas.contains("sheep"), "{deltas}");
    let recorded = stack
        .ch(&format!(
            "SELECT count() FROM {{db}}.audit FINAL WHERE team = 'team-a' AND action = 'completed' \
             AND completion_text = '{deltas}' AND completion_sha256 = '{}'",
            sha256_hex(deltas)
        ))
        .await;
    assert_eq!(recorded.trim(), "1", "{deltas}");

    // No text anywhere for team B, nor the raw e-mail for team A.
    let leaks = stack
        .ch("SELECT count() FROM {db}.audit FINAL WHERE (team = 'team-b' AND (prompt_text != '' OR completion_text != '')) OR position(prompt_text, 'jane.doe') > 0")
        .await;
    assert_eq!(leaks.trim(), "0");
    stack.stop().await;
}
