//! `[clickhouse]` and `[retention]`: the store the ingress reads and how long uploads stay.

use std::fmt;

use serde::Deserialize;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:18123".into(),
            database: "sluice".into(),
            user: None,
            password: None,
        }
    }
}

impl ClickHouseConfig {
    /// A client for the ingress's reads and small writes (lookups, batch files), bound to
    /// the private database: the only one the ingress's ClickHouse user may use
    /// (docs/security.md); `database` names the analyst one next to it.
    pub fn client(&self) -> clickhouse::Client {
        self.client_for(
            &sluice_schemas::tables::private_database(&self.database),
            self.user.as_deref(),
            self.password.as_deref(),
        )
    }

    /// A client on this server bound to `database`, as `user` (the console reads the
    /// analyst database with its own read-only user).
    pub fn client_for(
        &self,
        database: &str,
        user: Option<&str>,
        password: Option<&str>,
    ) -> clickhouse::Client {
        let mut client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_database(database)
            // ClickHouse 18.16 (Debian) cannot validate row types; casts in the queries
            // pin the types instead.
            .with_validation(false)
            // Small requests: lz4 framing only adds a round of latency here.
            .with_compression(clickhouse::Compression::None);
        if let Some(user) = user {
            client = client.with_user(user);
        }
        if let Some(password) = password {
            client = client.with_password(password);
        }
        client
    }
}

impl fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How long the ingress keeps what callers upload. Completions are kept by the analytics
/// sink (`[retention] completion_days` there); both go when their day has passed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days an uploaded batch input file (and its lines) is kept, at least 1.
    pub file_days: u32,
    /// Teams whose policy allows stored conversations: their Responses API requests may set
    /// `store: true` and `previous_response_id` (docs/responses.md#stored-conversations).
    /// Any other team's are refused by name.
    pub conversation_teams: Vec<String>,
    /// Days a stored response's input is kept, at least 1. Its answer is read from the
    /// completions the sink keeps (`[retention] completion_days` there) when the ingress did
    /// not have it at hand: keep both alike.
    pub conversation_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            file_days: 7,
            conversation_teams: Vec::new(),
            conversation_days: 30,
        }
    }
}
