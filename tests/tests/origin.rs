//! Integration tests of a real origin process against the fixture upstream:
//! coalescing, caching semantics, faults, durability and HTTP details.

use std::time::{Duration, Instant};

use modcdn_tests::corpus::{Corpus, ALPHA, LARGE};
use modcdn_tests::node::{OriginProcess, CLUSTER_TOKEN};
use modcdn_tests::upstream::{Faults, FixtureUpstream};
use reqwest::StatusCode;

struct Setup {
    corpus: Corpus,
    upstream: FixtureUpstream,
    origin: OriginProcess,
    client: reqwest::Client,
    /// Last: fields drop in order, so the processes above stop before
    /// their directory is removed (removing it under a live node fails).
    tmp: tempfile::TempDir,
}

async fn setup(large: usize, extra: &str) -> Setup {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), large).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), extra).expect("origin");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    Setup { tmp, corpus, upstream, origin, client }
}

impl Setup {
    fn store(&self) -> std::path::PathBuf {
        self.tmp.path().join("origin/store")
    }
    async fn get(&self, key: &str) -> reqwest::Response {
        self.client.get(format!("{}/{key}", self.origin.url)).send().await.expect("request")
    }
    /// An operator endpoint (`metrics`, `loadz`, `hotz`), with the cluster token.
    async fn operator(&self, path: &str) -> reqwest::Response {
        let r = self.client.get(format!("{}/{path}", self.origin.operator)).bearer_auth(CLUSTER_TOKEN);
        r.send().await.expect("request")
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_one_zip_make_one_upstream_request() {
    let s = setup(2 << 20, "").await;
    s.upstream.set_faults(Faults { delay: Duration::from_millis(300), ..Faults::default() });
    let key = Corpus::key(LARGE, "v1.0.0", "zip");
    let want = s.corpus.get(LARGE, "v1.0.0").expect("large").zip_size;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (client, url) = (s.client.clone(), format!("{}/{key}", s.origin.url));
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).send().await.expect("request");
            (r.status(), r.bytes().await.map(|b| b.len() as u64).unwrap_or(0))
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), (StatusCode::OK, want));
    }
    assert_eq!(s.upstream.counters().get(&key), 1, "200 concurrent misses → 1 upstream request");
    let metrics = s.operator("metrics").await.text().await.expect("metrics");
    let waiters = metrics
        .lines()
        .find_map(|l| l.strip_prefix("modcdn_origin_singleflight_waiters_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(waiters >= 150, "most of the 200 joined the one fetch: {waiters}");

    // A failure reaches every waiter, and is not kept: the next ask fetches again.
    let key = Corpus::key(ALPHA, "v1.0.0", "zip");
    s.upstream.set_faults(Faults {
        delay: Duration::from_millis(300),
        error_ratio: 1.0,
        error_status: 500,
        ..Faults::default()
    });
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (s.client.clone(), format!("{}/{key}", s.origin.url));
        tasks.push(tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()).ok() }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), Some(StatusCode::BAD_GATEWAY));
    }
    let failed_fetches = s.upstream.counters().get(&key);
    // One fetch with its retries: at most 1 + http.retries (10) attempts.
    assert!((1..=11).contains(&failed_fetches), "one fetch (with its retries) for 50 waiters: {failed_fetches}");
    s.upstream.clear_faults();
    assert_eq!(s.get(&key).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_list_is_served_while_upstream_fails() {
    let s = setup(1024, "[ttl]\nmutable_secs = 1\n").await;
    let key = format!("{ALPHA}/@v/list");
    let first = s.get(&key).await;
    assert_eq!((first.status(), header(&first, "x-cache")), (StatusCode::OK, "MISS"));
    assert_eq!(header(&first, "cache-control"), "public, max-age=1");
    let body = first.text().await.expect("body");
    s.upstream.set_faults(Faults { error_ratio: 1.0, error_status: 503, ..Faults::default() });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = s.get(&key).await;
    assert_eq!((stale.status(), header(&stale, "x-cache")), (StatusCode::OK, "STALE"));
    assert_eq!(stale.text().await.expect("body"), body);
    // Once upstream is back, the list is refreshed.
    s.upstream.clear_faults();
    let fresh = s.get(&key).await;
    assert_eq!((fresh.status(), header(&fresh, "x-cache")), (StatusCode::OK, "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_negatively_cached_and_failures_are_not() {
    let s = setup(1024, "").await;
    // 404 passes through and is remembered.
    let key = "example.com/missing/@v/v1.0.0.info";
    for _ in 0..3 {
        let r = s.get(key).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(header(&r, "cache-control"), "public, max-age=60");
    }
    assert_eq!(s.upstream.counters().get(key), 1, "404 negatively cached");

    // A 5xx is a 502 with no-store, never a cached 404.
    let key = Corpus::key(ALPHA, "v1.0.0", "mod");
    s.upstream.set_faults(Faults { error_ratio: 1.0, error_status: 500, ..Faults::default() });
    let r = s.get(&key).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(header(&r, "cache-control"), "no-store");
    assert!(r.text().await.expect("body").contains("upstream answered 500"));
    s.upstream.clear_faults();
    let r = s.get(&key).await;
    assert_eq!(r.status(), StatusCode::OK, "the failure was not remembered");

    // 410 passes through as 410.
    s.upstream.set_faults(Faults { error_ratio: 1.0, error_status: 410, ..Faults::default() });
    let r = s.get("example.com/gone/@v/list").await;
    assert_eq!(r.status(), StatusCode::GONE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_invalid_and_oversized_upstream_bodies_are_never_stored() {
    let s = setup(1 << 20, "[http]\nretries = 0\n").await;
    let zip = Corpus::key(LARGE, "v1.0.0", "zip");
    s.upstream.set_faults(Faults { truncate: true, ..Faults::default() });
    let r = s.get(&zip).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    s.upstream.clear_faults();

    let info = Corpus::key(ALPHA, "v1.0.0", "info");
    let mod_ = Corpus::key(ALPHA, "v1.0.0", "mod");
    let alpha_zip = Corpus::key(ALPHA, "v1.0.0", "zip");
    s.upstream.set_faults(Faults {
        replace: vec![
            (info.clone(), br#"{"Version":"v9.9.9","Time":"2024-01-02T03:04:05Z"}"#.to_vec()),
            (mod_.clone(), b"module example.com/impostor\n".to_vec()),
            (alpha_zip.clone(), b"PK\x03\x04 definitely not a zip".to_vec()),
            ("example.com/alpha/@v/v1.1.0.info".into(), vec![b' '; 2 << 20]),
        ],
        ..Faults::default()
    });
    for key in [&info, &mod_, &alpha_zip, &"example.com/alpha/@v/v1.1.0.info".to_string()] {
        let r = s.get(key).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{key}");
        assert_eq!(header(&r, "cache-control"), "no-store");
        assert!(r.text().await.expect("body").contains("invalid upstream content"), "{key}");
    }
    assert!(
        modcdn_tests::files(&s.store())
            .iter()
            .all(|f| !f.ends_with(".zip") && !f.ends_with(".info") && !f.ends_with(".mod")),
        "{:?}",
        modcdn_tests::files(&s.store())
    );

    s.upstream.clear_faults();
    for key in [&zip, &info, &mod_, &alpha_zip] {
        assert_eq!(s.get(key).await.status(), StatusCode::OK, "{key}");
    }
    let body = s.get(&zip).await.bytes().await.expect("zip");
    assert_eq!(body.len() as u64, s.corpus.get(LARGE, "v1.0.0").expect("large").zip_size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_paths_are_400_and_unknown_modules_404() {
    let s = setup(1024, "").await;
    for path in [
        "example.com/../etc/@v/list",
        "example.com/m/@v/v1.0.0.tar",
        "Example.com/m/@v/list",
        "example.com/m/@v/master.zip",
        "example.com/%2e%2e/@v/list",
        "example.com/m/@v/v1.0.0%00.zip",
        "nodot/@v/list",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(header(&r, "cache-control"), "no-store");
    }
    assert_eq!(s.upstream.counters().total(), 0, "malformed requests never reach upstream");
    let r = s.client.post(format!("{}/{ALPHA}/@v/list", s.origin.url)).send().await.expect("post");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(s.get("example.com/nobody/@v/list").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.get("example.com/alpha/@v/v2.0.0.info").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.get("sumdb/sum.golang.org/supported").await.status(), StatusCode::OK, "proxied by default");
    assert_eq!(s.get("sumdb/sum.example.org/supported").await.status(), StatusCode::NOT_FOUND);
    let r = s.get("sumdb/sum.example.org/latest").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "an unconfigured database is never contacted");
    assert_eq!(s.get("healthz").await.status(), StatusCode::OK);
    assert_eq!(s.get("readyz").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_details_head_etag_range_content_type() {
    // 6 MiB: above the memory tier's object limit, so the zip streams from
    // its file; the small alpha zip below is served from memory.
    let s = setup(6 << 20, "").await;
    let small = Corpus::key(ALPHA, "v1.0.0", "zip");
    let small_bytes = s.get(&small).await.bytes().await.expect("small zip");
    let r = s.client.get(format!("{}/{small}", s.origin.url)).header("range", "bytes=-10").send().await.expect("range");
    assert_eq!((r.status(), header(&r, "x-cache").to_string()), (StatusCode::PARTIAL_CONTENT, "HIT".to_string()));
    assert_eq!(r.bytes().await.expect("tail"), small_bytes.slice(small_bytes.len() - 10..));
    let zip = Corpus::key(LARGE, "v1.0.0", "zip");
    let full = s.get(&zip).await;
    assert_eq!(header(&full, "content-type"), "application/zip");
    assert_eq!(header(&full, "cache-control"), "public, max-age=31536000, immutable");
    let etag = header(&full, "etag").to_string();
    let bytes = full.bytes().await.expect("zip");
    assert_eq!(bytes.len() as u64, s.corpus.get(LARGE, "v1.0.0").expect("large").zip_size);

    let head = s.client.head(format!("{}/{zip}", s.origin.url)).send().await.expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), bytes.len().to_string());
    assert_eq!(header(&head, "x-cache"), "HIT");

    let r = s.client.get(format!("{}/{zip}", s.origin.url)).header("if-none-match", &etag).send().await.expect("inm");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    let r =
        s.client.get(format!("{}/{zip}", s.origin.url)).header("range", "bytes=100-199").send().await.expect("range");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), format!("bytes 100-199/{}", bytes.len()));
    assert_eq!(r.bytes().await.expect("part"), bytes.slice(100..200));
    let r = s
        .client
        .get(format!("{}/{zip}", s.origin.url))
        .header("range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .expect("416");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    for (key, ct) in [
        (Corpus::key(ALPHA, "v1.0.0", "info"), "application/json"),
        (Corpus::key(ALPHA, "v1.0.0", "mod"), "text/plain; charset=utf-8"),
        (format!("{ALPHA}/@v/list"), "text/plain; charset=utf-8"),
        (format!("{ALPHA}/@latest"), "application/json"),
    ] {
        let r = s.get(&key).await;
        assert_eq!((r.status(), header(&r, "content-type")), (StatusCode::OK, ct), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_store() {
    // Prefetch off: it would fetch alpha's requirements after its .mod is
    // served, and this test counts what the hits ask upstream.
    let mut s = setup(1 << 20, "[prefetch]\nenabled = false\n").await;
    let keys: Vec<String> = ["info", "mod", "zip"].iter().map(|e| Corpus::key(ALPHA, "v1.1.0", e)).collect();
    let mut bodies = Vec::new();
    for k in &keys {
        bodies.push(s.get(k).await.bytes().await.expect("body"));
    }
    assert!(s.origin.terminate(Duration::from_secs(10)), "clean exit on SIGTERM");
    let seen = s.upstream.counters().total();
    s.origin = OriginProcess::start_with_config(&s.origin.config.clone()).expect("restart");
    for (k, b) in keys.iter().zip(&bodies) {
        let r = s.get(k).await;
        assert_eq!((r.status(), header(&r, "x-cache").to_string()), (StatusCode::OK, "HIT".to_string()), "{k}");
        assert_eq!(&r.bytes().await.expect("body"), b);
    }
    assert_eq!(s.upstream.counters().total(), seen, "hits after restart ask upstream nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_large_download_leaves_nothing_partial() {
    let mut s = setup(8 << 20, "").await;
    let zip = Corpus::key(LARGE, "v1.0.0", "zip");
    // About 4 s for the whole body: the kill lands in the middle.
    s.upstream.set_faults(Faults { bytes_per_sec: Some(2 << 20), ..Faults::default() });
    let (client, url) = (s.client.clone(), format!("{}/{zip}", s.origin.url));
    let download = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.origin.kill9();
    let _ = download.await;
    let leftovers = modcdn_tests::files(&s.store());
    assert!(
        leftovers.iter().all(|f| !f.ends_with(".zip") && !f.ends_with(".zip.meta")),
        "no published zip: {leftovers:?}"
    );
    assert!(leftovers.iter().any(|f| f.contains(".tmp-")), "the kill hit mid-download: {leftovers:?}");

    s.upstream.clear_faults();
    s.origin = OriginProcess::start_with_config(&s.origin.config.clone()).expect("restart");
    assert!(modcdn_tests::files(&s.store()).iter().all(|f| !f.contains(".tmp-")), "temp files removed at start");
    let r = s.get(&zip).await;
    assert_eq!((r.status(), header(&r, "x-cache").to_string()), (StatusCode::OK, "MISS".to_string()));
    let body = r.bytes().await.expect("zip");
    let sum = modcdn_shared::dirhash::hash_zip(std::io::Cursor::new(body.to_vec())).expect("hash");
    assert_eq!(sum, s.corpus.get(LARGE, "v1.0.0").expect("large").sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests() {
    let mut s = setup(4 << 20, "").await;
    let zip = Corpus::key(LARGE, "v1.0.0", "zip");
    let want = s.corpus.get(LARGE, "v1.0.0").expect("large").zip_size;
    s.upstream.set_faults(Faults { bytes_per_sec: Some(4 << 20), ..Faults::default() });
    let (client, url) = (s.client.clone(), format!("{}/{zip}", s.origin.url));
    let download = tokio::spawn(async move {
        let r = client.get(url).send().await.expect("request");
        (r.status(), r.bytes().await.map(|b| b.len() as u64).unwrap_or(0))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let origin = &mut s.origin;
    let clean = tokio::task::block_in_place(|| origin.terminate(Duration::from_secs(20)));
    assert!(clean, "exit 0 after draining");
    assert_eq!(download.await.expect("download"), (StatusCode::OK, want), "in-flight request completed");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_only_the_write_and_hits_keep_flowing() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 4 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    // A file-size limit of 1 MiB on the origin process: writing the 4 MiB
    // zip fails with EFBIG, as on a full disk; small files still fit.
    let dir = tmp.path().join("origin");
    let origin = OriginProcess::start_limited(&dir, &upstream.url(), "", 1 << 20).expect("origin");
    let client = reqwest::Client::new();
    let info = Corpus::key(ALPHA, "v1.0.0", "info");
    assert_eq!(client.get(format!("{}/{info}", origin.url)).send().await.expect("info").status(), StatusCode::OK);
    let zip = Corpus::key(LARGE, "v1.0.0", "zip");
    let r = client.get(format!("{}/{zip}", origin.url)).send().await.expect("zip");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&r, "cache-control"), "no-store");
    assert!(r.text().await.expect("body").contains("store write failed"));
    assert!(modcdn_tests::files(&dir.join("store")).iter().all(|f| !f.contains("large")), "nothing half-stored");
    let r = client.get(format!("{}/{info}", origin.url)).send().await.expect("info");
    assert_eq!((r.status(), header(&r, "x-cache")), (StatusCode::OK, "HIT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_near_expiry_are_refreshed_in_the_background() {
    let s = setup(1024, "[ttl]\nmutable_secs = 2\n").await;
    let key = format!("{ALPHA}/@v/list");
    assert_eq!(header(&s.get(&key).await, "x-cache"), "MISS");
    assert_eq!(s.upstream.counters().get(&key), 1);
    // Past 75% of the TTL: still a hit, and a refresh goes out behind it.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(header(&s.get(&key).await, "x-cache"), "HIT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.upstream.counters().get(&key) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.upstream.counters().get(&key), 2, "background refresh");
    // The refreshed copy is fresh again past the first copy's expiry.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(header(&s.get(&key).await, "x-cache"), "HIT");
}

/// Runs a command that should exit at once; kills it after 10 s so that a
/// config that unexpectedly starts a server fails the test instead of hanging it.
fn run_bounded(cmd: &mut std::process::Command) -> std::process::Output {
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn config_errors_name_the_file_and_key_and_exit_64() {
    let tmp = modcdn_tests::tempdir();
    for (text, key) in [
        ("upstream = \"ftp://mirror.example\"\n", "upstream"),
        ("[ttl]\nmutable_secs = 0\n", "ttl.mutable_secs"),
        ("listen = \"not an address\"\n", "listen"),
        ("[http]\nretrys = 3\n", "retrys"),
        ("store_dir = \n", "store_dir"),
    ] {
        let file = tmp.path().join("bad.toml");
        std::fs::write(&file, text).expect("write");
        let out = run_bounded(
            std::process::Command::new(modcdn_tests::node::binary("modcdn-origin"))
                .args(["serve", "--config"])
                .arg(&file),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text:?}: {err}");
        assert!(err.contains("bad.toml") && err.contains(key), "{text:?}: {err}");
    }
    let out = run_bounded(std::process::Command::new(modcdn_tests::node::binary("modcdn-origin")).args([
        "serve",
        "--config",
        "/nonexistent/origin.toml",
    ]));
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/origin.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadz_reports_what_edges_health_checks_read() {
    let s = setup(1024, "").await;
    let _ = s.get(&Corpus::key(ALPHA, "v1.0.0", "info")).await;
    let addr = s.origin.operator.trim_start_matches("http://").to_string();
    let report = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().into();
        modcdn_router::health::probe(&agent, "http", &addr)
    })
    .await
    .expect("join")
    .expect("probe");
    assert_eq!(report.in_flight, 0);
    assert!(report.ewma_latency_ms > 0.0, "{report:?}");

    // Clients that hang up mid-request do not leave phantom load behind.
    s.upstream.set_faults(Faults { delay: Duration::from_millis(800), ..Faults::default() });
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().expect("client");
    for v in ["v1.1.0", "v1.2.0-rc.1"] {
        let r = impatient.get(format!("{}/{}", s.origin.url, Corpus::key(ALPHA, v, "zip"))).send().await;
        assert!(r.is_err(), "the client gave up");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let loadz: serde_json::Value = s.operator("loadz").await.json().await.expect("loadz");
    assert_eq!(loadz["in_flight"], 0, "{loadz}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_from_a_go_sum_warms_everything_and_names_failures() {
    let s = setup(1 << 20, "[prefetch]\nenabled = false\n").await;
    let sum: String = s
        .corpus
        .versions
        .iter()
        .filter(|v| v.path != LARGE)
        .map(|v| format!("{} {} {}\n{} {}/go.mod {}\n", v.path, v.version, v.sum, v.path, v.version, v.go_mod_sum))
        .collect();
    let dir = s.tmp.path().join("prewarm");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("go.sum"), &sum).expect("go.sum");
    let bin = modcdn_tests::node::binary("modcdn");
    let run = |args: Vec<String>| {
        let bin = bin.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin).arg("prewarm").args(args).output().expect("prewarm")
        })
    };
    let n = s.corpus.versions.iter().filter(|v| v.path != LARGE).count() * 3;
    let out = run(vec!["--target".into(), s.origin.url.clone(), dir.join("go.sum").display().to_string()])
        .await
        .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("{n} artifacts: 0 hits, {n} misses, 0 failures")), "{text}");

    let seen = s.upstream.counters().total();
    for v in s.corpus.versions.iter().filter(|v| v.path != LARGE) {
        for ext in ["info", "mod", "zip"] {
            let r = s.get(&Corpus::key(&v.path, &v.version, ext)).await;
            assert_eq!(header(&r, "x-cache"), "HIT", "{}@{} {ext}", v.path, v.version);
        }
    }
    assert_eq!(s.upstream.counters().total(), seen, "everything listed was warm");

    let out = run(vec![
        "--target".into(),
        s.origin.url.clone(),
        "--concurrency".into(),
        "3".into(),
        dir.join("go.sum").display().to_string(),
    ])
    .await
    .expect("join");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{n} hits, 0 misses")));

    std::fs::write(dir.join("go.sum"), format!("{sum}example.com/missing v1.0.0 h1:x=\n")).expect("go.sum");
    let out = run(vec!["--target".into(), s.origin.url.clone(), dir.join("go.sum").display().to_string()])
        .await
        .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED example.com/missing@v1.0.0"), "{text}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_of_a_hot_module_is_fetched_before_anyone_asks() {
    let mut s = setup(1024, "[prefetch]\nenabled = false\n[sync]\ninterval_ms = 300\n").await;
    // Make alpha hot.
    for _ in 0..5 {
        for key in [format!("{ALPHA}/@v/list"), Corpus::key(ALPHA, "v1.1.0", "mod")] {
            assert_eq!(s.get(&key).await.status(), StatusCode::OK);
        }
    }
    let hot: serde_json::Value = s.operator("hotz").await.json().await.expect("hotz");
    assert_eq!(hot[0]["module"], ALPHA, "{hot}");
    // A round sees the list as it is; then the author publishes v1.3.0.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&s.operator("metrics").await.text().await.expect("metrics"), "modcdn_origin_sync_rounds_total ") < 1.0
    {
        assert!(Instant::now() < deadline, "no sync round");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.corpus.publish(ALPHA, "v1.3.0").expect("publish");
    let published = Instant::now();
    while metric(&s.operator("metrics").await.text().await.expect("metrics"), "modcdn_origin_sync_new_versions_total ")
        < 1.0
    {
        assert!(Instant::now() < deadline, "the new version was not synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One interval is 300 ms (±20 %); allow a few for a loaded machine.
    assert!(published.elapsed() < Duration::from_secs(3), "within about one interval: {:?}", published.elapsed());
    let seen = s.upstream.counters().total();
    for ext in ["info", "mod", "zip"] {
        let key = Corpus::key(ALPHA, "v1.3.0", ext);
        let r = s.get(&key).await;
        assert_eq!((r.status(), header(&r, "x-cache").to_string()), (StatusCode::OK, "HIT".to_string()), "{key}");
        assert_eq!(s.upstream.counters().get(&key), 1, "fetched once, by sync");
    }
    assert_eq!(s.upstream.counters().total(), seen, "the first client requests asked upstream nothing");
    let m = s.operator("metrics").await.text().await.expect("metrics");
    // Each of the three was warmed by sync and then asked for.
    assert_eq!(metric(&m, "modcdn_origin_warmed_useful_total{by=\"sync\"} "), 3.0, "{m}");
    assert!(metric(&m, "modcdn_origin_warmed_total{by=\"sync\"} ") >= 3.0, "{m}");
}
