//! `sluice-analytics report ...`: spend, latency and error summaries over the last N days,
//! printed as an aligned text table. Reads the analyst views of migration 0004 (latency from
//! `results`, whose percentiles cannot be re-aggregated from hourly ones).
//!
//! Days are calendar days in UTC ending today, inclusive: `--days 7` is today and the six
//! days before, as in the analyst queries.

use clickhouse::Client;

use crate::error::Error;
use crate::tables::Table;

/// What a spend report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendBy {
    Team,
    Key,
    Model,
    Provider,
}

impl SpendBy {
    pub const ALL: [SpendBy; 4] = [
        SpendBy::Team,
        SpendBy::Key,
        SpendBy::Model,
        SpendBy::Provider,
    ];

    pub fn parse(s: &str) -> Option<SpendBy> {
        SpendBy::ALL.into_iter().find(|b| b.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SpendBy::Team => "team",
            SpendBy::Key => "key",
            SpendBy::Model => "model",
            SpendBy::Provider => "provider",
        }
    }

    /// The daily view and the columns it groups by.
    fn source(self) -> (Table, &'static str) {
        match self {
            SpendBy::Team => (Table::SpendByTeamDay, "team"),
            SpendBy::Key => (Table::SpendByKeyDay, "team, key_id"),
            SpendBy::Model => (Table::SpendByModelDay, "model, provider"),
            SpendBy::Provider => (Table::SpendByProviderDay, "provider"),
        }
    }
}

/// One report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Requests, tokens and cost, most expensive first.
    Spend { by: SpendBy },
    /// p50/p90/p99 end-to-end latency of completed requests per model and deployment.
    Latency,
    /// Failed, expired, rejected and throttled requests and their rates per team and model.
    Errors,
}

/// `report spend|latency|errors [--by ...] [--days N]` on the command line.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum ReportCommand {
    /// Requests, tokens and cost, most expensive first.
    Spend {
        /// Group by team, key, model or provider.
        #[arg(long, default_value = "team", value_parser = parse_by)]
        by: SpendBy,
        /// Days ending today (UTC), inclusive.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=3660))]
        days: u32,
    },
    /// p50/p90/p99 latency of completed requests per model and deployment.
    Latency {
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=3660))]
        days: u32,
    },
    /// Failure, expiry, rejection and throttling counts and rates per team and model.
    Errors {
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=3660))]
        days: u32,
    },
}

impl ReportCommand {
    /// The report and its number of days.
    pub fn report(self) -> (Report, u32) {
        match self {
            ReportCommand::Spend { by, days } => (Report::Spend { by }, days),
            ReportCommand::Latency { days } => (Report::Latency, days),
            ReportCommand::Errors { days } => (Report::Errors, days),
        }
    }
}

fn parse_by(s: &str) -> Result<SpendBy, String> {
    SpendBy::parse(s)
        .ok_or_else(|| format!("expected one of team, key, model, provider; got `{s}`"))
}

/// The SQL of `report` over `days` days ending today, against database `db`.
pub fn sql(report: Report, db: &str, days: u32) -> String {
    let since = format!("today() - {days}");
    match report {
        Report::Spend { by } => {
            let (view, keys) = by.source();
            format!(
                "SELECT {keys}, requests, prompt_tokens, completion_tokens, cached_tokens, cost_nanos \
                 FROM (SELECT {keys}, sum(requests) AS requests, sum(prompt_tokens) AS prompt_tokens, \
                 sum(completion_tokens) AS completion_tokens, sum(cached_tokens) AS cached_tokens, \
                 sum(cost_nanos) AS cost_nanos FROM {db}.{view} \
                 WHERE day > {since} AND day <= today() GROUP BY {keys}) \
                 ORDER BY cost_nanos DESC, {keys}",
                view = view.name(),
            )
        }
        Report::Latency => format!(
            "SELECT model, deployment, count() AS requests, \
             quantileExact(0.5)(latency_ms) AS p50_ms, quantileExact(0.9)(latency_ms) AS p90_ms, \
             quantileExact(0.99)(latency_ms) AS p99_ms, max(latency_ms) AS max_ms \
             FROM {db}.{results} FINAL WHERE status = 'completed' \
             AND toDate(created_at) > {since} AND toDate(created_at) <= today() \
             GROUP BY model, deployment ORDER BY model, deployment",
            results = Table::Results.name(),
        ),
        Report::Errors => format!(
            "SELECT team, model, requests, failed, expired, rejected, throttled, \
             (failed + expired) / requests AS error_rate, throttled / requests AS throttle_rate \
             FROM (SELECT team, model, sum(requests) AS requests, sum(failed) AS failed, \
             sum(expired) AS expired, sum(rejected) AS rejected, sum(throttled) AS throttled \
             FROM {db}.{view} WHERE toDate(hour) > {since} AND toDate(hour) <= today() \
             GROUP BY team, model) ORDER BY requests DESC, team, model",
            view = Table::ErrorRatesByTeamModelHour.name(),
        ),
    }
}

/// Runs `report` and returns the table to print.
pub async fn run(client: &Client, db: &str, report: Report, days: u32) -> Result<String, Error> {
    let bytes = client
        .query_raw(&sql(report, db, days))
        .fetch_bytes("TSVWithNames")
        .map_err(Error::clickhouse("report"))?
        .collect()
        .await
        .map_err(Error::clickhouse("report"))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines().map(|l| l.split('\t').map(unescape).collect());
    let header: Vec<String> = lines.next().unwrap_or_default();
    let rows: Vec<Vec<String>> = lines.collect();
    Ok(render(&header, &rows))
}

/// An aligned table: numbers right-aligned, text left-aligned; `cost_nanos` shown as USD
/// (exact, 6 decimals) and rates as percentages.
pub fn render(header: &[String], rows: &[Vec<String>]) -> String {
    let shown: Vec<String> = header
        .iter()
        .map(|h| match h.as_str() {
            "cost_nanos" => "cost_usd".to_string(),
            _ => h.clone(),
        })
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .zip(header)
                .map(|(value, column)| match column.as_str() {
                    "cost_nanos" => value.parse().map_or(value.clone(), usd),
                    c if c.ends_with("_rate") => value
                        .parse::<f64>()
                        .map_or(value.clone(), |r| format!("{:.2}%", r * 100.0)),
                    _ => value.clone(),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..shown.len())
        .map(|i| {
            cells
                .iter()
                .filter_map(|r| r.get(i))
                .chain(std::iter::once(&shown[i]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric: Vec<bool> = (0..shown.len())
        .map(|i| !cells.is_empty() && cells.iter().all(|r| r.get(i).is_some_and(|c| is_number(c))))
        .collect();
    let line = |row: &[String]| {
        let padded: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                if numeric.get(i).copied().unwrap_or(false) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(&shown);
    out.push('\n');
    out.push_str(&line(
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    ));
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    if cells.is_empty() {
        out.push_str("(no data in this period)\n");
    }
    out
}

/// nano-USD as dollars with 6 decimals, rounded half up, from integers only.
pub fn usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let micros = (nanos.unsigned_abs() + 500) / 1000;
    format!("{sign}${}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn is_number(cell: &str) -> bool {
    let digits = cell.trim_start_matches(['-', '$']).trim_end_matches('%');
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// TSV escapes (`\t`, `\n`, `\\`) back to text.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_exact() {
        assert_eq!(usd(0), "$0.000000");
        assert_eq!(usd(6_600_000), "$0.006600");
        assert_eq!(usd(1_234_567_890_123), "$1234.567890");
        assert_eq!(usd(1_499), "$0.000001");
        assert_eq!(usd(1_500), "$0.000002");
        assert_eq!(usd(-2_000_000_000), "-$2.000000");
    }

    #[test]
    fn aligned_table() {
        let header: Vec<String> = ["team", "requests", "cost_nanos", "error_rate"]
            .map(String::from)
            .to_vec();
        let rows = vec![
            vec!["acme".into(), "3".into(), "57600000".into(), "0.5".into()],
            vec!["globex-long".into(), "12".into(), "0".into(), "0".into()],
        ];
        let table = render(&header, &rows);
        assert_eq!(
            table,
            "team         requests   cost_usd  error_rate\n\
             -----------  --------  ---------  ----------\n\
             acme                3  $0.057600      50.00%\n\
             globex-long        12  $0.000000       0.00%\n"
        );
        assert!(render(&header, &[]).ends_with("(no data in this period)\n"));
    }

    #[test]
    fn sql_names_views_and_window() {
        for by in SpendBy::ALL {
            assert_eq!(SpendBy::parse(by.as_str()), Some(by));
            let sql = sql(Report::Spend { by }, "s", 7);
            assert!(
                sql.contains(&format!("FROM s.{}", by.source().0.name())),
                "{sql}"
            );
            assert!(sql.contains("day > today() - 7"), "{sql}");
        }
        assert_eq!(SpendBy::parse("colour"), None);
        assert!(sql(Report::Latency, "s", 1).contains("FROM s.results FINAL"));
        assert!(sql(Report::Errors, "s", 30).contains("s.error_rates_by_team_model_hour"));
        assert_eq!(unescape(r"a\tb\\n\n"), "a\tb\\n\n");
    }
}
