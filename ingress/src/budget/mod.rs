//! Budgets with hard caps (docs/budgets.md): per team or key, per UTC day or month.
//!
//! Every replica keeps a live ledger ([`ledger::Ledger`]) fed from Kafka ([`feed`]):
//! settled spend from the usage topic, and in-flight reservations from the audit topic's
//! `accepted` events (its own and every other replica's). A request is admitted only if,
//! for every budget that applies to it, spent + reserved + its own worst-case cost stays
//! within the limit.

pub mod feed;
pub mod ledger;
mod refusal;

use std::sync::{Arc, Mutex};

use sluice_schemas::pricing::PriceTable;
use sluice_schemas::Request;

use crate::config::Config;
pub use crate::config::{BudgetConfig, BudgetSettings, Period, Scope};
use crate::error::ConfigError;
pub use ledger::{Exceeded, Ledger};

const DAY_MS: i64 = 86_400_000;

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// Start (ms since the epoch, UTC) of the period containing `at_ms`.
    pub fn start_ms(self, at_ms: i64) -> i64 {
        let day = at_ms.div_euclid(DAY_MS) * DAY_MS;
        match self {
            Period::Day => day,
            Period::Month => month_start(at_ms, 0).unwrap_or(day),
        }
    }

    /// Start of the period after the one containing `at_ms` (when a budget resets).
    pub fn end_ms(self, at_ms: i64) -> i64 {
        let day = at_ms.div_euclid(DAY_MS) * DAY_MS;
        match self {
            Period::Day => day + DAY_MS,
            Period::Month => month_start(at_ms, 1).unwrap_or(day + DAY_MS),
        }
    }
}

/// Midnight UTC on the first day of the month containing `at_ms`, or of the next month
/// (`ahead` = 1). None only for instants outside years ±9999.
fn month_start(at_ms: i64, ahead: u8) -> Option<i64> {
    let date = time::OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
        .ok()?
        .date();
    let (mut year, mut month) = (date.year(), date.month());
    for _ in 0..ahead {
        if month == time::Month::December {
            year += 1;
        }
        month = month.next();
    }
    let first = time::Date::from_calendar_date(year, month, 1).ok()?;
    Some(first.midnight().assume_utc().unix_timestamp() * 1000)
}

/// `2026-12-01T00:00:00Z` for a period boundary.
pub fn format_utc(ms: i64) -> String {
    sluice_schemas::rfc3339(ms, false)
}

/// Start-up check of `[budget]`, with `[[budgets]]` and `[[prices]]` ([`validate`]).
impl crate::config::Section for BudgetSettings {
    fn check(&self, config: &Config) -> Result<(), ConfigError> {
        validate(config)
    }
}

/// Checks `[[budgets]]`, `[budget]` and `[[prices]]` (called by [`Config::validate`]).
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let field = |field: String, problem: &'static str| ConfigError::Field { field, problem };
    for (i, p) in config.prices.iter().enumerate() {
        if !p.is_valid() {
            return Err(field(
                format!("prices[{i}]"),
                "prices must be finite and not negative",
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, b) in config.budgets.iter().enumerate() {
        let name = |f: &str| format!("budgets[{i}].{f}");
        if b.subject.trim().is_empty() {
            return Err(field(name("subject"), "must name a team or key id"));
        }
        if b.scope == Scope::Team && !sluice_schemas::topics::is_valid_team_name(&b.subject) {
            return Err(field(
                name("subject"),
                "team names use letters, digits, '-' and '_' (at most 64)",
            ));
        }
        if !b.limit_usd.is_finite() || b.limit_usd <= 0.0 || b.limit_usd > 1e9 {
            return Err(field(
                name("limit_usd"),
                "must be a positive number of USD (at most 1e9)",
            ));
        }
        let mut pcts = std::collections::HashSet::new();
        for f in &b.alert_at {
            if !f.is_finite() || *f <= 0.0 || *f > 1.0 {
                return Err(field(
                    name("alert_at"),
                    "thresholds are fractions of the limit in (0, 1], e.g. [0.5, 0.8, 1.0]",
                ));
            }
            if !pcts.insert((f * 100.0).round() as i32) {
                return Err(field(
                    name("alert_at"),
                    "thresholds must differ by at least one percent",
                ));
            }
        }
        if !seen.insert((b.scope, b.subject.clone(), b.period)) {
            return Err(field(
                format!("budgets[{i}]"),
                "a budget with this scope, subject and period is already configured",
            ));
        }
    }
    if !config.budgets.is_empty() && config.prices.is_empty() {
        return Err(field(
            "prices".into(),
            "budgets need [[prices]] to price reservations (the same as the workers')",
        ));
    }
    if config.budget.default_completion_tokens == 0 {
        return Err(field(
            "budget.default_completion_tokens".into(),
            "must be at least 1",
        ));
    }
    if config.budget.dedup_window == 0 {
        return Err(field("budget.dedup_window".into(), "must be at least 1"));
    }
    Ok(())
}

/// The ingress's budgets: the ledger and how to price a request's reservation.
pub struct Budgets {
    pub ledger: Arc<Mutex<Ledger>>,
    prices: PriceTable,
    default_completion_tokens: u32,
    grace_ms: i64,
}

impl Budgets {
    pub fn new(config: &Config) -> Budgets {
        Budgets {
            ledger: Arc::new(Mutex::new(Ledger::new(
                &config.budgets,
                config.budget.dedup_window,
            ))),
            prices: PriceTable::new(&config.prices),
            default_completion_tokens: config.budget.default_completion_tokens,
            grace_ms: config.budget.reservation_grace_ms.as_millis() as i64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ledger.lock().map_or(true, |l| l.is_empty())
    }

    /// The most `r` can cost: its counted prompt at the input price plus its completion cap
    /// (or the configured default) at the output price, without cached-input discounts. A
    /// model (or alias) without its own price is reserved at the dearest configured price.
    pub fn max_cost_nanos(&self, r: &Request) -> i64 {
        let prompt = r.prompt_tokens.max(0) as u32;
        let completion = r
            .max_tokens
            .map_or(self.default_completion_tokens, |n| n.max(0) as u32);
        self.prices
            .max_cost_nanos([r.model.as_str()], prompt, completion)
            .or_else(|| self.prices.max_cost_any_nanos(prompt, completion))
            .unwrap_or(0)
    }

    /// Admits `r` under every budget that applies to it and holds its reservation, or
    /// names the first budget it would exceed. Returns the reservation (0: no budget).
    pub fn admit(&self, r: &Request, now_ms: i64) -> Result<i64, Exceeded> {
        let Ok(mut ledger) = self.ledger.lock() else {
            return Ok(0);
        };
        if !ledger.applies(&r.team, &r.key_id) {
            return Ok(0);
        }
        let cost = self.max_cost_nanos(r);
        ledger.admit(
            &r.request_id,
            &r.team,
            &r.key_id,
            cost,
            now_ms,
            r.deadline_ms.saturating_add(self.grace_ms),
        )?;
        Ok(cost)
    }

    /// Drops a reservation whose request was not published after all.
    pub fn release(&self, request_id: &str) {
        if let Ok(mut ledger) = self.ledger.lock() {
            ledger.release(request_id);
        }
    }

    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }
}

#[cfg(test)]
mod tests {

    use super::*;

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
            ("scope = \"org\"\nsubject = \"a\"\nperiod = \"day\"\nlimit_usd = 1", "org"),
            ("scope = \"team\"\nsubject = \"a\"\nperiod = \"week\"\nlimit_usd = 1", "week"),
            ("scope = \"team\"\nsubject = \"a\"\nperiod = \"day\"\nlimit_usd = 0", "budgets[0].limit_usd"),
            ("scope = \"team\"\nsubject = \"a/b\"\nperiod = \"day\"\nlimit_usd = 1", "budgets[0].subject"),
            ("scope = \"key\"\nsubject = \" \"\nperiod = \"day\"\nlimit_usd = 1", "budgets[0].subject"),
            ("scope = \"key\"\nsubject = \"k\"\nperiod = \"day\"\nlimit_usd = 1\nalert_at = [1.5]", "budgets[0].alert_at"),
            ("scope = \"key\"\nsubject = \"k\"\nperiod = \"day\"\nlimit_usd = 1\nwebhook = 1", "webhook"),
        ];
        for (toml, named) in bad {
            let err = load(&format!("[[budgets]]\n{toml}\n")).unwrap_err();
            assert!(err.contains(named), "{toml}: {err}");
        }
        let twice =
            "[[budgets]]\nscope = \"key\"\nsubject = \"k\"\nperiod = \"day\"\nlimit_usd = 1\n";
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
    }

    #[test]
    fn reservations_price_the_prompt_and_the_completion_cap() {
        let config = load(
            "[[prices]]\nmodel = \"dear\"\ninput_per_million = 3.0\noutput_per_million = 15.0\n",
        )
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
}
