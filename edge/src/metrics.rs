//! Prometheus metrics of the edge, served at the admin listener's `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by kind, status and cache result (HIT, MISS, STALE, EXPIRED, BYPASS).
    pub requests: IntCounterVec,
    /// Body bytes sent to clients, by kind.
    pub bytes: IntCounterVec,
    /// Requests sent to origins, by origin and result (ok, error, connect).
    pub origin_requests: IntCounterVec,
    /// Origin time to response headers, by origin.
    pub origin_seconds: HistogramVec,
    pub rate_limited: IntCounter,
    /// Connections refused at the per-client cap, and closed at the header deadline.
    pub connections_refused: IntCounter,
    pub header_timeouts: IntCounter,
    pub send_timeouts: IntCounter,
    /// Artifacts of new versions of hot modules fetched before any client asked.
    pub prefetched: IntCounter,
    /// Purge-log entries applied and keys they removed.
    pub purges: IntCounter,
    pub purged_keys: IntCounter,
    pub cache_objects: IntGauge,
    pub cache_bytes: IntGauge,
    pub waiting_fills: IntGauge,
    pub waiting_bytes: IntGauge,
    pub memory_bytes: IntGauge,
    pub mapped_objects: IntGauge,
    pub evictions: IntCounter,
    /// Bytes the eviction manager accounts for (what the disk budget counts).
    pub budget_bytes: IntGauge,
    pub evicted_bytes: IntCounter,
    /// 1 for each origin in routing, 0 for one taken out, by origin.
    pub origin_healthy: prometheus::IntGaugeVec,
    pub membership_rejected: IntCounter,
    /// Ring changes: membership versions taken into routing, and each
    /// origin's moves out of routing and back.
    pub membership_applied: IntCounter,
    pub origin_health_changes: IntCounterVec,
    pub origin_checks_not_made: IntCounterVec,
    pub purge_log_read: prometheus::GaugeVec,
    recent_purges: parking_lot::Mutex<std::collections::VecDeque<crate::status::PurgeNote>>,
}

/// Purges the status page lists.
const RECENT_PURGES: usize = 20;

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("modcdn_edge".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by kind, status and cache result"),
            &["kind", "status", "cache"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "response_bytes_total",
                "Body bytes sent to clients, by kind and where they came from (memory, disk, origin)",
            ),
            &["kind", "source"],
        )?;
        let origin_requests =
            IntCounterVec::new(Opts::new("origin_requests_total", "Requests sent to origins"), &["origin", "result"])?;
        let origin_seconds = HistogramVec::new(
            HistogramOpts::new("origin_seconds", "Origin time to response headers")
                .buckets(modcdn_shared::telemetry::LATENCY_BUCKETS.to_vec()),
            &["origin"],
        )?;
        let rate_limited = IntCounter::new("rate_limited_total", "Requests refused with 429")?;
        let connections_refused =
            IntCounter::new("connections_refused_total", "Connections refused at the per-client cap")?;
        let header_timeouts =
            IntCounter::new("header_timeouts_total", "Connections closed for not sending headers in time")?;
        let send_timeouts = IntCounter::new(
            "send_timeouts_total",
            "Connections (HTTP/2: streams) closed for taking none of an answer in time",
        )?;
        let prefetched =
            IntCounter::new("prefetched_total", "New versions' artifacts fetched before any client asked")?;
        let purges = IntCounter::new("purges_total", "Purges applied (admin and purge log)")?;
        let purged_keys = IntCounter::new("purged_keys_total", "Cache entries removed by purges")?;
        let cache_objects = IntGauge::new("cache_objects", "Entries in the disk tier")?;
        let cache_bytes = IntGauge::new("cache_bytes", "Body bytes in the disk tier")?;
        let waiting_fills = IntGauge::new(
            "cache_waiting_fills",
            "Fills served and counted in the disk tier whose durable write waits (a crash loses them)",
        )?;
        let waiting_bytes =
            IntGauge::new("cache_waiting_bytes", "Bytes the waiting fills whose bodies are held whole hold in memory")?;
        let memory_bytes = IntGauge::new("memory_cache_bytes", "Bytes in the memory tier")?;
        let mapped_objects =
            IntGauge::new("mapped_cache_objects", "Objects in the mapped tier (bodies mapped from the disk tier)")?;
        let evictions = IntCounter::new("evictions_total", "Entries evicted to stay within cache.max_mib")?;
        let budget_bytes = IntGauge::new("budget_bytes", "Bytes counted against the disk budget")?;
        let evicted_bytes = IntCounter::new("evicted_bytes_total", "Bytes evicted to stay within cache.max_mib")?;
        let purge_log_read = prometheus::GaugeVec::new(
            Opts::new("purge_log_read_timestamp_seconds", "When each origin's purge log was last read (Unix time)"),
            &["origin"],
        )?;
        let membership_rejected = IntCounter::new(
            "membership_rejected_total",
            "Versions of the membership file refused (the previous membership kept; see the log)",
        )?;
        let membership_applied =
            IntCounter::new("membership_reloads_total", "Versions of the membership file taken into routing")?;
        let origin_health_changes = IntCounterVec::new(
            Opts::new("origin_health_changes_total", "Times an origin was taken out of routing or came back"),
            &["origin", "region"],
        )?;
        let origin_checks_not_made = IntCounterVec::new(
            Opts::new(
                "origin_checks_not_made_total",
                "Health checks of an origin this edge could not make, out of descriptors or ports (not counted against it)",
            ),
            &["origin", "region"],
        )?;
        let origin_healthy = prometheus::IntGaugeVec::new(
            Opts::new("origin_healthy", "1 while an origin is in routing, 0 while it is taken out"),
            &["origin", "region"],
        )?;
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(bytes.clone()),
            Box::new(origin_requests.clone()),
            Box::new(origin_seconds.clone()),
            Box::new(rate_limited.clone()),
            Box::new(connections_refused.clone()),
            Box::new(header_timeouts.clone()),
            Box::new(send_timeouts.clone()),
            Box::new(prefetched.clone()),
            Box::new(purges.clone()),
            Box::new(purged_keys.clone()),
            Box::new(cache_objects.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(waiting_fills.clone()),
            Box::new(waiting_bytes.clone()),
            Box::new(memory_bytes.clone()),
            Box::new(mapped_objects.clone()),
            Box::new(evictions.clone()),
            Box::new(budget_bytes.clone()),
            Box::new(evicted_bytes.clone()),
            Box::new(origin_healthy.clone()),
            Box::new(membership_rejected.clone()),
            Box::new(membership_applied.clone()),
            Box::new(origin_health_changes.clone()),
            Box::new(origin_checks_not_made.clone()),
            Box::new(purge_log_read.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            requests,
            bytes,
            origin_requests,
            origin_seconds,
            rate_limited,
            connections_refused,
            header_timeouts,
            send_timeouts,
            prefetched,
            purges,
            purged_keys,
            cache_objects,
            cache_bytes,
            waiting_fills,
            waiting_bytes,
            memory_bytes,
            mapped_objects,
            evictions,
            budget_bytes,
            evicted_bytes,
            origin_healthy,
            membership_rejected,
            membership_applied,
            origin_health_changes,
            origin_checks_not_made,
            purge_log_read,
            recent_purges: Default::default(),
        })
    }

    /// Counts one answered request.
    pub fn request(&self, kind: &str, status: u16, cache: &str, source: &str, bytes: u64) {
        let code = http::StatusCode::from_u16(status).ok();
        let status = code.as_ref().map_or("0", http::StatusCode::as_str);
        self.requests.with_label_values(&[kind, status, cache]).inc();
        self.bytes.with_label_values(&[kind, source]).inc_by(bytes);
    }

    /// Every family with its current values (what `/metrics` renders).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// Notes a purge for the status page (the last [`RECENT_PURGES`]). The
    /// same target again within a minute is the same purge arriving by
    /// another way (the admin call, then each origin's purge log).
    pub fn purged(&self, target: String, removed: usize) {
        let mut recent = self.recent_purges.lock();
        let now = std::time::SystemTime::now();
        let same = recent.iter_mut().rev().find(|p| {
            p.target == target && now.duration_since(p.at).is_ok_and(|d| d < std::time::Duration::from_secs(60))
        });
        if let Some(p) = same {
            p.removed += removed;
            return;
        }
        recent.push_back(crate::status::PurgeNote { at: now, target, removed });
        while recent.len() > RECENT_PURGES {
            recent.pop_front();
        }
    }

    pub fn recent_purges(&self) -> Vec<crate::status::PurgeNote> {
        self.recent_purges.lock().iter().cloned().collect()
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
