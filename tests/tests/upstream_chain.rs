//! The upstream chain as the go command reads GOPROXY: `,` falls through on
//! 404/410 only, `|` on any error; transient failures are retried; slow
//! upstreams time out as 504; `off` serves only what is stored.

use std::time::Duration;

use modcdn_tests::corpus::{Corpus, ALPHA};
use modcdn_tests::node::OriginProcess;
use modcdn_tests::upstream::{Faults, FixtureUpstream};
use reqwest::StatusCode;

async fn upstreams() -> (tempfile::TempDir, FixtureUpstream, FixtureUpstream) {
    let tmp = modcdn_tests::tempdir();
    Corpus::generate(&tmp.path().join("corpus"), 1024).expect("corpus");
    std::fs::create_dir_all(tmp.path().join("empty")).expect("empty");
    let empty = FixtureUpstream::start(tmp.path().join("empty")).await.expect("empty upstream");
    let full = FixtureUpstream::start(tmp.path().join("corpus")).await.expect("full upstream");
    (tmp, empty, full)
}

async fn status(origin: &OriginProcess, key: &str) -> StatusCode {
    reqwest::get(format!("{}/{key}", origin.url)).await.expect("request").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comma_falls_through_on_not_found_only() {
    let (tmp, first, second) = upstreams().await;
    let origin = OriginProcess::start(
        &tmp.path().join("o"),
        &format!("{},{}", first.url(), second.url()),
        "[http]\nretries = 0\n",
    )
    .expect("origin");
    let key = Corpus::key(ALPHA, "v1.0.0", "info");
    assert_eq!(status(&origin, &key).await, StatusCode::OK, "404 from the first → second");
    assert_eq!((first.counters().get(&key), second.counters().get(&key)), (1, 1));

    first.set_faults(Faults { error_ratio: 1.0, error_status: 500, ..Faults::default() });
    let key = Corpus::key(ALPHA, "v1.1.0", "info");
    assert_eq!(status(&origin, &key).await, StatusCode::BAD_GATEWAY, "an error stops a `,` chain");
    assert_eq!(second.counters().get(&key), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_falls_through_on_any_error() {
    let (tmp, first, second) = upstreams().await;
    let origin = OriginProcess::start(
        &tmp.path().join("o"),
        &format!("{}|{}", first.url(), second.url()),
        "[http]\nretries = 0\n",
    )
    .expect("origin");
    first.set_faults(Faults { error_ratio: 1.0, error_status: 500, ..Faults::default() });
    let key = Corpus::key(ALPHA, "v1.0.0", "mod");
    assert_eq!(status(&origin, &key).await, StatusCode::OK);
    assert_eq!((first.counters().get(&key), second.counters().get(&key)), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_backoff() {
    let (tmp, _empty, full) = upstreams().await;
    let origin =
        OriginProcess::start(&tmp.path().join("o"), &full.url(), "[http]\nretries = 2\nretry_backoff_ms = 10\n")
            .expect("origin");
    full.set_faults(Faults { fail_next: 2, error_status: 503, ..Faults::default() });
    let key = Corpus::key(ALPHA, "v1.0.0", "zip");
    assert_eq!(status(&origin, &key).await, StatusCode::OK);
    assert_eq!(full.counters().get(&key), 3, "two failures, then success");

    full.set_faults(Faults { fail_next: 3, error_status: 503, ..Faults::default() });
    let key = Corpus::key(ALPHA, "v1.1.0", "zip");
    assert_eq!(status(&origin, &key).await, StatusCode::BAD_GATEWAY, "bounded: 1 try + 2 retries");
    assert_eq!(full.counters().get(&key), 3);

    // A 404 is an answer, not a failure: never retried.
    let key = "example.com/none/@v/list";
    assert_eq!(status(&origin, key).await, StatusCode::NOT_FOUND);
    assert_eq!(full.counters().get(key), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstreams_time_out_as_504_and_are_not_cached() {
    let (tmp, _empty, full) = upstreams().await;
    let origin = OriginProcess::start(
        &tmp.path().join("o"),
        &full.url(),
        "[http]\nretries = 0\nheader_timeout_ms = 500\nread_timeout_ms = 500\n",
    )
    .expect("origin");
    // Headers never come.
    full.set_faults(Faults { delay: Duration::from_secs(3), ..Faults::default() });
    let key = Corpus::key(ALPHA, "v1.0.0", "info");
    let r = reqwest::get(format!("{}/{key}", origin.url)).await.expect("request");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    // Headers come, then the body stalls.
    full.set_faults(Faults { stall: Some(Duration::from_secs(3)), ..Faults::default() });
    let key = Corpus::key(ALPHA, "v1.0.0", "zip");
    assert_eq!(status(&origin, &key).await, StatusCode::GATEWAY_TIMEOUT);
    full.clear_faults();
    assert_eq!(status(&origin, &key).await, StatusCode::OK, "the timeout was not remembered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_serves_only_what_is_stored() {
    let (tmp, _empty, full) = upstreams().await;
    let dir = tmp.path().join("o");
    let mut origin = OriginProcess::start(&dir, &full.url(), "").expect("origin");
    let key = Corpus::key(ALPHA, "v1.0.0", "mod");
    assert_eq!(status(&origin, &key).await, StatusCode::OK);
    assert!(origin.terminate(Duration::from_secs(10)));
    let origin = OriginProcess::start(&dir, "off", "").expect("origin off");
    assert_eq!(status(&origin, &key).await, StatusCode::OK);
    let r = reqwest::get(format!("{}/{}", origin.url, Corpus::key(ALPHA, "v1.1.0", "mod"))).await.expect("request");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.expect("body").contains("off"));
}
