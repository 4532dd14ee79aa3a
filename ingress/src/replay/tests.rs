use sluice_schemas::audit_content::AuditContent;

use figment::providers::Format;

use super::*;
use crate::config::ShadowConfig;

fn config() -> Config {
    figment::Figment::new()
        .merge(figment::providers::Toml::string(
            r#"
            [[models]]
            id = "gpt-4o-mini"
            [[models]]
            id = "claude-3-5-haiku"
            [replay]
            forbidden_teams = ["secret"]
            max_rate_per_s = 20
            max_budget_usd = 5.0
            "#,
        ))
        .extract()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn spec() -> Spec {
    Spec {
        replay_id: Some("rp_test".into()),
        from_ms: 1_000,
        to_ms: 2_000,
        team: Some("acme".into()),
        model: None,
        priority: None,
        target_model: "claude-3-5-haiku".into(),
        rate_per_s: None,
        budget_usd: 1.5,
        limit: None,
    }
}

fn param(result: Result<Checked, ApiError>) -> &'static str {
    match result {
        Err(ApiError::InvalidParam { param, .. }) => param,
        other => panic!("expected an invalid parameter, got {other:?}"),
    }
}

#[test]
fn a_good_spec_gets_its_defaults() {
    let checked = spec().check(&config()).unwrap();
    assert_eq!(checked.replay_id, "rp_test");
    assert_eq!((checked.rate_per_s, checked.limit), (10, MAX_LIMIT));
    assert_eq!(checked.budget_nanos, 1_500_000_000);
    let made = Spec {
        replay_id: None,
        ..spec()
    };
    let id = made.check(&config()).unwrap().replay_id;
    assert!(id.starts_with("rp_") && valid_id(&id), "{id}");
}

#[test]
fn every_bound_is_checked() {
    let config = config();
    let with = |f: fn(&mut Spec)| {
        let mut s = spec();
        f(&mut s);
        s.check(&config)
    };
    assert_eq!(
        param(with(|s| s.replay_id = Some("shadow-x".into()))),
        "replay_id"
    );
    assert_eq!(
        param(with(|s| s.replay_id = Some("Bad.Id".into()))),
        "replay_id"
    );
    assert_eq!(param(with(|s| s.to_ms = s.from_ms)), "from_ms");
    assert_eq!(param(with(|s| s.from_ms = -1)), "from_ms");
    assert_eq!(param(with(|s| s.from_ms = i64::MAX - 1)), "from_ms");
    assert_eq!(
        param(with(|s| s.target_model = "gpt-9".into())),
        "target_model"
    );
    assert_eq!(param(with(|s| s.rate_per_s = Some(0))), "rate_per_s");
    assert_eq!(param(with(|s| s.rate_per_s = Some(21))), "rate_per_s");
    // A replay's bill is bounded by the operator's maximum; no free, endless or NaN budget.
    for budget in [0.0, -1.0, 5.01, f64::NAN, f64::INFINITY] {
        let mut s = spec();
        s.budget_usd = budget;
        assert_eq!(param(s.check(&config)), "budget_usd", "{budget}");
    }
    assert_eq!(param(with(|s| s.limit = Some(0))), "limit");
    assert_eq!(param(with(|s| s.limit = Some(MAX_LIMIT + 1))), "limit");
}

#[test]
fn a_team_whose_policy_forbids_it_is_not_replayed() {
    let mut config = config();
    let with_team = |team: &str| Spec {
        team: Some(team.into()),
        ..spec()
    };
    assert!(matches!(
        with_team("secret").check(&config),
        Err(ApiError::ReplayForbidden(t)) if t == "secret"
    ));
    config
        .audit
        .teams
        .insert("private".into(), AuditContent::None);
    assert!(matches!(
        with_team("private").check(&config),
        Err(ApiError::ReplayForbidden(_))
    ));
    assert!(config.replay.allows(&config, "acme"));
    assert!(!config.replay.allows(&config, "private"));
}

#[test]
fn shadows_are_checked_at_start_up() {
    let mut config = config();
    let shadow = |name: &str, target: &str, percent: f64| ShadowConfig {
        name: name.into(),
        model: "gpt-4o-mini".into(),
        target_model: target.into(),
        percent,
        teams: Vec::new(),
    };
    config.shadows = vec![shadow("mini-to-haiku", "claude-3-5-haiku", 10.0)];
    assert!(config.validate().is_ok());
    for bad in [
        shadow("Bad Name", "claude-3-5-haiku", 10.0),
        shadow("x", "claude-3-5-haiku", 0.0),
        shadow("x", "claude-3-5-haiku", 100.5),
        shadow("x", "gpt-9", 10.0),
        shadow("x", "gpt-4o-mini", 10.0),
    ] {
        config.shadows = vec![bad];
        assert!(config.validate().is_err(), "{:?}", config.shadows);
    }
    config.shadows = vec![
        shadow("a", "claude-3-5-haiku", 5.0),
        shadow("a", "claude-3-5-haiku", 5.0),
    ];
    assert!(config.validate().is_err(), "a name twice");
}
