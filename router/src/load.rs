//! The live load view of origins: in-flight requests and Peak-EWMA latency
//! per member, health from active checks and observed failures, and running
//! totals per region so that a bounded-load decision reads a few atomics
//! instead of summing over every member.
//!
//! Edges update it on every request (begin/finish with latency and outcome)
//! and from the origins' load reports; routing reads it without locks.

use std::collections::{HashMap, HashSet};
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

/// Running totals of a region's members.
#[derive(Debug, Default)]
pub struct RegionStats {
    /// Sum of the members' effective loads.
    pub load: AtomicI64,
    /// Members up.
    pub healthy: AtomicI64,
}

/// One member's live numbers.
#[derive(Debug)]
pub struct MemberStats {
    in_flight: AtomicI64,
    /// Load the origin itself reported (in-flight requests from all edges).
    reported: AtomicI64,
    /// max(in_flight, reported), as last added to the region total.
    effective: AtomicI64,
    /// Peak-EWMA latency in microseconds (f64 bits) and when last updated.
    ewma_us: AtomicU64,
    ewma_at: RwLock<Instant>,
    healthy: AtomicBool,
    /// Times it went out of routing or came back.
    health_changes: AtomicU64,
    /// Health checks this process could not make (no socket to ask with).
    checks_not_made: AtomicU64,
    fails: AtomicU32,
    successes: AtomicU32,
    region: RwLock<Option<Arc<RegionStats>>>,
}

impl MemberStats {
    fn new() -> MemberStats {
        MemberStats {
            in_flight: AtomicI64::new(0),
            reported: AtomicI64::new(0),
            effective: AtomicI64::new(0),
            ewma_us: AtomicU64::new(0f64.to_bits()),
            ewma_at: RwLock::new(Instant::now()),
            healthy: AtomicBool::new(true),
            health_changes: AtomicU64::new(0),
            checks_not_made: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            region: RwLock::new(None),
        }
    }

    /// The load used for bounded-load decisions: what this edge has in
    /// flight, or what the origin reported, whichever is larger.
    pub fn load(&self) -> i64 {
        self.effective.load(Ordering::Relaxed)
    }

    pub fn ewma_us(&self) -> f64 {
        f64::from_bits(self.ewma_us.load(Ordering::Relaxed))
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn region(&self) -> Option<Arc<RegionStats>> {
        self.region.read().ok().and_then(|r| r.clone())
    }

    /// Recomputes the effective load and moves the region total by the
    /// difference (a swap, so concurrent updates still sum correctly).
    fn settle(&self) {
        let new = self.in_flight.load(Ordering::Relaxed).max(self.reported.load(Ordering::Relaxed)).max(0);
        let old = self.effective.swap(new, Ordering::Relaxed);
        if new != old {
            if let Some(r) = self.region() {
                r.load.fetch_add(new - old, Ordering::Relaxed);
            }
        }
    }

    fn set_healthy(&self, up: bool) {
        if self.healthy.swap(up, Ordering::Relaxed) != up {
            self.health_changes.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = self.region() {
                r.healthy.fetch_add(if up { 1 } else { -1 }, Ordering::Relaxed);
            }
        }
    }

    /// Moves this member's load and health from its old region's totals to `to`.
    fn attach(&self, to: Option<Arc<RegionStats>>) {
        let Ok(mut slot) = self.region.write() else { return };
        let same = match (&*slot, &to) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let (load, up) = (self.effective.load(Ordering::Relaxed), self.is_healthy() as i64);
        if let Some(old) = slot.take() {
            old.load.fetch_sub(load, Ordering::Relaxed);
            old.healthy.fetch_sub(up, Ordering::Relaxed);
        }
        if let Some(new) = &to {
            new.load.fetch_add(load, Ordering::Relaxed);
            new.healthy.fetch_add(up, Ordering::Relaxed);
        }
        *slot = to;
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
                self.set_healthy(true);
            }
        } else {
            self.successes.store(0, Ordering::Relaxed);
            let f = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && f >= policy.fall {
                self.set_healthy(false);
            }
        }
    }
}

/// Live numbers of every member, by id, and of every region, by name.
#[derive(Debug, Default)]
pub struct LoadView {
    policy: HealthPolicy,
    members: RwLock<HashMap<String, Arc<MemberStats>>>,
    regions: RwLock<HashMap<String, Arc<RegionStats>>>,
}

/// Counts a request in flight until dropped; [`InFlight::finish`] also
/// records its latency and outcome.
pub struct InFlight {
    stats: Arc<MemberStats>,
    started: Instant,
    policy: HealthPolicy,
}

impl InFlight {
    /// Records how the request went (a transport failure or 5xx is `ok = false`).
    pub fn finish(self, ok: bool) {
        self.stats.observe_latency(self.started.elapsed(), self.policy.ewma_decay);
        self.stats.record(ok, &self.policy);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.stats.settle();
    }
}

impl LoadView {
    pub fn new(policy: HealthPolicy) -> LoadView {
        LoadView { policy, ..LoadView::default() }
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

    /// The totals of `region`, created on first use.
    pub fn region(&self, name: &str) -> Arc<RegionStats> {
        if let Some(s) = self.regions.read().ok().and_then(|m| m.get(name).cloned()) {
            return s;
        }
        let mut map = self.regions.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(name.to_string()).or_default())
    }

    /// Places members in regions (a new membership): each member's load
    /// and health count toward its region; members not listed count nowhere.
    pub fn assign(&self, placement: &[(&str, &str)]) {
        let listed: HashSet<&str> = placement.iter().map(|(id, _)| *id).collect();
        let all: Vec<(String, Arc<MemberStats>)> = self
            .members
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect())
            .unwrap_or_default();
        for (id, stats) in all {
            if !listed.contains(id.as_str()) {
                stats.attach(None);
            }
        }
        for (id, region) in placement {
            self.member(id).attach(Some(self.region(region)));
        }
    }

    /// Counts a request to `id` as in flight.
    pub fn begin(&self, id: &str) -> InFlight {
        let stats = self.member(id);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.settle();
        InFlight { stats, started: Instant::now(), policy: self.policy }
    }

    /// An active health check's result.
    pub fn check_result(&self, id: &str, ok: bool) {
        self.member(id).record(ok, &self.policy);
    }

    /// Takes `id` out of routing now (its port refuses connections); it
    /// comes back after `rise` successful checks.
    pub fn mark_down(&self, id: &str) {
        let s = self.member(id);
        s.successes.store(0, Ordering::Relaxed);
        s.set_healthy(false);
    }

    /// A load report from the origin itself.
    pub fn report(&self, id: &str, in_flight: i64, latency: Option<Duration>) {
        let s = self.member(id);
        s.reported.store(in_flight, Ordering::Relaxed);
        s.settle();
        if let Some(l) = latency {
            s.observe_latency(l, self.policy.ewma_decay);
        }
    }

    pub fn is_healthy(&self, id: &str) -> bool {
        self.member(id).is_healthy()
    }

    /// A health check of `id` this process could not make (out of
    /// descriptors or ports): counted, and nothing else.
    pub fn check_not_made(&self, id: &str) {
        self.member(id).checks_not_made.fetch_add(1, Ordering::Relaxed);
    }

    /// How many health checks of `id` were not made since start.
    pub fn checks_not_made(&self, id: &str) -> u64 {
        self.member(id).checks_not_made.load(Ordering::Relaxed)
    }

    /// How many times `id` went out of routing or came back since start.
    pub fn health_changes(&self, id: &str) -> u64 {
        self.member(id).health_changes.load(Ordering::Relaxed)
    }

    pub fn load(&self, id: &str) -> i64 {
        self.member(id).load()
    }

    pub fn ewma_us(&self, id: &str) -> f64 {
        self.member(id).ewma_us()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_health_and_region_totals() {
        let v = LoadView::new(HealthPolicy { fall: 2, rise: 2, ewma_decay: Duration::from_secs(1) });
        v.assign(&[("a", "r1"), ("b", "r1"), ("c", "r2")]);
        let r1 = v.region("r1");
        assert_eq!(r1.healthy.load(Ordering::Relaxed), 2);
        let x = v.begin("a");
        let y = v.begin("a");
        assert_eq!((v.load("a"), r1.load.load(Ordering::Relaxed)), (2, 2));
        x.finish(false);
        assert!(v.is_healthy("a"), "one failure is not enough");
        y.finish(false);
        assert!(!v.is_healthy("a"), "down after two");
        assert_eq!((v.load("a"), r1.load.load(Ordering::Relaxed), r1.healthy.load(Ordering::Relaxed)), (0, 0, 1));
        v.check_result("a", true);
        assert!(!v.is_healthy("a"));
        v.check_result("a", true);
        assert!(v.is_healthy("a"), "up after two successes");
        assert_eq!(r1.healthy.load(Ordering::Relaxed), 2);

        v.report("b", 7, Some(Duration::from_millis(30)));
        assert_eq!((v.load("b"), r1.load.load(Ordering::Relaxed)), (7, 7));
        assert!((v.ewma_us("b") - 30_000.0).abs() < 1.0, "a peak replaces the average");
        v.report("b", 7, Some(Duration::from_millis(1)));
        assert!(v.ewma_us("b") < 30_000.0 && v.ewma_us("b") > 1_000.0, "lower samples decay in");

        // b moves to r2, a leaves the membership.
        v.assign(&[("b", "r2"), ("c", "r2")]);
        let r2 = v.region("r2");
        assert_eq!((r1.load.load(Ordering::Relaxed), r1.healthy.load(Ordering::Relaxed)), (0, 0));
        assert_eq!((r2.load.load(Ordering::Relaxed), r2.healthy.load(Ordering::Relaxed)), (7, 2));
    }
}
