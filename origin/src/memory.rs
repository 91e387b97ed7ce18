//! The memory tier: recently used artifacts up to a size, bounded in bytes,
//! so hot hits skip the disk. It holds exactly what the store holds (it is
//! filled on publish and on disk reads), never anything unvalidated.

use std::sync::Arc;

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::store::Meta;

/// An artifact in memory.
#[derive(Debug)]
pub struct Cached {
    pub meta: Meta,
    pub body: Bytes,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<String, Arc<Cached>> for ByBytes {
    fn weight(&self, key: &String, val: &Arc<Cached>) -> u64 {
        // Body, key, and a rough allowance for the record and bookkeeping.
        (val.body.len() + key.len() + 256) as u64
    }
}

pub struct MemoryTier {
    cache: Option<Cache<String, Arc<Cached>, ByBytes>>,
    max_object: u64,
}

impl MemoryTier {
    /// A tier of `budget` bytes keeping bodies up to `max_object` bytes;
    /// a zero budget disables it.
    pub fn new(budget: u64, max_object: u64) -> MemoryTier {
        let cache = (budget > 0).then(|| {
            let estimated_items = (budget / 4096).clamp(16, 1 << 20) as usize;
            Cache::with_weighter(estimated_items, budget, ByBytes)
        });
        MemoryTier { cache, max_object }
    }

    /// Whether a body of `size` bytes would be kept.
    pub fn fits(&self, size: u64) -> bool {
        self.cache.is_some() && size <= self.max_object
    }

    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.cache.as_ref()?.get(key)
    }

    pub fn insert(&self, key: &str, meta: Meta, body: Bytes) -> Option<Arc<Cached>> {
        if !self.fits(body.len() as u64) {
            return None;
        }
        let c = Arc::new(Cached { meta, body });
        self.cache.as_ref()?.insert(key.to_string(), Arc::clone(&c));
        Some(c)
    }

    /// Drops `key`, or with `prefix` every key starting with it (purges).
    pub fn remove(&self, key: &str, prefix: bool) {
        if let Some(c) = &self.cache {
            if prefix {
                c.retain(|k, _| !k.starts_with(key));
            } else {
                c.remove(key);
            }
        }
    }

    /// Bytes held now.
    pub fn weight(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: usize) -> Meta {
        Meta {
            size: size as u64,
            sha256: String::new(),
            h1: None,
            fetched_at_ms: 0,
            upstream: String::new(),
            route: None,
        }
    }

    #[test]
    fn bounded_by_bytes_and_object_size() {
        let m = MemoryTier::new(64 * 1024, 8 * 1024);
        assert!(m.insert("big", meta(9000), Bytes::from(vec![0; 9000])).is_none());
        for i in 0..100 {
            m.insert(&format!("k{i}"), meta(4000), Bytes::from(vec![1; 4000]));
        }
        assert!(m.weight() <= 64 * 1024, "{}", m.weight());
        assert!(m.get("k99").is_some());
        let off = MemoryTier::new(0, 1024);
        assert!(off.insert("a", meta(1), Bytes::from_static(b"a")).is_none());
        assert!(off.get("a").is_none());
    }
}
