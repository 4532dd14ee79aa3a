//! Retention of content (docs/security.md) on the real ClickHouse: expired completions,
//! accepted-request markers and uploaded batch files are dropped by the retention job; what
//! has not expired stays. On 18.16 (no TTL) migration 0006 skips its `@if ttl` statements and
//! the job is the mechanism; on a server with TTL the tables carry `TTL expires_at`.
mod support;

use std::time::Duration;

use sluice_analytics::migrations::supports_ttl;
use sluice_analytics::retention::drop_expired;
use sluice_analytics::tables::{insert, AcceptedRow, ResultBodyRow};
use sluice_analytics::{apply_migrations, client, private_client};
use sluice_schemas::now_ms;
use sluice_schemas::tables::{private_database, PrivateTable};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(30);
const DAY_MS: i64 = 86_400_000;

#[tokio::test]
async fn expired_content_is_dropped_and_the_rest_kept() {
    let config = clickhouse_config().await;
    let ch = client(&config);
    let db = config.database.clone();
    let private = private_database(&db);
    apply_migrations(&ch, &db).await.unwrap();

    // Kept 7 days: accepted 10 days ago has expired, accepted an hour ago has not.
    let mut old = result_records().remove(0);
    old.request_id = "old".into();
    old.created_at_ms = now_ms() - 10 * DAY_MS;
    let mut fresh = old.clone();
    fresh.request_id = "fresh".into();
    fresh.created_at_ms = now_ms() - 3_600_000;
    let bodies = [ResultBodyRow::new(&old, 7), ResultBodyRow::new(&fresh, 7)];
    let pclient = private_client(&config);
    insert(&pclient, &bodies, TIMEOUT).await.unwrap();
    let mut accepted = audit_records().remove(0);
    accepted.action = sluice_schemas::AuditAction::Accepted;
    accepted.occurred_at_ms = old.created_at_ms;
    let marker = AcceptedRow::of(&accepted, 7).unwrap();
    insert(&pclient, &[marker], TIMEOUT).await.unwrap();
    // Uploaded files as the ingress writes them: an expired one and a current one.
    let old_expiry = sluice_schemas::tables::expires_at(now_ms() - 8 * DAY_MS, 7);
    let new_expiry = sluice_schemas::tables::expires_at(now_ms(), 7);
    for (file, expiry) in [("file-old", old_expiry), ("file-new", new_expiry)] {
        ch.query(&format!(
            "INSERT INTO {private}.batch_file_lines (file_id, line_no, line, expires_at) \
             VALUES (?, 0, '{{\"custom_id\":\"a\"}}', ?)"
        ))
        .bind(file)
        .bind(expiry)
        .execute()
        .await
        .unwrap();
        ch.query(&format!(
            "INSERT INTO {private}.batch_files (file_id, team, purpose, filename, bytes, lines, \
             created_at_ms, expires_at) VALUES (?, 'acme', 'batch', 'in.jsonl', 1, 1, 0, ?)"
        ))
        .bind(file)
        .bind(expiry)
        .execute()
        .await
        .unwrap();
    }
    // A stored conversation's input, as the ingress writes it: an expired one, a current one.
    for (id, expiry) in [("conv-old", old_expiry), ("conv-new", new_expiry)] {
        ch.query(&format!(
            "INSERT INTO {private}.conversation_inputs (request_id, team, items, output, \
             created_at_ms, expires_at) VALUES (?, 'acme', '[]', '', 0, ?)"
        ))
        .bind(id)
        .bind(expiry)
        .execute()
        .await
        .unwrap();
    }

    let ids = |table: PrivateTable, column: &'static str| {
        let ch = ch.clone();
        let sql = format!(
            "SELECT {column} FROM {} ORDER BY {column}",
            table.qualified(&db)
        );
        async move { ch.query(&sql).fetch_all::<String>().await.unwrap() }
    };
    assert_eq!(
        ids(PrivateTable::ResultBodies, "request_id").await,
        ["fresh", "old"]
    );

    let dropped = drop_expired(&ch, &db).await.unwrap();
    let tables: Vec<&str> = dropped.iter().map(|d| d.table).collect();
    for table in PrivateTable::EXPIRING {
        assert!(tables.contains(&table.name()), "{dropped:?}");
    }
    assert_eq!(
        ids(PrivateTable::ResultBodies, "request_id").await,
        ["fresh"]
    );
    assert!(ids(PrivateTable::AcceptedRequests, "request_id")
        .await
        .is_empty());
    assert_eq!(
        ids(PrivateTable::BatchFileLines, "file_id").await,
        ["file-new"]
    );
    assert_eq!(ids(PrivateTable::BatchFiles, "file_id").await, ["file-new"]);
    assert_eq!(
        ids(PrivateTable::ConversationInputs, "request_id").await,
        ["conv-new"]
    );
    // Nothing more to drop.
    assert!(drop_expired(&ch, &db).await.unwrap().is_empty());

    // TTL where the server has it, the job alone where it has not (18.16).
    let version: String = ch.query("SELECT version()").fetch_one().await.unwrap();
    for table in PrivateTable::EXPIRING {
        let create: String = ch
            .query("SELECT create_table_query FROM system.tables WHERE database = ? AND name = ?")
            .bind(&private)
            .bind(table.name())
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(
            create.contains("TTL expires_at"),
            supports_ttl(&version),
            "{version}: {create}"
        );
    }
    drop_database(&ch, &db).await;
}
