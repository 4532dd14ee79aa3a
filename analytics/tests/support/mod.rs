//! Shared by the integration tests: service endpoints, per-test databases, the fixture TSVs
//! (also read by tests/python) and the expected outputs of views and analyst queries.
#![expect(
    dead_code,
    clippy::unwrap_used,
    reason = "shared by several test crates, each using part of it; a test fails loudly on a broken fixture"
)]

use std::collections::HashMap;
use std::path::PathBuf;

use clickhouse::Client;
use sluice_analytics::config::ClickHouseConfig;
use sluice_analytics::queries::{render_query, QUERIES};
use sluice_analytics::tables::ReplayResultRow;
use sluice_analytics::Table;
use sluice_schemas::{Audit, Priority, Usage};

/// The date `make_expected.py` pins `{today}` to.
pub const TODAY: &str = "toDate('2025-03-04')";

pub fn clickhouse_url() -> String {
    std::env::var("SLUICE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// The DDL-capable user tests run as (`scripts/services.sh env` exports it).
pub fn clickhouse_user() -> Option<String> {
    std::env::var("SLUICE_CLICKHOUSE_USER")
        .ok()
        .filter(|u| !u.is_empty())
}

pub fn kafka_bootstrap() -> String {
    std::env::var("SLUICE_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A ClickHouse config for a database of this test's own. Fails loudly when ClickHouse is
/// not running: CI always starts it (`scripts/services.sh start`).
pub async fn clickhouse_config() -> ClickHouseConfig {
    let config = ClickHouseConfig {
        url: clickhouse_url(),
        database: unique("sluice_test"),
        user: clickhouse_user(),
        password: std::env::var("SLUICE_CLICKHOUSE_PASSWORD").ok(),
        ..ClickHouseConfig::default()
    };
    let probe = sluice_analytics::client(&config).with_database("default");
    let version: Result<String, _> = probe.query("SELECT version()").fetch_one().await;
    if let Err(e) = version {
        panic!(
            "ClickHouse is not reachable at {} ({e}); start it with `bash scripts/services.sh start` \
             or set SLUICE_CLICKHOUSE_URL",
            config.url
        );
    }
    config
}

pub async fn drop_database(client: &Client, db: &str) {
    let private = sluice_schemas::tables::private_database(db);
    for db in [db, private.as_str()] {
        client
            .query_raw(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute()
            .await
            .ok();
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Undoes ClickHouse's TSV escaping.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The rows of `fixtures/<name>.tsv` as column -> value maps.
pub fn fixture(name: &str) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(fixtures_dir().join(format!("{name}.tsv"))).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), header.len(), "{name}: {line}");
            header
                .iter()
                .zip(fields)
                .map(|(h, f)| (h.to_string(), unescape(f)))
                .collect()
        })
        .collect()
}

fn int<T: std::str::FromStr>(row: &HashMap<String, String>, column: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    row[column].parse().unwrap()
}

fn enumeration<T: serde::de::DeserializeOwned>(row: &HashMap<String, String>, column: &str) -> T {
    serde_json::from_value(serde_json::Value::String(row[column].clone())).unwrap()
}

fn optional(row: &HashMap<String, String>, column: &str) -> Option<String> {
    Some(row[column].clone()).filter(|s| !s.is_empty())
}

pub fn usage_records() -> Vec<Usage> {
    fixture("usage")
        .iter()
        .map(|r| Usage {
            request_id: r["request_id"].clone(),
            team: r["team"].clone(),
            key_id: r["key_id"].clone(),
            priority: Priority::parse(&r["priority"]).unwrap(),
            model: r["model"].clone(),
            provider: r["provider"].clone(),
            deployment: r["deployment"].clone(),
            status: enumeration(r, "status"),
            prompt_tokens: int(r, "prompt_tokens"),
            completion_tokens: int(r, "completion_tokens"),
            cached_tokens: int(r, "cached_tokens"),
            cost_nanos: int(r, "cost_nanos"),
            created_at_ms: int(r, "created_at_ms"),
            latency_ms: int(r, "latency_ms"),
            occurred_at_ms: int(r, "occurred_at_ms"),
            estimated: false,
            cache_hit: int::<u8>(r, "cache_hit") == 1,
            saved_nanos: int(r, "saved_nanos"),
            replay: None,
        })
        .collect()
}

pub fn result_records() -> Vec<sluice_schemas::Result> {
    fixture("results")
        .iter()
        .map(|r| sluice_schemas::Result {
            request_id: r["request_id"].clone(),
            team: r["team"].clone(),
            key_id: r["key_id"].clone(),
            priority: Priority::parse(&r["priority"]).unwrap(),
            model: r["model"].clone(),
            traceparent: optional(r, "traceparent"),
            status: enumeration(r, "status"),
            http_status: int(r, "http_status"),
            body: r["body"].clone(),
            error_kind: optional(r, "error_kind"),
            provider: r["provider"].clone(),
            deployment: r["deployment"].clone(),
            attempts: int(r, "attempts"),
            prompt_tokens: int(r, "prompt_tokens"),
            completion_tokens: int(r, "completion_tokens"),
            created_at_ms: int(r, "created_at_ms"),
            started_at_ms: int(r, "started_at_ms"),
            finished_at_ms: int(r, "finished_at_ms"),
            worker: r["worker"].clone(),
            fallbacks: int(r, "fallbacks"),
            // Not in the fixture: results written before v3.
            routing_reason: r.get("routing_reason").filter(|s| !s.is_empty()).cloned(),
            location: r.get("location").filter(|s| !s.is_empty()).cloned(),
            replay: None,
            audit: None,
            calls: Vec::new(),
        })
        .collect()
}

pub fn audit_records() -> Vec<Audit> {
    fixture("audit")
        .iter()
        .map(|r| Audit {
            event_id: r["event_id"].clone(),
            request_id: r["request_id"].clone(),
            team: r["team"].clone(),
            key_id: r["key_id"].clone(),
            action: enumeration(r, "action"),
            model: r["model"].clone(),
            priority: Priority::parse(&r["priority"]).unwrap(),
            http_status: int(r, "http_status"),
            reason: optional(r, "reason"),
            prompt_tokens: int(r, "prompt_tokens"),
            occurred_at_ms: int(r, "occurred_at_ms"),
            prompt_sha256: optional(r, "prompt_sha256"),
            prompt_text: optional(r, "prompt_text"),
            completion_sha256: optional(r, "completion_sha256"),
            completion_text: optional(r, "completion_text"),
            policy: optional(r, "policy"),
            ..Audit::default()
        })
        .collect()
}

/// `replay_results.tsv` as its table's rows, hash and length as written there (one
/// duplicate inside).
pub fn replay_result_rows() -> Vec<ReplayResultRow> {
    fixture("replay_results")
        .iter()
        .map(|r| ReplayResultRow {
            replay_id: r["replay_id"].clone(),
            original_request_id: r["original_request_id"].clone(),
            request_id: r["request_id"].clone(),
            team: r["team"].clone(),
            model: r["model"].clone(),
            status: r["status"].clone(),
            http_status: int(r, "http_status"),
            error_kind: r["error_kind"].clone(),
            provider: r["provider"].clone(),
            deployment: r["deployment"].clone(),
            prompt_tokens: int(r, "prompt_tokens"),
            completion_tokens: int(r, "completion_tokens"),
            created_at_ms: int(r, "created_at_ms"),
            started_at_ms: int(r, "started_at_ms"),
            finished_at_ms: int(r, "finished_at_ms"),
            completion_sha256: r["completion_sha256"].clone(),
            output_chars: int(r, "output_chars"),
        })
        .collect()
}

/// The texts of the replay fixtures' completions, by their SHA-256 (`completion_sha256`).
const REPLAY_TEXTS: [&str; 2] = ["ok", "A longer answer from the candidate."];

/// `replay_results.tsv` as the tagged results a worker publishes to the replay topic: a
/// completion whose text hashes to the row's `completion_sha256` (an error body for '').
pub fn replay_result_records() -> Vec<sluice_schemas::Result> {
    fixture("replay_results")
        .iter()
        .map(|r| {
            let sha = &r["completion_sha256"];
            let text = REPLAY_TEXTS
                .iter()
                .find(|t| sluice_schemas::audit_content::sha256_hex(t.as_bytes()) == *sha);
            let body = match text {
                Some(text) => serde_json::json!({"object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}),
                None => serde_json::json!({"error": {"message": "upstream failed"}}),
            };
            sluice_schemas::Result {
                request_id: r["request_id"].clone(),
                team: r["team"].clone(),
                key_id: "k-replay".into(),
                priority: Priority::Batch,
                model: r["model"].clone(),
                traceparent: None,
                status: enumeration(r, "status"),
                http_status: int(r, "http_status"),
                body: body.to_string(),
                error_kind: optional(r, "error_kind"),
                provider: r["provider"].clone(),
                deployment: r["deployment"].clone(),
                attempts: 1,
                prompt_tokens: int(r, "prompt_tokens"),
                completion_tokens: int(r, "completion_tokens"),
                created_at_ms: int(r, "created_at_ms"),
                started_at_ms: int(r, "started_at_ms"),
                finished_at_ms: int(r, "finished_at_ms"),
                worker: "worker-replay".into(),
                fallbacks: 0,
                routing_reason: None,
                location: None,
                replay: Some(sluice_schemas::ReplayTag {
                    replay_id: r["replay_id"].clone(),
                    original_request_id: r["original_request_id"].clone(),
                }),
                audit: None,
                calls: Vec::new(),
            }
        })
        .collect()
}

/// `replay_usage.tsv` as the tagged usage a worker publishes to the replay topic.
pub fn replay_usage_records() -> Vec<Usage> {
    fixture("replay_usage")
        .iter()
        .map(|r| Usage {
            request_id: r["request_id"].clone(),
            team: r["team"].clone(),
            key_id: "k-replay".into(),
            priority: Priority::Batch,
            model: r["model"].clone(),
            provider: r["provider"].clone(),
            deployment: r["deployment"].clone(),
            status: enumeration(r, "status"),
            prompt_tokens: int(r, "prompt_tokens"),
            completion_tokens: int(r, "completion_tokens"),
            cached_tokens: int(r, "cached_tokens"),
            cost_nanos: int(r, "cost_nanos"),
            created_at_ms: int(r, "created_at_ms"),
            latency_ms: 0,
            occurred_at_ms: int(r, "occurred_at_ms"),
            estimated: int::<u8>(r, "estimated") == 1,
            cache_hit: false,
            saved_nanos: 0,
            replay: Some(sluice_schemas::ReplayTag {
                replay_id: r["replay_id"].clone(),
                original_request_id: r["original_request_id"].clone(),
            }),
        })
        .collect()
}

/// Unique records per table in the fixtures (each has one duplicate inside; results also a
/// superseded version of r05).
pub const UNIQUE_USAGE: u64 = 12;
pub const UNIQUE_RESULTS: u64 = 12;
pub const UNIQUE_AUDIT: u64 = 29;

pub fn expected(name: &str) -> String {
    let path = fixtures_dir().join(format!("expected/{name}.tsv"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub async fn tsv(client: &Client, sql: &str) -> String {
    let bytes = client
        .query_raw(sql)
        .fetch_bytes("TSVWithNames")
        .unwrap()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    String::from_utf8(bytes.to_vec()).unwrap()
}

pub async fn count(client: &Client, sql: &str) -> u64 {
    client.query(sql).fetch_one::<u64>().await.unwrap()
}

/// Every view (rows sorted: views have no order) and every analyst query (in its own order)
/// gives exactly the expected output for the fixtures.
pub async fn assert_views_and_queries(client: &Client, db: &str) {
    for view in Table::VIEWS {
        let got = tsv(client, &format!("SELECT * FROM {db}.{}", view.name())).await;
        let mut lines: Vec<&str> = got.lines().collect();
        lines[1..].sort_unstable();
        let want = expected(view.name());
        assert_eq!(
            lines,
            want.lines().collect::<Vec<_>>(),
            "view {}",
            view.name()
        );
    }
    for (name, sql) in QUERIES {
        let got = tsv(client, &render_query(sql, db, TODAY)).await;
        assert_eq!(got, expected(name), "query {name}");
    }
}
