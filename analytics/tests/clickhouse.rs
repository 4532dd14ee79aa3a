//! Migrations, row types, views and analyst queries against the real ClickHouse
//! (SLUICE_CLICKHOUSE_URL, 18.16 on the test machines). Each test has its own database.
mod support;

use std::time::{Duration, Instant};

use sluice_analytics::config::{ClickHouseConfig, Compression};
use sluice_analytics::tables::{
    insert, AuditRow, ReplayResultRow, ReplayUsageRow, ResultBodyRow, ResultRow, UsageRow,
};
use sluice_analytics::{apply_migrations, client, find_result, find_result_body, private_client};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn migrations_apply_once_then_nothing() {
    let config = clickhouse_config().await;
    let client = client(&config);
    let db = &config.database;

    let all = sluice_analytics::migrations::migrations().unwrap();
    let versions: Vec<u32> = all.iter().map(|m| m.version).collect();
    assert_eq!(versions[..2], [1, 2]);
    assert_eq!(apply_migrations(&client, db).await.unwrap(), versions);
    assert_eq!(
        apply_migrations(&client, db).await.unwrap(),
        Vec::<u32>::new()
    );

    let recorded = tsv(
        &client,
        &format!("SELECT version, name FROM {db}.schema_migrations FINAL ORDER BY version"),
    )
    .await;
    let want: String = all
        .iter()
        .map(|m| format!("{}\t{}\n", m.version, m.name))
        .collect();
    assert_eq!(recorded, format!("version\tname\n{want}"));
    let tables = tsv(
        &client,
        &format!("SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name"),
    )
    .await;
    let tables: Vec<&str> = tables.lines().skip(1).collect();
    for table in ["audit", "results", "usage", "schema_migrations"]
        .into_iter()
        .chain(sluice_analytics::Table::VIEWS.map(|v| v.name()))
    {
        assert!(tables.contains(&table), "{table} in {tables:?}");
    }
    // The audit content columns of 0004 (added by ALTER: skipped when present).
    let audit_columns = tsv(
        &client,
        &format!("SELECT name FROM system.columns WHERE database = '{db}' AND table = 'audit' AND name IN ('prompt_sha256', 'prompt_text', 'completion_sha256', 'completion_text', 'policy') ORDER BY name"),
    )
    .await;
    assert_eq!(
        audit_columns,
        "name\ncompletion_sha256\ncompletion_text\npolicy\nprompt_sha256\nprompt_text\n"
    );
    drop_database(&client, db).await;
}

#[tokio::test]
async fn fixtures_give_the_expected_views_and_queries() {
    let config = clickhouse_config().await;
    let client = client(&config);
    let db = &config.database;
    apply_migrations(&client, db).await.unwrap();

    let usage: Vec<UsageRow> = usage_records().into_iter().map(Into::into).collect();
    let results: Vec<ResultRow> = result_records().into_iter().map(Into::into).collect();
    let audit: Vec<AuditRow> = audit_records().into_iter().map(Into::into).collect();
    let replays = replay_result_rows();
    // The rows the sink makes of the tagged records are the fixture's rows: the completion's
    // hash and length come out as the table has them.
    let made: Vec<ReplayResultRow> = replay_result_records()
        .into_iter()
        .filter_map(ReplayResultRow::of)
        .collect();
    assert_eq!(made, replays);
    let replay_usage: Vec<ReplayUsageRow> = replay_usage_records()
        .into_iter()
        .filter_map(ReplayUsageRow::of)
        .collect();
    assert_eq!(replay_usage.len(), 6);
    // A live record has no replay row.
    assert!(ReplayUsageRow::of(usage_records().remove(0)).is_none());
    // Twice: the second time is a whole batch redelivered after a crash before the commit.
    for _ in 0..2 {
        insert(&client, &usage, TIMEOUT).await.unwrap();
        insert(&client, &results, TIMEOUT).await.unwrap();
        insert(&client, &audit, TIMEOUT).await.unwrap();
        insert(&client, &replays, TIMEOUT).await.unwrap();
        insert(&client, &replay_usage, TIMEOUT).await.unwrap();
    }
    for (table, unique) in [
        ("usage", UNIQUE_USAGE),
        ("results", UNIQUE_RESULTS),
        ("audit", UNIQUE_AUDIT),
    ] {
        assert_eq!(
            count(&client, &format!("SELECT count() FROM {db}.{table} FINAL")).await,
            unique,
            "{table}"
        );
    }
    assert_views_and_queries(&client, db).await;
    drop_database(&client, db).await;
}

#[tokio::test]
async fn rows_read_back_as_written() {
    // RowBinary without validation: a field of the wrong width would shift every column
    // after it. Reading each row back proves the Rust types match the columns.
    let config = clickhouse_config().await;
    let client = client(&config);
    let db = &config.database;
    apply_migrations(&client, db).await.unwrap();

    let results: Vec<ResultRow> = result_records().into_iter().map(Into::into).collect();
    insert(&client, &results, TIMEOUT).await.unwrap();
    let r03 = results.iter().find(|r| r.request_id == "r03").unwrap();
    let found = find_result(&client, db, "r03", "acme").await.unwrap();
    assert_eq!(found.as_ref(), Some(r03));
    // The body goes to the private database, not to analysts' `results`.
    let records = result_records();
    let bodies: Vec<ResultBodyRow> = records.iter().map(|r| ResultBodyRow::new(r, 7)).collect();
    let private = private_client(&config);
    insert(&private, &bodies, TIMEOUT).await.unwrap();
    let body = find_result_body(&client, db, "r03", "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Some(&body), bodies.iter().find(|b| b.request_id == "r03"));
    assert!(body.body.contains(r#""content":"two\nlines""#));
    assert_eq!(
        find_result_body(&client, db, "r03", "globex")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        find_result(&client, db, "r03", "globex").await.unwrap(),
        None
    );
    // r05 was processed twice: the later result wins.
    let r05 = find_result(&client, db, "r05", "globex")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r05.worker, "worker-2");

    let usage: Vec<UsageRow> = usage_records().into_iter().map(Into::into).collect();
    insert(&client, &usage, TIMEOUT).await.unwrap();
    let stored: Vec<UsageRow> = client
        .query(&format!(
            "SELECT ?fields FROM {db}.usage FINAL ORDER BY request_id"
        ))
        .fetch_all()
        .await
        .unwrap();
    let mut want = usage.clone();
    want.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    want.dedup();
    assert_eq!(stored, want);

    let audit: Vec<AuditRow> = audit_records().into_iter().map(Into::into).collect();
    insert(&client, &audit, TIMEOUT).await.unwrap();
    let stored: Vec<AuditRow> = client
        .query(&format!(
            "SELECT ?fields FROM {db}.audit FINAL ORDER BY event_id"
        ))
        .fetch_all()
        .await
        .unwrap();
    // Every event, the content columns of 0004 included.
    let mut want: Vec<AuditRow> = audit;
    want.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    want.dedup();
    assert!(want
        .iter()
        .any(|a| !a.prompt_text.is_empty() && !a.policy.is_empty()));
    assert_eq!(stored, want);

    // Derived columns, in UTC whatever the server's time zone.
    let derived = tsv(
        &client,
        &format!("SELECT created_at, day FROM {db}.usage FINAL WHERE request_id = 'r03'"),
    )
    .await;
    assert_eq!(
        derived,
        "created_at\tday\n2025-03-03 23:59:59\t2025-03-03\n"
    );
    drop_database(&client, db).await;
}

#[tokio::test]
async fn a_duplicate_usage_record_is_billed_once() {
    let config = clickhouse_config().await;
    let client = client(&config);
    let db = &config.database;
    apply_migrations(&client, db).await.unwrap();

    let one = UsageRow::from(usage_records().remove(0));
    // Separate inserts, so separate parts: only FINAL (in the views) collapses them.
    insert(&client, std::slice::from_ref(&one), TIMEOUT)
        .await
        .unwrap();
    insert(&client, std::slice::from_ref(&one), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        count(&client, &format!("SELECT count() FROM {db}.usage")).await,
        2
    );
    let spend = tsv(
        &client,
        &format!("SELECT requests, cost_nanos FROM {db}.spend_by_team_day"),
    )
    .await;
    assert_eq!(
        spend,
        format!("requests\tcost_nanos\n1\t{}\n", one.cost_nanos)
    );
    drop_database(&client, db).await;
}

/// Insert throughput of the sink's insert path. Run by hand:
/// `cargo test -p sluice-analytics --test clickhouse -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn insert_throughput() {
    let config = clickhouse_config().await;
    let db = &config.database;
    apply_migrations(&client(&config), db).await.unwrap();
    let template = UsageRow::from(usage_records().remove(0));
    let rows: Vec<UsageRow> = (0..200_000)
        .map(|i| UsageRow {
            request_id: format!("req-{i:08}"),
            ..template.clone()
        })
        .collect();
    for compression in [Compression::Lz4, Compression::None] {
        let client = client(&ClickHouseConfig {
            compression,
            ..config.clone()
        });
        for batch in [1_000usize, 10_000, 50_000] {
            let started = Instant::now();
            for chunk in rows.chunks(batch) {
                insert(&client, chunk, TIMEOUT).await.unwrap();
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "usage insert, {compression:?}, batches of {batch}: {} rows in {secs:.2} s = {:.0} rows/s",
                rows.len(),
                rows.len() as f64 / secs
            );
        }
    }
    drop_database(&client(&config), db).await;
}

/// An installation from before 0006 (bodies in `results`, batch tables next to the analyst
/// views) upgrades in place: bodies, accepted requests and batch rows move to the private
/// database with an expiry, and nothing of them is left where analysts read.
#[tokio::test]
async fn migration_0006_moves_content_out_of_the_analyst_database() {
    use sluice_analytics::migrations::{migrations, split_statements, BOOKKEEPING};
    use sluice_analytics::queries::render;

    let config = clickhouse_config().await;
    let ch = client(&config);
    let db = config.database.clone();
    let private = sluice_schemas::tables::private_database(&db);
    let admin = ch.clone().with_database("default");
    for sql in split_statements(&render(BOOKKEEPING, &[("db", &db)])) {
        admin.query(&sql).execute().await.unwrap();
    }
    for migration in migrations().unwrap().iter().filter(|m| m.version < 6) {
        for sql in migration.statements(&db) {
            admin.query(&sql).execute().await.unwrap();
        }
        admin
            .query(&format!(
                "INSERT INTO {db}.schema_migrations (version, name) VALUES (?, ?)"
            ))
            .bind(migration.version)
            .bind(migration.name)
            .execute()
            .await
            .unwrap();
    }
    let created_ms = sluice_schemas::now_ms();
    for sql in [
        format!(
            "INSERT INTO {db}.results (request_id, team, key_id, priority, model, traceparent, \
             status, http_status, body, error_kind, provider, deployment, attempts, \
             prompt_tokens, completion_tokens, created_at_ms, started_at_ms, finished_at_ms, \
             worker) VALUES ('r1', 'acme', 'k', 'standard', 'm', '', 'completed', 200, \
             'the completion', '', 'p', 'd', 1, 1, 1, {created_ms}, {created_ms}, {created_ms}, 'w')"
        ),
        format!(
            "INSERT INTO {db}.audit (event_id, request_id, team, key_id, action, model, \
             priority, http_status, reason, prompt_tokens, occurred_at_ms) VALUES \
             ('e1', 'r2', 'acme', 'k', 'accepted', 'm', 'standard', 202, '', 1, {created_ms})"
        ),
        format!(
            "INSERT INTO {db}.batch_files (file_id, team, purpose, filename, bytes, lines, \
             created_at_ms) VALUES ('file-1', 'acme', 'batch', 'in.jsonl', 10, 1, {created_ms})"
        ),
        format!(
            "INSERT INTO {db}.batch_file_lines (file_id, line_no, line) VALUES \
             ('file-1', 0, 'the prompt'), ('file-orphan', 0, 'a failed upload')"
        ),
        format!(
            "INSERT INTO {db}.batch_lines (batch_id, line_no, custom_id, request_id, \
             error_code, error_message) VALUES ('batch_1', 0, 'a', 'batch_1-0', '', '')"
        ),
    ] {
        ch.query(&sql).execute().await.unwrap();
    }

    // 0006 moves the content; 0007 to 0012 come after it.
    assert_eq!(
        apply_migrations(&ch, &db).await.unwrap(),
        [6, 7, 8, 9, 10, 11, 12]
    );

    let text = |sql: String| {
        let ch = ch.clone();
        async move { ch.query(&sql).fetch_all::<String>().await.unwrap() }
    };
    assert!(
        text(format!(
            "SELECT name FROM system.columns WHERE database = '{db}' AND table = 'results' \
             AND name = 'body'"
        ))
        .await
        .is_empty(),
        "results.body is gone"
    );
    assert!(
        text(format!(
            "SELECT name FROM system.tables WHERE database = '{db}' AND name LIKE 'batch%'"
        ))
        .await
        .is_empty(),
        "no batch table is left in the analyst database"
    );
    assert_eq!(
        text(format!(
            "SELECT body FROM {private}.result_bodies WHERE request_id = 'r1'"
        ))
        .await,
        ["the completion"]
    );
    assert_eq!(
        text(format!(
            "SELECT team FROM {private}.accepted_requests WHERE request_id = 'r2'"
        ))
        .await,
        ["acme"]
    );
    assert_eq!(
        text(format!("SELECT custom_id FROM {private}.batch_lines")).await,
        ["a"]
    );
    // Moved content expires 7 days after its creation; lines of an upload that never
    // completed (no file row) expire at once.
    let in_a_week = (created_ms / 1000 + 7 * 86_400).to_string();
    assert_eq!(
        text(format!(
            "SELECT toString(toUInt32(expires_at)) FROM {private}.batch_files"
        ))
        .await,
        std::slice::from_ref(&in_a_week)
    );
    assert_eq!(
        text(format!(
            "SELECT concat(file_id, ' ', line, ' ', toString(toUInt32(expires_at))) \
             FROM {private}.batch_file_lines ORDER BY file_id"
        ))
        .await,
        [
            format!("file-1 the prompt {in_a_week}"),
            "file-orphan a failed upload 0".to_string()
        ]
    );
    // Re-running finds nothing to do.
    assert!(apply_migrations(&ch, &db).await.unwrap().is_empty());
    drop_database(&ch, &db).await;
}
