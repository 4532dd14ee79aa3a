//! The sink's retry policy: what is worth retrying, and how long to wait between tries.
//!
//! ClickHouse or Kafka being down, slow or overloaded is transient: the sink waits it out
//! (backing off up to `sink.retry_max_backoff_ms`) and never drops or skips a record. A
//! ClickHouse error that says the server refuses the data itself (a value it cannot parse,
//! a type mismatch, a row a check throws on) is permanent: the same rows would be refused
//! forever, so the insert hands them back to be isolated and dead-lettered.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;

pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Whether trying the same thing again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// The network, a timeout, an overloaded server (too many parts, memory), a user or
    /// table not available yet: retried until it works.
    Transient,
    /// The server rejects the data: retrying the same rows cannot help.
    Permanent,
}

/// ClickHouse error codes that reject the data sent, not the moment it was sent in. Any
/// code not listed (and every network error) is transient: when in doubt the sink stalls
/// rather than dead-letters billing data.
const DATA_REJECTED: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    16,  // NO_SUCH_COLUMN_IN_TABLE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (a throwIf check on a column)
    469, // VIOLATED_CONSTRAINT
];

/// The class of a sink error.
pub(super) fn classify(error: &Error) -> Class {
    match error {
        Error::ClickHouse {
            source: clickhouse::error::Error::BadResponse(text),
            ..
        } if server_code(text).is_some_and(|code| DATA_REJECTED.contains(&code)) => {
            Class::Permanent
        }
        _ => Class::Transient,
    }
}

/// The `N` of ClickHouse's `Code: N, e.displayText() = ...` (18.x) or `Code: N. DB::...`.
fn server_code(text: &str) -> Option<u32> {
    let (_, after) = text.split_once("Code: ")?;
    let digits = after.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Why [`retry`] stopped without a value.
#[derive(Debug)]
pub(super) enum Stopped {
    /// `give_up` fired (shutdown).
    GaveUp,
    /// A permanent error: trying again cannot help.
    Permanent(Error),
}

/// Runs `op` until it succeeds or fails permanently, backing off exponentially from
/// [`FIRST_BACKOFF`] up to `max_backoff` between transient failures. Stops when `give_up`
/// fires (an attempt in flight is dropped: for an INSERT that means aborted or, if it had
/// landed, a duplicate the tables absorb).
pub(super) async fn retry<T, F, Fut>(
    operation: &'static str,
    max_backoff: Duration,
    give_up: &CancellationToken,
    op: F,
) -> Result<T, Stopped>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let backoff = ExponentialBuilder::new()
        .with_min_delay(FIRST_BACKOFF.min(max_backoff))
        .with_max_delay(max_backoff)
        .without_max_times();
    let mut attempts = 0u32;
    let retried = op
        .retry(backoff)
        .when(|e| classify(e) == Class::Transient)
        .notify(|e, backoff| {
            attempts += 1;
            warn!(
                operation,
                attempt = attempts,
                backoff_ms = backoff.as_millis() as u64,
                error = %error_chain(e),
                "failed, retrying"
            );
        });
    let outcome = tokio::select! {
        biased;
        () = give_up.cancelled() => return Err(Stopped::GaveUp),
        outcome = retried => outcome,
    };
    if attempts > 0 && outcome.is_ok() {
        info!(
            operation,
            attempt = attempts + 1,
            "succeeded after retrying"
        );
    }
    outcome.map_err(Stopped::Permanent)
}

/// An error and its sources, `a: b: c`.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_response(text: &str) -> Error {
        Error::clickhouse("insert")(clickhouse::error::Error::BadResponse(text.into()))
    }

    #[test]
    fn data_the_server_rejects_is_permanent_the_rest_transient() {
        let permanent = [
            "Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, e.what() = DB::Exception",
            "Code: 53. DB::Exception: Type mismatch in IN or VALUES section. (TYPE_MISMATCH)",
            "Code: 27, e.displayText() = DB::Exception: Cannot parse input",
        ];
        for text in permanent {
            assert_eq!(classify(&bad_response(text)), Class::Permanent, "{text}");
        }
        let transient = [
            "Code: 252, e.displayText() = DB::Exception: Too many parts (300)",
            "Code: 241. DB::Exception: Memory limit (total) exceeded",
            "Code: 516. DB::Exception: sluice_sink: Authentication failed",
            "Code: 60. DB::Exception: Table sluice.usage doesn't exist",
            "502 Bad Gateway",
        ];
        for text in transient {
            assert_eq!(classify(&bad_response(text)), Class::Transient, "{text}");
        }
        let timed_out = Error::clickhouse("insert")(clickhouse::error::Error::TimedOut);
        assert_eq!(classify(&timed_out), Class::Transient);
    }

    #[tokio::test]
    async fn retries_transient_errors_stops_on_permanent_ones_and_on_signal() {
        let give_up = CancellationToken::new();
        let mut calls = 0;
        let ok = retry("test", Duration::from_millis(5), &give_up, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(bad_response("Code: 252, Too many parts"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert!(matches!(ok, Ok(3)), "{ok:?}");

        let mut calls = 0;
        let rejected: Result<(), _> = retry("test", Duration::from_millis(5), &give_up, || {
            calls += 1;
            async { Err(bad_response("Code: 53. DB::Exception: Type mismatch")) }
        })
        .await;
        assert!(
            matches!(rejected, Err(Stopped::Permanent(_))),
            "{rejected:?}"
        );
        assert_eq!(calls, 1, "a permanent error is not retried");

        give_up.cancel();
        let never: Result<(), _> = retry("test", Duration::from_millis(5), &give_up, || async {
            Err(bad_response("Code: 252, Too many parts"))
        })
        .await;
        assert!(matches!(never, Err(Stopped::GaveUp)), "{never:?}");
    }

    #[test]
    fn error_chain_includes_sources() {
        let e = sluice_schemas::decode::<sluice_schemas::Usage>(b"\xC3\x01garbage!").unwrap_err();
        let text = error_chain(&e);
        assert!(text.contains("Usage"), "{text}");
    }
}
