//! Budget alert webhooks (docs/budgets.md): the sink posts each new alert (by `alert_id`) to
//! the `[[alert_webhooks]]` endpoints of its budget, as a Standard Webhooks event signed by
//! `sluice_schemas::webhook`.
//!
//! Once per alert id: an alert already in `budget_alerts` is not sent again (every ingress
//! replica emits its own copy, and the sink may consume a message twice). Delivery is
//! at-least-once (an alert sent just before a crash, whose row was not written, is sent
//! again); the `webhook-id` header is the alert id, so receivers drop the duplicate.
//!
//! The URLs are the operator's, but they go through the same outbound policy as tenants'
//! webhooks (`sluice_schemas::outbound`): no loopback, private or link-local destination
//! unless `[webhooks] allowed_hosts` names it, checked at start-up and by the delivery
//! client's resolver at connect time. Every alert is signed (`secret_env` is required).

use std::collections::HashSet;

use clickhouse::Client;
use serde_json::json;
use sluice_schemas::outbound::{OutboundConfig, OutboundPolicy};
use sluice_schemas::webhook::{RetryPolicy, Secret, Sender};

pub use crate::config::AlertWebhook;
use crate::error::Error;
use crate::tables::{BudgetAlertRow, Table};

/// The webhook event type of a budget alert.
pub const EVENT_TYPE: &str = "budget.threshold_crossed";

struct Hook {
    config: AlertWebhook,
    secret: Secret,
}

/// Sends budget alerts to their webhooks.
pub struct Notifier {
    hooks: Vec<Hook>,
    sender: Sender,
}

impl Notifier {
    /// Checks every webhook (scope, URL and destination, secret present and well-formed)
    /// at start-up.
    pub fn new(webhooks: &[AlertWebhook], outbound: &OutboundConfig) -> Result<Notifier, Error> {
        let bad = |problem| Error::ConfigField {
            field: "alert_webhooks".into(),
            problem,
        };
        let outbound = OutboundPolicy::new(outbound).map_err(|_| Error::ConfigField {
            field: "webhooks.allowed_hosts".into(),
            problem: "entries must be host:port (e.g. \"127.0.0.1:9999\") or a host name",
        })?;
        let mut hooks = Vec::with_capacity(webhooks.len());
        for w in webhooks {
            if w.scope != "team" && w.scope != "key" {
                return Err(bad("scope must be \"team\" or \"key\""));
            }
            if w.subject.trim().is_empty() {
                return Err(bad("subject must name a team or key id, or be \"*\""));
            }
            outbound.check(&w.url).map_err(|_| {
                bad("url must be an absolute http(s) URL without userinfo, to a public address or one in [webhooks] allowed_hosts")
            })?;
            let var = w
                .secret_env
                .as_ref()
                .ok_or_else(|| bad("secret_env is required: budget alerts are always signed"))?;
            let text = std::env::var(var)
                .map_err(|_| bad("secret_env names an environment variable that is not set"))?;
            let secret = Secret::parse(&text).map_err(|_| {
                bad("the secret in secret_env must be whsec_<base64> or a non-empty string")
            })?;
            hooks.push(Hook {
                config: w.clone(),
                secret,
            });
        }
        let sender = Sender::new(RetryPolicy::default(), outbound)
            .map_err(|_| bad("the webhook HTTP client could not be built"))?;
        Ok(Notifier { hooks, sender })
    }

    pub fn is_active(&self) -> bool {
        !self.hooks.is_empty()
    }

    fn hooks_for<'a>(&'a self, alert: &'a BudgetAlertRow) -> impl Iterator<Item = &'a Hook> + 'a {
        self.hooks.iter().filter(move |h| {
            h.config.scope == alert.scope
                && (h.config.subject == "*" || h.config.subject == alert.subject)
        })
    }

    /// The alerts of `rows` that have a webhook and are not in `budget_alerts` yet, once
    /// each. Call before inserting `rows`.
    pub async fn fresh(
        &self,
        client: &Client,
        database: &str,
        rows: &[BudgetAlertRow],
    ) -> Result<Vec<BudgetAlertRow>, Error> {
        let mut wanted: Vec<&BudgetAlertRow> = Vec::new();
        let mut seen = HashSet::new();
        for row in rows {
            if self.hooks_for(row).next().is_some() && seen.insert(row.alert_id.as_str()) {
                wanted.push(row);
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = wanted.iter().map(|r| r.alert_id.as_str()).collect();
        let sql = format!(
            "SELECT alert_id FROM {database}.{} WHERE has(?, alert_id)",
            Table::BudgetAlerts.name()
        );
        let known: HashSet<String> = client
            .query(&sql)
            .bind(ids)
            .fetch_all::<String>()
            .await
            .map_err(Error::clickhouse("budget_alerts lookup"))?
            .into_iter()
            .collect();
        Ok(wanted
            .into_iter()
            .filter(|r| !known.contains(&r.alert_id))
            .cloned()
            .collect())
    }

    /// Delivers `alert` to each of its webhooks in the background (with the sender's
    /// retries); failures are logged.
    pub fn deliver(&self, alert: BudgetAlertRow) {
        let data = json!({
            "alert_id": alert.alert_id,
            "scope": alert.scope,
            "subject": alert.subject,
            "period": alert.period,
            "period_start_ms": alert.period_start_ms,
            "threshold_pct": alert.threshold_pct,
            "limit_nanos": alert.limit_nanos,
            "spent_nanos": alert.spent_nanos,
            "limit_usd": alert.limit_nanos as f64 / 1e9,
            "spent_usd": alert.spent_nanos as f64 / 1e9,
            "occurred_at_ms": alert.occurred_at_ms,
        });
        for hook in self.hooks_for(&alert) {
            let sender = self.sender.clone();
            let url = hook.config.url.clone();
            let secret = hook.secret.clone();
            let id = alert.alert_id.clone();
            let data = data.clone();
            tokio::spawn(async move {
                match sender
                    .deliver(&url, Some(&secret), &id, EVENT_TYPE, &data)
                    .await
                {
                    Ok(d) => {
                        tracing::info!(alert_id = %id, attempts = d.attempts, "budget alert webhook delivered")
                    }
                    Err(error) => {
                        tracing::warn!(alert_id = %id, %error, "budget alert webhook not delivered")
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(scope: &str, subject: &str, url: &str, secret_env: Option<&str>) -> AlertWebhook {
        AlertWebhook {
            scope: scope.into(),
            subject: subject.into(),
            url: url.into(),
            secret_env: secret_env.map(str::to_string),
        }
    }

    fn alert(scope: &str, subject: &str) -> BudgetAlertRow {
        BudgetAlertRow {
            alert_id: format!("{scope}:{subject}:0:50"),
            scope: scope.into(),
            subject: subject.into(),
            period: "day".into(),
            period_start_ms: 0,
            threshold_pct: 50,
            limit_nanos: 2,
            spent_nanos: 1,
            occurred_at_ms: 0,
            instance: "i".into(),
        }
    }

    const SECRET_VAR: &str = "SLUICE_TEST_ALERT_SECRET";

    #[test]
    fn webhooks_are_checked_and_matched_by_scope_and_subject() {
        std::env::set_var(SECRET_VAR, "whsec_c2VjcmV0");
        let url = "https://hooks.example.com/x";
        let strict = OutboundConfig::default();
        let s = Some(SECRET_VAR);
        for bad in [
            hook("org", "a", url, s),
            hook("team", " ", url, s),
            hook("team", "a", "ftp://x", s),
            hook("team", "a", url, Some("SLUICE_TEST_UNSET_SECRET_VAR")),
            // Unsigned alerts are refused.
            hook("team", "a", url, None),
            // Operator URLs follow the outbound policy too.
            hook("team", "a", "http://127.0.0.1:18123/?query=SELECT+1", s),
            hook("team", "a", "http://169.254.169.254/latest/meta-data/", s),
            hook("team", "a", "http://[::ffff:10.0.0.1]/", s),
            hook("team", "a", "https://u:p@hooks.example.com/", s),
        ] {
            assert!(Notifier::new(&[bad], &strict).is_err());
        }
        let n = Notifier::new(
            &[hook("team", "a", url, s), hook("key", "*", url, s)],
            &strict,
        )
        .unwrap();
        assert!(n.is_active());
        assert_eq!(n.hooks_for(&alert("team", "a")).count(), 1);
        assert_eq!(n.hooks_for(&alert("team", "b")).count(), 0);
        assert_eq!(n.hooks_for(&alert("key", "k1")).count(), 1);
        assert!(!Notifier::new(&[], &strict).unwrap().is_active());
        let local = OutboundConfig {
            allowed_hosts: vec!["127.0.0.1:9999".into()],
            https_only: false,
        };
        let hook_local = hook("team", "a", "http://127.0.0.1:9999/hook", s);
        assert!(Notifier::new(std::slice::from_ref(&hook_local), &local).is_ok());
        assert!(Notifier::new(&[hook_local], &strict).is_err());
    }
}
