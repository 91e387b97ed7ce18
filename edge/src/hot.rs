//! Hot modules at the edge. Origins only see an edge's misses, so each
//! round the edge tells the origin that owns each module how many requests
//! it served for it (`POST /hotz`); origins merge the reports into their hot
//! sets and keep those modules in sync with upstream. The edge then reads the
//! origins' hot lists (`GET /hotz`) and, for the hottest modules it already
//! serves, fetches every newly listed version it does not hold (above all
//! it has, or not in the list it had: a patch on an older line counts) — `.info`, `.mod`, `.zip`
//! through its own listener, so they fill its cache like any miss — and
//! refreshes the module's list. The first client asking for a new version of
//! a hot module gets a hit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use modcdn_router::membership::Snapshot;
use modcdn_router::route::Member;
use modcdn_router::watch::Membership;
use modcdn_shared::hot::HotSet;
use modcdn_shared::module::{self, ModulePath};
use modcdn_shared::policy::{CacheStatus, CACHE_STATUS_HEADER};
use modcdn_shared::semver;

use crate::metrics::Metrics;
use crate::storage::CacheStore;

/// Header on the edge's own prefetch requests, so they are not counted as
/// client demand.
pub const PREFETCH_HEADER: &str = "x-modcdn-prefetch";
/// Modules reported per round at most.
const REPORT: usize = 200;

/// The escaped module of a cache key (`<module>/@v/...`, `<module>/@latest`).
pub fn module_of(key: &str) -> Option<&str> {
    key.split_once("/@").map(|(m, _)| m).filter(|m| !m.starts_with("sumdb/"))
}

/// Clients' demand per module, as the hot set counts it: one request in
/// `SAMPLE` is counted, for that many (hot modules are the ones asked for
/// thousands of times, and a hit stays cheap).
pub struct Demand {
    set: Arc<HotSet>,
    tick: AtomicU64,
}

impl Demand {
    const SAMPLE: u64 = 8;

    pub fn new(set: Arc<HotSet>) -> Demand {
        Demand { set, tick: AtomicU64::new(0) }
    }

    /// Counts a request for `module` that a client asked for itself (not
    /// the edge's own prefetches, not credentialed requests for private
    /// modules).
    pub fn count(&self, module: Option<&str>, client_asked: bool) {
        if !self.tick.fetch_add(1, Ordering::Relaxed).is_multiple_of(Self::SAMPLE) {
            return;
        }
        if let Some(m) = module.filter(|_| client_asked) {
            self.set.record_weighted(m, Self::SAMPLE as f64);
        }
    }
}

pub struct HotSync {
    pub membership: Arc<Membership>,
    pub storage: &'static CacheStore,
    pub hot: Arc<HotSet>,
    pub metrics: Arc<Metrics>,
    /// Origins' listeners, with the cluster token for the operator ones.
    pub origins: crate::origins::OriginClient,
    /// The edge's own region (where its origins are).
    pub region: String,
    /// The edge's own listener, for prefetches.
    pub listen: SocketAddr,
    pub interval: Duration,
    pub modules: usize,
    pub versions: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HotEntry {
    module: String,
    weight: f64,
}

impl HotSync {
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
            self.report().await;
            self.prefetch().await;
        }
    }

    /// The origin that owns `escaped` in this edge's region.
    fn owner(&self, snapshot: &Snapshot, escaped: &str) -> Option<Member> {
        let key = modcdn_shared::module::RoutingKey::of(&ModulePath::from_escaped(escaped).ok()?);
        snapshot.topology.route(&key, &self.region).next().cloned()
    }

    /// Sends each owning origin the requests served since the last report.
    async fn report(&self) {
        let snapshot = self.membership.snapshot();
        let mut by_origin: HashMap<String, Vec<HotEntry>> = HashMap::new();
        for (module, weight) in self.hot.take(REPORT) {
            if let Some(owner) = self.owner(&snapshot, &module) {
                by_origin.entry(owner.operator).or_default().push(HotEntry { module, weight });
            }
        }
        for (address, entries) in by_origin {
            let sent = self.origins.operator(reqwest::Method::POST, &address, "/hotz").json(&entries).send().await;
            if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                tracing::debug!(origin = %address, error = %e, "hot report not delivered");
            }
        }
    }

    /// The hottest modules of this region's origins, hottest first.
    async fn manifest(&self, snapshot: &Snapshot) -> Vec<String> {
        let mut weights: HashMap<String, f64> = HashMap::new();
        for member in snapshot.topology.members().filter(|m| m.region == self.region) {
            let got = self.origins.operator(reqwest::Method::GET, &member.operator, "/hotz").send().await;
            let Ok(entries) = (match got.and_then(|r| r.error_for_status()) {
                Ok(r) => r.json::<Vec<HotEntry>>().await,
                Err(e) => Err(e),
            }) else {
                continue;
            };
            for e in entries {
                *weights.entry(e.module).or_default() += e.weight;
            }
        }
        let mut hot: Vec<(String, f64)> = weights.into_iter().collect();
        hot.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        hot.into_iter().take(self.modules).map(|(m, _)| m).collect()
    }

    /// Fetches, through this edge, the newly listed versions of hot
    /// modules (see [`new_versions`]).
    async fn prefetch(&self) {
        let snapshot = self.membership.snapshot();
        for escaped in self.manifest(&snapshot).await {
            let Ok(m) = ModulePath::from_escaped(&escaped) else { continue };
            let Some(owner) = self.owner(&snapshot, &escaped) else { continue };
            // The edge's own list may be fresh for a while yet; the origin's
            // is what sync keeps current.
            let list = match self.origins.public(&owner.address, &format!("/{escaped}/@v/list")).send().await {
                Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
                _ => continue,
            };
            // The list this edge last cached, to see what was listed since.
            let list_key = format!("{escaped}/@v/list");
            let cached = self.storage.read_cached(&list_key, 1 << 20).await;
            let cached = cached.as_deref().map(String::from_utf8_lossy);
            let all = new_versions(&self.held_versions(&m), cached.as_deref(), &list, usize::MAX);
            let new = &all[..all.len().min(self.versions)];
            for version in new {
                let Ok(v) = module::escape_version(version) else { continue };
                for ext in ["info", "mod", "zip"] {
                    if self.warm(&format!("{escaped}/@v/{v}.{ext}")).await {
                        self.metrics.prefetched.inc();
                    }
                }
            }
            if !new.is_empty() {
                tracing::info!(module = %m.as_str(), versions = ?new, left = all.len() - new.len(), "prefetched new versions of a hot module");
            }
            // The edge's list is refreshed once every new version is in;
            // until then it is what tells the next round what is new.
            if !new.is_empty() && new.len() == all.len() {
                let _ = self.storage.purge_key(&list_key).await;
                self.warm(&list_key).await;
            }
        }
    }

    /// The versions whose `.info` this edge holds for `m`.
    fn held_versions(&self, m: &ModulePath) -> Vec<String> {
        let prefix = format!("{}/@v/", m.escaped());
        self.storage
            .keys_with_prefix(&prefix)
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".info").map(str::to_string))
            .filter_map(|v| module::unescape_version(&v).ok())
            .collect()
    }

    /// GETs `key` through this edge; whether that filled its cache (a 200
    /// that was not already a hit).
    async fn warm(&self, key: &str) -> bool {
        let host = match self.listen.ip() {
            ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        let url = format!("http://{}/{key}", SocketAddr::new(host, self.listen.port()));
        match self.origins.http.get(&url).header(PREFETCH_HEADER, "1").send().await {
            Ok(r) => {
                let hit = CacheStatus::of_header(r.headers().get(CACHE_STATUS_HEADER).map(|v| v.as_bytes()))
                    == CacheStatus::Hit;
                r.status().is_success() && r.bytes().await.is_ok() && !hit
            }
            Err(_) => false,
        }
    }
}

/// The versions of `list` (the origin's, current) to prefetch for a module
/// whose `held` versions this edge serves, newest first, at most `max`:
/// every listed version it does not hold that is above all it holds, or
/// that was not in `cached` (the list this edge had) — so a patch release
/// on an older line, or a release below a prerelease it holds, is taken
/// too. None for a module it holds no version of.
fn new_versions(held: &[String], cached: Option<&str>, list: &str, max: usize) -> Vec<String> {
    // The highest held, prereleases included (not go's @latest rule).
    let Some(newest) = held.iter().max_by(|a, b| semver::compare(a, b)) else { return Vec::new() };
    let before: Option<std::collections::HashSet<&str>> = cached.map(|c| c.lines().map(str::trim).collect());
    let mut new: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|v| semver::is_valid(v) && !held.iter().any(|h| h == v))
        .filter(|v| semver::compare(v, newest).is_gt() || before.as_ref().is_some_and(|b| !b.contains(v)))
        .map(str::to_string)
        .collect();
    semver::sort(&mut new);
    new.dedup();
    new.reverse();
    new.truncate(max);
    new
}

#[cfg(test)]
mod tests {
    #[test]
    fn module_of_keys() {
        assert_eq!(super::module_of("example.com/!upper/@v/v1.0.0.zip"), Some("example.com/!upper"));
        assert_eq!(super::module_of("example.com/a/@latest"), Some("example.com/a"));
        assert_eq!(super::module_of("sumdb/sum.golang.org/lookup/x@v1"), None);
        assert_eq!(super::module_of("nothing"), None);
    }

    fn held(vs: &[&str]) -> Vec<String> {
        vs.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn every_newly_listed_version_is_taken_not_only_the_highest() {
        let held = held(&["v1.4.0", "v2.0.0", "v2.1.0-rc.1"]);
        let before = "v1.4.0\nv2.0.0\nv2.1.0-rc.1\n";
        // A patch on the older major line, a release below the held
        // prerelease, and one above everything: all three, newest first.
        let now = "v1.4.0\nv1.4.1\nv2.0.0\nv2.0.1\nv2.1.0-rc.1\nv2.2.0\n";
        assert_eq!(super::new_versions(&held, Some(before), now, 5), ["v2.2.0", "v2.0.1", "v1.4.1"]);
        assert_eq!(super::new_versions(&held, Some(before), now, 2), ["v2.2.0", "v2.0.1"], "bounded");
        // Already listed before (and not above what it holds): an old
        // version nobody asked for is not fetched.
        let old = "v1.0.0\nv1.4.0\nv2.0.0\nv2.1.0-rc.1\n";
        assert!(super::new_versions(&held, Some(old), old, 5).is_empty());
        // Without a list of its own, only what is above all it holds.
        assert_eq!(super::new_versions(&held, None, now, 5), ["v2.2.0"]);
        // A module it holds nothing of is not its to prefetch.
        assert!(super::new_versions(&[], Some(""), now, 5).is_empty());
    }
}
