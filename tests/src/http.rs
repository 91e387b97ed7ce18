//! HTTP helpers of the integration tests: clients, one GET, metrics, and
//! a bounded load loop.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

/// A client whose connections come from `ip` (127.0.1.x is CN in the test
/// GeoIP database, 127.0.2.x is US).
pub fn client_from(ip: &str) -> reqwest::Client {
    let ip: IpAddr = ip.parse().expect("ip");
    reqwest::Client::builder().local_address(ip).timeout(Duration::from_secs(60)).build().expect("client")
}

/// Status, `X-Cache` and body of a GET.
pub async fn get(c: &reqwest::Client, url: &str) -> (u16, String, bytes::Bytes) {
    let r = c.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let x_cache = r.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (status, x_cache, r.bytes().await.expect("body"))
}

/// Sum of a metric's samples (all label sets, or those whose labels contain
/// `name`'s `{...}` part when it has one) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    let (family, labels) = match name.split_once('{') {
        Some((f, l)) => (f, Some(l.trim_end_matches('}'))),
        None => (name, None),
    };
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.is_none_or(|want| l.split_once('{').is_some_and(|(_, rest)| rest.contains(want))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`metric_sum`] of a node's `/metrics` at `base`.
pub async fn scrape(base: &str, name: &str) -> f64 {
    let text = client().get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("body");
    metric_sum(&text, name)
}

/// Waits (up to 30 s) until the origin whose operator listener is at
/// `operator` has stored every artifact it answered (an answer does not
/// wait for its durable write); panics if it never does.
pub async fn settled(operator: &str) {
    let done = eventually(Duration::from_secs(30), || async {
        scrape(operator, "modcdn_origin_store_writes_pending").await == 0.0
    })
    .await;
    assert!(done, "{operator}: store writes still running after 30 s");
}

/// One complete 200, or what went wrong.
pub async fn fetch_ok(c: &reqwest::Client, url: &str) -> Result<(), String> {
    let r = c.get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    r.bytes().await.map_err(|e| format!("body: {e}"))?;
    if status != 200 {
        return Err(status.to_string());
    }
    Ok(())
}

/// `clients` concurrent clients GET `keys` from `base` in turn (each from
/// its own offset) until `stop` is set, at most `max_each` requests each,
/// over kept-alive connections or (`fresh`) half of them on new ones; each
/// task returns (complete 200s, failures), printing each failure.
pub fn load(
    base: &str,
    keys: &Arc<Vec<String>>,
    clients: usize,
    max_each: usize,
    fresh: bool,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..clients)
        .map(|i| {
            let (keys, stop, base) = (Arc::clone(keys), Arc::clone(stop), base.to_string());
            tokio::spawn(async move {
                let keep = client();
                let (mut ok, mut failed) = (0, 0);
                for n in (i * 97)..(i * 97 + max_each) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let c = if fresh && n % 2 == 1 { client() } else { keep.clone() };
                    let key = &keys[n % keys.len()];
                    match fetch_ok(&c, &format!("{base}/{key}")).await {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            eprintln!("{key}: {e}");
                            failed += 1;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// A stop flag for [`load`] that sets itself after `after`.
pub fn stop_after(after: Duration) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        s.store(true, Ordering::Relaxed);
    });
    stop
}

/// Waits for the clients of [`load`]: (complete 200s, failures).
pub async fn totals(clients: Vec<tokio::task::JoinHandle<(u64, u64)>>) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.expect("client");
        ok += o;
        failed += f;
    }
    (ok, failed)
}

/// Polls `cond` every 50 ms until it holds or `within` passes; whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves `app` on `addr` (port 0: a random one) until the returned sender
/// is dropped or sent to; the address bound.
pub async fn serve_on(
    addr: std::net::SocketAddr,
    app: axum::Router,
) -> std::io::Result<(std::net::SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok((addr, tx))
}
