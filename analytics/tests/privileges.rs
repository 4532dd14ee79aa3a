//! Least privilege in ClickHouse (docs/security.md), against the real server: each Sluice
//! process's own user, as `scripts/services.sh` configures them, may do its job and is refused
//! everything else. The users are bound to fixed databases (users.xml `allow_databases`), so
//! this runs in `sluice_acl`, one test at a time (one test function).
//!
//! Needs `eval "$(scripts/services.sh env)"`: SLUICE_CLICKHOUSE_USER (the migrator) and
//! SLUICE_CH_{INGRESS,SINK,ANALYST}_USER/_PASSWORD.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on a broken fixture or an unreachable service"
)]

mod support;

use std::time::Duration;

use clickhouse::Client;
use sluice_analytics::config::ClickHouseConfig;
use sluice_analytics::tables::{insert, ResultBodyRow, ResultRow, UsageRow};
use sluice_analytics::{apply_migrations, client, migrator_client, private_client};
use sluice_schemas::tables::private_database;
use support::*;

/// One of the databases services.sh's users are bound to (CH_DATABASES).
const DB: &str = "sluice_acl";
const TIMEOUT: Duration = Duration::from_secs(30);

fn role(role: &str) -> ClickHouseConfig {
    let var = |what: &str| {
        let name = format!("SLUICE_CH_{role}_{what}");
        std::env::var(&name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run with `eval \"$(bash scripts/services.sh env)\"` against \
                 a ClickHouse started by scripts/services.sh (it configures the users)"
            )
        })
    };
    ClickHouseConfig {
        url: clickhouse_url(),
        database: DB.into(),
        user: Some(var("USER")),
        password: Some(var("PASSWORD")),
        ..ClickHouseConfig::default()
    }
}

/// Runs `sql`; the server's error text when it refuses.
async fn run(client: &Client, sql: &str) -> Result<(), String> {
    client.query(sql).execute().await.map_err(|e| e.to_string())
}

#[track_caller]
fn refused(result: Result<(), String>, because: &str, what: &str) {
    match result {
        Ok(()) => panic!("{what}: the server allowed it"),
        Err(e) => assert!(
            e.contains(because),
            "{what}: refused, but not for `{because}`: {e}"
        ),
    }
}

async fn count(client: &Client, sql: &str) -> u64 {
    client.query(sql).fetch_one::<u64>().await.unwrap()
}

#[tokio::test]
async fn each_process_user_is_held_to_its_own_rights() {
    let admin_config = ClickHouseConfig {
        url: clickhouse_url(),
        database: DB.into(),
        user: Some(clickhouse_user().expect("SLUICE_CLICKHOUSE_USER (the migrator) is set")),
        password: std::env::var("SLUICE_CLICKHOUSE_PASSWORD").ok(),
        ..ClickHouseConfig::default()
    };
    let admin = migrator_client(&admin_config);
    let private = private_database(DB);
    drop_database(&admin, DB).await;
    apply_migrations(&admin, DB).await.unwrap();

    // The sink inserts results, their bodies and usage: its job.
    let sink = role("SINK");
    let record = result_records().remove(0);
    insert(&client(&sink), &[ResultRow::from(record.clone())], TIMEOUT)
        .await
        .unwrap();
    insert(
        &private_client(&sink),
        &[ResultBodyRow::new(&record, 7)],
        TIMEOUT,
    )
    .await
    .unwrap();
    let usage = UsageRow::from(usage_records().remove(0));
    insert(&client(&sink), std::slice::from_ref(&usage), TIMEOUT)
        .await
        .unwrap();
    let sink_client = client(&sink);
    refused(
        run(
            &sink_client,
            &format!("CREATE TABLE {DB}.probe (x String) ENGINE = Memory"),
        )
        .await,
        "DDL queries are prohibited",
        "sink CREATE TABLE",
    );
    refused(
        run(&sink_client, &format!("DROP TABLE {DB}.usage")).await,
        "DDL queries are prohibited",
        "sink DROP TABLE",
    );
    refused(
        run(&sink_client, "SELECT count() FROM default.nothing").await,
        "Access denied",
        "sink reads another database",
    );

    // The ingress: its private database only. The SSRF of issue 14, had it carried the
    // ingress's credentials, could forge usage, drop it, or create tables: all refused.
    let ingress = role("INGRESS");
    let ingress_client = private_client(&ingress);
    assert_eq!(
        count(
            &ingress_client,
            &format!("SELECT toUInt64(count()) FROM {private}.result_bodies FINAL")
        )
        .await,
        1,
        "the ingress reads result bodies (GET /v1/requests/{{id}})"
    );
    run(
        &ingress_client,
        &format!(
            "INSERT INTO {private}.batch_cancels (batch_id, team, cancelled_at_ms) \
             VALUES ('batch_x', 'acme', 1)"
        ),
    )
    .await
    .expect("the ingress writes its batch tables");
    refused(
        run(
            &ingress_client,
            &format!(
                "INSERT INTO {DB}.usage (request_id, team, key_id, priority, model, provider, \
                 deployment, status, prompt_tokens, completion_tokens, cached_tokens, \
                 cost_nanos, created_at_ms, latency_ms, occurred_at_ms) VALUES ('forged', \
                 'victim', 'k', 'standard', 'm', 'p', 'd', 'completed', 1, 1, 0, \
                 999999999999, 1700000000000, 1, 1700000000000)"
            ),
        )
        .await,
        "Access denied",
        "ingress INSERT INTO usage",
    );
    refused(
        run(&ingress_client, &format!("DROP TABLE {DB}.usage")).await,
        "DDL queries are prohibited",
        "ingress DROP TABLE usage",
    );
    refused(
        run(
            &ingress_client,
            &format!("CREATE TABLE {DB}.probe (x String) ENGINE = Memory"),
        )
        .await,
        "DDL queries are prohibited",
        "ingress CREATE TABLE",
    );
    refused(
        run(
            &ingress_client,
            &format!("CREATE TABLE {private}.probe (x String) ENGINE = Memory"),
        )
        .await,
        "DDL queries are prohibited",
        "ingress CREATE TABLE in its own database",
    );
    // 18.16 lets a writer lift its profile's allow_ddl=0 per query (`?allow_ddl=1`): what
    // holds even then is allow_databases. The analyst database stays out of reach.
    let lifted = ingress_client.clone().with_setting("allow_ddl", "1");
    refused(
        run(&lifted, &format!("DROP TABLE {DB}.usage")).await,
        "Access denied",
        "ingress DROP TABLE usage with allow_ddl=1",
    );
    refused(
        run(
            &lifted,
            &format!("CREATE TABLE {DB}.probe (x String) ENGINE = Memory"),
        )
        .await,
        "Access denied",
        "ingress CREATE TABLE in the analyst database with allow_ddl=1",
    );
    refused(
        run(&ingress_client, &format!("SELECT * FROM {DB}.audit")).await,
        "Access denied",
        "ingress reads audit (other teams' prompts)",
    );
    refused(
        run(
            &ingress_client,
            &format!("SELECT count() FROM {private}.result_bodies WHERE request_id IN (SELECT request_id FROM {DB}.usage)"),
        )
        .await,
        "Access denied",
        "ingress reads usage in a subquery",
    );

    // Analysts: read the views, write nothing, never see the private database.
    let analyst = client(&role("ANALYST"));
    assert_eq!(
        count(
            &analyst,
            &format!("SELECT toUInt64(count()) FROM {DB}.spend_by_team_day")
        )
        .await,
        1
    );
    refused(
        run(
            &analyst,
            &format!("INSERT INTO {DB}.budget_alerts (alert_id) VALUES ('forged')"),
        )
        .await,
        "readonly",
        "analyst INSERT",
    );
    refused(
        run(&analyst, &format!("DROP TABLE {DB}.usage")).await,
        "readonly",
        "analyst DROP",
    );
    refused(
        run(
            &analyst,
            &format!("CREATE TABLE {DB}.probe (x String) ENGINE = Memory"),
        )
        .await,
        "readonly",
        "analyst CREATE",
    );
    refused(
        run(
            &analyst,
            &format!("SELECT body FROM {private}.result_bodies"),
        )
        .await,
        "Access denied",
        "analyst reads completion bodies",
    );
    refused(
        run(
            &analyst,
            &format!("SELECT * FROM {private}.batch_file_lines"),
        )
        .await,
        "Access denied",
        "analyst reads uploaded batch files",
    );
    refused(
        run(
            &analyst,
            "SELECT * FROM url('http://127.0.0.1:1/', CSV, 'x String')",
        )
        .await,
        "Table functions are forbidden",
        "analyst url() table function",
    );
    // readonly=1 cannot be lifted per query.
    refused(
        run(
            &analyst.clone().with_setting("readonly", "0"),
            &format!("CREATE TABLE {DB}.probe (x String) ENGINE = Memory"),
        )
        .await,
        "readonly",
        "analyst overriding readonly",
    );

    // No user: the issue's SSRF request exactly (a POST to ClickHouse's HTTP port with the
    // query in the URL and the webhook event as the body) is refused before it runs.
    let http = reqwest::Client::new();
    let ssrf = http
        .post(clickhouse_url())
        .query(&[(
            "query",
            format!("CREATE TABLE {DB}.probe (x String) ENGINE = Memory /*"),
        )])
        .body(r#"{"id":"batch_1","metadata":{"note":"*/ -- "}}"#)
        .send()
        .await
        .unwrap();
    let status = ssrf.status();
    let text = ssrf.text().await.unwrap();
    assert!(!status.is_success(), "default user ran DDL: {text}");
    assert!(text.contains("Password required"), "{text}");
    let anonymous = Client::default()
        .with_url(clickhouse_url())
        .with_validation(false);
    refused(
        run(&anonymous, &format!("SELECT count() FROM {DB}.usage")).await,
        "Password required",
        "default user reads usage",
    );

    // Nothing any of that tried is there; usage holds only the sink's row.
    assert_eq!(
        count(
            &admin,
            &format!(
                "SELECT toUInt64(count()) FROM system.tables \
                 WHERE database IN ('{DB}', '{private}') AND name = 'probe'"
            )
        )
        .await,
        0
    );
    assert_eq!(
        count(&admin, &format!("SELECT toUInt64(count()) FROM {DB}.usage")).await,
        1
    );
    drop_database(&admin, DB).await;
}
