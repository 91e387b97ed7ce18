//! The edge's request flow, top-down, as pingora calls it:
//!
//! 0. `lane.rs` has read the request first: a fresh memory-tier hit that
//!    nothing in the request or the client's limits sets apart was answered
//!    there, before Pingora, and so was a plain cold miss of an `.info`, a
//!    `.mod` or a `.zip` (`miss.rs`, steps 2–7 below in the same terms); every other
//!    request comes here (a cold miss whose attempt there failed by the
//!    origin's fault, with the origin it asked: step 3 goes on from it).
//! 1. `request_filter`: HTTP/2's send deadline → span (when traces are on)
//!    → limits (429, by client IP, when configured) → header size (431) →
//!    method (405) → bandwidth tier (when configured) → `Request::parse`
//!    (400, never forwarded) → client IP (trusted `X-Forwarded-For` only) →
//!    region.
//! 2. `request_cache_filter` / `cache_key_callback`: everything public is
//!    looked up in the cache (memory tier, fill in progress, disk), keyed by
//!    the escaped GOPROXY path; credentialed requests bypass it unless
//!    `cache.private`, then are keyed by credential too; concurrent misses on
//!    a key wait on one cache lock.
//! 3. `upstream_peer`: region → ring → bounded load → origin, skipping the
//!    ones this request already tried.
//! 4. `fail_to_connect` / `error_while_proxy` / `upstream_response_filter`:
//!    a refused connection, a timeout, or a 5xx that the origin says is its
//!    own fault (`X-Modcdn-Fault`) moves on to the next candidate while
//!    retries remain and nothing was sent to the client. An upstream's
//!    failure relayed by an origin goes to the client as it is (or stale):
//!    every origin would ask the same upstream again.
//! 5. `response_cache_filter`: what to keep and how long, from the one
//!    policy table in `shared` (artifacts forever, lists with a TTL, 404/410
//!    briefly, errors and private answers never).
//! 6. `response_filter`: `X-Cache` and `Cache-Control` on every answer;
//!    `response_body_filter`: chunks of clients in a bandwidth tier are paced.
//! 7. `logging`: metrics (a send deadline passed counts too), and the
//!    origin's load slot is released.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use modcdn_router::load::InFlight;
use modcdn_router::membership::Snapshot;
use modcdn_router::route::Member;
use modcdn_router::watch::Membership;
use modcdn_shared::policy::{self, CacheStatus, Fault, Ttls, CACHE_STATUS_HEADER, CC_NO_STORE, FAULT_HEADER};
use modcdn_shared::request::Request;
use modcdn_shared::telemetry;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{CacheKey, CacheMeta, CachePhase, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::limits::{Limits, Slot};
use crate::metrics::Metrics;
use crate::storage::{cache_key, CacheStore};

/// The most header bytes a request may carry (the go command sends a few
/// hundred); more is refused with 431 before anything else is done.
const MAX_HEADER_BYTES: usize = 16 << 10;

/// What the edge shares between requests.
#[derive(Clone)]
pub struct Edge {
    pub membership: Arc<Membership>,
    pub storage: &'static CacheStore,
    pub eviction: &'static (dyn EvictionManager + Sync),
    pub lock: &'static CacheKeyLockImpl,
    pub limits: Arc<Limits>,
    /// Client tiers (bandwidth caps and uplink shares), when configured.
    pub bandwidth: Arc<crate::bandwidth::Bandwidth>,
    /// Requests per module, for the hot set.
    pub demand: Arc<crate::hot::Demand>,
    pub metrics: Arc<Metrics>,
    /// The policy's TTLs; `private` is `cache.private_ttl_secs`.
    pub ttls: Ttls,
    /// Whether answers to credentialed requests are cached (per credential).
    pub cache_private: bool,
    /// Region of clients GeoIP cannot place; none: the region map's default.
    pub region: Option<String>,
    pub retries: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `send_timeout_ms`: on HTTP/2, how long one chunk of an answer may
    /// wait for the client's flow-control window (see `request_filter`).
    pub send_timeout: Duration,
    /// Origins are reached over TLS (`origin.tls_ca`).
    pub origin_tls: bool,
}

/// One request's state.
#[derive(Default)]
pub struct Ctx {
    request: Option<Request>,
    /// Where the answer's body comes from: `memory` or `disk` (this edge's
    /// cache tiers); none: from an origin (or made here).
    served_from: Option<&'static str>,
    client: Option<IpAddr>,
    region: String,
    _permit: Option<Slot>,
    /// A tag of the request's credential, when it has one.
    credential: Option<String>,
    /// This request's span, when traces are exported.
    span: Option<tracing::Span>,
    /// Origin ids tried so far, in order.
    tried: Vec<String>,
    /// Whether an attempt was repeated on the same origin because its
    /// kept-alive connection was gone (once per request).
    reconnected: bool,
    /// The origin being asked now: its load slot and when it was asked.
    current: Option<(InFlight, Instant)>,
    /// Whose fault the origin's last 5xx answer was, as it said.
    fault: Option<Fault>,
    /// The client's bandwidth tier, when tiers are configured and one applies.
    tier: Option<usize>,
}

impl Ctx {
    fn kind(&self) -> &'static str {
        self.request.as_ref().map(Request::kind).map_or("invalid", |k| k.as_str())
    }

    /// Releases the current origin's load slot with the result.
    fn finish_origin(&mut self, ok: bool) {
        if let Some((slot, _)) = self.current.take() {
            slot.finish(ok);
        }
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // A cold miss the lane tried first goes on from the lane's attempt.
        ctx.tried = crate::miss::tried_by_lane();
        // An HTTP/2 client can keep its connection busy and a stream's
        // window shut: that stream is reset once one chunk of its answer
        // (of a cached body, 256 KiB at most) has waited the send deadline.
        // (The connection's own writes are under the deadline in `conn.rs`.)
        if session.is_http2() {
            session.set_write_timeout(Some(self.send_timeout));
        }
        if telemetry::traces_on() {
            let req = session.req_header();
            let span = tracing::info_span!("edge request", method = %req.method, path = %req.uri.path(), status = tracing::field::Empty, cache = tracing::field::Empty, origin = tracing::field::Empty);
            telemetry::continue_trace(&span, req.headers.get("traceparent").and_then(|v| v.to_str().ok()));
            ctx.span = Some(span);
        }
        if self.limits.enabled() && self.refuse_over_limit(session, ctx).await? {
            return Ok(true);
        }
        let header_bytes: usize =
            session.req_header().headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if header_bytes > MAX_HEADER_BYTES {
            respond(session, 431, "request headers too large\n", &[]).await?;
            return Ok(true);
        }
        let method = &session.req_header().method;
        if method != http::Method::GET && method != http::Method::HEAD {
            respond(session, 405, "only GET and HEAD are served\n", &[("allow", "GET, HEAD")]).await?;
            return Ok(true);
        }
        if self.bandwidth.enabled() {
            ctx.client = ctx.client.or_else(|| client_ip(session, &self.membership.snapshot()));
            let auth = session.req_header().headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
            ctx.tier = self.bandwidth.tier_of(ctx.client, auth);
            if let Some(tier) = ctx.tier {
                self.bandwidth.begin(tier, Instant::now());
            }
        }
        let path = session.req_header().uri.path().to_string();
        match Request::parse(&path) {
            Ok(r) => ctx.request = Some(r),
            Err(e) => {
                respond(session, e.status(), &format!("{e}\n"), &[]).await?;
                return Ok(true);
            }
        }
        self.count_hot(session, ctx.request.as_ref().and_then(Request::module).map(|m| m.escaped()));
        let snapshot = self.membership.snapshot();
        ctx.client = ctx.client.or_else(|| client_ip(session, &snapshot));
        ctx.region = self.region_of(&snapshot, ctx.client);
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        // Credentialed requests are for private modules: never shared, and
        // cached at all only when configured, under their credential.
        ctx.credential =
            session.req_header().headers.get(http::header::AUTHORIZATION).map(|v| credential_tag(v.as_bytes()));
        if ctx.credential.is_some() && !self.cache_private {
            return Ok(());
        }
        session.cache.enable(self.storage, Some(self.eviction), None, Some(self.lock), None);
        // The client whose miss fills the cache is served from the fill as
        // every waiter is; with Pingora's blocking writes, a full socket of
        // that one client stopped the fill, and so every other client of
        // the object, for as long as it read nothing (the first client of
        // a zip could hold all others back). Queued writes let the fill go
        // on while that client's answer waits.
        session.set_proxy_tasks_enabled(true);
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        match &ctx.request {
            Some(r) => Ok(cache_key(&r.key(), ctx.credential.as_deref())),
            None => Error::e_explain(ErrorType::InternalError, "cache key without a parsed request"),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snapshot = self.membership.snapshot();
        let Some(member) = next_candidate(&snapshot, ctx) else {
            let route_key = ctx.request.as_ref().map(|r| r.routing_key().as_str().to_string()).unwrap_or_default();
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                format!("no healthy origin for {route_key} in region {}", ctx.region),
            ));
        };
        ctx.tried.push(member.id.clone());
        ctx.current = Some((snapshot.view.begin(&member.id), Instant::now()));
        Ok(Box::new(self.peer(&member)))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(ip) = ctx.client {
            req.insert_header("x-forwarded-for", ip.to_string())?;
        }
        // With traces on, the origin's span is a child of this one; with
        // them off, the client's own traceparent goes on unchanged.
        if let Some(tp) = ctx.span.as_ref().and_then(telemetry::traceparent) {
            req.insert_header("traceparent", tp)?;
        }
        Ok(())
    }

    fn fail_to_connect(&self, session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        if crate::error::local(&e) {
            // This edge's own shortage: neither the origin's failure nor
            // one another origin would be spared (no retry).
            let id = ctx.tried.last().cloned().unwrap_or_default();
            self.metrics.origin_requests.with_label_values(&[id.as_str(), "local"]).inc();
            drop(ctx.current.take());
            tracing::warn!(origin = %id, error = %e, "no connection to the origin: out of local resources");
            return crate::error::out_of_local_resources(&id);
        }
        self.origin_failed(ctx, "connect");
        if let Some(id) = ctx.tried.last() {
            // A refused or timed-out connection takes it out of routing now;
            // health checks bring it back.
            self.membership.view().mark_down(id);
            e = crate::error::connect_failed(id, e);
        }
        e.set_retry(self.may_retry(session, ctx));
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        reused: bool,
    ) -> Box<Error> {
        // A kept-alive connection the origin closed or reset as this request
        // went out (an idle timeout firing then): not the origin's fault, and
        // safe to ask again, once, of the same origin. If that fails too (a
        // dead origin leaves every pooled connection closed), the usual
        // rules apply: counted against it, and on to the next.
        let closed = matches!(e.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError);
        if reused && closed && !ctx.reconnected && session.response_written().is_none() {
            ctx.reconnected = true;
            ctx.tried.pop();
            drop(ctx.current.take());
            e.set_retry(true);
            return e;
        }
        if ctx.current.is_some() {
            self.origin_failed(ctx, "error");
        }
        e.set_retry(self.may_retry(session, ctx));
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if let (Some((_, started)), Some(id)) = (&ctx.current, ctx.tried.last()) {
            self.metrics.origin_seconds.with_label_values(&[id]).observe(started.elapsed().as_secs_f64());
        }
        let fault = (status >= 500).then(|| Fault::of_answer(resp.headers.get(FAULT_HEADER).map(|v| v.as_bytes())));
        ctx.fault = fault;
        // Only the origin's own trouble is worth asking another origin.
        if matches!(fault, Some(Fault::Origin | Fault::Busy)) && self.may_retry(session, ctx) {
            self.origin_failed(ctx, fault.map_or("5xx", Fault::as_str));
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "origin answered 5xx; trying the next one");
            e.set_retry(true);
            return Err(e);
        }
        if let Some(id) = ctx.tried.last() {
            self.metrics.origin_requests.with_label_values(&[id.as_str(), fault.map_or("ok", Fault::as_str)]).inc();
        }
        Ok(())
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        hit: &mut pingora::cache::HitHandler,
        _is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<pingora::cache::ForcedFreshness>> {
        ctx.served_from = Some(crate::storage::tier_of(hit.as_ref()));
        Ok(None)
    }

    fn response_cache_filter(&self, _session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) -> Result<RespCacheable> {
        let Some(request) = &ctx.request else { return Ok(RespCacheable::Uncacheable(NoCacheReason::InternalError)) };
        let len = resp.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        Ok(match self.cache_meta(request, resp, ctx.credential.is_some()) {
            Some(_) if len.is_some_and(|len| !self.storage.has_room(len)) => {
                tracing::warn!(key = %request.key(), len, "the cache's disk has no room for the body: answered, not kept");
                RespCacheable::Uncacheable(NoCacheReason::StorageError)
            }
            Some(meta) => RespCacheable::Cacheable(meta),
            None => RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
        })
    }

    fn should_serve_stale(&self, session: &mut Session, _ctx: &mut Ctx, error: Option<&Error>) -> bool {
        // Stale-while-revalidate windows come from the policy table; on
        // errors, anything that went wrong on the way to origins counts.
        let Some(e) = error else { return true };
        let serve = e.esource() == &ErrorSource::Upstream || matches!(e.etype(), ErrorType::HTTPStatus(s) if *s >= 500);
        if serve {
            // Pingora does not keep a client connection after serving stale
            // on an error; say so in the answer, so that clients do not send
            // another request on it.
            session.set_keepalive(None);
        }
        serve
    }

    async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        let x_cache = match session.cache.phase() {
            CachePhase::Hit | CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheStatus::Hit,
            CachePhase::Stale | CachePhase::StaleUpdating => CacheStatus::Stale,
            CachePhase::Expired => CacheStatus::Expired,
            // (Cacheable, and fetched: the storage could not keep it.)
            CachePhase::Miss | CachePhase::Disabled(NoCacheReason::StorageError) => CacheStatus::Miss,
            _ => CacheStatus::Bypass,
        };
        self.mark_answer(resp, ctx.request.as_ref(), x_cache)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        // A paced client's chunk waits until its tier lets it go.
        let (Some(tier), Some(chunk)) = (ctx.tier, body.as_ref()) else { return Ok(None) };
        let wait = self.bandwidth.delay(tier, ctx.client, chunk.len(), Instant::now());
        Ok((!wait.is_zero()).then_some(wait))
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        ctx.finish_origin(false);
        let code = crate::error::status(e);
        if code > 0 && session.response_written().is_none() {
            // The connection is not reused after an error: say so, so that
            // clients do not send another request on it.
            session.set_keepalive(None);
            let retry: &[(&str, &str)] = if code == 503 { &[("retry-after", "1")] } else { &[] };
            let _ = respond(session, code, &crate::error::client_message(e), retry).await;
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if e.is_some_and(|e| e.etype() == &ErrorType::WriteTimedout) {
            self.metrics.send_timeouts.inc();
        }
        let written = session.response_written();
        let status = written.map_or(0, |r| r.status.as_u16());
        let cache =
            CacheStatus::of_header(written.and_then(|r| r.headers.get(CACHE_STATUS_HEADER)).map(|v| v.as_bytes()));
        let kind = ctx.kind();
        let bytes = session.body_bytes_sent() as u64;
        // An origin's health counts only its own faults: a relayed upstream
        // failure is a working origin, a busy one is neither.
        match ctx.fault {
            Some(Fault::Busy) => drop(ctx.current.take()),
            Some(Fault::Origin) => ctx.finish_origin(false),
            Some(Fault::Upstream | Fault::Request) => ctx.finish_origin(true),
            None => ctx.finish_origin(status != 0 && status < 500),
        }
        self.metrics.request(kind, status, cache.label(), ctx.served_from.unwrap_or("origin"), bytes);
        if let Some(span) = ctx.span.take() {
            span.record("status", status);
            span.record("cache", cache.as_str());
            if let Some(origin) = ctx.tried.last() {
                span.record("origin", origin.as_str());
            }
        }
    }
}

impl Edge {
    /// How to reach `member` (over TLS when origins are).
    pub(crate) fn peer(&self, member: &Member) -> HttpPeer {
        // Over TLS, the certificate must name the host of the member's address.
        let sni = match self.origin_tls {
            true => member.address.rsplit_once(':').map_or("", |(host, _)| host.trim_matches(['[', ']'])).to_string(),
            false => String::new(),
        };
        let mut peer = HttpPeer::new(member.address.as_str(), self.origin_tls, sni);
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer
    }

    /// Whether and how long the answer `resp` to `request` is kept (`None`:
    /// not at all), from the one policy table in `shared`.
    pub(crate) fn cache_meta(&self, request: &Request, resp: &ResponseHeader, credentialed: bool) -> Option<CacheMeta> {
        // `private` answers are kept only under the credential they were
        // for, for the private TTL, never stale: the origin decides again
        // who may have them.
        let cache_control = resp.headers.get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok());
        let d = policy::decide_downstream(
            request.kind(),
            resp.status.as_u16(),
            cache_control,
            credentialed,
            self.cache_private,
            &self.ttls,
        );
        let fresh = d.freshness.duration()?;
        let secs = |d: Duration| d.as_secs().min(u32::MAX as u64) as u32;
        let now = SystemTime::now();
        let (swr, sie) = (secs(d.stale_while_revalidate), secs(d.stale_if_error));
        Some(CacheMeta::new(now + fresh, now, swr, sie, resp.clone()))
    }

    /// What every answer says of itself: `X-Cache`, and a `Cache-Control`
    /// by the policy where the origin sent none.
    pub(crate) fn mark_answer(
        &self,
        resp: &mut ResponseHeader,
        request: Option<&Request>,
        x_cache: CacheStatus,
    ) -> Result<()> {
        resp.insert_header(CACHE_STATUS_HEADER, x_cache.as_str())?;
        if !resp.headers.contains_key(http::header::CACHE_CONTROL) {
            let cc = match request {
                Some(r) => {
                    let status = resp.status.as_u16();
                    policy::decide_downstream(r.kind(), status, None, false, false, &self.ttls).cache_control
                }
                None => CC_NO_STORE.to_string(),
            };
            resp.insert_header(http::header::CACHE_CONTROL, cc)?;
        }
        Ok(())
    }

    /// Whether a failed attempt may move on: attempts left, and nothing of
    /// the answer has reached the client yet (every request served is a
    /// GET or HEAD, so repeating it is safe).
    /// The answer of the last one stands when there is no other to ask.
    fn may_retry(&self, session: &Session, ctx: &Ctx) -> bool {
        ctx.tried.len() <= self.retries
            && session.response_written().is_none()
            && next_candidate(&self.membership.snapshot(), ctx).is_some()
    }

    /// Applies the per-client limits; `Ok(true)` when the request was
    /// refused (429 with Retry-After written).
    async fn refuse_over_limit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(ip) = client_ip(session, &self.membership.snapshot()) else { return Ok(false) };
        ctx.client = Some(ip);
        match self.limits.admit(ip) {
            Ok(permit) => {
                ctx._permit = permit;
                Ok(false)
            }
            Err(refused) => {
                self.metrics.rate_limited.inc();
                let retry = refused.retry_after_secs.to_string();
                let body = format!("too many requests ({}); retry after {retry} s\n", refused.reason);
                respond(session, 429, &body, &[("retry-after", &retry)]).await?;
                Ok(true)
            }
        }
    }

    /// Counts a client's request for `module` (not the edge's own
    /// prefetches, not credentialed requests for private modules).
    fn count_hot(&self, session: &Session, module: Option<&str>) {
        let headers = &session.req_header().headers;
        let client_asked =
            !headers.contains_key(http::header::AUTHORIZATION) && !headers.contains_key(crate::hot::PREFETCH_HEADER);
        self.demand.count(module, client_asked);
    }

    /// The client's region by GeoIP; clients it cannot place (a Unix
    /// socket, loopback, private networks) are in the edge's own region.
    pub(crate) fn region_of(&self, snapshot: &Snapshot, client: Option<IpAddr>) -> String {
        let located = client
            .map(|ip| snapshot.geo.locate(ip))
            .filter(|(country, continent)| country.is_some() || continent.is_some());
        match (located, client, &self.region) {
            (None, _, Some(own)) => own.clone(),
            (_, Some(ip), _) => snapshot.geo.region_of(ip).to_string(),
            (_, None, _) => snapshot.geo.region_of(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)).to_string(),
        }
    }

    /// Counts a failed attempt and releases its load slot: a failure of the
    /// origin's health, unless it only said it was busy.
    fn origin_failed(&self, ctx: &mut Ctx, result: &str) {
        if let Some(id) = ctx.tried.last() {
            self.metrics.origin_requests.with_label_values(&[id.as_str(), result]).inc();
        }
        if ctx.fault == Some(Fault::Busy) {
            drop(ctx.current.take());
        } else {
            ctx.finish_origin(false);
        }
        ctx.fault = None;
    }
}

/// The best origin for this request that it has not tried yet.
fn next_candidate(snapshot: &Snapshot, ctx: &Ctx) -> Option<Member> {
    let key = ctx.request.as_ref()?.routing_key();
    snapshot.topology.route(&key, &ctx.region).find(|m| !ctx.tried.contains(&m.id)).cloned()
}

/// A tag for a credential: SHA-256 of the Authorization header, so keys and
/// files never hold the credential itself.
fn credential_tag(authorization: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(authorization).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The client's address: the peer, or whom a trusted proxy forwarded for.
fn client_ip(session: &Session, snapshot: &Snapshot) -> Option<IpAddr> {
    let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())?;
    let forwarded = session.req_header().headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    Some(snapshot.geo.client_ip(peer, forwarded))
}

/// The head of a small answer of the edge's own (errors, refusals) with a
/// plain-text body of `len` bytes.
pub(crate) fn own_answer(status: u16, len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, CC_NO_STORE)?;
    resp.insert_header(CACHE_STATUS_HEADER, CacheStatus::None.as_str())?;
    Ok(resp)
}

/// Writes a small answer of the edge's own (errors, refusals).
async fn respond(session: &mut Session, status: u16, body: &str, headers: &[(&'static str, &str)]) -> Result<()> {
    let mut resp = own_answer(status, body.len())?;
    for (name, value) in headers {
        resp.insert_header(*name, *value)?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), head).await?;
    if !head {
        session.write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true).await?;
    }
    Ok(())
}
