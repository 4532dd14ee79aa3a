//! What the mock provider does with the calls it receives: latency, reply size, stream shape,
//! injected failures and auth. Plain serde data, so the binary can take it as JSON and a test
//! can build it with `Behaviour { completion_tokens: 5, ..Behaviour::default() }`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the mock answers. Changed at runtime with [`super::MockProvider::set_behaviour`].
///
/// Times are written as `"150ms"`, `"2s"`, `"1.5s"`, `"500us"`, or a bare integer of
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Time before answering a generation call: before the whole response when not streaming,
    /// before the response head and first event when streaming. Applies to error answers too.
    pub latency: Latency,
    /// Words in every reply, before the request's `max_tokens` cap. One word = one token.
    pub completion_tokens: u32,
    /// Content chunks per streamed reply, words spread evenly over them; `None` = one chunk
    /// per word. Never more chunks than words.
    pub stream_chunks: Option<NonZeroU32>,
    /// Pause between two consecutive content chunks of a stream.
    #[serde(with = "duration")]
    pub stream_chunk_delay: Duration,
    /// Outcomes of the next generation calls, first one first, each used by one call
    /// whatever that call is; once empty, every call is answered normally. A status, timeout
    /// or disconnect replaces the whole answer (auth and validation included); a mid-stream
    /// fault applies to the reply, if the call gets one.
    pub fail_next: Vec<Failure>,
    /// If set, calls must present this key (OpenAI: `Authorization: Bearer <key>`) or get 401.
    pub api_key: Option<String>,
    /// Models that exist: others get 404 `model_not_found`, and this is what the model list
    /// endpoint lists. Empty = every model exists.
    pub models: Vec<String>,
    /// The provider's own rate limit (GCRA, a minute's worth of burst, as OpenAI's request
    /// limits behave): calls beyond it get 429 `rate_limit_exceeded` with Retry-After.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Keep received calls for [`super::MockProvider::calls`]. Off for benchmarks.
    pub record_calls: bool,
    /// Only the most recent this many calls are kept.
    pub max_recorded_calls: usize,
    /// `POST /v1/moderations` flags a text (category `violence`) that contains one of these
    /// words, ASCII case ignored.
    pub moderation_flag_words: Vec<String>,
    /// `POST /v1/moderations` answers 500 instead of classifying.
    pub moderation_fails: bool,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            latency: Latency::default(),
            completion_tokens: 16,
            stream_chunks: None,
            stream_chunk_delay: Duration::ZERO,
            fail_next: Vec::new(),
            api_key: None,
            models: Vec::new(),
            requests_per_minute: None,
            record_calls: true,
            max_recorded_calls: 10_000,
            moderation_flag_words: vec!["kill".into()],
            moderation_fails: false,
        }
    }
}

/// Time before answering: `"20ms"` or `{ "min": "10ms", "max": "30ms" }` (uniform).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Latency {
    Fixed(#[serde(with = "duration")] Duration),
    Uniform {
        #[serde(with = "duration")]
        min: Duration,
        #[serde(with = "duration")]
        max: Duration,
    },
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::Fixed(Duration::ZERO)
    }
}

impl Latency {
    /// One latency draw. `Uniform` with `max < min` behaves as `Fixed(min)`.
    pub fn sample(&self) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } if max > min => {
                let span = (max - min).as_nanos().min(u128::from(u64::MAX)) as u64;
                min + Duration::from_nanos(next_random() % (span + 1))
            }
            Latency::Uniform { min, .. } => min,
        }
    }
}

/// splitmix64 over a shared counter: uniform enough for jitter, lock-free, no dependency.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One injected outcome for one call, e.g. `{"kind": "status", "status": 429,
/// "retry_after": "2s"}`, `{"kind": "timeout"}`, `{"kind": "mid_stream_break",
/// "after_chunks": 3}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// Answer with this HTTP status and an error body.
    Status {
        status: u16,
        /// The error to send; `None` = the body the provider sends for this status (OpenAI:
        /// 429 `rate_limit_exceeded`, 500 `server_error`, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ApiError>,
        /// Sent verbatim as `text/html` instead of a JSON error: what a proxy in front of the
        /// provider answers (e.g. a 502 page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// Sent as `Retry-After` (whole seconds, rounded up).
        #[serde(
            default,
            with = "duration::option",
            skip_serializing_if = "Option::is_none"
        )]
        retry_after: Option<Duration>,
    },
    /// Never answer: hold the connection until the client gives up (or the mock shuts down),
    /// then close it.
    Timeout,
    /// Close the connection without sending a single byte of response.
    Disconnect,
    /// Stream `after_chunks` SSE events (the first, role-only event counts), then cut the
    /// connection: no `[DONE]`, no terminating chunk. With more than the stream has, the cut
    /// replaces `[DONE]`. On a non-streaming call: send the response head and half of the
    /// body, then cut.
    MidStreamBreak { after_chunks: u32 },
    /// Stream `after_chunks` SSE events, then an error event (`data: {"error": {...}}`) and
    /// end the stream cleanly but without `[DONE]`. On a non-streaming call: answer 500 with
    /// that error.
    MidStreamError {
        after_chunks: u32,
        /// `None` = OpenAI's `server_error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ApiError>,
    },
}

impl Failure {
    /// This status with the provider's usual body for it.
    pub fn status(status: u16) -> Failure {
        Failure::Status {
            status,
            error: None,
            body: None,
            retry_after: None,
        }
    }

    /// 429 `rate_limit_exceeded` with `Retry-After`: retriable.
    pub fn rate_limited(retry_after: Duration) -> Failure {
        Failure::Status {
            status: 429,
            error: None,
            body: None,
            retry_after: Some(retry_after),
        }
    }

    /// 429 `insufficient_quota`: same status as a rate limit but retrying never helps.
    pub fn insufficient_quota() -> Failure {
        Failure::Status {
            status: 429,
            error: Some(ApiError {
                message: "You exceeded your current quota, please check your plan and billing \
                          details. For more information on this error, read the docs: \
                          https://platform.openai.com/docs/guides/error-codes/api-errors."
                    .to_string(),
                kind: "insufficient_quota".to_string(),
                param: None,
                code: Some("insufficient_quota".to_string()),
            }),
            body: None,
            retry_after: None,
        }
    }

    /// 500 `server_error`.
    pub fn server_error() -> Failure {
        Failure::status(500)
    }

    /// 503, the provider is overloaded.
    pub fn overloaded() -> Failure {
        Failure::status(503)
    }
}

/// A provider error: OpenAI's `{"message", "type", "param", "code"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

impl ApiError {
    pub fn new(kind: &str, code: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            message: message.into(),
            kind: kind.to_string(),
            param: None,
            code: code.map(str::to_string),
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }
}

/// Serde for `Duration` as `"150ms"` / `"2s"` / `"1.5s"` / `"500us"` / integer milliseconds.
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let whole_millis = u64::try_from(d.as_millis()).map(Duration::from_millis) == Ok(*d);
        if whole_millis {
            s.collect_str(&format_args!("{}ms", d.as_millis()))
        } else {
            s.collect_str(&format_args!("{}us", d.as_micros()))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// Parses `"150ms"`, `"2s"`, `"1.5s"`, `"500us"`, `"1m"`, or a bare number of milliseconds.
    pub fn parse(text: &str) -> Option<Duration> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        let seconds = match unit.trim() {
            "us" | "µs" => number / 1e6,
            "" | "ms" => number / 1e3,
            "s" => number,
            "m" => number * 60.0,
            _ => return None,
        };
        Duration::try_from_secs_f64(seconds).ok()
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"150ms\", \"2s\" or integer milliseconds")
        }

        fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Duration, E> {
            Ok(Duration::from_millis(ms))
        }

        fn visit_i64<E: de::Error>(self, ms: i64) -> Result<Duration, E> {
            u64::try_from(ms)
                .map(Duration::from_millis)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
        }
    }

    /// The same for `Option<Duration>`; absent or `null` is `None`.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapped(#[serde(with = "super")] Duration);
            Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(d)| d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_from_json_with_readable_times() {
        let behaviour: Behaviour = serde_json::from_str(
            r#"{
                "latency": {"min": "10ms", "max": "1.5s"},
                "completion_tokens": 3,
                "stream_chunk_delay": 5,
                "fail_next": [
                    {"kind": "status", "status": 429, "retry_after": "2s"},
                    {"kind": "timeout"},
                    {"kind": "disconnect"},
                    {"kind": "mid_stream_break", "after_chunks": 2},
                    {"kind": "mid_stream_error", "after_chunks": 1}
                ]
            }"#,
        )
        .unwrap();
        assert_eq!(
            behaviour.latency,
            Latency::Uniform {
                min: Duration::from_millis(10),
                max: Duration::from_millis(1500)
            }
        );
        assert_eq!(behaviour.stream_chunk_delay, Duration::from_millis(5));
        assert_eq!(
            behaviour.fail_next[0],
            Failure::rate_limited(Duration::from_secs(2))
        );
        assert_eq!(behaviour.fail_next[1], Failure::Timeout);
        assert!(behaviour.record_calls, "unset fields keep their defaults");

        let round_trip: Behaviour =
            serde_json::from_str(&serde_json::to_string(&behaviour).unwrap()).unwrap();
        assert_eq!(round_trip, behaviour);
    }

    #[test]
    fn unknown_fields_and_bad_times_are_rejected() {
        assert!(serde_json::from_str::<Behaviour>(r#"{"latnecy": "1s"}"#).is_err());
        assert!(serde_json::from_str::<Behaviour>(r#"{"latency": "1 fortnight"}"#).is_err());
        assert!(serde_json::from_str::<Behaviour>(r#"{"latency": -5}"#).is_err());
    }

    #[test]
    fn uniform_latency_stays_in_range() {
        let latency = Latency::Uniform {
            min: Duration::from_millis(10),
            max: Duration::from_millis(20),
        };
        for _ in 0..1000 {
            let d = latency.sample();
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
        }
    }
}
