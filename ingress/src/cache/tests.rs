use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use serde_json::json;
use sluice_schemas::{Priority, Result as ResultRecord, Status};

use super::*;
use crate::config::{CacheBackend, TeamCache};

fn config(teams: Vec<TeamCache>) -> CacheConfig {
    CacheConfig {
        teams,
        ..CacheConfig::default()
    }
}

fn team(name: &str, any_temperature: bool) -> TeamCache {
    TeamCache {
        team: name.into(),
        ttl_s: 60,
        any_temperature,
    }
}

fn plan_of(config: &CacheConfig, team: &str, body: serde_json::Value) -> Option<Plan> {
    plan(
        config,
        team,
        CHAT,
        &HeaderMap::new(),
        None,
        &body.to_string(),
    )
    .unwrap()
}

fn body(temperature: f64, text: &str) -> serde_json::Value {
    json!({"model": "m", "temperature": temperature,
           "messages": [{"role": "user", "content": text}]})
}

#[test]
fn the_key_is_the_request_as_the_provider_gets_it_and_the_team() {
    let config = config(vec![team("a", false), team("b", false)]);
    let key = |team, body| plan_of(&config, team, body).expect("cached").key;
    let base = key("a", body(0.0, "hi"));
    // Field order, the stream flag, stream options, `user` and 0 vs 0.0 do not matter.
    let reordered = json!({"messages": [{"content": "hi", "role": "user"}],
                           "temperature": 0, "model": "m", "stream": true,
                           "stream_options": {"include_usage": true}, "user": "u1"});
    assert_eq!(key("a", reordered), base);
    // Another team, another prompt, another parameter: another key.
    assert_ne!(key("b", body(0.0, "hi")), base);
    assert_ne!(key("a", body(0.0, "hi!")), base);
    let mut with_tools = body(0.0, "hi");
    with_tools["max_tokens"] = json!(5);
    assert_ne!(key("a", with_tools), base);
    assert!(base.starts_with("a:"), "{base}");
    let embeddings = plan(
        &config,
        "a",
        EMBEDDINGS,
        &HeaderMap::new(),
        None,
        &body(0.0, "hi").to_string(),
    )
    .unwrap()
    .unwrap();
    assert_ne!(embeddings.key, base, "families never share");
}

#[test]
fn only_deterministic_requests_use_a_teams_default() {
    let config = config(vec![team("a", false), team("any", true)]);
    assert!(plan_of(&config, "a", body(0.0, "x")).is_some());
    assert!(plan_of(&config, "a", body(0.7, "x")).is_none());
    let no_temperature = json!({"model": "m", "messages": []});
    assert!(plan_of(&config, "a", no_temperature.clone()).is_none());
    assert!(plan_of(&config, "any", no_temperature.clone()).is_some());
    assert!(plan_of(&config, "nobody", body(0.0, "x")).is_none());
    // Embeddings are deterministic.
    let p = plan(&config, "a", EMBEDDINGS, &HeaderMap::new(), None, "{}").unwrap();
    assert!(p.is_some());
    // A request that asks is cached at any temperature, under its own TTL.
    let asked = plan(
        &config,
        "nobody",
        CHAT,
        &HeaderMap::new(),
        Some(Asked { ttl_s: 5 }),
        &body(1.0, "x").to_string(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(asked.ttl, Duration::from_secs(5));
    assert!(asked.read);
}

#[test]
fn cache_control_and_bad_ttls() {
    let config = config(vec![team("a", false)]);
    let with = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static(value));
        plan(
            &config,
            "a",
            CHAT,
            &headers,
            None,
            &body(0.0, "x").to_string(),
        )
        .unwrap()
    };
    assert_eq!(with("no-store"), None);
    assert_eq!(with("max-age=0, No-Store"), None);
    let fresh = with("no-cache").expect("stored, not read");
    assert!(!fresh.read);
    assert_eq!(fresh.missed(), "bypass");
    assert!(with("max-age=10").unwrap().read);
    for ttl_s in [0, config.max_ttl_s + 1] {
        let err = plan(
            &config,
            "a",
            CHAT,
            &HeaderMap::new(),
            Some(Asked { ttl_s }),
            "{}",
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::InvalidParam {
                    param: "sluice.cache.ttl_s",
                    ..
                }
            ),
            "{err}"
        );
    }
}

fn result(status: Status, body: &str) -> ResultRecord {
    ResultRecord {
        request_id: "req_1".into(),
        team: "a".into(),
        key_id: "k".into(),
        priority: Priority::Standard,
        model: "m".into(),
        traceparent: None,
        status,
        http_status: if status == Status::Completed {
            200
        } else {
            502
        },
        body: body.into(),
        error_kind: None,
        provider: "openai".into(),
        deployment: "d1".into(),
        attempts: 1,
        prompt_tokens: 3,
        completion_tokens: 4,
        created_at_ms: 0,
        started_at_ms: 0,
        finished_at_ms: 0,
        worker: "w".into(),
        fallbacks: 0,
        routing_reason: None,
        location: None,
        replay: None,
        audit: None,
        calls: Vec::new(),
    }
}

fn plan_for(key: &str, ttl: Duration) -> Plan {
    Plan {
        key: key.into(),
        ttl,
        read: true,
    }
}

#[tokio::test]
async fn memory_keeps_completed_answers_until_their_ttl() {
    let cache = Cache::new(&CacheConfig {
        max_entry_bytes: 100,
        ..CacheConfig::default()
    });
    let long = plan_for("a:1", Duration::from_secs(60));
    assert!(matches!(cache.get(&long).await, Lookup::Miss));
    cache.put(&long, &result(Status::Completed, "{\"ok\":1}"));
    let Lookup::Hit(entry) = cache.get(&long).await else {
        panic!("stored answer not found")
    };
    assert_eq!(
        (
            entry.body.as_str(),
            entry.prompt_tokens,
            entry.completion_tokens
        ),
        ("{\"ok\":1}", 3, 4)
    );
    assert_eq!(
        (entry.source_request_id.as_str(), entry.deployment.as_str()),
        ("req_1", "d1")
    );
    // Failures and answers over max_entry_bytes are not kept.
    let failed = plan_for("a:2", Duration::from_secs(60));
    cache.put(&failed, &result(Status::Failed, "{}"));
    assert!(matches!(cache.get(&failed).await, Lookup::Miss));
    let large = plan_for("a:3", Duration::from_secs(60));
    cache.put(&large, &result(Status::Completed, &"x".repeat(101)));
    assert!(matches!(cache.get(&large).await, Lookup::Miss));
    // An entry past its TTL is gone.
    let short = plan_for("a:4", Duration::from_millis(20));
    cache.put(&short, &result(Status::Completed, "{}"));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(matches!(cache.get(&short).await, Lookup::Miss));
}

#[tokio::test]
async fn an_unreachable_redis_is_a_quick_miss() {
    let config = CacheConfig {
        backend: CacheBackend::Redis,
        // Nothing listens on port 1.
        redis_url: Some("redis://127.0.0.1:1".into()),
        timeout_ms: Duration::from_millis(50),
        ..CacheConfig::default()
    };
    let cache = Cache::new(&config);
    let plan = plan_for("a:1", Duration::from_secs(60));
    // A hang guard, not a speed check: the lookup gives up after timeout_ms.
    let lookup = tokio::time::timeout(Duration::from_secs(30), cache.get(&plan)).await;
    assert!(matches!(lookup, Ok(Lookup::Unavailable)));
    cache.put(&plan, &result(Status::Completed, "{}"));
}
