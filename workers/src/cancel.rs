//! Cancellations: when a streaming caller goes away, or a caller cancels a request
//! (`POST /v1/requests/{id}/cancel`), the ingress publishes a `Cancel`; every worker reads the
//! whole cancels topic and stops the matching provider call (a stream), or skips the request
//! if it has not started yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_schemas::kafka::when_ready;
use sluice_schemas::retry;
use sluice_schemas::{decode, now_ms, Cancel, Topic, Topics};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::publish::client_config;

/// How long a cancellation of a request not (yet) running here is remembered.
const REMEMBER_MS: i64 = 10 * 60 * 1000;
/// How long a cancelled batch, or a request its caller cancelled, is remembered (longer
/// than any completion window or deadline).
const BATCH_REMEMBER_MS: i64 = 8 * 24 * 3600 * 1000;

#[derive(Default)]
struct State {
    running: HashMap<String, CancellationToken>,
    /// Cancelled before they started here, with the time of the cancellation and whether
    /// the caller asked for it ([`Cancel::BY_CALLER`]) rather than went away.
    early: HashMap<String, (i64, bool)>,
    /// Cancelled batches (by batch id): their lines `<batch_id>-<line_no>` that have not
    /// started are skipped.
    batches: HashMap<String, i64>,
}

/// The batch of a batch line's request id (`<batch_id>-<line_no>`).
fn batch_of(request_id: &str) -> Option<&str> {
    let (batch, line) = request_id.rsplit_once('-')?;
    (!line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())).then_some(batch)
}

/// Requests in flight that a cancellation can stop.
#[derive(Clone, Default)]
pub struct Cancellations {
    state: Arc<Mutex<State>>,
}

/// Unregisters the request when processing ends.
pub struct Registration {
    cancellations: Cancellations,
    request_id: String,
    pub token: CancellationToken,
    /// Cancelled before it started because its caller asked (not because it went away).
    pub by_caller: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut s) = self.cancellations.state.lock() {
            s.running.remove(&self.request_id);
        }
    }
}

impl Cancellations {
    /// Registers a request about to run; its token is already cancelled if a cancellation
    /// arrived before it started.
    pub fn register(&self, request_id: &str) -> Registration {
        let token = CancellationToken::new();
        let mut by_caller = false;
        if let Ok(mut s) = self.state.lock() {
            let batch_cancelled = batch_of(request_id).is_some_and(|b| s.batches.contains_key(b));
            let early = s.early.remove(request_id);
            if early.is_some() || batch_cancelled {
                token.cancel();
            }
            by_caller = early.is_some_and(|(_, asked)| asked);
            s.running.insert(request_id.to_string(), token.clone());
        }
        Registration {
            cancellations: self.clone(),
            request_id: request_id.to_string(),
            token,
            by_caller,
        }
    }

    /// A cancelled batch: every line of it that has not started is skipped from now on
    /// (lines already running finish: their answer is in the batch's output).
    pub fn cancel_batch(&self, batch_id: &str) {
        if let Ok(mut s) = self.state.lock() {
            let now = now_ms();
            if s.batches.len() >= 10_000 {
                s.batches.retain(|_, at| now - *at < BATCH_REMEMBER_MS);
            }
            s.batches.insert(batch_id.to_string(), now);
        }
    }

    /// Stops `request_id` if it runs here (a stream ends as if its caller left; a call
    /// that does not stream runs to its end: the provider bills it either way), else
    /// remembers to skip it. `by_caller`: an explicit cancel, not a caller gone.
    pub fn cancel(&self, request_id: &str, by_caller: bool) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        match s.running.get(request_id) {
            Some(token) => token.cancel(),
            None => {
                let now = now_ms();
                if s.early.len() >= 100_000 {
                    // A caller's cancel outlives any queue wait (its request exists: the
                    // ingress checked), a caller gone only a short one.
                    s.early.retain(|_, (at, asked)| {
                        now - *at
                            < if *asked {
                                BATCH_REMEMBER_MS
                            } else {
                                REMEMBER_MS
                            }
                    });
                }
                s.early.insert(request_id.to_string(), (now, by_caller));
            }
        }
    }
}

/// A consumer of every partition of the cancels topic, from the oldest retained record
/// (an hour): a worker that starts mid-batch still skips the lines of a batch cancelled
/// before it started, and replayed request cancels only skip requests whose caller left.
pub struct Listener {
    consumer: StreamConsumer,
    /// Each partition's end when the worker started: [`run`] reports when it has applied
    /// every cancel before these, so that no request the worker takes afterwards misses a
    /// cancel published before it started.
    ends: HashMap<i32, i64>,
}

/// Subscribes to the whole cancels topic (see [`Listener`]).
pub async fn listener(kafka: &KafkaConfig) -> Result<Listener, KafkaError> {
    let topic = Topics::new(kafka.topic_prefix.clone()).name(&Topic::Cancels);
    let mut cc = client_config(kafka);
    cc.set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: StreamConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in 0..Topic::Cancels.partitions() {
        let (low, high) = when_ready("cancels partition", || async {
            consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5))
        })
        .await?;
        tpl.add_partition_offset(&topic, partition, Offset::Offset(low))?;
        if high > low {
            ends.insert(partition, high);
        }
    }
    consumer.assign(&tpl)?;
    Ok(Listener { consumer, ends })
}

/// Applies cancellations until `shutdown`; `caught_up` is sent once every cancel published
/// before the listener started is applied.
pub async fn run(
    listener: Listener,
    cancellations: Cancellations,
    caught_up: oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let Listener { consumer, mut ends } = listener;
    let mut caught_up = Some(caught_up);
    loop {
        if ends.is_empty() {
            if let Some(tx) = caught_up.take() {
                let _ = tx.send(());
            }
        }
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = retry::until_ok(|| consumer.recv(), Duration::from_millis(200), |error| {
                tracing::warn!(%error, "cancel listener error");
            }) => m,
        };
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
        match message.payload().map(decode::<Cancel>) {
            Some(Ok(cancel)) => {
                tracing::debug!(request_id = %cancel.request_id, reason = %cancel.reason, "cancel received");
                if cancel.reason == "batch" {
                    cancellations.cancel_batch(&cancel.request_id);
                } else {
                    let by_caller = cancel.reason == Cancel::BY_CALLER;
                    cancellations.cancel(&cancel.request_id, by_caller);
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "undecodable cancel skipped"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_running_and_early_requests() {
        let c = Cancellations::default();
        let running = c.register("a");
        assert!(!running.token.is_cancelled());
        c.cancel("a", false);
        assert!(running.token.is_cancelled());
        drop(running);
        c.cancel("b", false);
        let b = c.register("b");
        assert!(b.token.is_cancelled(), "cancelled before it started");
        assert!(!b.by_caller);
        assert!(!c.register("c").token.is_cancelled());
        c.cancel("d", true);
        let d = c.register("d");
        assert!(d.token.is_cancelled() && d.by_caller);
        assert!(!c.register("d").token.is_cancelled(), "remembered once");
    }

    #[test]
    fn a_cancelled_batch_skips_its_unstarted_lines_only() {
        let c = Cancellations::default();
        c.cancel_batch("batch_abc");
        assert!(c.register("batch_abc-0").token.is_cancelled());
        assert!(c.register("batch_abc-99999").token.is_cancelled());
        assert!(!c.register("batch_abcd-1").token.is_cancelled());
        assert!(!c.register("batch_ab-1").token.is_cancelled());
        assert!(!c.register("req_123").token.is_cancelled());
        assert_eq!(batch_of("batch_abc-x"), None);
    }
}
