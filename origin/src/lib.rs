//! modcdn-origin: the second tier. It answers the GOPROXY protocol from its
//! durable store, pulls what it lacks from the upstream chain (once per
//! artifact, however many clients ask), validates it, stores it atomically,
//! and serves it.
//!
//! It must never store or serve an artifact that failed validation or was
//! cut short, and never turn an upstream failure into a cached "not found".
//! The request flow is `serve.rs`, top-down.

pub mod config;
pub mod direct;
pub mod error;
mod http;
pub mod memory;
pub mod metrics;
pub mod negative;
pub mod ops;
pub mod prefetch;
pub mod private;
pub mod pull;
pub mod purge;
pub mod s3;
pub mod serve;
pub mod singleflight;
pub mod store;
pub mod sync;
pub mod tls;
pub mod upstream;
pub mod validate;
pub mod verify;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use modcdn_shared::policy::Ttls;
use tokio::net::TcpListener;

use crate::config::OriginConfig;
use crate::store::{DiskStore, Store};
use crate::upstream::{Chain, Fetch, Upstream};

/// Everything a request needs, shared by all of them.
pub struct Origin {
    /// The durable store, the memory tier in front of it, and the answers
    /// "not found" remembered for a while.
    pub store: Arc<dyn Store>,
    pub memory: memory::MemoryTier,
    pub negative: negative::NegativeCache,
    /// Where artifacts come from and what vouches for them.
    pub upstreams: Upstreams,
    /// What is fetched before anyone asks.
    pub warm: Warm,
    pub metrics: metrics::Metrics,
    pub ttls: Ttls,
    /// Purges, in order, for edges to follow.
    pub purge_log: purge::PurgeLog,
    /// Who may use the operator endpoints and whose forwarding is believed.
    pub access: Access,
    /// Readiness and latency, for `/readyz` and `/loadz`.
    pub load: ops::Load,
    /// Pulls: one per key at a time, bounded in number and time.
    pub pulls: pull::Pulls,
}

/// Where artifacts come from and what vouches for them.
pub struct Upstreams {
    /// The public chain.
    pub public: Arc<dyn Fetch>,
    /// Private routes (each with its own chain), `noproxy` and `nosumdb`.
    pub private: private::PrivatePolicy,
    /// The checksum database artifacts are verified against, if any.
    pub verifier: Option<verify::SumDbVerifier>,
    /// Proxied checksum databases, by name.
    checksum_dbs: std::collections::HashMap<String, Arc<dyn Fetch>>,
}

/// What is fetched before anyone asks: the requirements of what was served,
/// and the hot set other origins share.
pub struct Warm {
    pub prefetch: prefetch::Prefetcher,
    /// The modules clients ask for most, lately.
    pub hot: modcdn_shared::hot::HotSet,
    sync: sync::SyncConfig,
}

/// Who may use the operator endpoints, and whose `X-Forwarded-For` is
/// believed.
pub struct Access {
    /// The cluster token operator endpoints ask for; none turns them off.
    pub operator_token: Option<modcdn_shared::secret::Token>,
    /// Peers whose `X-Forwarded-For` is believed (the edges).
    pub trusted_proxies: Vec<modcdn_shared::net::IpNet>,
}

impl Origin {
    /// Builds the node from a validated config: opens the store (cleaning
    /// leftovers of a crash) and the upstream clients.
    pub fn new(config: &OriginConfig) -> Result<Arc<Origin>, String> {
        Origin::with_parts(config, Sources::from_config(config)?, open_store(config)?)
    }

    /// As [`Origin::new`], pulling from `sources` into `stores` (the store,
    /// and the object store it shares with other origins, if any).
    pub fn with_parts(
        config: &OriginConfig,
        sources: Sources,
        (store, shared): (Arc<dyn Store>, Option<Arc<s3::S3Store>>),
    ) -> Result<Arc<Origin>, String> {
        if sources.private.len() != config.private.len() {
            return Err(format!("{} private routes, {} sources for them", config.private.len(), sources.private.len()));
        }
        let origin = Origin {
            store,
            memory: memory::MemoryTier::new(config.memory_cache_mib << 20, config.memory_object_max_kib << 10),
            negative: negative::NegativeCache::new(config.negative_cache_entries),
            upstreams: Upstreams {
                public: sources.public,
                private: private::PrivatePolicy {
                    routes: config
                        .private
                        .iter()
                        .zip(sources.private)
                        .map(|(p, upstream)| private::PrivateRoute::new(p, upstream))
                        .collect::<Result<_, _>>()?,
                    noproxy: config.noproxy.clone(),
                    nosumdb: config.nosumdb.clone(),
                },
                verifier: match config.verify {
                    config::VerifyMode::Off => None,
                    config::VerifyMode::Verify => config
                        .checksum_db
                        .iter()
                        .find_map(|d| d.key.as_ref().map(|k| verify::SumDbVerifier::new(&d.name, k)))
                        .transpose()?,
                },
                checksum_dbs: sources.checksum_dbs,
            },
            warm: Warm {
                prefetch: prefetch::Prefetcher::new(&config.prefetch),
                hot: modcdn_shared::hot::HotSet::new(
                    config.sync.tracked,
                    Duration::from_secs(config.sync.half_life_secs),
                ),
                sync: config.sync.clone(),
            },
            metrics: metrics::Metrics::new().map_err(|e| format!("metrics: {e}"))?,
            ttls: config.ttls(),
            purge_log: match shared {
                Some(shared) => purge::PurgeLog::open_shared(shared).map_err(|e| format!("store: purge log: {e}"))?,
                None => purge::PurgeLog::open(&config.store_dir)
                    .map_err(|e| format!("store_dir {}: purge log: {e}", config.store_dir.display()))?,
            },
            access: Access {
                operator_token: config.operator.token.clone(),
                trusted_proxies: modcdn_shared::net::parse_networks(&config.trusted_proxies)?,
            },
            load: ops::Load::default(),
            pulls: pull::Pulls::new(config.http.max_pulls, Duration::from_millis(config.http.pull_deadline_ms))
                .map_err(|e| format!("store write threads: {e}"))?,
        };
        if let Some(v) = &origin.upstreams.verifier {
            v.load(origin.store.as_ref());
        }
        origin.metrics.store_budget_bytes.set((config.store_max_mib << 20) as i64);
        origin.refresh_store_gauges();
        Ok(Arc::new(origin))
    }

    /// The route an artifact at `key` belongs to now: a private route's
    /// tag, or none for the public chain (and checksum-database answers).
    pub fn route_of(&self, key: &str) -> Option<String> {
        if self.upstreams.private.routes.is_empty() || key.starts_with("sumdb/") {
            return None;
        }
        let escaped = key.split_once("/@").map_or(key, |(m, _)| m);
        let module = modcdn_shared::module::unescape_path(escaped).ok()?;
        self.upstreams.private.route(&module).map(|r| r.tag.clone())
    }

    /// The stored artifact at `key` (blocking), if it was fetched under
    /// the route the module belongs to now; after a pattern change a copy
    /// from another route is never served, but fetched afresh.
    pub fn stored(&self, key: &str) -> std::io::Result<Option<store::Hit>> {
        let Some(hit) = self.store.get(key)? else { return Ok(None) };
        if hit.meta.route != self.route_of(key) {
            tracing::info!(%key, stored = ?hit.meta.route, "stored under another route; fetching it afresh");
            return Ok(None);
        }
        Ok(Some(hit))
    }

    /// Checksum database `name`, if it is proxied.
    pub fn checksum_db(&self, name: &str) -> Option<&dyn Fetch> {
        self.upstreams.checksum_dbs.get(name).map(|db| db.as_ref())
    }

    pub fn refresh_store_gauges(&self) {
        let Some(usage) = self.store.usage() else { return };
        self.metrics.store_objects.set(usage.objects);
        self.metrics.store_bytes.set(usage.bytes);
        let counted = self.metrics.store_evictions.get() as i64;
        self.metrics.store_evictions.inc_by(usage.evicted.saturating_sub(counted).max(0) as u64);
    }
}

/// The store `[store]` names: the disk store at `store_dir`, or the object
/// store with `store_dir` as its bounded local tier; the object store also
/// on its own, for what every origin shares beside artifacts (the purge log).
pub type Stores = (Arc<dyn Store>, Option<Arc<s3::S3Store>>);

/// Where the origin pulls from: the public chain, each private route's
/// chain (in the config's order) and each proxied checksum database.
pub struct Sources {
    pub public: Arc<dyn Fetch>,
    pub private: Vec<Arc<dyn Fetch>>,
    pub checksum_dbs: std::collections::HashMap<String, Arc<dyn Fetch>>,
}

impl Sources {
    /// The HTTP (and `direct`) clients the config names.
    pub fn from_config(config: &OriginConfig) -> Result<Sources, String> {
        // Public and private `direct` runs have budgets of their own, so a
        // flood of unknown public paths cannot starve private modules.
        // Only private runs see credentials; each has its own sandbox.
        let direct = Arc::new(direct::Direct::public(&config.direct));
        let private_direct = Arc::new(direct::Direct::private(&config.direct));
        let chain = |spec: &str, direct: &Arc<direct::Direct>| -> Result<Arc<dyn Fetch>, String> {
            Ok(Arc::new(Upstream::new(Chain::parse(spec)?, &config.http, Arc::clone(direct))?))
        };
        Ok(Sources {
            public: chain(&config.upstream, &direct).map_err(|e| format!("upstream: {e}"))?,
            private: config.private.iter().map(|p| chain(&p.upstream, &private_direct)).collect::<Result<_, _>>()?,
            checksum_dbs: config
                .checksum_db
                .iter()
                .map(|d| Ok((d.name.clone(), chain(d.url.trim_end_matches('/'), &direct)?)))
                .collect::<Result<_, String>>()?,
        })
    }
}

pub fn open_store(config: &OriginConfig) -> Result<Stores, String> {
    let dir = &config.store_dir;
    let local =
        DiskStore::open(dir, config.store_max_mib << 20).map_err(|e| format!("store_dir {}: {e}", dir.display()))?;
    Ok(match config.store.kind {
        s3::StoreKind::Disk => (Arc::new(local), None),
        s3::StoreKind::S3 => {
            let shared = Arc::new(s3::S3Store::open(&config.store, dir)?);
            (Arc::new(s3::Tiered { local, shared: Arc::clone(&shared) }), Some(shared))
        }
    })
}

/// How long a client connection may take.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// To send a request's headers, and to start its next request.
    pub header: Duration,
    /// To take any of an answer being written (progress restarts it).
    pub send: Duration,
}

/// Serves the GOPROXY protocol on `public` and the operator endpoints on
/// `operator` until `shutdown` completes, then stops accepting, reports
/// not-ready, and lets in-flight requests finish within `grace`.
///
/// Every connection has `timeouts.header` to send a request's headers, and
/// as long to start its next one (slow or idle clients are closed: they
/// cannot hold connections open one byte at a time), and a write of an
/// answer that the client takes nothing of for `timeouts.send` closes it
/// (nor can a client hold a connection, and the answer's buffers, by not
/// reading).
pub async fn serve_until(
    origin: Arc<Origin>,
    public: TcpListener,
    operator: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    timeouts: ClientTimeouts,
) -> std::io::Result<()> {
    let header_timeout = timeouts.header;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    prefetch::Prefetcher::start(&origin);
    sync::start(&origin, &origin.warm.sync);
    purge::follow(&origin);
    let (public_app, operator_app) = (serve::router(Arc::clone(&origin)), ops::operator_router(Arc::clone(&origin)));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(header_timeout).keep_alive_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (accepted, app) = tokio::select! {
            accepted = public.accept() => (accepted, &public_app),
            accepted = operator.accept() => (accepted, &operator_app),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(timeouts.send));
        let stream = Box::pin(stream);
        // Handlers learn the peer (for private routes' networks) from the
        // request's extensions.
        let app = tower::ServiceExt::map_request(app.clone(), move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req
        });
        let service = hyper_util::service::TowerToHyperService::new(app);
        let (builder, watcher, tls, origin) = (builder.clone(), graceful.watcher(), tls.clone(), Arc::clone(&origin));
        tokio::spawn(async move {
            let ended = match tls {
                None => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service)).await,
                // The handshake has the header deadline too.
                Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service)).await
                    }
                    Ok(Err(e)) => Err(format!("TLS handshake: {e}").into()),
                    Err(_) => Err("TLS handshake timed out".into()),
                },
            };
            if let Err(e) = ended {
                if timed_out(&*e) {
                    origin.metrics.send_timeouts.inc();
                }
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop((public, operator));
    origin.load.stop_ready();
    tracing::info!("shutting down: finishing in-flight requests");
    let drained = async {
        graceful.shutdown().await;
        // Answers that went out before their artifact was stored.
        origin.pulls.writes.settled().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(?grace, "grace period over; exiting with requests or store writes still running");
    }
    Ok(())
}

/// Whether a connection ended because a write to its client timed out.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
