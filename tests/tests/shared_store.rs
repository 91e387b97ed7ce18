//! Origins over one shared store on a real S3 engine (SeaweedFS): the store
//! contract on every backend, artifacts that move between origins without
//! an upstream pull (also while a fourth origin joins under load), racing
//! pulls that agree on one copy, an origin killed mid-upload, a checksum
//! database fork seen through the shared tree head, and an object store
//! that fails under a running origin.

use std::sync::Arc;
use std::time::Duration;

use modcdn_origin::s3::{S3Store, StoreConfig, StoreKind, Tiered};
use modcdn_origin::store::{conformance, DiskStore, Store};
use modcdn_tests::corpus::{Corpus, ALPHA, LARGE};
use modcdn_tests::http::{eventually, fetch_ok, load, scrape, settled, stop_after, totals};
use modcdn_tests::node::{write_membership, EdgeProcess, Member, OriginProcess, CLUSTER_TOKEN};
use modcdn_tests::seaweed::{SeaweedFs, ACCESS_KEY, BUCKET, SECRET_KEY};
use modcdn_tests::sumdb::SumDbProcess;
use modcdn_tests::upstream::{Faults, FixtureUpstream};

fn s3_config(weed: &SeaweedFs, prefix: &str) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::S3,
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(weed.endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        path_style: true,
        timeout_ms: 5000,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, bytes::Bytes) {
    let r = c.get(url).send().await.expect("request");
    (r.status().as_u16(), r.bytes().await.expect("body"))
}

#[test]
fn the_object_store_and_the_tiered_store_pass_the_store_contract() {
    let tmp = modcdn_tests::tempdir();
    let weed = SeaweedFs::start(tmp.path()).expect("seaweedfs");
    let s3 = S3Store::open(&s3_config(&weed, "conformance/s3"), &tmp.path().join("scratch")).expect("open");
    conformance(&s3);
    // A body past one part goes up in parts, and comes back whole.
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    let key = "example.com/big/@v/v1.0.0.zip";
    s3.put(key, &big, &meta_of(&big)).expect("multipart put");
    assert_eq!(s3.get(key).expect("get").expect("stored").read_body().expect("body"), big);

    // Two origins storing the same immutable artifact agree on the first
    // copy (conditional create); a mutable one (a list) is replaced, and so
    // is a copy that is not the same artifact.
    let second = S3Store::open(&s3_config(&weed, "conformance/s3"), &tmp.path().join("scratch-b")).expect("open");
    let key = "example.com/race/@v/v1.0.0.mod";
    let body = b"module example.com/race\n";
    let first = meta_of(body);
    s3.put(key, body, &first).expect("first");
    second.put(key, body, &modcdn_origin::store::Meta { fetched_at_ms: 2, ..first.clone() }).expect("second");
    assert_eq!(s3.get(key).expect("get").expect("stored").meta, first, "the first copy stays");
    let routed = modcdn_origin::store::Meta { route: Some("corp".into()), ..first.clone() };
    second.put(key, body, &routed).expect("another route");
    assert_eq!(second.get(key).expect("get").expect("stored").meta, routed, "a copy from another route is replaced");
    let list = "example.com/race/@v/list";
    s3.put(list, b"v1.0.0\n", &meta_of(b"v1.0.0\n")).expect("list");
    second.put(list, b"v1.0.0\nv1.1.0\n", &meta_of(b"v1.0.0\nv1.1.0\n")).expect("list again");
    assert_eq!(s3.get(list).expect("get").expect("list").read_body().expect("body"), b"v1.0.0\nv1.1.0\n");

    let local = DiskStore::open(&tmp.path().join("local"), 0).expect("local");
    let shared =
        Arc::new(S3Store::open(&s3_config(&weed, "conformance/tiered"), &tmp.path().join("scratch2")).expect("open"));
    let tiered = Tiered { local, shared };
    conformance(&tiered);
    // Read through: what only the object store holds fills the local tier.
    let other = S3Store::open(&s3_config(&weed, "conformance/tiered"), &tmp.path().join("scratch3")).expect("open");
    let key = "example.com/through/@v/v1.0.0.mod";
    other.put(key, b"module example.com/through\n", &meta_of(b"module example.com/through\n")).expect("put");
    assert!(tiered.local.get(key).expect("local").is_none());
    let hit = tiered.get(key).expect("get").expect("read through");
    assert_eq!(hit.read_body().expect("body"), b"module example.com/through\n");
    assert!(tiered.local.get(key).expect("local").is_some(), "the local tier keeps what it read");

    // Stopped, the engine leaves nothing outside its directory: neither its
    // local sockets (always in /tmp) nor its logs (in the temp dir).
    let ports = weed.ports;
    drop(weed);
    let left: Vec<String> = std::fs::read_dir("/tmp")
        .expect("/tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seaweedfs-") && ports.iter().any(|p| n.ends_with(&format!("-{p}.sock"))))
        .collect();
    assert!(left.is_empty(), "left in /tmp: {left:?}");
    assert!(modcdn_tests::files(tmp.path()).iter().any(|f| f.contains("weed.") && f.contains(".log.")), "its logs");
}

fn meta_of(body: &[u8]) -> modcdn_origin::store::Meta {
    use sha2::Digest;
    modcdn_origin::store::Meta {
        size: body.len() as u64,
        sha256: sha2::Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect(),
        h1: None,
        fetched_at_ms: 1,
        upstream: "test".into(),
        route: None,
    }
}

/// Origin `name` on the shared store, with its own local tier.
fn origin(tmp: &std::path::Path, weed: &SeaweedFs, name: &str, upstream: &str) -> OriginProcess {
    let extra = format!("memory_cache_mib = 0\n[prefetch]\nenabled = false\n{}", weed.store_toml("cluster"));
    OriginProcess::start(&tmp.join(name), upstream, &extra).expect("origin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_origin_pulled_another_serves_with_no_upstream_request() {
    let tmp = modcdn_tests::tempdir();
    let weed = SeaweedFs::start(tmp.path()).expect("seaweedfs");
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 12 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let a = origin(tmp.path(), &weed, "a", &upstream.url());
    let c = client();
    let keys: Vec<String> = ["info", "mod", "zip"]
        .iter()
        .map(|ext| Corpus::key(ALPHA, "v1.0.0", ext))
        .chain([Corpus::key(LARGE, "v1.0.0", "zip")])
        .collect();
    let mut bodies = Vec::new();
    for key in &keys {
        let (status, body) = get(&c, &format!("{}/{key}", a.url)).await;
        assert_eq!(status, 200, "{key}");
        bodies.push(body);
    }
    settled(&a.operator).await;
    let pulled = upstream.counters().total();
    // The ring moves these keys to B (and a fourth origin joins): they are
    // in the shared store, so neither asks upstream for them.
    let b = origin(tmp.path(), &weed, "b", &upstream.url());
    let d = origin(tmp.path(), &weed, "d", &upstream.url());
    for node in [&b, &d] {
        for (key, want) in keys.iter().zip(&bodies) {
            let (status, body) = get(&c, &format!("{}/{key}", node.url)).await;
            assert_eq!(status, 200, "{key}");
            assert!(body == want, "{key}: other bytes from another origin");
        }
    }
    assert_eq!(upstream.counters().total(), pulled, "artifacts in the shared store were pulled again");
    // Served from B's local tier now: still no upstream request, and the
    // object store is not needed for it.
    drop(weed);
    let (status, body) = get(&c, &format!("{}/{}", b.url, keys[2])).await;
    assert_eq!((status, &body), (200, &bodies[2]));
    assert_eq!(upstream.counters().total(), pulled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_origins_pulling_one_artifact_at_once_both_answer_and_keep_one_copy() {
    let tmp = modcdn_tests::tempdir();
    let weed = SeaweedFs::start(tmp.path()).expect("seaweedfs");
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 12 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    // Both pulls are in flight at once: each waits on upstream first.
    upstream.set_faults(Faults { delay: Duration::from_millis(300), ..Faults::default() });
    let (a, b) = (origin(tmp.path(), &weed, "a", &upstream.url()), origin(tmp.path(), &weed, "b", &upstream.url()));
    let c = client();
    for (module, ext) in [(LARGE, "zip"), (LARGE, "mod"), (ALPHA, "zip")] {
        let key = Corpus::key(module, "v1.0.0", ext);
        let (url_a, url_b) = (format!("{}/{key}", a.url), format!("{}/{key}", b.url));
        let (ra, rb) = tokio::join!(get(&c, &url_a), get(&c, &url_b));
        assert_eq!((ra.0, rb.0), (200, 200), "{key}");
        assert!(ra.1 == rb.1, "{key}: the two origins answered different bytes");
        let want = std::fs::read(corpus.root.join(&key)).expect("corpus");
        assert!(ra.1 == want, "{key}");
        settled(&a.operator).await;
        settled(&b.operator).await;
        // One object under the key, with the same bytes.
        let reader = S3Store::open(&s3_config(&weed, "cluster"), &tmp.path().join("reader")).expect("open");
        let stored = reader.get(&key).expect("get").expect("stored once");
        assert!(stored.read_body().expect("body") == want, "{key}: the stored copy differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_that_fails_turns_misses_into_503_and_hits_go_on() {
    let tmp = modcdn_tests::tempdir();
    let mut weed = SeaweedFs::start(tmp.path()).expect("seaweedfs");
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let a = origin(tmp.path(), &weed, "a", &upstream.url());
    let c = client();
    let hit = Corpus::key(ALPHA, "v1.0.0", "zip");
    assert_eq!(get(&c, &format!("{}/{hit}", a.url)).await.0, 200);
    settled(&a.operator).await;
    weed.kill9();
    assert_eq!(get(&c, &format!("{}/{hit}", a.url)).await.0, 200, "a hit in the local tier needs no object store");
    let miss = Corpus::key(ALPHA, "v1.1.0", "zip");
    let r = c.get(format!("{}/{miss}", a.url)).send().await.expect("request");
    assert_eq!(r.status().as_u16(), 503, "a miss that cannot be stored is unavailable, never a 404");
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(r.headers().get("x-modcdn-fault").and_then(|v| v.to_str().ok()), Some("origin"));
    // Nothing was remembered as missing: asked again once the store is
    // back, it is served.
    let weed = SeaweedFs::start(&tmp.path().join("again")).expect("seaweedfs");
    let b = origin(tmp.path(), &weed, "b", &upstream.url());
    assert_eq!(get(&c, &format!("{}/{miss}", b.url)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_origin_reaches_every_origin_on_the_shared_store() {
    let tmp = modcdn_tests::tempdir();
    let weed = SeaweedFs::start(tmp.path()).expect("seaweedfs");
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let (a, b) = (origin(tmp.path(), &weed, "a", &upstream.url()), origin(tmp.path(), &weed, "b", &upstream.url()));
    let c = client();
    let key = Corpus::key(ALPHA, "v1.0.0", "mod");
    for node in [&a, &b] {
        assert_eq!(get(&c, &format!("{}/{key}", node.url)).await.0, 200);
        settled(&node.operator).await;
    }
    assert_eq!(upstream.counters().get(&key), 1, "B read A's copy");
    // Both origins purge at once: two entries, two numbers, one log.
    let purge = |node: &OriginProcess, module: &str| {
        c.post(format!("{}/purge?module={module}", node.operator)).bearer_auth(CLUSTER_TOKEN).send()
    };
    let (ra, rb) = tokio::join!(purge(&a, ALPHA), purge(&b, LARGE));
    let seq = |r: reqwest::Response| async move {
        assert_eq!(r.status().as_u16(), 200);
        r.json::<serde_json::Value>().await.expect("json")["seq"].as_u64().expect("seq")
    };
    let mut seqs = [seq(ra.expect("purge a")).await, seq(rb.expect("purge b")).await];
    seqs.sort();
    assert_eq!(seqs, [1, 2]);
    // B follows the shared log: its page holds both, and its local copy of
    // A's purge is gone, so the next read is a pull.
    let page = |node: &OriginProcess| {
        let url = format!("{}/purgez?after=0", node.operator);
        let c = c.clone();
        async move {
            let r = c.get(url).bearer_auth(CLUSTER_TOKEN).send().await.expect("purgez");
            r.json::<serde_json::Value>().await.expect("json")["last"].as_u64().unwrap_or(0)
        }
    };
    let both = modcdn_tests::http::eventually(Duration::from_secs(10), || async {
        page(&a).await == 2 && page(&b).await == 2
    })
    .await;
    assert!(both, "both origins serve the whole shared purge log");
    // B drops its own copy when it applies the entry (within a second):
    // from then on, a read is a pull, once.
    let pulled = modcdn_tests::http::eventually(Duration::from_secs(10), || async {
        assert_eq!(get(&c, &format!("{}/{key}", b.url)).await.0, 200);
        upstream.counters().get(&key) == 2
    })
    .await;
    assert!(pulled, "B kept serving a copy purged on A");
    assert_eq!(get(&c, &format!("{}/{key}", b.url)).await.0, 200);
    assert_eq!(upstream.counters().get(&key), 2, "pulled once, then stored again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_origin_joins_under_load_with_no_failed_request_and_no_upstream_pull() {
    let tmp = modcdn_tests::tempdir();
    let weed = SeaweedFs::start(tmp.path()).expect("seaweedfs");
    let corpus = Corpus::generate_with(&tmp.path().join("corpus"), 1 << 20, 1000).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origins: Vec<OriginProcess> =
        ["a", "b", "c"].iter().map(|n| origin(tmp.path(), &weed, n, &upstream.url())).collect();
    let keys = Arc::new(corpus.many_keys());
    // Every artifact is in the shared store before the load.
    let warm: Vec<_> = keys
        .chunks(keys.len().div_ceil(16))
        .map(|part| {
            let (part, base, c) = (part.to_vec(), origins[0].url.clone(), client());
            tokio::spawn(async move {
                for key in part {
                    fetch_ok(&c, &format!("{base}/{key}")).await.unwrap_or_else(|e| panic!("{key}: {e}"));
                }
            })
        })
        .collect();
    for w in warm {
        w.await.expect("warm");
    }
    settled(&origins[0].operator).await;
    assert_eq!(upstream.counters().total(), keys.len() as u64);
    // An edge whose cache holds a fraction of them, so the origins see the load.
    let members: Vec<Member> = ["a", "b", "c"].iter().zip(&origins).map(|(id, o)| Member::of(id, o, "us")).collect();
    let edge =
        EdgeProcess::start(&tmp.path().join("edge"), &members, "[cache]\nmax_mib = 1\nmemory_mib = 0\n").expect("edge");
    let started = std::time::Instant::now();
    let stop = stop_after(Duration::from_secs(30));
    let clients = load(&edge.url, &keys, 32, 1_000_000, false, &stop);
    // Under load, D starts on the same store and joins the ring.
    let through_edge = || scrape(&edge.admin, "modcdn_edge_origin_requests_total");
    assert!(eventually(Duration::from_secs(10), || async { through_edge().await >= 500.0 }).await, "the load runs");
    let d = origin(tmp.path(), &weed, "d", &upstream.url());
    let mut members = members;
    members.push(Member::of("d", &d, "us"));
    write_membership(&edge.dir.join("membership.toml"), &members).expect("membership");
    edge.signal("HUP");
    let to_d = "modcdn_edge_origin_requests_total{origin=\"d\"";
    assert!(
        eventually(Duration::from_secs(10), || async { scrape(&edge.admin, to_d).await > 0.0 }).await,
        "the new origin is in the ring and serves"
    );
    let joined = started.elapsed();
    assert_eq!(scrape(&edge.admin, "modcdn_edge_membership_reloads_total").await, 1.0, "the ring change is counted");
    let (ok, failed) = totals(clients).await;
    let (at_d, all) = (scrape(&edge.admin, to_d).await, through_edge().await);
    eprintln!("{ok} requests ({all} to origins, {at_d} to D, joined after {joined:?}), {failed} failed");
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed);
    assert!(at_d >= 100.0, "D served {at_d} of {all} origin requests");
    // (The edge's hot-module round may ask for lists: those are not stored artifacts.)
    let again: Vec<&String> = keys.iter().filter(|k| upstream.counters().get(k) != 1).collect();
    assert!(again.is_empty(), "artifacts already stored were pulled again: {again:?}");
}

/// Multipart uploads SeaweedFS holds in progress (its filer keeps each
/// under the bucket's `.uploads` directory until it completes or aborts).
async fn uploads_in_progress(c: &reqwest::Client, weed: &SeaweedFs) -> usize {
    let url = format!("{}/buckets/{BUCKET}/.uploads/", weed.filer);
    let Ok(r) = c.get(url).header("accept", "application/json").send().await else { return 0 };
    let listing: serde_json::Value = r.json().await.unwrap_or_default();
    listing["Entries"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_killed_during_a_multipart_upload_leaves_no_partial_object() {
    let tmp = modcdn_tests::tempdir();
    let weed = SeaweedFs::start(tmp.path()).expect("seaweedfs");
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 48 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let mut a = origin(tmp.path(), &weed, "a", &upstream.url());
    let c = client();
    let key = Corpus::key(LARGE, "v1.0.0", "zip");
    let want = std::fs::read(corpus.root.join(&key)).expect("corpus");
    let url = format!("{}/{key}", a.url);
    // The answer does not wait for the upload: the client may get the
    // whole zip, or be cut off by the kill, never a short body as whole.
    let pull = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await?.bytes().await }
    });
    // Killed once the upload is in flight (its parts going up).
    let started =
        modcdn_tests::http::eventually(Duration::from_secs(30), || async { uploads_in_progress(&c, &weed).await > 0 })
            .await;
    a.kill9();
    assert!(started, "the pull never started a multipart upload");
    if let Ok(body) = pull.await.expect("join") {
        assert!(body == want, "a killed origin's answer ended short without an error");
    }
    // Nothing partial is visible under the key, to any origin.
    let reader = S3Store::open(&s3_config(&weed, "cluster"), &tmp.path().join("reader")).expect("open");
    let stored = reader.get(&key).expect("get");
    assert!(stored.is_none_or(|h| h.read_body().expect("body") == want), "a partial object is stored");
    let b = origin(tmp.path(), &weed, "b", &upstream.url());
    let (status, body) = get(&c, &format!("{}/{key}", b.url)).await;
    assert_eq!(status, 200);
    assert!(body == want, "another origin served other bytes");
    // A, restarted on its own directory, serves it whole too.
    let a = OriginProcess::start_with_config(&a.config).expect("restart");
    let (status, body) = get(&c, &format!("{}/{key}", a.url)).await;
    assert_eq!(status, 200);
    assert!(body == want, "the restarted origin served other bytes");
    assert!(reader.get(&key).expect("get").expect("stored").read_body().expect("body") == want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_between_what_two_origins_verified_is_caught_through_the_shared_store() {
    const NAME: &str = "sum.modcdn.test";
    let tmp = modcdn_tests::tempdir();
    let weed = SeaweedFs::start(tmp.path()).expect("seaweedfs");
    let fork = modcdn_tests::sumdb::ForkUpstreams::start(tmp.path()).await;
    let (corpus, other, chain) = (&fork.corpus, &fork.other, &fork.chain);
    // A checks against the log; B, started at the same time, against a
    // fork of it (same name, same key, another tree of the same size).
    let db = SumDbProcess::start(&corpus.root, NAME).expect("sumdb");
    let forked = SumDbProcess::start_with_signer(&other.root, NAME, Some(&db.signer)).expect("forked sumdb");
    let on = |name: &str, url: &str| {
        let extra = format!(
            "[prefetch]\nenabled = false\n[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{url}\"\nkey = \"{}\"\n{}",
            db.key,
            weed.store_toml("cluster")
        );
        OriginProcess::start(&tmp.path().join(name), chain, &extra).expect("origin")
    };
    let (a, b) = (on("a", &db.url), on("b", &forked.url));
    let c = client();
    assert_eq!(get(&c, &format!("{}/{}", a.url, Corpus::key(ALPHA, "v1.0.0", "mod"))).await.0, 200);
    let reader = S3Store::open(&s3_config(&weed, "cluster"), &tmp.path().join("reader")).expect("open");
    let head = reader.read_record(&format!("sumdb/{NAME}/verified-tree")).expect("read").expect("tree head stored");
    assert!(String::from_utf8_lossy(&head.body).starts_with("go.sum database tree\n"));
    // B never saw A's tree itself: it reads it from the shared store.
    let r = c.get(format!("{}/{}", b.url, Corpus::key("example.com/unlogged", "v1.0.0", "mod"))).send().await;
    let r = r.expect("request");
    assert_eq!(r.status().as_u16(), 502);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("forked") || body.contains("inconsistent"), "{body}");
    // The stored head is still A's.
    let after = reader.read_record(&format!("sumdb/{NAME}/verified-tree")).expect("read").expect("tree head");
    assert_eq!(after.body, head.body);
}

/// A port with the nine after it free too (SeaweedFS takes ten in a row).
fn ten_free_ports() -> u16 {
    for _ in 0..50 {
        let first = modcdn_tests::node::free_port().expect("port");
        let Some(last) = first.checked_add(9) else { continue };
        if (first..=last).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return first;
        }
    }
    panic!("no ten free ports in a row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_on_the_shared_store_pulls_a_module_once_for_every_origin() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let free = || format!("127.0.0.1:{}", modcdn_tests::node::free_port().expect("port"));
    let origins: Vec<(&str, String, String, &str)> =
        [("us-1", "us"), ("us-2", "us"), ("eu-1", "eu")].iter().map(|(id, r)| (*id, free(), free(), *r)).collect();
    let mut text = format!("dir = \"unused\"\nupstream = \"unused\"\n[seaweedfs]\nports = {}\n", ten_free_ports());
    for (id, listen, admin, region) in &origins {
        text +=
            &format!("[[origin]]\nid = \"{id}\"\nlisten = \"{listen}\"\nadmin = \"{admin}\"\nregion = \"{region}\"\n");
    }
    let edge = free();
    text += &format!("[[edge]]\nid = \"edge-us\"\nlisten = \"{edge}\"\nadmin = \"{}\"\nregion = \"us\"\n", free());
    let file = tmp.path().join("cluster.toml");
    std::fs::write(&file, text).expect("cluster file");
    let mut cluster = std::process::Command::new(modcdn_tests::node::binary("modcdn"))
        .args(["cluster", "--store", "s3", "--no-verify", "--cluster"])
        .arg(&file)
        .arg("--upstream")
        .arg(upstream.url())
        .arg("--dir")
        .arg(tmp.path().join("run"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cluster");
    // It prints the GOPROXY line once every node is ready.
    // SIGTERM however the test ends: the cluster then stops its nodes (a
    // failed assertion must not leave them running).
    let mut terminate = Terminate(Some(cluster.id()));
    let stdout = cluster.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("the cluster came up");
    assert_eq!(line, format!("GOPROXY=http://{edge}"));
    let c = client();
    let key = Corpus::key(ALPHA, "v1.0.0", "zip");
    let (status, want) = get(&c, &format!("http://{edge}/{key}")).await;
    assert_eq!(status, 200);
    for (_, _, admin, _) in &origins {
        settled(&format!("http://{admin}")).await;
    }
    // Every origin, in either region, serves it from the one bucket.
    for (id, listen, _, _) in &origins {
        let (status, body) = get(&c, &format!("http://{listen}/{key}")).await;
        assert_eq!(status, 200, "{id}");
        assert!(body == want, "{id}: other bytes");
    }
    assert_eq!(upstream.counters().get(&key), 1, "pulled once for the whole cluster");
    terminate.now();
    let stopped = modcdn_tests::http::eventually(Duration::from_secs(20), || {
        let done = matches!(cluster.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(stopped, "the cluster stops on SIGTERM");
}

/// Sends SIGTERM to a process once: when told, or when dropped.
struct Terminate(Option<u32>);

impl Terminate {
    fn now(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

impl Drop for Terminate {
    fn drop(&mut self) {
        self.now();
    }
}

#[test]
fn an_unreachable_object_store_is_a_start_up_error_naming_it() {
    let tmp = modcdn_tests::tempdir();
    let port = modcdn_tests::node::free_port().expect("port");
    let extra = format!(
        "[store]\nkind = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"http://127.0.0.1:{port}\"\npath_style = true\n\
         access_key_id = \"x\"\nsecret_access_key = \"y\"\ntimeout_ms = 2000\n"
    );
    let config = modcdn_tests::node::write_config(&tmp.path().join("o"), "off", &extra).expect("config");
    let out = std::process::Command::new(modcdn_tests::node::binary("modcdn-origin"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("s3://{BUCKET}/")) && stderr.contains(&port.to_string()), "{stderr}");
}
