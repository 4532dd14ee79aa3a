//! The request ids this worker process finished lately, oldest forgotten first.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Ids {
    set: HashSet<String>,
    order: VecDeque<String>,
}

/// A bounded set of finished request ids: a record read again (its offset was not committed
/// yet) whose id is here already has its result, reply and usage published by this process.
#[derive(Debug)]
pub struct Recent {
    ids: Mutex<Ids>,
    capacity: usize,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent {
            ids: Mutex::new(Ids::default()),
            capacity,
        }
    }

    /// Remembers that `request_id`'s events were published.
    pub fn finished(&self, request_id: &str) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut ids) = self.ids.lock() else {
            return;
        };
        if !ids.set.insert(request_id.to_string()) {
            return;
        }
        ids.order.push_back(request_id.to_string());
        while ids.order.len() > self.capacity {
            if let Some(old) = ids.order.pop_front() {
                ids.set.remove(&old);
            }
        }
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.ids
            .lock()
            .is_ok_and(|ids| ids.set.contains(request_id))
    }
}
