//! The reply path for sync callers: this replica listens on one partition of the replies
//! topic and hands each result to the caller waiting for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_schemas::retry;
use sluice_schemas::{decode, Result as ResultRecord, StreamChunk};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka::{reader_config, when_ready};

/// What a streaming caller receives: chunks in order, then the result.
#[derive(Debug)]
pub enum ReplyEvent {
    Chunk(StreamChunk),
    End(Box<ResultRecord>),
}

enum Waiter {
    Once(oneshot::Sender<ResultRecord>),
    // Unbounded: a stream is bounded by the completion's size, and a slow caller must not
    // stall the one consumer that serves every caller of this replica.
    Stream(mpsc::UnboundedSender<ReplyEvent>),
}

/// Callers waiting for their results, by request id.
#[derive(Default, Clone)]
pub struct Waiters {
    inner: Arc<Mutex<HashMap<String, Waiter>>>,
}

/// Removes the waiter when the caller stops waiting (timeout, disconnect).
pub struct WaitGuard {
    waiters: Waiters,
    request_id: String,
    pub receiver: oneshot::Receiver<ResultRecord>,
}

/// Removes a stream waiter when the response stream is dropped.
pub struct StreamGuard {
    /// `None`: a replay's events, not registered for the reply topic.
    waiters: Option<Waiters>,
    request_id: String,
    pub receiver: mpsc::UnboundedReceiver<ReplyEvent>,
}

impl StreamGuard {
    /// A stream of events that are already known (an answer given again), which the reply
    /// topic never feeds.
    pub fn replay(events: Vec<ReplyEvent>) -> StreamGuard {
        let (tx, rx) = mpsc::unbounded_channel();
        for event in events {
            let _ = tx.send(event);
        }
        StreamGuard {
            waiters: None,
            request_id: String::new(),
            receiver: rx,
        }
    }

    /// Whether the reply topic feeds it (a live request, whose caller may cancel it).
    pub fn is_live(&self) -> bool {
        self.waiters.is_some()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let Some(waiters) = &self.waiters else { return };
        if let Ok(mut map) = waiters.inner.lock() {
            map.remove(&self.request_id);
        }
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.waiters.inner.lock() {
            map.remove(&self.request_id);
        }
    }
}

impl Waiters {
    pub fn register(&self, request_id: &str) -> WaitGuard {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = self.inner.lock() {
            map.insert(request_id.to_string(), Waiter::Once(tx));
        }
        WaitGuard {
            waiters: self.clone(),
            request_id: request_id.to_string(),
            receiver: rx,
        }
    }

    pub fn register_stream(&self, request_id: &str) -> StreamGuard {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut map) = self.inner.lock() {
            map.insert(request_id.to_string(), Waiter::Stream(tx));
        }
        StreamGuard {
            waiters: Some(self.clone()),
            request_id: request_id.to_string(),
            receiver: rx,
        }
    }

    fn deliver(&self, result: ResultRecord) {
        let waiter = self
            .inner
            .lock()
            .ok()
            .and_then(|mut map| map.remove(&result.request_id));
        match waiter {
            Some(Waiter::Once(tx)) => {
                let _ = tx.send(result);
            }
            Some(Waiter::Stream(tx)) => {
                let _ = tx.send(ReplyEvent::End(Box::new(result)));
            }
            None => {}
        }
    }

    /// A record's events, one by one (a worker coalesces several into one record).
    fn deliver_chunk(&self, chunk: StreamChunk) {
        if let Ok(map) = self.inner.lock() {
            if let Some(Waiter::Stream(tx)) = map.get(&chunk.request_id) {
                for event in chunk.events() {
                    if tx.send(ReplyEvent::Chunk(event)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A consumer assigned to this replica's reply partition, starting at its current end so
/// that no reply produced after start-up is missed.
pub async fn reply_consumer(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
) -> Result<StreamConsumer, KafkaError> {
    let consumer: StreamConsumer = reader_config(kafka, &format!("{topic}-reader")).create()?;
    let high = when_ready("reply partition", || async {
        consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .map(|(_, high)| high)
    })
    .await?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(high))?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Delivers replies until `shutdown` fires.
pub async fn run(consumer: StreamConsumer, waiters: Waiters, shutdown: CancellationToken) {
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = retry::until_ok(|| consumer.recv(), Duration::from_millis(100), |error| {
                tracing::warn!(%error, "reply consumer error");
            }) => m,
        };
        let payload = m.payload().unwrap_or_default();
        let is_chunk = m.headers().is_some_and(|h| {
            h.iter().any(|h| {
                h.key == sluice_schemas::REPLY_KIND_HEADER
                    && h.value == Some(sluice_schemas::REPLY_KIND_CHUNK.as_bytes())
            })
        });
        let delivered = if is_chunk {
            decode::<StreamChunk>(payload).map(|c| waiters.deliver_chunk(c))
        } else {
            decode::<ResultRecord>(payload).map(|r| waiters.deliver(r))
        };
        if let Err(error) = delivered {
            tracing::warn!(offset = m.offset(), %error, "undecodable reply skipped");
        }
    }
}
