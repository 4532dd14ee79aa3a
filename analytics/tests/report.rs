//! `sluice-analytics report ...` against the real ClickHouse: the fixture rows moved to end
//! today, so a 7-day report must agree with the fixture oracle's 7-day expectations.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on a broken fixture or an unreachable service"
)]

mod support;

use std::time::Duration;

use sluice_analytics::report::{self, usd, Report, SpendBy};
use sluice_analytics::tables::{insert, AuditRow, ResultRow, UsageRow};
use sluice_analytics::{apply_migrations, client};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(30);
const DAY_MS: i64 = 86_400_000;
/// 2025-03-04T00:00:00Z, the fixtures' "today".
const FIXTURE_TODAY_MS: i64 = 1_741_046_400_000;

/// Whole days from the fixtures' today to the real one: calendar days stay calendar days.
fn shift_ms() -> i64 {
    let now = sluice_schemas::now_ms();
    (now - now.rem_euclid(DAY_MS)) - FIXTURE_TODAY_MS
}

async fn load_shifted(client: &clickhouse::Client) {
    let shift = shift_ms();
    let usage: Vec<UsageRow> = usage_records()
        .into_iter()
        .map(|mut u| {
            u.created_at_ms += shift;
            u.occurred_at_ms += shift;
            u.into()
        })
        .collect();
    let results: Vec<ResultRow> = result_records()
        .into_iter()
        .map(|mut r| {
            r.created_at_ms += shift;
            r.started_at_ms += shift;
            r.finished_at_ms += shift;
            r.into()
        })
        .collect();
    let audit: Vec<AuditRow> = audit_records()
        .into_iter()
        .map(|mut a| {
            a.occurred_at_ms += shift;
            a.into()
        })
        .collect();
    insert(client, &usage, TIMEOUT).await.unwrap();
    insert(client, &results, TIMEOUT).await.unwrap();
    insert(client, &audit, TIMEOUT).await.unwrap();
}

/// The table's data lines split into cells (header and rule skipped).
fn cells(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[tokio::test]
async fn reports_agree_with_the_fixture_oracle() {
    let config = clickhouse_config().await;
    let client = client(&config);
    let db = &config.database;
    apply_migrations(&client, db).await.unwrap();
    load_shifted(&client).await;

    // Spend by team over 7 days = expected/spend_by_team_last_7_days.tsv, same order.
    let table = report::run(&client, db, Report::Spend { by: SpendBy::Team }, 7)
        .await
        .unwrap();
    let want: Vec<Vec<String>> = expected("spend_by_team_last_7_days")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            // team, requests, prompt, completion, cached (not in the oracle's query: acme's
            // r02 and globex's r05 only), cost
            let cached = match f[0] {
                "acme" => "200",
                "globex" => "100",
                _ => "0",
            };
            vec![
                f[0].to_string(),
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                cached.to_string(),
                usd(f[4].parse().unwrap()),
            ]
        })
        .collect();
    assert_eq!(cells(&table), want, "{table}");
    assert!(table.starts_with("team  "), "{table}");

    // One day: only today's (acme's r01, r02, r12 and globex's r05).
    let table = report::run(&client, db, Report::Spend { by: SpendBy::Model }, 1)
        .await
        .unwrap();
    assert_eq!(
        cells(&table),
        vec![
            vec!["gpt-4o", "azure", "1", "500", "250", "100", "$0.375000"],
            vec![
                "gpt-4o-mini",
                "openai",
                "3",
                "1320",
                "680",
                "200",
                "$0.057600"
            ],
        ],
        "{table}"
    );
    let table = report::run(&client, db, Report::Spend { by: SpendBy::Key }, 30)
        .await
        .unwrap();
    // = expected/top_keys_by_cost.tsv (30 days too): team, key, requests, cost.
    let want: Vec<Vec<String>> = expected("top_keys_by_cost")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            vec![
                f[0].into(),
                f[1].into(),
                f[2].into(),
                usd(f[4].parse().unwrap()),
            ]
        })
        .collect();
    let got: Vec<Vec<String>> = cells(&table)
        .into_iter()
        .map(|c| vec![c[0].clone(), c[1].clone(), c[2].clone(), c[6].clone()])
        .collect();
    assert_eq!(got, want, "{table}");

    // Latency today: gpt-4o-mini on openai-east took 820, 1500 and 640 ms.
    let table = report::run(&client, db, Report::Latency, 1).await.unwrap();
    assert_eq!(
        cells(&table),
        vec![
            vec!["gpt-4o", "azure-eu", "1", "2100", "2100", "2100", "2100"],
            vec![
                "gpt-4o-mini",
                "openai-east",
                "3",
                "820",
                "1500",
                "1500",
                "1500"
            ],
        ],
        "{table}"
    );

    // Errors today: acme's two budget refusals of gpt-4o are throttling.
    let table = report::run(&client, db, Report::Errors, 1).await.unwrap();
    assert!(
        cells(&table).contains(
            &["acme", "gpt-4o", "2", "0", "0", "2", "2", "0.00%", "100.00%"]
                .map(String::from)
                .to_vec()
        ),
        "{table}"
    );

    // The binary, as an operator runs it, configured by the environment.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-analytics"))
        .args(["report", "spend", "--by", "provider", "--days", "7"])
        .env("SLUICE_CLICKHOUSE_URL", &config.url)
        .env("SLUICE_CLICKHOUSE_DATABASE", db)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "provider",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_usd"
        ]
    );
    assert_eq!(
        cells(&stdout).len(),
        3,
        "openai, azure, anthropic: {stdout}"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-analytics"))
        .args(["report", "spend", "--by", "colour"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("team, key, model, provider"));

    drop_database(&client, db).await;
}
