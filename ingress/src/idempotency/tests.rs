//! The store against a real Redis (`SLUICE_REDIS_URL`, from `scripts/services.sh env`).

use axum::http::{HeaderMap, HeaderValue};

use super::*;

fn redis_url() -> String {
    std::env::var("SLUICE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".into())
}

fn store() -> Store {
    Store::new(&IdempotencyConfig {
        redis_url: Some(redis_url()),
        ..IdempotencyConfig::default()
    })
}

fn headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER, HeaderValue::from_str(key).unwrap());
    h
}

fn scope(team: &str, key: &str, body: &str) -> Scope {
    Scope::of(
        &headers(key),
        team,
        &[b"POST /v1/chat/completions", body.as_bytes()],
    )
    .unwrap()
    .unwrap()
}

fn fresh_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[test]
fn keys_are_bounded_printable_tokens() {
    let none = Scope::of(&HeaderMap::new(), "t", &[b"x"]).unwrap();
    assert!(none.is_none(), "no header, no scope");
    for bad in [
        String::new(),
        "a".repeat(256),
        "has space".into(),
        "tab\tkey".into(),
    ] {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(&bad).unwrap());
        let refused = Scope::of(&h, "t", &[b"x"]);
        assert!(
            matches!(refused, Err(ApiError::IdempotencyKeyInvalid(_))),
            "{bad:?}: {refused:?}"
        );
    }
    let mut h = HeaderMap::new();
    h.insert(HEADER, HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
    assert!(Scope::of(&h, "t", &[b"x"]).is_err(), "non-ASCII");
    assert!(Scope::of(&headers(&"k".repeat(255)), "t", &[b"x"]).is_ok());
}

#[test]
fn the_fingerprint_covers_every_part_and_their_borders() {
    let of = |team: &str, parts: &[&[u8]]| Scope::of(&headers("k"), team, parts).unwrap().unwrap();
    let a = of("t", &[b"ab", b"c"]);
    let b = of("t", &[b"a", b"bc"]);
    let c = of("t", &[b"ab", b"c"]);
    assert_ne!(a.fingerprint, b.fingerprint);
    assert_eq!(a.fingerprint, c.fingerprint);
    assert_eq!(a.redis_key, b.redis_key, "one key, one claim");
    let other_team = of("u", &[b"ab", b"c"]);
    assert_ne!(a.redis_key, other_team.redis_key, "scoped per team");
    assert!(!a.redis_key.ends_with(":k"), "the caller's key is hashed");
}

#[tokio::test]
async fn the_first_claim_wins_and_a_retry_finds_its_request() {
    let store = store();
    let key = fresh_key();
    let first = scope("team-a", &key, "{\"a\":1}");
    let Claim::Won(ticket) = store.claim(&first, "req-1").await.unwrap() else {
        panic!("the first use of a key claims it");
    };
    let Claim::Taken(held) = store.claim(&first, "req-2").await.unwrap() else {
        panic!("a retry finds the claim");
    };
    assert_eq!(held.request_id, "req-1");
    assert!(!held.accepted, "pending until Kafka acked");
    store.accepted(&ticket).await;
    let Claim::Taken(held) = store.claim(&first, "req-3").await.unwrap() else {
        panic!("still claimed");
    };
    assert!(held.accepted);
    assert!(
        !store.may_take_over(&held),
        "an accepted claim is never taken over"
    );

    let other_body = scope("team-a", &key, "{\"a\":2}");
    let refused = store.claim(&other_body, "req-4").await;
    assert!(
        matches!(
            refused,
            Err(ApiError::IdempotencyKeyReused { window_h: 24 })
        ),
        "{refused:?}"
    );
    let other_team = scope("team-b", &key, "{\"a\":2}");
    assert!(
        matches!(
            store.claim(&other_team, "req-5").await.unwrap(),
            Claim::Won(_)
        ),
        "another team's key of the same name is another key"
    );
}

#[tokio::test]
async fn a_released_key_is_free_again() {
    let store = store();
    let s = scope("team-a", &fresh_key(), "{}");
    let Claim::Won(ticket) = store.claim(&s, "req-1").await.unwrap() else {
        panic!("claimed");
    };
    store.release(&ticket).await;
    assert!(matches!(
        store.claim(&s, "req-2").await.unwrap(),
        Claim::Won(_)
    ));
}

#[tokio::test]
async fn a_stale_pending_claim_goes_to_one_retry() {
    let store = Store::new(&IdempotencyConfig {
        redis_url: Some(redis_url()),
        takeover_after_ms: Duration::from_secs(60),
        ..IdempotencyConfig::default()
    });
    let s = scope("team-a", &fresh_key(), "{}");
    let stale = Entry {
        request_id: "lost".into(),
        fingerprint: s.fingerprint.clone(),
        accepted: false,
        at_ms: now_ms() - 61_000,
    };
    store.put(&s, &stale).await.unwrap();
    let Claim::Taken(held) = store.claim(&s, "retry-1").await.unwrap() else {
        panic!("held by the lost request");
    };
    assert_eq!(held.request_id, "lost");
    assert!(store.may_take_over(&held));
    let mine = store.take_over(&s, &held, "retry-1").await.unwrap();
    assert!(mine.is_some(), "the first retry takes it over");
    let late = store.take_over(&s, &held, "retry-2").await.unwrap();
    assert!(late.is_none(), "a second retry with the same view loses");
    let Claim::Taken(now) = store.claim(&s, "retry-3").await.unwrap() else {
        panic!("claimed by retry-1");
    };
    assert_eq!(now.request_id, "retry-1");
    assert!(!store.may_take_over(&now), "a fresh claim is not stale");
}

#[tokio::test]
async fn a_down_store_fails_fast_and_no_store_refuses() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Store::new(&IdempotencyConfig {
        redis_url: Some(format!("redis://127.0.0.1:{port}")),
        timeout_ms: Duration::from_millis(300),
        ..IdempotencyConfig::default()
    });
    let started = std::time::Instant::now();
    let claim = down.claim(&scope("t", "k", "{}"), "r").await;
    assert!(
        matches!(claim, Err(ApiError::IdempotencyUnavailable(_))),
        "{claim:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout"
    );
    let none = Store::new(&IdempotencyConfig::default());
    let claim = none.claim(&scope("t", "k", "{}"), "r").await;
    assert!(
        matches!(claim, Err(ApiError::IdempotencyDisabled)),
        "{claim:?}"
    );
}
