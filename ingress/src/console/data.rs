//! What the console reads from ClickHouse: the analytics views (docs/analytics.md), with the
//! console's own read-only user, and nothing else of `<db>`. Every table name here is one of
//! ours; what a caller picks (period, grouping, filters) picks among them or is a bound value.

use clickhouse::{Client, Row};
use serde::Deserialize;

/// The periods a page may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Period {
    /// The last 24 hours, by hour.
    Day,
    /// The last 7 days, by day.
    Week,
    /// The last 30 days, by day.
    Month,
}

impl Period {
    pub(super) const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    pub(super) fn parse(s: Option<&str>) -> Option<Period> {
        match s.unwrap_or("7d") {
            "24h" => Some(Period::Day),
            "7d" => Some(Period::Week),
            "30d" => Some(Period::Month),
            _ => None,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Period::Day => "24h",
            Period::Week => "7d",
            Period::Month => "30d",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Period::Day => "last 24 hours",
            Period::Week => "last 7 days",
            Period::Month => "last 30 days",
        }
    }

    /// The view suffix and the bucket column of this period's views.
    fn grain(self) -> (&'static str, &'static str) {
        match self {
            Period::Day => ("hour", "hour"),
            Period::Week | Period::Month => ("day", "day"),
        }
    }

    /// The condition on the bucket column (UTC, as the views' buckets are).
    fn since(self) -> &'static str {
        match self {
            Period::Day => "hour >= toStartOfHour(now()) - INTERVAL 23 HOUR",
            Period::Week => "day >= today() - 6",
            Period::Month => "day >= today() - 29",
        }
    }

    /// The buckets of the period, oldest first, as the views print them (`toString`).
    pub(super) fn buckets(self, now: time::OffsetDateTime) -> Vec<String> {
        match self {
            Period::Day => (0..24)
                .rev()
                .map(|h| {
                    let t = now - time::Duration::hours(h);
                    format!(
                        "{:04}-{:02}-{:02} {:02}:00:00",
                        t.year(),
                        u8::from(t.month()),
                        t.day(),
                        t.hour()
                    )
                })
                .collect(),
            Period::Week | Period::Month => {
                let days = if self == Period::Week { 7 } else { 30 };
                (0..days)
                    .rev()
                    .map(|d| {
                        let t = now - time::Duration::days(d);
                        format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
                    })
                    .collect()
            }
        }
    }
}

/// What spend is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum By {
    Team,
    Key,
    Model,
    Provider,
}

impl By {
    pub(super) const ALL: [By; 4] = [By::Team, By::Key, By::Model, By::Provider];

    pub(super) fn parse(s: Option<&str>) -> Option<By> {
        match s.unwrap_or("team") {
            "team" => Some(By::Team),
            "key" => Some(By::Key),
            "model" => Some(By::Model),
            "provider" => Some(By::Provider),
            _ => None,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            By::Team => "team",
            By::Key => "key",
            By::Model => "model",
            By::Provider => "provider",
        }
    }

    /// The view family, the grouped column, and the column shown beside it.
    fn columns(self) -> (&'static str, &'static str, &'static str) {
        match self {
            By::Team => ("spend_by_team", "team", "''"),
            By::Key => ("spend_by_key", "key_id", "team"),
            By::Model => ("spend_by_model", "model", "provider"),
            By::Provider => ("spend_by_provider", "provider", "''"),
        }
    }

    /// What the column beside the name holds.
    pub(super) fn detail(self) -> Option<&'static str> {
        match self {
            By::Key => Some("team"),
            By::Model => Some("provider"),
            By::Team | By::Provider => None,
        }
    }
}

/// One group's spend over a period.
#[derive(Debug, Clone, Row, Deserialize)]
pub(super) struct SpendRow {
    pub name: String,
    pub detail: String,
    pub req: u64,
    pub prompt: u64,
    pub completion: u64,
    pub cost: i64,
}

/// One bucket's spend.
#[derive(Debug, Clone, Row, Deserialize)]
pub(super) struct Bucket {
    pub bucket: String,
    pub cost: i64,
}

/// Reads for the console's pages.
#[derive(Clone)]
pub(super) struct Data {
    client: Client,
    db: String,
}

impl Data {
    pub(super) fn new(client: Client, db: String) -> Data {
        Data { client, db }
    }

    /// Spend per group over `period`, most first (at most `limit` groups).
    pub(super) async fn spend(
        &self,
        period: Period,
        by: By,
        limit: u64,
    ) -> Result<Vec<SpendRow>, clickhouse::error::Error> {
        let (family, name, detail) = by.columns();
        let (grain, _) = period.grain();
        let sql = format!(
            "SELECT toString({name}) AS name, toString({detail}) AS detail, \
             toUInt64(sum(requests)) AS req, toUInt64(sum(prompt_tokens)) AS prompt, \
             toUInt64(sum(completion_tokens)) AS completion, toInt64(sum(cost_nanos)) AS cost \
             FROM {db}.{family}_{grain} WHERE {since} \
             GROUP BY name, detail ORDER BY cost DESC, name LIMIT ?",
            db = self.db,
            since = period.since(),
        );
        self.client.query(&sql).bind(limit).fetch_all().await
    }

    /// Spend per bucket over `period`, of one group when `only` is given.
    pub(super) async fn series(
        &self,
        period: Period,
        by: By,
        only: Option<&str>,
    ) -> Result<Vec<Bucket>, clickhouse::error::Error> {
        let (family, name, _) = by.columns();
        let (grain, bucket) = period.grain();
        let sql = format!(
            "SELECT toString({bucket}) AS bucket, toInt64(sum(cost_nanos)) AS cost \
             FROM {db}.{family}_{grain} WHERE {since} AND (? = 0 OR {name} = ?) \
             GROUP BY bucket ORDER BY bucket",
            db = self.db,
            since = period.since(),
        );
        self.client
            .query(&sql)
            .bind(u8::from(only.is_some()))
            .bind(only.unwrap_or_default())
            .fetch_all()
            .await
    }

    /// Latency of completed requests per hour, model and deployment (newest first).
    pub(super) async fn latency(
        &self,
        period: Period,
    ) -> Result<Vec<LatencyRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT toString(hour) AS h, model, deployment, toUInt64(requests) AS n, \
             toFloat64(p50_ms) AS p50, toFloat64(p90_ms) AS p90, toFloat64(p99_ms) AS p99, \
             toFloat64(max_ms) AS top \
             FROM {db}.latency_by_deployment_hour WHERE hour >= now() - INTERVAL {hours} HOUR \
             ORDER BY hour DESC, model, deployment LIMIT 200",
            db = self.db,
            hours = hours(period),
        );
        self.client.query(&sql).fetch_all().await
    }

    /// Outcomes per model over `period` (refusals before a model was read are model '').
    pub(super) async fn errors(
        &self,
        period: Period,
    ) -> Result<Vec<ErrorRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT model, toUInt64(sum(requests)) AS n, toUInt64(sum(failed)) AS f, \
             toUInt64(sum(expired)) AS e, toUInt64(sum(rejected)) AS r, \
             toUInt64(sum(throttled)) AS t \
             FROM {db}.error_rates_by_team_model_hour \
             WHERE hour >= now() - INTERVAL {hours} HOUR \
             GROUP BY model ORDER BY n DESC, model LIMIT 100",
            db = self.db,
            hours = hours(period),
        );
        self.client.query(&sql).fetch_all().await
    }

    /// Provider attempts per model and deployment over `period`: how many, how many
    /// answered, how many ended in an error (a retry or a fallback followed, or the request
    /// failed). From the `attempts` log (every call a worker made).
    pub(super) async fn attempts(
        &self,
        period: Period,
    ) -> Result<Vec<AttemptRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT model, deployment, toUInt64(count()) AS n, \
             toUInt64(countIf(outcome = 'completed')) AS ok, \
             toUInt64(countIf(outcome NOT IN ('completed', 'started'))) AS bad \
             FROM {db}.attempts FINAL WHERE created_at >= now() - INTERVAL {hours} HOUR \
             GROUP BY model, deployment ORDER BY n DESC, model, deployment LIMIT 200",
            db = self.db,
            hours = hours(period),
        );
        self.client.query(&sql).fetch_all().await
    }

    /// The newest budget alerts.
    pub(super) async fn alerts(&self) -> Result<Vec<AlertRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT scope, subject, period, toInt32(threshold_pct) AS pct, \
             toInt64(limit_nanos) AS cap, toInt64(spent_nanos) AS spent, \
             toString(occurred_at) AS at \
             FROM {db}.budget_alerts FINAL ORDER BY occurred_at_ms DESC LIMIT 50",
            db = self.db,
        );
        self.client.query(&sql).fetch_all().await
    }

    /// The audit trail, newest first, filtered.
    pub(super) async fn audit(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRow>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT toString(occurred_at) AS at, request_id, team, key_id, action, model, \
             toInt32(http_status) AS code, reason, policy, provider, deployment, \
             toInt64(cost_nanos) AS cost \
             FROM {db}.audit_trail \
             WHERE occurred_at >= now() - INTERVAL {hours} HOUR \
             AND (? = '' OR team = ?) AND (? = '' OR action = ?) \
             AND (? = '' OR key_id = ?) AND (? = '' OR request_id = ?) \
             ORDER BY occurred_at_ms DESC LIMIT 200",
            db = self.db,
            hours = hours(filter.period),
        );
        let mut query = self.client.query(&sql);
        for value in [&filter.team, &filter.action, &filter.key, &filter.request] {
            query = query.bind(value.as_str()).bind(value.as_str());
        }
        query.fetch_all().await
    }
}

fn hours(period: Period) -> u32 {
    match period {
        Period::Day => 24,
        Period::Week => 7 * 24,
        Period::Month => 30 * 24,
    }
}

#[derive(Debug, Clone, Row, Deserialize)]
pub(super) struct LatencyRow {
    pub h: String,
    pub model: String,
    pub deployment: String,
    pub n: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub top: f64,
}

#[derive(Debug, Clone, Row, Deserialize)]
pub(super) struct ErrorRow {
    pub model: String,
    pub n: u64,
    pub f: u64,
    pub e: u64,
    pub r: u64,
    pub t: u64,
}

#[derive(Debug, Clone, Row, Deserialize)]
pub(super) struct AttemptRow {
    pub model: String,
    pub deployment: String,
    pub n: u64,
    pub ok: u64,
    pub bad: u64,
}

#[derive(Debug, Clone, Row, Deserialize)]
pub(super) struct AlertRow {
    pub scope: String,
    pub subject: String,
    pub period: String,
    pub pct: i32,
    pub cap: i64,
    pub spent: i64,
    pub at: String,
}

#[derive(Debug, Clone, Row, Deserialize)]
pub(super) struct AuditRow {
    pub at: String,
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub action: String,
    pub model: String,
    pub code: i32,
    pub reason: String,
    pub policy: String,
    pub provider: String,
    pub deployment: String,
    pub cost: i64,
}

/// The audit page's filters (each empty: any).
#[derive(Debug, Clone)]
pub(super) struct AuditFilter {
    pub period: Period,
    pub team: String,
    pub action: String,
    pub key: String,
    pub request: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_groupings_parse_only_their_names() {
        assert_eq!(Period::parse(None), Some(Period::Week));
        assert_eq!(Period::parse(Some("24h")), Some(Period::Day));
        assert_eq!(Period::parse(Some("1y")), None);
        assert_eq!(By::parse(Some("model")), Some(By::Model));
        assert_eq!(By::parse(Some("team; DROP TABLE usage")), None);
    }

    #[test]
    fn buckets_cover_the_period_oldest_first() {
        // 2026-03-01 05:30 UTC.
        let now = time::OffsetDateTime::from_unix_timestamp(1_772_343_000)
            .unwrap_or_else(|e| panic!("{e}"));
        let days = Period::Week.buckets(now);
        assert_eq!(days.len(), 7);
        assert_eq!(days.first().map(String::as_str), Some("2026-02-23"));
        assert_eq!(days.last().map(String::as_str), Some("2026-03-01"));
        let hours = Period::Day.buckets(now);
        assert_eq!(hours.len(), 24);
        assert_eq!(
            hours.first().map(String::as_str),
            Some("2026-02-28 06:00:00")
        );
        assert_eq!(
            hours.last().map(String::as_str),
            Some("2026-03-01 05:00:00")
        );
    }
}
