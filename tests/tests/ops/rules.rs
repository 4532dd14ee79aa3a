//! deploy/prometheus: `promtool check rules`, `promtool test rules` (synthetic series that
//! make each alert fire, and a healthy system on which none does), the scrape config
//! template, and the alerts' names and runbooks.

use std::collections::BTreeSet;

use crate::catalog::{self, deploy_dir, prometheus_tool, run_ok};
use crate::common::repo_root;

fn alerts_yml() -> String {
    std::fs::read_to_string(deploy_dir().join("alerts.yml")).expect("alerts.yml")
}

/// `alert: Name` lines of alerts.yml.
fn alert_names() -> Vec<String> {
    alerts_yml()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn promtool_checks_the_rules() {
    let mut check = prometheus_tool("promtool");
    check.args(["check", "rules", "alerts.yml"]);
    let out = run_ok(check, &deploy_dir());
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_rule_tests_pass() {
    let mut test = prometheus_tool("promtool");
    test.args(["test", "rules", "alerts_test.yml"]);
    let out = run_ok(test, &deploy_dir());
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_fires_in_the_rule_tests_and_stays_quiet_on_a_healthy_system() {
    let tests = std::fs::read_to_string(deploy_dir().join("alerts_test.yml")).expect("tests");
    let names = alert_names();
    assert!(names.len() >= 8, "{names:?}");
    for must in [
        "SluiceBacklogGrowing",
        "SluiceTimeInQueueHigh",
        "SluiceProviderErrorRate",
        "SluiceBreakerOpen",
        "SluiceBudgetBurn",
        "SluiceSinkLag",
        "SluiceDeadLetters",
        "SluiceTargetDown",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} missing");
    }
    // The healthy group: one quiet line per alert.
    let (_, healthy) = tests
        .rsplit_once("a healthy system")
        .expect("healthy group");
    for name in &names {
        assert!(
            tests.contains(&format!("- alertname: {name}\n")),
            "{name} has no firing test"
        );
        assert!(
            healthy.contains(&format!(
                "{{alertname: {name}, eval_time: 30m, exp_alerts: []}}"
            )),
            "{name} is not checked quiet on the healthy system"
        );
    }
}

#[test]
fn rules_use_only_catalog_metrics() {
    let unknown: BTreeSet<String> = catalog::names_in(&alerts_yml())
        .into_iter()
        .filter(|n| !catalog::known(n))
        .collect();
    assert!(unknown.is_empty(), "not in the catalog: {unknown:?}");
    for recorded in catalog::RECORDED {
        assert!(
            alerts_yml().contains(&format!("- record: {recorded}\n")),
            "{recorded} is not recorded"
        );
    }
}

#[test]
fn every_alert_has_annotations_and_a_runbook_in_operations_md() {
    let yml = alerts_yml();
    let operations =
        std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("operations.md");
    let headings: BTreeSet<String> = operations
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    for name in alert_names() {
        let (_, rest) = yml
            .split_once(&format!("- alert: {name}\n"))
            .expect("alert");
        let block = rest.split("- alert: ").next().unwrap_or(rest);
        for key in ["summary:", "description:", "runbook_url:", "severity:"] {
            assert!(block.contains(key), "{name} has no {key}");
        }
        let anchor = name.to_lowercase();
        assert!(
            block.contains(&format!("runbook_url: \"docs/operations.md#{anchor}\"")),
            "{name}'s runbook_url"
        );
        assert!(
            headings.contains(&anchor),
            "docs/operations.md has no `### {name}` runbook"
        );
    }
}

#[test]
fn the_scrape_config_template_renders_to_a_valid_config() {
    let dir = std::env::temp_dir().join(crate::common::unique("sluice-promcfg-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = catalog::render_config(
        "5s",
        &["127.0.0.1:9464".into()],
        &["127.0.0.1:9465".into(), "127.0.0.1:9467".into()],
        &["127.0.0.1:9466".into()],
        &[deploy_dir().join("alerts.yml")],
    );
    assert!(!config.contains("${"), "{config}");
    std::fs::write(dir.join("prometheus.yml"), &config).expect("write");
    let mut check = prometheus_tool("promtool");
    check.args(["check", "config", "prometheus.yml"]);
    let out = run_ok(check, &dir);
    assert!(
        out.contains("18 rules found") || out.contains("rules found"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
