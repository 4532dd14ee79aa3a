//! Async request status, read from ClickHouse's private database (where the analytics sink
//! lands every result's body and every accepted request), so any ingress replica can answer
//! for any request. Kept for the sink's `[retention] completion_days`.

use clickhouse::{Client, Row};
use serde::Deserialize;

use sluice_schemas::tables::PrivateTable;

use crate::config::ClickHouseConfig;

#[derive(Debug, Row, Deserialize)]
pub struct StoredResult {
    pub status: String,
    pub http_status: i32,
    pub body: String,
    pub model: String,
    pub finished_at_ms: i64,
}

#[derive(Clone)]
pub struct ResultStore {
    client: Client,
    database: String,
}

impl ResultStore {
    pub fn new(config: &ClickHouseConfig) -> ResultStore {
        let client = config.client();
        ResultStore {
            client,
            database: config.database.clone(),
        }
    }

    /// The final result of a request of `team`, if it has landed.
    pub async fn result(
        &self,
        request_id: &str,
        team: &str,
    ) -> Result<Option<StoredResult>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT status, toInt32(http_status), body, model, toInt64(finished_at_ms) \
             FROM {} FINAL WHERE request_id = ? AND team = ? LIMIT 1",
            PrivateTable::ResultBodies.qualified(&self.database)
        );
        self.client
            .query(&sql)
            .bind(request_id)
            .bind(team)
            .fetch_optional::<StoredResult>()
            .await
    }

    /// Whether the ingress accepted a request of `team` (its `accepted` audit event landed).
    pub async fn was_accepted(
        &self,
        request_id: &str,
        team: &str,
    ) -> Result<bool, clickhouse::error::Error> {
        let sql = format!(
            "SELECT toUInt64(count()) FROM {} WHERE request_id = ? AND team = ?",
            PrivateTable::AcceptedRequests.qualified(&self.database)
        );
        let n: u64 = self
            .client
            .query(&sql)
            .bind(request_id)
            .bind(team)
            .fetch_one()
            .await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {

    use std::io::Read;

    use super::*;

    /// `https://` URLs speak TLS (rustls): the server's first byte is a TLS handshake
    /// record (0x16), not an "unsupported scheme" error before connecting.
    #[tokio::test]
    async fn https_urls_use_tls() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let first_byte = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).unwrap();
            byte[0]
        });
        let store = ResultStore::new(&ClickHouseConfig {
            url: format!("https://{addr}"),
            ..ClickHouseConfig::default()
        });
        let lookup =
            tokio::time::timeout(std::time::Duration::from_secs(10), store.result("r", "t"));
        let first = tokio::task::spawn_blocking(move || first_byte.join().unwrap());
        // The server never answers the handshake: the client times out or errs; only
        // what it sent matters.
        let (lookup, first) = tokio::join!(lookup, first);
        if let Ok(Err(error)) = lookup {
            assert!(!error.to_string().contains("scheme is not http"), "{error}");
        }
        assert_eq!(first.unwrap(), 0x16, "a TLS ClientHello");
    }
}
