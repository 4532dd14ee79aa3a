//! Property tests (proptest) of the Avro codec: arbitrary bytes never panic the decoder of
//! any record type (bare, or behind a valid header of every known schema version, which
//! reaches the Avro datum decoder), and every record round-trips.
//!
//! `PROPTEST_CASES=N` sets the number of cases per property (default 1,000); what ran is
//! recorded in docs/security.md.

use std::collections::HashMap;

use proptest::prelude::*;
use sluice_schemas::codec::{fingerprint, Record};
use sluice_schemas::{
    decode, encode, Audit, AuditAction, Cancel, Priority, ReplyTo, Request, Result, ResultAudit,
    Status, StreamChunk, Usage,
};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Every version's header (marker + fingerprint) for a record type.
fn headers<T: Record>() -> Vec<Vec<u8>> {
    T::schemas()
        .versions()
        .map(|s| {
            let mut h = vec![0xC3, 0x01];
            h.extend_from_slice(&fingerprint(s).to_le_bytes());
            h
        })
        .collect()
}

/// Decoding must return, Ok or Err, for the bytes as given and behind each header.
fn decode_everything(bytes: &[u8]) {
    fn one<T: Record>(bytes: &[u8]) {
        let _ = decode::<T>(bytes);
        for mut h in headers::<T>() {
            h.extend_from_slice(bytes);
            let _ = decode::<T>(&h);
        }
    }
    one::<Request>(bytes);
    one::<Result>(bytes);
    one::<Usage>(bytes);
    one::<Audit>(bytes);
    one::<StreamChunk>(bytes);
    one::<Cancel>(bytes);
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::Interactive),
        Just(Priority::Standard),
        Just(Priority::Batch)
    ]
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Completed),
        Just(Status::Failed),
        Just(Status::Expired)
    ]
}

fn action() -> impl Strategy<Value = AuditAction> {
    prop_oneof![
        Just(AuditAction::Accepted),
        Just(AuditAction::Rejected),
        Just(AuditAction::Completed),
        Just(AuditAction::Failed),
        Just(AuditAction::Expired),
    ]
}

fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

prop_compose! {
    fn request()(
        ids in (text(), text(), text(), text()),
        priority in priority(),
        times in (any::<i64>(), any::<i64>()),
        traceparent in proptest::option::of(text()),
        reply in proptest::option::of((text(), any::<i32>())),
        tokens in (any::<i32>(), proptest::option::of(any::<i32>())),
        body in text(),
        stream in any::<bool>(),
        attributes in proptest::collection::hash_map(text(), text(), 0..4),
    ) -> Request {
        Request {
            request_id: ids.0, team: ids.1, key_id: ids.2, priority, model: ids.3,
            created_at_ms: times.0, deadline_ms: times.1, traceparent,
            reply: reply.map(|(topic, partition)| ReplyTo { topic, partition }),
            prompt_tokens: tokens.0, max_tokens: tokens.1, body, stream, attributes,
            replay: None,
        }
    }
}

prop_compose! {
    fn result()(
        ids in (text(), text(), text(), text()),
        priority in priority(),
        status in status(),
        traceparent in proptest::option::of(text()),
        body in text(),
        error_kind in proptest::option::of(text()),
        names in (text(), text(), text()),
        counts in (any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>()),
        times in (any::<i64>(), any::<i64>(), any::<i64>()),
        placed in (proptest::option::of(text()), proptest::option::of(text())),
        audit in proptest::option::of((proptest::option::of(text()), any::<bool>(), proptest::option::of(text()))),
    ) -> Result {
        Result {
            request_id: ids.0, team: ids.1, key_id: ids.2, priority, model: ids.3, traceparent,
            status, http_status: counts.0, body, error_kind, provider: names.0,
            deployment: names.1, attempts: counts.1, prompt_tokens: counts.2,
            completion_tokens: counts.3, created_at_ms: times.0, started_at_ms: times.1,
            finished_at_ms: times.2, worker: names.2, fallbacks: counts.4,
            routing_reason: placed.0, location: placed.1,
            replay: None,
            audit: audit.map(|(completion_sha256, keep_text, policy)| ResultAudit {
                completion_sha256, keep_text, policy,
            }),
            calls: Vec::new(),
        }
    }
}

prop_compose! {
    fn usage()(
        ids in (text(), text(), text(), text()),
        priority in priority(),
        status in status(),
        names in (text(), text()),
        counts in (any::<i32>(), any::<i32>(), any::<i32>()),
        numbers in (any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>()),
        estimated in any::<bool>(),
    ) -> Usage {
        Usage {
            request_id: ids.0, team: ids.1, key_id: ids.2, priority, model: ids.3,
            provider: names.0, deployment: names.1, status, prompt_tokens: counts.0,
            completion_tokens: counts.1, cached_tokens: counts.2, cost_nanos: numbers.0,
            created_at_ms: numbers.1, latency_ms: numbers.2, occurred_at_ms: numbers.3,
            estimated,
            cache_hit: false,
            saved_nanos: 0,
            replay: None,
        }
    }
}

prop_compose! {
    fn audit()(
        ids in (text(), text(), text(), text(), text()),
        action in action(),
        priority in priority(),
        http_status in any::<i32>(),
        reason in proptest::option::of(text()),
        prompt_tokens in any::<i32>(),
        occurred_at_ms in any::<i64>(),
    ) -> Audit {
        Audit {
            event_id: ids.0, request_id: ids.1, team: ids.2, key_id: ids.3, action,
            model: ids.4, priority, http_status, reason, prompt_tokens, occurred_at_ms,
            reserved_nanos: i64::from(prompt_tokens), deadline_ms: occurred_at_ms,
            prompt_sha256: None, prompt_text: None, completion_sha256: None,
            completion_text: None, policy: None,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    /// Valid encodings with bytes flipped, cut or appended: errors, never panics.
    #[test]
    fn mutated_records_never_panic(
        r in request(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = encode(&r).unwrap();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= b;
        }
        let _ = decode::<Request>(&bytes);
        let n = cut.index(bytes.len() + 1);
        let _ = decode::<Request>(&bytes[..n]);
        bytes.extend(extra);
        let _ = decode::<Request>(&bytes);
        decode_everything(&bytes[2.min(bytes.len())..]);
    }

    #[test]
    fn requests_round_trip(r in request()) {
        prop_assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn results_round_trip(r in result()) {
        prop_assert_eq!(decode::<Result>(&encode(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn usage_round_trips(r in usage()) {
        prop_assert_eq!(decode::<Usage>(&encode(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn audit_round_trips(r in audit()) {
        prop_assert_eq!(decode::<Audit>(&encode(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn stream_chunks_and_cancels_round_trip(
        s in (text(), text(), any::<i32>(), text()),
        c in (text(), text(), text(), any::<i64>()),
    ) {
        let chunk = StreamChunk { request_id: s.0, attempt: s.1, seq: s.2, data: s.3, more: Vec::new() };
        prop_assert_eq!(decode::<StreamChunk>(&encode(&chunk).unwrap()).unwrap(), chunk);
        let cancel = Cancel { request_id: c.0, team: c.1, reason: c.2, occurred_at_ms: c.3 };
        prop_assert_eq!(decode::<Cancel>(&encode(&cancel).unwrap()).unwrap(), cancel);
    }
}

#[test]
fn huge_length_prefixes_are_refused_quickly() {
    // A string length of ~2^62 right after a valid Request header: an error, not an
    // allocation attempt or a hang.
    let mut bytes = headers::<Request>().pop().unwrap();
    bytes.extend_from_slice(&[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    let started = std::time::Instant::now();
    assert!(decode::<Request>(&bytes).is_err());
    let map_count = {
        // An attributes map claiming 2^40 entries at the end of an otherwise valid record.
        let r = Request {
            request_id: "r".into(),
            team: "t".into(),
            key_id: "k".into(),
            priority: Priority::Standard,
            model: "m".into(),
            created_at_ms: 0,
            deadline_ms: 0,
            traceparent: None,
            reply: None,
            prompt_tokens: 0,
            max_tokens: None,
            body: String::new(),
            stream: false,
            attributes: HashMap::new(),
            replay: None,
        };
        let mut b = encode(&r).unwrap();
        b.pop(); // the empty map's 0 block count
        b.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        b
    };
    assert!(decode::<Request>(&map_count).is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
