//! The fixture upstream: a GOPROXY over a corpus directory, on 127.0.0.1,
//! with request counters and fault injection that tests switch at run time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;

/// Faults applied to every request until changed.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Share of requests answered with `error_status` (0.0..=1.0).
    pub error_ratio: f64,
    /// Status used for injected errors (default 503).
    pub error_status: u16,
    /// Send half the body, then reset the connection.
    pub truncate: bool,
    /// Send headers, then nothing, for this long, then reset.
    pub stall: Option<Duration>,
    /// Throttle bodies to this many bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// Send bodies 16 bytes at a time, one piece this often: every read is
    /// in time, the whole takes as long as the body is big.
    pub drip: Option<Duration>,
    /// Replace the body of matching paths (suffix match) with these bytes.
    pub replace: Vec<(String, Vec<u8>)>,
    /// Answer the next this many requests with `error_status`, then recover.
    pub fail_next: u32,
    /// Answer 401 unless the request carries exactly this Authorization header.
    pub require_auth: Option<String>,
}

#[derive(Default)]
pub struct Counters {
    pub total: AtomicU64,
    per_path: Mutex<HashMap<String, u64>>,
    /// `traceparent` headers of the requests seen, in order.
    traceparents: Mutex<Vec<String>>,
}

impl Counters {
    /// Requests seen for `path` (an escaped GOPROXY path without leading `/`).
    pub fn get(&self, path: &str) -> u64 {
        self.per_path.lock().map(|m| m.get(path).copied().unwrap_or(0)).unwrap_or(0)
    }
    /// Requests seen for paths containing `needle`.
    pub fn matching(&self, needle: &str) -> u64 {
        self.per_path.lock().map(|m| m.iter().filter(|(p, _)| p.contains(needle)).map(|(_, n)| n).sum()).unwrap_or(0)
    }

    /// The `traceparent` headers requests carried.
    pub fn traceparents(&self) -> Vec<String> {
        self.traceparents.lock().map(|t| t.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
}

struct Inner {
    root: PathBuf,
    faults: Mutex<Faults>,
    counters: Counters,
}

/// A running fixture upstream; stops when dropped.
pub struct FixtureUpstream {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FixtureUpstream {
    /// Serves `root` on a random 127.0.0.1 port in the current runtime.
    pub async fn start(root: PathBuf) -> std::io::Result<FixtureUpstream> {
        Self::start_on(root, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(root: PathBuf, addr: SocketAddr) -> std::io::Result<FixtureUpstream> {
        let inner = Arc::new(Inner {
            root,
            faults: Mutex::new(Faults { error_status: 503, ..Faults::default() }),
            counters: Counters::default(),
        });
        let app = axum::Router::new().fallback(serve).with_state(Arc::clone(&inner));
        let (addr, tx) = crate::http::serve_on(addr, app).await?;
        Ok(FixtureUpstream { addr, inner, stop: Some(tx) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub fn set_faults(&self, f: Faults) {
        if let Ok(mut g) = self.inner.faults.lock() {
            *g = Faults { error_status: if f.error_status == 0 { 503 } else { f.error_status }, ..f };
        }
    }

    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }
}

impl Drop for FixtureUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn serve(State(inner): State<Arc<Inner>>, req: axum::extract::Request) -> Response {
    let path = req.uri().path().trim_start_matches('/').to_string();
    inner.counters.total.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut m) = inner.counters.per_path.lock() {
        *m.entry(path.clone()).or_default() += 1;
    }
    if let (Some(tp), Ok(mut seen)) =
        (req.headers().get("traceparent").and_then(|v| v.to_str().ok()), inner.counters.traceparents.lock())
    {
        seen.push(tp.to_string());
    }
    let faults = inner.faults.lock().map(|f| f.clone()).unwrap_or_default();
    if let Some(want) = &faults.require_auth {
        if req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return plain(StatusCode::UNAUTHORIZED, "authentication required\n");
        }
    }
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let fail_now = faults.fail_next > 0 && {
        if let Ok(mut f) = inner.faults.lock() {
            f.fail_next = f.fail_next.saturating_sub(1);
        }
        true
    };
    if fail_now || (faults.error_ratio > 0.0 && fastrand::f64() < faults.error_ratio) {
        return plain(
            StatusCode::from_u16(faults.error_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "injected failure\n",
        );
    }
    if path.split('/').any(|e| e == ".." || e.is_empty()) {
        return plain(StatusCode::BAD_REQUEST, "bad path\n");
    }
    let body = match faults.replace.iter().find(|(suffix, _)| path.ends_with(suffix.as_str())) {
        Some((_, b)) => b.clone(),
        None => match tokio::fs::read(inner.root.join(&path)).await {
            Ok(b) => b,
            Err(_) => return plain(StatusCode::NOT_FOUND, &format!("not found: {path}\n")),
        },
    };
    let ct = if path.ends_with(".zip") {
        "application/zip"
    } else if path.ends_with(".info") || path.ends_with("@latest") {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let len = body.len();
    let stream = async_stream(Bytes::from(body), faults);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, ct)
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

/// The body as a stream of chunks, with the stream-level faults applied.
fn async_stream(body: Bytes, faults: Faults) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    const CHUNK: usize = 64 * 1024;
    futures::stream::unfold((0usize, body, faults, false), |(pos, body, faults, stalled)| async move {
        if let (Some(stall), false) = (faults.stall, stalled) {
            tokio::time::sleep(stall).await;
            return Some((Err(std::io::Error::other("injected stall then reset")), (body.len(), body, faults, true)));
        }
        let end_at = if faults.truncate { body.len() / 2 } else { body.len() };
        if pos >= end_at {
            if faults.truncate && pos < body.len() {
                return Some((
                    Err(std::io::Error::other("injected truncation")),
                    (body.len() + 1, body, faults, stalled),
                ));
            }
            return None;
        }
        let end = (pos + if faults.drip.is_some() { 16 } else { CHUNK }).min(end_at);
        if let Some(every) = faults.drip {
            tokio::time::sleep(every).await;
        }
        if let Some(bps) = faults.bytes_per_sec {
            tokio::time::sleep(Duration::from_secs_f64((end - pos) as f64 / bps.max(1) as f64)).await;
        }
        Some((Ok(body.slice(pos..end)), (end, body, faults, stalled)))
    })
}

fn plain(status: StatusCode, text: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text.to_string()))
        .unwrap_or_default()
}
