//! Budgets with hard caps (docs/budgets.md), end to end: two ingress replicas share one
//! budget through Kafka, the spend in ClickHouse stays within the limit plus what was in
//! flight, alerts land once per threshold, and a restarted replica rebuilds the spend.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Latency};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);
/// Completion tokens of every answer, and every request's `max_tokens`: the reservation
/// and the real cost are nearly the same.
const COMPLETION: u32 = 100;
/// Team A's daily budget: ~48 requests of ~61,500 nano-USD.
const TEAM_LIMIT_USD: f64 = 0.003;
const TEAM_LIMIT: i64 = 3_000_000;
/// key_b's monthly budget: ~8 requests.
const KEY_LIMIT: i64 = 500_000;
/// Callers at once, over both replicas.
const CONCURRENCY: usize = 8;

fn capped(text: &str) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": COMPLETION,
        "messages": [{"role": "user", "content": text}],
    })
}

/// The most one request may cost here: the ingress's reservation (tiktoken prompt count)
/// or the mock's billed cost (its own count), whichever is higher, with slack for the
/// counts' difference.
fn max_request_nanos(max_billed: i64) -> i64 {
    let reserved =
        40 * (PRICE_IN * 1000.0) as i64 + i64::from(COMPLETION) * (PRICE_OUT * 1000.0) as i64;
    reserved.max(max_billed)
}

async fn post_to(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    body: &Value,
) -> (u16, Value, Option<String>) {
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("ingress answers");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body, retry)
}

const HOOK_SECRET_ENV: &str = "SLUICE_TEST_BUDGET_HOOK_SECRET";
const HOOK_SECRET: &str = "whsec_c2x1aWNlLWJ1ZGdldC10ZXN0";

async fn budgets_of(http: &reqwest::Client, base: &str, key: &str) -> Value {
    let response = http
        .get(format!("{base}/v1/budgets"))
        .bearer_auth(key)
        .send()
        .await
        .expect("ingress answers");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_hold_a_team_budget_alert_once_and_a_restart_rebuilds_the_spend() {
    std::env::set_var(HOOK_SECRET_ENV, HOOK_SECRET);
    let (hook_url, deliveries) =
        webhook_receiver(HOOK_SECRET, |_, _| axum::http::StatusCode::OK).await;
    let stack = Stack::start(StackOptions {
        alert_webhooks: vec![sluice_analytics::alerts::AlertWebhook {
            scope: "team".into(),
            subject: "team-a".into(),
            url: hook_url.clone(),
            secret_env: Some(HOOK_SECRET_ENV.into()),
        }],
        // The receiver is local: the operator opens exactly its port.
        alert_allowed_hosts: vec![host_port(&hook_url)],
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(150)),
            completion_tokens: COMPLETION,
            ..Behaviour::default()
        },
        budget_toml: format!(
            r#"
[[budgets]]
scope = "team"
subject = "team-a"
period = "day"
limit_usd = {TEAM_LIMIT_USD}

[[budgets]]
scope = "key"
subject = "key_b"
period = "month"
limit_usd = 0.0005
alert_at = [1.0]
"#
        ),
        ..StackOptions::default()
    })
    .await;
    let replica = stack.start_ingress_replica(1).await;
    let bases = [stack.base.clone(), replica.base.clone()];

    // CONCURRENCY callers over both replicas, each until its first 429.
    let ok = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(Mutex::new(Vec::<(Value, Option<String>)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..CONCURRENCY {
        let base = bases[c % 2].clone();
        let (http, ok, rejected, stop) = (
            stack.http.clone(),
            Arc::clone(&ok),
            Arc::clone(&rejected),
            Arc::clone(&stop),
        );
        callers.push(tokio::spawn(async move {
            for i in 0..200 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (status, body, retry) = post_to(
                    &http,
                    &base,
                    KEY_A,
                    &capped(&format!("caller {c} question {i}")),
                )
                .await;
                match status {
                    200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {
                        rejected.lock().unwrap().push((body, retry));
                        break;
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let ok = ok.load(Ordering::Relaxed) as u64;
    let rejected = rejected.lock().unwrap().clone();
    assert_eq!(
        rejected.len(),
        CONCURRENCY,
        "every caller was stopped by the budget"
    );
    assert!(
        ok > 10,
        "the budget admitted requests before refusing: {ok}"
    );

    // The 429: OpenAI's shape, naming the budget, and no retry.
    let (body, retry) = &rejected[0];
    assert_eq!(retry.as_deref(), Some("false"));
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("team `team-a` daily budget of $0.0030"),
        "{message}"
    );

    // Every admitted request is billed; the total stays within the limit plus what can be
    // in flight at once, and came close to the limit.
    let billed = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL WHERE team = 'team-a'",
            ok,
            WAIT,
        )
        .await;
    assert_eq!(billed, ok);
    let row = stack
        .ch("SELECT sum(cost_nanos), max(cost_nanos) FROM {db}.usage FINAL WHERE team = 'team-a'")
        .await;
    let (total, max_billed) = row.trim().split_once('\t').unwrap();
    let (total, max_billed): (i64, i64) = (total.parse().unwrap(), max_billed.parse().unwrap());
    let in_flight = CONCURRENCY as i64 * max_request_nanos(max_billed);
    assert!(
        total <= TEAM_LIMIT + in_flight,
        "spent {total} > limit {TEAM_LIMIT} + in-flight bound {in_flight}"
    );
    assert!(
        total >= TEAM_LIMIT - in_flight,
        "refused too early: spent {total} of {TEAM_LIMIT}"
    );
    println!("budget figures: limit {TEAM_LIMIT} spent {total} admitted {ok} in-flight bound {in_flight} max request {max_billed}");

    // Refusals are audited with their reason.
    let audited = stack
        .wait_count(
            "SELECT count() FROM {db}.audit WHERE action = 'rejected' AND reason = 'budget_exceeded'",
            CONCURRENCY as u64,
            WAIT,
        )
        .await;
    assert!(audited >= CONCURRENCY as u64, "{audited}");

    // One alert row per threshold crossed, whichever replica saw it first.
    let crossed: Vec<i64> = [50, 80, 100]
        .into_iter()
        .filter(|pct| total * 100 >= TEAM_LIMIT * pct)
        .collect();
    assert!(crossed.len() >= 2, "{total} crossed 50% and 80%");
    stack
        .wait_count(
            "SELECT count() FROM {db}.budget_alerts FINAL WHERE subject = 'team-a'",
            crossed.len() as u64,
            WAIT,
        )
        .await;
    let alerts = stack
        .ch("SELECT threshold_pct, count(), any(limit_nanos), min(spent_nanos) >= threshold_pct * any(limit_nanos) / 100 \
             FROM {db}.budget_alerts FINAL WHERE subject = 'team-a' GROUP BY threshold_pct ORDER BY threshold_pct")
        .await;
    let want: String = crossed
        .iter()
        .map(|pct| format!("{pct}\t1\t{TEAM_LIMIT}\t1\n"))
        .collect();
    assert_eq!(alerts, want);

    // The team's webhook got each alert once, signed, whichever replica emitted it.
    let now = sluice_schemas::now_ms();
    let day_start = now - now.rem_euclid(86_400_000);
    let mut want_ids: Vec<String> = crossed
        .iter()
        .map(|pct| format!("team:team-a:{day_start}:{pct}"))
        .collect();
    want_ids.sort();
    let got = eventually(WAIT, || async {
        let got = deliveries.lock().unwrap().clone();
        (got.len() >= want_ids.len()).then_some(got)
    })
    .await
    .expect("webhooks delivered");
    let mut ids: Vec<String> = got.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, want_ids, "each alert once");
    for Delivery {
        id, valid, body, ..
    } in &got
    {
        let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        assert!(valid, "{id}: signature verifies");
        assert_eq!(body["type"], "budget.threshold_crossed");
        assert_eq!(body["data"]["alert_id"], id.as_str());
        assert_eq!(body["data"]["limit_nanos"], TEAM_LIMIT);
    }

    // Both replicas converge on the settled spend, nothing left reserved.
    for base in &bases {
        let settled = eventually(WAIT, || async {
            let b = budgets_of(&stack.http, base, KEY_A).await;
            let team = b["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["scope"] == "team")
                .cloned()
                .unwrap();
            (team["spent_nanos"] == total && team["reserved_nanos"] == 0).then_some(team)
        })
        .await
        .expect("the replica's ledger settles on ClickHouse's total");
        assert_eq!(settled["limit_nanos"], TEAM_LIMIT);
        assert_eq!(settled["period"], "day");
        assert_eq!(settled["remaining_nanos"], (TEAM_LIMIT - total).max(0));
    }

    // A restarted replica rebuilds the day's spend from Kafka before it serves: it knows
    // the total and refuses at once.
    replica.stop().await;
    let restarted = stack.start_ingress_replica(2).await;
    let b = budgets_of(&stack.http, &restarted.base, KEY_A).await;
    let team = &b["data"][0];
    assert_eq!(team["spent_nanos"], total, "{b}");
    // It admits at most the one request that may still fit (an ingress that forgot the
    // spend would admit dozens).
    let mut after_restart = 0;
    let body = loop {
        let (status, body, _) = post_to(
            &stack.http,
            &restarted.base,
            KEY_A,
            &capped("after restart"),
        )
        .await;
        if status == 429 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        after_restart += 1;
        assert!(after_restart <= 1, "the restarted replica forgot the spend");
    };
    assert_eq!(body["error"]["code"], "budget_exceeded");
    // Team B has no team budget: unaffected by team A's.
    let (status, body, _) = post_to(&stack.http, &restarted.base, KEY_B, &capped("team b")).await;
    assert_eq!(status, 200, "{body}");

    // key_b's budget, on every endpoint: sync until refused, then async and Anthropic's.
    let mut admitted = 1u64;
    let refusal = loop {
        let (status, body, retry) =
            post_to(&stack.http, &stack.base, KEY_B, &capped("key b")).await;
        if status == 429 {
            break (body, retry);
        }
        assert_eq!(status, 200, "{body}");
        admitted += 1;
        assert!(admitted < 50, "the key budget never refused");
    };
    assert_eq!(refusal.1.as_deref(), Some("false"));
    let message = refusal.0["error"]["message"].as_str().unwrap();
    assert!(message.contains("key `key_b` monthly budget"), "{message}");
    let (status, body) = stack.post("/v1/requests", KEY_B, capped("async")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("budget_exceeded")),
        "{body}"
    );
    let response = stack
        .http
        .post(format!("{}/v1/messages", stack.base))
        .header("x-api-key", KEY_B)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": MODEL, "max_tokens": COMPLETION, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(
        response
            .headers()
            .get("x-should-retry")
            .and_then(|v| v.to_str().ok()),
        Some("false")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("key_b"),
        "{body}"
    );
    let key_total = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL WHERE key_id = 'key_b'",
            admitted,
            WAIT,
        )
        .await;
    assert_eq!(key_total, admitted);
    let spent: i64 = stack
        .ch("SELECT sum(cost_nanos) FROM {db}.usage FINAL WHERE key_id = 'key_b'")
        .await
        .trim()
        .parse()
        .unwrap();
    // Sequential calls: nothing else in flight, so the cap holds up to the difference
    // between the ingress's and the provider's prompt token counts (a few tokens each).
    let count_slack = admitted as i64 * 10 * (PRICE_IN * 1000.0) as i64;
    assert!(spent <= KEY_LIMIT + count_slack, "{spent}");
    assert!(
        spent > KEY_LIMIT - 2 * max_request_nanos(max_billed),
        "{spent}"
    );
    // Nothing was delivered twice meanwhile (the restarted replica re-emitted its alerts).
    assert_eq!(deliveries.lock().unwrap().len(), want_ids.len());
    restarted.stop().await;
    stack.stop().await;
}

/// The reservation of a request in flight on one replica counts on every replica (read from
/// the audit topic), and on a replica started later. No worker runs: the reservation is never
/// settled by usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_in_flight_on_one_replica_counts_on_the_others() {
    let stack = Stack::start(StackOptions {
        worker: false,
        // One request (~61,500 nano-USD reserved) fits, two do not.
        budget_toml: "[[budgets]]\nscope = \"team\"\nsubject = \"team-a\"\nperiod = \"month\"\nlimit_usd = 0.0001\n".into(),
        ..StackOptions::default()
    })
    .await;
    let replica = stack.start_ingress_replica(1).await;
    let reserved_on = |base: String| {
        let http = stack.http.clone();
        async move { budgets_of(&http, &base, KEY_A).await["data"][0]["reserved_nanos"].as_i64() }
    };
    assert_eq!(reserved_on(stack.base.clone()).await, Some(0));

    let response = stack
        .http
        .post(format!("{}/v1/requests", replica.base))
        .bearer_auth(KEY_A)
        .json(&capped("held in flight"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let held = reserved_on(replica.base.clone()).await.unwrap();
    assert!(held > 50_000 && held < 100_000, "{held}");

    // The first replica learns it from the audit topic, then refuses what no longer fits.
    let seen = eventually(WAIT, || async {
        (reserved_on(stack.base.clone()).await == Some(held)).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the other replica's reservation is visible");
    let (status, body) = stack
        .post("/v1/requests", KEY_A, capped("one too many"))
        .await;
    assert_eq!(status, 429, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("$0.0000 spent"), "{message}");
    assert!(
        message.contains(&format!("${:.4} reserved", held as f64 / 1e9)),
        "{message}"
    );

    // A replica started now rebuilds the reservation before it serves.
    let late = stack.start_ingress_replica(2).await;
    assert_eq!(reserved_on(late.base.clone()).await, Some(held));
    late.stop().await;
    replica.stop().await;
    stack.stop().await;
}

/// Figures for docs/budgets.md, not a pass/fail check on speed: how long a replica takes to
/// rebuild the ledger from N usage events before serving.
/// `SLUICE_BUDGET_REBUILD_EVENTS=200000 cargo test -p sluice-tests --test pipeline
/// ledger_rebuild_figures -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run by hand"]
async fn ledger_rebuild_figures() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let events: usize = std::env::var("SLUICE_BUDGET_REBUILD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let stack = Stack::start(StackOptions {
        worker: false,
        budget_toml: "[[budgets]]\nscope = \"team\"\nsubject = \"team-a\"\nperiod = \"month\"\nlimit_usd = 1000000\n".into(),
        ..StackOptions::default()
    })
    .await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let topic =
        sluice_schemas::Topics::new(stack.prefix.clone()).name(&sluice_schemas::Topic::Usage);
    let now = sluice_schemas::now_ms();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..events {
        let usage = sluice_schemas::Usage {
            request_id: format!("req_rebuild_{i}"),
            team: "team-a".into(),
            key_id: "key_a".into(),
            priority: sluice_schemas::Priority::Standard,
            model: MODEL.into(),
            provider: "openai".into(),
            deployment: "d".into(),
            status: sluice_schemas::Status::Completed,
            prompt_tokens: 10,
            completion_tokens: 10,
            cached_tokens: 0,
            cost_nanos: 1000,
            created_at_ms: now,
            latency_ms: 1,
            occurred_at_ms: now,
            estimated: false,
            cache_hit: false,
            saved_nanos: 0,
            replay: None,
        };
        let payload = sluice_schemas::encode(&usage).unwrap();
        let producer = producer.clone();
        let topic = topic.clone();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key("team-a").payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        if pending.len() >= 10_000 {
            use futures::StreamExt;
            while let Some(r) = pending.next().await {
                r.unwrap();
            }
        }
    }
    {
        use futures::StreamExt;
        while let Some(r) = pending.next().await {
            r.unwrap();
        }
    }
    let started = std::time::Instant::now();
    let replica = stack.start_ingress_replica(1).await;
    let elapsed = started.elapsed();
    let b = budgets_of(&stack.http, &replica.base, KEY_A).await;
    assert_eq!(b["data"][0]["spent_nanos"], events as i64 * 1000, "{b}");
    println!(
        "ledger rebuild: {events} usage events in {:.2} s ({:.0} events/s, replica start-up included)",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    replica.stop().await;
    stack.stop().await;
}
