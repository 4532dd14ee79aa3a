//! Coalescing of stream events into reply records: a fast provider's many small chunks
//! become a few Kafka records, a slow provider's are sent as they come.
//!
//! An event is sent at once when the last record went out at least `window` ago (the first
//! event of a stream always is), and so is the first event that carries a token (content,
//! a tool call, a refusal or reasoning: the caller's time to first token never waits for
//! the window, though the role-only event before it has just gone out). Any other event that
//! comes sooner is held, with any that follow, until `window` after the last record, or
//! until the held events reach `max_bytes`. So no event waits longer than `window`, and a
//! provider whose events are `window` or more apart sees no added latency at all. `window` 0
//! sends every event as its own record.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::config::StreamingConfig;

pub(super) struct Coalescer {
    window: Duration,
    max_bytes: usize,
    held: Vec<String>,
    bytes: usize,
    last_sent: Option<Instant>,
    token_sent: bool,
}

impl Coalescer {
    pub(super) fn new(config: &StreamingConfig) -> Coalescer {
        Coalescer {
            window: config.coalesce_ms,
            max_bytes: config.coalesce_bytes,
            held: Vec::new(),
            bytes: 0,
            last_sent: None,
            token_sent: false,
        }
    }

    /// Takes an event at `now`; returns the events to send as one record now, if any.
    fn push(&mut self, event: String, now: Instant) -> Option<Vec<String>> {
        self.bytes += event.len();
        self.held.push(event);
        let quiet = self
            .last_sent
            .is_none_or(|at| now.duration_since(at) >= self.window);
        (quiet || self.bytes >= self.max_bytes).then(|| self.take(now))
    }

    /// Takes a chunk's event at `now`. The stream's first chunk that carries a token does
    /// not wait: it goes, after any held events, as one record now. Any other is as
    /// [`Self::push`]; once the first token is out, no chunk is scanned again.
    pub(super) fn push_chunk(
        &mut self,
        chunk: &Value,
        event: String,
        now: Instant,
    ) -> Option<Vec<String>> {
        if self.token_sent || !carries_token(chunk) {
            return self.push(event, now);
        }
        self.token_sent = true;
        self.held.push(event);
        Some(self.take(now))
    }

    /// When the held events are due; `None` when none are held.
    pub(super) fn due(&self) -> Option<Instant> {
        if self.held.is_empty() {
            return None;
        }
        Some(
            self.last_sent
                .map_or_else(Instant::now, |at| at + self.window),
        )
    }

    /// The held events (possibly none), as sent at `now`.
    pub(super) fn take(&mut self, now: Instant) -> Vec<String> {
        self.last_sent = Some(now);
        self.bytes = 0;
        std::mem::take(&mut self.held)
    }
}

/// Whether a chat-completion chunk carries a token: text, a tool call, a refusal or
/// reasoning in any choice's delta (not only a role, a finish reason or usage).
fn carries_token(chunk: &Value) -> bool {
    let nonempty = |v: &Value| match v {
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    };
    chunk["choices"].as_array().is_some_and(|choices| {
        choices.iter().any(|c| {
            let delta = &c["delta"];
            [
                "content",
                "tool_calls",
                "refusal",
                "reasoning_content",
                "reasoning",
            ]
            .iter()
            .any(|field| nonempty(&delta[*field]))
        })
    })
}

/// Resolves at `due`; never without one.
pub(super) async fn until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coalescer(ms: u64, max_bytes: usize) -> Coalescer {
        Coalescer::new(&StreamingConfig {
            coalesce_ms: Duration::from_millis(ms),
            coalesce_bytes: max_bytes,
            ..StreamingConfig::default()
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_event_goes_at_once_and_a_burst_waits_one_window() {
        let t0 = Instant::now();
        let mut c = coalescer(5, 1 << 20);
        assert_eq!(c.push("a".into(), t0), Some(vec!["a".to_string()]));
        assert_eq!(c.due(), None);
        for (i, e) in ["b", "c", "d"].iter().enumerate() {
            assert_eq!(c.push((*e).into(), t0 + ms(i as u64)), None);
        }
        assert_eq!(c.due(), Some(t0 + ms(5)));
        assert_eq!(c.take(t0 + ms(5)), ["b", "c", "d"]);
        assert_eq!(c.due(), None);
        // The next event within the window after that record waits for the next window.
        assert_eq!(c.push("e".into(), t0 + ms(7)), None);
        assert_eq!(c.due(), Some(t0 + ms(10)));
    }

    #[test]
    fn events_a_window_apart_are_never_held() {
        let t0 = Instant::now();
        let mut c = coalescer(5, 1 << 20);
        for i in 0..10u64 {
            let sent = c.push(format!("e{i}"), t0 + ms(20 * i));
            assert_eq!(sent, Some(vec![format!("e{i}")]), "event {i}");
        }
    }

    #[test]
    fn held_events_go_when_they_reach_the_byte_bound() {
        let t0 = Instant::now();
        let mut c = coalescer(5, 10);
        assert!(c.push("first".into(), t0).is_some());
        assert_eq!(c.push("12345".into(), t0), None);
        assert_eq!(
            c.push("67890".into(), t0),
            Some(vec!["12345".to_string(), "67890".to_string()])
        );
    }

    #[test]
    fn the_first_token_goes_at_once_with_what_is_held_and_restarts_the_window() {
        let delta = |d: Value| serde_json::json!({"choices": [{"index": 0, "delta": d}]});
        let empty = delta(serde_json::json!({"content": ""}));
        let token = delta(serde_json::json!({"content": "hi"}));
        let t0 = Instant::now();
        let mut c = coalescer(5, 1 << 20);
        assert!(c.push_chunk(&empty, "role".into(), t0).is_some());
        assert_eq!(c.push_chunk(&empty, "empty".into(), t0 + ms(1)), None);
        assert_eq!(
            c.push_chunk(&token, "token".into(), t0 + ms(2)),
            Some(vec!["empty".to_string(), "token".to_string()])
        );
        assert_eq!(c.due(), None);
        // A later token waits for the window like any other event.
        assert_eq!(c.push_chunk(&token, "next".into(), t0 + ms(3)), None);
        assert_eq!(c.due(), Some(t0 + ms(7)));
    }

    #[test]
    fn a_token_is_text_a_tool_call_a_refusal_or_reasoning() {
        let delta = |d: Value| serde_json::json!({"choices": [{"index": 0, "delta": d}]});
        assert!(!carries_token(&delta(
            serde_json::json!({"role": "assistant", "content": ""})
        )));
        assert!(!carries_token(
            &serde_json::json!({"choices": [], "usage": {"total_tokens": 3}})
        ));
        assert!(!carries_token(
            &serde_json::json!({"choices": [{"delta": {}, "finish_reason": "stop"}]})
        ));
        assert!(carries_token(&delta(serde_json::json!({"content": "Hi"}))));
        assert!(carries_token(&delta(
            serde_json::json!({"tool_calls": [{"index": 0}]})
        )));
        assert!(carries_token(&delta(serde_json::json!({"refusal": "no"}))));
        assert!(carries_token(&delta(
            serde_json::json!({"reasoning_content": "hm"})
        )));
    }

    #[test]
    fn a_zero_window_sends_every_event_alone() {
        let t0 = Instant::now();
        let mut c = coalescer(0, 1 << 20);
        for i in 0..5 {
            assert_eq!(c.push(format!("{i}"), t0), Some(vec![format!("{i}")]));
        }
    }
}
