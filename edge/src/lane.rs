//! The edge's fast lane: the requests of an HTTP/1.1 connection are read
//! here first (and the streams of an HTTP/2 one, see below). The commonest
//! request of all, a fresh object of the memory tier asked for plainly, is
//! answered right here, with the head the memory tier serialized once: no
//! Pingora session, no cache state machine, one read and one write per
//! request. So is the commonest miss, a cold `.info`,
//! `.mod` or `.zip` asked for plainly by a client under no limits, with traces
//! off: `miss.rs` fetches it from the origin the full path would ask first
//! and keeps it as the full path keeps it, unless the disk holds it (not
//! yet in a tier after a restart, or let go by the tiers): then it is read
//! into the memory or the mapped tier, as the full path's lookup reads it,
//! and answered as a hit of that tier. Everything else goes to
//! Pingora's proxy (`proxy.rs`) with the bytes already read, and the
//! connection comes back here once that answer is done (and the answers of
//! the requests Pingora read behind it, see [`holds_next_request`]).
//!
//! A hit stays in the lane only when the answer would be the same on
//! the full path: HTTP/1.1 or 1.0, GET or HEAD, a path with no query that is a key
//! of the memory tier or of the mapped tier (keyed by escaped GOPROXY path,
//! which only a request that parsed could have put there; a mapped body
//! only to a plain socket, see `storage::mapped`), no body, no credentials,
//! no `Connection` option but keep-alive or close (the lane then
//! closes the connection after its answer; HTTP/1.0 closes unless asked to
//! keep alive), a client under its
//! limits and in no bandwidth tier, and no shutdown under way. Conditions
//! (`If-None-Match`, `If-Modified-Since`) and one byte range are answered
//! here by Pingora's own filters, as its cache answers them on a hit (304,
//! 206, 416); several ranges are the full path's (one multipart body). Anything
//! else, or a head this lane cannot parse or that is larger than
//! [`MAX_HEAD`], is the full path's to answer (and to refuse).
//!
//! An HTTP/2 connection is Pingora's to read (its handshake and accept
//! loop), and each of its streams comes here first ([`Streams`]): a fresh
//! memory-tier hit asked for plainly, as above but with no condition or
//! range, is answered on the stream, and so is a cold miss as above;
//! every other stream goes to the full path.
//! (Behind a TLS edge the go command speaks HTTP/2: with every stream on
//! the full path, small hits over HTTP/2 went at 0.58× nginx's rate.)

use std::io::IoSlice;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, CACHE_CONTROL, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE};
use http::StatusCode;
use modcdn_router::watch::Membership;
use modcdn_shared::policy::CacheStatus;
use modcdn_shared::request::Request;
use modcdn_shared::telemetry;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::http::RequestHeader;
use pingora::protocols::http::conditional_filter::not_modified_filter;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::{range_header_filter, RangeType};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bandwidth::Bandwidth;
use crate::limits::{Limits, Slot};
use crate::metrics::Metrics;
use crate::miss::{Body, Misses};
use crate::storage::{CacheStore, MemFile, MemObject};

/// The largest request head the lane reads before leaving the request to
/// the full path (the go command sends a few hundred bytes).
const MAX_HEAD: usize = 8 << 10;
/// Header lines the lane parses at most.
const MAX_HEADERS: usize = 32;
/// The request headers the lane hands to Pingora's conditional and range
/// filters.
const ASKS: [HeaderName; 4] = [IF_NONE_MATCH, IF_MODIFIED_SINCE, RANGE, IF_RANGE];
/// The most ranges Pingora's cache reads from a `Range` (its default).
const MAX_RANGES: Option<usize> = Some(200);
/// How long a kept-alive connection may wait for its next request (as
/// Pingora's keep-alive).
const IDLE: Duration = Duration::from_secs(60);

/// The largest mapped body the lane writes without capping the socket's
/// unsent queue first (see `conn::limit_unsent`). Measured side by side:
/// with the cap on every mapped body, 1 MiB hits fell 5.8k → 5.3k req/s;
/// without it above 4 MiB, 200 clients of one 64 MiB zip took 3.7–3.9 s
/// instead of 2.5–2.7 s.
const UNCAPPED_MAX: usize = 4 << 20;

/// The lane in front of the proxy `P` (Pingora's, for `proxy::Edge`).
pub struct Lane<P> {
    pub proxy: Arc<P>,
    /// Cold misses of `.info`, `.mod` and `.zip`, fetched here (`miss.rs`).
    pub misses: Arc<Misses>,
    pub storage: &'static CacheStore,
    pub limits: Arc<Limits>,
    pub bandwidth: Arc<Bandwidth>,
    pub demand: Arc<crate::hot::Demand>,
    pub metrics: Arc<Metrics>,
    pub membership: Arc<Membership>,
    /// `send_timeout_ms`: how long the answer of an HTTP/2 stream may wait
    /// for the client's window (see `proxy.rs`, `request_filter`).
    pub send_timeout: Duration,
}

/// What the lane makes of the head at the front of the buffer.
enum Head {
    /// Answer `hit` to this request, whose head is `len` bytes.
    Hit {
        len: usize,
        hit: Hit,
        head_only: bool,
        /// The client asked to close the connection after this answer.
        close: bool,
    },
    /// A cold miss of this request (see `miss.rs`), whose head is `len`
    /// bytes: `upstream` is its head for the origin.
    Miss {
        len: usize,
        request: Request,
        upstream: Box<RequestHeader>,
        client: Option<IpAddr>,
        close: bool,
        /// Not the edge's own prefetch (see `hot.rs`).
        client_asked: bool,
    },
    /// Not the lane's: the full path answers it.
    Proxy,
    /// The head is not whole yet.
    Partial,
}

/// A hit the lane answers: the object, what of it, and what is held while
/// answering (the client's in-flight slot, the request's span).
struct Hit {
    obj: Arc<MemObject>,
    shape: Shape,
    _slot: Option<Slot>,
    _span: Option<tracing::Span>,
}

/// What the lane reads of a request, HTTP/1 or HTTP/2, before it looks for
/// its key.
struct Asked<'a> {
    head_only: bool,
    /// The first `X-Forwarded-For`, as the full path reads it.
    forwarded: Option<&'a str>,
    /// Not the edge's own prefetch (see `hot.rs`).
    client_asked: bool,
    /// The client asked to close the connection after this answer.
    close: bool,
    /// The conditions and range asked (see [`ASKS`]).
    asks: Vec<(HeaderName, &'a [u8])>,
    traceparent: Option<&'a str>,
}

impl<'a> Asked<'a> {
    /// The key asked for by `method` of `path` with these header `lines`,
    /// and what the lane reads of them; `None`: the full path's to answer
    /// (not a GET or HEAD, a query, a header only it handles, a shutdown
    /// under way). `http10`: the connection closes unless asked to keep
    /// alive.
    fn read(
        method: &str,
        path: &'a str,
        lines: impl Iterator<Item = (&'a str, &'a [u8])>,
        http10: bool,
        shutdown: &ShutdownWatch,
    ) -> Option<(&'a str, Asked<'a>)> {
        let head_only = match method {
            "GET" => false,
            "HEAD" => true,
            _ => return None,
        };
        let key = path.strip_prefix('/').filter(|k| !k.contains(['?', '#']))?;
        if *shutdown.borrow() {
            return None;
        }
        let mut asked = Asked {
            head_only,
            forwarded: None,
            client_asked: true,
            close: http10,
            asks: Vec::new(),
            traceparent: None,
        };
        for (name, value) in lines {
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                asked.forwarded = asked.forwarded.or_else(|| std::str::from_utf8(value).ok());
            } else if name.eq_ignore_ascii_case(crate::hot::PREFETCH_HEADER) {
                asked.client_asked = false;
            } else if name.eq_ignore_ascii_case("traceparent") {
                asked.traceparent = asked.traceparent.or_else(|| std::str::from_utf8(value).ok());
            } else if name.eq_ignore_ascii_case("connection") {
                if value.eq_ignore_ascii_case(b"close") {
                    asked.close = true;
                } else if value.eq_ignore_ascii_case(b"keep-alive") {
                    asked.close &= !http10;
                } else {
                    return None;
                }
            } else if let Some(ask) = ASKS.iter().find(|a| name.eq_ignore_ascii_case(a.as_str())) {
                asked.asks.push((ask.clone(), value));
            } else if ["authorization", "content-length", "transfer-encoding", "expect", "upgrade"]
                .iter()
                .any(|special| name.eq_ignore_ascii_case(special))
            {
                return None;
            }
        }
        Some((key, asked))
    }
}

/// What of an object the answer is.
enum Shape {
    /// The object as stored: 200, its whole body.
    Whole,
    /// A head of its own (304, 206, 416), with `body` of the object's body
    /// (none for a 304 or a 416).
    Other { status: u16, head: Bytes, body: Range<usize> },
}

impl Shape {
    /// How the full path answers `obj` to a request with these conditions
    /// and range (`asks`): Pingora's filters on a hit, run on the stored
    /// head. `None`: the full path's to answer (several ranges; a head with
    /// no `Cache-Control`, to which the full path adds one by status).
    fn of(obj: &MemObject, head_only: bool, asks: &[(HeaderName, &[u8])]) -> Option<Shape> {
        if asks.is_empty() {
            return Some(Shape::Whole);
        }
        let stored = obj.header();
        if !stored.headers.contains_key(CACHE_CONTROL) {
            return None;
        }
        let method = if head_only { http::Method::HEAD } else { http::Method::GET };
        let mut req = RequestHeader::build(method, b"/", None).ok()?;
        for (name, value) in asks {
            req.append_header(name.clone(), *value).ok()?;
        }
        if not_modified_filter(&req, stored) {
            // (A range is not looked at: a 304 has no body to take it from.)
            let head = obj.not_modified().clone();
            return Some(Shape::Other { status: StatusCode::NOT_MODIFIED.as_u16(), head, body: 0..0 });
        }
        let mut resp = stored.clone();
        let (len, body) = match range_header_filter(&req, &mut resp, MAX_RANGES) {
            RangeType::None => return Some(Shape::Whole),
            // (Its bounds are the stored `Content-Length`'s: the body's
            // own length, or the full path's to answer.)
            RangeType::Single(r) if r.end <= obj.body.bytes.len() => (Some(r.len()), r),
            RangeType::Single(_) => return None,
            RangeType::Invalid => (Some(0), 0..0),
            RangeType::Multi(_) => return None,
        };
        let head = crate::storage::http1_head(&resp, len);
        Some(Shape::Other { status: resp.status.as_u16(), head, body })
    }

    fn status(&self) -> u16 {
        match self {
            Shape::Whole => 200,
            Shape::Other { status, .. } => *status,
        }
    }

    /// The bytes of `obj`'s body the answer carries (to a GET).
    fn body<'a>(&self, obj: &'a MemObject) -> &'a [u8] {
        match self {
            Shape::Whole => &obj.body.bytes,
            Shape::Other { body, .. } => &obj.body.bytes[body.clone()],
        }
    }
}

#[async_trait]
impl<P: HttpServerApp + ServerApp + Send + Sync + 'static> ServerApp for Lane<P> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            return ServerApp::process_new(&Arc::new(Streams(self.clone())), stream, shutdown).await;
        }
        let peer = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let plain = crate::conn::plain_socket(&stream).is_some();
        let mut buf = BytesMut::with_capacity(4096);
        let mut head_buf = Vec::with_capacity(1024);
        let mut settings: Option<HttpPersistentSettings> = None;
        // Whether the socket's unsent queue is capped yet (see `conn.rs`).
        let mut capped = false;
        // Pingora holds bytes of the next request (see `holds_next_request`).
        let mut pingora_holds_next = false;
        loop {
            let head = if pingora_holds_next {
                Head::Proxy
            } else {
                match self.next_head(&mut stream, &mut buf, peer, plain, shutdown).await {
                    Ok(Some(head)) => head,
                    Ok(None) | Err(_) => return None,
                }
            };
            // A miss of both tiers that the disk holds: read into one here,
            // and answered as their hits are.
            let head = match head {
                Head::Miss { len, ref request, close, client_asked, .. } => match self.on_disk(request, plain).await {
                    Some(obj) => {
                        self.demand.count(crate::hot::module_of(&request.key()), client_asked);
                        let hit = Hit { obj, shape: Shape::Whole, _slot: None, _span: None };
                        Head::Hit { len, hit, head_only: false, close }
                    }
                    None => head,
                },
                head => head,
            };
            if let Head::Hit { len, hit: Hit { obj, shape, .. }, head_only, close } = &head {
                buf.advance(*len);
                if !capped && obj.body.mapped.is_some() && obj.body.bytes.len() > UNCAPPED_MAX {
                    crate::conn::limit_unsent(&stream);
                    capped = true;
                }
                if let Err(e) = answer(&mut stream, &mut head_buf, obj, shape, *head_only, *close).await {
                    // A page of a mapped body that could not be read.
                    if e.raw_os_error() == Some(libc::EFAULT) || !obj.body.sound() {
                        self.storage.unmap(obj);
                    }
                    return None;
                }
                let sent = if *head_only { 0 } else { shape.body(obj).len() as u64 };
                let kind = obj.kind.map_or("invalid", |k| k.as_str());
                self.metrics.request(kind, shape.status(), CacheStatus::Hit.label(), obj.body.tier(), sent);
                if *close {
                    return None;
                }
                continue;
            }
            // The origins a cold miss's attempt here asked, for the full path.
            let mut tried = Vec::new();
            if let Head::Miss { len, request, upstream, client, close, client_asked } = head {
                let fetched = self.misses.fetch(&request, upstream, client).await;
                if let Ok(answer) = fetched {
                    let close = close || answer.close;
                    buf.advance(len);
                    // (Counted here, not where the full path takes it.)
                    self.demand.count(crate::hot::module_of(&request.key()), client_asked);
                    let head = crate::storage::http1_head(&answer.header, Some(answer.len));
                    let written = match answer.body {
                        Body::Whole(body) => write_answer(&mut stream, &mut head_buf, &head, &body, close).await,
                        Body::Fill(reader, finished) => {
                            if !capped {
                                crate::conn::limit_unsent(&stream);
                                capped = true;
                            }
                            let written = write_fill(&mut stream, &mut head_buf, &head, reader, close).await;
                            // The next request once the fill is finished
                            // (see `Misses::stream`).
                            if written.is_ok() {
                                let _ = finished.await;
                            }
                            written
                        }
                    };
                    if written.is_err() {
                        return None;
                    }
                    let kind = request.kind().as_str();
                    self.metrics.request(kind, answer.status, CacheStatus::Miss.label(), "origin", answer.len as u64);
                    if close {
                        return None;
                    }
                    continue;
                }
                tried.extend(fetched.err().flatten());
            }
            // The full path, from the bytes read so far.
            if !capped {
                crate::conn::limit_unsent(&stream);
                capped = true;
            }
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    // (The proxy turns keep-alive off once a shutdown begins.)
                    session.set_keepalive(Some(IDLE.as_secs()));
                    let reuses = self.proxy.server_options().and_then(|o| o.keepalive_request_limit);
                    session.set_keepalive_reuses_remaining(reuses);
                    // Requests sent without waiting for an answer are kept
                    // and answered in order (off, Pingora closes the
                    // connection and drops them).
                    session.set_pipelining_enabled(true);
                }
            }
            if !buf.is_empty() {
                session.set_pipelined_prefix(buf.split());
            }
            let answered = crate::miss::hand_over(tried, self.proxy.process_new_http(session, shutdown));
            let (back, kept) = answered.await?.consume();
            stream = back;
            pingora_holds_next = kept.as_ref().is_some_and(holds_next_request);
            settings = kept;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await
    }
}

/// Whether Pingora read bytes of a next request on this connection (sent
/// with the request it answered, or while it answered): it keeps them in
/// `settings` for its next session, which then answers that request. Pingora
/// 0.9.1 has no getter for them; its `Debug` shows them. (Were that to
/// change, the lane would read the socket past them and the request would go
/// unanswered: `memory_hits_take_the_fast_lane_and_answer_as_the_full_path_does`
/// fails.)
fn holds_next_request(settings: &HttpPersistentSettings) -> bool {
    format!("{settings:?}").contains("pipelined_prefix: Some(")
}

/// The streams of an HTTP/2 connection, as Pingora's own accept loop hands
/// them over (its handshake, its bounds on streams open and on malformed
/// ones, its idle timeout and graceful shutdown): a stream asking plainly
/// for a fresh memory-tier hit is answered here ([`Lane::decide_h2`]), every
/// other one by the full path.
struct Streams<P>(Arc<Lane<P>>);

#[async_trait]
impl<P: HttpServerApp + ServerApp + Send + Sync + 'static> HttpServerApp for Streams<P> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let lane = &self.0;
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        // The origins a cold miss's attempt here asked, for the full path.
        let mut tried = Vec::new();
        // (Each answer here is under the send deadline, as on the full
        // path, see `proxy.rs` `request_filter`: a stream whose window
        // stays shut is reset.)
        match lane.decide_h2(session.req_header(), peer, shutdown) {
            Head::Hit { hit, head_only, .. } => {
                session.set_write_timeout(Some(lane.send_timeout));
                let answered = answer_h2(&mut session, &hit.obj, head_only).await;
                let kind = hit.obj.kind.map_or("invalid", |k| k.as_str());
                lane.h2_answered(answered, kind, 200, CacheStatus::Hit, hit.obj.body.tier());
                return None;
            }
            Head::Miss { request, upstream, client, client_asked, .. } => {
                match lane.misses.fetch(&request, upstream, client).await {
                    Ok(answer) => {
                        lane.demand.count(crate::hot::module_of(&request.key()), client_asked);
                        session.set_write_timeout(Some(lane.send_timeout));
                        let status = answer.status;
                        let answered = write_h2(&mut session, answer).await;
                        lane.h2_answered(answered, request.kind().as_str(), status, CacheStatus::Miss, "origin");
                        return None;
                    }
                    Err(origin) => tried.extend(origin),
                }
            }
            Head::Proxy | Head::Partial => {}
        }
        crate::miss::hand_over(tried, lane.proxy.process_new_http(session, shutdown)).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.0.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.0.proxy.server_options()
    }
}

/// Answers `obj` whole on an HTTP/2 stream: its head for HTTP/2 with this
/// moment's `Age` (the session adds the `Date`, as for the full path),
/// then, to a GET, its body in one write, which ends the stream (a
/// memory-tier body is 64 KiB at most: one piece, as the full path's hit
/// sends it). The body bytes sent.
async fn answer_h2(session: &mut ServerSession, obj: &MemObject, head_only: bool) -> pingora::Result<u64> {
    let mut header = Box::new(obj.h2_head().clone());
    let age = SystemTime::now().duration_since(obj.created).unwrap_or_default().as_secs();
    header.insert_header(http::header::AGE, age)?;
    session.write_response_header(header).await?;
    let body = if head_only { Bytes::new() } else { obj.body.bytes.clone() };
    let sent = body.len() as u64;
    session.write_response_body(body, true).await?;
    Ok(sent)
}

/// Answers a cold miss the lane fetched (see `miss.rs`) on an HTTP/2
/// stream: its head with the body's length, then the body as it comes,
/// the stream ended with its last byte; then waits for the fill's finish,
/// as the HTTP/1 lane does before its connection's next request. The body
/// bytes sent.
async fn write_h2(session: &mut ServerSession, answer: crate::miss::Answer) -> pingora::Result<u64> {
    let mut header = answer.header;
    header.insert_header(http::header::CONTENT_LENGTH, answer.len)?;
    session.write_response_header(header).await?;
    match answer.body {
        Body::Whole(body) => session.write_response_body(body, true).await?,
        Body::Fill(mut reader, finished) => {
            while let Some(chunk) = reader.read_body().await? {
                session.write_response_body(chunk, false).await?;
            }
            session.write_response_body(Bytes::new(), true).await?;
            let _ = finished.await;
        }
    }
    Ok(answer.len as u64)
}

impl<P> Lane<P> {
    /// Counts an answer the lane wrote on an HTTP/2 stream (`source`: where
    /// its body came from), or the send deadline it missed.
    fn h2_answered(&self, answered: pingora::Result<u64>, kind: &str, status: u16, cache: CacheStatus, source: &str) {
        match answered {
            Ok(sent) => self.metrics.request(kind, status, cache.label(), source, sent),
            // (Dropped unfinished, the stream is reset.)
            Err(e) if e.etype() == &pingora::ErrorType::WriteTimedout => self.metrics.send_timeouts.inc(),
            Err(_) => {}
        }
    }

    /// Reads until the buffer holds a whole head (or the lane gives up on
    /// it); `None` when the client closed the connection between requests.
    async fn next_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        peer: Option<IpAddr>,
        plain: bool,
        shutdown: &ShutdownWatch,
    ) -> std::io::Result<Option<Head>> {
        loop {
            if !buf.is_empty() {
                match self.decide(buf, peer, plain, shutdown) {
                    Head::Partial if buf.len() < MAX_HEAD => {}
                    Head::Partial => return Ok(Some(Head::Proxy)),
                    head => return Ok(Some(head)),
                }
            }
            let read = if buf.is_empty() {
                match tokio::time::timeout(IDLE, stream.read_buf(buf)).await {
                    Ok(read) => read?,
                    Err(_) => return Ok(None),
                }
            } else {
                stream.read_buf(buf).await?
            };
            if read == 0 {
                return Ok(None);
            }
        }
    }

    /// Whether the head at the front of `buf` is a fresh memory-tier or
    /// mapped-tier hit the lane may answer (see the module docs); `plain`:
    /// the connection is plain TCP.
    fn decide(&self, buf: &[u8], peer: Option<IpAddr>, plain: bool, shutdown: &ShutdownWatch) -> Head {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Head::Partial,
            Err(_) => return Head::Proxy,
        };
        if !matches!(req.version, Some(0 | 1)) {
            return Head::Proxy;
        }
        let (Some(method), Some(path)) = (req.method, req.path) else { return Head::Proxy };
        // HTTP/1.0 closes unless asked to keep alive.
        let http10 = req.version == Some(0);
        let lines = req.headers.iter().map(|h| (h.name, h.value));
        let Some((key, asked)) = Asked::read(method, path, lines, http10, shutdown) else { return Head::Proxy };
        let Some(obj) = self.storage.memory_get(key) else {
            let lines = req.headers.iter().map(|h| (h.name, h.value));
            return self.decide_miss(path, lines, None, len, key, peer, &asked);
        };
        match self.admit(obj, method, path, &asked, peer, plain) {
            Some(hit) => Head::Hit { len, hit, head_only: asked.head_only, close: asked.close },
            None => Head::Proxy,
        }
    }

    /// The hit of `obj` (a key of the memory or mapped tier) the lane
    /// answers to the request `asked`, with what the answer holds (the
    /// client's in-flight slot, the request's span); `None`: the full
    /// path's to answer (not fresh; a mapped body but not a `plain`
    /// connection; an answer only the full path makes; a client over its
    /// limits or in a bandwidth tier).
    fn admit(
        &self,
        obj: Arc<MemObject>,
        method: &str,
        path: &str,
        asked: &Asked,
        peer: Option<IpAddr>,
        plain: bool,
    ) -> Option<Hit> {
        if obj.fresh_until <= SystemTime::now() || (obj.body.mapped.is_some() && !plain) {
            return None;
        }
        let shape = Shape::of(&obj, asked.head_only, &asked.asks)?;
        let mut slot = None;
        if self.limits.enabled() || self.bandwidth.enabled() {
            let snapshot = self.membership.snapshot();
            let client = peer.map(|ip| snapshot.geo.client_ip(ip, asked.forwarded));
            if self.bandwidth.enabled() && self.bandwidth.tier_of(client, None).is_some() {
                return None;
            }
            // Last, so that only a request answered here takes from the
            // client's budget; a refused one is the full path's to refuse.
            if let Some(ip) = client.filter(|_| self.limits.enabled()) {
                slot = self.limits.admit(ip).ok()?;
            }
        }
        self.demand.count(crate::hot::module_of(path.strip_prefix('/').unwrap_or(path)), asked.client_asked);
        let span = telemetry::traces_on().then(|| {
            let span = tracing::info_span!("edge request", method = %method, path = %path, status = shape.status(), cache = CacheStatus::Hit.as_str());
            telemetry::continue_trace(&span, asked.traceparent);
            span
        });
        Some(Hit { obj, shape, _slot: slot, _span: span })
    }

    /// As [`Lane::decide`], for a stream of an HTTP/2 connection from
    /// `peer`: a fresh memory-tier hit asked for plainly, with no condition
    /// or range (the answers the lane makes of those are HTTP/1 heads) and
    /// no more header lines, or header bytes, than the HTTP/1 lane reads;
    /// or a cold miss the lane fetches, as [`Lane::decide_miss`] tells.
    fn decide_h2(&self, req: &RequestHeader, peer: Option<IpAddr>, shutdown: &ShutdownWatch) -> Head {
        let bytes: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if req.headers.len() > MAX_HEADERS || bytes > MAX_HEAD {
            return Head::Proxy;
        }
        let Ok(path) = std::str::from_utf8(req.raw_path()) else { return Head::Proxy };
        let lines = || req.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        let Some((key, asked)) = Asked::read(req.method.as_str(), path, lines(), false, shutdown) else {
            return Head::Proxy;
        };
        if !asked.asks.is_empty() {
            return Head::Proxy;
        }
        let Some(obj) = self.storage.memory_get(key) else {
            let host = req.uri.authority().map(|a| a.as_str());
            return self.decide_miss(path, lines(), host, 0, key, peer, &asked);
        };
        match self.admit(obj, req.method.as_str(), path, &asked, peer, false) {
            Some(hit) => Head::Hit { len: 0, hit, head_only: asked.head_only, close: false },
            None => Head::Proxy,
        }
    }

    /// The entry of `request`, a miss of both tiers, if the disk holds it
    /// fresh: read into the memory or the mapped tier (a mapped body only
    /// for a `plain` connection, see the module docs), as the full path's
    /// lookup would, where that path's cost was most of a hit's: random
    /// hits, once each, over 8 000 zips of 128 KiB filled just before went
    /// at 3 041/s through it, against nginx's 6 344.
    async fn on_disk(&self, request: &Request, plain: bool) -> Option<Arc<MemObject>> {
        let key = crate::storage::cache_key(&request.key(), None);
        if self.storage.surely_absent(&key) {
            return None;
        }
        let obj = self.storage.load(&key).await?;
        (obj.fresh_until > SystemTime::now() && (plain || obj.body.mapped.is_none())).then_some(obj)
    }

    /// Whether the request for `path` (`key`) with these header `lines`
    /// (whose head is `len` bytes), which no tier holds, is a cold miss
    /// the lane fetches itself (see `miss.rs`): a plain GET (`asked`: no
    /// condition, no range), with traces off (the full path makes the
    /// origin's span a child of the request's) and no client limits (the
    /// full path charges them, once), of a client in no bandwidth tier.
    /// `host`: the `Host` to forward, where the request has none of its
    /// own lines (HTTP/2's authority).
    #[allow(clippy::too_many_arguments)]
    fn decide_miss<'a>(
        &self,
        path: &str,
        lines: impl Iterator<Item = (&'a str, &'a [u8])>,
        host: Option<&str>,
        len: usize,
        key: &str,
        peer: Option<IpAddr>,
        asked: &Asked,
    ) -> Head {
        let special = asked.head_only || !asked.asks.is_empty();
        if special || telemetry::traces_on() || self.limits.enabled() {
            return Head::Proxy;
        }
        let Ok(request) = Request::parse(path) else { return Head::Proxy };
        if !Misses::takes(&request) || request.key() != key {
            return Head::Proxy;
        }
        let client = peer.map(|ip| self.membership.snapshot().geo.client_ip(ip, asked.forwarded));
        if self.bandwidth.enabled() && self.bandwidth.tier_of(client, None).is_some() {
            return Head::Proxy;
        }
        // The client's head as the full path forwards it (hop-by-hop
        // headers are the connection's own).
        let Ok(mut upstream) = RequestHeader::build("GET", path.as_bytes(), None) else {
            return Head::Proxy;
        };
        if let Some(host) = host {
            if upstream.append_header("host", host).is_err() {
                return Head::Proxy;
            }
        }
        for (name, value) in lines {
            if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            if upstream.append_header(name.to_string(), value).is_err() {
                return Head::Proxy;
            }
        }
        let (close, client_asked) = (asked.close, asked.client_asked);
        Head::Miss { len, request, upstream: Box::new(upstream), client, close, client_asked }
    }
}

/// Writes `obj` as the answer in `shape`: its head with this moment's `Age` and
/// `Date`, and the body unless the request was a HEAD, in one write (or,
/// for a whole body in a memory file on a plain socket, see [`send_file`]). A
/// mapped body is copied by the kernel, which fails the write (`EFAULT`) at
/// a page it cannot read; a tail the stream's buffer took (the socket
/// full) is not flushed if a page of the mapping failed meanwhile.
async fn answer(
    stream: &mut Stream,
    head: &mut Vec<u8>,
    obj: &MemObject,
    shape: &Shape,
    head_only: bool,
    close: bool,
) -> std::io::Result<()> {
    let age = SystemTime::now().duration_since(obj.created).unwrap_or_default().as_secs();
    head.clear();
    head.extend_from_slice(match shape {
        Shape::Whole => &obj.head,
        Shape::Other { head, .. } => head,
    });
    head.extend_from_slice(b"age: ");
    head.extend_from_slice(age.to_string().as_bytes());
    head.extend_from_slice(b"\r\n");
    end_head(head, close);
    if let (false, Shape::Whole, Some(file)) = (head_only, shape, &obj.body.file) {
        if let Some(socket) = crate::conn::plain_socket(stream) {
            return send_file(stream, socket, head, file, &obj.body.bytes).await;
        }
    }
    let body: &[u8] = if head_only { &[] } else { shape.body(obj) };
    write_parts(stream, head, body).await?;
    if !obj.body.sound() {
        return Err(std::io::Error::other("a page of the mapped body could not be read"));
    }
    stream.flush().await
}

/// Ends a head with what Pingora's HTTP/1 server adds to every answer: the
/// date, and whether the connection is kept alive or closes after this
/// answer.
fn end_head(head: &mut Vec<u8>, close: bool) {
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
    head.extend_from_slice(if close {
        b"\r\nconnection: close\r\n\r\n"
    } else {
        b"\r\nconnection: keep-alive\r\n\r\n"
    });
}

/// Writes the answer of a cold miss the lane fetched (see `miss.rs`): its
/// head (made in `buf`) and body, in one write.
async fn write_answer(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    head: &[u8],
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    buf.clear();
    buf.extend_from_slice(head);
    end_head(buf, close);
    write_parts(stream, buf, body).await?;
    stream.flush().await
}

/// Writes the answer of a cold miss the lane fetched whose body comes from
/// its fill (see `miss.rs`): its head (made in `buf`), then the body as
/// `reader` gives it; a fill that fails fails the write.
async fn write_fill(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    head: &[u8],
    mut reader: pingora::cache::storage::HitHandler,
    close: bool,
) -> std::io::Result<()> {
    buf.clear();
    buf.extend_from_slice(head);
    end_head(buf, close);
    // (The stream's buffer takes the head and the first chunk together.)
    stream.write_all(buf).await?;
    loop {
        match reader.read_body().await {
            Ok(Some(chunk)) => stream.write_all(&chunk).await?,
            Ok(None) => break,
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
    }
    stream.flush().await
}

/// Writes `head` and `body` in one write where the socket takes them.
async fn write_parts(stream: &mut Stream, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut slices = [IoSlice::new(head), IoSlice::new(body)];
    let mut left = &mut slices[..];
    if let Some(socket) = crate::conn::plain_socket(stream) {
        // Straight on the socket: the stream's buffer would take a copy of
        // a head and body that fit in it first (with random hits over 20 000
        // zips of 16 KiB, that copy was 13.6 % of the core).
        stream.flush().await?;
        send_now(socket, &mut left)?;
    }
    while !left.is_empty() {
        let n = stream.write_vectored(left).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

/// Sends what of `left` the socket takes now, without waiting, and moves
/// `left` past it.
fn send_now(socket: std::os::fd::RawFd, left: &mut &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !left.is_empty() {
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; a
        // zeroed msghdr is valid, and points here at slices alive for the
        // call.
        #[allow(unsafe_code)]
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = left.as_mut_ptr().cast();
            msg.msg_iovlen = left.len() as _;
            libc::sendmsg(socket, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n > 0 {
            IoSlice::advance_slices(left, n as usize);
            continue;
        }
        if n == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => break,
            _ => return Err(e),
        }
    }
    Ok(())
}

/// The most of a body written through the stream, a copy, when the socket
/// is full (the stream then waits until the socket takes it).
const PIECE: usize = 4096;

/// Sends `head` and then `body`, held in the memory file `file`, straight
/// on the client's `socket`: the head marked as more to come (it leaves
/// with the body's first bytes), the body by `sendfile`, which queues the
/// file's pages on the socket without copying them. When the socket is
/// full, a piece of at most [`PIECE`] bytes goes through the stream, which
/// waits for room (the descriptor is the reactor's), and the sends go on.
async fn send_file(
    stream: &mut Stream,
    socket: std::os::fd::RawFd,
    head: &[u8],
    file: &MemFile,
    body: &[u8],
) -> std::io::Result<()> {
    // Nothing of an earlier answer may still wait in the stream's buffer.
    stream.flush().await?;
    let total = head.len() + body.len();
    let mut sent = 0;
    while sent < total {
        let now = if sent < head.len() {
            let left = &head[sent..];
            let flags = libc::MSG_MORE | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            // SAFETY: send of a live buffer of the length given, on this
            // connection's socket.
            #[allow(unsafe_code)]
            unsafe {
                libc::send(socket, left.as_ptr().cast(), left.len(), flags)
            }
        } else {
            let mut offset = (sent - head.len()) as libc::off_t;
            // SAFETY: sendfile between two descriptors held open for the
            // call (the socket by the stream, the file by `file`), with an
            // offset this function owns.
            #[allow(unsafe_code)]
            unsafe {
                libc::sendfile(socket, file.fd(), &mut offset, total - sent)
            }
        };
        match now {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n if n > 0 => {
                sent += n as usize;
                continue;
            }
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => {}
                    _ => return Err(e),
                }
            }
        }
        let piece = if sent < head.len() {
            &head[sent..]
        } else {
            let at = sent - head.len();
            &body[at..(at + PIECE).min(body.len())]
        };
        stream.write_all(piece).await?;
        stream.flush().await?;
        sent += piece.len();
    }
    Ok(())
}
