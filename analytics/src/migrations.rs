//! Versioned schema migrations, embedded from `analytics/migrations/NNNN_name.sql`.
//!
//! A file is SQL text with `{db}` where the database goes; statements end with `;` at the end
//! of a line; lines starting with `--` are comments. Applied migrations are recorded in
//! `{db}.schema_migrations`, so re-running applies nothing new. Statements use IF NOT EXISTS,
//! so a migration interrupted half-way (or run by two processes at once) is safe to re-run.
//! ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`: a statement of the form
//! `ALTER TABLE {db}.t ADD COLUMN c ...` (one column each) runs only when `system.columns`
//! does not list `c` yet, which makes it just as safe to re-run.
//!
//! `{private}` is the private database ([`sluice_schemas::tables`]). A comment line
//! `-- @if ttl`, `-- @if table {db}.t` or `-- @if column {db}.t c` makes the next statement
//! run only on a server with TTL (19.6+), while table `t` (its column `c`) exists: how a
//! migration moves data and uses features 18.16 lacks, and stays safe to re-run.

use clickhouse::Client;
use tracing::info;

use crate::config::is_valid_identifier;
use crate::error::Error;
use crate::queries::render;
use crate::tables::Table;

macro_rules! migration_files {
    ($($file:literal),+ $(,)?) => {
        &[$(($file, include_str!(concat!("../migrations/", $file)))),+]
    };
}

/// Every migration file, in order. A unit test checks this list against the directory.
const FILES: &[(&str, &str)] = migration_files![
    "0001_tables.sql",
    "0002_views.sql",
    "0003_budget_alerts.sql",
    "0004_audit_analytics.sql",
    "0005_batches.sql",
    "0006_private_and_retention.sql",
    "0007_batch_attempts.sql",
    "0008_attempts.sql",
    "0009_cache.sql",
    "0010_routing.sql",
    "0011_conversations.sql",
    "0012_replay.sql",
];

/// The database and `schema_migrations`, created (if missing) before anything else.
pub const BOOKKEEPING: &str = include_str!("../migrations/schema_migrations.sql");

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub file: &'static str,
    /// SQL text with `{db}` placeholders.
    pub sql: &'static str,
}

impl Migration {
    /// The statements of this migration for database `db`.
    pub fn statements(&self, db: &str) -> Vec<String> {
        self.conditional_statements(db)
            .into_iter()
            .map(|s| s.sql)
            .collect()
    }

    /// The statements of this migration for database `db`, with their conditions.
    pub fn conditional_statements(&self, db: &str) -> Vec<Statement> {
        parse_statements(&render_migration(self.sql, db))
    }
}

/// `sql` with `{db}` and `{private}` filled in.
pub fn render_migration(sql: &str, db: &str) -> String {
    let private = sluice_schemas::tables::private_database(db);
    render(sql, &[("db", db), ("private", &private)])
}

/// When a statement runs (a `-- @if ...` line before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The server has table TTL (ClickHouse 19.6+).
    Ttl,
    /// Table `database.table` exists.
    Table { database: String, table: String },
    /// Column `column` of `database.table` exists.
    Column {
        database: String,
        table: String,
        column: String,
    },
}

impl Condition {
    fn parse(text: &str) -> Option<Condition> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let qualified = |w: &str| w.split_once('.').map(|(d, t)| (d.to_owned(), t.to_owned()));
        match words.as_slice() {
            ["ttl"] => Some(Condition::Ttl),
            ["table", name] => {
                let (database, table) = qualified(name)?;
                Some(Condition::Table { database, table })
            }
            ["column", name, column] => {
                let (database, table) = qualified(name)?;
                Some(Condition::Column {
                    database,
                    table,
                    column: (*column).to_owned(),
                })
            }
            _ => None,
        }
    }
}

/// A statement and the condition it runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub condition: Option<Condition>,
}

/// [`split_statements`] keeping each statement's `-- @if` condition. An unknown condition
/// is kept as a statement that fails (`Condition` parse errors must not skip silently).
pub fn parse_statements(sql: &str) -> Vec<Statement> {
    let mut statements = Vec::new();
    let mut condition: Option<Condition> = None;
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("--") {
            if let Some(text) = rest.trim().strip_prefix("@if ") {
                condition = Condition::parse(text);
                if condition.is_none() {
                    statements.push(Statement {
                        sql: format!(
                            "SELECT throwIf(1, 'unknown migration condition: {}')",
                            text.replace('\'', "")
                        ),
                        condition: None,
                    });
                }
            }
            continue;
        }
        let done = trimmed.ends_with(';');
        if done {
            current.push_str(line.trim_end().strip_suffix(';').unwrap_or(line));
        } else {
            current.push_str(line);
            current.push('\n');
        }
        if done {
            let statement = current.trim();
            if !statement.is_empty() {
                statements.push(Statement {
                    sql: statement.to_owned(),
                    condition: condition.take(),
                });
            }
            current.clear();
        }
    }
    let statement = current.trim();
    if !statement.is_empty() {
        statements.push(Statement {
            sql: statement.to_owned(),
            condition: condition.take(),
        });
    }
    statements
}

/// Whether a server of `version` (`SELECT version()`, e.g. `18.16.1`, `24.8.4.13`) has
/// table TTL, added in 19.6.
pub fn supports_ttl(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (19, 6)
}

/// The embedded migrations, in version order.
pub fn migrations() -> Result<Vec<Migration>, Error> {
    let mut all = Vec::with_capacity(FILES.len());
    for (file, sql) in FILES {
        let (version, name) = parse_file_name(file)?;
        all.push(Migration {
            version,
            name,
            file,
            sql,
        });
    }
    if all.windows(2).any(|w| w[0].version >= w[1].version) {
        return Err(Error::MigrationFile {
            file: "(list)",
            problem: "versions must be unique and listed in increasing order",
        });
    }
    Ok(all)
}

/// `0001_tables.sql` -> `(1, "tables")`.
pub fn parse_file_name(file: &'static str) -> Result<(u32, &'static str), Error> {
    let bad = |problem| Error::MigrationFile { file, problem };
    let stem = file
        .strip_suffix(".sql")
        .ok_or_else(|| bad("must end with .sql"))?;
    let (digits, name) = stem
        .split_once('_')
        .ok_or_else(|| bad("must be named NNNN_name.sql"))?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Err(bad("must be named NNNN_name.sql"));
    }
    let version = digits
        .parse()
        .map_err(|_| bad("must be named NNNN_name.sql"))?;
    Ok((version, name))
}

/// Splits SQL text into statements at `;` ending a line; drops `--` comment lines and blank
/// statements. A last statement without `;` is kept.
pub fn split_statements(sql: &str) -> Vec<String> {
    parse_statements(sql).into_iter().map(|s| s.sql).collect()
}

/// `(database, table, column)` of an `ALTER TABLE {db}.table ADD COLUMN column ...` (or
/// `{private}.table`) statement.
pub fn added_column<'a>(statement: &'a str, db: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let mut words = statement.split_whitespace();
    let [alter, table_word, qualified, add, column_word, column] =
        std::array::from_fn(|_| words.next().unwrap_or(""));
    let (database, table) = qualified.split_once('.')?;
    if database != db && database != sluice_schemas::tables::private_database(db) {
        return None;
    }
    (alter.eq_ignore_ascii_case("ALTER")
        && table_word.eq_ignore_ascii_case("TABLE")
        && add.eq_ignore_ascii_case("ADD")
        && column_word.eq_ignore_ascii_case("COLUMN")
        && !column.is_empty()
        && !column.eq_ignore_ascii_case("IF"))
    .then_some((database, table, column))
}

/// Creates `db` if needed and applies every migration not yet recorded there, in order.
/// Returns the versions applied now (empty when the schema was up to date).
///
/// `client` may be bound to any database: statements name theirs, and the ones that run
/// before `db` exists go through the `default` database.
pub async fn apply_migrations(client: &Client, db: &str) -> Result<Vec<u32>, Error> {
    if !is_valid_identifier(db) {
        return Err(Error::ConfigField {
            field: "clickhouse.database".into(),
            problem: "must be letters, digits and '_', not starting with a digit",
        });
    }
    let migrations = migrations()?;
    let admin = client.clone().with_database("default");
    for sql in split_statements(&render(BOOKKEEPING, &[("db", db)])) {
        admin
            .query_raw(&sql)
            .execute()
            .await
            .map_err(Error::clickhouse("schema_migrations setup"))?;
    }
    let applied: Vec<u32> = admin
        .query(&format!(
            "SELECT DISTINCT version FROM {db}.{}",
            Table::SchemaMigrations.name()
        ))
        .fetch_all()
        .await
        .map_err(Error::clickhouse("schema_migrations read"))?;

    let mut now_applied = Vec::new();
    let mut ttl: Option<bool> = None;
    for migration in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        for (i, statement) in migration.conditional_statements(db).iter().enumerate() {
            if let Some(condition) = &statement.condition {
                if !holds(&admin, condition, &mut ttl).await? {
                    continue;
                }
            }
            let statement = &statement.sql;
            if let Some((database, table, column)) = added_column(statement, db) {
                let present: u64 = admin
                    .query(
                        "SELECT count() FROM system.columns \
                         WHERE database = ? AND table = ? AND name = ?",
                    )
                    .bind(database)
                    .bind(table)
                    .bind(column)
                    .fetch_one()
                    .await
                    .map_err(Error::clickhouse("system.columns read"))?;
                if present > 0 {
                    continue;
                }
            }
            admin
                .query_raw(statement)
                .execute()
                .await
                .map_err(|source| Error::Migration {
                    version: migration.version,
                    name: migration.name,
                    statement: i + 1,
                    source,
                })?;
        }
        admin
            .query(&format!(
                "INSERT INTO {db}.{} (version, name) VALUES (?, ?)",
                Table::SchemaMigrations.name()
            ))
            .bind(migration.version)
            .bind(migration.name)
            .execute()
            .await
            .map_err(Error::clickhouse("schema_migrations record"))?;
        info!(
            database = db,
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        now_applied.push(migration.version);
    }
    Ok(now_applied)
}

/// Whether `condition` holds on the server (`ttl` caches the version check).
async fn holds(
    client: &Client,
    condition: &Condition,
    ttl: &mut Option<bool>,
) -> Result<bool, Error> {
    match condition {
        Condition::Ttl => {
            if let Some(known) = *ttl {
                return Ok(known);
            }
            let version: String = client
                .query("SELECT version()")
                .fetch_one()
                .await
                .map_err(Error::clickhouse("version read"))?;
            let supported = supports_ttl(&version);
            *ttl = Some(supported);
            Ok(supported)
        }
        Condition::Table { database, table } => {
            let n: u64 = client
                .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
                .bind(database)
                .bind(table)
                .fetch_one()
                .await
                .map_err(Error::clickhouse("system.tables read"))?;
            Ok(n > 0)
        }
        Condition::Column {
            database,
            table,
            column,
        } => {
            let n: u64 = client
                .query(
                    "SELECT count() FROM system.columns \
                     WHERE database = ? AND table = ? AND name = ?",
                )
                .bind(database)
                .bind(table)
                .bind(column)
                .fetch_one()
                .await
                .map_err(Error::clickhouse("system.columns read"))?;
            Ok(n > 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_apply_to_the_next_statement() {
        let sql = "-- plain comment\nCREATE TABLE a;\n-- @if ttl\nALTER TABLE a\n MODIFY TTL x;\n\
                   -- @if column s.results body\nALTER TABLE s.results DROP COLUMN body;\n\
                   -- @if table s.t\nDROP TABLE s.t;\nSELECT 1;\n";
        let statements = parse_statements(sql);
        assert_eq!(statements.len(), 5);
        assert_eq!(statements[0].condition, None);
        assert_eq!(statements[1].condition, Some(Condition::Ttl));
        assert_eq!(statements[1].sql, "ALTER TABLE a\n MODIFY TTL x");
        assert_eq!(
            statements[2].condition,
            Some(Condition::Column {
                database: "s".into(),
                table: "results".into(),
                column: "body".into()
            })
        );
        assert_eq!(
            statements[3].condition,
            Some(Condition::Table {
                database: "s".into(),
                table: "t".into()
            })
        );
        assert_eq!(statements[4].condition, None);
        // A misspelt condition fails the migration instead of running or skipping quietly.
        let bad = parse_statements("-- @if tll\nALTER TABLE a MODIFY TTL x;\n");
        assert!(bad[0].sql.contains("throwIf"), "{bad:?}");
    }

    #[test]
    fn ttl_support_by_version() {
        assert!(!supports_ttl("18.16.1"));
        assert!(!supports_ttl("19.5.3.8"));
        assert!(supports_ttl("19.6.2.11"));
        assert!(supports_ttl("24.8.4.13"));
        assert!(!supports_ttl("garbage"));
    }

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("0001_tables.sql").unwrap(), (1, "tables"));
        assert_eq!(
            parse_file_name("0420_add_thing.sql").unwrap(),
            (420, "add_thing")
        );
        for bad in [
            "1_x.sql",
            "0001.sql",
            "0001_.sql",
            "00a1_x.sql",
            "0001_x.txt",
        ] {
            assert!(parse_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recognises_added_columns() {
        assert_eq!(
            added_column(
                "ALTER TABLE s.audit ADD COLUMN policy String DEFAULT ''",
                "s"
            ),
            Some(("s", "audit", "policy"))
        );
        assert_eq!(
            added_column("alter table s.audit\n    add column x UInt8", "s"),
            Some(("s", "audit", "x"))
        );
        assert_eq!(
            added_column("ALTER TABLE s_private.batches ADD COLUMN n UInt32", "s"),
            Some(("s_private", "batches", "n"))
        );
        assert_eq!(
            added_column("ALTER TABLE t.audit ADD COLUMN x UInt8", "s"),
            None
        );
        assert_eq!(added_column("ALTER TABLE s.audit DROP COLUMN x", "s"), None);
        assert_eq!(
            added_column("ALTER TABLE s.audit ADD COLUMN IF NOT EXISTS x UInt8", "s"),
            None
        );
        assert_eq!(
            added_column("CREATE TABLE IF NOT EXISTS s.a (x UInt8)", "s"),
            None
        );
    }

    #[test]
    fn splits_at_semicolons_ending_lines() {
        let sql = "-- header; not a statement end\nCREATE TABLE a (x String DEFAULT 'a;b')\nENGINE = Log;\n\n  -- comment\nSELECT 1;  \n;\nSELECT 2\n";
        assert_eq!(
            split_statements(sql),
            vec![
                "CREATE TABLE a (x String DEFAULT 'a;b')\nENGINE = Log",
                "SELECT 1",
                "SELECT 2"
            ]
        );
        assert!(split_statements("-- only comments;\n\n").is_empty());
    }

    #[test]
    fn embedded_list_matches_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql") && n != "schema_migrations.sql")
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = migrations().unwrap().iter().map(|m| m.file).collect();
        assert_eq!(
            on_disk, listed,
            "add new migration files to FILES in migrations.rs"
        );
    }

    #[test]
    fn every_statement_is_rendered_and_qualified() {
        for migration in migrations().unwrap() {
            let statements = migration.conditional_statements("sluice_x");
            assert!(!statements.is_empty(), "{}", migration.file);
            for Statement {
                sql: statement,
                condition,
            } in statements
            {
                assert!(!statement.contains('{'), "{statement}");
                assert!(!statement.contains('?'), "{statement}");
                // Safe to re-run: IF [NOT] EXISTS, a skipped existing column, a condition
                // that no longer holds once done, or a copy into a ReplacingMergeTree of the
                // private database (a second copy collapses).
                assert!(
                    statement.contains("IF NOT EXISTS")
                        || statement.contains("IF EXISTS")
                        || added_column(&statement, "sluice_x").is_some()
                        || condition.is_some()
                        || statement.starts_with("INSERT INTO sluice_x_private."),
                    "{statement}"
                );
                if statement.starts_with("ALTER") && condition.is_none() {
                    assert_eq!(
                        statement.matches("ADD COLUMN").count(),
                        1,
                        "one column per ALTER, so a re-run can tell what is missing: {statement}"
                    );
                }
                assert!(
                    statement.contains("sluice_x.") || statement.contains("sluice_x_private"),
                    "{statement}"
                );
            }
        }
        for statement in split_statements(&render(BOOKKEEPING, &[("db", "sluice_x")])) {
            assert!(statement.contains("IF NOT EXISTS sluice_x"), "{statement}");
        }
        assert!(BOOKKEEPING.contains(Table::SchemaMigrations.name()));
        // Every view the code names exists in some migration.
        let all: String = migrations().unwrap().iter().map(|m| m.sql).collect();
        for view in Table::VIEWS {
            assert!(
                all.contains(&format!("VIEW IF NOT EXISTS {{db}}.{} AS", view.name())),
                "{}",
                view.name()
            );
        }
    }
}
