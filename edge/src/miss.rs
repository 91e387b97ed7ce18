//! The lane's cold miss (see `lane.rs`): a plain GET of an `.info`, a
//! `.mod` or a `.zip` that no tier holds and no fill is writing is fetched
//! here: answered whole up to [`MAX_BODY`], a longer one (of a told length)
//! from its fill as the origin's bytes come, as the full path answers its
//! filling client. It takes the full path's steps 3–7 (`proxy.rs`) in the
//! full path's own terms — the cache lock, the first origin of the ring for
//! the client's region and its load slot, the origin's fault header, the
//! policy's meta, the store's fill, eviction, the answer's `X-Cache` and
//! `Cache-Control`, metrics — without Pingora's session and cache state
//! machine, which were most of the edge's time per cold miss: a steady
//! stream of new `.info` was 0.58× nginx's pace (run 21 in README.md), one
//! of new 16 KiB zips 0.4×.
//!
//! What this does not answer goes to the full path before the client has
//! seen a byte of an answer, and the full path answers it as it would have:
//! a key whose cache lock another request holds (it waits there for that
//! fill), no origin to ask, an answer with no length, or longer than
//! [`MAX_BODY`] and not a 200 to keep (asked again there), and an attempt
//! that failed by the origin's fault (a refused or silent connection, an error, a 5xx it names
//! its own) while another origin may be asked: the full path goes on from
//! this attempt as from its own first one ([`tried_by_lane`]), so a silent
//! origin is waited for once, not twice. With no other origin to ask, the
//! answer is the full path's last word, given here: the origin's own 5xx
//! as it is, or the error the full path would answer.

use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use modcdn_shared::policy::{CacheStatus, Fault, FAULT_HEADER};
use modcdn_shared::request::Request;
use pingora::cache::eviction::CacheEntryKey;
use pingora::cache::lock::{LockStatus, Locked, WritePermit};
use pingora::cache::storage::{HandleMiss, HitHandler, MissHandler};
use pingora::cache::storage::{MissFinishType, PurgeType};
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta, PurgeTarget, Storage};
use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession;
use tokio::sync::oneshot;

use crate::proxy::Edge;
use crate::storage::cache_key;

/// The longest body this path takes whole (`.info` is a few dozen bytes,
/// a `.mod` rarely more than a few KiB, many zips tens of KiB); a longer
/// one is answered from its fill as it comes.
pub const MAX_BODY: usize = 64 << 10;

/// The cold misses the lane fetches itself.
pub struct Misses {
    pub edge: Edge,
    /// Kept-alive connections to origins (this path's own pool).
    pub upstream: Connector,
}

/// An answer for the client: its head (no `Date` or `Connection`, which
/// the lane's protocol adds; the body's length is `len`) and body;
/// `close`: the connection closes after it (an error of the edge's own).
pub struct Answer {
    pub status: u16,
    pub header: Box<ResponseHeader>,
    pub body: Body,
    pub len: usize,
    pub close: bool,
}

/// An answer's body: whole, or read from the fill the origin's bytes go to
/// (a failed fill fails the read: the client's connection closes), with
/// word of when that fill is finished (see [`Misses::stream`]).
pub enum Body {
    Whole(Bytes),
    Fill(HitHandler, oneshot::Receiver<()>),
}

/// What the origin answered after its head: the body whole, or the rest of
/// it still to read (its told length) on the connection.
enum Reply {
    Whole(Bytes),
    Rest(Box<HttpSession>, usize),
}

tokio::task_local! {
    /// The origins the lane's attempt at the request it hands over asked.
    static TRIED: RefCell<Vec<String>>;
}

/// Runs the full path (`answer`) on the request the lane hands over,
/// after its attempt asked the origins `tried`.
pub async fn hand_over<F: Future>(tried: Vec<String>, answer: F) -> F::Output {
    TRIED.scope(RefCell::new(tried), answer).await
}

/// For the full path: the origins the lane's attempt at this request
/// already asked (the first request of a connection handed over; none for
/// any other).
pub fn tried_by_lane() -> Vec<String> {
    TRIED.try_with(|t| t.take()).unwrap_or_default()
}

/// The origin's answer, and whose fault a 5xx is, as it says.
type Answered = (ResponseHeader, Reply, Option<Fault>);

impl Misses {
    /// Whether the lane may fetch `request` here: a version's `.info`,
    /// `.mod` or `.zip` (lists and `@latest` change, and take the full
    /// path's revalidation).
    pub fn takes(request: &Request) -> bool {
        matches!(request.kind(), modcdn_shared::Kind::Info | modcdn_shared::Kind::Mod | modcdn_shared::Kind::Zip)
    }

    /// Fetches `request` for `client` (`upstream`: the client's request
    /// head, to forward), keeps it as the full path would, and gives the
    /// answer; `Err`: the full path's to answer, nothing having been sent,
    /// with the origin this attempt asked and found failing, if it did.
    pub async fn fetch(
        self: &Arc<Self>,
        request: &Request,
        mut upstream: Box<RequestHeader>,
        client: Option<IpAddr>,
    ) -> Result<Answer, Option<String>> {
        let edge = &self.edge;
        let key = cache_key(&request.key(), None);
        if !edge.storage.surely_absent(&key) {
            return Err(None);
        }
        if let Some(ip) = client {
            upstream.insert_header("x-forwarded-for", ip.to_string()).map_err(|_| None)?;
        }
        let permit = match edge.lock.lock(&key, false) {
            Locked::Write(permit) => permit,
            // Another request fills it: the full path waits for that fill.
            Locked::Read(_) => return Err(None),
        };
        // The first of the candidates the full path would try, and whether
        // it would try another after it.
        let snapshot = edge.membership.snapshot();
        let region = edge.region_of(&snapshot, client);
        let mut candidates = snapshot.topology.route(&request.routing_key(), &region);
        let Some(member) = candidates.next().cloned() else {
            edge.lock.release(&key, permit, LockStatus::TransientError);
            return Err(None);
        };
        let others = edge.retries > 0 && candidates.next().is_some();
        let peer = edge.peer(&member);
        let slot = snapshot.view.begin(&member.id);
        let started = Instant::now();
        let (resp, reply, fault) = match self.ask(&peer, upstream, &member.id, started).await {
            Ok(answered) => answered,
            Err(failure) => {
                edge.lock.release(&key, permit, LockStatus::TransientError);
                let Some(error) = failure else { return Err(None) };
                slot.finish(false);
                if others {
                    return Err(Some(member.id));
                }
                return failed(&error).ok_or(Some(member.id));
            }
        };
        let status = resp.status.as_u16();
        // Only the origin's own trouble is worth asking another origin:
        // the full path does (and counts it). The last one's answer stands.
        let own = matches!(fault, Some(Fault::Origin | Fault::Busy));
        edge.metrics.origin_requests.with_label_values(&[member.id.as_str(), fault.map_or("ok", Fault::as_str)]).inc();
        match fault {
            // Busy: neither a failure nor a success of the origin's.
            Some(Fault::Busy) => drop(slot),
            Some(Fault::Origin) => slot.finish(false),
            // A relayed upstream failure is a working origin.
            _ => slot.finish(fault.is_some() || status < 500),
        }
        if own && others {
            edge.lock.release(&key, permit, LockStatus::TransientError);
            return Err(Some(member.id));
        }
        let meta = edge.cache_meta(request, &resp, false);
        let (body, len) = match (reply, meta) {
            (Reply::Whole(body), Some(meta)) => {
                if let Err(e) = self.keep(&key, &meta, body.clone(), permit).await {
                    tracing::warn!(key = %request.key(), error = %e, "cache fill not kept");
                }
                (Body::Whole(body.clone()), body.len())
            }
            (Reply::Whole(body), None) => {
                edge.lock.release(&key, permit, LockStatus::GiveUp);
                (Body::Whole(body.clone()), body.len())
            }
            (Reply::Rest(session, len), Some(meta)) if status == 200 => {
                match self.stream(&key, meta, session, len, peer, permit).await {
                    Ok((reader, finished)) => (Body::Fill(reader, finished), len),
                    Err(e) => {
                        tracing::warn!(key = %request.key(), error = %e, "cache fill not begun");
                        return Err(None);
                    }
                }
            }
            // A long answer not to keep: the full path's to relay.
            (Reply::Rest(..), _) => {
                edge.lock.release(&key, permit, LockStatus::TransientError);
                return Err(None);
            }
        };
        let mut resp = resp;
        edge.mark_answer(&mut resp, Some(request), CacheStatus::Miss).map_err(|_| None)?;
        Ok(Answer { status, header: Box::new(resp), body, len, close: false })
    }

    /// One attempt at `peer` (`id`): the answer, or the full path's turn,
    /// with the error when the attempt failed by the origin's fault.
    async fn ask(
        &self,
        peer: &HttpPeer,
        upstream: Box<RequestHeader>,
        id: &str,
        started: Instant,
    ) -> Result<Answered, Option<Box<pingora::Error>>> {
        let edge = &self.edge;
        let (mut session, reused) = match self.upstream.get_http_session(peer).await {
            Ok(s) => s,
            // Out of descriptors or ports here: the full path's to answer
            // (it says so), nothing counted against the origin.
            Err(e) if crate::error::local(&e) => return Err(None),
            Err(e) => {
                // As the full path: a refused or timed-out connection takes
                // it out of routing now; health checks bring it back.
                edge.metrics.origin_requests.with_label_values(&[id, "connect"]).inc();
                edge.membership.view().mark_down(id);
                return Err(Some(crate::error::connect_failed(id, e)));
            }
        };
        session.read_timeout = Some(edge.read_timeout);
        session.write_timeout = Some(edge.read_timeout);
        let answered = async {
            session.write_request_header(upstream).await?;
            session.read_response().await?;
            let resp = session.resp_header().cloned().ok_or_else(|| pingora::Error::new_str("no response head"))?;
            edge.metrics.origin_seconds.with_label_values(&[id]).observe(started.elapsed().as_secs_f64());
            let len =
                resp.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            let Some(len) = len.filter(|_| resp.status.as_u16() >= 200) else {
                return Ok(None);
            };
            if len > MAX_BODY {
                return Ok(Some((resp, len, None)));
            }
            let mut body = BytesMut::with_capacity(len);
            while let Some(chunk) = session.read_body_bytes().await? {
                body.extend_from_slice(&chunk);
            }
            if body.len() != len {
                return pingora::Error::e_explain(pingora::ErrorType::ReadError, "body shorter than its length");
            }
            Ok::<_, Box<pingora::Error>>(Some((resp, len, Some(body.freeze()))))
        };
        match answered.await {
            Ok(Some((resp, len, body))) => {
                let fault = (resp.status.as_u16() >= 500)
                    .then(|| Fault::of_answer(resp.headers.get(FAULT_HEADER).map(|v| v.as_bytes())));
                let reply = match body {
                    Some(body) => {
                        self.upstream.release_http_session(session, peer, peer.options.idle_timeout).await;
                        Reply::Whole(body)
                    }
                    None => Reply::Rest(Box::new(session), len),
                };
                Ok((resp, reply, fault))
            }
            // Not this path's answer (its connection is not reused).
            Ok(None) => Err(None),
            Err(e) => {
                // A kept-alive connection the origin had closed is not its
                // fault (the full path asks again on a new one).
                if reused {
                    return Err(None);
                }
                edge.metrics.origin_requests.with_label_values(&[id, "error"]).inc();
                Err(Some(e.into_up()))
            }
        }
    }

    /// Stores the answer as the full path's cache does (the lock released
    /// once the fill can be read, then the body, then eviction).
    async fn keep(&self, key: &CacheKey, meta: &CacheMeta, body: Bytes, permit: WritePermit) -> pingora::Result<()> {
        let edge = &self.edge;
        let span = Span::inactive().handle();
        let mut fill = match edge.storage.get_miss_handler(key, meta, &span).await {
            Ok(fill) => fill,
            Err(e) => {
                edge.lock.release(key, permit, LockStatus::TransientError);
                return Err(e);
            }
        };
        edge.lock.release(key, permit, LockStatus::Done);
        fill.write_body(body, true).await?;
        finish(edge, key, meta, fill).await
    }

    /// Begins the fill of an answer of `len` bytes whose body is still to
    /// read on `session` (from `peer`), as the full path does, and gives a
    /// reader of it: the fill goes on in a task of its own, at the origin's
    /// pace, whatever the client's (others may follow it, see `proxy.rs`'s
    /// request filter), and the connection is reused once it is read whole
    /// (before the fill is finished). The receiver hears when the fill is
    /// finished (or failed): the client's connection takes its next request
    /// only then, as on Pingora's path, so that a fill that waits for its
    /// durable write (past the bound of fills waiting, see
    /// `Filler::finish`) holds back its client, not only its own task.
    /// Without that, a stream of 8 000 new 128 KiB zips (10 connections)
    /// had 7 734 descriptors open at its peak, where the bound is 1 024.
    async fn stream(
        self: &Arc<Self>,
        key: &CacheKey,
        meta: CacheMeta,
        mut session: Box<HttpSession>,
        len: usize,
        peer: HttpPeer,
        permit: WritePermit,
    ) -> pingora::Result<(HitHandler, oneshot::Receiver<()>)> {
        let edge = &self.edge;
        let span = Span::inactive().handle();
        // The client's answer is the fill's own reader: a write that fails
        // (the disk full) leaves the fill unkept, not the answer broken.
        let mut fill = edge.storage.begin_fill(key, &meta).relaying();
        edge.lock.release(key, permit, LockStatus::Done);
        let reader = edge.storage.lookup_streaming_write(key, fill.streaming_write_tag(), &span).await?;
        let Some((_, reader)) = reader else {
            return pingora::Error::e_explain(pingora::ErrorType::InternalError, "no reader of the fill");
        };
        let (misses, key) = (self.clone(), key.clone());
        let (finished, heard) = oneshot::channel();
        tokio::spawn(async move {
            let mut read = 0;
            let filled = loop {
                match session.read_body_bytes().await {
                    Ok(Some(chunk)) => {
                        read += chunk.len();
                        if let Err(e) = fill.write_body(chunk, false).await {
                            break Err(e);
                        }
                        // The client's answer reads on a task of its own, on
                        // this thread: without a turn after each chunk, the
                        // fill took the first 8 MiB or so of a fast origin's
                        // body (a task's budget of reads) before the client
                        // was sent a byte, and the client read the rest back
                        // from the file. A fill that others follow goes on
                        // without: a turn per chunk for each of 200 clients
                        // of one new 64 MiB zip made their answers slower.
                        if read < len && !fill.followed() {
                            tokio::task::yield_now().await;
                        }
                    }
                    Ok(None) if read == len => {
                        // Read whole: the connection is the pool's again
                        // now, not once the fill is finished (which may
                        // wait for its durable write, see `Filler::finish`:
                        // past the bound of fills waiting, ~60 % of a stream
                        // of new 128 KiB zips opened a new connection).
                        misses.upstream.release_http_session(*session, &peer, peer.options.idle_timeout).await;
                        break finish(&misses.edge, &key, &meta, Box::new(fill)).await;
                    }
                    Ok(None) => {
                        break pingora::Error::e_explain(pingora::ErrorType::ReadError, "body shorter than its length")
                    }
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = filled {
                tracing::warn!(key = ?key.primary_key_str(), error = %e, "cache fill not kept");
            }
            let _ = finished.send(());
        });
        Ok((reader, heard))
    }
}

/// Finishes `fill` (of `key`, kept by `meta`) as the full path's cache
/// does: eviction admits it, and what that evicts is purged.
async fn finish(edge: &Edge, key: &CacheKey, meta: &CacheMeta, fill: MissHandler) -> pingora::Result<()> {
    let entry = CacheEntryKey::from_entry_id(key.to_compact(), fill.entry_id());
    let evicted = match fill.finish().await? {
        MissFinishType::Created(size) => edge.eviction.admit(entry, size, meta.fresh_until()),
        MissFinishType::Appended(size, max) => edge.eviction.increment_weight(&entry, size, max),
    };
    if !evicted.is_empty() {
        let storage = edge.storage;
        tokio::spawn(async move {
            let span = Span::inactive().handle();
            for item in evicted {
                let _ = storage.purge(PurgeTarget::Exact(&item), PurgeType::Eviction, &span).await;
            }
        });
    }
    Ok(())
}

/// The answer the full path gives for a failed attempt with no other origin
/// to ask (`fail_to_proxy`): the error's status and message; the
/// connection closes after it.
fn failed(e: &pingora::Error) -> Option<Answer> {
    let status = crate::error::status(e);
    let body = Bytes::from(crate::error::client_message(e));
    let header = crate::proxy::own_answer(status, body.len()).ok()?;
    Some(Answer { status, header: Box::new(header), len: body.len(), body: Body::Whole(body), close: true })
}
