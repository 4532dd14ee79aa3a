//! The body of `POST /v1/messages/batches` (`{"requests": [...], "sluice": {...}}`), parsed
//! as it streams in, one request at a time: no request may be larger than the per-line
//! cap or nest deeper than `[batch] max_nesting_depth`, the batch may not have more than
//! `max_lines_per_batch` requests, and the whole body is never held in memory (nor one
//! `serde_json::Value` of it). Parsing is CPU work: it runs on a blocking thread, fed the
//! body's chunks through a bounded channel, and hands back blocks of requests (as JSON
//! text, ready to store as input lines) through another.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

use axum::body::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::batches::BatchOptions;
use super::BatchError;

/// What bounds one inline batch.
#[derive(Debug, Clone, Copy)]
pub struct InlineLimits {
    pub max_body_bytes: u64,
    pub max_request_bytes: usize,
    pub max_requests: u64,
    pub max_depth: usize,
    /// Requests per block handed back.
    pub block: usize,
}

/// What the body held besides its requests.
#[derive(Debug, Default)]
pub struct Parsed {
    pub requests: u64,
    pub bytes: u64,
    pub sluice: Option<BatchOptions>,
}

/// A `Read` over body chunks sent from the async side (blocking the parser's thread
/// while the next chunk is on its way).
pub struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> ChunkReader {
        ChunkReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Why reading stopped on a limit (the reader's io error only says "limit").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Request,
}

/// Counts the bytes the parser consumes and refuses to read past the current limit: the
/// end of the body's cap, or of the request being read.
struct Metered<R> {
    inner: R,
    state: Rc<Meter>,
}

#[derive(Default)]
struct Meter {
    read: Cell<u64>,
    /// Bytes the request being read may reach (`u64::MAX` between requests).
    request_end: Cell<u64>,
    refused: Cell<Option<Refused>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.state.read.get();
        if read >= self.state.request_end.get() {
            self.state.refused.set(Some(Refused::Request));
            return Err(io::Error::other("request too large"));
        }
        let room = (self.state.request_end.get() - read).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.state.read.set(read + n as u64);
        Ok(n)
    }
}

/// Parses the body read from `reader`, sending blocks of requests to `blocks`.
pub fn parse(
    reader: impl Read,
    limits: InlineLimits,
    blocks: mpsc::Sender<Vec<String>>,
) -> Result<Parsed, BatchError> {
    let meter = Rc::new(Meter {
        request_end: Cell::new(u64::MAX),
        ..Meter::default()
    });
    let body_limit = limits.max_body_bytes;
    // The body cap is one more limit on the same counter.
    let capped = BufReader::new(reader.take(body_limit.saturating_add(1)));
    let metered = Metered {
        inner: capped,
        state: Rc::clone(&meter),
    };
    let mut de = serde_json::Deserializer::from_reader(metered);
    let problem: Rc<Cell<Option<BatchError>>> = Rc::new(Cell::new(None));
    let seed = Body {
        limits,
        meter: Rc::clone(&meter),
        blocks,
        problem: Rc::clone(&problem),
    };
    let outcome = seed.deserialize(&mut de).and_then(|parsed| {
        de.end()?;
        Ok(parsed)
    });
    let too_big = meter.read.get() > body_limit;
    match outcome {
        Ok(parsed) if !too_big => Ok(parsed),
        Ok(_) => Err(body_too_large(body_limit)),
        Err(e) => {
            if let Some(problem) = problem.take() {
                return Err(problem);
            }
            if too_big {
                return Err(body_too_large(body_limit));
            }
            Err(BatchError::InvalidJson(e))
        }
    }
}

fn body_too_large(limit: u64) -> BatchError {
    BatchError::Api(crate::error::ApiError::BodyTooLarge {
        limit: limit as usize,
    })
}

/// The top-level object.
struct Body {
    limits: InlineLimits,
    meter: Rc<Meter>,
    blocks: mpsc::Sender<Vec<String>>,
    problem: Rc<Cell<Option<BatchError>>>,
}

impl<'de> DeserializeSeed<'de> for Body {
    type Value = Parsed;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Body {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with `requests`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut parsed = Parsed::default();
        let mut seen_requests = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "requests" if !seen_requests => {
                    seen_requests = true;
                    let (requests, bytes) = map.next_value_seed(Requests { body: &self })?;
                    parsed.requests = requests;
                    parsed.bytes = bytes;
                }
                "sluice" => parsed.sluice = map.next_value()?,
                "requests" => return Err(de::Error::duplicate_field("requests")),
                other => return Err(de::Error::unknown_field(other, &["requests", "sluice"])),
            }
        }
        if !seen_requests {
            return Err(de::Error::missing_field("requests"));
        }
        Ok(parsed)
    }
}

/// The `requests` array: (requests, bytes of their JSON lines).
struct Requests<'a> {
    body: &'a Body,
}

impl<'de> DeserializeSeed<'de> for Requests<'_> {
    type Value = (u64, u64);

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(u64, u64), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Requests<'_> {
    type Value = (u64, u64);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of requests")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(u64, u64), A::Error> {
        let limits = &self.body.limits;
        let meter = &self.body.meter;
        let fail = |e: BatchError| {
            self.body.problem.set(Some(e));
            de::Error::custom("refused")
        };
        let mut block = Vec::with_capacity(limits.block);
        let (mut count, mut bytes) = (0u64, 0u64);
        loop {
            // The opening byte of the next request may already be read: one byte of slack.
            meter
                .request_end
                .set(meter.read.get() + limits.max_request_bytes as u64 + 1);
            let next = seq.next_element::<Box<RawValue>>();
            meter.request_end.set(u64::MAX);
            let raw = match next {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(_) if meter.refused.get() == Some(Refused::Request) => {
                    return Err(fail(BatchError::RequestTooLarge {
                        index: count,
                        limit: limits.max_request_bytes,
                    }))
                }
                Err(e) => return Err(e),
            };
            if count >= limits.max_requests {
                return Err(fail(BatchError::TooManyLines {
                    param: "requests",
                    limit: limits.max_requests,
                }));
            }
            let text = raw.get();
            if text.len() > limits.max_request_bytes {
                return Err(fail(BatchError::RequestTooLarge {
                    index: count,
                    limit: limits.max_request_bytes,
                }));
            }
            let mut depth = serde_json::Deserializer::from_str(text);
            let within = Depth {
                left: limits.max_depth,
            }
            .deserialize(&mut depth);
            if within.is_err() {
                return Err(fail(BatchError::TooDeep {
                    index: count,
                    limit: limits.max_depth,
                }));
            }
            bytes += text.len() as u64 + 1;
            count += 1;
            block.push(text.to_string());
            if block.len() >= limits.block {
                let full = std::mem::replace(&mut block, Vec::with_capacity(limits.block));
                if self.body.blocks.blocking_send(full).is_err() {
                    return Err(de::Error::custom("the upload was abandoned"));
                }
            }
        }
        if count == 0 {
            return Err(fail(BatchError::InvalidParam {
                param: "requests",
                problem: format!("expected 1 to {} requests", limits.max_requests),
            }));
        }
        if !block.is_empty() && self.body.blocks.blocking_send(block).is_err() {
            return Err(de::Error::custom("the upload was abandoned"));
        }
        Ok((count, bytes))
    }
}

/// Walks a value, refusing nesting deeper than `left` levels (serde_json's own recursion
/// limit, 128, also holds).
struct Depth {
    left: usize,
}

impl<'de> DeserializeSeed<'de> for Depth {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Depth {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let left = self.inner()?;
        while seq.next_element_seed(Depth { left })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let left = self.inner()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Depth { left })?;
        }
        Ok(())
    }
}

impl Depth {
    fn inner<E: de::Error>(&self) -> Result<usize, E> {
        self.left
            .checked_sub(1)
            .ok_or_else(|| E::custom("nesting too deep"))
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn limits() -> InlineLimits {
        InlineLimits {
            max_body_bytes: 1 << 20,
            max_request_bytes: 100,
            max_requests: 3,
            max_depth: 4,
            block: 2,
        }
    }

    fn run(body: &str) -> (Result<Parsed, BatchError>, Vec<Vec<String>>) {
        run_with(body, limits())
    }

    fn run_with(
        body: &str,
        limits: InlineLimits,
    ) -> (Result<Parsed, BatchError>, Vec<Vec<String>>) {
        let (tx, mut rx) = mpsc::channel(1 << 20);
        let result = parse(body.as_bytes(), limits, tx);
        let mut blocks = Vec::new();
        while let Ok(b) = rx.try_recv() {
            blocks.push(b);
        }
        (result, blocks)
    }

    #[test]
    fn requests_arrive_in_blocks_as_their_json_text() {
        let (parsed, blocks) =
            run(r#"{"sluice": {}, "requests": [{"custom_id": "a"}, {"b": [1]}, 3]}"#);
        let parsed = parsed.unwrap();
        assert_eq!(parsed.requests, 3);
        assert_eq!(
            blocks,
            vec![
                vec![r#"{"custom_id": "a"}"#.to_string(), r#"{"b": [1]}"#.into()],
                vec!["3".to_string()]
            ]
        );
    }

    #[test]
    fn limits_are_refused_with_their_own_errors() {
        let deep = format!("{{\"requests\": [{}1{}]}}", "[".repeat(5), "]".repeat(5));
        assert!(matches!(
            run(&deep).0,
            Err(BatchError::TooDeep { index: 0, .. })
        ));
        let endless = format!("{{\"requests\": [1, {}", "[".repeat(10_000));
        assert!(matches!(
            run(&endless).0,
            Err(BatchError::RequestTooLarge { index: 1, .. })
        ));
        let long = format!("{{\"requests\": [\"{}\"]}}", "x".repeat(200));
        assert!(matches!(
            run(&long).0,
            Err(BatchError::RequestTooLarge { .. })
        ));
        assert!(matches!(
            run(r#"{"requests": [1, 2, 3, 4]}"#).0,
            Err(BatchError::TooManyLines { limit: 3, .. })
        ));
        assert!(matches!(
            run(r#"{"requests": []}"#).0,
            Err(BatchError::InvalidParam { .. })
        ));
        assert!(matches!(
            run(r#"{"requests": [1], "x": 1}"#).0,
            Err(BatchError::InvalidJson(_))
        ));
        assert!(matches!(
            run(&"[".repeat(100_000)).0,
            Err(BatchError::InvalidJson(_))
        ));
        let huge = format!("{{\"requests\": [{}]}}", vec!["1"; 600_000].join(","));
        let many = InlineLimits {
            max_requests: 1_000_000,
            block: 1_000_000,
            ..limits()
        };
        assert!(matches!(
            run_with(&huge, many).0,
            Err(BatchError::Api(crate::error::ApiError::BodyTooLarge { .. }))
        ));
    }
}
