//! The public listeners' connections, before Pingora's HTTP app reads them:
//! a cap on connections open at once per client (an IPv4 address or an IPv6
//! /64) and a deadline for each request's headers. Pingora bounds each read
//! (60 s) and the idle time between requests (60 s), but not a whole request
//! head, so without the deadline a client sending a byte a minute holds a
//! connection for ever; and it counts no connections.
//!
//! A connection is counted from its accept, before any TLS handshake
//! ([`Admission`], Pingora's connection filter): one past the client's cap
//! is closed at once, so handshakes left hanging (Pingora allows 60 s) count
//! against the client too. The slot taken at accept passes to the
//! connection when Pingora hands it over ([`Guarded`]), and goes back when
//! it closes; one whose handshake never completes goes back after the
//! handshake limit.
//!
//! The deadline runs from when a connection opens, or from the first byte of
//! the next request after an answer, to the blank line that ends the headers.
//! HTTP/2 connections (TLS with ALPN h2) have no header lines to watch: they
//! are left to Pingora's own handshake and idle timeouts for that, and get
//! the send deadline alone (without it, a client that stops reading holds
//! its connection, and the answers waiting on it, for ever: Pingora's idle
//! timeout counts only connections with no stream open).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN, IO,
};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::limits::{PerClient, Slot};

/// Longer than Pingora's TLS handshake timeout (60 s): a slot taken at
/// accept and not claimed by then belongs to a handshake that failed.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(65);

/// Counts connections per client from their accept (see the module docs).
pub struct Admission {
    connections: Arc<PerClient>,
    /// Slots of accepted connections not handed to the app yet, by peer.
    pending: dashmap::DashMap<SocketAddr, (Slot, Instant)>,
    last_sweep: parking_lot::Mutex<Instant>,
    refused: IntCounter,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission").field("pending", &self.pending.len()).finish()
    }
}

impl Admission {
    pub fn new(connections: Arc<PerClient>, refused: IntCounter) -> Arc<Admission> {
        Arc::new(Admission {
            connections,
            pending: dashmap::DashMap::new(),
            last_sweep: parking_lot::Mutex::new(Instant::now()),
            refused,
        })
    }

    /// The slot taken when `peer`'s connection was accepted.
    fn claim(&self, peer: &SocketAddr) -> Option<Slot> {
        self.pending.remove(peer).map(|(_, (slot, _))| slot)
    }

    /// Gives back the slots of handshakes that never completed.
    fn sweep(&self) {
        let now = Instant::now();
        let mut last = self.last_sweep.lock();
        if now.duration_since(*last) < Duration::from_secs(5) {
            return;
        }
        *last = now;
        drop(last);
        self.pending.retain(|_, (_, at)| now.duration_since(*at) < HANDSHAKE_LIMIT);
    }
}

#[async_trait]
impl ConnectionFilter for Admission {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let Some(addr) = addr.filter(|_| self.connections.enabled()) else { return true };
        self.sweep();
        match self.connections.take(addr.ip()) {
            Some(slot) => {
                // A peer address is one connection's until it closes.
                self.pending.insert(*addr, (slot, Instant::now()));
                true
            }
            None => {
                self.refused.inc();
                false
            }
        }
    }
}

/// An HTTP app (Pingora's proxy) behind the connection cap and the
/// deadlines.
pub struct Guarded<A> {
    pub inner: Arc<A>,
    pub admission: Arc<Admission>,
    pub deadlines: Deadlines,
}

/// How long a client may take to send a request's head, and to take any
/// of an answer written to it; how many connections each closed.
#[derive(Clone)]
pub struct Deadlines {
    pub header: Duration,
    pub send: Duration,
    pub header_timeouts: IntCounter,
    pub send_timeouts: IntCounter,
}

impl Deadlines {
    pub fn of(cfg: &crate::config::EdgeConfig, metrics: &crate::metrics::Metrics) -> Deadlines {
        Deadlines {
            header: Duration::from_millis(cfg.header_timeout_ms),
            send: Duration::from_millis(cfg.send_timeout_ms),
            header_timeouts: metrics.header_timeouts.clone(),
            send_timeouts: metrics.send_timeouts.clone(),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // Held while the connection lives.
        let peer = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let _slot = peer.and_then(|addr| self.admission.claim(&addr));
        // HTTP/2 frames have no header lines to watch: its connections get
        // the send deadline alone.
        let heads = stream.selected_alpn_proto() != Some(ALPN::H2);
        let guarded = HeaderDeadline::new(stream, self.deadlines.clone(), heads);
        // An HTTP app serves a connection to its end; nothing comes back to
        // be counted again.
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Unsent bytes a client socket queues in the kernel before a write waits.
const NOTSENT_LOWAT: libc::c_int = 512 << 10;

/// Caps what a plain TCP client socket queues unsent in the kernel
/// (`TCP_NOTSENT_LOWAT`): without it, every connection streaming a large
/// body holds up to its whole send buffer (megabytes) queued, which the
/// kernel then sends from whatever context the client's acknowledgements
/// arrive in; with it, the edge writes as the queue drains, sends from its
/// own writes, and holds little per connection. 200 clients of one cached
/// 64 MiB zip took 3.2 s instead of 4.8 s (Varnish: 4.0 s); 128 KiB gave
/// 3.5 s, 1 MiB 4.0 s, 2 MiB 4.75 s. The lane sets it when a connection's
/// first request goes to Pingora (origin bodies, and what the lane does not
/// answer) or it answers a mapped body above 4 MiB: its other answers leave
/// in one write, which the cap would split (1 MiB hits lost 3–9 %). TLS
/// streams keep the kernel's default: Pingora does not expose their socket.
pub fn limit_unsent(stream: &Stream) {
    let Some(fd) = plain_socket(stream) else { return };
    let value = NOTSENT_LOWAT;
    // SAFETY: setsockopt on a socket this connection owns, with a c_int
    // value of the size given.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set");
    }
}

/// The socket of a plain TCP client stream (`None` for TLS: Pingora does
/// not expose its socket, and its bytes must go through the TLS layer).
pub fn plain_socket(stream: &Stream) -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    let any = stream.as_any();
    let tcp = any.downcast_ref::<HeaderDeadline>().map_or(any, |guarded| guarded.inner.as_any());
    tcp.downcast_ref::<pingora::protocols::l4::stream::Stream>().map(|s| s.as_raw_fd())
}

/// A client stream whose request heads must arrive within a deadline, and
/// which must take some of each answer written within another (`Deadlines`);
/// a read or write past one fails with `TimedOut`, which ends the connection.
struct HeaderDeadline {
    inner: Stream,
    deadlines: Deadlines,
    timer: Pin<Box<Sleep>>,
    /// Runs while a write waits for the client to take something.
    send_timer: Pin<Box<Sleep>>,
    /// A write is waiting (since `send_timer` was set).
    stalled: bool,
    /// Waiting for the end of a request head.
    armed: bool,
    /// Request heads are watched (HTTP/1); off, only the send deadline runs.
    heads: bool,
    /// Something was written since the last head ended: the next byte read
    /// starts a new request.
    answered: bool,
    /// Line feeds in a row (carriage returns aside) at the end of what was read.
    newlines: u8,
    /// HTTP/2: the frames written since the last flush that went out.
    batch: Option<Batch>,
}

/// Bytes of an HTTP/2 connection's frames held before they go out.
const BATCH_MAX: usize = 64 << 10;

/// The frames an HTTP/2 connection has written and not sent yet. The `h2`
/// crate flushes the connection after each DATA frame of more than 256
/// bytes (it writes such a payload where it lies, and must flush it before
/// it encodes the next frame), so over TLS each frame went out as a record
/// and a `sendto` of its own: 1.9 per 16 KiB answer, where nginx makes 0.9
/// writes. Here a flush that follows new writes is put off, and the
/// connection's task woken instead: it runs again after the streams' tasks
/// that were ready have queued their frames, and `h2` flushes at the end of
/// each pass over its streams, so the first flush with nothing written
/// since sends them all, in one write. So does a batch that would pass
/// `BATCH_MAX`, and a shutdown.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Of `bytes`, how many went out already.
    sent: usize,
    /// Something was written since the last flush.
    fresh: bool,
}

impl Batch {
    /// Takes `len` bytes, copied by `put`, when they fit in the batch.
    fn take(&mut self, len: usize, put: impl FnOnce(&mut Vec<u8>)) -> bool {
        if self.bytes.len() + len > BATCH_MAX {
            return false;
        }
        if self.bytes.capacity() == 0 {
            self.bytes.reserve_exact(BATCH_MAX);
        }
        put(&mut self.bytes);
        self.fresh = true;
        true
    }
}

impl HeaderDeadline {
    fn new(inner: Stream, deadlines: Deadlines, heads: bool) -> HeaderDeadline {
        let timer = Box::pin(tokio::time::sleep(deadlines.header));
        let send_timer = Box::pin(tokio::time::sleep(deadlines.send));
        HeaderDeadline {
            inner,
            deadlines,
            timer,
            send_timer,
            stalled: false,
            armed: heads,
            heads,
            answered: false,
            newlines: 0,
            batch: (!heads).then(Batch::default),
        }
    }

    /// Follows the bytes a read returned: a new request arms the deadline,
    /// the blank line ending its head disarms it.
    fn saw(&mut self, bytes: &[u8]) {
        if self.answered && self.heads {
            self.answered = false;
            self.armed = true;
            self.newlines = 0;
            self.timer.as_mut().reset(Instant::now() + self.deadlines.header);
        }
        if !self.armed {
            return;
        }
        for &b in bytes {
            match b {
                b'\n' => {
                    self.newlines += 1;
                    if self.newlines == 2 {
                        self.armed = false;
                        return;
                    }
                }
                b'\r' => {}
                _ => self.newlines = 0,
            }
        }
    }

    fn expired(&mut self) -> io::Error {
        self.armed = false;
        self.deadlines.header_timeouts.inc();
        io::Error::new(io::ErrorKind::TimedOut, "request headers not received in time")
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // A client dripping bytes keeps the read ready: check the clock too.
        if this.armed && this.timer.deadline() <= Instant::now() {
            return Poll::Ready(Err(this.expired()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.saw(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.armed && this.timer.as_mut().poll(cx).is_ready() => Poll::Ready(Err(this.expired())),
            other => other,
        }
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.batch.is_some() {
            if this.batch.as_mut().is_some_and(|b| b.take(buf.len(), |to| to.extend_from_slice(buf))) {
                return Poll::Ready(Ok(buf.len()));
            }
            ready!(this.poll_send_batch(cx))?;
            if this.batch.as_mut().is_some_and(|b| b.take(buf.len(), |to| to.extend_from_slice(buf))) {
                return Poll::Ready(Ok(buf.len()));
            }
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.batch.is_some() {
            let len: usize = bufs.iter().map(|b| b.len()).sum();
            let put = |to: &mut Vec<u8>| bufs.iter().for_each(|b| to.extend_from_slice(b));
            if this.batch.as_mut().is_some_and(|b| b.take(len, put)) {
                return Poll::Ready(Ok(len));
            }
            ready!(this.poll_send_batch(cx))?;
            if this.batch.as_mut().is_some_and(|b| b.take(len, put)) {
                return Poll::Ready(Ok(len));
            }
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.batch.is_some() || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(batch) = this.batch.as_mut().filter(|b| b.fresh) {
            // Put off (see `Batch`); the task's next pass flushes.
            batch.fresh = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_batch(cx))?;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.waiting(cx).map_or(Poll::Pending, |e| Poll::Ready(Err(e))),
            done => {
                this.stalled = false;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_batch(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl HeaderDeadline {
    /// Writes out what the batch holds (the send deadline runs while a
    /// write waits), and empties it.
    fn poll_send_batch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(batch) = self.batch.as_mut().filter(|b| b.sent < b.bytes.len()) {
            let r = Pin::new(&mut self.inner).poll_write(cx, &batch.bytes[batch.sent..]);
            match ready!(self.note_write(cx, r))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.batch.iter_mut().for_each(|b| b.sent += n),
            }
        }
        if let Some(batch) = self.batch.as_mut() {
            // Held only while frames wait: an idle connection keeps none.
            *batch = Batch { fresh: batch.fresh, ..Batch::default() };
        }
        Poll::Ready(Ok(()))
    }

    /// Follows a write: one that waits starts the send deadline (and fails
    /// once it passed), one that went through ends it.
    fn note_write(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if r.is_pending() {
            return self.waiting(cx).map_or(Poll::Pending, |e| Poll::Ready(Err(e)));
        }
        self.stalled = false;
        if !self.armed && matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.answered = true;
        }
        r
    }

    /// A write or flush waits: the error to end the connection with once it
    /// has waited past the send deadline.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if !self.stalled {
            self.stalled = true;
            let at = Instant::now() + self.deadlines.send;
            self.send_timer.as_mut().reset(at);
        }
        if self.send_timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.stalled = false;
        self.deadlines.send_timeouts.inc();
        Some(io::Error::new(io::ErrorKind::TimedOut, "the client took none of the answer in time"))
    }
}

impl fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderDeadline").field("inner", &self.inner).field("armed", &self.armed).finish()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        if std::future::poll_fn(|cx| self.poll_send_batch(cx)).await.is_err() {
            return;
        }
        <dyn IO as Shutdown>::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").expect("counter")
    }

    fn deadlines(header: Duration) -> Deadlines {
        Deadlines { header, send: Duration::from_secs(60), header_timeouts: counter(), send_timeouts: counter() }
    }

    /// A client end and a server end wrapped with `limit`.
    fn pair(limit: Duration) -> (tokio::io::DuplexStream, HeaderDeadline) {
        let (client, server) = tokio::io::duplex(4096);
        (client, HeaderDeadline::new(Box::new(server), deadlines(limit), true))
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_of_an_answer_is_cut_at_the_send_deadline() {
        let (mut client, mut server) = pair(Duration::from_secs(10));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("head");
        let mut head = [0u8; 64];
        let _ = server.read(&mut head).await.expect("read");
        // Taken slowly, but taken: no deadline passes.
        let answer = vec![b'x'; 64 << 10];
        let slow = {
            let answer = answer.clone();
            tokio::spawn(async move { server.write_all(&answer).await.map(|_| server) })
        };
        let mut got = vec![0u8; answer.len()];
        for piece in got.chunks_mut(4096) {
            tokio::time::sleep(Duration::from_secs(50)).await;
            client.read_exact(piece).await.expect("take");
        }
        let mut server = slow.await.expect("task").expect("a slow client is no reason to stop");
        assert_eq!(server.deadlines.send_timeouts.get(), 0);
        // Taken not at all: cut once the deadline passed.
        let start = Instant::now();
        let e = server.write_all(&answer).await.expect_err("nothing taken");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(60));
        assert_eq!(server.deadlines.send_timeouts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_never_ends_times_out_even_while_bytes_trickle() {
        let (mut client, mut server) = pair(Duration::from_secs(10));
        let mut buf = [0u8; 64];
        let reader = tokio::spawn(async move {
            loop {
                match server.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e.kind()),
                }
            }
        });
        let started = Instant::now();
        for _ in 0..30 {
            if client.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(reader.await.expect("reader"), Err(io::ErrorKind::TimedOut));
        assert!(started.elapsed() <= Duration::from_secs(12), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_per_request_and_idle_time_between_is_not_counted() {
        let (mut client, mut server) = pair(Duration::from_secs(10));
        let mut buf = [0u8; 256];
        for _ in 0..3 {
            client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
            let n = server.read(&mut buf).await.expect("head");
            assert!(n > 0);
            server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.expect("answer");
            // Longer than the deadline, between requests: that is idle time.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        // Bare line feeds end a head too.
        client.write_all(b"GET / HTTP/1.1\nHost: x\n\n").await.expect("write");
        assert!(server.read(&mut buf).await.expect("head") > 0);
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"body bytes after the head").await.expect("write");
        assert!(server.read(&mut buf).await.expect("a body is not a head") > 0);
    }

    /// Counts the wakes of a task.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// What the client end holds to read now.
    fn readable(client: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut got = vec![0u8; 1 << 20];
        let mut buf = ReadBuf::new(&mut got);
        match Pin::new(client).poll_read(&mut cx, &mut buf) {
            Poll::Ready(r) => r.expect("read"),
            Poll::Pending => {}
        }
        buf.filled().to_vec()
    }

    #[tokio::test]
    async fn http2_frames_go_out_together_at_the_first_flush_with_nothing_new() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut server = HeaderDeadline::new(Box::new(server), deadlines(Duration::from_secs(10)), false);
        let wakes = Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut s = Pin::new(&mut server);
        // As `h2` writes: a frame, a flush, the next frame, a flush.
        let frames: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 16 << 10]).collect();
        for frame in &frames[..2] {
            let parts = [io::IoSlice::new(&frame[..9]), io::IoSlice::new(&frame[9..])];
            assert!(matches!(s.as_mut().poll_write_vectored(&mut cx, &parts), Poll::Ready(Ok(n)) if n == frame.len()));
            assert!(s.as_mut().poll_flush(&mut cx).is_ready());
        }
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 2, "each put-off flush wakes the task");
        assert!(readable(&mut client).is_empty(), "held while frames come");
        // The next pass: nothing new, so the flush sends them.
        assert!(matches!(s.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert!(readable(&mut client) == [&frames[0][..], &frames[1][..]].concat(), "both, in order");
        // What would pass the batch's bound sends the batch first, in order;
        // a write larger than the bound goes straight out; a shutdown sends
        // what is held.
        let bound = vec![7u8; BATCH_MAX];
        assert!(matches!(s.as_mut().poll_write(&mut cx, &frames[2]), Poll::Ready(Ok(_))));
        assert!(matches!(s.as_mut().poll_write(&mut cx, &bound), Poll::Ready(Ok(n)) if n == bound.len()));
        assert!(readable(&mut client) == frames[2], "the batch before, alone");
        let larger = vec![8u8; BATCH_MAX + 1];
        assert!(matches!(s.as_mut().poll_write(&mut cx, &larger), Poll::Ready(Ok(n)) if n == larger.len()));
        assert!(readable(&mut client) == [&bound[..], &larger[..]].concat(), "in order");
        assert!(matches!(s.as_mut().poll_write(&mut cx, b"last"), Poll::Ready(Ok(4))));
        assert!(readable(&mut client).is_empty());
        assert!(matches!(s.as_mut().poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(readable(&mut client), b"last");
    }

    #[tokio::test]
    async fn plain_client_sockets_queue_little_unsent() {
        use std::os::fd::AsRawFd;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let tcp: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(accepted));
        // As the lane has it: behind the header deadline.
        let stream: Stream = Box::new(HeaderDeadline::new(tcp, deadlines(Duration::from_secs(10)), true));
        let lowat = |stream: &Stream| {
            let guarded = stream.as_any().downcast_ref::<HeaderDeadline>().expect("guarded");
            let tcp = guarded.inner.as_any().downcast_ref::<pingora::protocols::l4::stream::Stream>().expect("tcp");
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt into a c_int of the size given.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::getsockopt(
                    tcp.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NOTSENT_LOWAT,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            value
        };
        let before = lowat(&stream);
        limit_unsent(&stream);
        assert_eq!(lowat(&stream), NOTSENT_LOWAT, "was {before}");
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_are_not_held_to_the_header_deadline() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut server = HeaderDeadline::new(Box::new(server), deadlines(Duration::from_secs(10)), false);
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            // Frames with no blank line in them, slower than the deadline,
            // each after an answer.
            client.write_all(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 1, 0, 0]).await.expect("frame");
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert!(server.read(&mut buf).await.expect("a frame is no head") > 0);
            server.write_all(b"answer").await.expect("answer");
        }
        assert_eq!(server.deadlines.header_timeouts.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out() {
        let (_client, mut server) = pair(Duration::from_secs(10));
        let mut buf = [0u8; 16];
        let err = server.read(&mut buf).await.expect_err("silent");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(server.deadlines.header_timeouts.get(), 1);
    }
}
