//! Batched ClickHouse lookups: which of these requests already have their result and usage.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_schemas::Request;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::RedeliveryConfig;

/// Lookups that arrive within this window after the first go into one query.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// At most this many ids per query (the SQL stays well under ClickHouse's query size).
const MAX_BATCH: usize = 500;
/// Queries at once: a replay of thousands of records queues here, not at ClickHouse.
const MAX_QUERIES: usize = 4;

/// One caller waiting for its answer.
struct Pending {
    request_id: String,
    team: String,
    answer: oneshot::Sender<bool>,
}

/// How to reach ClickHouse.
struct Target {
    url: String,
    database: String,
    user: Option<String>,
    password: Option<String>,
    timeout: Duration,
    http: reqwest::Client,
    /// Lookups that could not be answered (the provider was called anyway).
    failed_open: AtomicU64,
}

/// Looks finished requests up in ClickHouse, many per query.
pub struct Lookup {
    queue: mpsc::UnboundedSender<Pending>,
    /// How long a caller waits for its batch, queueing included.
    wait: Duration,
    target: Arc<Target>,
}

impl Lookup {
    /// None when `[redelivery]` has no `clickhouse_url`: nothing is looked up. Starts the
    /// batching task on the current tokio runtime.
    pub fn new(config: &RedeliveryConfig, http: reqwest::Client) -> Option<Lookup> {
        let url = config.clickhouse_url.clone()?;
        let target = Arc::new(Target {
            url,
            database: config.database.clone(),
            user: config.user.clone(),
            password: config
                .password_env
                .as_deref()
                .and_then(|v| std::env::var(v).ok()),
            timeout: config.timeout_ms,
            http,
            failed_open: AtomicU64::new(0),
        });
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(batcher(pending, Arc::clone(&target)));
        Some(Lookup {
            queue,
            // A query's own timeout, plus a few queries queued ahead of it.
            wait: config.timeout_ms * 3,
            target,
        })
    }

    /// Whether `request` already has its result and its usage. False when unsure (a
    /// timeout, an error, an id that cannot be looked up): then the provider is called.
    pub async fn already_done(&self, request: &Request) -> bool {
        if !is_safe_id(&request.request_id) || !is_safe_id(&request.team) {
            return false;
        }
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            request_id: request.request_id.clone(),
            team: request.team.clone(),
            answer,
        };
        if self.queue.send(pending).is_err() {
            return self.target.failed_open(1, "lookup task gone");
        }
        match tokio::time::timeout(self.wait, answered).await {
            Ok(Ok(done)) => done,
            // The batch answered false already and counted it.
            Ok(Err(_)) => false,
            Err(_) => self.target.failed_open(1, "queued past the lookup wait"),
        }
    }
}

/// Gathers lookups into batches and runs a few queries at once.
async fn batcher(mut pending: mpsc::UnboundedReceiver<Pending>, target: Arc<Target>) {
    let queries = Arc::new(Semaphore::new(MAX_QUERIES));
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        let window = tokio::time::sleep(BATCH_WINDOW);
        tokio::pin!(window);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                _ = &mut window => break,
                next = pending.recv() => match next {
                    Some(p) => batch.push(p),
                    None => break,
                },
            }
        }
        let Ok(permit) = Arc::clone(&queries).acquire_owned().await else {
            return;
        };
        let target = Arc::clone(&target);
        tokio::spawn(async move {
            let done = target.query(&batch).await;
            drop(permit);
            for p in batch {
                let found = done.as_ref().is_some_and(|d| d.contains(&p.request_id));
                let _ = p.answer.send(found);
            }
        });
    }
}

impl Target {
    /// The ids of `batch` that have both a result and a usage row; None when ClickHouse
    /// did not answer in time.
    async fn query(&self, batch: &[Pending]) -> Option<HashSet<String>> {
        let sql = batch_sql(
            &self.database,
            batch
                .iter()
                .map(|p| (p.request_id.as_str(), p.team.as_str())),
        );
        let mut call = self.http.post(&self.url).body(sql).timeout(self.timeout);
        if let Some(user) = &self.user {
            call = call.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.password {
            call = call.header("X-ClickHouse-Key", password);
        }
        let answer = async {
            let response = call.send().await?.error_for_status()?;
            response.text().await
        };
        match answer.await {
            Ok(text) => Some(text.lines().map(|l| l.trim().to_string()).collect()),
            Err(error) => {
                self.failed_open(batch.len() as u64, &error.to_string());
                None
            }
        }
    }

    /// Counts `n` lookups answered "not done" for want of an answer; returns false.
    fn failed_open(&self, n: u64, why: &str) -> bool {
        let total = self.failed_open.fetch_add(n, Ordering::Relaxed) + n;
        metrics::counter!("sluice_redelivery_lookup_failures_total").increment(n);
        tracing::warn!(
            requests = n,
            failed_open_total = total,
            error = why,
            "redelivery lookup failed; calling the provider"
        );
        false
    }
}

/// One query for many (request id, team) pairs: the ids present in both `results` and
/// `usage`. `usage` is sorted by (team, request_id), `results` by request_id: index reads.
/// The ids and teams must have passed [`is_safe_id`] (they go into the SQL unescaped).
pub(super) fn batch_sql<'a>(db: &str, pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut ids = Vec::new();
    let mut teams = Vec::new();
    for (id, team) in pairs {
        ids.push(format!("'{id}'"));
        let team = format!("'{team}'");
        if !teams.contains(&team) {
            teams.push(team);
        }
    }
    let (ids, teams) = (ids.join(","), teams.join(","));
    format!(
        "SELECT DISTINCT request_id FROM {db}.usage WHERE team IN ({teams}) AND request_id IN ({ids}) \
         AND request_id IN (SELECT request_id FROM {db}.results WHERE request_id IN ({ids})) \
         FORMAT TabSeparated"
    )
}

/// Ids that go into SQL unescaped must be made of these characters only (ClickHouse 18.16
/// has no query parameters); anything else is not looked up.
pub(super) fn is_safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}
