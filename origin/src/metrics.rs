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
    /// Upstream fetches by who started them (client, refresh, prefetch).
    pub upstream_fetches: IntCounterVec,
    pub prefetch_queue: IntGauge,
    /// Artifacts fetched before any client asked, by what fetched them
    /// (prefetch, sync), and those a client then asked for.
    pub warmed: IntCounterVec,
    pub warmed_useful: IntCounterVec,
    pub prefetch_dropped: IntCounter,
    pub sync_rounds: IntCounter,
    /// Artifacts whose hash the checksum database contradicts.
    pub checksum_mismatch: IntCounter,
    /// New versions of hot modules fetched by sync.
    pub sync_new_versions: IntCounter,
    /// Misses refused with 503 because `http.max_pulls` pulls were running.
    pub pulls_refused: IntCounter,
    /// Client connections closed because a write took nothing for `send_timeout_ms`.
    pub send_timeouts: IntCounter,
    /// Store writes that failed (disk full, no inodes, I/O error).
    pub store_write_errors: IntCounter,
    /// Artifacts evicted to keep the store within `store_max_mib`.
    pub store_evictions: IntCounter,
    /// The store's byte budget (0: unbounded).
    pub store_budget_bytes: IntGauge,
    /// Artifacts answered whose durable write is still running.
    pub store_writes_pending: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("modcdn_origin".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by kind, status and cache result"),
            &["kind", "status", "cache"],
        )?;
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new("upstream_seconds", "Upstream time to response headers")
                .buckets(modcdn_shared::telemetry::LATENCY_BUCKETS.to_vec()),
            &["kind", "result"],
        )?;
        let singleflight_waiters =
            IntCounter::new("singleflight_waiters_total", "Requests that waited on a fetch already in flight")?;
        let in_flight = IntGauge::new("in_flight_requests", "Requests being answered")?;
        let invalid = IntCounterVec::new(
            Opts::new("invalid_artifacts_total", "Upstream artifacts refused by validation"),
            &["kind"],
        )?;
        let store_objects =
            IntGauge::new("store_objects", "Artifacts on this origin's disk (the local tier with a shared store)")?;
        let store_bytes = IntGauge::new("store_bytes", "Bytes this origin's store files take on its disk")?;
        let upstream_fetches = IntCounterVec::new(
            Opts::new("upstream_fetches_total", "Upstream fetches by what started them"),
            &["trigger"],
        )?;
        let prefetch_queue = IntGauge::new("prefetch_queue_depth", "Prefetches waiting")?;
        let warmed = IntCounterVec::new(
            Opts::new("warmed_total", "Artifacts fetched before any client asked, by what fetched them"),
            &["by"],
        )?;
        let warmed_useful = IntCounterVec::new(
            Opts::new(
                "warmed_useful_total",
                "Artifacts fetched before any client asked that a client then asked for, by what fetched them",
            ),
            &["by"],
        )?;
        let prefetch_dropped =
            IntCounter::new("prefetch_dropped_total", "Prefetches dropped because the queue was full")?;
        let sync_rounds = IntCounter::new("sync_rounds_total", "Sync rounds run")?;
        let checksum_mismatch = IntCounter::new(
            "checksum_mismatch_total",
            "Upstream artifacts whose hash the checksum database contradicts",
        )?;
        registry.register(Box::new(checksum_mismatch.clone()))?;
        let sync_new_versions =
            IntCounter::new("sync_new_versions_total", "New versions of hot modules fetched by sync")?;
        registry.register(Box::new(sync_rounds.clone()))?;
        registry.register(Box::new(sync_new_versions.clone()))?;
        registry.register(Box::new(prefetch_queue.clone()))?;
        registry.register(Box::new(upstream_fetches.clone()))?;
        // Both series from the start, so a ratio over them exists at once.
        for by in ["prefetch", "sync"] {
            warmed.with_label_values(&[by]);
            warmed_useful.with_label_values(&[by]);
        }
        registry.register(Box::new(warmed.clone()))?;
        registry.register(Box::new(warmed_useful.clone()))?;
        registry.register(Box::new(prefetch_dropped.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_seconds.clone()))?;
        registry.register(Box::new(singleflight_waiters.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(invalid.clone()))?;
        registry.register(Box::new(store_objects.clone()))?;
        registry.register(Box::new(store_bytes.clone()))?;
        let pulls_refused =
            IntCounter::new("pulls_refused_total", "Misses answered 503 because http.max_pulls pulls were running")?;
        let store_write_errors =
            IntCounter::new("store_write_errors_total", "Store writes that failed (disk full, no inodes, I/O)")?;
        let store_evictions =
            IntCounter::new("store_evictions_total", "Artifacts evicted to stay within store_max_mib")?;
        let store_budget_bytes = IntGauge::new("store_budget_bytes", "The store's byte budget (0: unbounded)")?;
        let send_timeouts = IntCounter::new(
            "send_timeouts_total",
            "Client connections closed because an answer's write took nothing for send_timeout_ms",
        )?;
        for m in [&pulls_refused, &store_write_errors, &store_evictions, &send_timeouts] {
            registry.register(Box::new(m.clone()))?;
        }
        registry.register(Box::new(store_budget_bytes.clone()))?;
        let store_writes_pending =
            IntGauge::new("store_writes_pending", "Artifacts already answered whose durable store write is running")?;
        registry.register(Box::new(store_writes_pending.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            upstream_seconds,
            singleflight_waiters,
            in_flight,
            invalid,
            store_objects,
            store_bytes,
            upstream_fetches,
            prefetch_queue,
            warmed,
            warmed_useful,
            prefetch_dropped,
            sync_rounds,
            sync_new_versions,
            checksum_mismatch,
            pulls_refused,
            send_timeouts,
            store_write_errors,
            store_evictions,
            store_budget_bytes,
            store_writes_pending,
        })
    }

    /// The text exposition format.
    /// Every family with its current values (what `/metrics` renders).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_family() {
        let m = super::Metrics::new().expect("metrics");
        m.requests.with_label_values(&["zip", "200", "hit"]).inc();
        m.upstream_seconds.with_label_values(&["zip", "ok"]).observe(0.01);
        let text = m.render();
        for name in [
            "modcdn_origin_requests_total",
            "modcdn_origin_upstream_seconds",
            "modcdn_origin_singleflight_waiters_total",
            "modcdn_origin_store_bytes",
            "modcdn_origin_send_timeouts_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
