//! The negative cache: upstream 404/410 answers, remembered for a short TTL
//! in bounded memory. Only not-found answers go here, never failures.

use std::time::{Duration, Instant};

/// Bounded by entries (quick_cache's S3-FIFO evicts the coldest when full);
/// an expired entry is dropped when it is next read.
pub struct NegativeCache {
    entries: quick_cache::sync::Cache<String, (Instant, u16, String)>,
}

impl NegativeCache {
    pub fn new(capacity: usize) -> NegativeCache {
        NegativeCache { entries: quick_cache::sync::Cache::new(capacity.max(1)) }
    }

    /// The remembered status and message for `key`, if still fresh.
    pub fn get(&self, key: &str) -> Option<(u16, String)> {
        match self.entries.get(key) {
            Some((until, status, msg)) if until > Instant::now() => Some((status, msg)),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: &str, status: u16, message: String, ttl: Duration) {
        self.entries.insert(key.to_string(), (Instant::now() + ttl, status, message));
    }

    pub fn remove(&self, key: &str) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_stays_bounded() {
        let c = NegativeCache::new(4);
        c.insert("a", 404, "nf".into(), Duration::from_secs(60));
        assert_eq!(c.get("a"), Some((404, "nf".into())));
        c.insert("b", 410, "gone".into(), Duration::ZERO);
        assert_eq!(c.get("b"), None);
        for i in 0..100 {
            c.insert(&format!("k{i}"), 404, String::new(), Duration::from_secs(60 + i));
        }
        assert!(c.entries.len() <= 4, "{} entries", c.entries.len());
        assert!(c.get("k99").is_some());
    }
}
