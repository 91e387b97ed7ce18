//! Hostile clients: connections held open a byte at a time, paths the
//! protocol does not allow, reports with absurd weights. Each gets a
//! deliberate answer, and nothing reaches upstream on their behalf.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use modcdn_tests::corpus::{self, Corpus};
use modcdn_tests::http::{client, get, scrape};
use modcdn_tests::node::{EdgeProcess, Member, OriginProcess, CLUSTER_TOKEN};
use modcdn_tests::upstream::FixtureUpstream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Sends `head` a byte every `every` on a new connection to `addr` until
/// the server closes it; how long the server held it (bounded by `cap`).
async fn trickle(addr: &str, head: &[u8], every: Duration, cap: Duration) -> Duration {
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for b in head.iter().cycle() {
        if started.elapsed() > cap {
            break;
        }
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        // A closed connection shows as EOF (or an error) on read.
        let mut buf = [0u8; 256];
        match tokio::time::timeout(every, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => break,
            Err(_) => {}
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_closes_connections_that_send_headers_a_byte_at_a_time_or_idle() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 10).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin =
        OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), "header_timeout_ms = 700\n").expect("origin");
    let addr = origin.url.trim_start_matches("http://").to_string();
    let head =
        b"GET /example.com/alpha/@v/list HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let held = trickle(&addr, head, Duration::from_millis(100), Duration::from_secs(10)).await;
    assert!(held < Duration::from_secs(3), "a slowloris client held the connection for {held:?}");

    // An idle kept-alive connection is closed too, after one answer.
    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let started = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&all));
    assert!(started.elapsed() < Duration::from_secs(3), "idle connection kept for {:?}", started.elapsed());
    // And the origin serves on.
    assert_eq!(get(&client(), &format!("{}/example.com/alpha/@v/list", origin.url)).await.0, 200);
}

/// Opens a connection from `from` to `addr`, sends `request` and reads
/// until the server closes or `within` passes: what came back.
async fn exchange(from: &str, addr: &str, request: &[u8], within: Duration) -> String {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{from}:0").parse().expect("from")).expect("bind");
    let mut s = socket.connect(addr.parse().expect("addr")).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// A connection to a TLS listener that has sent nothing (its handshake
/// pending) and that the server holds open; one the server closed at once
/// (the slots of connections just closed may not be back yet) is retried.
async fn open_handshake(addr: &str) -> tokio::net::TcpStream {
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut b = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await.is_err() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} closed every connection for 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_closes_slow_headers_and_caps_connections_per_client() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 10).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), "").expect("origin");
    let members = [Member::of("o", &origin, "us")];
    let dir = tmp.path().join("edge");
    let (tls, tls_port, _) = modcdn_tests::node::edge_tls(&dir).expect("tls");
    let extra = format!("header_timeout_ms = 700\n[rate_limit]\nmax_connections_per_ip = 4\n{tls}");
    let edge = EdgeProcess::start(&dir, &members, &extra).expect("edge");
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let addr = edge.url.trim_start_matches("http://").to_string();
    let list = b"GET /example.com/alpha/@v/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    // Headers a byte every 100 ms: closed at the deadline, not after 60 s a read.
    let head = b"GET /example.com/alpha/@v/list HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let held = trickle(&addr, head, Duration::from_millis(100), Duration::from_secs(10)).await;
    assert!(held < Duration::from_secs(3), "a slowloris client held an edge connection for {held:?}");
    // The admin listener too.
    let admin = edge.admin.trim_start_matches("http://").to_string();
    let held = trickle(
        &admin,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaa\r\n",
        Duration::from_millis(100),
        Duration::from_secs(10),
    )
    .await;
    assert!(held < Duration::from_secs(3), "a slowloris client held the admin listener for {held:?}");
    // A connection that sends nothing is closed at the same deadline.
    let started = Instant::now();
    assert_eq!(exchange("127.0.0.1", &addr, b"", Duration::from_secs(10)).await, "");
    assert!(started.elapsed() < Duration::from_secs(3), "a silent connection was held {:?}", started.elapsed());
    // The deadline is per request: a kept-alive connection serves one after another.
    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    for _ in 0..3 {
        s.write_all(b"GET /example.com/alpha/@v/list HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answer").expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    drop(s);

    // Four connections held open (each with a request in flight, headers
    // done) take the client's whole allowance; a fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"GET /example.com/alpha/@v/list HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answer").expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        held.push(s);
    }
    let started = Instant::now();
    let refused = exchange("127.0.0.1", &addr, list, Duration::from_secs(5)).await;
    assert_eq!(refused, "", "fifth connection");
    assert!(started.elapsed() < Duration::from_secs(1), "fifth connection held {:?}", started.elapsed());
    // Another client address has its own allowance.
    let other = exchange("127.0.0.2", &addr, list, Duration::from_secs(5)).await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    // A closed connection gives its slot back.
    held.pop();
    let freed = modcdn_tests::http::eventually(Duration::from_secs(5), || async {
        exchange("127.0.0.1", &addr, list, Duration::from_secs(5)).await.starts_with("HTTP/1.1 200")
    });
    assert!(freed.await, "a slot was not returned");
    drop(held);

    // TLS handshakes count from the accept: four connections that never
    // send a ClientHello (Pingora would wait 60 s for each) take the whole
    // allowance; a fifth, TLS or plain, is closed at once.
    let mut pending = Vec::new();
    for _ in 0..4 {
        pending.push(open_handshake(&tls_addr).await);
    }
    let started = Instant::now();
    assert_eq!(exchange("127.0.0.1", &tls_addr, b"", Duration::from_secs(3)).await, "");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a fifth connection during four pending handshakes was held {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(exchange("127.0.0.1", &addr, list, Duration::from_secs(5)).await, "");
    assert!(started.elapsed() < Duration::from_secs(1), "plain connection held {:?}", started.elapsed());
    assert!(exchange("127.0.0.2", &addr, list, Duration::from_secs(5)).await.starts_with("HTTP/1.1 200"));
    drop(pending);
    let refused = scrape(&edge.admin, "modcdn_edge_connections_refused_total").await;
    assert!(refused >= 1.0, "refusals counted: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_the_protocol_does_not_allow_are_refused_before_any_upstream() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 10).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let sumdb = "[[checksum_db]]\nname = \"sum.golang.org\"\nurl = \"{}\"\n".replace("{}", &upstream.url());
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), &sumdb).expect("origin");
    let members = [Member::of("o", &origin, "us")];
    let edge = EdgeProcess::start(&tmp.path().join("edge"), &members, "").expect("edge");
    let c = client();
    let long = format!("/example.com/{}/@v/list", "a".repeat(3000));
    let cases: Vec<(String, u16)> = vec![
        ("/sumdb/sum.golang.org/tile/99/0/000".into(), 400),
        ("/sumdb/sum.golang.org/tile/8/0/000.p/256".into(), 400),
        ("/sumdb/sum.golang.org/tile/8/0/1".into(), 400),
        ("/sumdb/sum.golang.org/tile/8/99/000".into(), 400),
        ("/sumdb/sum.golang.org/lookup/example.com/m@".into(), 400),
        ("/sumdb/sum.golang.org/lookup/nodot@v1.0.0".into(), 400),
        ("/example.com/m/@v/v1.0.0%2e%2e.zip".into(), 400),
        (long, 414),
    ];
    for base in [&edge.url, &origin.url] {
        for (path, want) in &cases {
            let (status, _, body) = get(&c, &format!("{base}{path}")).await;
            assert_eq!(status, *want, "{base}{}: {}", &path[..path.len().min(80)], String::from_utf8_lossy(&body));
        }
    }
    // Headers past 16 KiB: 431 at the edge, and nothing forwarded.
    let r = c.get(format!("{}/example.com/alpha/@v/list", edge.url)).header("x-pad", "a".repeat(20_000)).send();
    assert_eq!(r.await.expect("get").status().as_u16(), 431);
    assert_eq!(upstream.counters().total(), 0, "nothing was forwarded");
    // A well-formed tile is forwarded (and missing upstream: 404, not 5xx).
    let (status, _, _) = get(&c, &format!("{}/sumdb/sum.golang.org/tile/8/0/000", edge.url)).await;
    assert_eq!(status, 404);
    let _ = corpus::ALPHA;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_are_only_on_the_operator_listener_with_the_cluster_token() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 10).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), "").expect("origin");
    let c = client();
    let report = "[{\"module\":\"example.com/alpha\",\"weight\":8}]";
    let purge = "/purge?module=example.com/alpha";
    // The public listener: the GOPROXY protocol and probes only.
    for (method, path) in [
        ("POST", "/hotz"),
        ("GET", "/hotz"),
        ("POST", purge),
        ("GET", "/purgez"),
        ("GET", "/metrics"),
        ("GET", "/loadz"),
    ] {
        let r = c.request(method.parse().expect("method"), format!("{}{path}", origin.url)).bearer_auth(CLUSTER_TOKEN);
        let status = r.body(report).send().await.expect("send").status().as_u16();
        assert!(status == 404 || status == 405, "{method} {path} on the public listener: {status}");
    }
    assert_eq!(get(&c, &format!("{}/healthz", origin.url)).await.0, 200);
    // The operator listener: without the token, or with another, 401.
    for (method, path) in [("POST", "/hotz"), ("GET", "/hotz"), ("POST", purge), ("GET", "/purgez")] {
        for token in [None, Some("test-cluster-token-012345678"), Some("")] {
            let mut r = c.request(method.parse().expect("method"), format!("{}{path}", origin.operator));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.body(report).send().await.expect("send");
            assert_eq!(r.status().as_u16(), 401, "{method} {path} with {token:?}");
            assert!(r.headers().contains_key("www-authenticate"));
        }
    }
    // Probes and metrics need no token there (a private network's Prometheus).
    assert_eq!(get(&c, &format!("{}/metrics", origin.operator)).await.0, 200);
    assert_eq!(get(&c, &format!("{}/loadz", origin.operator)).await.0, 200);
    let with = |method: &str, path: &str| {
        c.request(method.parse().expect("method"), format!("{}{path}", origin.operator)).bearer_auth(CLUSTER_TOKEN)
    };
    assert_eq!(with("POST", purge).send().await.expect("purge").status().as_u16(), 200);
    let log: serde_json::Value = with("GET", "/purgez").send().await.expect("log").json().await.expect("json");
    assert_eq!(log["entries"].as_array().map(Vec::len), Some(1), "{log}");

    // Hot reports take only finite, bounded weights.
    for weight in ["1e308", "-1", "0", "1e10"] {
        let body = format!("[{{\"module\":\"example.com/alpha\",\"weight\":{weight}}}]");
        let r = with("POST", "/hotz").body(body).send().await.expect("post");
        assert_eq!(r.status().as_u16(), 400, "weight {weight}");
    }
    let r = with("POST", "/hotz").body(report).send();
    assert_eq!(r.await.expect("post").status().as_u16(), 200);
    let hot: serde_json::Value = with("GET", "/hotz").send().await.expect("get").json().await.expect("json");
    let w = hot[0]["weight"].as_f64().expect("weight");
    assert!((7.9..8.1).contains(&w), "{hot}");
}

/// The rate in Mbit/s at which each client (from its own address, with its
/// own headers) reads `url` during `window`, all starting together, in the
/// steady state: from its first chunk after [`WARM`] to its last chunk in
/// the window. The start is left out: a tier whose request is handled a
/// moment before the others' rightly has the uplink to itself until they
/// begin, and each pace may start with its timer slack.
async fn read_for(url: &str, clients: &[(&str, Option<&str>)], window: Duration) -> Vec<f64> {
    use futures::StreamExt;
    const WARM: Duration = Duration::from_secs(1);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let tasks: Vec<_> = clients
        .iter()
        .map(|(ip, token)| {
            let (c, url) = (modcdn_tests::http::client_from(ip), url.to_string());
            let token = token.map(str::to_string);
            tokio::spawn(async move {
                tokio::time::sleep_until(start).await;
                let mut req = c.get(&url);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let mut body = req.send().await.expect("get").bytes_stream();
                let (mut n, mut warm, mut last) = (0u64, None, (0u64, Duration::ZERO));
                let end = start + window;
                while let Ok(Some(chunk)) = tokio::time::timeout_at(end, body.next()).await {
                    n += chunk.expect("chunk").len() as u64;
                    let at = start.elapsed();
                    if at >= WARM && warm.is_none() {
                        warm = Some((n, at));
                    }
                    last = (n, at);
                }
                let (n0, t0) = warm.expect("a chunk after the warm-up");
                (last.0 - n0) as f64 * 8.0 / 1e6 / (last.1 - t0).as_secs_f64().max(1e-3)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("client"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tiers_get_their_caps_and_their_share_of_a_saturated_uplink() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 40 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), "").expect("origin");
    let members = [Member::of("o", &origin, "us")];
    let tiers = |uplink: u32, vip: u32, normal: u32| {
        format!(
            "[bandwidth]\nuplink_mbit = {uplink}.0\n\
             [[bandwidth.tier]]\nname = \"vip\"\nmbit_per_client = {vip}.0\nweight = 3.0\nnetworks = [\"127.0.5.0/24\"]\ntokens = [\"vip-token\"]\n\
             [[bandwidth.tier]]\nname = \"normal\"\nmbit_per_client = {normal}.0\nweight = 1.0\nnetworks = [\"127.0.6.0/24\"]\n"
        )
    };
    let key = Corpus::key(corpus::LARGE, "v1.0.0", "zip");
    let window = Duration::from_secs(4);

    // Caps: 48 Mbit/s per VIP client, 16 per normal one, uplink unshared.
    let edge = EdgeProcess::start(&tmp.path().join("caps"), &members, &tiers(0, 48, 16)).expect("edge");
    let url = format!("{}/{key}", edge.url);
    assert_eq!(get(&client(), &url).await.0, 200, "unpaced fill from 127.0.0.1");
    let clients = [("127.0.5.1", None), ("127.0.0.9", Some("vip-token")), ("127.0.6.1", None), ("127.0.6.2", None)];
    let rates = read_for(&url, &clients, window).await;
    eprintln!("caps 48/48/16/16 Mbit/s → {rates:.1?}");
    for (rate, cap) in rates.iter().zip([48.0, 48.0, 16.0, 16.0]) {
        assert!((rate / cap - 1.0).abs() <= 0.10, "{rate:.1} Mbit/s for a cap of {cap}: {rates:.1?}");
    }
    drop(edge);

    // Shares: a 64 Mbit/s uplink, no caps, VIP weighs 3 and normal 1:
    // 48 and 16 Mbit/s while both send, each tier split by its clients.
    let edge = EdgeProcess::start(&tmp.path().join("shares"), &members, &tiers(64, 0, 0)).expect("edge");
    let url = format!("{}/{key}", edge.url);
    assert_eq!(get(&client(), &url).await.0, 200);
    let clients = [("127.0.5.1", None), ("127.0.5.2", None), ("127.0.6.1", None), ("127.0.6.2", None)];
    let got = read_for(&url, &clients, window).await;
    let (vip, normal) = (got[0] + got[1], got[2] + got[3]);
    eprintln!("uplink 64 Mbit/s, weights 3:1 → vip {vip:.1}, normal {normal:.1} Mbit/s");
    assert!((vip / 48.0 - 1.0).abs() <= 0.10, "vip {vip:.1} Mbit/s of a 48 share");
    assert!((normal / 16.0 - 1.0).abs() <= 0.10, "normal {normal:.1} Mbit/s of a 16 share");
}

/// An edge (with `extra` config, and a TLS listener on port `tls`, its
/// certificate `cert`) and one origin in front of a corpus whose large zip
/// is `large` bytes; the processes in the order to stop them. Bind every
/// field (`_origin`, not `..`): one left out stops at once.
struct LargeZip {
    _tmp: tempfile::TempDir,
    corpus: Corpus,
    upstream: FixtureUpstream,
    _origin: OriginProcess,
    edge: EdgeProcess,
    tls: u16,
    cert: String,
}

async fn large_zip(large: usize, extra: &str) -> LargeZip {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), large).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), "").expect("origin");
    let members = [Member::of("o", &origin, "us")];
    let dir = tmp.path().join("edge");
    let (tls_config, tls, cert) = modcdn_tests::node::edge_tls(&dir).expect("tls");
    let edge = EdgeProcess::start(&dir, &members, &format!("{extra}\n{tls_config}")).expect("edge");
    LargeZip { _tmp: tmp, corpus, upstream, _origin: origin, edge, tls, cert }
}

/// The first client of a zip nobody holds starts its fill; one that then
/// stops reading (a slow link, or on purpose) must not pace that fill, or
/// every other client of the zip waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_fill_holds_back_no_other_client() {
    let LargeZip { _tmp, corpus, upstream, _origin, edge, tls: _, cert: _ } = large_zip(48 << 20, "").await;
    let zip = Corpus::key(corpus::LARGE, "v1.0.0", "zip");
    let want = std::fs::read(corpus.root.join(&zip)).expect("zip");

    // The first client: its answer's head, then it reads nothing more.
    let addr = edge.url.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!("GET /{zip} HTTP/1.1\r\nHost: x\r\n\r\n");
    stalled.write_all(head.as_bytes()).await.expect("send");
    let mut first = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), stalled.read(&mut first)).await.expect("head").expect("read");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&first[..n]));

    // Another client gets the whole zip while the first still reads nothing.
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(30), get(&client(), &format!("{}/{zip}", edge.url))).await;
    let (status, _, body) = got.expect("a client that stopped reading held back another client of the same zip");
    assert_eq!(status, 200);
    assert!(body == want, "the whole zip ({} of {} bytes)", body.len(), want.len());
    assert_eq!(upstream.counters().get(&zip), 1, "one upstream request");
    eprintln!("second client served in {:?}", started.elapsed());
    drop(stalled);
}

/// A client that stops taking its answer holds a connection (and what the
/// answer holds) until the send deadline, not for ever: on HTTP/1.1 and on
/// HTTP/2, where a stream whose window stays shut is reset too. A slow
/// client that does take its answer gets it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_closes_a_connection_whose_client_stops_taking_its_answer() {
    let LargeZip { _tmp, mut corpus, upstream: _upstream, _origin, edge, tls, cert } =
        large_zip(16 << 20, "send_timeout_ms = 1000").await;
    let zip = Corpus::key(corpus::LARGE, "v1.0.0", "zip");
    let url = format!("{}/{zip}", edge.url);
    let (status, _, body) = get(&client(), &url).await;
    assert_eq!(status, 200);
    let addr = edge.url.trim_start_matches("http://").to_string();
    // The first hit is the full path's (it maps the zip), the next the lane's.
    for path in ["the full path", "the lane"] {
        stall(&addr, &zip, body.len(), (&edge.admin, "modcdn_edge_send_timeouts_total"), path).await;
    }
    stall_http2(tls, &cert, &zip, (&edge.admin, "modcdn_edge_send_timeouts_total")).await;
    shut_window_http2(tls, &cert, &zip, body.len(), 65_535).await;
    // A zip of the memory tier, whose streams the lane answers (`lane.rs`,
    // `Streams`): the same deadline, for a window of 16 KiB on 48 KiB.
    let held = corpus.add_sized(48).expect("sized");
    let held = Corpus::key(&held.path, "v1.0.0", "zip");
    let in_memory = modcdn_tests::http::eventually(Duration::from_secs(20), || async {
        get(&client(), &format!("{}/{held}", edge.url)).await;
        scrape(&edge.admin, "modcdn_edge_response_bytes_total{kind=\"zip\",source=\"memory\"").await > 0.0
    });
    assert!(in_memory.await, "never answered from the memory tier");
    let len = get(&client(), &format!("{}/{held}", edge.url)).await.2.len();
    shut_window_http2(tls, &cert, &held, len, 16 << 10).await;

    // A slow HTTP/2 client that does take its answer (a cached 4 MiB zip),
    // over longer than the deadline: it gets all of it.
    let sized = corpus.add_sized(4 << 10).expect("sized");
    let small = Corpus::key(&sized.path, "v1.0.0", "zip");
    let (status, _, want) = get(&client(), &format!("{}/{small}", edge.url)).await;
    assert_eq!(status, 200);
    slow_http2(tls, &cert, &small, &want, Duration::from_secs(1)).await;
}

/// An HTTP/2 client taking `key` at about 2.5 MB/s (it opens the stream's
/// window as it goes): each chunk of the answer (256 KiB, 0.1 s) leaves well
/// within `deadline`, the whole takes longer; it must get `want` whole.
async fn slow_http2(port: u16, cert: &str, key: &str, want: &[u8], deadline: Duration) {
    let (mut h2, driver) = h2_client(port, cert, 65_535, Arc::new(AtomicBool::new(false))).await;
    let request = http::Request::get(format!("https://localhost:{port}/{key}")).body(()).expect("request");
    let started = Instant::now();
    let (answer, _) = h2.send_request(request, true).expect("send");
    let mut body = answer.await.expect("answer head").into_body();
    let mut got = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.expect("a slow client that takes its answer is no reason to reset it");
        got.extend_from_slice(&data);
        tokio::time::sleep(Duration::from_micros(data.len() as u64 * 25_000 / 65_536)).await;
        body.flow_control().release_capacity(data.len()).expect("release");
    }
    assert!(started.elapsed() > deadline, "taken in {:?}: not slower than the deadline", started.elapsed());
    assert!(got == want, "{} of {} bytes", got.len(), want.len());
    driver.abort();
}

/// A stream whose reads stop (pending for ever) once `stopped` is set: a
/// client that keeps its connection open and reads nothing more of it.
struct StopsReading<S> {
    inner: S,
    stopped: Arc<AtomicBool>,
}

impl<S: AsyncRead + Unpin> AsyncRead for StopsReading<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.stopped.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StopsReading<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An h2 connection over TLS to `port`, trusting `cert`, with these
/// windows, reading through `io` (see [`StopsReading`]); its driver task.
async fn h2_client(
    port: u16,
    cert: &str,
    window: u32,
    stopped: Arc<AtomicBool>,
) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")).expect("root");
    let mut config = tokio_rustls::rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let server = ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server, tcp).await.expect("handshake");
    let io = StopsReading { inner: tls, stopped };
    let (h2, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .expect("h2 handshake");
    (h2, tokio::spawn(connection))
}

/// An HTTP/2 client that keeps reading its connection (the edge's writes go
/// through) but never opens the window (of `window` bytes) of the stream
/// asking for `key` (`len` bytes): the stream is reset at the send
/// deadline, not held for ever, and the connection serves on.
async fn shut_window_http2(port: u16, cert: &str, key: &str, len: usize, window: u32) {
    let (mut h2, driver) = h2_client(port, cert, window, Arc::new(AtomicBool::new(false))).await;
    let request = || http::Request::get(format!("https://localhost:{port}/{key}")).body(()).expect("request");
    let (answer, _) = h2.send_request(request(), true).expect("send");
    let mut body = answer.await.expect("answer head").into_body();
    // Data is taken but its capacity never released: the window stays shut.
    let mut got = 0;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(data) = body.data().await {
            match data {
                Ok(data) => got += data.len(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
    let reset = ended.expect("HTTP/2: a stream whose window stayed shut was held");
    assert!(reset.is_err() && got < len, "the stream was reset ({got} of {len} bytes): {reset:?}");
    // The connection itself is fine: another stream on it is answered.
    let (answer, _) = h2.ready().await.expect("ready").send_request(request(), true).expect("send");
    assert_eq!(answer.await.expect("another stream").status(), 200);
    driver.abort();
}

/// As [`stall`], over HTTP/2 (TLS on `port`, trusting `cert`): a real h2
/// client asks for `key`, with windows as large as the zip so the edge
/// sends as fast as the socket takes, then reads nothing more of its
/// connection, which it keeps open; the server must count a send timeout.
async fn stall_http2(port: u16, cert: &str, key: &str, counter: (&str, &str)) {
    let (metrics, name) = counter;
    let stopped = Arc::new(AtomicBool::new(false));
    let (mut h2, driver) = h2_client(port, cert, 32 << 20, stopped.clone()).await;
    let before = scrape(metrics, name).await;
    let request = http::Request::get(format!("https://localhost:{port}/{key}")).body(()).expect("request");
    let _answer = h2.send_request(request, true).expect("send");
    stopped.store(true, Ordering::SeqCst);
    let given_up =
        modcdn_tests::http::eventually(Duration::from_secs(20), || async { scrape(metrics, name).await > before })
            .await;
    assert!(given_up, "HTTP/2: a client taking nothing held its connection");
    driver.abort();
}

/// Asks `addr` for `key` (`len` bytes) and reads nothing until the server
/// counts a send timeout (`counter` on its metrics listener), then checks
/// the connection was cut rather than the answer sent whole; `what` names
/// the case in failures.
async fn stall(addr: &str, key: &str, len: usize, counter: (&str, &str), what: &str) {
    let (metrics, name) = counter;
    let before = scrape(metrics, name).await;
    let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stalled.write_all(format!("GET /{key} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("send");
    let given_up =
        modcdn_tests::http::eventually(Duration::from_secs(20), || async { scrape(metrics, name).await > before })
            .await;
    assert!(given_up, "{what}: a client taking nothing held its connection");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut got)).await.expect("closed");
    assert!(read.is_err() || got.len() < len, "{what}: the connection was cut, not the answer sent whole");
}

/// The origin's side of the same: a client (an edge, or anyone who reaches
/// the origin) that stops taking an answer is cut at `send_timeout_ms`
/// (the deadline is on the socket's writes, beneath TLS when it is on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_closes_a_connection_whose_client_stops_taking_its_answer() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 16 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin =
        OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), "send_timeout_ms = 500\n").expect("origin");
    let zip = Corpus::key(corpus::LARGE, "v1.0.0", "zip");
    let (status, _, body) = get(&client(), &format!("{}/{zip}", origin.url)).await;
    assert_eq!(status, 200);
    modcdn_tests::http::settled(&origin.operator).await;
    let addr = origin.url.trim_start_matches("http://");
    stall(addr, &zip, body.len(), (&origin.operator, "modcdn_origin_send_timeouts_total"), "the origin").await;
}
