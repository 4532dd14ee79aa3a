//! A replayed or shadow copy of a recorded request (docs/replay.md): the same prompt, for
//! another model, tagged so that its result and usage go to the replay topics only.
//! Built here, a leaf, so the ingress's shadow path and `sluice-replay` make it one way.

use serde_json::Value;

use crate::records::{Priority, ReplayTag, Request};

/// Replay ids begin with this for shadow traffic; a replay of the tool cannot take it.
pub const SHADOW_PREFIX: &str = "shadow-";

/// The most characters of a replay id (or a shadow's name).
pub const MAX_ID_LEN: usize = 48;

/// Whether `id` is a usable replay id or shadow name: 1 to 48 of `[a-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// What a copy is not: a request that cannot be re-run for another model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReplayable {
    /// A replay or shadow copy itself: re-running it would replay the replay.
    Copy,
    /// An embeddings request: replays compare chat answers.
    Embeddings,
    /// Its body is not a JSON object (a record no ingress writes).
    Body,
}

/// The copy of `original` for `target_model`, in replay `replay_id`: batch priority, no
/// caller waiting (no reply, no stream), a fresh deadline, a request id derived from both
/// ids (a re-run of the same original in the same replay is the same request), the
/// original's audit policy, without its routing hints (they were for another model). A body
/// without a completion cap gets the record's own (`max_tokens`, which the ingress always
/// sets), so what the copy can cost is bounded as its reservation says.
pub fn copy(
    original: &Request,
    replay_id: &str,
    target_model: &str,
    now_ms: i64,
    deadline_ms: i64,
) -> Result<Request, NotReplayable> {
    if original.replay.is_some() {
        return Err(NotReplayable::Copy);
    }
    if crate::embeddings::is_embeddings(&original.attributes) {
        return Err(NotReplayable::Embeddings);
    }
    let mut body: Value = serde_json::from_str(&original.body).map_err(|_| NotReplayable::Body)?;
    let fields = body.as_object_mut().ok_or(NotReplayable::Body)?;
    fields.insert("model".into(), Value::String(target_model.into()));
    fields.remove("stream");
    fields.remove("stream_options");
    if !fields.contains_key("max_tokens") && !fields.contains_key("max_completion_tokens") {
        if let Some(cap) = original.max_tokens {
            fields.insert("max_tokens".into(), Value::from(cap));
        }
    }
    let mut attributes = original.attributes.clone();
    attributes.remove(crate::route_hints::ROUTE_ATTRIBUTE);
    Ok(Request {
        request_id: format!("{replay_id}.{}", original.request_id),
        team: original.team.clone(),
        key_id: original.key_id.clone(),
        priority: Priority::Batch,
        model: target_model.into(),
        created_at_ms: now_ms,
        deadline_ms,
        traceparent: None,
        reply: None,
        prompt_tokens: original.prompt_tokens,
        max_tokens: original.max_tokens,
        body: body.to_string(),
        stream: false,
        attributes,
        replay: Some(ReplayTag {
            replay_id: replay_id.into(),
            original_request_id: original.request_id.clone(),
        }),
    })
}

/// Whether a request is in a shadow's sample: `percent` of all request ids, the same ids on
/// every replica (FNV-1a of the id, in ten-thousandths).
pub fn sampled(request_id: &str, percent: f64) -> bool {
    let h = request_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    f64::from(h % 10_000) < percent * 100.0
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn original() -> Request {
        Request {
            request_id: "req-1".into(),
            team: "acme".into(),
            key_id: "k1".into(),
            priority: Priority::Interactive,
            model: "gpt-4o-mini".into(),
            created_at_ms: 1,
            deadline_ms: 2,
            traceparent: Some("00-x".into()),
            reply: Some(crate::ReplyTo {
                topic: "replies".into(),
                partition: 0,
            }),
            prompt_tokens: 12,
            max_tokens: Some(256),
            body: r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#.into(),
            stream: true,
            attributes: HashMap::from([
                ("sluice.audit".into(), "hash".into()),
                (crate::route_hints::ROUTE_ATTRIBUTE.into(), "{}".into()),
            ]),
            replay: None,
        }
    }

    #[test]
    fn a_copy_is_for_the_target_with_nobody_waiting() {
        let c = copy(&original(), "rp_1", "claude-3-5-haiku", 100, 200).unwrap();
        assert_eq!(c.request_id, "rp_1.req-1");
        assert_eq!(
            (c.model.as_str(), c.priority),
            ("claude-3-5-haiku", Priority::Batch)
        );
        assert_eq!((c.created_at_ms, c.deadline_ms), (100, 200));
        assert!(c.reply.is_none() && !c.stream && c.traceparent.is_none());
        let body: Value = serde_json::from_str(&c.body).unwrap();
        assert_eq!(body["model"], "claude-3-5-haiku");
        assert_eq!(body["max_tokens"], 256);
        assert!(body.get("stream").is_none() && body.get("stream_options").is_none());
        assert_eq!(body["messages"][0]["content"], "hi");
        assert_eq!(
            c.attributes.get("sluice.audit").map(String::as_str),
            Some("hash")
        );
        assert!(!c
            .attributes
            .contains_key(crate::route_hints::ROUTE_ATTRIBUTE));
        let tag = c.replay.unwrap();
        assert_eq!(
            (tag.replay_id.as_str(), tag.original_request_id.as_str()),
            ("rp_1", "req-1")
        );
    }

    #[test]
    fn a_caller_cap_is_kept_and_copies_embeddings_and_garbage_are_refused() {
        let mut o = original();
        o.body = r#"{"model":"m","max_completion_tokens":9,"messages":[]}"#.into();
        let body: Value = serde_json::from_str(&copy(&o, "r", "t", 0, 0).unwrap().body).unwrap();
        assert_eq!(
            (
                body["max_completion_tokens"].as_i64(),
                body.get("max_tokens")
            ),
            (Some(9), None)
        );

        let c = copy(&original(), "r", "t", 0, 0).unwrap();
        assert_eq!(copy(&c, "r2", "t", 0, 0), Err(NotReplayable::Copy));
        let mut e = original();
        e.attributes.insert(
            crate::embeddings::ENDPOINT_ATTRIBUTE.into(),
            crate::embeddings::EMBEDDINGS.into(),
        );
        assert_eq!(copy(&e, "r", "t", 0, 0), Err(NotReplayable::Embeddings));
        let mut g = original();
        g.body = "[1]".into();
        assert_eq!(copy(&g, "r", "t", 0, 0), Err(NotReplayable::Body));
    }

    #[test]
    fn ids_and_samples() {
        assert!(valid_id("rp_2026-12-07") && valid_id("a"));
        for bad in ["", "A", "a.b", "a b", &"x".repeat(49)] {
            assert!(!valid_id(bad), "{bad}");
        }
        let ids: Vec<String> = (0..10_000).map(|i| format!("req-{i}")).collect();
        let ten = ids.iter().filter(|id| sampled(id, 10.0)).count();
        assert!((800..1200).contains(&ten), "{ten} of 10000 at 10 %");
        assert!(ids.iter().all(|id| sampled(id, 100.0)));
        assert!(!ids.iter().any(|id| sampled(id, 0.0)));
        assert_eq!(sampled("req-7", 10.0), sampled("req-7", 10.0));
    }
}
