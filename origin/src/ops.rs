//! The operator listener: probes, metrics and load for anyone who can reach
//! it (a private network: edges, Prometheus, operators), and behind the
//! cluster token hot reports, purges and the purge log. The GOPROXY flow is
//! in `serve.rs`; these endpoints never answer on the public listener.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use modcdn_shared::policy;
use modcdn_shared::purge::Target;

use crate::http::{internal_error, text};
use crate::Origin;

/// Paths of the operator listener, answered 404 on the public one.
pub(crate) const OPERATOR_PATHS: [&str; 6] = ["/metrics", "/loadz", "/status", "/hotz", "/purge", "/purgez"];

/// The operator listener's routes: probes, metrics and load for anyone who
/// can reach it (a private network); hot reports, purges and the purge log
/// only with the cluster token.
pub fn operator_router(origin: Arc<Origin>) -> Router {
    let guarded = Router::new()
        .route("/hotz", get(hotz).post(hot_report))
        .route("/purge", axum::routing::post(purge))
        .route("/purgez", get(purgez))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&origin), cluster_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/loadz", get(loadz))
        .route("/status", get(status))
        .merge(guarded)
        .with_state(origin)
}

pub(crate) async fn not_here() -> Response {
    text(StatusCode::NOT_FOUND, policy::CC_NO_STORE, "not found: operator endpoints are on the operator listener\n")
}

/// Lets a request through with `Authorization: Bearer <operator.token>`.
async fn cluster_token(
    State(o): State<Arc<Origin>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &o.access.operator_token else {
        return text(StatusCode::FORBIDDEN, policy::CC_NO_STORE, "off: set operator.token\n");
    };
    let authorization = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if !token.is_bearer(authorization) {
        let mut r =
            text(StatusCode::UNAUTHORIZED, policy::CC_NO_STORE, "needs Authorization: Bearer <operator.token>\n");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"modcdn-operator\""));
        return r;
    }
    next.run(req).await
}

/// What `/readyz` and `/loadz` report: ready until shutdown starts, and
/// the moving average (EWMA) of request latency.
pub struct Load {
    ready: std::sync::atomic::AtomicBool,
    /// In microseconds, as f64 bits.
    latency_ewma_us: std::sync::atomic::AtomicU64,
}

impl Default for Load {
    fn default() -> Load {
        Load { ready: true.into(), latency_ewma_us: 0f64.to_bits().into() }
    }
}

impl Load {
    /// Folds one request's latency into the average.
    pub fn observe(&self, sample: std::time::Duration) {
        use std::sync::atomic::Ordering;
        const ALPHA: f64 = 0.1;
        let sample_us = sample.as_secs_f64() * 1e6;
        let _ = self.latency_ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let prev = f64::from_bits(bits);
            let next = if prev == 0.0 { sample_us } else { prev + ALPHA * (sample_us - prev) };
            Some(next.to_bits())
        });
    }

    pub fn ewma_ms(&self) -> f64 {
        f64::from_bits(self.latency_ewma_us.load(std::sync::atomic::Ordering::Relaxed)) / 1000.0
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shutdown started: edges stop sending new requests.
    pub fn stop_ready(&self) {
        self.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(crate) async fn readyz(State(o): State<Arc<Origin>>) -> (StatusCode, &'static str) {
    if o.load.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

/// The origin's load for edges' health checks: cheap, no store access.
async fn loadz(State(o): State<Arc<Origin>>) -> ([(header::HeaderName, &'static str); 2], String) {
    let (in_flight, ewma_ms) = (o.metrics.in_flight.get(), o.load.ewma_ms());
    (
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, policy::CC_NO_STORE)],
        format!("{{\"in_flight\":{in_flight},\"ewma_latency_ms\":{ewma_ms:.3}}}\n"),
    )
}

/// The hottest modules, hottest first: `[{"module": ..., "weight": ...}]`
/// (escaped paths; weight in decayed requests). For operators and edges.
async fn hotz(State(o): State<Arc<Origin>>) -> ([(header::HeaderName, &'static str); 2], String) {
    // Private module names never leave the origin.
    let public = |escaped: &str| {
        modcdn_shared::module::unescape_path(escaped).is_ok_and(|m| !o.upstreams.private.is_noproxy(&m))
    };
    let top: Vec<serde_json::Value> = o
        .warm
        .hot
        .top(100)
        .into_iter()
        .filter(|(m, _)| public(m))
        .map(|(m, w)| serde_json::json!({"module": m, "weight": (w * 100.0).round() / 100.0}))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, policy::CC_NO_STORE)],
        serde_json::Value::from(top).to_string(),
    )
}

/// `POST /purge?path=…|module=…` (cluster token): removes from the store
/// and the memory tier, then logs it for edges.
async fn purge(
    State(o): State<Arc<Origin>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let no = |status, msg: &str| text(status, policy::CC_NO_STORE, &format!("{msg}\n"));
    let target = match Target::parse(q.get("path").map(String::as_str), q.get("module").map(String::as_str)) {
        Ok(t) => t,
        Err(e) => return no(StatusCode::BAD_REQUEST, &e),
    };
    let (key, prefix) = target.keys();
    o.pulls.writes.cancel(&key, prefix);
    o.memory.remove(&key, prefix);
    let o2 = Arc::clone(&o);
    let done = tokio::task::spawn_blocking(move || {
        let removed = o2.store.remove(&key, prefix)?;
        let seq = o2.purge_log.append(target)?;
        Ok::<_, std::io::Error>((removed, seq))
    })
    .await;
    match done {
        Ok(Ok((removed, seq))) => {
            o.refresh_store_gauges();
            tracing::info!(removed, seq, "purged");
            let body = serde_json::json!({ "removed": removed, "seq": seq }).to_string();
            let mut r = text(StatusCode::OK, policy::CC_NO_STORE, &body);
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Ok(Err(e)) => no(StatusCode::INTERNAL_SERVER_ERROR, &format!("purge failed: {e}")),
        Err(e) => no(StatusCode::INTERNAL_SERVER_ERROR, &format!("purge failed: {e}")),
    }
}

/// `GET /purgez?after=N`: the purge log after N, for edges.
async fn purgez(
    State(o): State<Arc<Origin>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let Ok(after) = q.get("after").map_or(Ok(0), |a| a.parse::<u64>()) else {
        return text(StatusCode::BAD_REQUEST, policy::CC_NO_STORE, "after: not a number\n");
    };
    let body = match serde_json::to_string(&o.purge_log.page(after)) {
        Ok(body) => body,
        Err(e) => return internal_error(&e),
    };
    let mut r = text(StatusCode::OK, policy::CC_NO_STORE, &body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `POST /hotz` from edges: `[{"module": <escaped>, "weight": <requests>}]`,
/// the requests an edge served (mostly from its cache) since its last
/// report, merged into this origin's hot set so sync keeps those modules
/// fresh. Unknown or private modules are ignored.
async fn hot_report(State(o): State<Arc<Origin>>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Entry {
        module: String,
        weight: f64,
    }
    let entries: Vec<Entry> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return text(StatusCode::BAD_REQUEST, policy::CC_NO_STORE, &format!("hot report: {e}\n")),
    };
    if let Some(bad) = entries
        .iter()
        .find(|e| !(e.weight.is_finite() && e.weight > 0.0 && e.weight <= modcdn_shared::hot::MAX_REQUESTS))
    {
        let msg = format!(
            "hot report: weight {} of {:?} is not in (0, {:e}]\n",
            bad.weight,
            bad.module,
            modcdn_shared::hot::MAX_REQUESTS
        );
        return text(StatusCode::BAD_REQUEST, policy::CC_NO_STORE, &msg);
    }
    let mut taken = 0;
    for e in entries.iter().take(1000) {
        let Ok(m) = modcdn_shared::module::ModulePath::from_escaped(&e.module) else { continue };
        if o.upstreams.private.is_noproxy(m.as_str()) {
            continue;
        }
        o.warm.hot.record_weighted(m.escaped(), e.weight);
        taken += 1;
    }
    text(StatusCode::OK, policy::CC_NO_STORE, &format!("{taken} modules\n"))
}

/// One HTML page for operators (no script, reloads every 5 s): readiness,
/// load, the store, upstream fetches, the purge log, hot modules; read from
/// the same counters as `/metrics`.
async fn status(State(o): State<Arc<Origin>>) -> Response {
    o.refresh_store_gauges();
    let m = &o.metrics;
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    // Counters are whole numbers: summed as such (an empty f64 sum is -0).
    let sum = |name: &str| -> u64 {
        m.gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter().map(|x| x.get_counter().value() as u64).collect::<Vec<_>>())
            .sum()
    };
    let hits = m
        .gather()
        .iter()
        .filter(|f| f.name() == "modcdn_origin_requests_total")
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|x| x.get_label().iter().any(|l| l.name() == "cache" && l.value() == "hit"))
        .map(|x| x.get_counter().value() as u64)
        .sum::<u64>();
    let requests = sum("modcdn_origin_requests_total");
    let mut rows = vec![
        ("ready", if o.load.is_ready() { "yes".to_string() } else { "shutting down".to_string() }),
        ("requests in flight", m.in_flight.get().to_string()),
        ("latency (EWMA)", format!("{:.1} ms", o.load.ewma_ms())),
        ("requests", requests.to_string()),
        ("answered from the store", hits.to_string()),
        ("upstream fetches", sum("modcdn_origin_upstream_fetches_total").to_string()),
        ("checksum mismatches", m.checksum_mismatch.get().to_string()),
        ("pulls refused (max_pulls)", m.pulls_refused.get().to_string()),
        ("prefetch queue", m.prefetch_queue.get().to_string()),
        ("purge log entries", o.purge_log.page(u64::MAX).last.to_string()),
    ];
    if let Some(u) = o.store.usage() {
        rows.push(("stored artifacts (this disk)", u.objects.to_string()));
        rows.push(("stored bytes (this disk)", u.bytes.to_string()));
        rows.push(("evicted by the budget", u.evicted.to_string()));
    }
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>modcdn origin</title><style>body{font:14px system-ui,sans-serif;margin:24px}\
         td,th{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}</style></head><body>\
         <h1>modcdn origin</h1><table>",
    );
    for (i, (name, value)) in rows.iter().enumerate() {
        h.push_str(&format!("<tr><td>{name}</td><td id=\"row-{i}\">{}</td></tr>", esc(value)));
    }
    h.push_str("</table><h2>Hottest modules</h2><table>");
    for (module, weight) in o.warm.hot.top(10) {
        h.push_str(&format!("<tr><td>{}</td><td>{weight:.0}</td></tr>", esc(&module)));
    }
    h.push_str("</table><p><a href=\"/metrics\">/metrics</a></p></body></html>\n");
    let mut r = Response::new(axum::body::Body::from(h));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(policy::CC_NO_STORE));
    r
}

async fn metrics(State(o): State<Arc<Origin>>) -> ([(header::HeaderName, &'static str); 1], String) {
    o.refresh_store_gauges();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], o.metrics.render())
}
