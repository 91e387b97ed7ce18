//! Logs and traces, set up the same way by every binary.
//!
//! Traces are off unless `log.otlp_endpoint` names an OTLP/HTTP collector
//! (`http://collector:4318/v1/traces`); then each node exports a span per
//! request, and the W3C `traceparent` header carries the trace from the
//! edge to the origin and from the origin to upstream. With traces off,
//! nodes pass a client's `traceparent` on unchanged.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::LogConfig;

static TRACES: AtomicBool = AtomicBool::new(false);

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Flushes and stops trace export when dropped (keep it for the life of
/// `main`).
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber: log lines per `log` (`RUST_LOG`
/// overrides the level), and spans exported over OTLP when
/// `log.otlp_endpoint` is set, as service `service`. Calling it twice is
/// harmless (the second call keeps the first subscriber).
/// Buckets of every latency histogram both nodes export, in seconds: from
/// a memory hit on loopback (100 µs) to the slowest pull a deadline allows
/// (60 s).
pub const LATENCY_BUCKETS: [f64; 18] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub fn init(log: &LogConfig, service: &str) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The log level filters log lines only: request spans (info) are
    // exported whatever the level.
    let fmt = match log.format {
        LogFormat::Human => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let (otel, provider) = if let Some(endpoint) = &log.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("log.otlp_endpoint: {e}"))?;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("modcdn"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        TRACES.store(true, Ordering::Relaxed);
        (Some(layer), Some(provider))
    } else {
        (None, None)
    };
    let _ = tracing_subscriber::registry().with(fmt).with(otel).try_init();
    Ok(Telemetry { provider })
}

/// Whether spans are exported.
pub fn traces_on() -> bool {
    TRACES.load(Ordering::Relaxed)
}

/// Makes `span` continue the trace of an incoming `traceparent` header.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let carrier = std::collections::HashMap::from([("traceparent".to_string(), tp.to_string())]);
        let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
    }
}

/// The `traceparent` header for a request made within `span`.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent").filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_continues_the_incoming_trace() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            continue_trace(&span, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
            let tp = traceparent(&span).expect("traceparent");
            assert!(tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{tp}");
            assert!(!tp.contains("b7ad6b7169203331"), "a new span id for this hop: {tp}");
            let fresh = tracing::info_span!("request");
            continue_trace(&fresh, Some("garbage"));
            let tp = traceparent(&fresh).expect("a new trace");
            assert_eq!(tp.len(), 55, "{tp}");
        });
    }
}
