//! The upstream chain: where the origin pulls what it does not have.
//!
//! GOPROXY syntax, as the go command reads it: `https://a,https://b|https://c`.
//! After a `,` the next upstream is tried only when one answers 404 or 410;
//! after a `|` it is tried on any error. `off` allows no upstream at all.

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::config::HttpConfig;
use crate::error::UpstreamError;

/// How a failure of one entry moves on to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallThrough {
    /// `,`: only on 404/410.
    NotFound,
    /// `|`: on any error.
    AnyError,
}

/// One entry of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A GOPROXY at this base URL (http or https, with a host).
    Proxy(reqwest::Url),
    /// `direct`: fetch from version control with the go command.
    Direct,
}

impl Source {
    /// How the source is named in messages and metrics: the URL without
    /// credentials and trailing `/`, or `direct`.
    pub fn name(&self) -> String {
        match self {
            Source::Proxy(url) => redact(url.as_str().trim_end_matches('/')),
            Source::Direct => "direct".into(),
        }
    }
}

/// A parsed GOPROXY list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Each source with how to move past it.
    pub entries: Vec<(Source, FallThrough)>,
}

impl Chain {
    /// Parses GOPROXY syntax. `off` gives an empty chain.
    pub fn parse(spec: &str) -> Result<Chain, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("is empty; use \"off\" for no upstream".into());
        }
        let mut entries = Vec::new();
        let mut rest = spec;
        while !rest.is_empty() {
            let end = rest.find([',', '|']).unwrap_or(rest.len());
            let item = rest[..end].trim();
            let fall = if rest[end..].starts_with('|') { FallThrough::AnyError } else { FallThrough::NotFound };
            rest = if end < rest.len() { &rest[end + 1..] } else { "" };
            match item {
                "" => return Err(format!("{spec:?} has an empty entry")),
                "off" if spec == "off" => return Ok(Chain { entries }),
                "off" => return Err("\"off\" must stand alone".into()),
                "direct" => entries.push((Source::Direct, fall)),
                url => {
                    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
                    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                        return Err(format!("{url:?} must be an http:// or https:// URL with a host"));
                    }
                    entries.push((Source::Proxy(parsed), fall));
                }
            }
        }
        Ok(Chain { entries })
    }
}

/// Where a pull gets an artifact by its escaped GOPROXY path: the public
/// chain, a private route's chain, or a checksum database (its paths:
/// `lookup/...`, `tile/...`). [`Upstream`] is the one over HTTP and
/// `direct`; the origin's flow tests put their own in its place.
pub trait Fetch: Send + Sync {
    fn fetch<'a>(&'a self, key: &'a str) -> futures::future::BoxFuture<'a, Result<Fetched, UpstreamError>>;
    /// Whether it can never answer (`upstream = "off"`).
    fn is_off(&self) -> bool {
        false
    }
}

impl Fetch for Upstream {
    fn fetch<'a>(&'a self, key: &'a str) -> futures::future::BoxFuture<'a, Result<Fetched, UpstreamError>> {
        Box::pin(self.get(key))
    }
    fn is_off(&self) -> bool {
        self.chain.entries.is_empty()
    }
}

/// A streamed upstream answer.
pub struct Fetched {
    /// Which upstream answered.
    pub upstream: String,
    pub content_length: Option<u64>,
    pub body: Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send + Unpin>,
}

/// The HTTP client over a [`Chain`], with pooling, timeouts and retries.
pub struct Upstream {
    chain: Chain,
    client: reqwest::Client,
    cfg: HttpConfig,
    direct: std::sync::Arc<crate::direct::Direct>,
    budget: RetryBudget,
}

/// Retries as a share of pulls (Finagle's retry budget): every pull adds
/// `ratio` of a retry, every answer from upstream one more, every retry
/// takes one, and no more than `reserve` are saved up. A flaky upstream
/// (even a third of its attempts failing) keeps earning the retries it
/// needs; one that is down earns only `ratio` per pull instead of
/// `http.retries`, so an outage does not multiply its load.
struct RetryBudget {
    tokens: std::sync::Mutex<f64>,
    ratio: f64,
    reserve: f64,
}

impl RetryBudget {
    fn new(ratio: f64, reserve: f64) -> RetryBudget {
        RetryBudget { tokens: std::sync::Mutex::new(reserve), ratio, reserve }
    }

    fn deposit(&self) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t + self.ratio).min(self.reserve);
    }

    /// Upstream answered (found or not found): that earns back a retry, so
    /// an upstream that answers most attempts gets the retries its failures
    /// need, whatever their share, while one that answers none gets `ratio`
    /// per pull.
    fn answered(&self) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t + 1.0).min(self.reserve);
    }

    fn withdraw(&self) -> bool {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let ok = *t >= 1.0;
        if ok {
            *t -= 1.0;
        }
        ok
    }
}

/// Retries saved up for a burst of failures.
const RETRY_RESERVE: f64 = 10.0;
/// The longest wait between two attempts: with the default 10 retries from
/// 100 ms, an upstream that is down answers the first pull's 502 after
/// about 4 s of backoff (6 retries under a 1 s cap took 3.5 s).
const MAX_BACKOFF_MS: u64 = 500;

impl Upstream {
    pub fn new(
        chain: Chain,
        cfg: &HttpConfig,
        direct: std::sync::Arc<crate::direct::Direct>,
    ) -> Result<Upstream, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .read_timeout(Duration::from_millis(cfg.read_timeout_ms))
            .pool_max_idle_per_host(cfg.pool_idle_per_host)
            .tcp_nodelay(true)
            .user_agent(concat!("modcdn-origin/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        let budget = RetryBudget::new(cfg.retry_ratio, RETRY_RESERVE);
        Ok(Upstream { chain, client, cfg: cfg.clone(), direct, budget })
    }

    /// Fetches `key` (an escaped GOPROXY path) through the chain.
    pub async fn get(&self, key: &str) -> Result<Fetched, UpstreamError> {
        let mut last = UpstreamError::Off;
        for (source, fall) in &self.chain.entries {
            let got = match source {
                Source::Direct => self.direct.fetch(key).await,
                Source::Proxy(base) => self.get_one(base.as_str().trim_end_matches('/'), key).await,
            };
            match got {
                Ok(f) => return Ok(f),
                Err(e) => {
                    let next = e.is_not_found() || *fall == FallThrough::AnyError;
                    tracing::debug!(upstream = %source.name(), %key, error = %e, next, "upstream miss");
                    last = e;
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// One upstream (`base` URL, then `/key`), with retries of transient
    /// failures: at most `http.retries`, and only while the retry budget
    /// has some.
    async fn get_one(&self, base: &str, key: &str) -> Result<Fetched, UpstreamError> {
        let url = format!("{base}/{key}");
        let mut attempt = 0;
        self.budget.deposit();
        loop {
            match self.try_once(base, &url).await {
                Err(e) if e.is_transient() && attempt < self.cfg.retries && self.budget.withdraw() => {
                    let backoff = self.cfg.retry_backoff_ms.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF_MS);
                    let jitter = fastrand::u64(0..=backoff / 2);
                    tracing::debug!(%url, error = %e, attempt, "retrying upstream");
                    tokio::time::sleep(Duration::from_millis(backoff + jitter)).await;
                    attempt += 1;
                }
                other => {
                    if !matches!(&other, Err(e) if e.is_transient()) {
                        self.budget.answered();
                    }
                    return other;
                }
            }
        }
    }

    async fn try_once(&self, base: &str, url: &str) -> Result<Fetched, UpstreamError> {
        let mut get = self.client.get(url);
        if modcdn_shared::telemetry::traces_on() {
            if let Some(tp) = modcdn_shared::telemetry::traceparent(&tracing::Span::current()) {
                get = get.header("traceparent", tp);
            }
        }
        let send = get.send();
        // Credentials in an upstream URL never reach a message, a log or the store.
        let url = &redact(url);
        let resp = match tokio::time::timeout(Duration::from_millis(self.cfg.header_timeout_ms), send).await {
            Err(_) => {
                return Err(UpstreamError::Timeout(format!(
                    "{url}: no response within {} ms",
                    self.cfg.header_timeout_ms
                )))
            }
            Ok(Err(e)) if e.is_timeout() => return Err(UpstreamError::Timeout(format!("{url}: {}", e.without_url()))),
            Ok(Err(e)) => return Err(UpstreamError::Connect(format!("{url}: {}", error_chain(&e.without_url())))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        match status {
            200 => {}
            404 | 410 => {
                let text = short_body(resp).await;
                return Err(UpstreamError::NotFound { status, message: text });
            }
            _ => {
                let text = short_body(resp).await;
                return Err(UpstreamError::Status { status, message: format!("{url}: {text}") });
            }
        }
        let content_length = resp.content_length();
        let origin_url = url.to_string();
        let body = futures::StreamExt::map(resp.bytes_stream(), move |r| {
            r.map_err(|e| {
                let e = e.without_url();
                if e.is_timeout() {
                    UpstreamError::Timeout(format!("{origin_url}: body stalled: {e}"))
                } else {
                    UpstreamError::Body(format!("{origin_url}: {}", error_chain(&e)))
                }
            })
        });
        Ok(Fetched { upstream: redact(base), content_length, body: Box::new(body) })
    }
}

/// `url` without user name and password.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        _ => url.to_string(),
    }
}

/// The most of an error body that is read.
const ERROR_BODY_CAP: usize = 4096;

/// The first line of an error body, for messages: at most
/// [`ERROR_BODY_CAP`] bytes are read, however much upstream sends.
async fn short_body(mut resp: reqwest::Response) -> String {
    let status = resp.status();
    let mut head = Vec::new();
    while head.len() < ERROR_BODY_CAP {
        match resp.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_CAP - head.len())]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("").trim();
    let line: String = line.chars().take(300).collect();
    if line.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {line}")
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One pull against an upstream whose attempts fail as `fails` says:
    /// how many attempts it made and whether it got an answer, as
    /// `get_one` spends the budget.
    fn pull(b: &RetryBudget, retries: u32, mut fails: impl FnMut() -> bool) -> (u32, bool) {
        b.deposit();
        let mut attempts = 0;
        loop {
            attempts += 1;
            if !fails() {
                b.answered();
                return (attempts, true);
            }
            if attempts > retries || !b.withdraw() {
                return (attempts, false);
            }
        }
    }

    #[test]
    fn the_retry_budget_holds_an_outage_to_its_ratio() {
        let defaults = HttpConfig::default();
        let b = RetryBudget::new(defaults.retry_ratio, RETRY_RESERVE);
        // Healthy first: the reserve is full when the outage starts.
        for _ in 0..100 {
            pull(&b, defaults.retries, || false);
        }
        let attempts: u32 = (0..1000).map(|_| pull(&b, defaults.retries, || true).0).sum();
        assert!(attempts <= 1000 + 500 + RETRY_RESERVE as u32, "{attempts} attempts for 1000 pulls");
    }

    #[test]
    fn the_retry_budget_lets_a_flaky_upstream_through_with_the_defaults() {
        // 30 % of attempts failing at random: a pull needs 0.43 retries on
        // average, close to the 0.5 a pull deposits, so a budget fed by pulls
        // alone drains in runs of bad luck and refuses pulls their retry.
        let defaults = HttpConfig::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let b = RetryBudget::new(defaults.retry_ratio, RETRY_RESERVE);
        let lost = (0..20_000).filter(|_| !pull(&b, defaults.retries, || rng.f64() < 0.3).1).count();
        assert_eq!(lost, 0, "{lost} of 20000 pulls lost at 30 % failures");
    }

    #[test]
    fn parses_goproxy_syntax() {
        let c = Chain::parse("https://a.example, http://u:p@b.example/|https://c.example/sub").expect("chain");
        let named: Vec<(String, FallThrough)> = c.entries.iter().map(|(s, f)| (s.name(), *f)).collect();
        assert_eq!(
            named,
            vec![
                ("https://a.example".to_string(), FallThrough::NotFound),
                ("http://b.example".to_string(), FallThrough::AnyError),
                ("https://c.example/sub".to_string(), FallThrough::NotFound),
            ]
        );
        assert_eq!(Chain::parse("off").expect("off").entries, vec![]);
        for bad in ["", "https://a,,https://b", "ftp://x", "not a url", "https://a.example,off"] {
            assert!(Chain::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(redact("https://user:secret@proxy.corp.example/sub/x"), "https://proxy.corp.example/sub/x");
        assert_eq!(redact("https://proxy.example"), "https://proxy.example");
        let c = Chain::parse("https://a.example|direct").expect("direct");
        assert_eq!(c.entries[1], (Source::Direct, FallThrough::NotFound));
    }
}
