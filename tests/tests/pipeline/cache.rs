//! The exact response cache (docs/cache.md): a request asked again is answered from the
//! stored answer, as JSON or as a stream whichever way it was first asked, without a
//! provider call; a hit costs nothing, says what it saved in ClickHouse and has its audit
//! rows; teams never share; the shared Redis serves every replica, and a Redis that is
//! down only makes misses.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

fn team_a_caches(config: &mut sluice_ingress::Config) {
    config.cache.teams = vec![sluice_ingress::config::TeamCache {
        team: "team-a".into(),
        ttl_s: 300,
        any_temperature: false,
    }];
}

/// A request at temperature 0 (what a team's default caches).
fn question(text: &str) -> Value {
    json!({"model": MODEL, "temperature": 0,
           "messages": [{"role": "user", "content": text}]})
}

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

/// One call: (status, `x-sluice-cache`, `x-sluice-request-id`, body text).
async fn call(
    base: &str,
    key: &str,
    body: &Value,
    cache_control: Option<&str>,
) -> (u16, String, String, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    if let Some(value) = cache_control {
        request = request.header("cache-control", value);
    }
    let response = request.send().await.expect("ingress answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map_or(String::new(), |v| v.to_str().unwrap().to_string())
    };
    let (cache, id) = (header("x-sluice-cache"), header("x-sluice-request-id"));
    let status = response.status().as_u16();
    (status, cache, id, response.text().await.unwrap())
}

/// The answer's text, from a JSON completion or a stream of chunks.
fn text_of(body: &str) -> String {
    if let Ok(completion) = serde_json::from_str::<Value>(body) {
        return completion["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    sse_data(body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            Some(
                c["choices"].get(0)?["delta"]["content"]
                    .as_str()?
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cached_answer_is_served_as_json_or_stream_costs_nothing_and_is_never_another_teams() {
    let stack = Stack::start(StackOptions {
        ingress_config: Some(team_a_caches),
        ..StackOptions::default()
    })
    .await;
    let base = stack.base.clone();
    let calls = || stack.mock.call_count();

    // JSON first, then the same request as JSON and as a stream: one provider call.
    let q = question("Name a river in France");
    let (status, cache, first_id, first) = call(&base, KEY_A, &q, None).await;
    assert_eq!((status, cache.as_str()), (200, "miss"), "{first}");
    assert_eq!(calls(), 1);
    let answer = text_of(&first);
    assert!(!answer.is_empty(), "{first}");
    let (status, cache, hit_id, again) = call(&base, KEY_A, &q, None).await;
    assert_eq!((status, cache.as_str()), (200, "hit"), "{again}");
    assert_ne!(hit_id, first_id, "a hit is a request of its own");
    assert_eq!(text_of(&again), answer);
    let (status, cache, stream_hit_id, stream) =
        call(&base, KEY_A, &streamed(q.clone()), None).await;
    assert_eq!((status, cache.as_str()), (200, "hit"), "{stream}");
    assert_eq!(text_of(&stream), answer);
    let events = sse_data(&stream);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(usage["usage"]["total_tokens"].as_i64() > Some(0), "{usage}");
    assert_eq!(calls(), 1, "hits never reach the provider");

    // A stream first, then JSON: one entry serves both.
    let s = question("Name a mountain in Spain");
    let (status, cache, s_id, live) = call(&base, KEY_A, &streamed(s.clone()), None).await;
    assert_eq!((status, cache.as_str()), (200, "miss"), "{live}");
    assert_eq!(calls(), 2);
    let (status, cache, _, json_hit) = call(&base, KEY_A, &s, None).await;
    assert_eq!((status, cache.as_str()), (200, "hit"), "{json_hit}");
    assert_eq!(text_of(&json_hit), text_of(&live));
    assert_eq!(calls(), 2);

    // Anthropic's Messages API: the stored answer in its shape, then as its events.
    let m = json!({"model": MODEL, "max_tokens": 50, "temperature": 0,
                   "messages": [{"role": "user", "content": "Name a sea"}]});
    let messages = |body: Value| {
        let request = stack.http.post(format!("{base}/v1/messages"));
        request.header("x-api-key", KEY_A).json(&body).send()
    };
    let first_m = messages(m.clone()).await.unwrap();
    assert_eq!(first_m.headers()["x-sluice-cache"], "miss");
    let m_id = first_m.headers()["x-sluice-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let first_m: Value = first_m.json().await.unwrap();
    let hit_m = messages(m.clone()).await.unwrap();
    assert_eq!(hit_m.headers()["x-sluice-cache"], "hit");
    let hit_m: Value = hit_m.json().await.unwrap();
    assert_eq!(hit_m["type"], "message");
    assert_eq!(hit_m["content"], first_m["content"], "{hit_m}");
    let mut m_stream = m.clone();
    m_stream["stream"] = json!(true);
    let events = messages(m_stream).await.unwrap();
    assert_eq!(events.headers()["x-sluice-cache"], "hit");
    let events = sse_events(&events.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
    assert_eq!(calls(), 3);

    // Team B asks exactly what team A asked, opting in: its own miss, its own call.
    let mut asked = q.clone();
    asked["sluice"] = json!({"cache": {"ttl_s": 60}});
    let (status, cache, _, _) = call(&base, KEY_B, &asked, None).await;
    assert_eq!((status, cache.as_str()), (200, "miss"));
    assert_eq!(calls(), 4);
    let (_, cache, _, _) = call(&base, KEY_B, &asked, None).await;
    assert_eq!(cache, "hit");
    // Without asking, team B has no cache; team A's default skips a sampled request.
    let (status, cache, _, _) = call(&base, KEY_B, &q, None).await;
    assert_eq!((status, cache.as_str()), (200, ""));
    let mut sampled = q.clone();
    sampled["temperature"] = json!(0.7);
    let (_, cache, _, _) = call(&base, KEY_A, &sampled, None).await;
    assert_eq!(cache, "");
    assert_eq!(calls(), 6);

    // Cache-Control: no-store stays out of the cache; no-cache asks the provider again.
    let (_, cache, _, _) = call(&base, KEY_A, &q, Some("no-store")).await;
    assert_eq!(cache, "");
    let (_, cache, _, _) = call(&base, KEY_A, &q, Some("no-cache")).await;
    assert_eq!(cache, "bypass");
    assert_eq!(calls(), 8);

    // A TTL out of bounds is refused in OpenAI's error shape, and nothing is called.
    for ttl in [json!(0), json!(100_000_000), json!("soon")] {
        let mut bad = q.clone();
        bad["sluice"] = json!({"cache": {"ttl_s": ttl}});
        let (status, body) = stack.post("/v1/chat/completions", KEY_A, bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["param"]
                .as_str()
                .unwrap()
                .starts_with("sluice"),
            "{body}"
        );
    }
    assert_eq!(calls(), 8);

    // ClickHouse: the hits cost 0, saved what the first call cost, and were audited.
    let paid = stack
        .usage_row(&first_id, "cost_nanos, cache_hit, saved_nanos, provider")
        .await;
    let (cost, rest) = paid.split_once('\t').unwrap();
    assert!(cost.parse::<i64>().unwrap() > 0, "{paid}");
    assert_eq!(rest, "0\t0\topenai", "{paid}");
    for id in [&hit_id, &stream_hit_id] {
        let hit = stack
            .usage_row(
                id,
                "cost_nanos, cache_hit, saved_nanos, provider, prompt_tokens > 0",
            )
            .await;
        assert_eq!(hit, format!("0\t1\t{cost}\tcache\t1"), "{id}");
        let result = stack.result_row(id, "status, worker, provider").await;
        assert_eq!(result, "completed\tcache\tcache");
    }
    let audited = stack
        .wait_count(
            &format!(
                "SELECT count() FROM {{db}}.audit FINAL WHERE request_id = '{hit_id}' \
                 AND action IN ('accepted', 'completed')"
            ),
            2,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(audited, 2, "accepted and completed audit rows of the hit");
    // The view: team A's five hits saved what their first calls cost (two of the first
    // question, one of the streamed one, two of the Messages one).
    let hits = stack
        .wait_count(
            "SELECT sum(hits) FROM {db}.cache_by_team_model_day WHERE team = 'team-a'",
            5,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(hits, 5);
    let s_cost: i64 = stack.usage_row(&s_id, "cost_nanos").await.parse().unwrap();
    let m_cost: i64 = stack.usage_row(&m_id, "cost_nanos").await.parse().unwrap();
    let saved = stack
        .ch("SELECT sum(saved_nanos) FROM {db}.cache_by_team_model_day WHERE team = 'team-a'")
        .await;
    let cost: i64 = cost.parse().unwrap();
    assert_eq!(saved.trim(), (2 * cost + s_cost + 2 * m_cost).to_string());
    stack.stop().await;
}

fn shared_redis(config: &mut sluice_ingress::Config) {
    team_a_caches(config);
    config.cache.backend = sluice_ingress::config::CacheBackend::Redis;
    config.cache.redis_url = Some(redis_url());
}

/// The ops listener of the Redis-down stack (its `/metrics` says why requests missed).
static REDIS_DOWN_OPS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn redis_down(config: &mut sluice_ingress::Config) {
    team_a_caches(config);
    config.cache.backend = sluice_ingress::config::CacheBackend::Redis;
    // Nothing listens on port 1: every lookup fails.
    config.cache.redis_url = Some("redis://127.0.0.1:1".into());
    config.ops.listen = REDIS_DOWN_OPS.get().cloned();
}

/// `sluice_cache_errors_total{backend="redis",op}` on an ops listener (0 if absent).
async fn redis_errors(ops: &str, op: &str) -> f64 {
    let text = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .expect("the ops listener answers")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("sluice_cache_errors_total{"))
        .filter(|l| l.contains(r#"backend="redis""#) && l.contains(&format!(r#"op="{op}""#)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_answers_through_redis_and_a_redis_down_is_only_a_miss() {
    let stack = Stack::start(StackOptions {
        ingress_config: Some(shared_redis),
        ..StackOptions::default()
    })
    .await;
    let replica = stack.start_ingress_replica(1).await;
    // Unique per run: the shared Redis outlives the test.
    let q = question(&format!("Name a lake, {}", stack.prefix));
    let (status, cache, _, first) = call(&stack.base, KEY_A, &q, None).await;
    assert_eq!((status, cache.as_str()), (200, "miss"), "{first}");
    // The store is written in the background: the other replica finds it shortly.
    let hit = eventually(Duration::from_secs(10), || async {
        let (_, cache, _, body) = call(&replica.base, KEY_A, &q, None).await;
        (cache == "hit").then_some(body)
    })
    .await
    .expect("the other replica serves the stored answer");
    assert_eq!(text_of(&hit), text_of(&first));
    replica.stop().await;
    stack.stop().await;

    let ops = format!("127.0.0.1:{}", free_port());
    REDIS_DOWN_OPS.set(ops.clone()).expect("one test sets it");
    let stack = Stack::start(StackOptions {
        ingress_config: Some(redis_down),
        ..StackOptions::default()
    })
    .await;
    let before = redis_errors(&ops, "get").await;
    for _ in 0..2 {
        let (status, cache, _, body) = call(&stack.base, KEY_A, &q, None).await;
        assert_eq!((status, cache.as_str()), (200, "miss"), "{body}");
        assert!(!text_of(&body).is_empty());
    }
    assert_eq!(
        stack.mock.call_count(),
        2,
        "each request went to the provider"
    );
    // The metric says why: each lookup failed (and each store, in the background).
    assert!(
        redis_errors(&ops, "get").await >= before + 2.0,
        "sluice_cache_errors_total{{op=\"get\"}} counts the failed lookups"
    );
    stack.stop().await;
}
