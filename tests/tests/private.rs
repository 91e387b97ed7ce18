//! Private modules: served only from their route, to clients with
//! credentials; nothing about them reaches the public upstream or a
//! checksum database.

use modcdn_tests::corpus::Corpus;
use modcdn_tests::git;
use modcdn_tests::go::GoEnv;
use modcdn_tests::http::settled;
use modcdn_tests::node::{OriginProcess, CLUSTER_TOKEN};
use modcdn_tests::upstream::FixtureUpstream;
use reqwest::StatusCode;

const PRIVATE: &str = "corp.example.com/platform/lib";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_modules_stay_private() {
    let tmp = modcdn_tests::tempdir();
    let public_corpus = Corpus::generate(&tmp.path().join("public"), 1024).expect("corpus");
    let public = FixtureUpstream::start(public_corpus.root.clone()).await.expect("public upstream");
    let mut private_corpus = Corpus { root: tmp.path().join("private"), versions: Vec::new() };
    let lib = private_corpus.publish(PRIVATE, "v1.0.0").expect("publish");
    let private = FixtureUpstream::start(private_corpus.root.clone()).await.expect("private upstream");
    // The internal proxy wants credentials; the origin sends those of the route's URL.
    private.set_faults(modcdn_tests::upstream::Faults {
        require_auth: Some("Basic bW9kY2RuOnMzY3JldA==".into()),
        ..Default::default()
    });
    let private_url = private.url().replace("http://", "http://modcdn:s3cret@");
    // The "checksum database" is the public fixture: any lookup would show in its counters.
    let extra = format!(
        "[[private]]\npatterns = \"corp.example.com\"\nupstream = \"{private_url}\"\nbasic_users = [\"ci:pw\"]\nbearer_tokens = [\"tok\"]\n\n[[checksum_db]]\nname = \"sum.golang.org\"\nurl = \"{}/sumdb\"\n",
        public.url()
    );
    let origin = OriginProcess::start(&tmp.path().join("origin"), &public.url(), &extra).expect("origin");
    let client = reqwest::Client::new();
    let key = Corpus::key(PRIVATE, "v1.0.0", "zip");

    // No credentials: asked for them (401 + Basic realm, as the go
    // command's .netrc / GOAUTH expect), and nobody upstream was asked.
    for path in [format!("{PRIVATE}/@v/list"), key.clone(), format!("{PRIVATE}/@latest")] {
        let r = client.get(format!("{}/{path}", origin.url)).send().await.expect("request");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"modcdn\"");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(r.text().await.expect("body"), "unauthorized\n");
    }
    assert_eq!(private.counters().total(), 0);
    // Wrong credentials: the same.
    let r = client.get(format!("{}/{key}", origin.url)).bearer_auth("nope").send().await.expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // With credentials: served from the private route, privately.
    let r = client.get(format!("{}/{key}", origin.url)).bearer_auth("tok").send().await.expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["cache-control"].to_str().unwrap_or("").starts_with("private"), "{:?}", r.headers());
    assert_eq!(private.counters().get(&key), 1);

    // If the internal proxy refuses the origin, the error says so without
    // repeating the origin's credentials.
    private
        .set_faults(modcdn_tests::upstream::Faults { require_auth: Some("Basic other".into()), ..Default::default() });
    let r = client
        .get(format!("{}/{}", origin.url, Corpus::key(PRIVATE, "v1.0.0", "mod")))
        .bearer_auth("tok")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body = r.text().await.expect("body");
    assert!(body.contains("401") && !body.contains("s3cret") && !body.contains("modcdn:"), "{body}");
    private.set_faults(modcdn_tests::upstream::Faults {
        require_auth: Some("Basic bW9kY2RuOnMzY3JldA==".into()),
        ..Default::default()
    });

    // A checksum lookup for a private path is answered here, never forwarded.
    let r = client
        .get(format!("{}/sumdb/sum.golang.org/lookup/{PRIVATE}@v1.0.0", origin.url))
        .send()
        .await
        .expect("lookup");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The real go command through a route open to its network (Go 1.19
    // sends .netrc credentials over HTTPS only, and this origin speaks plain
    // HTTP; TLS is the edge's).
    let open_extra =
        extra.replace("basic_users = [\"ci:pw\"]\nbearer_tokens = [\"tok\"]\n", "networks = [\"127.0.0.0/8\"]\n");
    let open = OriginProcess::start(&tmp.path().join("open-origin"), &public.url(), &open_extra).expect("origin");
    let mut go = GoEnv::new(&tmp.path().join("go"), &open.url);
    go.sumdb = "sum.golang.org".into();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    let out = tokio::task::spawn_blocking(move || {
        // GONOSUMDB is how a company tells its go commands; modcdn refuses
        // private lookups even when a client forgets (checked above).
        go.ok_env(
            &work,
            &[("GONOSUMDB", "corp.example.com")],
            &["mod", "download", "-json", &format!("{PRIVATE}@v1.0.0")],
        )
    })
    .await
    .expect("go");
    assert!(out.contains(&lib.sum), "{out}");
    assert_eq!(private.counters().get(&Corpus::key(PRIVATE, "v1.0.0", "info")), 1, "from the private route");

    // Nothing about the private module ever reached the public side.
    let hot: serde_json::Value = client
        .get(format!("{}/hotz", origin.operator))
        .bearer_auth(CLUSTER_TOKEN)
        .send()
        .await
        .expect("hotz")
        .json()
        .await
        .expect("json");
    assert!(!hot.to_string().contains("corp.example.com"), "{hot}");
    let leaked: u64 = ["corp.example.com", "sumdb"].iter().map(|needle| public.counters().matching(needle)).sum();
    assert_eq!(leaked, 0, "requests for private paths or checksum lookups reached the public side");
}

/// A git repository on this machine, reachable as `https://git.modcdn.test/corp/lib`
/// for git run with the returned HOME (url.insteadOf → file://).
fn git_repo(root: &std::path::Path) -> std::path::PathBuf {
    let repos = root.join("repos");
    git::bare_repo(&repos, "corp/lib", "git.modcdn.test/corp/lib.git", &["v1.0.0", "v1.1.0"]);
    git::home_rewriting(&root.join("home"), "git.modcdn.test", &format!("file://{}/", repos.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_modules_come_direct_from_version_control() {
    let tmp = modcdn_tests::tempdir();
    let public_corpus = Corpus::generate(&tmp.path().join("public"), 1024).expect("corpus");
    let public = FixtureUpstream::start(public_corpus.root.clone()).await.expect("public upstream");
    let home = git_repo(&tmp.path().join("vcs"));
    let extra = format!(
        "[direct]\ndir = \"{}\"\nhome = \"{}\"\ntimeout_secs = 60\n\n[[private]]\npatterns = \"git.modcdn.test\"\nupstream = \"direct\"\nnetworks = [\"127.0.0.1\"]\n",
        tmp.path().join("direct").display(),
        home.display()
    );
    let origin = OriginProcess::start(&tmp.path().join("origin"), &public.url(), &extra).expect("origin");
    let get = |path: String| {
        let url = format!("{}/{path}", origin.url);
        async move {
            let r = reqwest::get(url).await.expect("request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    let m = "git.modcdn.test/corp/lib.git";
    assert_eq!(get(format!("{m}/@v/list")).await, (200, "v1.0.0\nv1.1.0\n".to_string()));
    let (status, latest) = get(format!("{m}/@latest")).await;
    assert_eq!(status, 200, "{latest}");
    assert!(latest.contains("\"Version\":\"v1.1.0\""), "{latest}");
    for ext in ["info", "mod", "zip"] {
        let (status, body) = get(format!("{m}/@v/v1.0.0.{ext}")).await;
        assert_eq!(status, 200, "{ext}: {body}");
    }
    let (status, body) = get(format!("{m}/@v/v9.9.9.info")).await;
    assert_eq!(status, 404, "{body}");

    // The go command through the origin gets the same module.
    let go = GoEnv::new(&tmp.path().join("go"), &origin.url);
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    let out = tokio::task::spawn_blocking(move || {
        go.ok(&work, &["mod", "download", "-json", "git.modcdn.test/corp/lib.git@v1.1.0"])
    })
    .await
    .expect("go");
    assert!(out.contains("\"Sum\": \"h1:"), "{out}");
    assert_eq!(public.counters().matching("git.modcdn.test"), 0, "never asked the public upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_cache_private_modules_only_when_told_and_only_per_credential() {
    use modcdn_tests::node::{EdgeProcess, Member};
    let tmp = modcdn_tests::tempdir();
    let public_corpus = Corpus::generate(&tmp.path().join("public"), 1024).expect("corpus");
    let public = FixtureUpstream::start(public_corpus.root.clone()).await.expect("public upstream");
    let mut private_corpus = Corpus { root: tmp.path().join("private"), versions: Vec::new() };
    private_corpus.publish(PRIVATE, "v1.0.0").expect("publish");
    let private = FixtureUpstream::start(private_corpus.root.clone()).await.expect("private upstream");
    let extra = format!(
        "[[private]]\npatterns = \"corp.example.com\"\nupstream = \"{}\"\nbearer_tokens = [\"tok\", \"other\"]\n",
        private.url()
    );
    let origin = OriginProcess::start(&tmp.path().join("origin"), &public.url(), &extra).expect("origin");
    let members = [Member::of("o", &origin, "us")];
    let plain = EdgeProcess::start(&tmp.path().join("plain"), &members, "").expect("edge");
    let caching = EdgeProcess::start(&tmp.path().join("caching"), &members, "[cache]\nprivate = true\n").expect("edge");
    let client = reqwest::Client::new();
    let key = Corpus::key(PRIVATE, "v1.0.0", "zip");
    let fetch = |base: String, token: Option<&'static str>| {
        let client = client.clone();
        let key = key.clone();
        async move {
            let mut req = client.get(format!("{base}/{key}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.expect("request");
            let x = r.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            (r.status(), x)
        }
    };

    // By default the edge passes credentialed requests through, uncached.
    for _ in 0..2 {
        assert_eq!(fetch(plain.url.clone(), Some("tok")).await, (StatusCode::OK, "BYPASS".to_string()));
    }
    assert_eq!(fetch(plain.url.clone(), None).await.0, StatusCode::UNAUTHORIZED);

    // Told to, it keeps the answer for that credential only.
    assert_eq!(fetch(caching.url.clone(), Some("tok")).await, (StatusCode::OK, "MISS".to_string()));
    assert_eq!(fetch(caching.url.clone(), Some("tok")).await, (StatusCode::OK, "HIT".to_string()));
    let anonymous = fetch(caching.url.clone(), None).await;
    assert_eq!(anonymous.0, StatusCode::UNAUTHORIZED, "no credential, no module: {anonymous:?}");
    let wrong = fetch(caching.url.clone(), Some("wrong")).await;
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED, "another credential is not served the cached copy: {wrong:?}");
    assert_eq!(fetch(caching.url.clone(), Some("other")).await, (StatusCode::OK, "MISS".to_string()));
    assert_eq!(private.counters().get(&key), 1, "the origin stored it once; edges asked the origin");
    // A purge of the path drops every credential's copy with it.
    let purged = client
        .post(format!("{}/purge?path={key}", caching.admin))
        .bearer_auth(modcdn_tests::node::ADMIN_TOKEN)
        .send()
        .await
        .expect("purge");
    assert_eq!(purged.status(), StatusCode::OK);
    let body: serde_json::Value = purged.json().await.expect("json");
    assert_eq!(body["removed"], 2, "both credentials' copies: {body}");
    assert_eq!(fetch(caching.url.clone(), Some("tok")).await, (StatusCode::OK, "MISS".to_string()));

    // A private copy lasts `cache.private_ttl_secs` (even of an immutable
    // zip), so a revoked credential stops working within it. (3 s: a copy's
    // freshness is kept in whole seconds, so one of 1 s could be stale
    // a few milliseconds after it was made, before the second fetch.)
    let short = "[cache]\nprivate = true\nprivate_ttl_secs = 3\n";
    let short = EdgeProcess::start(&tmp.path().join("short"), &members, short).expect("edge");
    assert_eq!(fetch(short.url.clone(), Some("tok")).await, (StatusCode::OK, "MISS".to_string()));
    assert_eq!(fetch(short.url.clone(), Some("tok")).await, (StatusCode::OK, "HIT".to_string()));
    // Past it the edge asks the origin again (which decides anew; a 304
    // shows as HIT), rather than answering from its copy.
    let served = || modcdn_tests::http::scrape(&origin.operator, "modcdn_origin_requests_total");
    let before = served().await;
    let asked_again = modcdn_tests::http::eventually(std::time::Duration::from_secs(10), || async {
        assert_eq!(fetch(short.url.clone(), Some("tok")).await.0, StatusCode::OK);
        served().await > before
    });
    assert!(asked_again.await, "the private copy outlived its TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_variant_of_a_private_path_reaches_no_public_upstream_and_no_checksum_database() {
    // GitHub and most VCS hosts are case-insensitive: example.com/Corp/x is
    // example.com/corp/x, and must stay as private as it.
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("public"), 1024).expect("corpus");
    let public = FixtureUpstream::start(corpus.root.clone()).await.expect("public upstream");
    let private = FixtureUpstream::start(tmp.path().join("private-empty")).await.expect("private upstream");
    let extra = format!(
        "[[private]]\npatterns = \"example.com/corp\"\nupstream = \"{}\"\nbearer_tokens = [\"tok\"]\n\
         unauthorized_status = 404\n\n[[checksum_db]]\nname = \"sum.golang.org\"\nurl = \"{}/sumdb\"\n",
        private.url(),
        public.url()
    );
    let origin = OriginProcess::start(&tmp.path().join("origin"), &public.url(), &extra).expect("origin");
    let client = reqwest::Client::new();
    let paths = [
        "example.com/!corp/secret/@v/list",
        "example.com/!corp/secret/@v/v1.0.0.info",
        "example.com/!c!o!r!p/secret/@latest",
        "example.com/co!r!p/secret/@v/v1.0.0.zip",
        "sumdb/sum.golang.org/lookup/example.com/!corp/secret@v1.0.0",
    ];
    for path in paths {
        for token in [None, Some("tok")] {
            let mut req = client.get(format!("{}/{path}", origin.url));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let status = req.send().await.expect("request").status();
            assert_eq!(status, StatusCode::NOT_FOUND, "{path} ({token:?})");
        }
    }
    assert_eq!(public.counters().total(), 0, "a case variant reached the public upstream or checksum database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_open_to_networks_serves_only_clients_forwarded_from_inside() {
    use modcdn_tests::http::{client_from, get};
    use modcdn_tests::node::{EdgeProcess, Member};
    let tmp = modcdn_tests::tempdir();
    let public_corpus = Corpus::generate(&tmp.path().join("public"), 1024).expect("corpus");
    let public = FixtureUpstream::start(public_corpus.root.clone()).await.expect("public upstream");
    let mut private_corpus = Corpus { root: tmp.path().join("private"), versions: Vec::new() };
    private_corpus.publish(PRIVATE, "v1.0.0").expect("publish");
    let private = FixtureUpstream::start(private_corpus.root.clone()).await.expect("private upstream");
    // Edges connect from 127.0.0.1; clients in 127.0.2.0/24 may read.
    let extra = format!(
        "trusted_proxies = [\"127.0.0.1\"]\n[[private]]\npatterns = \"corp.example.com\"\nupstream = \"{}\"\n\
         networks = [\"127.0.2.0/24\"]\n",
        private.url()
    );
    let origin = OriginProcess::start(&tmp.path().join("origin"), &public.url(), &extra).expect("origin");
    let edge = EdgeProcess::start(&tmp.path().join("edge"), &[Member::of("o", &origin, "us")], "").expect("edge");
    let key = Corpus::key(PRIVATE, "v1.0.0", "zip");
    let inside = client_from("127.0.2.10");
    for _ in 0..2 {
        let (status, x_cache, _) = get(&inside, &format!("{}/{key}", edge.url)).await;
        assert_eq!(status, 200, "inside, through the edge");
        assert_ne!(x_cache, "HIT", "a private answer is not kept at the edge for anyone");
    }
    for outside in ["127.0.3.10", "127.0.0.5"] {
        let (status, _, _) = get(&client_from(outside), &format!("{}/{key}", edge.url)).await;
        assert_eq!(status, 404, "{outside} through the edge");
    }
    // Straight at the origin, a forged X-Forwarded-For from an untrusted peer is not believed.
    let forged = client_from("127.0.0.5").get(format!("{}/{key}", origin.url)).header("x-forwarded-for", "127.0.2.10");
    assert_eq!(forged.send().await.expect("get").status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&inside, &format!("{}/{key}", origin.url)).await.0, 200, "a client inside, straight");
    assert_eq!(public.counters().matching("corp.example.com"), 0);
}

#[test]
fn a_private_route_with_neither_credentials_nor_networks_is_refused_at_start() {
    let tmp = modcdn_tests::tempdir();
    let config = modcdn_tests::node::write_config(
        tmp.path(),
        "http://127.0.0.1:9",
        "[[private]]\npatterns = \"corp.example.com\"\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .expect("config");
    let out = std::process::Command::new(modcdn_tests::node::binary("modcdn-origin"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("origin.toml") && err.contains("private[0].networks"), "{err}");
}

/// An artifact is served only under the route it was fetched from: after
/// a pattern change, the copy fetched publicly (a public module squatting a
/// private name) is not served as the private module, nor the private copy
/// to the public, without a fresh fetch from the right route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_artifacts_are_served_only_under_the_route_they_came_from() {
    let tmp = modcdn_tests::tempdir();
    let mut public_corpus = Corpus { root: tmp.path().join("public"), versions: Vec::new() };
    public_corpus.publish(PRIVATE, "v1.0.0").expect("publish");
    let public = FixtureUpstream::start(public_corpus.root.clone()).await.expect("public upstream");
    let mut private_corpus = Corpus { root: tmp.path().join("private"), versions: Vec::new() };
    private_corpus.publish(PRIVATE, "v1.0.0").expect("publish");
    let private = FixtureUpstream::start(private_corpus.root.clone()).await.expect("private upstream");
    let route = format!(
        "[[private]]\npatterns = \"corp.example.com\"\nupstream = \"{}\"\nbearer_tokens = [\"tok\"]\n",
        private.url()
    );
    let dir = tmp.path().join("origin");
    let client = reqwest::Client::new();
    let keys: Vec<String> = ["info", "mod", "zip"].iter().map(|ext| Corpus::key(PRIVATE, "v1.0.0", ext)).collect();
    let get_all = |base: String, token: Option<&'static str>| {
        let (client, keys) = (client.clone(), keys.clone());
        async move {
            for key in &keys {
                let mut req = client.get(format!("{base}/{key}"));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let r = req.send().await.expect("request");
                assert_eq!(r.status(), StatusCode::OK, "{key}");
            }
        }
    };

    // 1. No private route yet: the public copy is fetched and stored.
    let origin = OriginProcess::start(&dir, &public.url(), "").expect("origin");
    get_all(origin.url.clone(), None).await;
    // Answers leave before their durable write: stop each origin only once
    // what it answered is stored.
    settled(&origin.operator).await;
    drop(origin);
    // 2. The path becomes private: the route's own copy is fetched, the
    //    public one never served under it.
    let origin = OriginProcess::start(&dir, &public.url(), &route).expect("origin");
    get_all(origin.url.clone(), Some("tok")).await;
    get_all(origin.url.clone(), Some("tok")).await;
    settled(&origin.operator).await;
    drop(origin);
    // 3. The route is removed: the private copy is not served to the public.
    let origin = OriginProcess::start(&dir, &public.url(), "").expect("origin");
    get_all(origin.url.clone(), None).await;
    for key in &keys {
        assert_eq!(private.counters().get(key), 1, "{key}: fetched once from the private route, then stored");
        assert_eq!(public.counters().get(key), 2, "{key}: fetched publicly before and after the route");
    }
}

/// Public `direct` fetches never see the credentials of private routes: a
/// git host that asks for them serves the private route's module and
/// refuses the public fetch, although both reach it the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_direct_never_sees_the_credentials_of_private_routes() {
    let tmp = modcdn_tests::tempdir();
    let repos = tmp.path().join("repos");
    git::bare_repo(&repos, "corp/lib", "git.modcdn.test/corp/lib.git", &["v1.0.0"]);
    git::bare_repo(&repos, "open/lib", "git.modcdn.test/open/lib.git", &["v1.0.0"]);
    let server = git::GitServer::start(repos, "modcdn:s3cret").await.expect("git server");
    // The private route's HOME: where the git host is, and its password.
    let home = git::home_rewriting(&tmp.path().join("private-home"), "git.modcdn.test", &server.url());
    std::fs::write(home.join(".netrc"), "machine 127.0.0.1 login modcdn password s3cret\n").expect("netrc");
    // Public fetches know where the git host is too (the operator's
    // credential-free git config for them), but not the password.
    let dir = tmp.path().join("direct");
    git::home_rewriting(&dir.join("public/home"), "git.modcdn.test", &server.url());
    let extra = format!(
        "[direct]\ndir = \"{}\"\nhome = \"{}\"\ntimeout_secs = 60\n\n[[private]]\npatterns = \"git.modcdn.test/corp\"\nupstream = \"direct\"\nnetworks = [\"127.0.0.1\"]\n",
        dir.display(),
        home.display()
    );
    let origin = OriginProcess::start(&tmp.path().join("origin"), "direct", &extra).expect("origin");
    let get = |path: &str| {
        let url = format!("{}/{path}", origin.url);
        async move {
            let r = reqwest::get(url).await.expect("request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };

    let (status, body) = get("git.modcdn.test/corp/lib.git/@v/v1.0.0.info").await;
    assert_eq!(status, 200, "the private route fetches with its credentials: {body}");
    assert!(server.served() > 0);
    let served = server.served();
    let refused = server.refused();
    let (status, body) = get("git.modcdn.test/open/lib.git/@v/v1.0.0.info").await;
    assert_eq!(status, 502, "a public fetch refused by the git host is upstream's failure: {body}");
    assert!(!body.contains("127.0.0.1") && !body.contains("s3cret"), "{body}");
    assert_eq!(server.served(), served, "the public fetch never presented the private route's credentials");
    assert!(server.refused() > refused, "the public fetch reached the git host");
}
