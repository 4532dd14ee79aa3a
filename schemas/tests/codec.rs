#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions unwrap too"
)]

use std::collections::HashMap;

use apache_avro::schema::RecordSchema;
use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum, to_value, Schema};
use sluice_schemas::codec::{fingerprint, Record};
use sluice_schemas::{
    decode, encode, Audit, AuditAction, CodecError, Priority, ReplyTo, Request, Result, Status,
    Usage,
};

fn request() -> Request {
    Request {
        request_id: "req_1".into(),
        team: "acme".into(),
        key_id: "key_a".into(),
        priority: Priority::Interactive,
        model: "gpt-4o-mini".into(),
        created_at_ms: 1_700_000_000_000,
        deadline_ms: 1_700_000_060_000,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        reply: Some(ReplyTo {
            topic: "sluice.replies".into(),
            partition: 3,
        }),
        prompt_tokens: 12,
        max_tokens: None,
        body: r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#.into(),
        stream: true,
        attributes: HashMap::from([("app".to_string(), "crm".to_string())]),
        replay: None,
    }
}

fn result() -> Result {
    Result {
        request_id: "req_1".into(),
        team: "acme".into(),
        key_id: "key_a".into(),
        priority: Priority::Batch,
        model: "m".into(),
        traceparent: None,
        status: Status::Failed,
        http_status: 502,
        body: "{}".into(),
        error_kind: Some("upstream".into()),
        provider: "openai".into(),
        deployment: "d1".into(),
        attempts: 3,
        prompt_tokens: 1,
        completion_tokens: 0,
        created_at_ms: 1,
        started_at_ms: 2,
        finished_at_ms: 3,
        worker: "w1".into(),
        fallbacks: 2,
        routing_reason: Some("latency: d1 (12.0 ms, 0 in flight), the only candidate".into()),
        location: Some("eu-west".into()),
        replay: None,
        audit: None,
        calls: Vec::new(),
    }
}

#[test]
fn every_record_round_trips() {
    let r = request();
    assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
    let res = result();
    assert_eq!(decode::<Result>(&encode(&res).unwrap()).unwrap(), res);
    let u = Usage {
        request_id: "req_1".into(),
        team: "acme".into(),
        key_id: "k".into(),
        priority: Priority::Standard,
        model: "m".into(),
        provider: "openai".into(),
        deployment: "d".into(),
        status: Status::Expired,
        prompt_tokens: 10,
        completion_tokens: 20,
        cached_tokens: 5,
        cost_nanos: 123_456_789_012,
        created_at_ms: 8,
        estimated: true,
        latency_ms: 40,
        occurred_at_ms: 9,
        cache_hit: true,
        saved_nanos: 77,
        replay: None,
    };
    assert_eq!(decode::<Usage>(&encode(&u).unwrap()).unwrap(), u);
    let a = Audit {
        event_id: "e".into(),
        request_id: "r".into(),
        team: "t".into(),
        key_id: "k".into(),
        action: AuditAction::Rejected,
        model: "m".into(),
        priority: Priority::Standard,
        http_status: 429,
        reason: Some("budget".into()),
        prompt_tokens: 0,
        occurred_at_ms: 1,
        reserved_nanos: 12_000,
        deadline_ms: 99,
        prompt_sha256: Some("ab".into()),
        prompt_text: None,
        completion_sha256: None,
        completion_text: Some("hi".into()),
        policy: Some("pii:redact:email".into()),
    };
    assert_eq!(decode::<Audit>(&encode(&a).unwrap()).unwrap(), a);
    let c = sluice_schemas::StreamChunk {
        request_id: "r".into(),
        attempt: "w1".into(),
        seq: 7,
        data: "{}".into(),
        more: vec!["{\"a\":1}".into(), "{\"b\":2}".into()],
    };
    assert_eq!(
        decode::<sluice_schemas::StreamChunk>(&encode(&c).unwrap()).unwrap(),
        c
    );
    let x = sluice_schemas::Cancel {
        request_id: "r".into(),
        team: "t".into(),
        reason: "client_disconnected".into(),
        occurred_at_ms: 5,
    };
    assert_eq!(
        decode::<sluice_schemas::Cancel>(&encode(&x).unwrap()).unwrap(),
        x
    );
    let b = sluice_schemas::BudgetAlert {
        alert_id: "team:demo:1764547200000:80".into(),
        scope: "team".into(),
        subject: "demo".into(),
        period: "month".into(),
        period_start_ms: 1_764_547_200_000,
        threshold_pct: 80,
        limit_nanos: 10_000_000_000,
        spent_nanos: 8_000_000_001,
        occurred_at_ms: 1_764_600_000_000,
        instance: "ingress-0".into(),
    };
    assert_eq!(
        decode::<sluice_schemas::BudgetAlert>(&encode(&b).unwrap()).unwrap(),
        b
    );
    let a = sluice_schemas::Attempt {
        attempt_id: "018f0c7e".into(),
        request_id: "req_1".into(),
        team: "demo".into(),
        key_id: "key_demo".into(),
        model: "smart".into(),
        provider: "openai".into(),
        deployment: "primary".into(),
        served_model: "gpt-4o-mini".into(),
        attempt: 2,
        worker: "worker-0".into(),
        outcome: "timeout".into(),
        billed: "unknown".into(),
        http_status: 0,
        prompt_tokens: 12,
        completion_tokens: 0,
        cached_tokens: 0,
        cost_nanos: 1_800,
        max_cost_nanos: 61_800,
        estimated: true,
        created_at_ms: 1_764_600_000_000,
        started_at_ms: 1_764_600_000_100,
        finished_at_ms: 1_764_600_020_100,
    };
    assert_eq!(
        decode::<sluice_schemas::Attempt>(&encode(&a).unwrap()).unwrap(),
        a
    );
}

#[test]
fn garbage_is_rejected_with_an_error() {
    assert!(matches!(
        decode::<Request>(b""),
        Err(CodecError::TooShort { len: 0 })
    ));
    assert!(matches!(
        decode::<Request>(b"{\"json\": \"not avro\"}"),
        Err(CodecError::BadMarker)
    ));
    let good = encode(&request()).unwrap();
    // Truncated anywhere in the body. Not at `len - 1`: that drops only the trailing
    // `replay` union's null byte, and apache-avro reads a union at the end of its input as
    // null, the very value that byte held.
    for cut in [11, good.len() / 2, good.len() - 2] {
        assert!(decode::<Request>(&good[..cut]).is_err(), "cut at {cut}");
    }
    // Extra bytes after a known schema's last field.
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        decode::<Request>(&longer),
        Err(CodecError::TrailingBytes { .. })
    ));
    // A record of another type is not silently read as a request.
    let usage_bytes = encode(&result()).unwrap();
    assert!(decode::<Usage>(&usage_bytes).is_err());
    // Pseudo-random bytes behind a valid marker.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..2_000 {
        let len = (state % 200) as usize;
        let mut bytes = vec![0xC3, 0x01];
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push(state as u8);
        }
        // Must return (Ok or Err), never panic.
        let _ = decode::<Request>(&bytes);
    }
}

fn record_fields(schema: &Schema) -> Vec<(String, bool)> {
    match schema {
        Schema::Record(RecordSchema { fields, .. }) => fields
            .iter()
            .map(|f| (f.name.clone(), f.default.is_some()))
            .collect(),
        _ => panic!("not a record"),
    }
}

/// The codec's forward compatibility rests on this rule: each version only appends fields,
/// each with a default.
#[test]
fn versions_only_append_fields_with_defaults() {
    fn check<T: Record>() {
        let versions: Vec<&Schema> = T::schemas().versions().collect();
        for pair in versions.windows(2) {
            let (old, new) = (record_fields(pair[0]), record_fields(pair[1]));
            assert!(
                new.len() > old.len(),
                "{}: a version must add fields",
                T::NAME
            );
            assert_eq!(
                &new[..old.len()],
                &old[..],
                "{}: old fields changed",
                T::NAME
            );
            for (name, has_default) in &new[old.len()..] {
                assert!(has_default, "{}: new field {name} needs a default", T::NAME);
            }
        }
    }
    check::<Request>();
    check::<Result>();
    check::<Usage>();
    check::<Audit>();
    check::<sluice_schemas::StreamChunk>();
    check::<sluice_schemas::Cancel>();
    check::<sluice_schemas::BudgetAlert>();
    check::<sluice_schemas::ApiKey>();
    check::<sluice_schemas::Attempt>();
}

fn frame(schema: &Schema, datum: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&fingerprint(schema).to_le_bytes());
    out.extend(datum);
    out
}

fn v2_fields_as_value(schema: &Schema, extra: Vec<(String, Value)>) -> Value {
    let Value::Record(mut fields) = to_value(request()).unwrap() else {
        panic!("record expected")
    };
    fields.extend(extra);
    let keep: Vec<String> = record_fields(schema).into_iter().map(|f| f.0).collect();
    fields.retain(|(name, _)| keep.contains(name));
    Value::Record(fields).resolve(schema).unwrap()
}

/// New reader (v2), old writer (v1): fields added in v2 take their defaults.
#[test]
fn current_reader_reads_previous_version() {
    let v1 = Schema::parse_str(include_str!("../avro/request.v1.avsc")).unwrap();
    let datum = to_avro_datum(&v1, v2_fields_as_value(&v1, vec![])).unwrap();
    let decoded = decode::<Request>(&frame(&v1, datum)).unwrap();
    let mut expected = request();
    expected.stream = false;
    expected.attributes.clear();
    assert_eq!(decoded, expected);
}

/// Old reader (v3), new writer (v4, unknown to this build): v4's extra field is skipped.
#[test]
fn current_reader_reads_next_version() {
    let v4 = Schema::parse_str(include_str!("../testdata/request.v4.avsc")).unwrap();
    let value = v2_fields_as_value(&v4, vec![("region".into(), Value::String("us".into()))]);
    let datum = to_avro_datum(&v4, value).unwrap();
    assert_eq!(decode::<Request>(&frame(&v4, datum)).unwrap(), request());
}

/// A v1 reader (an older deployment) reads what this build writes.
#[test]
fn previous_reader_reads_current_version() {
    let v1 = Schema::parse_str(include_str!("../avro/request.v1.avsc")).unwrap();
    let bytes = encode(&request()).unwrap();
    let mut body = &bytes[10..];
    let value = from_avro_datum(&v1, &mut body, None).unwrap();
    let Value::Record(fields) = value else {
        panic!("record expected")
    };
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(get("request_id"), Some(Value::String("req_1".into())));
    assert_eq!(
        get("body"),
        Some(Value::String(request().body)),
        "last v1 field read intact"
    );
}

/// A v1 chunk (one event, written by an older worker) reads as a record of that event alone.
#[test]
fn a_v1_stream_chunk_is_one_event() {
    let v1 = Schema::parse_str(include_str!("../avro/stream_chunk.v1.avsc")).unwrap();
    let value = Value::Record(vec![
        ("request_id".into(), Value::String("r".into())),
        ("attempt".into(), Value::String("w1".into())),
        ("seq".into(), Value::Int(3)),
        ("data".into(), Value::String("{}".into())),
    ]);
    let datum = to_avro_datum(&v1, value).unwrap();
    let chunk = decode::<sluice_schemas::StreamChunk>(&frame(&v1, datum)).unwrap();
    assert!(chunk.more.is_empty());
    let events: Vec<_> = chunk.events().map(|e| (e.seq, e.data)).collect();
    assert_eq!(events, [(3, "{}".to_string())]);

    let coalesced = sluice_schemas::StreamChunk {
        request_id: "r".into(),
        attempt: "w1".into(),
        seq: 10,
        data: "a".into(),
        more: vec!["b".into(), "c".into()],
    };
    let events: Vec<_> = coalesced
        .events()
        .map(|e| (e.seq, e.data, e.more.len()))
        .collect();
    assert_eq!(
        events,
        [
            (10, "a".into(), 0),
            (11, "b".into(), 0),
            (12, "c".into(), 0)
        ]
    );
}

/// Results written by v1 workers (no `fallbacks`, no routing reason or location) read as 0
/// fallbacks and none; v1 readers read v3.
#[test]
fn result_v1_and_v3_read_each_other() {
    let v1 = Schema::parse_str(include_str!("../avro/result.v1.avsc")).unwrap();
    let Value::Record(mut fields) = to_value(result()).unwrap() else {
        panic!("record expected")
    };
    fields
        .retain(|(name, _)| !["fallbacks", "routing_reason", "location"].contains(&name.as_str()));
    let datum = to_avro_datum(&v1, Value::Record(fields).resolve(&v1).unwrap()).unwrap();
    let decoded = decode::<Result>(&frame(&v1, datum)).unwrap();
    assert_eq!(
        decoded,
        Result {
            fallbacks: 0,
            routing_reason: None,
            location: None,
            ..result()
        }
    );

    let bytes = encode(&result()).unwrap();
    let mut body = &bytes[10..];
    let Value::Record(old) = from_avro_datum(&v1, &mut body, None).unwrap() else {
        panic!("record expected")
    };
    assert!(old
        .iter()
        .any(|(k, v)| k == "worker" && *v == Value::String("w1".into())));
}

/// A v5 result carries its completed audit event; v4 readers skip it, and a v4 result reads
/// as one without (its audit event is on the audit topic).
#[test]
fn result_v5_carries_its_audit_and_v4_reads_it() {
    let audited = Result {
        audit: Some(sluice_schemas::ResultAudit {
            completion_sha256: Some("ab".repeat(32)),
            keep_text: true,
            policy: Some("location:eu-west".into()),
        }),
        ..result()
    };
    let bytes = encode(&audited).unwrap();
    assert_eq!(decode::<Result>(&bytes).unwrap(), audited);
    // v6: the provider calls ride on the result too.
    let with_calls = Result {
        calls: vec![sluice_schemas::Attempt {
            attempt_id: "a1".into(),
            request_id: "r".into(),
            outcome: "completed".into(),
            cost_nanos: 42,
            finished_at_ms: 9,
            ..Default::default()
        }],
        ..audited.clone()
    };
    assert_eq!(
        decode::<Result>(&encode(&with_calls).unwrap()).unwrap(),
        with_calls
    );
    let v4 = Schema::parse_str(include_str!("../avro/result.v4.avsc")).unwrap();
    let mut body = &bytes[10..];
    let Value::Record(old) = from_avro_datum(&v4, &mut body, None).unwrap() else {
        panic!("record expected")
    };
    assert!(old.iter().all(|(k, _)| k != "audit"));
    assert!(old
        .iter()
        .any(|(k, v)| k == "worker" && *v == Value::String("w1".into())));

    let Value::Record(mut fields) = to_value(result()).unwrap() else {
        panic!("record expected")
    };
    fields.retain(|(name, _)| name != "audit");
    let datum = to_avro_datum(&v4, Value::Record(fields).resolve(&v4).unwrap()).unwrap();
    let decoded = decode::<Result>(&frame(&v4, datum)).unwrap();
    assert_eq!(decoded, result());
    assert_eq!(decoded.completed_audit(), None);
}

#[test]
fn api_key_round_trips() {
    let k = sluice_schemas::ApiKey {
        key_id: "key_1".into(),
        team: "t".into(),
        label: Some("app".into()),
        sha256: "ab".repeat(32),
        hint: "sk-sluice-…a1b2".into(),
        allowed_models: vec!["m1".into(), "m2".into()],
        requests_per_minute: Some(60),
        expires_at_ms: None,
        revoked: true,
        created_at_ms: 1,
        updated_at_ms: 2,
    };
    assert_eq!(
        decode::<sluice_schemas::ApiKey>(&encode(&k).unwrap()).unwrap(),
        k
    );
}
