//! Async request status, read from ClickHouse's private database (where the analytics sink
//! lands every result's body and every accepted request), so any ingress replica can answer
//! for any request. Kept for the sink's `[retention] completion_days`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use clickhouse::{Client, Row};
use serde::Deserialize;

use sluice_schemas::now_ms;
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

/// How long this replica remembers an accepted async request locally, covering the time
/// until the analytics sink has landed its audit row in ClickHouse (its flush interval, ~1 s,
/// plus slack for a slow insert).
const REMEMBER_MS: i64 = 60 * 1000;
/// At most this many remembered requests (beyond it the oldest are forgotten early; their
/// audit rows answer instead).
const REMEMBER_MAX: usize = 200_000;

/// Recently accepted async requests, oldest first, with O(1) expiry.
#[derive(Default)]
struct Entries {
    by_id: HashMap<String, (String, i64)>,
    order: VecDeque<(String, i64)>,
}

impl Entries {
    fn insert(&mut self, request_id: &str, team: &str, now: i64) {
        // Expire from the front: amortized O(1) per accepted request.
        while let Some((id, at)) = self.order.front().cloned() {
            if now - at < REMEMBER_MS && self.order.len() < REMEMBER_MAX {
                break;
            }
            self.order.pop_front();
            if self.by_id.get(&id).is_some_and(|(_, t)| *t == at) {
                self.by_id.remove(&id);
            }
        }
        self.by_id
            .insert(request_id.to_string(), (team.to_string(), now));
        self.order.push_back((request_id.to_string(), now));
    }

    fn contains(&self, request_id: &str, team: &str, now: i64) -> bool {
        self.by_id
            .get(request_id)
            .is_some_and(|(t, at)| t == team && now - at < REMEMBER_MS)
    }
}

/// [`Entries`] behind a lock: what `GET /v1/requests/{id}` answers "queued" from before the
/// results store knows the request.
#[derive(Default)]
pub(crate) struct Recent(Mutex<Entries>);

impl Recent {
    pub(crate) fn remember(&self, request_id: &str, team: &str) {
        if let Ok(mut recent) = self.0.lock() {
            recent.insert(request_id, team, now_ms());
        }
    }

    pub(crate) fn contains(&self, request_id: &str, team: &str) -> bool {
        let now = now_ms();
        self.0
            .lock()
            .is_ok_and(|r| r.contains(request_id, team, now))
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

    #[test]
    fn recent_requests_expire_in_order_and_stay_bounded() {
        let mut r = Entries::default();
        r.insert("a", "t1", 0);
        r.insert("b", "t2", 10);
        assert!(r.contains("a", "t1", 20));
        assert!(!r.contains("a", "t2", 20), "another team's id is not known");
        assert!(!r.contains("a", "t1", REMEMBER_MS), "expired by time");
        r.insert("c", "t1", REMEMBER_MS + 5);
        assert_eq!(r.order.len(), 2, "a was dropped on insert");
        assert!(!r.by_id.contains_key("a"));
        for i in 0..REMEMBER_MAX + 10 {
            r.insert(&format!("x{i}"), "t", REMEMBER_MS + 6);
        }
        assert_eq!(r.order.len(), REMEMBER_MAX);
        assert_eq!(r.by_id.len(), REMEMBER_MAX);
    }
}
