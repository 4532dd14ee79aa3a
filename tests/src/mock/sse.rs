//! Server-sent event bodies for the wire formats whose events are planned whole up front
//! (Anthropic, Gemini): the events go out one by one, with the configured pause before
//! each content event, and an injected fault cuts the stream or ends it with an error event.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};

use super::openai::stream::cut;
use super::Shared;

/// One planned event.
pub(crate) struct Planned {
    pub(crate) bytes: Bytes,
    /// A content event: the configured delay comes before it (except the first).
    pub(crate) content: bool,
}

/// Where an injected fault strikes.
pub(crate) enum Fault {
    /// Cut the connection after this many events.
    Break { after: u32 },
    /// After this many events, send this error event and end the stream.
    Error { after: u32, event: Bytes },
}

impl Fault {
    pub(crate) fn after(&self) -> u32 {
        match self {
            Fault::Break { after } | Fault::Error { after, .. } => *after,
        }
    }
}

/// `event: <name>\ndata: <json>\n\n` (Anthropic's framing); no name = `data:` only.
pub(crate) fn event(name: Option<&str>, data: &serde_json::Value, crlf: bool) -> Bytes {
    let end = if crlf { "\r\n\r\n" } else { "\n\n" };
    let text = match name {
        Some(name) => format!("event: {name}\ndata: {data}{end}"),
        None => format!("data: {data}{end}"),
    };
    Bytes::from(text)
}

/// The body: `events` in order, cut short by `fault`. When the body ends (sent, cut, or
/// dropped by a client that went away) the recorded call gets its `ended_at`.
pub(crate) fn body(
    events: Vec<Planned>,
    delay: Duration,
    fault: Option<Fault>,
    shared: Arc<Shared>,
    seq: u64,
) -> Body {
    struct State {
        events: std::vec::IntoIter<Planned>,
        sent: u32,
        seen_content: bool,
        delay: Duration,
        fault: Option<Fault>,
        done: bool,
        shared: Arc<Shared>,
        seq: u64,
    }
    impl State {
        /// The body ends as planned (read by `drop`, so not a client that went away).
        fn finish(&mut self) {
            self.done = true;
        }
    }
    impl Drop for State {
        fn drop(&mut self) {
            let done = self.done;
            self.shared.update(self.seq, |call| {
                call.ended_at = Some(SystemTime::now());
                call.client_gone = !done;
            });
        }
    }
    let state = State {
        events: events.into_iter(),
        sent: 0,
        seen_content: false,
        delay,
        fault,
        done: false,
        shared,
        seq,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.fault.as_ref().is_some_and(|f| st.sent >= f.after()) {
            st.finish();
            return match st.fault.take() {
                Some(Fault::Error { event, .. }) => Some((Ok::<Bytes, io::Error>(event), st)),
                _ => {
                    let mut cut = Box::pin(cut());
                    let item = futures::StreamExt::next(&mut cut).await?;
                    Some((item, st))
                }
            };
        }
        let Some(next) = st.events.next() else {
            st.finish();
            return None;
        };
        if next.content {
            if st.seen_content && !st.delay.is_zero() {
                tokio::time::sleep(st.delay).await;
            }
            st.seen_content = true;
        }
        st.sent += 1;
        Some((Ok(next.bytes), st))
    });
    Body::from_stream(stream)
}
