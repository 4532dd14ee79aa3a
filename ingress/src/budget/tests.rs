use super::*;
use crate::config::Config;
use sluice_schemas::Request;

fn load(toml: &str) -> Result<Config, String> {
    use figment::providers::{Format, Toml};
    let base = "[[models]]\nid = \"m\"\n[[prices]]\nmodel = \"m\"\ninput_per_million = 1.0\noutput_per_million = 2.0\n";
    let config: Config = figment::Figment::from(Toml::string(&format!("{base}{toml}")))
        .extract()
        .map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[test]
fn budgets_are_checked_at_start_up() {
    let ok = load(
        "[[budgets]]\nscope = \"team\"\nsubject = \"demo\"\nperiod = \"month\"\nlimit_usd = 10\n",
    )
    .unwrap();
    assert_eq!(ok.budgets[0].alert_at, vec![0.5, 0.8, 1.0]);
    assert_eq!(ok.budget.default_completion_tokens, 4096);
    let bad = [
        (
            "scope = \"org\"\nsubject = \"a\"\nperiod = \"day\"\nlimit_usd = 1",
            "org",
        ),
        (
            "scope = \"team\"\nsubject = \"a\"\nperiod = \"week\"\nlimit_usd = 1",
            "week",
        ),
        (
            "scope = \"team\"\nsubject = \"a\"\nperiod = \"day\"\nlimit_usd = 0",
            "budgets[0].limit_usd",
        ),
        (
            "scope = \"team\"\nsubject = \"a/b\"\nperiod = \"day\"\nlimit_usd = 1",
            "budgets[0].subject",
        ),
        (
            "scope = \"key\"\nsubject = \" \"\nperiod = \"day\"\nlimit_usd = 1",
            "budgets[0].subject",
        ),
        (
            "scope = \"key\"\nsubject = \"k\"\nperiod = \"day\"\nlimit_usd = 1\nalert_at = [1.5]",
            "budgets[0].alert_at",
        ),
        (
            "scope = \"key\"\nsubject = \"k\"\nperiod = \"day\"\nlimit_usd = 1\nwebhook = 1",
            "webhook",
        ),
    ];
    for (toml, named) in bad {
        let err = load(&format!("[[budgets]]\n{toml}\n")).unwrap_err();
        assert!(err.contains(named), "{toml}: {err}");
    }
    let twice = "[[budgets]]\nscope = \"key\"\nsubject = \"k\"\nperiod = \"day\"\nlimit_usd = 1\n";
    let err = load(&format!("{twice}{twice}")).unwrap_err();
    assert!(err.contains("budgets[1]"), "{err}");
    let err = load("[budget]\ndefault_completion_tokens = 0\n").unwrap_err();
    assert!(err.contains("default_completion_tokens"), "{err}");
    // The example config loads, with the demo team's budget and the workers' prices.
    let example = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/ingress.toml"
    ));
    let config = Config::load(Some(example)).unwrap();
    assert_eq!(config.budgets[0].subject, "demo");
    assert_eq!(config.prices.len(), 4);
    // A listed model without [[prices]] has the catalogue's price of its name.
    let resolved = config.resolved_prices();
    let embedding = resolved
        .iter()
        .find(|p| p.model == "text-embedding-3-small")
        .expect("catalogued");
    assert_eq!(
        (embedding.input_per_million, embedding.output_per_million),
        (0.02, 0.0)
    );
    // The demo's Responses-API deployment is billed at the catalogue's gpt-5-mini price.
    let native = resolved
        .iter()
        .find(|p| p.model == "gpt-5-mini")
        .expect("catalogued");
    assert_eq!(
        (native.input_per_million, native.output_per_million),
        (0.25, 2.0)
    );
    assert_eq!(resolved.len(), 6);
}

#[test]
fn reservations_price_the_prompt_and_the_completion_cap() {
    let config =
        load("[[prices]]\nmodel = \"dear\"\ninput_per_million = 3.0\noutput_per_million = 15.0\n")
            .unwrap();
    let budgets = Budgets::new(&config);
    let mut r = Request {
        request_id: "r".into(),
        team: "t".into(),
        key_id: "k".into(),
        priority: sluice_schemas::Priority::Standard,
        model: "m".into(),
        created_at_ms: 0,
        deadline_ms: 0,
        traceparent: None,
        reply: None,
        prompt_tokens: 100,
        max_tokens: Some(10),
        body: String::new(),
        stream: false,
        attributes: Default::default(),
        replay: None,
    };
    // 100 * 1000 + 10 * 2000 nano-USD.
    assert_eq!(budgets.max_cost_nanos(&r), 120_000);
    // No cap: the configured default (4096 tokens).
    r.max_tokens = None;
    assert_eq!(budgets.max_cost_nanos(&r), 100_000 + 4096 * 2000);
    // An alias without its own price: the dearest price configured.
    r.model = "smart".into();
    r.max_tokens = Some(10);
    assert_eq!(budgets.max_cost_nanos(&r), 100 * 3000 + 10 * 15_000);
}

#[test]
fn periods_are_utc_calendar_days_and_months() {
    // 2026-11-24T19:44:23Z
    let t = 1_795_549_463_000;
    assert_eq!(format_utc(Period::Day.start_ms(t)), "2026-11-24T00:00:00Z");
    assert_eq!(format_utc(Period::Day.end_ms(t)), "2026-11-25T00:00:00Z");
    assert_eq!(
        format_utc(Period::Month.start_ms(t)),
        "2026-11-01T00:00:00Z"
    );
    assert_eq!(format_utc(Period::Month.end_ms(t)), "2026-12-01T00:00:00Z");
    // December rolls into the next year; a leap February has 29 days.
    // 2026-12-31T00:00:00.005Z
    let dec = 1_798_675_200_005;
    assert_eq!(
        format_utc(Period::Month.end_ms(dec)),
        "2027-01-01T00:00:00Z"
    );
    // 2028-02-29T00:00:00Z
    let feb = 1_835_395_200_000;
    assert_eq!(
        format_utc(Period::Month.start_ms(feb)),
        "2028-02-01T00:00:00Z"
    );
    assert_eq!(
        format_utc(Period::Month.end_ms(feb)),
        "2028-03-01T00:00:00Z"
    );
    assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_utc(dec), "2026-12-31T00:00:00Z");
    assert_eq!(format_utc(feb), "2028-02-29T00:00:00Z");
}
