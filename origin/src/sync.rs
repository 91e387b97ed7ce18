//! Sync with upstream: on an interval (with jitter), the hottest modules'
//! `list` and `@latest` are refreshed, and versions that newly appeared in
//! the list are fetched (`.info`, `.mod`, `.zip`, validated as any pull)
//! before any client asks — within an upstream request budget per round.

use std::sync::Arc;
use std::time::Duration;

use modcdn_shared::module::{ModulePath, Version};
use modcdn_shared::Request;
use serde::Deserialize;

use crate::pull::{self, Trigger};
use crate::Origin;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Keep hot modules in sync with upstream. Default true.
    pub enabled: bool,
    /// Time between rounds, in milliseconds (±20% jitter). Default 60000.
    pub interval_ms: u64,
    /// Hot modules synced per round. Default 100.
    pub modules: usize,
    /// Upstream requests one round may make at most. Default 300.
    pub budget: usize,
    /// Modules tracked for hotness (Space-Saving capacity). Default 10000.
    pub tracked: usize,
    /// Half-life of a request's weight in the hot set, in seconds. Default 3600.
    pub half_life_secs: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            enabled: true,
            interval_ms: 60_000,
            modules: 100,
            budget: 300,
            tracked: 10_000,
            half_life_secs: 3600,
        }
    }
}

fn versions(list: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(list).lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Starts the sync loop.
pub fn start(origin: &Arc<Origin>, cfg: &SyncConfig) {
    if !cfg.enabled || origin.upstreams.public.is_off() {
        return;
    }
    let (o, cfg) = (Arc::clone(origin), cfg.clone());
    tokio::spawn(async move {
        loop {
            let jitter = 0.8 + fastrand::f64() * 0.4;
            tokio::time::sleep(Duration::from_millis(cfg.interval_ms).mul_f64(jitter)).await;
            round(&o, &cfg).await;
        }
    });
}

/// One sync round.
pub async fn round(o: &Arc<Origin>, cfg: &SyncConfig) {
    o.metrics.sync_rounds.inc();
    let mut budget = cfg.budget;
    for (escaped, _) in o.warm.hot.top(cfg.modules) {
        if budget < 2 {
            tracing::debug!("sync budget spent");
            break;
        }
        let Ok(m) = ModulePath::from_escaped(&escaped) else { continue };
        let list_req = Request::List(m.clone());
        let before = pull::read(o, &list_req.key()).await.ok().flatten().map(|(_, b)| versions(&b));
        budget -= 2;
        if let Err(e) = pull::coalesced(o, &list_req, Trigger::Sync).await {
            tracing::debug!(module = %m, error = %e, "sync: list refresh failed");
            continue;
        }
        let _ = pull::coalesced(o, &Request::Latest(m.clone()), Trigger::Sync).await;
        // Only versions that appeared since the list was last seen: a first
        // sight of a module is not a reason to backfill its history.
        let Some(before) = before else { continue };
        let after = pull::read(o, &list_req.key()).await.ok().flatten().map(|(_, b)| versions(&b)).unwrap_or_default();
        for v in after.iter().filter(|v| !before.contains(v)) {
            let Ok(version) = Version::new(v) else { continue };
            if !version.is_canonical() {
                continue;
            }
            for req in [
                Request::Info(m.clone(), version.clone()),
                Request::Mod(m.clone(), version.clone()),
                Request::Zip(m.clone(), version.clone()),
            ] {
                if budget == 0 {
                    break;
                }
                if pull::exists(o, &req.key()).await {
                    // Brought in this round already (the @latest refresh
                    // reads the newest version's .info and .mod).
                    o.warm.prefetch.mark_fetched(o, &req.key(), Trigger::Sync);
                    continue;
                }
                budget -= 1;
                match pull::coalesced(o, &req, Trigger::Sync).await {
                    Ok(_) => o.warm.prefetch.mark_fetched(o, &req.key(), Trigger::Sync),
                    Err(e) => tracing::debug!(key = %req.key(), error = %e, "sync: new version fetch failed"),
                }
            }
            o.metrics.sync_new_versions.inc();
            tracing::info!(module = %m, version = %v, "sync: new version fetched before any client asked");
        }
    }
}
