//! The origin's GOPROXY flow through its seams, in one process: the real
//! router, the real disk store in a temp directory, and upstreams that are
//! [`Fetch`] implementations answering from a table (no sockets, no
//! processes). Each test is one branch of `serve.rs`: a miss then a hit,
//! stale on error, a negative answer, an upstream failure, a private module
//! refused, a verification failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use futures::future::BoxFuture;
use modcdn_origin::config::OriginConfig;
use modcdn_origin::error::UpstreamError;
use modcdn_origin::pull::Trigger;
use modcdn_origin::store::{Hit, MemoryStore, Meta, Staged, Store, Usage};
use modcdn_origin::upstream::{Fetch, Fetched};
use modcdn_origin::{Origin, Sources};
use tower::ServiceExt;

const INFO: &str = "example.com/flow/@v/v1.0.0.info";
const INFO_BODY: &str = "{\"Version\":\"v1.0.0\",\"Time\":\"2024-01-01T00:00:00Z\"}";
const MOD: &str = "example.com/flow/@v/v1.0.0.mod";
const MOD_BODY: &str = "module example.com/flow\n";
const LIST: &str = "example.com/flow/@v/list";

/// An upstream answering from a table; a key it does not hold is a 503.
#[derive(Default)]
struct Table {
    answers: Mutex<HashMap<String, Result<Bytes, u16>>>,
    asked: Mutex<Vec<String>>,
    /// How long each answer takes.
    delay: Mutex<std::time::Duration>,
}

impl Table {
    fn with(answers: &[(&str, Result<&'static str, u16>)]) -> Arc<Table> {
        let t = Table::default();
        for (key, answer) in answers {
            t.set(key, answer.map(|body| Bytes::from_static(body.as_bytes())));
        }
        Arc::new(t)
    }
    fn set(&self, key: &str, answer: Result<Bytes, u16>) {
        self.answers.lock().expect("table").insert(key.to_string(), answer);
    }
    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("table").clone()
    }
}

impl Fetch for Table {
    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched, UpstreamError>> {
        self.asked.lock().expect("table").push(key.to_string());
        let answer = self.answers.lock().expect("table").get(key).cloned();
        let delay = *self.delay.lock().expect("table");
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            match answer {
                Some(Ok(body)) => Ok(Fetched {
                    upstream: "table".into(),
                    content_length: Some(body.len() as u64),
                    body: Box::new(futures::stream::iter([Ok(body)])),
                }),
                Some(Err(status @ (404 | 410))) => Err(UpstreamError::NotFound { status, message: "no such".into() }),
                Some(Err(status)) => Err(UpstreamError::Status { status, message: "failing".into() }),
                None => Err(UpstreamError::Status { status: 503, message: "failing".into() }),
            }
        })
    }
}

struct Node {
    origin: Arc<Origin>,
    _dir: tempfile::TempDir,
}

/// An origin on `extra` config (top-level keys and tables), its store in a
/// temp directory, pulling from `public` (and `private`, `sumdb` when the
/// config has a private route or a checksum database).
fn node(extra: &str, public: Arc<Table>, private: Vec<Arc<Table>>, sumdb: Option<Arc<Table>>) -> Node {
    node_on(extra, public, private, sumdb, |store| store)
}

/// As [`node`], its in-memory store wrapped by `wrap`.
fn node_on(
    extra: &str,
    public: Arc<Table>,
    private: Vec<Arc<Table>>,
    sumdb: Option<Arc<Table>>,
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> Node {
    let dir = tempfile::tempdir().expect("tmp");
    let prefetch = if extra.contains("[prefetch]") { "" } else { "[prefetch]\nenabled = false\n" };
    let text = format!(
        "upstream = \"http://unused.invalid\"\nstore_dir = \"{}\"\nmemory_cache_mib = 0\n{extra}\n{prefetch}",
        dir.path().join("store").display()
    );
    let config: OriginConfig = toml::from_str(&text).expect("config");
    let sources = Sources {
        public,
        private: private.into_iter().map(|t| t as Arc<dyn Fetch>).collect(),
        checksum_dbs: sumdb.into_iter().map(|t| ("sum.golang.org".to_string(), t as Arc<dyn Fetch>)).collect(),
    };
    let store = wrap(Arc::new(MemoryStore::default()));
    Node { origin: Origin::with_parts(&config, sources, (store, None)).expect("origin"), _dir: dir }
}

/// Holds the first store write until opened; counts the writes begun.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: std::sync::Condvar,
    begun: std::sync::atomic::AtomicUsize,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.opened.notify_all();
    }
    fn wait(&self) {
        if self.begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            return;
        }
        let open = self.open.lock().expect("gate");
        drop(self.opened.wait_while(open, |open| !*open).expect("gate"));
    }
    fn begun(&self) -> usize {
        self.begun.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn gated(gate: &Arc<Gate>) -> impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store> {
    let gate = Arc::clone(gate);
    move |inner| Arc::new(Gated { inner, gate })
}

/// A store whose writes wait at a [`Gate`].
struct Gated {
    inner: Arc<dyn Store>,
    gate: Arc<Gate>,
}

impl Store for Gated {
    fn get(&self, key: &str) -> std::io::Result<Option<Hit>> {
        self.inner.get(key)
    }
    fn stage(&self, key: &str) -> std::io::Result<Staged> {
        self.inner.stage(key)
    }
    fn publish(&self, staged: Staged, meta: &Meta) -> std::io::Result<()> {
        self.gate.wait();
        self.inner.publish(staged, meta)
    }
    fn usage(&self) -> Option<Usage> {
        self.inner.usage()
    }
    fn remove(&self, key: &str, prefix: bool) -> std::io::Result<u64> {
        self.inner.remove(key, prefix)
    }
}

impl Node {
    async fn get(&self, key: &str, bearer: Option<&str>) -> (StatusCode, String, String) {
        let mut req = Request::get(format!("/{key}"));
        if let Some(token) = bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = modcdn_origin::serve::router(Arc::clone(&self.origin))
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        let status = resp.status();
        let cache = resp.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, cache, String::from_utf8_lossy(&body).into_owned())
    }

    /// The body of a 200 answer to `key`, as bytes.
    async fn body(&self, key: &str) -> Vec<u8> {
        let req = Request::get(format!("/{key}")).body(Body::empty()).expect("request");
        let resp = modcdn_origin::serve::router(Arc::clone(&self.origin)).oneshot(req).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK, "{key}");
        axum::body::to_bytes(resp.into_body(), 1 << 24).await.expect("body").to_vec()
    }

    /// `POST /purge?path=key` on the operator listener, with `token`.
    async fn purge(&self, key: &str, token: &str) -> StatusCode {
        let req = Request::post(format!("/purge?path={key}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        modcdn_origin::ops::operator_router(Arc::clone(&self.origin)).oneshot(req).await.expect("answer").status()
    }

    /// What the store holds at `key` once every write behind an answer is done.
    async fn stored(&self, key: &str) -> Option<String> {
        self.stored_bytes(key).await.map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    async fn stored_bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.origin.pulls.writes.settled().await;
        let hit = self.origin.store.get(key).expect("store")?;
        Some(hit.read_body().expect("body"))
    }
}

const VERIFY_OFF: &str = "verify = \"off\"";

#[tokio::test]
async fn a_miss_is_pulled_once_then_served_from_the_store() {
    let public = Table::with(&[(INFO, Ok(INFO_BODY))]);
    let n = node(VERIFY_OFF, Arc::clone(&public), vec![], None);
    assert_eq!(n.get(INFO, None).await, (StatusCode::OK, "MISS".into(), INFO_BODY.into()));
    assert_eq!(n.get(INFO, None).await, (StatusCode::OK, "HIT".into(), INFO_BODY.into()));
    assert_eq!(public.asked(), [INFO]);
    assert_eq!(n.stored(INFO).await.as_deref(), Some(INFO_BODY));
}

#[tokio::test]
async fn a_miss_is_answered_before_its_store_write_and_a_purge_meanwhile_wins() {
    const OPERATOR: &str = "operator-token-0123456789";
    let public = Table::with(&[(INFO, Ok(INFO_BODY))]);
    let gate = Arc::new(Gate::default());
    let extra = format!("{VERIFY_OFF}\n[operator]\ntoken = \"{OPERATOR}\"\n");
    let n = node_on(&extra, Arc::clone(&public), vec![], None, gated(&gate));
    let _open = OpenOnDrop(Arc::clone(&gate));
    // The store write is held: the answer goes out anyway, and the next
    // request is served from the write in progress (the memory tier is off).
    assert_eq!(n.get(INFO, None).await, (StatusCode::OK, "MISS".into(), INFO_BODY.into()));
    assert_eq!(n.get(INFO, None).await, (StatusCode::OK, "HIT".into(), INFO_BODY.into()));
    assert_eq!(public.asked(), [INFO]);
    // A purge while the write is held wins over the write.
    assert_eq!(n.purge(INFO, OPERATOR).await, StatusCode::OK);
    gate.open();
    assert_eq!(n.stored(INFO).await, None, "a purged artifact must not come back when its write ends");
    assert_eq!(n.get(INFO, None).await.1, "MISS");
    assert_eq!(public.asked(), [INFO, INFO]);
}

#[tokio::test]
async fn writes_of_one_key_are_stored_in_the_order_of_their_pulls() {
    // A list pulled again while its last write is still running (a refresh):
    // the newer write must not start before the older one is done, or the
    // older list could land last and stand in the store.
    let public = Table::with(&[(LIST, Ok("v1.0.0\n"))]);
    let gate = Arc::new(Gate::default());
    let n = node_on(VERIFY_OFF, Arc::clone(&public), vec![], None, gated(&gate));
    let req = modcdn_shared::Request::parse(&format!("/{LIST}")).expect("request");
    // Opened however the test ends: a held write would keep the runtime.
    let _open = OpenOnDrop(Arc::clone(&gate));
    modcdn_origin::pull::coalesced(&n.origin, &req, Trigger::Refresh).await.expect("first pull");
    assert!(holds_within(|| gate.begun() == 1, std::time::Duration::from_secs(10)).await, "the first write is held");
    public.set(LIST, Ok(Bytes::from_static(b"v1.0.0\nv1.1.0\n")));
    let second = tokio::spawn({
        let (o, r) = (Arc::clone(&n.origin), req.clone());
        async move { modcdn_origin::pull::coalesced(&o, &r, Trigger::Refresh).await.map(|_| ()) }
    });
    // A negative: bounded, it cannot be an event. Without the ordering the
    // second write begins at once.
    let early = holds_within(|| gate.begun() > 1, std::time::Duration::from_millis(500)).await;
    assert!(!early, "a second write of the key began while the first was running");
    gate.open();
    second.await.expect("join").expect("second pull");
    assert_eq!(n.stored(LIST).await.as_deref(), Some("v1.0.0\nv1.1.0\n"));
    assert_eq!(gate.begun(), 2);
}

struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Whether `cond` holds within `within` (polled every 10 ms).
async fn holds_within(cond: impl Fn() -> bool, within: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    cond()
}

#[tokio::test]
async fn concurrent_misses_share_one_pull_and_are_all_answered_from_it() {
    let public = Table::with(&[(INFO, Ok(INFO_BODY))]);
    *public.delay.lock().expect("table") = std::time::Duration::from_millis(200);
    let n = node(VERIFY_OFF, Arc::clone(&public), vec![], None);
    let answers = futures::future::join_all((0..8).map(|_| n.get(INFO, None))).await;
    for a in &answers {
        assert_eq!(a, &(StatusCode::OK, "MISS".to_string(), INFO_BODY.to_string()));
    }
    assert_eq!(public.asked(), [INFO], "one pull for eight misses");
}

#[tokio::test]
async fn a_served_go_mod_queues_its_requirements_mod_info_and_zip() {
    const WITH_DEPS: &str =
        "module example.com/flow\n\nrequire (\n\texample.com/dep v1.2.0\n\texample.com/other v0.3.0\n)\n";
    for (zip_queue, queued) in [(512, 6), (0, 4)] {
        let public = Table::with(&[(MOD, Ok(WITH_DEPS))]);
        let extra = format!("{VERIFY_OFF}\n[prefetch]\nenabled = true\nzip_queue = {zip_queue}\n");
        let n = node(&extra, Arc::clone(&public), vec![], None);
        assert_eq!(n.get(MOD, None).await.0, StatusCode::OK);
        // No workers run in this test: the queues hold what was queued.
        assert_eq!(n.origin.metrics.prefetch_queue.get(), queued, "zip_queue = {zip_queue}");
    }
}

#[tokio::test]
async fn an_expired_list_stands_in_while_upstream_fails() {
    let public = Table::with(&[]);
    let n = node(VERIFY_OFF, Arc::clone(&public), vec![], None);
    // A list fetched two minutes ago: past its 60 s, inside stale-if-error.
    let body = b"v1.0.0\n";
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let meta = Meta {
        size: body.len() as u64,
        sha256: String::new(),
        h1: None,
        fetched_at_ms: now - 120_000,
        upstream: "table".into(),
        route: None,
    };
    n.origin.store.put(LIST, body, &meta).expect("put");
    assert_eq!(n.get(LIST, None).await, (StatusCode::OK, "STALE".into(), "v1.0.0\n".into()));
    assert_eq!(public.asked(), [LIST], "it tried upstream first");
    // Once upstream answers, the new list replaces it.
    public.set(LIST, Ok(Bytes::from_static(b"v1.0.0\nv1.1.0\n")));
    assert_eq!(n.get(LIST, None).await, (StatusCode::OK, "MISS".into(), "v1.0.0\nv1.1.0\n".into()));
}

#[tokio::test]
async fn a_missing_module_is_a_404_remembered_for_a_while() {
    let public = Table::with(&[(INFO, Err(404))]);
    let n = node(VERIFY_OFF, Arc::clone(&public), vec![], None);
    let (status, cache, _) = n.get(INFO, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_ne!(cache, "HIT");
    let (status, cache, _) = n.get(INFO, None).await;
    assert_eq!((status, cache.as_str()), (StatusCode::NOT_FOUND, "HIT"));
    assert_eq!(public.asked(), [INFO], "the second answer came from the negative cache");
    assert_eq!(n.stored(INFO).await, None);
}

#[tokio::test]
async fn an_upstream_failure_is_a_5xx_and_never_remembered() {
    let public = Table::with(&[(INFO, Err(500))]);
    let n = node(VERIFY_OFF, Arc::clone(&public), vec![], None);
    let (status, _, _) = n.get(INFO, None).await;
    assert!(status.is_server_error(), "{status}");
    public.set(INFO, Ok(INFO_BODY.into()));
    assert_eq!(n.get(INFO, None).await, (StatusCode::OK, "MISS".into(), INFO_BODY.into()));
}

#[tokio::test]
async fn a_private_module_is_refused_without_credentials_and_never_asked_of_the_public_chain() {
    const PRIVATE_LIST: &str = "corp.example.com/x/@v/list";
    const TOKEN: &str = "tok-0123456789abcdef";
    let (public, private) = (Table::with(&[]), Table::with(&[(PRIVATE_LIST, Ok("v1.0.0\n"))]));
    let extra = format!(
        "{VERIFY_OFF}\n[[private]]\npatterns = \"corp.example.com\"\nupstream = \"http://corp.invalid\"\nbearer_tokens = [\"{TOKEN}\"]\n"
    );
    let n = node(&extra, Arc::clone(&public), vec![Arc::clone(&private)], None);
    let (status, _, _) = n.get(PRIVATE_LIST, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = n.get(PRIVATE_LIST, Some("wrong-token-0123456789")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(private.asked().is_empty(), "nothing fetched for a refused client");
    let (status, _, body) = n.get(PRIVATE_LIST, Some(TOKEN)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1.0.0\n"));
    assert_eq!(private.asked(), [PRIVATE_LIST]);
    assert!(public.asked().is_empty(), "a private module never reaches the public chain");
}

#[tokio::test]
async fn a_go_mod_the_checksum_database_does_not_vouch_for_is_not_stored() {
    let public = Table::with(&[(MOD, Ok(MOD_BODY))]);
    let sumdb = Table::with(&[("lookup/example.com/flow@v1.0.0", Err(404))]);
    let extra = "verify = \"verify\"\n[[checksum_db]]\nname = \"sum.golang.org\"\nurl = \"https://sum.invalid\"\n\
                 key = \"sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8\"\n";
    let n = node(extra, Arc::clone(&public), vec![], Some(Arc::clone(&sumdb)));
    let (status, _, body) = n.get(MOD, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("not in the checksum database"), "{body}");
    assert_eq!(sumdb.asked(), ["lookup/example.com/flow@v1.0.0"]);
    assert_eq!(n.stored(MOD).await, None, "nothing unverified is stored");
}

/// A module zip of `module@version` holding a go.mod and `files` more.
fn module_zip(module: &str, version: &str, files: usize) -> Bytes {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.start_file(format!("{module}@{version}/go.mod"), opts).expect("start");
    w.write_all(format!("module {module}\n").as_bytes()).expect("write");
    for i in 0..files {
        w.start_file(format!("{module}@{version}/f{i}.go"), opts).expect("start");
        w.write_all(format!("package flow // {}\n", "x".repeat(i * 97)).as_bytes()).expect("write");
    }
    Bytes::from(w.finish().expect("finish").into_inner())
}

#[tokio::test]
async fn a_zip_is_staged_checked_and_served_whole_and_a_broken_one_is_never_stored() {
    const ZIP: &str = "example.com/flow/@v/v1.0.0.zip";
    const BROKEN: &str = "example.com/flow/@v/v1.1.0.zip";
    let zip = module_zip("example.com/flow", "v1.0.0", 64);
    let mut broken = module_zip("example.com/flow", "v1.1.0", 64).to_vec();
    broken.truncate(broken.len() - 30);
    let public = Table::with(&[]);
    public.set(ZIP, Ok(zip.clone()));
    public.set(BROKEN, Ok(Bytes::from(broken)));
    let n = node(VERIFY_OFF, Arc::clone(&public), vec![], None);
    assert!(n.body(ZIP).await == zip, "the miss is the whole zip");
    assert!(n.body(ZIP).await == zip, "the hit is the whole zip");
    assert_eq!(public.asked(), [ZIP]);
    assert!(n.stored_bytes(ZIP).await.is_some_and(|b| b == zip), "the store holds the whole zip");
    let (status, _, body) = n.get(BROKEN, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(n.stored(BROKEN).await, None, "nothing that failed its check is stored");
}

/// A store whose stored files cannot be read back, as a failing disk's: a
/// hit's file is open for writing only.
struct Unreadable {
    inner: Arc<dyn Store>,
    dir: tempfile::TempDir,
}

impl Store for Unreadable {
    fn get(&self, key: &str) -> std::io::Result<Option<Hit>> {
        let Some(hit) = self.inner.get(key)? else { return Ok(None) };
        let path = self.dir.path().join("write-only");
        std::fs::write(&path, vec![0; hit.meta.size as usize])?;
        Ok(Some(Hit { meta: hit.meta, file: std::fs::OpenOptions::new().write(true).open(path)? }))
    }
    fn stage(&self, key: &str) -> std::io::Result<Staged> {
        self.inner.stage(key)
    }
    fn publish(&self, staged: Staged, meta: &Meta) -> std::io::Result<()> {
        self.inner.publish(staged, meta)
    }
    fn usage(&self) -> Option<Usage> {
        self.inner.usage()
    }
    fn remove(&self, key: &str, prefix: bool) -> std::io::Result<u64> {
        self.inner.remove(key, prefix)
    }
}

#[tokio::test]
async fn a_stored_file_that_cannot_be_read_is_a_5xx_of_the_origin_never_a_200_cut_short() {
    // Headers of a 200 sent before the first read of the body would leave
    // the edge a truncated answer it cannot retry elsewhere; the first
    // chunk is read before answering, so the edge sees an origin fault.
    let public = Table::with(&[(INFO, Ok(INFO_BODY))]);
    let inner: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let kept = Arc::clone(&inner);
    let node = node_on(VERIFY_OFF, public, vec![], None, move |_| {
        Arc::new(Unreadable { inner, dir: tempfile::tempdir().expect("tmp") })
    });
    assert_eq!(node.get(INFO, None).await.0, StatusCode::OK, "the miss is answered from what was pulled");
    node.origin.pulls.writes.settled().await;
    let req = Request::get(format!("/{INFO}")).body(Body::empty()).expect("request");
    let resp = modcdn_origin::serve::router(Arc::clone(&node.origin)).oneshot(req).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.headers().get("x-modcdn-fault").and_then(|v| v.to_str().ok()), Some("origin"));
    assert!(kept.get(INFO).expect("store").is_some(), "what is stored stays stored");
}
