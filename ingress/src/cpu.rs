//! CPU-heavy work (parsing, guard scans and token counting of large bodies, validating batch
//! lines) runs where it cannot stall the async runtime, so `/healthz` and sync replies stay
//! fast while a huge request or batch is checked.

use std::sync::{Arc, OnceLock};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

/// Bodies below this size are checked in place: microseconds of work, not worth a thread
/// hop on every small sync call.
pub const HEAVY_BYTES: usize = 16 * 1024;

/// Heavy checks at once: one per core (at least two). More wait for a slot, so a flood of
/// huge bodies queues instead of taking every core from small callers.
fn slots() -> &'static Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Arc::new(Semaphore::new(cores.max(2)))
    })
}

/// Runs `f` on tokio's blocking pool, at most [`slots`] at once. The slot is held by the
/// work itself, so a caller that goes away does not free it early.
pub async fn offload<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let slot = Arc::clone(slots()).acquire_owned().await.ok();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f()
    })
    .await
}

/// Runs `f` on this thread after handing the runtime's other tasks to another thread
/// (`block_in_place`), for call sites that borrow (the batch driver). A current-thread
/// runtime (unit tests) just runs it.
pub fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
