//! The replays this ingress runs through the admin API: at most `[replay] max_running` at
//! a time, the last [`KEEP`] remembered for `GET /admin/replays`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{Checked, Progress, Replayer, State};
use crate::error::ApiError;

/// Replays remembered (finished ones are forgotten oldest first).
pub const KEEP: usize = 100;

/// Every replay started here, newest last.
pub(crate) struct Registry {
    replayer: Arc<Replayer>,
    max_running: usize,
    replays: Mutex<VecDeque<Arc<Mutex<Progress>>>>,
    shutdown: CancellationToken,
}

impl Registry {
    pub fn new(replayer: Replayer, max_running: usize, shutdown: CancellationToken) -> Registry {
        Registry {
            replayer: Arc::new(replayer),
            max_running,
            replays: Mutex::new(VecDeque::new()),
            shutdown,
        }
    }

    /// Starts `spec` in the background; its progress so far.
    pub fn start(&self, spec: Checked) -> Result<Progress, ApiError> {
        let mut replays = self.list_locked();
        let state = |p: &Arc<Mutex<Progress>>| read(p).state;
        if replays.iter().any(|p| read(p).replay_id == spec.replay_id) {
            return Err(ApiError::InvalidParam {
                param: "replay_id",
                problem: "is the id of a replay this ingress knows already",
            });
        }
        let running = replays
            .iter()
            .filter(|p| state(p) == State::Running)
            .count();
        if running >= self.max_running {
            return Err(ApiError::ReplaysBusy {
                max: self.max_running,
            });
        }
        while replays.len() >= KEEP {
            match replays.iter().position(|p| state(p) != State::Running) {
                Some(i) => drop(replays.remove(i)),
                None => break,
            }
        }
        let progress = Arc::new(Mutex::new(Progress::new(&spec)));
        replays.push_back(Arc::clone(&progress));
        drop(replays);
        let replayer = Arc::clone(&self.replayer);
        let shutdown = self.shutdown.clone();
        let shown = read(&progress);
        tokio::spawn(async move { replayer.run(&spec, &progress, &shutdown).await });
        Ok(shown)
    }

    pub fn get(&self, id: &str) -> Option<Progress> {
        self.list_locked()
            .iter()
            .map(|p| read(p))
            .find(|p| p.replay_id == id)
    }

    pub fn list(&self) -> Vec<Progress> {
        self.list_locked().iter().map(|p| read(p)).collect()
    }

    fn list_locked(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Mutex<Progress>>>> {
        self.replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn read(progress: &Mutex<Progress>) -> Progress {
    progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}
