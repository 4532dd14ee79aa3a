//! The services' log output (feature `logging`): `[log] format = "text"` (the default,
//! human-readable) or `"json"` (one JSON object a line, for a log pipeline). The level
//! filter is `RUST_LOG`, else the service's default. The three `main.rs` call [`init`].
//!
//! JSON lines carry the event's fields and, under `span`/`spans`, the fields of the spans it
//! happened in: `request_id` (and `trace_id` when the caller sent a W3C `traceparent`, see
//! [`crate::trace::trace_id`]) where a request is handled.

use std::io::IsTerminal;

use opentelemetry_sdk::trace::SdkTracer;
use serde::Deserialize;
use tracing::Level;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::trace::{TraceConfig, TraceError, Tracing};

/// `[log]` in every service's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the process's subscriber writing to `writer` (e.g. `std::io::stdout`) and,
/// when `[trace]` has an endpoint, exporting spans (crate::trace): flush the returned
/// [`Tracing`] before exiting. `default_filter` applies when `RUST_LOG` is unset or invalid.
/// A second call installs nothing. Call it inside the service's Tokio runtime.
pub fn init<W>(
    config: &LogConfig,
    trace: &TraceConfig,
    service: &str,
    default_filter: &str,
    writer: W,
) -> Result<Option<Tracing>, TraceError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (tracing, tracer) = match Tracing::start(trace, service, tokio::runtime::Handle::current())?
    {
        Some((tracing, tracer)) => (Some(tracing), Some(tracer)),
        None => (None, None),
    };
    let _ =
        tracing::subscriber::set_global_default(subscriber(config, default_filter, writer, tracer));
    Ok(tracing)
}

/// The subscriber [`init`] installs (tests install it for a scope): the log lines, filtered
/// by `RUST_LOG`, and with a `tracer` the spans of Sluice's own code at INFO and above,
/// whatever `RUST_LOG` says (a quiet log must not cut the traces).
pub fn subscriber<W>(
    config: &LogConfig,
    default_filter: &str,
    writer: W,
    tracer: Option<SdkTracer>,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only for a person at a terminal: a log file or pipeline gets plain text, and
    // the services skip styling every span's fields (measured: ~2 % of the ingress's and the
    // worker's CPU under load, docs/benchmarks.md).
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(writer);
    let lines = match config.format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let spans = tracer.map(|tracer| {
        // Without the per-span source location, thread, level and target attributes: they
        // more than doubled the bytes exported per request and say nothing the span name
        // and service.name do not.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_filter(filter_fn(|meta| {
                meta.target().starts_with("sluice") && *meta.level() <= Level::INFO
            }))
    });
    Box::new(
        tracing_subscriber::registry()
            .with(lines.with_filter(filter))
            .with(spans),
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn json_lines_parse_and_carry_the_request_and_trace_ids() {
        let out = Captured::default();
        let config = LogConfig {
            format: LogFormat::Json,
        };
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        tracing::subscriber::with_default(subscriber(&config, "info", out.clone(), None), || {
            let span = tracing::info_span!(
                "process",
                request_id = "req_1",
                trace_id = crate::trace::trace_id(traceparent)
            );
            let _entered = span.enter();
            tracing::info!(attempt = 2, "provider called");
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], "provider called");
        assert_eq!(line["fields"]["attempt"], 2);
        assert_eq!(line["span"]["request_id"], "req_1");
        assert_eq!(line["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["spans"][0]["name"], "process");
        assert!(line["timestamp"].is_string());
    }

    #[test]
    fn text_is_the_default_and_json_parses_from_toml() {
        assert_eq!(LogConfig::default().format, LogFormat::Text);
        let json: LogConfig = serde_json::from_str(r#"{"format":"json"}"#).unwrap();
        assert_eq!(json.format, LogFormat::Json);
        assert!(serde_json::from_str::<LogConfig>(r#"{"format":"xml"}"#).is_err());
    }
}
