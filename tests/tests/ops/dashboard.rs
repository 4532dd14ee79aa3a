//! docs/grafana/dashboards/json/sluice-sre.json: well-formed, on the provisioned Prometheus
//! datasource, every query naming only catalog metrics and recording rules.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::catalog;
use crate::common::repo_root;

fn dashboard() -> Value {
    let path = repo_root().join("docs/grafana/dashboards/json/sluice-sre.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON")
}

#[test]
fn sre_dashboard_is_wired_to_the_provisioned_prometheus() {
    let provisioning =
        std::fs::read_to_string(repo_root().join("docs/grafana/datasources/prometheus.yaml"))
            .expect("datasource");
    assert!(provisioning.contains("uid: sluice-prometheus"));
    assert!(provisioning.contains("type: prometheus"));

    let dash = dashboard();
    assert_eq!(dash["uid"], "sluice-sre");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_i64().expect("id")),
            "duplicate id"
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("title");
        assert_eq!(panel["datasource"]["uid"], "sluice-prometheus", "{title}");
        assert_eq!(panel["datasource"]["type"], "prometheus", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "sluice-prometheus", "{title}");
            let expr = target["expr"].as_str().expect("expr");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{title}: {expr}"
            );
            let names = catalog::names_in(expr);
            assert!(
                !names.is_empty() || expr.starts_with("up{"),
                "{title}: {expr}"
            );
            for name in names {
                assert!(
                    catalog::known(&name),
                    "{title}: {name} is not in the catalog"
                );
                queried.insert(name);
            }
        }
    }
    // The panels the SREs asked for: each of these is on the dashboard.
    for must in [
        "sluice:backlog_records:class",
        "sluice:backlog_tokens:sum",
        "sluice:time_in_queue_seconds:p99",
        "sluice_worker_in_flight",
        "sluice_provider_responses_total",
        "sluice_provider_retries_total",
        "sluice_fallbacks_total",
        "sluice_breaker_state",
        "sluice_routing_decisions_total",
        "sluice_deployment_latency_seconds",
        "sluice_throttle_wait_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "gen_ai_server_request_duration_seconds_bucket",
        "sluice_budget_spend_usd",
        "sluice_budget_limit_usd",
        "sluice_sink_lag_seconds",
        "sluice_sink_rows_inserted_total",
        "sluice_kafka_produce_duration_seconds_bucket",
    ] {
        assert!(queried.contains(must), "no panel queries {must}");
    }
}
