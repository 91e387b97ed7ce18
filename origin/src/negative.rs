//! The negative cache: upstream 404/410 answers, remembered for a short TTL
//! in bounded memory. Only not-found answers go here, never failures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct NegativeCache {
    capacity: usize,
    entries: Mutex<HashMap<String, (Instant, u16, String)>>,
}

impl NegativeCache {
    pub fn new(capacity: usize) -> NegativeCache {
        NegativeCache { capacity, entries: Mutex::new(HashMap::new()) }
    }

    /// The remembered status and message for `key`, if still fresh.
    pub fn get(&self, key: &str) -> Option<(u16, String)> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((until, status, msg)) if *until > Instant::now() => Some((*status, msg.clone())),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: &str, status: u16, message: String, ttl: Duration) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            let now = Instant::now();
            map.retain(|_, (until, ..)| *until > now);
            if map.len() >= self.capacity {
                // Still full of fresh entries: forget the oldest half.
                let mut ages: Vec<Instant> = map.values().map(|(u, ..)| *u).collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                map.retain(|_, (until, ..)| *until > cut);
            }
        }
        map.insert(key.to_string(), (Instant::now() + ttl, status, message));
    }

    pub fn remove(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
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
        assert!(c.entries.lock().map(|m| m.len()).unwrap_or(0) <= 4);
        assert!(c.get("k99").is_some());
    }
}
