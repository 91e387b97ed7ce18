//! Pulling one artifact from upstream into the store: fetch, stream to a
//! staged file within the size limit, validate, answer, publish. Nothing
//! reaches the store unless every step succeeds. The answer does not wait
//! for the durable write: a validated artifact is served at once (from
//! memory, or from its staged file) while it is written, and found in
//! [`Writes`] until it is stored, so nobody pulls it again meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use modcdn_shared::module::Version;
use modcdn_shared::policy::{self, Audience, Outcome};
use modcdn_shared::{dirhash, module, modzip, semver, Kind, Request};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{OriginError, UpstreamError};
use crate::memory::Cached;
use crate::store::{Hit, Meta};
use crate::upstream::Fetched;
use crate::{validate, Origin};

/// Who started a pull, for metrics: a client waiting for it, a background
/// refresh of a mutable answer, or a prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Client,
    Refresh,
    Prefetch,
    Sync,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Client => "client",
            Trigger::Refresh => "refresh",
            Trigger::Prefetch => "prefetch",
            Trigger::Sync => "sync",
        }
    }
}

/// A stored artifact, opened: what a pull hands every request that waited
/// on it (nobody opens the store again for it), and what a store hit is.
#[derive(Clone)]
pub enum Artifact {
    /// Held in memory (the memory tier, or any non-zip just pulled).
    Memory(Arc<Cached>),
    /// A store file, read at offsets (so any number of readers share it).
    File(Arc<Hit>),
}

impl Artifact {
    pub fn meta(&self) -> &Meta {
        match self {
            Artifact::Memory(c) => &c.meta,
            Artifact::File(h) => &h.meta,
        }
    }

    /// The whole body (blocking for a file).
    pub fn body(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Artifact::Memory(c) => Ok(c.body.to_vec()),
            Artifact::File(h) => h.read_body(),
        }
    }
}

/// Pulls in flight: one per key at a time (later askers join it), at most
/// `max` at once (`http.max_pulls`; past it a miss is refused at once, so
/// another origin may take it), each within `deadline`
/// (`http.pull_deadline_ms`).
pub struct Pulls {
    flights: crate::singleflight::Group<Result<Artifact, OriginError>>,
    slots: tokio::sync::Semaphore,
    max: usize,
    deadline: std::time::Duration,
    pub writes: Writes,
}

impl Pulls {
    pub fn new(max: usize, deadline: std::time::Duration) -> std::io::Result<Pulls> {
        Ok(Pulls {
            flights: Default::default(),
            slots: tokio::sync::Semaphore::new(max),
            max,
            deadline,
            writes: Writes::new(max)?,
        })
    }
}

/// Durable writes of artifacts already answered: at most `max` run behind
/// the answers, on low-priority threads (past that a pull writes before it
/// answers, as the disk allows); until one is done its artifact is served
/// from here.
pub struct Writes {
    pending: Mutex<HashMap<String, (Artifact, Arc<AtomicBool>)>>,
    slots: Arc<tokio::sync::Semaphore>,
    running: tokio::sync::watch::Sender<usize>,
    behind: modcdn_shared::background::Background,
}

impl Writes {
    fn new(max: usize) -> std::io::Result<Writes> {
        Ok(Writes {
            pending: Mutex::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
            running: tokio::sync::watch::channel(0).0,
            behind: modcdn_shared::background::Background::start("store-writes", 2)?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Artifact, Arc<AtomicBool>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The artifact at `key` if it is answered but not yet stored.
    pub fn get(&self, key: &str) -> Option<Artifact> {
        self.lock().get(key).map(|(a, _)| a.clone())
    }

    /// A purge: the pending writes at `key` (or under it, with `prefix`)
    /// are no longer served, and each removes what it stored when done.
    pub fn cancel(&self, key: &str, prefix: bool) {
        self.lock().retain(|k, (_, cancelled)| {
            let hit = if prefix { k.starts_with(key) } else { k == key };
            if hit {
                cancelled.store(true, Ordering::SeqCst);
            }
            !hit
        });
    }

    /// Waits until no durable write is running.
    pub async fn settled(&self) {
        let _ = self.running.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// Pulls `req` unless a pull of it is already running; joins it then.
/// A not-found answer is remembered in the negative cache (once, by the
/// leader); failures are not remembered.
pub fn coalesced<'a>(
    origin: &'a Arc<Origin>,
    req: &'a Request,
    trigger: Trigger,
) -> BoxFuture<'a, Result<Artifact, OriginError>> {
    async move { coalesced_inner(origin, req, trigger).await }.boxed()
}

async fn coalesced_inner(origin: &Arc<Origin>, req: &Request, trigger: Trigger) -> Result<Artifact, OriginError> {
    let key = req.key();
    let (o, r) = (Arc::clone(origin), req.clone());
    let work = async move {
        // Bounded: past `max_pulls` a miss is refused at once (503, another
        // origin may take it), and no pull outlives its deadline.
        let Ok(_slot) = o.pulls.slots.try_acquire() else {
            o.metrics.pulls_refused.inc();
            return Err(OriginError::Busy(format!("{}: {} pulls running; retry shortly", r.key(), o.pulls.max)));
        };
        o.metrics.upstream_fetches.with_label_values(&[trigger.as_str()]).inc();
        let res = match tokio::time::timeout(o.pulls.deadline, pull(&o, &r)).await {
            Ok(res) => res,
            Err(_) => Err(UpstreamError::Timeout(format!(
                "{}: not pulled within the {} ms deadline",
                r.key(),
                o.pulls.deadline.as_millis()
            ))
            .into()),
        };
        if let Err(e @ OriginError::Upstream(UpstreamError::NotFound { status, .. })) = &res {
            let outcome = Outcome::from_status(*status).unwrap_or(Outcome::NotFound);
            if let policy::Freshness::Ttl(ttl) = policy::decide(r.kind(), outcome, Audience::Public, &o.ttls).freshness
            {
                o.negative.insert(&r.key(), *status, e.client_message(), ttl);
            }
        }
        res
    }
    .boxed();
    let (res, joined) = origin.pulls.flights.run(&key, work).await;
    if joined {
        origin.metrics.singleflight_waiters.inc();
    }
    res.unwrap_or_else(|| Err(OriginError::Interrupted(format!("{key}: shutting down, or a bug (see the log)"))))
}

async fn pull(origin: &Arc<Origin>, req: &Request) -> Result<Artifact, OriginError> {
    let kind = req.kind();
    let key = req.key();
    let started = Instant::now();
    let fetched = match req {
        // Checksum databases are asked directly, never through the GOPROXY chain.
        Request::SumDb(db) => match origin.checksum_db(db.name.as_str()) {
            Some(source) => source.fetch(&db.endpoint.path()).await,
            None => Err(UpstreamError::NotFound {
                status: 404,
                message: format!("checksum database {} is not proxied here", db.name.as_str()),
            }),
        },
        // Private modules only from their route; noproxy ones never from the public chain.
        _ => {
            let module = req.module().map(|m| m.as_str()).unwrap_or("");
            match origin.upstreams.private.route(module) {
                Some(route) => route.upstream.fetch(&key).await,
                None if origin.upstreams.private.is_noproxy(module) => Err(UpstreamError::NotFound {
                    status: 404,
                    message: format!("{module} is not served here (noproxy)"),
                }),
                None => origin.upstreams.public.fetch(&key).await,
            }
        }
    };
    let result = match &fetched {
        Ok(_) => "ok",
        Err(e) if e.is_not_found() => "not_found",
        Err(_) => "error",
    };
    origin
        .metrics
        .upstream_seconds
        .with_label_values(&[kind.as_str(), result])
        .observe(started.elapsed().as_secs_f64());
    let mut fetched = match fetched {
        Ok(f) => f,
        Err(e) if kind == Kind::Latest && e.is_not_found() && !origin.upstreams.public.is_off() => {
            return latest_from_list(origin, req).await;
        }
        Err(e) => return Err(e.into()),
    };
    let limit = validate::size_limit(kind);
    if let Some(len) = fetched.content_length {
        if len > limit {
            return Err(invalid(
                origin,
                kind,
                format!("{key}: upstream declares {len} bytes, above the {limit}-byte limit"),
            ));
        }
    }
    let upstream = std::mem::take(&mut fetched.upstream);
    if kind == Kind::Zip {
        return pull_zip(origin, req, fetched, upstream).await;
    }
    // Everything but zips is small (≤ 16 MiB): held in memory, checked,
    // then written in one go.
    let mut body = Vec::with_capacity(fetched.content_length.unwrap_or(1024).min(limit) as usize);
    while let Some(chunk) = fetched.body.next().await {
        let chunk = chunk?;
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(invalid(origin, kind, format!("{key}: upstream body exceeds the {limit}-byte limit")));
        }
        body.extend_from_slice(&chunk);
    }
    check_length(origin, kind, &key, body.len() as u64, fetched.content_length)?;
    let h1 = match req {
        Request::Info(_, v) => validate::check_info(&body, Some(v.as_str())).map(|_| None),
        Request::Query(..) | Request::Latest(_) => validate::check_info(&body, None).map(|_| None),
        Request::Mod(m, _) => validate::check_mod(&body, m.as_str()).map(|_| Some(dirhash::hash_go_mod(&body))),
        Request::List(_) => validate::check_list(&body).map(|_| None),
        Request::SumDb(db) => validate::check_sumdb(&db.endpoint, &body).map(|_| None),
        _ => Ok(None),
    }
    .map_err(|reason| invalid(origin, kind, format!("{key}: {reason}")))?;
    if let (Request::Mod(m, v), Some(h1)) = (req, &h1) {
        crate::verify::check(origin, m, v, h1, true).await?;
    }
    put(origin, &key, body, h1, upstream).await
}

/// A zip streams to a staged file (never whole in memory), is checked
/// against the module zip rules from there, and published.
async fn pull_zip(
    origin: &Arc<Origin>,
    req: &Request,
    fetched: Fetched,
    upstream: String,
) -> Result<Artifact, OriginError> {
    let (kind, key) = (req.kind(), req.key());
    let Request::Zip(module_path, version) = req else { return Err(OriginError::Store("pull_zip needs a zip".into())) };
    let limit = validate::size_limit(kind);
    let mut staged = blocking(origin, {
        let k = key.clone();
        move |store| store.stage(&k)
    })
    .await
    .map_err(|e| write_failed(origin, &key, e))?;
    let file = staged.take_file().ok_or_else(|| OriginError::Store("staged file missing".into()))?;
    // Chunks from the network are small; write to disk in larger pieces.
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = fetched.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(invalid(origin, kind, format!("{key}: upstream body exceeds the {limit}-byte limit")));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| write_failed(origin, &key, OriginError::Store(e.to_string())))?;
    }
    file.flush().await.map_err(|e| write_failed(origin, &key, OriginError::Store(e.to_string())))?;
    drop(file);
    check_length(origin, kind, &key, size, fetched.content_length)?;
    let f = staged.reader().map_err(|e| write_failed(origin, &key, OriginError::Store(e.to_string())))?;
    let (m, v) = (module_path.as_str().to_string(), version.as_str().to_string());
    let (checked, reader) = tokio::task::spawn_blocking(move || {
        let reader = f.try_clone().map_err(|e| e.to_string())?;
        modzip::check_zip(std::io::BufReader::new(f), size, &m, &v).map(|c| (c, reader)).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| OriginError::Store(e.to_string()))?
    .map_err(|reason| invalid(origin, kind, format!("{key}: {reason}")))?;
    crate::verify::check(origin, module_path, version, &checked.h1, false).await?;
    let meta = Meta {
        size,
        sha256: hex(&hasher.finalize()),
        h1: Some(checked.h1),
        fetched_at_ms: now_ms(),
        upstream,
        route: origin.route_of(&key),
    };
    // Served from the staged file, which stays readable however the store
    // publishes it.
    let artifact = Artifact::File(Arc::new(Hit { meta: meta.clone(), file: reader }));
    durable(origin, &key, artifact.clone(), move |store| store.publish(staged, &meta)).await?;
    Ok(artifact)
}

/// A store write that failed (disk full, no inodes, I/O error): only this
/// artifact is lost, said once in the log and counted.
fn write_failed(origin: &Origin, key: &str, e: OriginError) -> OriginError {
    tracing::error!(%key, error = %e, "store write failed; the artifact is not stored, the node serves on");
    origin.metrics.store_write_errors.inc();
    match e {
        OriginError::Store(msg) => OriginError::Store(format!("{key}: {msg}")),
        other => other,
    }
}

fn check_length(origin: &Origin, kind: Kind, key: &str, got: u64, declared: Option<u64>) -> Result<(), OriginError> {
    match declared {
        Some(len) if len != got => {
            Err(invalid(origin, kind, format!("{key}: truncated upstream body ({got} of {len} bytes)")))
        }
        _ => Ok(()),
    }
}

/// Stores a validated in-memory body durably, then in the memory tier.
async fn put(
    origin: &Arc<Origin>,
    key: &str,
    body: Vec<u8>,
    h1: Option<String>,
    upstream: String,
) -> Result<Artifact, OriginError> {
    let meta = Meta {
        size: body.len() as u64,
        sha256: hex(&Sha256::digest(&body)),
        h1,
        fetched_at_ms: now_ms(),
        upstream,
        route: origin.route_of(key),
    };
    let body = bytes::Bytes::from(body);
    let cached = origin.memory.insert(key, meta.clone(), body.clone());
    let artifact =
        Artifact::Memory(cached.unwrap_or_else(|| Arc::new(Cached { meta: meta.clone(), body: body.clone() })));
    let k = key.to_string();
    durable(origin, key, artifact.clone(), move |store| store.put(&k, &body, &meta)).await?;
    Ok(artifact)
}

/// Stores an artifact already answered as `artifact`: behind the answer
/// while fewer than `max_pulls` writes run (a purge meanwhile wins: the
/// write removes what it stored), before it otherwise.
async fn durable<F>(origin: &Arc<Origin>, key: &str, artifact: Artifact, write: F) -> Result<(), OriginError>
where
    F: FnOnce(&dyn crate::store::Store) -> std::io::Result<()> + Send + 'static,
{
    let writes = &origin.pulls.writes;
    // Writes of one key stay in order (a list refreshed while its last
    // write runs): a newer one starts when the older one is done.
    let mut changed = writes.running.subscribe();
    while writes.lock().contains_key(key) {
        if changed.changed().await.is_err() {
            break;
        }
    }
    let Ok(slot) = Arc::clone(&writes.slots).try_acquire_owned() else {
        blocking(origin, write).await.map_err(|e| write_failed(origin, key, e))?;
        origin.refresh_store_gauges();
        return Ok(());
    };
    let cancelled = Arc::new(AtomicBool::new(false));
    writes.lock().insert(key.to_string(), (artifact, Arc::clone(&cancelled)));
    writes.running.send_modify(|n| *n += 1);
    origin.metrics.store_writes_pending.inc();
    let (o, k) = (Arc::clone(origin), key.to_string());
    tokio::spawn(async move {
        let store = Arc::clone(&o.store);
        let written = o.pulls.writes.behind.run(move || write(store.as_ref())).await;
        let written = written.map_err(|e| OriginError::store("store", e));
        let writes = &o.pulls.writes;
        {
            let mut pending = writes.lock();
            if pending.get(&k).is_some_and(|(_, c)| Arc::ptr_eq(c, &cancelled)) {
                pending.remove(&k);
            }
        }
        match written {
            Err(e) => {
                write_failed(&o, &k, e);
            }
            Ok(()) if cancelled.load(Ordering::SeqCst) => {
                let k2 = k.clone();
                if let Err(e) = blocking(&o, move |store| store.remove(&k2, false)).await {
                    tracing::warn!(key = %k, error = %e, "could not remove a write a purge overtook");
                }
            }
            Ok(()) => {}
        }
        o.refresh_store_gauges();
        o.metrics.store_writes_pending.dec();
        writes.running.send_modify(|n| *n -= 1);
        drop(slot);
    });
    Ok(())
}

/// Runs a store operation on the blocking pool; its errors are store errors.
async fn blocking<T, F>(origin: &Origin, op: F) -> Result<T, OriginError>
where
    T: Send + 'static,
    F: FnOnce(&dyn crate::store::Store) -> std::io::Result<T> + Send + 'static,
{
    let store = Arc::clone(&origin.store);
    tokio::task::spawn_blocking(move || op(store.as_ref()))
        .await
        .map_err(|e| OriginError::Store(e.to_string()))?
        .map_err(|e| OriginError::store("store", e))
}

/// `@latest` when upstream has none: the highest version of `list` by the
/// go command's rules (release over prerelease), answered with its `.info`.
async fn latest_from_list(origin: &Arc<Origin>, req: &Request) -> Result<Artifact, OriginError> {
    let Request::Latest(module_path) = req else {
        return Err(OriginError::Store("latest_from_list needs @latest".into()));
    };
    let list_req = Request::List(module_path.clone());
    let list = read_fresh_or_pull(origin, &list_req).await?;
    let text = String::from_utf8_lossy(&list);
    let versions: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| module::check_path_major(v, module_path.major_suffix()).is_ok())
        .collect();
    let compatible = versions.iter().copied().filter(|v| semver::build(v) != "+incompatible");
    let best = match semver::latest_of(compatible) {
        // As the go command: +incompatible versions count only when the
        // latest compatible version has no go.mod of its own (its .mod is
        // the synthesized `module <path>` line; checked paths never need
        // the quotes of modfile.AutoQuote).
        Some(v) => {
            let version = Version::new(v).map_err(|e| invalid(origin, Kind::List, e.to_string()))?;
            let go_mod = read_fresh_or_pull(origin, &Request::Mod(module_path.clone(), version)).await?;
            if go_mod == format!("module {module_path}\n").as_bytes() {
                semver::latest_of(versions.iter().copied())
            } else {
                Some(v)
            }
        }
        None => semver::latest_of(versions.iter().copied()),
    };
    let Some(best) = best else {
        return Err(UpstreamError::NotFound {
            status: 404,
            message: format!("{module_path}@latest: no matching versions"),
        }
        .into());
    };
    let version = Version::new(best).map_err(|e| invalid(origin, Kind::List, e.to_string()))?;
    let info = read_fresh_or_pull(origin, &Request::Info(module_path.clone(), version)).await?;
    put(origin, &req.key(), info, None, "latest of list".into()).await
}

/// The body at `req`'s key: from the store when fresh, else pulled.
async fn read_fresh_or_pull(origin: &Arc<Origin>, req: &Request) -> Result<Vec<u8>, OriginError> {
    let store = policy::decide(req.kind(), Outcome::Found, Audience::Public, &origin.ttls);
    let fresh =
        |meta: &Meta| store.is_fresh(std::time::Duration::from_millis(now_ms().saturating_sub(meta.fetched_at_ms)));
    if let Some((meta, body)) = read(origin, &req.key()).await? {
        if fresh(&meta) {
            return Ok(body);
        }
    }
    let pulled = coalesced(origin, req, Trigger::Client).await?;
    tokio::task::spawn_blocking(move || pulled.body())
        .await
        .map_err(|e| OriginError::Store(e.to_string()))?
        .map_err(|e| OriginError::store(&req.key(), e))
}

/// Whether a complete artifact is stored at `key` (memory tier or store).
pub async fn exists(origin: &Arc<Origin>, key: &str) -> bool {
    if origin.memory.get(key).is_some() || origin.pulls.writes.get(key).is_some() {
        return true;
    }
    let (o, k) = (Arc::clone(origin), key.to_string());
    blocking(origin, move |_| o.stored(&k).map(|h| h.is_some())).await.unwrap_or(false)
}

pub async fn read(origin: &Arc<Origin>, key: &str) -> Result<Option<(Meta, Vec<u8>)>, OriginError> {
    if let Some(c) = origin.memory.get(key) {
        return Ok(Some((c.meta.clone(), c.body.to_vec())));
    }
    if let Some(a) = origin.pulls.writes.get(key) {
        let meta = a.meta().clone();
        return blocking(origin, move |_| a.body()).await.map(|body| Some((meta, body)));
    }
    let (o, k) = (Arc::clone(origin), key.to_string());
    blocking(origin, move |_| o.stored(&k)?.map(|hit| Ok((hit.read_body()?, hit.meta))).transpose())
        .await
        .map(|o| o.map(|(body, meta)| (meta, body)))
}

fn invalid(origin: &Origin, kind: Kind, reason: String) -> OriginError {
    tracing::warn!(kind = kind.as_str(), %reason, "refusing upstream content; nothing stored");
    origin.metrics.invalid.with_label_values(&[kind.as_str()]).inc();
    OriginError::Invalid(reason)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
