//! The provisioned Grafana dashboard (docs/grafana/) against the real ClickHouse (18.16 on the
//! test machines; tests/python/test_chdb_migrations.py runs the same panels on a current
//! release): the JSON parses, every panel uses the provisioned datasource, and every panel's
//! SQL, with the plugin's macros expanded as the plugin expands them, runs on the migrated
//! schema and finds the fixture rows.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on a broken fixture or an unreachable service"
)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sluice_analytics::tables::{insert, AuditRow, ResultRow, UsageRow};
use sluice_analytics::{apply_migrations, client};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The fixtures span 2025-01-20 .. 2025-03-04.
const FROM_S: i64 = 1_735_689_600; // 2025-01-01T00:00:00Z
const TO_S: i64 = 1_741_132_800; // 2025-03-05T00:00:00Z

fn grafana_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana")
}

/// `$__timeFilter(c)`, `$__fromTime`, `$__toTime` as grafana-clickhouse-datasource expands
/// them, and the dashboard's `${db}` variable.
fn expand(sql: &str, db: &str) -> String {
    let mut out = sql
        .replace("${db}", db)
        .replace("$__fromTime", &format!("toDateTime({FROM_S})"))
        .replace("$__toTime", &format!("toDateTime({TO_S})"));
    while let Some(start) = out.find("$__timeFilter(") {
        let rest = &out[start + "$__timeFilter(".len()..];
        let end = rest.find(')').unwrap();
        let column = rest[..end].trim().to_string();
        out = format!(
            "{}{column} >= toDateTime({FROM_S}) AND {column} <= toDateTime({TO_S}){}",
            &out[..start],
            &rest[end + 1..]
        );
    }
    assert!(!out.contains('$'), "unexpanded macro in {out}");
    out
}

#[tokio::test]
async fn dashboard_panels_run_on_the_migrated_schema() {
    let datasource =
        std::fs::read_to_string(grafana_dir().join("datasources/clickhouse.yaml")).unwrap();
    assert!(datasource.contains("type: grafana-clickhouse-datasource"));
    assert!(datasource.contains("uid: sluice-clickhouse"));
    assert!(
        !datasource.contains("sluice-dev"),
        "the password comes from the environment"
    );
    let provider = std::fs::read_to_string(grafana_dir().join("dashboards/sluice.yaml")).unwrap();
    assert!(provider.contains("path: /etc/grafana/provisioning/dashboards/json"));
    let compose = std::fs::read_to_string(grafana_dir().join("../../docker-compose.yml")).unwrap();
    assert!(compose.contains("./docs/grafana:/etc/grafana/provisioning"));
    assert!(compose.contains("grafana-clickhouse-datasource"));

    let config = clickhouse_config().await;
    let client = client(&config);
    let db = &config.database;
    apply_migrations(&client, db).await.unwrap();
    let usage: Vec<UsageRow> = usage_records().into_iter().map(Into::into).collect();
    let results: Vec<ResultRow> = result_records().into_iter().map(Into::into).collect();
    let audit: Vec<AuditRow> = audit_records().into_iter().map(Into::into).collect();
    insert(&client, &usage, TIMEOUT).await.unwrap();
    insert(&client, &results, TIMEOUT).await.unwrap();
    insert(&client, &audit, TIMEOUT).await.unwrap();
    client
        .query_raw(&format!(
            "INSERT INTO {db}.budget_alerts (alert_id, scope, subject, period, period_start_ms, \
             threshold_pct, limit_nanos, spent_nanos, occurred_at_ms, instance) VALUES \
             ('team:acme:1740787200000:80', 'team', 'acme', 'month', 1740787200000, 80, \
             1000000000, 800000000, 1741082400000, 'ingress-0')"
        ))
        .execute()
        .await
        .unwrap();

    let dir = grafana_dir().join("dashboards/json");
    let mut dashboards = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // Row panels only group the others; they have no datasource and no query.
        let panels: Vec<&Value> = dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] != "row")
            .collect();
        // The SRE dashboard reads Prometheus; tests/tests/ops/dashboard.rs checks it.
        if panels
            .iter()
            .all(|p| p["datasource"]["uid"] == "sluice-prometheus")
        {
            continue;
        }
        dashboards += 1;
        assert!(panels.len() >= 6, "{}", path.display());
        for panel in panels {
            let title = panel["title"].as_str().unwrap();
            assert_eq!(panel["datasource"]["uid"], "sluice-clickhouse", "{title}");
            for target in panel["targets"].as_array().unwrap() {
                let sql = expand(target["rawSql"].as_str().unwrap(), db);
                let rows = client
                    .query_raw(&sql)
                    .fetch_bytes("TSV")
                    .unwrap()
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("panel {title}: {e}\n{sql}"));
                assert!(
                    !rows.is_empty(),
                    "panel {title} finds the fixture rows:\n{sql}"
                );
            }
        }
    }
    assert_eq!(dashboards, 1);
    drop_database(&client, db).await;
}
