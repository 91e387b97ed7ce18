//! The origin's request flow, top-down.
//!
//! ```text
//! handle → answer: method check → Request::parse (400 on malformed) → private gate
//!   (credentials for private modules; no checksum lookups for private paths)
//!   ├─ list, @latest, .info, .mod, .zip   serve_artifact:
//!   │     1. store (memory tier, disk) fresh per policy → HIT (background refresh near expiry)
//!   │     2. negative cache → remembered 404/410
//!   │     3. coalesced pull (upstream → validate → durable write) → MISS,
//!   │        every waiter served the artifact the pull hands back (no reopen);
//!   │        on failure an expired copy → STALE, else 502/504
//!   ├─ sumdb/<name>/latest, lookup, tile  serve_artifact, pulled from the checksum database
//!   └─ sumdb/<name>/supported             answered here: 200 if proxied, else 404
//! ```
//! Every answer's status and Cache-Control come from `modcdn_shared::policy`;
//! `respond_error` is the one place errors become responses.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use modcdn_shared::policy::{self, Audience, CacheStatus, Outcome, CACHE_STATUS_HEADER};
use modcdn_shared::request::{SumDb, SumDbEndpoint};
use modcdn_shared::telemetry;
use modcdn_shared::{Kind, Request};
use tracing::Instrument;

use crate::error::OriginError;
use crate::http::{built, etag_matches, parse_range, text, RangeSpec};
use crate::ops;
use crate::pull::{self, now_ms, Artifact};
use crate::store::Hit;
use crate::Origin;

/// Chunk size when streaming large bodies.
const STREAM_CHUNK: usize = 256 * 1024;

/// The public listener's routes: probes, and the GOPROXY protocol for every
/// other path.
pub fn router(origin: Arc<Origin>) -> Router {
    let mut r = Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(ops::readyz));
    for path in ops::OPERATOR_PATHS {
        r = r.route(path, any(ops::not_here));
    }
    r.fallback(handle).with_state(origin)
}

/// Counts a request in flight until it is answered or its client goes away
/// (axum drops the handler then, so the decrement lives in `Drop`).
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(gauge: &prometheus::IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn handle(State(o): State<Arc<Origin>>, req: axum::extract::Request) -> Response {
    let started = std::time::Instant::now();
    let in_flight = InFlight::enter(&o.metrics.in_flight);
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let client = client_ip(&o, &req);
    let (kind, cache, resp) = if telemetry::traces_on() {
        let span = tracing::info_span!("origin request", %method, %path);
        telemetry::continue_trace(&span, req.headers().get("traceparent").and_then(|v| v.to_str().ok()));
        answer(&o, &method, &path, req.headers(), client).instrument(span).await
    } else {
        answer(&o, &method, &path, req.headers(), client).await
    };
    finish(&o, &method, &path, started, in_flight, kind, cache, resp)
}

/// The client's address: the peer, or whom a trusted edge forwarded for.
fn client_ip(o: &Origin, req: &axum::extract::Request) -> Option<std::net::IpAddr> {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?.0.ip();
    let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
    Some(modcdn_shared::net::client_ip(peer, forwarded, &o.access.trusted_proxies))
}

/// The flow: method → parse → private gate → sumdb `supported` or artifact.
async fn answer(
    o: &Arc<Origin>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
) -> (Option<Kind>, CacheStatus, Response) {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            policy::CC_NO_STORE,
            "method not allowed: the GOPROXY protocol is GET and HEAD only\n",
        );
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return (None, CacheStatus::None, r);
    }
    let r = match Request::parse(path) {
        Ok(r) => r,
        Err(e) => return (None, CacheStatus::None, respond_error(o, None, &e.into())),
    };
    let kind = Some(r.kind());
    if let Some(resp) = private_gate(o, &r, headers, client) {
        return (kind, CacheStatus::None, resp);
    }
    // Credentials decide who may see a private module: no shared cache may keep it.
    let audience = match r.module().is_some_and(|m| o.upstreams.private.route(m.as_str()).is_some()) {
        true => Audience::Private,
        false => Audience::Public,
    };
    let (cache, resp) = match &r {
        Request::SumDb(SumDb { name, endpoint: SumDbEndpoint::Supported }) => serve_sumdb_supported(o, name.as_str()),
        _ => serve_artifact(o, &r, audience, headers).await,
    };
    (kind, cache, resp)
}

/// Counts, logs and (for HEAD) empties a response on its way out.
#[allow(clippy::too_many_arguments)]
fn finish(
    o: &Origin,
    method: &Method,
    req_path: &str,
    started: std::time::Instant,
    in_flight: InFlight,
    kind: Option<Kind>,
    cache: CacheStatus,
    mut resp: Response,
) -> Response {
    o.metrics
        .requests
        .with_label_values(&[kind.map_or("invalid", Kind::as_str), resp.status().as_str(), cache.label()])
        .inc();
    drop(in_flight);
    o.load.observe(started.elapsed());
    tracing::debug!(%method, path = req_path, status = resp.status().as_u16(), cache = cache.as_str(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    if method == Method::HEAD {
        *resp.body_mut() = Body::empty();
    }
    resp
}

/// Private modules: a client without the route's credentials, and not in
/// its networks, gets what a missing module gets (or 401), and checksum-database lookups for private
/// or `nosumdb` paths are never forwarded.
fn private_gate(o: &Origin, req: &Request, headers: &HeaderMap, client: Option<std::net::IpAddr>) -> Option<Response> {
    if let Request::SumDb(db) = req {
        return match &db.endpoint {
            SumDbEndpoint::Lookup { module, .. } if o.upstreams.private.is_nosumdb(module.as_str()) => {
                Some(text(StatusCode::NOT_FOUND, policy::CC_NO_STORE, "not found\n"))
            }
            _ => None,
        };
    }
    let route = o.upstreams.private.route(req.module()?.as_str())?;
    if route.authorized(headers, client) {
        return None;
    }
    if route.challenge {
        let mut r = text(StatusCode::UNAUTHORIZED, policy::CC_NO_STORE, "unauthorized\n");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"modcdn\""));
        return Some(r);
    }
    Some(text(StatusCode::NOT_FOUND, policy::CC_NO_STORE, "not found\n"))
}

/// A GOPROXY artifact. Canonical `.info`, `.mod`, `.zip` are fresh forever
/// once stored; `list`, `@latest` and query `.info` for their TTL, refreshed
/// in the background as they near expiry and served stale when upstream
/// fails (all per the policy table).
async fn serve_artifact(
    o: &Arc<Origin>,
    req: &Request,
    audience: Audience,
    headers: &HeaderMap,
) -> (CacheStatus, Response) {
    o.warm.prefetch.client_asked(o, &req.key());
    if let Some(m) = req.module() {
        o.warm.hot.record(m.escaped());
    }
    let (cache, opened_or_resp) = find_artifact(o, req, audience).await;
    match opened_or_resp {
        Ok(hit) => {
            // The go command asks for a module's requirements next: fetch them now.
            if let (Request::Mod(..), Artifact::Memory(c)) = (req, &hit) {
                o.warm.prefetch.after_mod(o, &c.body, 0);
            }
            (cache, respond_hit(o, (req, audience), hit, cache, headers).await)
        }
        Err(resp) => (cache, resp),
    }
}

/// The artifact for `req`, or the error response.
async fn find_artifact(
    o: &Arc<Origin>,
    req: &Request,
    audience: Audience,
) -> (CacheStatus, Result<Artifact, Response>) {
    // The store keeps every answer as a public one; who may see it is the
    // private gate's to say.
    let store = policy::decide(req.kind(), Outcome::Found, Audience::Public, &o.ttls);

    // 1. The store (memory tier, then disk): fresh → served.
    let stale = match open(o, &req.key()).await {
        Err(e) => return (CacheStatus::None, Err(respond_error(o, Some((req, audience)), &e))),
        Ok(None) => None,
        Ok(Some(hit)) => {
            let age = Duration::from_millis(now_ms().saturating_sub(hit.meta().fetched_at_ms));
            if !store.is_fresh(age) {
                Some((hit, age))
            } else {
                if store.refresh_at.is_some_and(|at| age > at) {
                    refresh_in_background(o, req);
                }
                return (CacheStatus::Hit, Ok(hit));
            }
        }
    };

    // 2. A remembered not-found.
    if let Some(resp) = negative_hit(o, req, audience) {
        return (CacheStatus::Hit, Err(resp));
    }

    // 3. Pull from upstream, once for all concurrent askers; if that fails,
    //    an expired copy stands in where the policy allows.
    match pull::coalesced(o, req, pull::Trigger::Client).await {
        Ok(fresh) => (CacheStatus::Miss, Ok(fresh)),
        Err(e) => match stale {
            Some((hit, age))
                if store.may_serve_stale_on_error(age)
                    && !matches!(e.outcome(), Some(Outcome::NotFound | Outcome::Gone)) =>
            {
                tracing::warn!(key = %req.key(), error = %e, "upstream failed; serving stale copy");
                (CacheStatus::Stale, Ok(hit))
            }
            _ => (CacheStatus::Miss, Err(respond_error(o, Some((req, audience)), &e))),
        },
    }
}

/// `sumdb/<name>/supported`, answered here: 200 for a proxied database, so
/// the go command sends its lookups and tiles through us; 404 otherwise, so
/// it asks the database itself.
fn serve_sumdb_supported(o: &Origin, name: &str) -> (CacheStatus, Response) {
    match o.checksum_db(name) {
        Some(_) => {
            let d = policy::decide(Kind::SumDbSupported, Outcome::Found, Audience::Public, &o.ttls);
            (CacheStatus::None, text(StatusCode::OK, &d.cache_control, ""))
        }
        None => (
            CacheStatus::None,
            text(
                StatusCode::NOT_FOUND,
                policy::CC_NO_STORE,
                &format!("not found: checksum database {name} is not proxied here\n"),
            ),
        ),
    }
}

// ---- helpers -------------------------------------------------------------

fn refresh_in_background(o: &Arc<Origin>, req: &Request) {
    let (o, req) = (Arc::clone(o), req.clone());
    tokio::spawn(async move {
        if let Err(e) = pull::coalesced(&o, &req, pull::Trigger::Refresh).await {
            tracing::debug!(key = %req.key(), error = %e, "background refresh failed");
        }
    });
}

fn negative_hit(o: &Origin, req: &Request, audience: Audience) -> Option<Response> {
    let (status, message) = o.negative.get(&req.key())?;
    let outcome = Outcome::from_status(status).unwrap_or(Outcome::NotFound);
    let d = policy::decide(req.kind(), outcome, audience, &o.ttls);
    let mut r = text(
        StatusCode::from_u16(d.status).unwrap_or(StatusCode::NOT_FOUND),
        &d.cache_control,
        &format!("{message}\n"),
    );
    r.headers_mut().insert(CACHE_STATUS_HEADER, HeaderValue::from_static(CacheStatus::Hit.as_str()));
    Some(r)
}

/// The artifact at `key`: memory tier first, then one answered but still
/// being written, then the store (filling the memory tier when it fits).
async fn open(o: &Arc<Origin>, key: &str) -> Result<Option<Artifact>, OriginError> {
    if let Some(c) = o.memory.get(key) {
        return Ok(Some(Artifact::Memory(c)));
    }
    if let Some(a) = o.pulls.writes.get(key) {
        return Ok(Some(a));
    }
    if o.store.surely_absent(key) {
        return Ok(None);
    }
    let (o2, k) = (Arc::clone(o), key.to_string());
    tokio::task::spawn_blocking(move || -> std::io::Result<Option<Artifact>> {
        let Some(hit) = o2.stored(&k)? else { return Ok(None) };
        if o2.memory.fits(hit.meta.size) {
            let body = Bytes::from(hit.read_body()?);
            if let Some(c) = o2.memory.insert(&k, hit.meta.clone(), body) {
                return Ok(Some(Artifact::Memory(c)));
            }
        }
        Ok(Some(Artifact::File(Arc::new(hit))))
    })
    .await
    .map_err(|e| OriginError::Store(e.to_string()))?
    .map_err(|e| OriginError::store(key, e))
}

/// 200, 206, 304 or 416 for a stored artifact, honouring If-None-Match and
/// a single byte Range.
async fn respond_hit(
    o: &Origin,
    (req, audience): (&Request, Audience),
    hit: Artifact,
    cache: CacheStatus,
    req_headers: &HeaderMap,
) -> Response {
    let kind = req.kind();
    let rule = policy::decide(kind, Outcome::Found, audience, &o.ttls);
    let meta = hit.meta();
    let size = meta.size;
    let etag = format!("\"{}\"", &meta.sha256[..meta.sha256.len().min(32)]);
    let mut builder = Response::builder()
        .header(header::CACHE_CONTROL, &rule.cache_control)
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(CACHE_STATUS_HEADER, cache.as_str());
    if let Ok(t) = std::time::UNIX_EPOCH.checked_add(Duration::from_millis(meta.fetched_at_ms)).ok_or(()) {
        builder = builder.header(header::LAST_MODIFIED, httpdate::fmt_http_date(t));
    }
    if req_headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|inm| etag_matches(inm, &etag))
    {
        return built(builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()));
    }
    builder = builder.header(header::CONTENT_TYPE, kind.content_type());
    let range = match req_headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => match parse_range(spec, size) {
            RangeSpec::Ignore => None,
            RangeSpec::Unsatisfiable => {
                return built(
                    builder
                        .status(StatusCode::RANGE_NOT_SATISFIABLE)
                        .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                        .body(Body::empty()),
                );
            }
            RangeSpec::Bytes(start, end) => Some((start, end)),
        },
    };
    let (status, start, len) = match range {
        Some((start, end)) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, size),
    };
    builder = builder.status(status).header(header::CONTENT_LENGTH, len);
    let body = match hit {
        Artifact::Memory(c) => Body::from(c.body.slice(start as usize..(start + len) as usize)),
        // The first chunk is read before the status goes out: a file that
        // cannot be read is this node's 500, which the edge takes to the
        // next origin, not a 200 cut short that it can only pass on. (Small
        // files then also leave with their head in one write.)
        Artifact::File(hit) => match read_chunk(Arc::clone(&hit), start, start + len).await {
            Ok(first) => {
                let next = start + first.len() as u64;
                let rest = read_at(hit, next, start + len);
                Body::from_stream(futures::StreamExt::chain(futures::stream::once(async { Ok(first) }), rest))
            }
            Err(e) => return respond_error(o, Some((req, audience)), &OriginError::store(&req.key(), e)),
        },
    };
    built(builder.body(body))
}

/// The bytes of a stored file from `start` to `end`, a chunk at a time,
/// read at offsets: every reader of a shared [`Hit`] keeps its own position.
fn read_at(hit: Arc<Hit>, start: u64, end: u64) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    futures::stream::try_unfold((hit, start), move |(hit, at)| async move {
        if at >= end {
            return Ok(None);
        }
        let chunk = read_chunk(Arc::clone(&hit), at, end).await?;
        let next = at + chunk.len() as u64;
        Ok(Some((chunk, (hit, next))))
    })
}

/// One chunk of at most [`STREAM_CHUNK`] bytes from `at`, short of `end`.
async fn read_chunk(hit: Arc<Hit>, at: u64, end: u64) -> std::io::Result<Bytes> {
    let n = end.saturating_sub(at).min(STREAM_CHUNK as u64) as usize;
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; n];
        std::os::unix::fs::FileExt::read_exact_at(&hit.file, &mut buf, at).map(|()| Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The one place errors become responses: status from the error,
/// Cache-Control from the policy table, and a body that says what failed.
/// The body names what was asked and a short reason; the log has the whole
/// error.
fn respond_error(o: &Origin, asked: Option<(&Request, Audience)>, e: &OriginError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let cc = match (asked, e.outcome()) {
        (Some((req, audience)), Some(outcome)) if !matches!(e, OriginError::Request(_)) => {
            policy::decide(req.kind(), outcome, audience, &o.ttls).cache_control
        }
        _ => policy::CC_NO_STORE.to_string(),
    };
    let key = asked.map(|(req, _)| req.key());
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), error = %e, "request failed");
    }
    let message = e.client_message();
    let body = match key {
        Some(key) if !message.contains(&key) => format!("{key}: {message}\n"),
        _ => format!("{message}\n"),
    };
    let mut r = text(status, &cc, &body);
    r.headers_mut().insert(policy::FAULT_HEADER, HeaderValue::from_static(e.fault().as_str()));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}
