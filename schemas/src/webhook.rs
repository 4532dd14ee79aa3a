//! Webhooks as Sluice sends them: the Standard Webhooks format (standardwebhooks.com), so
//! receivers can verify them with any of that spec's libraries, and delivery with retries.
//!
//! Every delivery is a `POST` of `{"type", "timestamp", "data"}` with the headers
//! `webhook-id` (stable across retries: receivers dedup on it), `webhook-timestamp` (unix
//! seconds) and, when the endpoint has a secret, `webhook-signature: v1,<base64 HMAC-SHA256
//! of "{id}.{timestamp}.{body}">`.
//!
//! This is the one piece of I/O in the shared crate: the ingress (batch and request
//! callbacks) and analytics (budget alerts) must send identical, identically signed events.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::outbound::{OutboundPolicy, Route};
use crate::retry::Retryable;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook secret is not `whsec_<base64>` or is empty")]
    BadSecret,
    /// The destination is not allowed (scheme, userinfo, a non-public address).
    #[error("webhook destination refused: {0}")]
    Refused(#[from] crate::outbound::Refused),
    #[error("webhook HTTP client could not be built")]
    Client(#[source] reqwest::Error),
    #[error("webhook event not serializable")]
    Encode(#[source] serde_json::Error),
    #[error("webhook endpoint answered {status} after {attempts} attempts")]
    Rejected { status: u16, attempts: u32 },
    #[error("webhook endpoint unreachable after {attempts} attempts")]
    Unreachable {
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
}

/// A signing secret: `whsec_<base64>` as the spec writes them (the bytes after the prefix
/// are the HMAC key), or any other non-empty string used as raw bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, WebhookError> {
        let text = text.trim();
        let bytes = match text.strip_prefix("whsec_") {
            Some(b64) => BASE64.decode(b64).map_err(|_| WebhookError::BadSecret)?,
            None => text.as_bytes().to_vec(),
        };
        if bytes.is_empty() {
            return Err(WebhookError::BadSecret);
        }
        Ok(Secret(bytes))
    }
}

/// `v1,<signature>` for one message.
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Checks a `webhook-signature` header (space-separated `v1,<sig>` entries, any may match)
/// in constant time. For receivers and tests; the timestamp tolerance is the caller's.
pub fn verify(secret: &Secret, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    header.split_whitespace().any(|entry| {
        let Some(sig) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = BASE64.decode(sig) else {
            return false;
        };
        let mut mac = mac(secret);
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

fn mac(secret: &Secret) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    match Hmac::<Sha256>::new_from_slice(&secret.0) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included).
    pub attempts: u32,
    /// Delay before the second attempt; doubles each time up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Per attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // 0.5 + 1 + 2 + 4 + 8 + 16 ≈ 31 s of retrying before giving up.
        RetryPolicy {
            attempts: 7,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(16),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a successful delivery took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub status: u16,
    pub attempts: u32,
}

/// Sends webhooks; cheap to clone (one connection pool per client).
#[derive(Debug, Clone)]
pub struct Sender {
    /// For allow-listed destinations.
    allowed: reqwest::Client,
    /// For everything else: its resolver refuses non-public addresses at connect time.
    guarded: reqwest::Client,
    outbound: std::sync::Arc<OutboundPolicy>,
    policy: RetryPolicy,
}

impl Sender {
    pub fn new(policy: RetryPolicy, outbound: OutboundPolicy) -> Result<Sender, WebhookError> {
        // Never a fallback client on error: it would have the system resolver.
        let (allowed, guarded) =
            crate::outbound::clients(&outbound, policy.timeout).map_err(WebhookError::Client)?;
        Ok(Sender {
            allowed,
            guarded,
            outbound: std::sync::Arc::new(outbound),
            policy,
        })
    }

    /// The destination policy deliveries follow (for checks at submission).
    pub fn outbound(&self) -> &OutboundPolicy {
        &self.outbound
    }

    /// Delivers one event: 2xx is done; network errors, timeouts, 408, 429 and 5xx are
    /// retried with exponential backoff (honouring `Retry-After` seconds up to
    /// `max_delay`); any other status is final. `id` must be stable for the event so that
    /// a receiver can drop the duplicates at-least-once delivery implies.
    pub async fn deliver(
        &self,
        url: &str,
        secret: Option<&Secret>,
        id: &str,
        kind: &str,
        data: &Value,
    ) -> Result<Delivered, WebhookError> {
        // Again at delivery: the policy may have changed since the URL was stored, and
        // reqwest does not call the resolver for IP-literal hosts.
        let (url, route) = self.outbound.check(url)?;
        let client = match route {
            Route::AllowListed => &self.allowed,
            Route::Public => &self.guarded,
        };
        let mut retries = 0;
        let sent = (|| async {
            let now = crate::now_ms() / 1000;
            let body = serde_json::to_vec(&json!({
                "type": kind,
                "timestamp": crate::rfc3339(now * 1000, false),
                "data": data,
            }))
            .map_err(Failed::Encode)?;
            let mut request = client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(ID_HEADER, id)
                .header(TIMESTAMP_HEADER, now.to_string());
            if let Some(secret) = secret {
                request = request.header(SIGNATURE_HEADER, sign(secret, id, now, &body));
            }
            match request.body(body).send().await {
                Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
                Ok(response) => {
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    Err(Failed::Status {
                        status: response.status().as_u16(),
                        retry_after,
                    })
                }
                // The guarded resolver's refusal is final, not a network error.
                Err(source) => Err(match crate::outbound::refused_in(&source) {
                    Some(refused) => Failed::Refused(refused),
                    None => Failed::Network(source),
                }),
            }
        })
        .retry(self.policy.waits())
        .when(Failed::retriable)
        .adjust(|failed, wait| match failed {
            Failed::Status {
                retry_after: Some(after),
                ..
            } => wait.map(|_| (*after).min(self.policy.max_delay)),
            _ => wait,
        })
        .notify(|_, wait| {
            retries += 1;
            tracing::debug!(
                id,
                attempt = retries,
                wait_ms = wait.as_millis() as u64,
                "webhook retry"
            );
        })
        .await;
        let attempts = retries + 1;
        match sent {
            Ok(status) => Ok(Delivered { status, attempts }),
            Err(Failed::Status { status, .. }) => Err(WebhookError::Rejected { status, attempts }),
            Err(Failed::Network(source)) => Err(WebhookError::Unreachable { attempts, source }),
            Err(Failed::Refused(refused)) => Err(WebhookError::Refused(refused)),
            Err(Failed::Encode(error)) => Err(WebhookError::Encode(error)),
        }
    }
}

impl RetryPolicy {
    /// The waits between attempts: `first_delay` doubling up to `max_delay`, one fewer
    /// than `attempts`.
    fn waits(&self) -> crate::retry::ExponentialBuilder {
        crate::retry::doubling(self.first_delay, self.max_delay)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
    }
}

/// Why one delivery attempt failed.
enum Failed {
    /// The endpoint answered something else than 2xx.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    Network(reqwest::Error),
    Refused(crate::outbound::Refused),
    Encode(serde_json::Error),
}

impl Failed {
    /// Network errors, timeouts, 408, 429 and 5xx.
    fn retriable(&self) -> bool {
        match self {
            Failed::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Failed::Network(_) => true,
            Failed::Refused(_) | Failed::Encode(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        // The example from the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let header = format!("v1,bm90IGl0 {sig}");
        assert!(verify(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            body,
            &header
        ));
        assert!(!verify(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_331,
            body,
            &sig
        ));
    }

    #[test]
    fn default_policy_waits_double_to_the_cap_between_its_attempts() {
        use crate::retry::BackoffBuilder;
        let waits: Vec<u128> = RetryPolicy::default()
            .waits()
            .build()
            .map(|d| (d.as_secs_f64() * 1000.0).round() as u128)
            .collect();
        // 7 attempts: 6 waits, the last at max_delay.
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16_000]);
        let one = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(one.waits().build().count(), 0);
        let capped = RetryPolicy {
            attempts: 10,
            max_delay: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        assert_eq!(capped.waits().build().last(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn secrets_and_urls() {
        assert!(Secret::parse("").is_err());
        assert!(Secret::parse("whsec_!!").is_err());
        assert!(Secret::parse("plain-secret").is_ok());
    }

    #[test]
    fn timestamps() {
        assert_eq!(crate::rfc3339(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(
            crate::rfc3339(1_614_265_330_000, false),
            "2021-02-25T15:02:10Z"
        );
        assert_eq!(
            crate::rfc3339(951_782_400_042, true),
            "2000-02-29T00:00:00.042Z"
        );
        assert_eq!(crate::rfc3339(-1, true), "1969-12-31T23:59:59.999Z");
    }

    /// A one-connection-per-request HTTP endpoint answering the given statuses in turn,
    /// handing back each request's head and body.
    async fn endpoint(
        statuses: Vec<u16>,
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let origin = url.clone();
        tokio::spawn(async move {
            let url = origin;
            for status in statuses {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = socket.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let head = text[..end].to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(str::to_string)
                            })
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break (head, buf[end + 4..end + 4 + len].to_vec());
                        }
                    }
                };
                tx.send((head, body)).unwrap();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nretry-after: 0\r\nlocation: {url}/elsewhere\r\nconnection: close\r\n\r\n"
                );
                socket.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        (url, rx)
    }

    /// A sender whose allow-list opens exactly `url`'s host and port.
    fn sender_for(url: &str, attempts: u32) -> Sender {
        let parsed = reqwest::Url::parse(url).unwrap();
        let dest = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap());
        Sender::new(retry(attempts), allow(vec![dest])).unwrap()
    }

    fn retry(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            first_delay: Duration::from_millis(10),
            ..RetryPolicy::default()
        }
    }

    fn allow(allowed_hosts: Vec<String>) -> OutboundPolicy {
        OutboundPolicy::new(&crate::outbound::OutboundConfig {
            allowed_hosts,
            https_only: false,
        })
        .unwrap()
    }

    fn header<'a>(head: &'a str, name: &str) -> &'a str {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(": ")?;
                k.eq_ignore_ascii_case(name).then_some(v)
            })
            .unwrap()
    }

    #[tokio::test]
    async fn retries_server_errors_with_the_same_id_and_valid_signatures() {
        let (url, mut seen) = endpoint(vec![503, 500, 204]).await;
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sender = sender_for(&url, 5);
        // Caller text (batch metadata) is escaped by serde: quotes, comment markers and
        // newlines stay inside one JSON string.
        let data = json!({"batch_id": "batch_1", "status": "completed",
                          "metadata": {"note": "\"*/ -- \n'; DROP TABLE usage"}});
        let delivered = sender
            .deliver(&url, Some(&secret), "evt_1", "batch.completed", &data)
            .await
            .unwrap();
        assert_eq!(
            delivered,
            Delivered {
                status: 204,
                attempts: 3
            }
        );
        for _ in 0..3 {
            let (head, body) = seen.recv().await.unwrap();
            assert_eq!(header(&head, ID_HEADER), "evt_1");
            let ts: i64 = header(&head, TIMESTAMP_HEADER).parse().unwrap();
            assert!(verify(
                &secret,
                "evt_1",
                ts,
                &body,
                header(&head, SIGNATURE_HEADER)
            ));
            let event: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(event["type"], "batch.completed");
            assert_eq!(event["data"], data);
        }
    }

    #[tokio::test]
    async fn client_errors_are_final() {
        let (url, _seen) = endpoint(vec![400]).await;
        let sender = sender_for(&url, 7);
        match sender.deliver(&url, None, "e", "t", &json!({})).await {
            Err(WebhookError::Rejected {
                status: 400,
                attempts: 1,
            }) => {}
            other => panic!("expected a final 400, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn redirects_are_answers_not_new_destinations() {
        let (url, mut seen) = endpoint(vec![302, 204]).await;
        match sender_for(&url, 3)
            .deliver(&url, None, "e", "t", &json!({}))
            .await
        {
            Err(WebhookError::Rejected {
                status: 302,
                attempts: 1,
            }) => {}
            other => panic!("expected a final 302, got {other:?}"),
        }
        let (head, _) = seen.recv().await.unwrap();
        assert!(head.starts_with("POST /hook "), "{head}");
        assert!(seen.try_recv().is_err(), "the Location was not followed");
    }

    #[tokio::test]
    async fn a_loopback_receiver_is_refused_unless_allow_listed_and_never_contacted() {
        let (url, mut seen) = endpoint(vec![204]).await;
        let port = reqwest::Url::parse(&url).unwrap().port().unwrap();
        // The allow-list names another port of the same host: still refused.
        let sender = Sender::new(retry(3), allow(vec![format!("127.0.0.1:{}", port + 1)])).unwrap();
        let localhost = format!("http://localhost:{port}/hook");
        let decimal = format!("http://2130706433:{port}/hook");
        let mapped = format!("http://[::ffff:127.0.0.1]:{port}/hook");
        for target in [url.as_str(), &decimal, &mapped] {
            match sender.deliver(target, None, "e", "t", &json!({})).await {
                Err(WebhookError::Refused(crate::outbound::Refused::Address(_))) => {}
                other => panic!("{target}: expected a refusal, got {other:?}"),
            }
        }
        // A name passes the URL check; the client's resolver refuses it at connect time.
        match sender.deliver(&localhost, None, "e", "t", &json!({})).await {
            Err(WebhookError::Refused(crate::outbound::Refused::ResolvesPrivate)) => {}
            other => panic!("{localhost}: expected the resolver's refusal, got {other:?}"),
        }
        assert!(seen.try_recv().is_err(), "the receiver got nothing");
    }

    #[tokio::test]
    async fn a_name_rebound_to_loopback_after_submission_is_refused_at_connect_time() {
        use std::net::{IpAddr, Ipv4Addr};
        use std::sync::atomic::{AtomicUsize, Ordering};
        static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
        // Public at the first lookup (submission), loopback afterwards (delivery).
        let outbound = OutboundPolicy::default().with_fake_dns(|_| {
            if LOOKUPS.fetch_add(1, Ordering::SeqCst) == 0 {
                vec![IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14))]
            } else {
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
            }
        });
        let (url, mut seen) = endpoint(vec![204]).await;
        let port = reqwest::Url::parse(&url).unwrap().port().unwrap();
        let target = format!("http://rebind.example:{port}/hook");
        let sender = Sender::new(retry(3), outbound).unwrap();
        assert!(sender.outbound().check_resolved(&target).await.is_ok());
        match sender.deliver(&target, None, "e", "t", &json!({})).await {
            Err(WebhookError::Refused(crate::outbound::Refused::ResolvesPrivate)) => {}
            other => panic!("expected the resolver's refusal, got {other:?}"),
        }
        assert!(
            LOOKUPS.load(Ordering::SeqCst) >= 2,
            "delivery resolved again"
        );
        assert!(seen.try_recv().is_err(), "the receiver got nothing");
    }
}
