//! Prometheus metrics of the origin, served at `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by kind, status and cache result (hit, miss, stale, none).
    pub requests: IntCounterVec,
    /// Upstream fetch latency to response headers, by kind and result.
    pub upstream_seconds: HistogramVec,
    /// Requests that joined a fetch already in flight instead of starting one.
    pub singleflight_waiters: IntCounter,
    /// Requests being answered now.
    pub in_flight: IntGauge,
    /// Artifacts refused by validation (and not stored).
    pub invalid: IntCounterVec,
    pub store_objects: IntGauge,
    pub store_bytes: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("modcdn_origin".into()), None).unwrap_or_default();
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by kind, status and cache result"),
            &["kind", "status", "cache"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new("upstream_seconds", "Upstream time to response headers")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["kind", "result"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let singleflight_waiters =
            IntCounter::new("singleflight_waiters_total", "Requests that waited on a fetch already in flight")
                .unwrap_or_else(|_| unreachable_metric());
        let in_flight =
            IntGauge::new("in_flight_requests", "Requests being answered").unwrap_or_else(|_| unreachable_metric());
        let invalid = IntCounterVec::new(
            Opts::new("invalid_artifacts_total", "Upstream artifacts refused by validation"),
            &["kind"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let store_objects =
            IntGauge::new("store_objects", "Artifacts in the store").unwrap_or_else(|_| unreachable_metric());
        let store_bytes =
            IntGauge::new("store_bytes", "Bytes of artifacts in the store").unwrap_or_else(|_| unreachable_metric());
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_seconds.clone()),
            Box::new(singleflight_waiters.clone()),
            Box::new(in_flight.clone()),
            Box::new(invalid.clone()),
            Box::new(store_objects.clone()),
            Box::new(store_bytes.clone()),
        ] {
            let _ = registry.register(c);
        }
        Metrics {
            registry,
            requests,
            upstream_seconds,
            singleflight_waiters,
            in_flight,
            invalid,
            store_objects,
            store_bytes,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric definitions above are constant and valid; prometheus only fails
/// on malformed names, which a test would catch at once.
fn unreachable_metric<T>() -> T {
    panic!("invalid constant metric definition")
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_family() {
        let m = super::Metrics::new();
        m.requests.with_label_values(&["zip", "200", "hit"]).inc();
        m.upstream_seconds.with_label_values(&["zip", "ok"]).observe(0.01);
        let text = m.render();
        for name in [
            "modcdn_origin_requests_total",
            "modcdn_origin_upstream_seconds",
            "modcdn_origin_singleflight_waiters_total",
            "modcdn_origin_store_bytes",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
