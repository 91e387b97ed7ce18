//! Hot modules: which modules clients ask for most, lately. Space-Saving
//! (Metwally, Agrawal, El Abbadi) keeps the top K in bounded memory; forward
//! exponential decay (each hit weighs 2^(age / half-life) more than one at
//! the start) makes old popularity fade without touching every counter.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A count, ordered (`total_cmp`) so that the least counted module is the
/// first of a `BTreeSet`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Count(f64);

impl Eq for Count {}
impl PartialOrd for Count {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Count {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

struct Inner {
    counts: HashMap<String, f64>,
    /// The same counts ordered, so the least counted is found in O(log K)
    /// rather than by a scan under the lock.
    order: BTreeSet<(Count, String)>,
    epoch: Instant,
}

/// Where a [`HotSet`] reads the time (tests advance their own).
pub type Clock = std::sync::Arc<dyn Fn() -> Instant + Send + Sync>;

pub struct HotSet {
    k: usize,
    half_life: Duration,
    inner: Mutex<Inner>,
    clock: Clock,
}

/// Weights above this are folded back (every count divided), so they stay
/// far from f64's limits.
const RESCALE_AT: f64 = 1e100;

/// The most requests one record may count: a report claiming more is no
/// edge's honest count, and bounded weights keep every sum finite.
pub const MAX_REQUESTS: f64 = 1e9;

impl HotSet {
    pub fn new(k: usize, half_life: Duration) -> HotSet {
        HotSet::with_clock(k, half_life, std::sync::Arc::new(Instant::now))
    }

    pub fn with_clock(k: usize, half_life: Duration, clock: Clock) -> HotSet {
        let inner = Inner { counts: HashMap::new(), order: BTreeSet::new(), epoch: clock() };
        HotSet { k: k.max(1), half_life, inner: Mutex::new(inner), clock }
    }

    fn weight(&self, inner: &Inner, now: Instant) -> f64 {
        let age = now.saturating_duration_since(inner.epoch).as_secs_f64();
        (age / self.half_life.as_secs_f64().max(1e-3)).exp2()
    }

    /// Counts one request for `module` (escaped path).
    pub fn record(&self, module: &str) {
        self.record_weighted(module, 1.0);
    }

    /// Counts `requests` requests for `module` now (how an origin takes in
    /// the hot sets edges report: what they served from cache). Weights
    /// that are not finite, not positive or above [`MAX_REQUESTS`] are
    /// ignored. O(log K).
    pub fn record_weighted(&self, module: &str, requests: f64) {
        if !(requests.is_finite() && requests > 0.0 && requests <= MAX_REQUESTS) {
            return;
        }
        let now = (self.clock)();
        let Ok(mut inner) = self.inner.lock() else { return };
        let inner = &mut *inner;
        let mut w = self.weight(inner, now);
        if w * requests > RESCALE_AT {
            for c in inner.counts.values_mut() {
                *c /= w;
            }
            inner.order = inner.counts.iter().map(|(k, c)| (Count(*c), k.clone())).collect();
            inner.epoch = now;
            w = 1.0;
        }
        let w = w * requests;
        if let Some(c) = inner.counts.get_mut(module) {
            inner.order.remove(&(Count(*c), module.to_string()));
            *c += w;
            inner.order.insert((Count(*c), module.to_string()));
            return;
        }
        let mut count = w;
        if inner.counts.len() >= self.k {
            // Space-Saving: the newcomer takes the place of the least
            // counted, inheriting its count (an overestimate bounded by that
            // minimum).
            let Some((min, min_key)) = inner.order.pop_first() else { return };
            inner.counts.remove(&min_key);
            count += min.0;
        }
        inner.counts.insert(module.to_string(), count);
        inner.order.insert((Count(count), module.to_string()));
    }

    /// The `n` hottest modules, as [`HotSet::top`], and forgets every
    /// count: what an edge reports as the requests of one interval.
    pub fn take(&self, n: usize) -> Vec<(String, f64)> {
        let top = self.top(n);
        if let Ok(mut inner) = self.inner.lock() {
            inner.counts.clear();
            inner.order.clear();
            inner.epoch = (self.clock)();
        }
        top
    }

    /// The `n` hottest modules, hottest first, with their decayed counts
    /// (in requests as of now).
    pub fn top(&self, n: usize) -> Vec<(String, f64)> {
        let Ok(inner) = self.inner.lock() else { return Vec::new() };
        let w = self.weight(&inner, (self.clock)());
        let mut v: Vec<(String, f64)> = inner.counts.iter().map(|(k, c)| (k.clone(), c / w)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_records_add_up_and_take_resets() {
        let h = HotSet::new(4, Duration::from_secs(3600));
        h.record("a");
        h.record_weighted("b", 5.0);
        h.record_weighted("c", f64::NAN);
        h.record_weighted("d", -1.0);
        h.record_weighted("e", 1e308);
        h.record_weighted("f", f64::INFINITY);
        let top = h.take(10);
        assert_eq!(top.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert!((top[0].1 - 5.0).abs() < 0.01, "{top:?}");
        assert!(h.top(10).is_empty());
    }

    #[test]
    fn keeps_the_heavy_hitters_in_bounded_memory() {
        let h = HotSet::new(10, Duration::from_secs(3600));
        let mut x: u64 = 7;
        for i in 0..20_000 {
            // 30% to one module, 10% to another, the rest spread over 5000.
            let m = match i % 10 {
                0..=2 => "hot.example/a".to_string(),
                3 => "warm.example/b".to_string(),
                _ => {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("cold.example/m{}", x % 5000)
                }
            };
            h.record(&m);
        }
        let top = h.top(2);
        assert_eq!(top.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(), vec!["hot.example/a", "warm.example/b"]);
        assert!((top[0].1 - 6000.0).abs() < 50.0, "{top:?}");
        assert!(h.top(100).len() <= 10);
    }

    #[test]
    fn old_popularity_fades() {
        let start = Instant::now();
        let now = std::sync::Arc::new(Mutex::new(start));
        let clock = std::sync::Arc::clone(&now);
        let h =
            HotSet::with_clock(10, Duration::from_secs(60), std::sync::Arc::new(move || *clock.lock().expect("clock")));
        for _ in 0..100 {
            h.record("old.example/x");
        }
        *now.lock().expect("clock") = start + Duration::from_secs(6 * 60);
        for _ in 0..10 {
            h.record("new.example/y");
        }
        let top = h.top(2);
        assert_eq!(top[0].0, "new.example/y", "100 requests six half-lives ago weigh less than 10 now");
        assert!((top[0].1 - 10.0).abs() < 1e-9 && (top[1].1 - 100.0 / 64.0).abs() < 1e-9, "{top:?}");
    }
}
