//! Distributed traces (feature `logging`): the services' `tracing` spans exported over
//! OTLP/HTTP (protobuf) to a collector, one trace per request across the ingress, the
//! Kafka hop, the worker's attempts and the analytics insert. The W3C `traceparent` rides
//! in the request and result records, so a trace crosses Kafka as it crosses HTTP.
//!
//! `[trace]` in every service's config; off unless `otlp_endpoint` is set. Sampling is
//! parent-based: a request whose caller sent a sampled `traceparent` is traced, one without
//! is traced with probability `sample_ratio`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `[trace]` in every service's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    /// Unset: no spans are exported (the caller's `traceparent` is still passed on).
    pub otlp_endpoint: Option<String>,
    /// The share of new traces (requests without a sampled parent) that are recorded, 0..=1.
    pub sample_ratio: f64,
    /// `service.name` of the spans; the service's own name (`sluice-ingress`, ...) if unset.
    pub service_name: Option<String>,
    /// One export's time limit; a collector slower than this loses that batch, never the
    /// request.
    #[serde(with = "crate::config::millis")]
    pub export_timeout_ms: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            service_name: None,
            export_timeout_ms: Duration::from_secs(10),
        }
    }
}

/// A `[trace]` that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("[trace] sample_ratio must be within 0..=1, got {0}")]
    SampleRatio(f64),
    #[error("[trace] otlp_endpoint `{0}` is not an http(s) URL")]
    Endpoint(String),
    #[error("[trace] the OTLP exporter: {0}")]
    Exporter(String),
}

impl TraceConfig {
    pub fn validate(&self) -> Result<(), TraceError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(TraceError::SampleRatio(self.sample_ratio));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let ok = url::Url::parse(endpoint)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(TraceError::Endpoint(endpoint.clone()));
            }
        }
        Ok(())
    }
}

/// The exporting side, when `[trace]` has an endpoint: flush it with [`Tracing::shutdown`]
/// before the process exits, or the last spans are lost.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// The tracer provider for `config` (None when tracing is off), with the OTLP exporter
    /// sending through our reqwest client on `runtime`. Must be called inside a Tokio
    /// runtime when `runtime` is None.
    pub fn start(
        config: &TraceConfig,
        service: &str,
        runtime: tokio::runtime::Handle,
    ) -> Result<Option<(Tracing, SdkTracer)>, TraceError> {
        config.validate()?;
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(config.export_timeout_ms)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OnRuntime { client, runtime })
            .with_endpoint(endpoint.clone())
            .with_timeout(config.export_timeout_ms)
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let name = config
            .service_name
            .clone()
            .unwrap_or_else(|| service.into());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler(config.sample_ratio))
            .with_resource(Resource::builder().with_service_name(name).build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let tracer = provider.tracer("sluice");
        Ok(Some((Tracing { provider }, tracer)))
    }

    /// Exports what is buffered now (tests; the batch exporter otherwise sends every few
    /// seconds, `OTEL_BSP_SCHEDULE_DELAY`).
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }

    /// Exports what is buffered and stops. Blocking work runs off the runtime's threads,
    /// which the exporter's HTTP calls need.
    pub async fn shutdown(self) {
        let provider = self.provider;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || provider.shutdown()).await {
            tracing::warn!(error = %e, "trace export did not finish");
        }
    }
}

/// A caller's sampling decision is followed; a new trace is recorded with probability `ratio`.
fn sampler(ratio: f64) -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

/// The exporter's HTTP client: our reqwest client, its calls run on the service's Tokio
/// runtime (the SDK's batch exporter runs on a thread of its own, outside any runtime).
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

/// A collector's answer bigger than this is not read (it is a status, a few bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let call = async move {
            let request = reqwest::Request::try_from(request)?;
            let mut answer = client.execute(request).await?;
            let mut response = Response::builder().status(answer.status());
            if let Some(headers) = response.headers_mut() {
                *headers = std::mem::take(answer.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = answer.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err::<_, HttpError>("the collector's answer is too large".into());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(response.body(Bytes::from(body))?)
        };
        self.runtime.spawn(call).await?
    }
}

/// Makes `span` (not yet entered) a child of the W3C `traceparent`, when there is a valid
/// one; otherwise it starts a trace of its own. Without tracing this does nothing.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(remote) {
        let _ = span.set_parent(parent);
    }
}

/// `traceparent` if it is well formed (trimmed), else None: what may go on as a Kafka header.
/// Without tracing a record holds the caller's header as sent, which may be anything up to
/// the listener's header limit.
pub fn well_formed(traceparent: Option<&str>) -> Option<&str> {
    traceparent.map(str::trim).filter(|t| trace_id(t).is_some())
}

/// The trace id of a W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<flags>`),
/// if it is well formed and not all zeros.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2))
    .then_some(trace)
}

/// The context of a valid W3C `traceparent`.
fn remote(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.trim().to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The W3C `traceparent` naming `span`, for the next hop (a record, a provider call). None
/// when tracing is off or the span is disabled.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Records a span that already happened, `start..end`, as a child of `traceparent` (e.g.
/// the time a request waited in Kafka, from its creation to its consumption). Nothing when
/// tracing is off or there is no valid parent.
pub fn record_past(
    name: &'static str,
    traceparent: Option<&str>,
    start: SystemTime,
    end: SystemTime,
    attributes: &[(&'static str, &str)],
) {
    if let Some(span) = begin(
        name,
        SpanKind::Internal,
        traceparent,
        Some(start),
        attributes,
    ) {
        span.0.span().end_with_timestamp(end);
    }
}

/// A span started now as a child of `traceparent`, ended by [`Pending::end`] or when dropped
/// (e.g. a result waiting in the sink's batch until its insert). None when there is no
/// valid parent.
pub fn start(
    name: &'static str,
    traceparent: Option<&str>,
    attributes: &[(&'static str, &str)],
) -> Option<Pending> {
    begin(name, SpanKind::Consumer, traceparent, None, attributes)
}

fn begin(
    name: &'static str,
    kind: SpanKind,
    traceparent: Option<&str>,
    start: Option<SystemTime>,
    attributes: &[(&'static str, &str)],
) -> Option<Pending> {
    let parent = traceparent.and_then(remote)?;
    let tracer = opentelemetry::global::tracer("sluice");
    let mut builder = tracer.span_builder(name).with_kind(kind).with_attributes(
        attributes
            .iter()
            .map(|(key, value)| KeyValue::new(*key, value.to_string())),
    );
    if let Some(start) = start {
        builder = builder.with_start_time(start);
    }
    let span = builder.start_with_context(&tracer, &parent);
    Some(Pending(Context::current_with_span(span)))
}

/// A span in flight, see [`start`].
#[derive(Debug)]
pub struct Pending(Context);

impl Pending {
    pub fn end(self) {
        self.0.span().end();
    }
}

/// Milliseconds since the epoch (the records' times) as a [`SystemTime`].
pub fn at_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_bad_values() {
        let config = TraceConfig::default();
        assert!(config.otlp_endpoint.is_none());
        assert_eq!(config.sample_ratio, 1.0);
        config.validate().unwrap();
        for ratio in [-0.1, 1.5, f64::NAN] {
            let bad = TraceConfig {
                sample_ratio: ratio,
                ..TraceConfig::default()
            };
            assert!(
                matches!(bad.validate(), Err(TraceError::SampleRatio(_))),
                "{ratio}"
            );
        }
        for endpoint in ["", "localhost:4318", "file:///etc/passwd", "http://"] {
            let bad = TraceConfig {
                otlp_endpoint: Some(endpoint.into()),
                ..TraceConfig::default()
            };
            assert!(
                matches!(bad.validate(), Err(TraceError::Endpoint(_))),
                "{endpoint}"
            );
        }
        let parsed: TraceConfig = serde_json::from_str(
            r#"{"otlp_endpoint":"http://127.0.0.1:4318/v1/traces","sample_ratio":0.25,"export_timeout_ms":500}"#,
        )
        .unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed.export_timeout_ms, Duration::from_millis(500));
        assert!(serde_json::from_str::<TraceConfig>(r#"{"endpoint":"x"}"#).is_err());
    }

    #[test]
    fn only_valid_traceparents_are_parents() {
        assert!(remote("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert!(remote(bad).is_none(), "{bad}");
        }
    }

    /// The `traceparent` a span would pass on under `sample_ratio`, with `parent` as its
    /// caller's.
    fn passed_on(ratio: f64, parent: Option<&str>) -> Option<String> {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler(ratio))
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            set_parent(&span, parent);
            traceparent(&span)
        })
    }

    #[test]
    fn sampling_follows_the_caller_and_the_ratio_decides_new_traces() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        for ratio in [0.0, 1.0] {
            // A caller's decision wins either way; the trace id is the caller's.
            let child = passed_on(ratio, Some(sampled)).unwrap();
            assert!(
                child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{child}"
            );
            assert!(child.ends_with("-01"), "{ratio}: {child}");
            assert!(
                !child.contains("00f067aa0ba902b7"),
                "a span of its own: {child}"
            );
            let child = passed_on(ratio, Some(unsampled)).unwrap();
            assert!(child.ends_with("-00"), "{ratio}: {child}");
        }
        // A new trace: recorded at 1, not at 0 (its context still goes on, unsampled).
        let new = passed_on(1.0, None).unwrap();
        assert!(new.ends_with("-01") && !new.contains("4bf92f35"), "{new}");
        assert!(passed_on(0.0, None).unwrap().ends_with("-00"));
        // A malformed caller's traceparent starts a new trace.
        let fresh = passed_on(1.0, Some("00-zz-01")).unwrap();
        assert_eq!(trace_id(&fresh).map(str::len), Some(32));
    }

    #[test]
    fn only_well_formed_traceparents_go_on() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(well_formed(Some(good)), Some(good));
        assert_eq!(well_formed(Some(&format!(" {good} "))), Some(good));
        let huge = format!("{good}{}", "x".repeat(60_000));
        for bad in ["", "garbage", huge.as_str()] {
            assert_eq!(well_formed(Some(bad)), None);
        }
        assert_eq!(well_formed(None), None);
    }

    #[test]
    fn without_a_tracing_layer_spans_name_no_traceparent() {
        let span = tracing::info_span!("request");
        set_parent(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(traceparent(&span), None);
    }

    #[test]
    fn only_well_formed_traceparents_give_a_trace_id() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }
}
