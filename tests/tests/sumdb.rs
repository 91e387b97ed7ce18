//! The checksum database through the origin and the edge, with the real go command and
//! golang.org/x/mod/sumdb's reference server.

use modcdn_tests::corpus::{Corpus, ALPHA};
use modcdn_tests::go::GoEnv;
use modcdn_tests::node::OriginProcess;
use modcdn_tests::sumdb::SumDbProcess;
use modcdn_tests::upstream::{Faults, FixtureUpstream};

const NAME: &str = "sum.modcdn.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_verifies_every_download_through_the_proxy() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let db = SumDbProcess::start(&corpus.root, NAME).expect("sumdb");
    let extra = format!("[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{}\"\nkey = \"{}\"\n", db.url, db.key);
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), &extra).expect("origin");

    let client = reqwest::Client::new();
    let ok = client.get(format!("{}/sumdb/{NAME}/supported", origin.url)).send().await.expect("supported");
    assert_eq!(ok.status(), 200);
    let no = client.get(format!("{}/sumdb/sum.golang.org/supported", origin.url)).send().await.expect("supported");
    assert_eq!(no.status(), 404, "only configured databases are proxied");

    let mut go = GoEnv::new(&tmp.path().join("go"), &origin.url);
    go.sumdb = db.key.clone();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    let versions = corpus.versions.clone();
    tokio::task::spawn_blocking(move || {
        let args: Vec<String> = versions.iter().map(|v| format!("{}@{}", v.path, v.version)).collect();
        let mut cmd = vec!["mod", "download", "-json"];
        cmd.extend(args.iter().map(String::as_str));
        let out = go.run(&work, &cmd);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(!text.contains("\"Error\""), "{text}");
    })
    .await
    .expect("go");

    // The go command really went through the proxy for the database.
    let metrics =
        client.get(format!("{}/metrics", origin.operator)).send().await.expect("metrics").text().await.expect("text");
    let lookups: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("modcdn_origin_requests_total{")
                && l.contains("kind=\"sumdb_lookup\"")
                && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(lookups >= 10, "lookups through the proxy: {lookups}\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_zip_is_refused_by_the_go_command() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1024).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let db = SumDbProcess::start(&corpus.root, NAME).expect("sumdb");
    // A well-formed module zip for alpha@v1.0.0, with other content.
    let evil = evil_alpha_zip();
    upstream.set_faults(Faults { replace: vec![(Corpus::key(ALPHA, "v1.0.0", "zip"), evil)], ..Faults::default() });
    let extra = format!("[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{}\"\n[prefetch]\nenabled = false\n", db.url);
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), &extra).expect("origin");
    let mut go = GoEnv::new(&tmp.path().join("go"), &origin.url);
    go.sumdb = db.key.clone();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    let out =
        tokio::task::spawn_blocking(move || go.run(&work, &["mod", "download", "-json", &format!("{ALPHA}@v1.0.0")]))
            .await
            .expect("go");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("SECURITY ERROR") || text.contains("checksum mismatch"), "{text}");
}

/// A well-formed module zip for alpha@v1.0.0 with other content than the real one.
fn evil_alpha_zip() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in [
        ("go.mod", format!("module {ALPHA}\n")),
        ("alpha.go", "package alpha\n\nfunc Hello() string { return \"evil\" }\n".into()),
    ] {
        w.start_file(format!("{ALPHA}@v1.0.0/{name}"), zip::write::SimpleFileOptions::default()).expect("zip");
        std::io::Write::write_all(&mut w, data.as_bytes()).expect("zip");
    }
    w.finish().expect("zip").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_verifies_before_storing() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let db = SumDbProcess::start(&corpus.root, NAME).expect("sumdb");
    let extra = format!(
        "[prefetch]\nenabled = false\n[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{}\"\nkey = \"{}\"\n",
        db.url, db.key
    );
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), &extra).expect("origin");
    let client = reqwest::Client::new();
    let get = |key: String| {
        let (client, url) = (client.clone(), format!("{}/{key}", origin.url));
        async move {
            let r = client.get(url).send().await.expect("request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };

    // A tampered zip: refused, nothing stored, counted.
    let zip = Corpus::key(ALPHA, "v1.0.0", "zip");
    upstream.set_faults(Faults { replace: vec![(zip.clone(), evil_alpha_zip())], ..Faults::default() });
    let (status, body) = get(zip.clone()).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("checksum mismatch"), "{body}");
    assert!(modcdn_tests::files(&tmp.path().join("origin/store")).iter().all(|f| !f.contains("alpha/@v/v1.0.0.zip")));
    let metrics = client.get(format!("{}/metrics", origin.operator)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics");
    assert!(metrics.contains("modcdn_origin_checksum_mismatch_total 1"), "{metrics}");

    // Every genuine artifact verifies (and later trees stay consistent with earlier ones).
    upstream.clear_faults();
    for v in &corpus.versions {
        for ext in ["mod", "zip"] {
            let (status, body) = get(Corpus::key(&v.path, &v.version, ext)).await;
            assert_eq!(status, 200, "{}@{} {ext}: {body}", v.path, v.version);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_signatures_and_unlogged_versions_are_refused() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1024).expect("corpus");
    let db = SumDbProcess::start(&corpus.root, NAME).expect("sumdb");
    let impostor = SumDbProcess::start(&corpus.root, NAME).expect("second sumdb");
    // A second upstream has a module the checksum database never logged.
    let mut unlogged_root = Corpus { root: tmp.path().join("unlogged"), versions: Vec::new() };
    unlogged_root.publish("example.com/unlogged", "v1.0.0").expect("publish");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let second = FixtureUpstream::start(unlogged_root.root.clone()).await.expect("upstream 2");

    // Notes signed by another key than the configured one: nothing verifies.
    let extra = format!("[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{}\"\nkey = \"{}\"\n", impostor.url, db.key);
    let origin = OriginProcess::start(&tmp.path().join("forged"), &upstream.url(), &extra).expect("origin");
    let r = reqwest::get(format!("{}/{}", origin.url, Corpus::key(ALPHA, "v1.0.0", "mod"))).await.expect("get");
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("verification failed") && body.contains("signature"), "{body}");
    assert!(
        modcdn_tests::files(&tmp.path().join("forged/store")).iter().all(|f| !f.ends_with(".mod")),
        "nothing stored"
    );

    // A version the log does not have.
    let extra = format!("[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{}\"\nkey = \"{}\"\n", db.url, db.key);
    let chain = format!("{},{}", upstream.url(), second.url());
    let origin = OriginProcess::start(&tmp.path().join("unlogged-origin"), &chain, &extra).expect("origin");
    let r = reqwest::get(format!("{}/{}", origin.url, Corpus::key("example.com/unlogged", "v1.0.0", "zip")))
        .await
        .expect("get");
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("not in the checksum database"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_forked_while_the_origin_was_down_is_caught() {
    let tmp = modcdn_tests::tempdir();
    let fork = modcdn_tests::sumdb::ForkUpstreams::start(tmp.path()).await;
    let (corpus, other, chain) = (&fork.corpus, &fork.other, &fork.chain);
    let dir = tmp.path().join("origin");

    // First run: the log holds alpha's record; its tree head is verified and kept.
    let db = SumDbProcess::start(&corpus.root, NAME).expect("sumdb");
    let extra = |url: &str| {
        format!(
            "[prefetch]\nenabled = false\n[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{url}\"\nkey = \"{}\"\n",
            db.key
        )
    };
    let mut origin = OriginProcess::start(&dir, chain, &extra(&db.url)).expect("origin");
    let r = reqwest::get(format!("{}/{}", origin.url, Corpus::key(ALPHA, "v1.0.0", "mod"))).await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(origin.terminate(std::time::Duration::from_secs(10)));

    // While the origin is down, the database (same name, same key) starts a
    // different log: a tree of the same size with another hash.
    let forked = SumDbProcess::start_with_signer(&other.root, NAME, Some(&db.signer)).expect("forked sumdb");
    assert_eq!(forked.key, db.key);
    let origin = OriginProcess::start(&dir, chain, &extra(&forked.url)).expect("origin again");
    let r = reqwest::get(format!("{}/{}", origin.url, Corpus::key("example.com/unlogged", "v1.0.0", "mod")))
        .await
        .expect("get");
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("forked") || body.contains("inconsistent"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_database_answers_are_refused() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1024).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let real = SumDbProcess::start(&corpus.root, NAME).expect("sumdb");
    // A "database" whose answers the test writes: the fixture upstream.
    let fake = FixtureUpstream::start(tmp.path().join("empty")).await.expect("fake sumdb");
    let extra = format!(
        "[prefetch]\nenabled = false\n[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{}\"\nkey = \"{}\"\n",
        fake.url(),
        real.key
    );
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), &extra).expect("origin");
    let lookup = format!("lookup/{ALPHA}@v1.0.0");
    for (answer, expect) in [
        (b"not a record at all".to_vec(), "malformed record"),
        (
            format!("1\n{ALPHA} v1.0.0/go.mod h1:x=\n\ngo.sum database tree\n5\nnot-base64\n\n\u{2014} {NAME} AAAA\n")
                .into_bytes(),
            "malformed note",
        ),
        (vec![b'7'; 2 << 20], "answer above"),
    ] {
        fake.set_faults(Faults { replace: vec![(lookup.clone(), answer)], ..Faults::default() });
        let r = reqwest::get(format!("{}/{}", origin.url, Corpus::key(ALPHA, "v1.0.0", "mod"))).await.expect("get");
        assert_eq!(r.status(), 502);
        let body = r.text().await.unwrap_or_default();
        assert!(body.contains("verification failed") && body.contains(expect), "want {expect:?}: {body}");
    }
    assert!(
        modcdn_tests::files(&tmp.path().join("origin/store")).iter().all(|f| !f.ends_with(".mod")),
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_edge_go_verifies_everything_and_a_tampered_zip_is_refused() {
    use modcdn_tests::node::{EdgeProcess, Member};
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let db = SumDbProcess::start(&corpus.root, NAME).expect("sumdb");
    let tampered = Corpus::key(ALPHA, "v1.0.0", "zip");
    upstream.set_faults(Faults { replace: vec![(tampered.clone(), evil_alpha_zip())], ..Faults::default() });
    let extra = format!(
        "[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{}\"\nkey = \"{}\"\n[prefetch]\nenabled = false\n",
        db.url, db.key
    );
    let origin = OriginProcess::start(&tmp.path().join("origin"), &upstream.url(), &extra).expect("origin");
    let edge = EdgeProcess::start(&tmp.path().join("edge"), &[Member::of("o", &origin, "us")], "").expect("edge");

    let mut go = GoEnv::new(&tmp.path().join("go"), &edge.url);
    go.sumdb = db.key.clone();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    let versions: Vec<_> =
        corpus.versions.iter().filter(|v| !(v.path == ALPHA && v.version == "v1.0.0")).cloned().collect();
    let out = tokio::task::spawn_blocking(move || {
        modcdn_tests::go::download_and_check(&go, &work, &versions);
        go.run(&work, &["mod", "download", "-json", &format!("{ALPHA}@v1.0.0")])
    })
    .await
    .expect("go");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the go client must not get the tampered module: {text}");
    assert!(text.contains("checksum mismatch"), "{text}");

    let client = reqwest::Client::new();
    for _ in 0..2 {
        let r = client.get(format!("{}/{tampered}", edge.url)).send().await.expect("get");
        assert_eq!(r.status(), 502, "refused, and the refusal is not cached");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    assert!(!tmp.path().join("origin/store").join(&tampered).exists(), "nothing stored");
    let metrics =
        client.get(format!("{}/metrics", edge.admin)).send().await.expect("metrics").text().await.expect("text");
    let lookups: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("modcdn_edge_requests_total{")
                && l.contains("kind=\"sumdb_lookup\"")
                && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(lookups >= 10, "the go command's lookups went through the edge: {lookups}");
}
