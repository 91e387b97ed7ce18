//! What an operator watches, checked against the real thing: a real
//! Prometheus (Debian's package) scrapes a local cluster (two origins, one
//! edge) and loads deploy/prometheus/alerts.yml; the hit ratio it computes
//! equals the edge's own counters; every metric the Grafana dashboard and
//! the alerts name is one the nodes export; every dashboard query runs.
//! The alert rules themselves: `promtool check rules` and `promtool test
//! rules` (deploy/prometheus/alerts.test.yml).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use modcdn_tests::corpus::{Corpus, ALPHA};
use modcdn_tests::http::{eventually, metric_sum};
use modcdn_tests::node::{free_port, EdgeProcess, Member, OriginProcess};
use modcdn_tests::upstream::FixtureUpstream;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(deploy().join("prometheus"))
            .output()
            .expect("promtool (Debian's prometheus package; the README's test command installs it)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

/// A running Prometheus; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `edges` (admin listeners) and `origins` (operator listeners)
    /// every second, with the alert rules of deploy/prometheus loaded.
    fn start(dir: &Path, edges: &[&str], origins: &[&str]) -> Prometheus {
        let bare = |u: &&str| format!("\"{}\"", u.trim_start_matches("http://"));
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [\"{}\"]\nscrape_configs:\n\
             \x20 - {{job_name: edge, static_configs: [{{targets: [{}]}}]}}\n\
             \x20 - {{job_name: origin, static_configs: [{{targets: [{}]}}]}}\n",
            deploy().join("prometheus/alerts.yml").display(),
            edges.iter().map(bare).collect::<Vec<_>>().join(", "),
            origins.iter().map(bare).collect::<Vec<_>>().join(", "),
        );
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let port = free_port().expect("port");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("prometheus (Debian's package; the README's test command installs it)");
        Prometheus { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// The API's answer to `query` (instant): its `data`, or the error.
    async fn query(&self, query: &str) -> Result<serde_json::Value, String> {
        let r = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"].clone()),
            _ => Err(format!("{query}: {body}")),
        }
    }

    /// The single value of a scalar-like instant query.
    async fn value(&self, query: &str) -> Option<f64> {
        let data = self.query(query).await.ok()?;
        data["result"].get(0)?["value"][1].as_str()?.parse().ok()
    }
}

/// The `modcdn_*` metric names an expression mentions.
fn names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("modcdn_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // `modcdn_edge_*` in a comment names a family, not a metric.
        if !text[start..end].ends_with('_') {
            names.push(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_cluster_and_every_dashboard_and_alert_query_runs() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let a = OriginProcess::start(&tmp.path().join("a"), &upstream.url(), "").expect("origin a");
    let b = OriginProcess::start(&tmp.path().join("b"), &upstream.url(), "").expect("origin b");
    let edge =
        EdgeProcess::start(&tmp.path().join("edge"), &[Member::of("a", &a, "us"), Member::of("b", &b, "us")], "")
            .expect("edge");
    // Traffic: every artifact of one module twice (a miss, then a hit).
    let c = reqwest::Client::new();
    for _ in 0..2 {
        for ext in ["info", "mod", "zip"] {
            let r = c.get(format!("{}/{}", edge.url, Corpus::key(ALPHA, "v1.0.0", ext))).send().await.expect("get");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("body");
        }
    }
    let scrape = |url: String| {
        let c = c.clone();
        async move { c.get(format!("{url}/metrics")).send().await.expect("metrics").text().await.expect("text") }
    };
    // The edge follows the origins' purge logs (a gauge per origin): wait for it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            scrape(edge.admin.clone()).await.contains("modcdn_edge_purge_log_read_timestamp_seconds{origin=\"b\"}")
        })
        .await
    );
    // A request is counted once its answer is out (pingora's logging
    // phase), which may be just after the client has the whole body.
    let counted = |text: &str| {
        (metric_sum(text, "modcdn_edge_requests_total{cache=\"hit\"}"), metric_sum(text, "modcdn_edge_requests_total"))
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (hits, all) = counted(&scrape(edge.admin.clone()).await);
            hits >= 3.0 && all >= 6.0
        })
        .await,
        "six requests, three hits, counted"
    );
    let edge_text = scrape(edge.admin.clone()).await;
    let exported = format!("{edge_text}{}{}", scrape(a.operator.clone()).await, scrape(b.operator.clone()).await);
    let (hits, all) = counted(&edge_text);

    let prom = Prometheus::start(&tmp.path().join("prometheus"), &[&edge.admin], &[&a.operator, &b.operator]);
    let ratio = "sum(modcdn_edge_requests_total{cache=\"hit\"}) / sum(modcdn_edge_requests_total)";
    let seen = eventually(Duration::from_secs(30), || async { prom.value(ratio).await == Some(hits / all) }).await;
    assert!(seen, "Prometheus's hit ratio {:?}, the edge's {}", prom.value(ratio).await, hits / all);
    let all_up = eventually(Duration::from_secs(30), || async { prom.value("sum(up)").await == Some(3.0) }).await;
    assert!(all_up, "edge and both origins are scraped: {:?}", prom.value("sum(up)").await);

    // Every name the dashboard and the alerts use is exported.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/modcdn.json")).expect("dashboard"))
            .expect("dashboard json");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let alerts = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).expect("alerts");
    let mut names: Vec<String> = exprs.iter().flat_map(|e| names_in(e)).chain(names_in(&alerts)).collect();
    names.sort();
    names.dedup();
    for name in &names {
        let found = exported
            .lines()
            .any(|l| l.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')));
        assert!(found, "{name} is in the dashboard or the alerts but no node exports it");
    }
    // Every dashboard query runs (the variables as "all").
    for e in &exprs {
        let q = e
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$instance", ".*")
            .replace("$origin", ".*")
            .replace("$region", ".*");
        prom.query(&q).await.unwrap_or_else(|err| panic!("dashboard query fails: {err}"));
    }
    // The alert rules are loaded and evaluated without errors.
    let rules_ok = eventually(Duration::from_secs(20), || async {
        let body: serde_json::Value = match c.get(format!("{}/api/v1/rules", prom.url)).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        let rules: Vec<&serde_json::Value> = body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        rules.len() == 7 && rules.iter().all(|r| r["health"] == "ok")
    })
    .await;
    assert!(rules_ok, "the alert rules load and evaluate");
}

/// The text of the element with `id` in `html`.
fn by_id<'a>(html: &'a str, id: &str) -> &'a str {
    let at = html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &html[at..];
    let start = rest.find('>').expect("tag end") + 1;
    let end = rest[start..].find('<').expect("text end");
    &rest[start..start + end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_in_a_real_browser_what_the_metrics_say() {
    let tmp = modcdn_tests::tempdir();
    let corpus = Corpus::generate(&tmp.path().join("corpus"), 1 << 20).expect("corpus");
    let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
    let origin = OriginProcess::start(&tmp.path().join("o"), &upstream.url(), "").expect("origin");
    let edge = EdgeProcess::start(&tmp.path().join("edge"), &[Member::of("us-1", &origin, "us")], "").expect("edge");
    let c = reqwest::Client::new();
    for _ in 0..3 {
        for ext in ["info", "mod", "zip"] {
            let r = c.get(format!("{}/{}", edge.url, Corpus::key(ALPHA, "v1.0.0", ext))).send().await.expect("get");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("body");
        }
    }
    let purge = c
        .post(format!("{}/purge?module=example.com/beta", edge.admin))
        .bearer_auth(modcdn_tests::node::ADMIN_TOKEN)
        .send()
        .await
        .expect("purge");
    assert_eq!(purge.status(), 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric_sum(
                &c.get(format!("{}/metrics", edge.admin)).send().await.expect("m").text().await.expect("t"),
                "modcdn_edge_origin_healthy",
            ) == 1.0
        })
        .await
    );
    let text = c.get(format!("{}/metrics", edge.admin)).send().await.expect("metrics").text().await.expect("text");
    let requests = metric_sum(&text, "modcdn_edge_requests_total");
    let hits = metric_sum(&text, "modcdn_edge_requests_total{cache=\"hit\"}")
        + metric_sum(&text, "modcdn_edge_requests_total{cache=\"stale\"}");
    assert_eq!(requests, 9.0);
    assert!(hits >= 6.0, "{hits}");
    let from_origin = metric_sum(&text, "modcdn_edge_response_bytes_total{kind=\"zip\",source=\"origin\"}");
    let zip_len = std::fs::metadata(corpus.root.join(Corpus::key(ALPHA, "v1.0.0", "zip"))).expect("zip").len() as f64;
    assert_eq!(from_origin, zip_len, "the zip came from the origin once");

    // A real browser renders the page: what it shows is what /metrics says.
    let url = format!("{}/status", edge.admin);
    let chromium = |args: &[&str]| {
        let out = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
            .args(args)
            .arg(&url)
            .output()
            .expect("chromium (Debian's package; the README's test command installs it)");
        assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    assert_eq!(by_id(&dom, "requests-total"), "9");
    assert_eq!(by_id(&dom, "hit-ratio-total"), format!("{:.1}%", 100.0 * hits / requests));
    assert_eq!(by_id(&dom, "healthy"), "1");
    assert_eq!(by_id(&dom, "routing"), "routing");
    assert_eq!(dom.matches("module=example.com/beta").count(), 1, "the purge is listed once");
    assert!(dom.contains("example.com/alpha"), "the hot module is listed");
    let origin_row = &dom[dom.find("id=\"origin-us-1\"").expect("origin row")..];
    assert!(origin_row[..origin_row.find("</tr>").expect("row end")].contains("healthy"), "{origin_row}");
    // The origin's page, on its operator listener, agrees with its /metrics too.
    let origin_metrics =
        c.get(format!("{}/metrics", origin.operator)).send().await.expect("metrics").text().await.expect("text");
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("{}/status", origin.operator))
        .output()
        .expect("chromium");
    let origin_dom = String::from_utf8_lossy(&out.stdout);
    let served = metric_sum(&origin_metrics, "modcdn_origin_requests_total");
    assert!(served >= 3.0, "{served}");
    assert!(origin_dom.contains(&format!("<td>requests</td><td id=\"row-3\">{served:.0}</td>")), "{origin_dom}");
    let store_hits = metric_sum(&origin_metrics, "modcdn_origin_requests_total{cache=\"hit\"}") as u64;
    assert!(origin_dom.contains(&format!("from the store</td><td id=\"row-4\">{store_hits}</td>")), "{origin_dom}");
    assert!(origin_dom.contains("purge log entries</td><td id=\"row-9\">1</td>"), "{origin_dom}");
    let shot = tmp.path().join("status.png");
    chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1100,900"]);
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of {} bytes", png.len());
    // What a person sees: the pixels, read back by OCR, show the same numbers.
    let ocr = Command::new("tesseract")
        .arg(&shot)
        .arg("-")
        .output()
        .expect("tesseract (Debian's tesseract-ocr; the README's test command installs it)");
    assert!(ocr.status.success(), "tesseract: {}", String::from_utf8_lossy(&ocr.stderr));
    let seen = String::from_utf8_lossy(&ocr.stdout);
    let since_start: Vec<&str> = seen
        .lines()
        .find_map(|l| l.trim().strip_prefix("since start"))
        .unwrap_or_else(|| panic!("no \"since start\" row in the screenshot:\n{seen}"))
        .split_whitespace()
        .collect();
    let ratio = format!("{:.1}%", 100.0 * hits / requests);
    assert_eq!(since_start[..2], [format!("{requests}"), ratio], "the screenshot's traffic row:\n{seen}");
    for shown in ["1 of 1 origins healthy", "example.com/alpha", "module=example.com/beta"] {
        assert!(seen.contains(shown), "the screenshot does not show {shown:?}:\n{seen}");
    }
}
