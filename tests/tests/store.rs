//! The origin's store under pressure: a byte budget that holds while it
//! fills and across a restart, and a real file system that fills up (a
//! tmpfs of its own) without taking the node down.

use std::time::Duration;

use futures::StreamExt;
use modcdn_tests::corpus::Corpus;
use modcdn_tests::http::{client, eventually, metric_sum, scrape};
use modcdn_tests::node::OriginProcess;
use modcdn_tests::upstream::FixtureUpstream;

/// GETs `keys` from `base`, 8 at a time: each key with its status.
async fn fetch_all(base: &str, keys: &[String]) -> Vec<(String, u16, String, String)> {
    let c = client();
    futures::stream::iter(keys.iter().cloned())
        .map(|key| {
            let (c, url) = (c.clone(), format!("{base}/{key}"));
            async move {
                let r = c.get(&url).send().await.expect("request");
                let status = r.status().as_u16();
                let fault = r.headers().get("x-modcdn-fault").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let body = r.text().await.unwrap_or_default();
                (key, status, fault, body)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_budget_holds_while_filling_and_across_a_restart() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate_with(&tmp.path().join("corpus"), 1 << 10, 1500).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let dir = tmp.path().join("origin");
    // No memory tier: every hit below is read from the store.
    let extra = "store_max_mib = 1\nmemory_cache_mib = 0\n[prefetch]\nenabled = false\n";
    let mut origin = OriginProcess::start(&dir, &upstream.url(), extra).expect("origin");
    let keys = corpus.many_keys();
    let budget = 1u64 << 20;
    let largest = keys.iter().map(|k| std::fs::metadata(corpus.root.join(k)).expect("corpus").len()).max().unwrap_or(0);
    for chunk in keys.chunks(900) {
        for (key, status, _, _) in fetch_all(&origin.url, chunk).await {
            assert_eq!(status, 200, "{key}");
        }
        let stored = scrape(&origin.operator, "modcdn_origin_store_bytes").await as u64;
        // One artifact may be over while it is published; its trailer too.
        assert!(stored <= budget + largest + 1024, "store {stored} bytes over a budget of {budget}");
    }
    // 4500 artifacts with their records take about 1.5 MiB: a third had to go.
    let text = client().get(format!("{}/metrics", origin.operator)).send().await.expect("m").text().await.expect("m");
    assert!(metric_sum(&text, "modcdn_origin_store_evictions_total") > 1000.0, "{text}");
    assert_eq!(metric_sum(&text, "modcdn_origin_store_budget_bytes"), budget as f64);

    // The oldest were evicted: asked again, they come from upstream, whole.
    let before = upstream.counters().total();
    for key in keys.iter().take(30) {
        let r = client().get(format!("{}/{key}", origin.url)).send().await.expect("again");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.expect("body"), std::fs::read(corpus.root.join(key)).expect("corpus"), "{key}");
    }
    assert!(upstream.counters().total() >= before + 30, "evicted artifacts are fetched again");
    // The newest are still hits.
    let newest = &keys[keys.len() - 1];
    let r = client().get(format!("{}/{newest}", origin.url)).send().await.expect("hit");
    assert_eq!(r.headers().get("x-cache").and_then(|v| v.to_str().ok()), Some("HIT"));

    assert!(origin.terminate(Duration::from_secs(10)));
    let origin = OriginProcess::start_with_config(&origin.config).expect("restart");
    let stored = scrape(&origin.operator, "modcdn_origin_store_bytes").await as u64;
    assert!(stored > 0 && stored <= budget, "after a restart the store holds {stored} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_file_system_fails_only_new_writes_and_hits_go_on() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate_with(&tmp.path().join("corpus"), 1 << 10, 1000).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let keys = corpus.many_keys();
    let extra = "store_max_mib = 0\nmemory_cache_mib = 0\n[prefetch]\nenabled = false\n";
    // 256 KiB of space, then (another run) 300 inodes of plenty of space.
    for (name, bytes, inodes) in [("space", 256u64 << 10, 100_000u64), ("inodes", 64 << 20, 300)] {
        let dir = tmp.path().join(name);
        let origin = OriginProcess::start_on_tmpfs(&dir, &upstream.url(), extra, bytes, inodes).expect("origin");
        let results = fetch_all(&origin.url, &keys[..1500]).await;
        let stored: Vec<&String> = results.iter().filter(|r| r.1 == 200).map(|r| &r.0).collect();
        let failed: Vec<_> = results.iter().filter(|r| r.1 != 200).collect();
        assert!(!stored.is_empty() && !failed.is_empty(), "{name}: {} stored, {} failed", stored.len(), failed.len());
        for (key, status, fault, body) in &failed {
            // The origin's own fault (an edge asks another origin), never a 404.
            assert_eq!((*status, fault.as_str()), (500, "origin"), "{name}: {key}: {body}");
            assert!(body.contains("store write failed"), "{name}: {body}");
            assert!(!body.contains(&dir.display().to_string()), "error bodies name no file paths: {body}");
        }
        // An answer may leave before its durable write (see pull.rs), so a
        // 200 is not yet a stored artifact: once the writes behind answers
        // are done, every 200 whose write found the disk full is counted.
        let pending = || scrape(&origin.operator, "modcdn_origin_store_writes_pending");
        let settled = eventually(Duration::from_secs(20), || async { pending().await == 0.0 });
        assert!(settled.await, "{name}: writes behind answers never finished");
        let errors = scrape(&origin.operator, "modcdn_origin_store_write_errors_total").await as usize;
        assert!(errors >= failed.len(), "{name}: {errors} write errors counted for {} failed answers", failed.len());
        let unstored_answers = errors - failed.len();
        // What was stored is served, whole, from the full store; an answer
        // that was not stored is pulled again, whole or the origin's fault.
        let (mut hits, mut not_stored) = (0, 0);
        for key in stored.iter().take(50) {
            let r = client().get(format!("{}/{key}", origin.url)).send().await.expect("again");
            let (status, cache) = (r.status().as_u16(), r.headers().get("x-cache").cloned());
            let body = r.bytes().await.expect("body");
            if status == 200 {
                assert_eq!(body, std::fs::read(corpus.root.join(key)).expect("corpus"), "{name}: {key}");
            } else {
                assert_eq!(status, 500, "{name}: {key}: {body:?}");
            }
            match cache.as_ref().and_then(|v| v.to_str().ok()) {
                Some("HIT") => hits += 1,
                _ => not_stored += 1,
            }
        }
        assert!(hits > 0, "{name}: nothing answered is served from the store");
        assert!(
            not_stored <= unstored_answers,
            "{name}: {not_stored} answered but not stored, {unstored_answers} write errors behind answers"
        );
        let r = client().get(format!("{}/healthz", origin.url)).send().await.expect("healthz");
        assert_eq!(r.status().as_u16(), 200);
    }
}
