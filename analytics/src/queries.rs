//! Analyst queries, embedded from `analytics/queries/*.sql`.
//!
//! Placeholders: `{db}` the Sluice database; `{today}` a Date expression ending the time
//! window, `today()` in normal use (tests pin it to a date).

macro_rules! query_files {
    ($($name:literal),+ $(,)?) => {
        &[$(($name, include_str!(concat!("../queries/", $name, ".sql")))),+]
    };
}

/// `(name, SQL template)` of every analyst query. A unit test checks it against the directory.
pub const QUERIES: &[(&str, &str)] = query_files![
    "error_rates_by_team_last_7_days",
    "failures_by_model_last_7_days",
    "rejections_by_team_last_7_days",
    "spend_by_model_last_7_days",
    "spend_by_team_last_7_days",
    "spend_by_team_month_to_date",
    "top_keys_by_cost",
];

/// The SQL of the analyst query `name`, if there is one.
pub fn query(name: &str) -> Option<&'static str> {
    QUERIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, sql)| *sql)
}

/// Replaces each `{name}` in `template` with its value.
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |sql, (name, value)| {
            sql.replace(&format!("{{{name}}}"), value)
        })
}

/// An analyst query ready to run against `db`, its window ending at `today` (e.g. `"today()"`).
pub fn render_query(template: &str, db: &str, today: &str) -> String {
    render(template, &[("db", db), ("today", today)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        assert_eq!(
            render(
                "SELECT * FROM {db}.t WHERE d <= {today} AND x = '{db}'",
                &[("db", "s")]
            ),
            "SELECT * FROM s.t WHERE d <= {today} AND x = 's'"
        );
        for (name, sql) in QUERIES {
            let sql = render_query(sql, "sluice_x", "toDate('2025-03-04')");
            assert!(!sql.contains('{'), "{name}: {sql}");
            assert!(
                !sql.contains('?'),
                "{name}: ? would be taken for a bind placeholder"
            );
            assert!(sql.contains("sluice_x."), "{name}");
        }
        assert!(query("top_keys_by_cost").is_some());
        assert!(query("nope").is_none());
    }

    #[test]
    fn embedded_list_matches_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter_map(|n| n.strip_suffix(".sql").map(str::to_owned))
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = QUERIES.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            on_disk, listed,
            "add new query files to QUERIES in queries.rs"
        );
    }
}
