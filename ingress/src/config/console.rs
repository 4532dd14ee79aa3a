//! `[console]`: the operators' web console (docs/console.md), on a listener of its own,
//! never the tenants'.

use std::time::Duration;

use serde::Deserialize;

use super::millis;

/// `[console]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Where the console listens (`host:port`); none: no console. Bind it to an address only
    /// operators reach, as `[ops] listen`.
    pub listen: Option<String>,
    /// Hex SHA-256 of the read-only console key (`sluice-ingress --hash-key <key>`): it sees
    /// every page and changes nothing. The admin key (`[admin] key_sha256`) also logs in, and
    /// may create, rotate and revoke keys.
    pub key_sha256: Option<String>,
    /// How long a login lasts.
    #[serde(with = "millis")]
    pub session_ttl_ms: Duration,
    /// The most logins held at once (the oldest goes first).
    pub max_sessions: usize,
    /// Mark the session cookie `Secure` (set it when a TLS proxy fronts the console).
    pub secure_cookie: bool,
    /// The workers' consumer group prefix (`[kafka] group_id` of the workers): the backlog
    /// page reads each class's committed offsets under `<group_id>-<class>`, as the workers'
    /// lag gauge does.
    pub worker_group_id: String,
    /// The ClickHouse user the pages read the analytics views as (give it the analysts'
    /// read-only user); none: `[clickhouse]`'s user.
    pub clickhouse_user: Option<String>,
    pub clickhouse_password: Option<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: None,
            key_sha256: None,
            session_ttl_ms: Duration::from_secs(8 * 3600),
            max_sessions: 1000,
            secure_cookie: false,
            worker_group_id: "sluice-workers".into(),
            clickhouse_user: None,
            clickhouse_password: None,
        }
    }
}
