//! Dependency prefetch: when the origin serves a `.mod`, the `.mod` and
//! `.info` of that module's requirements are queued, because the go command
//! asks for them next while it walks the module graph; their `.zip`s go to
//! a queue of their own (`go mod download` asks for them once the graph is
//! walked), bounded by `zip_queue` and run by their own workers, so zips
//! never hold up the graph walk. Bounded in depth
//! (requirements of requirements), width (requirements per go.mod) and queue
//! length, deduplicated, and run by its own few workers so that it never
//! takes more than its share from client traffic. A client that asks for an
//! artifact being prefetched joins that fetch.

use std::sync::{Arc, Mutex};

use modcdn_shared::module::{ModulePath, Version};
use modcdn_shared::{gomod, Request};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::pull::{self, Trigger};
use crate::Origin;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefetchConfig {
    /// Prefetch requirements of served go.mod files. Default true.
    pub enabled: bool,
    /// Levels of requirements followed from a served go.mod. Default 3.
    pub depth: u32,
    /// Requirements taken from one go.mod. Default 64.
    pub width: usize,
    /// Concurrent prefetch fetches. Default 4.
    pub workers: usize,
    /// Queued prefetches at most; more are dropped. Default 10000.
    pub queue: usize,
    /// Queued `.zip` prefetches at most (their own budget; 0 turns zip
    /// prefetch off). Default 512.
    pub zip_queue: usize,
    /// Concurrent `.zip` prefetches. Default 2.
    pub zip_workers: usize,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig { enabled: true, depth: 3, width: 64, workers: 4, queue: 10_000, zip_queue: 512, zip_workers: 2 }
    }
}

struct Job {
    req: Request,
    depth: u32,
}

/// Keys remembered in insertion order, at most `cap`.
struct Recent(lru::LruCache<String, ()>);

impl Recent {
    fn new(cap: usize) -> Recent {
        Recent(lru::LruCache::new(std::num::NonZeroUsize::new(cap).unwrap_or(std::num::NonZeroUsize::MIN)))
    }
    /// Adds `key`, forgetting the oldest past the capacity; false if it was
    /// there already.
    fn insert(&mut self, key: String) -> bool {
        if self.0.contains(&key) {
            return false;
        }
        self.0.put(key, ());
        true
    }
}

pub struct Prefetcher {
    cfg: PrefetchConfig,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    zip_tx: mpsc::Sender<Job>,
    zip_rx: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Recently queued keys, so one artifact is queued once.
    queued: Mutex<Recent>,
    /// Prefetched or synced keys not yet asked for by a client, with what
    /// fetched them (usefulness).
    fetched: Mutex<lru::LruCache<String, Trigger>>,
}

impl Prefetcher {
    pub fn new(cfg: &PrefetchConfig) -> Prefetcher {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let (zip_tx, zip_rx) = mpsc::channel(cfg.zip_queue.max(1));
        Prefetcher {
            cfg: cfg.clone(),
            tx,
            rx: Mutex::new(Some(rx)),
            zip_tx,
            zip_rx: Mutex::new(Some(zip_rx)),
            queued: Mutex::new(Recent::new(cfg.queue.max(1) * 4)),
            fetched: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(100_000).expect("non-zero"))),
        }
    }

    /// Queues the requirements of a go.mod served at `depth` (0 for one a
    /// client asked for).
    pub fn after_mod(&self, origin: &Origin, go_mod: &[u8], depth: u32) {
        if !self.cfg.enabled || depth >= self.cfg.depth {
            return;
        }
        let text = String::from_utf8_lossy(go_mod);
        for (path, version) in gomod::requires(&text).into_iter().take(self.cfg.width) {
            let (Ok(m), Ok(v)) = (ModulePath::new(&path), Version::new(&version)) else { continue };
            let zip = (self.cfg.zip_queue > 0).then(|| Request::Zip(m.clone(), v.clone()));
            for req in [Request::Mod(m.clone(), v.clone()), Request::Info(m.clone(), v.clone())].into_iter().chain(zip)
            {
                let fresh = self.queued.lock().map(|mut q| q.insert(req.key())).unwrap_or(false);
                if !fresh {
                    continue;
                }
                let queue = if matches!(req, Request::Zip(..)) { &self.zip_tx } else { &self.tx };
                if queue.try_send(Job { req, depth: depth + 1 }).is_err() {
                    origin.metrics.prefetch_dropped.inc();
                }
            }
        }
        origin.metrics.prefetch_queue.set(self.queued_now() as i64);
    }

    /// Records that a fetch before any client asked (`by` prefetch or sync)
    /// brought `key`.
    pub fn mark_fetched(&self, origin: &Origin, key: &str, by: Trigger) {
        origin.metrics.warmed.with_label_values(&[by.as_str()]).inc();
        if let Ok(mut f) = self.fetched.lock() {
            f.put(key.to_string(), by);
        }
    }

    /// A client asked for `key`; counts it for what brought it, if that was
    /// a prefetch or sync.
    pub fn client_asked(&self, origin: &Origin, key: &str) {
        if let Some(by) = self.fetched.lock().ok().and_then(|mut f| f.pop(key)) {
            origin.metrics.warmed_useful.with_label_values(&[by.as_str()]).inc();
        }
    }

    /// Starts the workers (once): `workers` for `.mod`/`.info`,
    /// `zip_workers` for zips.
    pub fn start(origin: &Arc<Origin>) {
        let cfg = &origin.warm.prefetch.cfg;
        let take = |rx: &Mutex<Option<mpsc::Receiver<Job>>>| rx.lock().ok().and_then(|mut r| r.take());
        let (Some(rx), Some(zip_rx)) = (take(&origin.warm.prefetch.rx), take(&origin.warm.prefetch.zip_rx)) else {
            return;
        };
        if !cfg.enabled {
            return;
        }
        for (rx, workers) in [(rx, cfg.workers.max(1)), (zip_rx, if cfg.zip_queue > 0 { cfg.zip_workers } else { 0 })] {
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..workers {
                let (o, rx) = (Arc::clone(origin), Arc::clone(&rx));
                tokio::spawn(async move {
                    loop {
                        let Some(job) = rx.lock().await.recv().await else { break };
                        o.metrics.prefetch_queue.set(o.warm.prefetch.queued_now() as i64);
                        work(&o, job).await;
                    }
                });
            }
        }
    }

    /// Prefetches waiting, in both queues.
    fn queued_now(&self) -> usize {
        (self.tx.max_capacity() - self.tx.capacity()) + (self.zip_tx.max_capacity() - self.zip_tx.capacity())
    }
}

async fn work(o: &Arc<Origin>, job: Job) {
    let key = job.req.key();
    if !matches!(job.req, Request::Mod(..)) {
        // `.info` and `.zip`: stored is all that is wanted (nothing in them
        // to follow, and a zip is never read into memory here).
        if !pull::exists(o, &key).await {
            fetch(o, &job.req, &key).await;
        }
        return;
    }
    let body = match pull::read(o, &key).await.ok().flatten() {
        Some((_, body)) => body,
        None => match fetch(o, &job.req, &key).await.map(|a| a.body()) {
            Some(Ok(body)) => body,
            _ => return,
        },
    };
    o.warm.prefetch.after_mod(o, &body, job.depth);
}

/// Pulls `req` as a prefetch, counted as one.
async fn fetch(o: &Arc<Origin>, req: &Request, key: &str) -> Option<pull::Artifact> {
    match pull::coalesced(o, req, Trigger::Prefetch).await {
        Ok(artifact) => {
            o.warm.prefetch.mark_fetched(o, key, Trigger::Prefetch);
            Some(artifact)
        }
        Err(e) => {
            tracing::debug!(%key, error = %e, "prefetch failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn recent_keys_stay_bounded() {
        let mut r = Recent::new(2);
        assert!(r.insert("a".into()));
        assert!(!r.insert("a".into()));
        assert!(r.insert("b".into()));
        // Both are among the last two: neither is queued again.
        assert!(!r.insert("a".into()) && !r.insert("b".into()));
        assert!(r.insert("c".into()));
        assert!(r.insert("a".into()), "the oldest is forgotten past the capacity");
    }
}
