//! The live load view of origins: in-flight requests and Peak-EWMA latency
//! per member, and health from active checks and observed failures.
//!
//! Edges update it on every request (begin/end with latency and outcome)
//! and from the origins' load reports; routing reads it lock-free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Health thresholds (as in HAProxy/Envoy): down after `fall` consecutive
/// failures, up again after `rise` consecutive successes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    pub fall: u32,
    pub rise: u32,
    /// Decay time of the latency EWMA.
    pub ewma_decay: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy { fall: 3, rise: 2, ewma_decay: Duration::from_secs(10) }
    }
}

/// One member's live numbers.
#[derive(Debug)]
pub struct MemberStats {
    in_flight: AtomicI64,
    /// Load the origin itself reported (in-flight requests from all edges).
    reported: AtomicI64,
    /// Peak-EWMA latency in microseconds (f64 bits) and when last updated.
    ewma_us: AtomicU64,
    ewma_at: RwLock<Instant>,
    healthy: AtomicBool,
    fails: AtomicU32,
    successes: AtomicU32,
}

impl MemberStats {
    fn new() -> MemberStats {
        MemberStats {
            in_flight: AtomicI64::new(0),
            reported: AtomicI64::new(0),
            ewma_us: AtomicU64::new(0f64.to_bits()),
            ewma_at: RwLock::new(Instant::now()),
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            successes: AtomicU32::new(0),
        }
    }

    /// The load used for bounded-load decisions: what this edge has in
    /// flight, or what the origin reported, whichever is larger.
    pub fn load(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed).max(self.reported.load(Ordering::Relaxed)).max(0)
    }

    pub fn ewma_us(&self) -> f64 {
        f64::from_bits(self.ewma_us.load(Ordering::Relaxed))
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Peak-EWMA (Finagle, linkerd): a sample above the average replaces it
    /// at once; below it, the average decays towards it with time.
    fn observe_latency(&self, sample: Duration, decay: Duration) {
        let now = Instant::now();
        let sample_us = sample.as_secs_f64() * 1e6;
        let Ok(mut at) = self.ewma_at.write() else { return };
        let prev = self.ewma_us();
        let next = if sample_us > prev {
            sample_us
        } else {
            let elapsed = now.saturating_duration_since(*at).as_secs_f64();
            let w = (-elapsed / decay.as_secs_f64().max(1e-3)).exp();
            prev * w + sample_us * (1.0 - w)
        };
        *at = now;
        self.ewma_us.store(next.to_bits(), Ordering::Relaxed);
    }

    fn record(&self, ok: bool, policy: &HealthPolicy) {
        if ok {
            self.fails.store(0, Ordering::Relaxed);
            let s = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && s >= policy.rise {
                self.healthy.store(true, Ordering::Relaxed);
            }
        } else {
            self.successes.store(0, Ordering::Relaxed);
            let f = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && f >= policy.fall {
                self.healthy.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// Live numbers of every member, by id.
#[derive(Debug, Default)]
pub struct LoadView {
    policy: HealthPolicy,
    members: RwLock<HashMap<String, Arc<MemberStats>>>,
}

/// Marks a request in flight until dropped; then call [`InFlight::finish`]
/// to record its latency and outcome.
pub struct InFlight {
    stats: Arc<MemberStats>,
    started: Instant,
    decay: Duration,
}

impl InFlight {
    /// Records how the request went (a transport failure or 5xx is `ok = false`).
    pub fn finish(self, ok: bool, policy: &HealthPolicy) {
        self.stats.observe_latency(self.started.elapsed(), self.decay);
        self.stats.record(ok, policy);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LoadView {
    pub fn new(policy: HealthPolicy) -> LoadView {
        LoadView { policy, members: RwLock::new(HashMap::new()) }
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// The stats of `id`, created on first use.
    pub fn member(&self, id: &str) -> Arc<MemberStats> {
        if let Some(s) = self.members.read().ok().and_then(|m| m.get(id).cloned()) {
            return s;
        }
        let mut map = self.members.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(id.to_string()).or_insert_with(|| Arc::new(MemberStats::new())))
    }

    /// Counts a request to `id` as in flight.
    pub fn begin(&self, id: &str) -> InFlight {
        let stats = self.member(id);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { stats, started: Instant::now(), decay: self.policy.ewma_decay }
    }

    /// An active health check's result.
    pub fn check_result(&self, id: &str, ok: bool) {
        self.member(id).record(ok, &self.policy);
    }

    /// A load report from the origin itself.
    pub fn report(&self, id: &str, in_flight: i64, latency: Option<Duration>) {
        let s = self.member(id);
        s.reported.store(in_flight, Ordering::Relaxed);
        if let Some(l) = latency {
            s.observe_latency(l, self.policy.ewma_decay);
        }
    }

    pub fn is_healthy(&self, id: &str) -> bool {
        self.members.read().ok().and_then(|m| m.get(id).map(|s| s.is_healthy())).unwrap_or(true)
    }

    pub fn load(&self, id: &str) -> i64 {
        self.members.read().ok().and_then(|m| m.get(id).map(|s| s.load())).unwrap_or(0)
    }

    pub fn ewma_us(&self, id: &str) -> f64 {
        self.members.read().ok().and_then(|m| m.get(id).map(|s| s.ewma_us())).unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_and_health_falls_and_rises() {
        let v = LoadView::new(HealthPolicy { fall: 2, rise: 2, ewma_decay: Duration::from_secs(1) });
        let a = v.begin("a");
        let b = v.begin("a");
        assert_eq!(v.load("a"), 2);
        a.finish(false, v.policy());
        assert!(v.is_healthy("a"), "one failure is not enough");
        b.finish(false, v.policy());
        assert!(!v.is_healthy("a"), "down after two");
        assert_eq!(v.load("a"), 0);
        v.check_result("a", true);
        assert!(!v.is_healthy("a"));
        v.check_result("a", true);
        assert!(v.is_healthy("a"), "up after two successes");
        v.report("b", 7, Some(Duration::from_millis(30)));
        assert_eq!(v.load("b"), 7);
        assert!((v.ewma_us("b") - 30_000.0).abs() < 1.0, "a peak replaces the average");
        v.report("b", 7, Some(Duration::from_millis(1)));
        assert!(v.ewma_us("b") < 30_000.0 && v.ewma_us("b") > 1_000.0, "lower samples decay in");
        assert!(v.is_healthy("unknown") && v.load("unknown") == 0);
    }
}
