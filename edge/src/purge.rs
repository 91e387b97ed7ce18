//! Purges: what they target, applying them to this edge's cache, and
//! following the origins' purge logs so every edge applies every purge,
//! including those made while it was down.
//!
//! An origin's log is a sequence of entries numbered from 1 (`GET
//! /purgez?after=N` on the origin's operator listener, with the cluster token). The edge remembers, per origin, the last
//! number it applied, in `purge-cursors.json` in its cache directory; applying
//! an entry twice is harmless, so a lost cursor only costs refetches.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use modcdn_router::watch::Membership;
pub use modcdn_shared::purge::{LogEntry, LogPage, Target};

use crate::metrics::Metrics;
use crate::storage::CacheStore;

/// Applies `target` to the cache; returns how many entries it removed.
/// A path covers also its per-credential copies, a module everything
/// under `<escaped module>/@`.
pub async fn apply(store: &'static CacheStore, metrics: &Metrics, target: &Target) -> usize {
    let removed = match target.keys() {
        (prefix, true) => store.purge_prefix(&prefix).await,
        (key, false) => {
            let exact = store.purge_key(&key).await.map(usize::from);
            let copies = store.purge_prefix(&crate::storage::credential_copies(&key)).await;
            exact.and_then(|n| copies.map(|m| n + m))
        }
    };
    let removed = removed.unwrap_or_else(|e| {
        tracing::error!(?target, error = %e, "purge failed");
        0
    });
    metrics.purges.inc();
    metrics.purged_keys.inc_by(removed as u64);
    let (name, value) = target.query();
    metrics.purged(format!("{name}={value}"), removed);
    tracing::info!(?target, removed, "purged");
    removed
}

/// Follows every origin's purge log.
pub struct Follower {
    pub membership: Arc<Membership>,
    pub store: &'static CacheStore,
    pub metrics: Arc<Metrics>,
    pub cursors_file: PathBuf,
    pub interval: Duration,
    /// Origins' listeners, with the cluster token for the operator ones.
    pub origins: crate::origins::OriginClient,
}

impl Follower {
    fn load_cursors(&self) -> HashMap<String, u64> {
        std::fs::read(&self.cursors_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn save_cursors(&self, cursors: &HashMap<String, u64>) {
        let tmp = self.cursors_file.with_extension("tmp");
        let write = serde_json::to_vec(cursors)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.cursors_file));
        if let Err(e) = write {
            tracing::warn!(file = %self.cursors_file.display(), error = %e, "purge cursors not saved");
        }
    }

    /// Polls each origin once; returns the entries applied.
    pub async fn poll_once(&self, cursors: &mut HashMap<String, u64>) -> usize {
        let snapshot = self.membership.snapshot();
        let mut applied = 0;
        for member in snapshot.topology.members() {
            let after = cursors.get(&member.id).copied().unwrap_or(0);
            let path = format!("/purgez?after={after}");
            let got = self.origins.operator(reqwest::Method::GET, &member.operator, &path).send().await;
            let page = match got.and_then(|r| r.error_for_status()) {
                Ok(r) => r.json::<LogPage>().await,
                Err(e) => Err(e),
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(origin = %member.id, error = %e, "purge log not read");
                    continue;
                }
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            self.metrics.purge_log_read.with_label_values(&[member.id.as_str()]).set(now.as_secs_f64());
            // A log that went backwards was started anew: read it all again.
            if page.last < after {
                cursors.insert(member.id.clone(), 0);
                continue;
            }
            for entry in page.entries.iter().filter(|e| e.seq > after) {
                apply(self.store, &self.metrics, &entry.target).await;
                applied += 1;
                cursors.insert(member.id.clone(), entry.seq);
            }
        }
        if applied > 0 {
            self.save_cursors(cursors);
        }
        applied
    }

    /// Polls until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut cursors = self.load_cursors();
        loop {
            self.poll_once(&mut cursors).await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
