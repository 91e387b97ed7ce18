//! modcdn-edge: the tier go clients talk to. A Pingora proxy that answers
//! from its cache (memory tier, then disk) and sends misses, one per key,
//! through the consistent-hash ring to the origin that owns the module in
//! the client's region, moving on to the next candidate when one fails.
//!
//! It must never forward a request it could not parse, never cache an error
//! or a private answer, and never serve a cache entry a crash left partial.
//! The request flow is `lane.rs` (fresh memory-tier hits, before Pingora),
//! then `proxy.rs`, top-down.

pub mod admin;
pub mod bandwidth;
pub mod config;
pub mod conn;
pub mod error;
pub mod hot;
pub mod lane;
pub mod limits;
pub mod metrics;
pub mod miss;
pub mod origins;
pub mod proxy;
pub mod purge;
pub mod status;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use modcdn_router::watch::Membership;
use pingora::cache::eviction::lru::Manager;
use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
use pingora::cache::lock::CacheLock;
use pingora::cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora::cache::trace::Span;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::config::EdgeConfig;
use crate::storage::{cache_key, CacheStore};

/// Shards of the LRU eviction manager.
const LRU_SHARDS: usize = 16;
type Lru = Manager<LRU_SHARDS>;
/// Modules counted between two hot reports at most.
const HOT_TRACKED: usize = 2000;
/// A second with no fill finished: the fills waiting for their durable
/// write are made durable then (see `CacheStore::hurry_when_quiet`).
const QUIET: Duration = Duration::from_secs(1);
/// How often the LRU state is saved besides at shutdown.
const LRU_SAVE_EVERY: Duration = Duration::from_secs(60);

/// Builds the edge from `cfg` and its `membership` (loaded from
/// `cfg.membership`) and serves until SIGTERM/SIGINT, or until a new process
/// takes the sockets over (SIGQUIT). With `upgrade`, takes the listening
/// sockets over from the running edge instead of binding them.
pub fn run(cfg: EdgeConfig, membership: Arc<Membership>, upgrade: bool) -> anyhow::Result<()> {
    let _watch = membership.watch(Duration::from_secs(2)).context("watching membership")?;
    let tls_roots = cfg.origin.tls_ca.as_deref().map(origins::read_ca).transpose().context("origin.tls_ca")?;
    let _health = modcdn_router::health::spawn(Arc::clone(&membership), tls_roots).context("health checks")?;
    let metrics = Arc::new(metrics::Metrics::new()?);

    let (storage, eviction) = open_cache(&cfg)?;
    let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(Duration::from_millis(cfg.cache.lock_timeout_ms)));
    let origins = origins::OriginClient::new(&cfg.origin)?;
    let hot = Arc::new(modcdn_shared::hot::HotSet::new(HOT_TRACKED, Duration::from_secs(3600)));

    let limits = limits::Limits::new(&cfg.rate_limit);
    let bandwidth = Arc::new(bandwidth::Bandwidth::new(&cfg.bandwidth));
    let demand = Arc::new(hot::Demand::new(Arc::clone(&hot)));
    let edge = proxy::Edge {
        membership: Arc::clone(&membership),
        storage,
        eviction,
        lock,
        limits: Arc::clone(&limits),
        bandwidth: Arc::clone(&bandwidth),
        demand: Arc::clone(&demand),
        metrics: Arc::clone(&metrics),
        ttls: modcdn_shared::policy::Ttls {
            private: Duration::from_secs(cfg.cache.private_ttl_secs),
            ..cfg.ttl.ttls()
        },
        cache_private: cfg.cache.private,
        region: cfg.region.clone(),
        retries: cfg.origin.retries,
        connect_timeout: cfg.connect_timeout(),
        read_timeout: cfg.read_timeout(),
        send_timeout: Duration::from_millis(cfg.send_timeout_ms),
        origin_tls: cfg.origin.tls_ca.is_some(),
    };

    let conf = ServerConf {
        threads: cfg.threads,
        upgrade_sock: cfg.upgrade_sock.display().to_string(),
        pid_file: cfg.pid_file.display().to_string(),
        grace_period_seconds: Some(cfg.grace_secs),
        graceful_shutdown_timeout_seconds: Some(cfg.grace_secs),
        // Failover is decided per request (`origin.retries`); this only caps
        // it: the first attempt, the retries, and one more on a new
        // connection when a kept-alive one was gone (`error_while_proxy`).
        max_retries: cfg.origin.retries + 2,
        // The only CA origins' certificates are checked against.
        ca_file: cfg.origin.tls_ca.as_ref().map(|p| p.display().to_string()),
        // Each worker thread its own runtime, every connection on one of
        // them, as nginx's workers: Tokio's work-stealing scheduler holds
        // 256 ready tasks in a worker's queue and serves the rest from a
        // queue it looks at now and then, so with many connections some
        // were served again and again and others waited. Small hits over
        // 1 000 kept-alive connections (wrk, the edge on one core, one
        // worker): p90 97–103 ms and p99 146–149 ms with it, 12 and 19–26 ms
        // without (nginx 17 and 23–31 ms); two workers on two cores shared
        // with wrk: p99 38–41 against 17–18 ms, req/s level.
        work_stealing: false,
        ..ServerConf::default()
    };
    let opt = Opt { upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let misses_edge = edge.clone();
    let mut app = pingora::proxy::http_proxy(&server.configuration, edge);
    let mut options = pingora::apps::HttpServerOptions::default();
    // As long as HTTP/1.1 keep-alive (Pingora's 60 s); the default is none.
    options.h2_idle_timeout = Some(Duration::from_secs(60));
    app.server_options = Some(options);
    let admission = conn::Admission::new(
        limits::PerClient::new(cfg.rate_limit.max_connections_per_ip),
        metrics.connections_refused.clone(),
    );
    let misses = std::sync::Arc::new(miss::Misses {
        edge: misses_edge,
        upstream: pingora::connectors::http::v1::Connector::new(Some(
            pingora::connectors::ConnectorOptions::from_server_conf(&server.configuration),
        )),
    });
    let lane = lane::Lane {
        misses,
        proxy: Arc::new(app),
        storage,
        limits,
        bandwidth,
        demand,
        metrics: Arc::clone(&metrics),
        membership: Arc::clone(&membership),
        send_timeout: Duration::from_millis(cfg.send_timeout_ms),
    };
    let guarded = conn::Guarded {
        inner: Arc::new(lane),
        admission: Arc::clone(&admission),
        deadlines: conn::Deadlines::of(&cfg, &metrics),
    };
    let mut proxy = Service::new("edge".to_string(), guarded);
    proxy.set_connection_filter(admission);
    proxy.add_listener(listener(pingora::listeners::ListenerConfig::tcp(cfg.listen.to_string())));
    if let Some(tls_listen) = cfg.tls.listen {
        let (cert, key) = (cfg.tls.cert.display().to_string(), cfg.tls.key.display().to_string());
        let mut tls = pingora::listeners::tls::TlsSettings::intermediate(&cert, &key)
            .map_err(|e| anyhow::anyhow!("tls.cert / tls.key: {e}"))?;
        tls.enable_h2();
        proxy.add_listener(listener(pingora::listeners::ListenerConfig::tcp(tls_listen.to_string()).tls(tls)));
    }

    let own_region = cfg
        .region
        .clone()
        .unwrap_or_else(|| membership.snapshot().geo.region_of(std::net::IpAddr::from([0, 0, 0, 0])).to_string());
    let admin_app = admin::Admin {
        membership: Arc::clone(&membership),
        store: storage,
        eviction,
        metrics: Arc::clone(&metrics),
        token: cfg.admin.token.clone(),
        origins: origins.clone(),
        history: status::History::start(Arc::clone(&metrics)),
        hot: Arc::clone(&hot),
        region: own_region.clone(),
    };
    // The operators' listener has the header deadline too (no per-client cap).
    let admin_app = conn::Guarded {
        inner: Arc::new(admin_app),
        admission: conn::Admission::new(limits::PerClient::new(0), metrics.connections_refused.clone()),
        deadlines: conn::Deadlines::of(&cfg, &metrics),
    };
    let mut admin = Service::new("admin".to_string(), admin_app);
    admin.add_tcp(&cfg.admin.listen.to_string());

    let with_token = cfg.origin.token.is_some();
    if !with_token {
        tracing::warn!("origin.token is empty: the purge log is not followed and hot modules are not synced");
    }
    let follower = (with_token && cfg.purge.poll_ms > 0).then(|| purge::Follower {
        membership: Arc::clone(&membership),
        store: storage,
        metrics: Arc::clone(&metrics),
        cursors_file: cfg.cache.dir.join("purge-cursors.json"),
        interval: Duration::from_millis(cfg.purge.poll_ms),
        origins: origins.clone(),
    });
    let hot_sync = (with_token && cfg.hot.interval_ms > 0).then(|| hot::HotSync {
        membership: Arc::clone(&membership),
        storage,
        hot,
        metrics: Arc::clone(&metrics),
        origins,
        region: own_region,
        listen: cfg.listen,
        interval: Duration::from_millis(cfg.hot.interval_ms),
        modules: cfg.hot.modules,
        versions: cfg.hot.versions,
    });
    let housekeeping = background_service(
        "housekeeping",
        Housekeeping { follower, hot_sync, storage, eviction, lru_dir: lru_dir(&cfg) },
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(housekeeping);
    tracing::info!(listen = %cfg.listen, admin = %cfg.admin.listen, tls = ?cfg.tls.listen, "edge serving");
    server.run(RunArgs::default());
    Ok(())
}

/// Client connections buffer writes up to this many bytes, so that a
/// response head and a small body (a `.mod`, a typical zip) leave in one
/// send instead of two; larger bodies are written straight through.
const CLIENT_WRITE_BUFFER: usize = 32 << 10;

fn listener(config: pingora::listeners::ListenerConfig) -> pingora::listeners::ListenerConfig {
    config.l4_buffer(pingora::protocols::l4::stream::L4BufferSettings::default().write(CLIENT_WRITE_BUFFER))
}

fn lru_dir(cfg: &EdgeConfig) -> String {
    cfg.cache.dir.join("lru").display().to_string()
}

/// Opens the cache and its eviction manager: the saved LRU order first,
/// then whatever the disk holds that the saved state did not know.
fn open_cache(cfg: &EdgeConfig) -> anyhow::Result<(&'static CacheStore, &'static Lru)> {
    let (store, found) =
        CacheStore::open(&cfg.cache.dir, cfg.cache.memory_mib << 20, cfg.cache.memory_object_max_kib << 10)
            .with_context(|| format!("cache.dir {}", cfg.cache.dir.display()))?;
    let storage: &'static CacheStore = Box::leak(Box::new(store));
    let limit = (cfg.cache.max_mib << 20) as usize;
    let eviction: &'static Lru = Box::leak(Box::new(Lru::with_capacity(limit, 1 << 16)));
    let dir = lru_dir(cfg);
    std::fs::create_dir_all(&dir).with_context(|| format!("cache.dir {dir}"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        if let Err(e) = eviction.load(&dir).await {
            tracing::info!(error = %e, "no saved LRU state; starting from the disk scan");
        }
        let mut evicted = Vec::new();
        for s in &found {
            let item = CacheEntryKey::key_only(cache_key(&s.primary, None).to_compact());
            if !eviction.peek(&item) {
                evicted.extend(eviction.admit(item, s.size as usize, s.fresh_until));
            }
        }
        // The budget may have shrunk since the cache was filled.
        let span = Span::inactive().handle();
        for item in evicted {
            let _ = storage.purge(PurgeTarget::Exact(&item), PurgeType::Eviction, &span).await;
        }
    });
    tracing::info!(entries = found.len(), bytes = found.iter().map(|s| s.size).sum::<u64>(), "cache opened");
    Ok((storage, eviction))
}

/// Follows the purge logs, reports hot modules and prefetches their new
/// versions, and saves the LRU state now and then and at shutdown, so a
/// restarted edge evicts in the same order.
struct Housekeeping {
    follower: Option<purge::Follower>,
    hot_sync: Option<hot::HotSync>,
    storage: &'static CacheStore,
    eviction: &'static Lru,
    lru_dir: String,
}

impl Housekeeping {
    async fn save(&self) {
        if let Err(e) = self.eviction.save(&self.lru_dir).await {
            tracing::warn!(error = %e, "LRU state not saved");
        }
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (follower_shutdown, hot_shutdown) = (shutdown.clone(), shutdown.clone());
        let mut quiet_shutdown = shutdown.clone();
        let follow = async move {
            if let Some(f) = &self.follower {
                f.run(follower_shutdown).await;
            }
        };
        let hot = async move {
            if let Some(h) = &self.hot_sync {
                h.run(hot_shutdown).await;
            }
        };
        let save = async {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LRU_SAVE_EVERY) => self.save().await,
                    _ = shutdown.changed() => break,
                }
            }
            // Fills waiting for their durable write make it now (those a
            // crash would have lost), and fills finishing from here on at once.
            self.storage.drain().await;
            self.save().await;
        };
        let quiet = async move {
            let mut finishes = self.storage.hurry_when_quiet(u64::MAX);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(QUIET) => finishes = self.storage.hurry_when_quiet(finishes),
                    _ = quiet_shutdown.changed() => break,
                }
            }
        };
        tokio::join!(follow, hot, save, quiet);
    }
}
