//! End to end with the real go command (Debian's golang-go) against a real
//! origin process and the fixture upstream, GOSUMDB=off.

use modcdn_tests::corpus::{self, Corpus};
use modcdn_tests::go::GoEnv;
use modcdn_tests::node::OriginProcess;
use modcdn_tests::upstream::FixtureUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_command_downloads_lists_gets_and_builds_through_the_origin() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 4 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), "").expect("origin");
    let go = GoEnv::new(&tmp.path().join("go"), &origin.url);
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");

    let versions = corpus.versions.clone();
    let (go, work) = tokio::task::spawn_blocking(move || {
        modcdn_tests::go::download_and_check(&go, &work, &versions);
        (go, work)
    })
    .await
    .expect("download");

    let consumer = tmp.path().join("consumer");
    corpus::write_consumer(&consumer).expect("consumer");
    tokio::task::spawn_blocking(move || {
        let out = go.ok(&work, &["list", "-m", "-versions", corpus::ALPHA]);
        assert_eq!(out.trim(), "example.com/alpha v1.0.0 v1.1.0 v1.2.0-rc.1");
        let out = go.ok(&work, &["list", "-m", "-versions", corpus::UPPER]);
        assert_eq!(out.trim(), "example.com/Upper/Case v1.0.0");
        let out = go.ok(&work, &["list", "-m", "-versions", corpus::LEGACY]);
        assert_eq!(out.trim(), "example.com/legacy v1.0.0 v3.0.0+incompatible");

        // go get @latest picks the release over the newer prerelease.
        go.ok(&consumer, &["get", &format!("{}@latest", corpus::ALPHA)]);
        let gomod = std::fs::read_to_string(consumer.join("go.mod")).expect("go.mod");
        assert!(gomod.contains("example.com/alpha v1.1.0"), "{gomod}");
        go.ok(&consumer, &["get", &format!("{}@latest", corpus::BETA)]);
        let gomod = std::fs::read_to_string(consumer.join("go.mod")).expect("go.mod");
        assert!(gomod.contains("example.com/beta/v2 v2.0.1"), "{gomod}");

        // go build pulls the whole graph, and the program runs.
        go.ok(&consumer, &["build", "-o", "consumer", "."]);
        let out = std::process::Command::new(consumer.join("consumer")).output().expect("run consumer");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("alpha v1.1.0 beta v2.0.1 upper v1.0.0 legacy v3 pseudo"), "{text}");
        assert!(text.contains("gopkg v2.1.0"), "{text}");

        // A module nobody has is a 404 to the go command: "not found", not an error.
        let out = go.run(&consumer, &["mod", "download", "-json", "example.com/missing@v1.0.0"]);
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("404 Not Found"), "{text}");
    })
    .await
    .expect("go steps");
    drop(origin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_falls_back_to_the_list_when_upstream_has_none() {
    // The fixture upstream has no @latest files at all, so every @latest
    // above was computed from the list. Check the rule directly too.
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 10).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), "").expect("origin");
    let client = reqwest::Client::new();
    for (module, want) in
        [("example.com/alpha", "v1.1.0"), ("example.com/!upper/!case", "v1.0.0"), ("example.com/legacy", "v1.0.0")]
    {
        let r = client.get(format!("{}/{module}/@latest", origin.url)).send().await.expect("latest");
        assert_eq!(r.status(), 200, "{module}");
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["Version"].as_str(), Some(want), "{module}");
    }
    // No versions listed (only a pseudo-version exists): not found.
    let r = client.get(format!("{}/example.com/pseudo/@latest", origin.url)).send().await.expect("latest");
    assert_eq!(r.status(), 404);
}

/// Client-started upstream fetches, from the origin's metrics.
async fn client_fetches(operator: &str) -> u64 {
    let text = reqwest::get(format!("{operator}/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("modcdn_origin_upstream_fetches_total{trigger=\"client\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_prefetch_saves_synchronous_upstream_fetches() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1024).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    upstream.set_faults(modcdn_tests::upstream::Faults {
        delay: std::time::Duration::from_millis(20),
        ..Default::default()
    });
    let mut results = Vec::new();
    for (name, prefetch) in [("off", "false"), ("on", "true")] {
        let dir = tmp.path().join(name);
        let origin =
            OriginProcess::start(&dir.join("origin"), &upstream.url(), &format!("[prefetch]\nenabled = {prefetch}\n"))
                .expect("origin");
        let go = GoEnv::new(&dir.join("go"), &origin.url);
        let consumer = dir.join("consumer");
        corpus::write_chain_consumer(&consumer).expect("consumer");
        let started = std::time::Instant::now();
        let out = tokio::task::spawn_blocking(move || {
            go.ok(&consumer, &["build", "-o", "chainuser", "."]);
            std::process::Command::new(consumer.join("chainuser")).output().expect("run")
        })
        .await
        .expect("go build");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "c0 c1 c2 c3");
        results.push((name, client_fetches(&origin.operator).await, started.elapsed()));
    }
    let (off, on) = (results[0].1, results[1].1);
    eprintln!(
        "client-started upstream fetches: prefetch off {off}, on {on}; times {:?} / {:?}",
        results[0].2, results[1].2
    );
    assert!(on < off, "prefetch should spare the go command synchronous fetches: off {off}, on {on}");
}
