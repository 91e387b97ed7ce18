//! The checksum database through the origin, with the real go command and
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
    let extra = format!("[[checksum_db]]\nname = \"{NAME}\"\nurl = \"{}\"\n", db.url);
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
    let origin_url = origin.url.clone();
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
        client.get(format!("{origin_url}/metrics")).send().await.expect("metrics").text().await.expect("text");
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
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in [
        ("go.mod", format!("module {ALPHA}\n")),
        ("alpha.go", "package alpha\n\nfunc Hello() string { return \"evil\" }\n".into()),
    ] {
        w.start_file(format!("{ALPHA}@v1.0.0/{name}"), zip::write::SimpleFileOptions::default()).expect("zip");
        std::io::Write::write_all(&mut w, data.as_bytes()).expect("zip");
    }
    let evil = w.finish().expect("zip").into_inner();
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
