use super::lookup::{batch_sql, is_safe_id};
use super::*;
use crate::offsets::PartitionKey;

#[test]
fn only_plain_ids_are_looked_up_and_only_below_the_horizon() {
    assert!(is_safe_id("req_0192abcdef"));
    assert!(is_safe_id("batch_abc-line-7"));
    for bad in [
        "",
        "x' OR 1=1 --",
        "a b",
        "a\\b",
        "x;DROP",
        &"a".repeat(257),
    ] {
        assert!(!is_safe_id(bad), "{bad}");
    }
    let horizons = Horizons::default();
    let key = PartitionKey {
        topic: "t".into(),
        partition: 0,
    };
    assert!(!horizons.maybe_redelivered(&key, 0), "unassigned: no check");
    horizons.assign(key.clone(), 10);
    assert!(horizons.maybe_redelivered(&key, 9));
    assert!(!horizons.maybe_redelivered(&key, 10));
    horizons.revoke(&key);
    assert!(!horizons.maybe_redelivered(&key, 9));
    assert!(RedeliveryConfig {
        database: "x;y".into(),
        ..RedeliveryConfig::default()
    }
    .validate()
    .is_err());
    assert!(RedeliveryConfig::default().validate().is_ok());
}

#[test]
fn one_query_asks_for_the_whole_batch() {
    let sql = batch_sql("db", [("r1", "a"), ("r2", "b"), ("r3", "a")].into_iter());
    assert_eq!(sql.matches("'r1','r2','r3'").count(), 2, "{sql}");
    assert!(sql.contains("team IN ('a','b')"), "{sql}");
    assert!(sql.contains("FROM db.usage") && sql.contains("FROM db.results"));
}

#[test]
fn recent_ids_are_remembered_up_to_the_capacity() {
    let recent = Recent::new(2);
    recent.finished("a");
    recent.finished("b");
    recent.finished("b");
    assert!(recent.contains("a") && recent.contains("b"));
    recent.finished("c");
    assert!(!recent.contains("a"), "the oldest is forgotten");
    assert!(recent.contains("b") && recent.contains("c"));
    let off = Recent::new(0);
    off.finished("a");
    assert!(!off.contains("a"));
}

#[tokio::test]
async fn a_lookup_that_cannot_reach_clickhouse_fails_open() {
    let config = RedeliveryConfig {
        clickhouse_url: Some("http://127.0.0.1:9".into()),
        timeout_ms: std::time::Duration::from_millis(200),
        ..RedeliveryConfig::default()
    };
    let lookup = Lookup::new(&config, reqwest::Client::new()).unwrap();
    let request = sluice_schemas::Request {
        request_id: "req_1".into(),
        team: "team-a".into(),
        key_id: "k".into(),
        priority: sluice_schemas::Priority::ALL[0],
        model: "m".into(),
        created_at_ms: 0,
        deadline_ms: 0,
        traceparent: None,
        reply: None,
        prompt_tokens: 0,
        max_tokens: None,
        body: String::new(),
        stream: false,
        attributes: Default::default(),
        replay: None,
    };
    let answers = futures::future::join_all((0..20).map(|_| lookup.already_done(&request))).await;
    assert!(answers.iter().all(|done| !done));
}
