//! What `/readyz` checks: named flags the service sets (keys loaded, partitions assigned)
//! and probes it runs on each request (Kafka, ClickHouse reachable).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

pub(crate) type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Probe = Arc<dyn Fn() -> ProbeFuture + Send + Sync>;

#[derive(Clone)]
enum Check {
    /// Set by the service; `None` until first set (not ready).
    Flag(Option<bool>),
    Probe(Probe),
}

/// The named checks of one service. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, Check>>>,
}

/// `/readyz`'s answer: what is not ready and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyReport {
    pub ready: bool,
    /// Check name -> why it is not ready.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_ready: BTreeMap<String, String>,
}

impl Readiness {
    /// Registers flag `name`, not ready until [`Readiness::set`] (re-registering resets it).
    pub fn expect(&self, name: &'static str) {
        self.with(|checks| checks.insert(name, Check::Flag(None)));
    }

    /// Sets flag `name` (registering it if needed).
    pub fn set(&self, name: &'static str, ready: bool) {
        self.with(|checks| checks.insert(name, Check::Flag(Some(ready))));
    }

    /// Registers probe `name`, run (with a timeout) on each check.
    pub fn probe<F, Fut>(&self, name: &'static str, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let probe: Probe = Arc::new(move || Box::pin(probe()));
        self.with(|checks| checks.insert(name, Check::Probe(probe)));
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, Check>) -> T) -> T {
        let mut checks = match self.checks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut checks)
    }

    /// Runs every probe at once (each bounded by `timeout`) and reads every flag.
    pub async fn check(&self, timeout: Duration) -> ReadyReport {
        let checks: Vec<(&'static str, Check)> =
            self.with(|checks| checks.iter().map(|(n, c)| (*n, c.clone())).collect());
        let mut not_ready = BTreeMap::new();
        let mut running = Vec::new();
        for (name, check) in checks {
            match check {
                Check::Flag(Some(true)) => {}
                Check::Flag(Some(false)) => {
                    not_ready.insert(name.to_string(), "not ready".to_string());
                }
                Check::Flag(None) => {
                    not_ready.insert(name.to_string(), "not yet".to_string());
                }
                Check::Probe(probe) => {
                    running.push((name, tokio::spawn(tokio::time::timeout(timeout, probe()))));
                }
            }
        }
        for (name, task) in running {
            let failure = match task.await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(error))) => Some(error),
                Ok(Err(_)) => Some(format!("no answer within {} ms", timeout.as_millis())),
                Err(error) => Some(format!("probe failed: {error}")),
            };
            if let Some(failure) = failure {
                not_ready.insert(name.to_string(), failure);
            }
        }
        ReadyReport {
            ready: not_ready.is_empty(),
            not_ready,
        }
    }
}

/// The process's readiness (one service per process), which the ops listener serves.
pub fn global() -> &'static Readiness {
    static GLOBAL: OnceLock<Readiness> = OnceLock::new();
    GLOBAL.get_or_init(Readiness::default)
}
