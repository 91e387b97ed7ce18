//! `GET /status` on the admin listener: one HTML page (no script; it
//! reloads itself every 5 s) with what an operator asks first — is this
//! edge routing, to which origins (health, live load, the share of modules
//! each owns), how much comes from cache and from which tier over the last
//! minutes, the hottest modules, the latest purges. Every figure is read
//! from the same counters `/metrics` exports, so the two always agree.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use modcdn_router::watch::Membership;
use parking_lot::Mutex;

use crate::metrics::Metrics;

/// Totals read from the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub requests: f64,
    /// Answers from this edge's cache (fresh or stale).
    pub hits: f64,
    /// Body bytes served from the memory tier, the disk tier, an origin.
    pub bytes: [f64; 3],
}

const SOURCES: [&str; 3] = ["memory", "disk", "origin"];

impl Totals {
    pub fn read(m: &Metrics) -> Totals {
        let mut t = Totals::default();
        for family in m.gather() {
            for metric in family.get_metric() {
                let label =
                    |name: &str| metric.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string());
                let value = metric.get_counter().value();
                match family.name() {
                    "modcdn_edge_requests_total" => {
                        t.requests += value;
                        if matches!(label("cache").as_deref(), Some("hit" | "stale")) {
                            t.hits += value;
                        }
                    }
                    "modcdn_edge_response_bytes_total" => {
                        if let Some(i) = label("source").and_then(|s| SOURCES.iter().position(|x| *x == s)) {
                            t.bytes[i] += value;
                        }
                    }
                    _ => {}
                }
            }
        }
        t
    }

    fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests - earlier.requests,
            hits: self.hits - earlier.hits,
            bytes: std::array::from_fn(|i| self.bytes[i] - earlier.bytes[i]),
        }
    }
}

/// Samples of the totals every [`SAMPLE_EVERY`], the last five minutes.
pub struct History {
    samples: Mutex<VecDeque<(Instant, Totals)>>,
}

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const KEEP: usize = 31;

impl History {
    /// Samples `metrics` every [`SAMPLE_EVERY`] for as long as the
    /// returned history is held (the admin listener holds it).
    pub fn start(metrics: Arc<Metrics>) -> Arc<History> {
        let history = Arc::new(History { samples: Mutex::new(VecDeque::new()) });
        let weak = Arc::downgrade(&history);
        let _ = std::thread::Builder::new().name("status-history".into()).spawn(move || loop {
            let Some(h) = weak.upgrade() else { return };
            h.sample(&metrics);
            drop(h);
            std::thread::sleep(SAMPLE_EVERY);
        });
        history
    }

    fn sample(&self, metrics: &Metrics) {
        let mut s = self.samples.lock();
        s.push_back((Instant::now(), Totals::read(metrics)));
        while s.len() > KEEP {
            s.pop_front();
        }
    }

    /// What happened over about `window` up to `now` (from the oldest
    /// sample inside it), and how long that really is.
    fn over(&self, now: &Totals, window: Duration) -> Option<(Totals, Duration)> {
        let s = self.samples.lock();
        let (at, then) = s.iter().find(|(at, _)| at.elapsed() <= window + SAMPLE_EVERY / 2)?;
        Some((now.since(then), at.elapsed()))
    }
}

/// One purge, for the page.
#[derive(Debug, Clone)]
pub struct PurgeNote {
    pub at: SystemTime,
    pub target: String,
    pub removed: usize,
}

/// Everything the page shows.
pub struct Inputs<'a> {
    pub membership: &'a Membership,
    pub metrics: &'a Metrics,
    pub history: &'a History,
    pub hot: &'a modcdn_shared::hot::HotSet,
    pub region: &'a str,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn ratio(hits: f64, all: f64) -> String {
    if all > 0.0 {
        format!("{:.1}%", 100.0 * hits / all)
    } else {
        "–".into()
    }
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The share of modules each origin owns in its region's ring, from a
/// fixed sample of module paths.
fn ring_shares(snapshot: &modcdn_router::membership::Snapshot) -> BTreeMap<String, f64> {
    let keys = modcdn_router::plan::synthetic_keys(2000);
    let mut owned: BTreeMap<String, f64> = BTreeMap::new();
    let regions: Vec<String> = snapshot.topology.regions().map(String::from).collect();
    for region in &regions {
        for k in &keys {
            if let Some(owner) = snapshot.topology.owner_in(k, region) {
                *owned.entry(owner.to_string()).or_default() += 1.0 / keys.len() as f64;
            }
        }
    }
    owned
}

pub fn page(i: &Inputs<'_>) -> String {
    let snapshot = i.membership.snapshot();
    let view = &snapshot.view;
    let members: Vec<_> = snapshot.topology.members().collect();
    let healthy = members.iter().filter(|m| view.is_healthy(&m.id)).count();
    let now = Totals::read(i.metrics);
    let shares = ring_shares(&snapshot);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>modcdn edge</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}h1{{font-size:20px}}h2{{font-size:16px;margin-top:24px}}\
         table{{border-collapse:collapse}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd;text-align:right}}\
         th:first-child,td:first-child{{text-align:left}}.ok{{color:#1a7f37}}.down{{color:#cf222e;font-weight:bold}}\
         </style></head><body><h1>modcdn edge <small>{}</small></h1>\
         <p>Region <b id=\"region\">{}</b> · <span id=\"routing\" class=\"{}\">{}</span> · \
         <span id=\"healthy\">{healthy}</span> of {} origins healthy</p>",
        env!("CARGO_PKG_VERSION"),
        esc(i.region),
        if healthy > 0 { "ok" } else { "down" },
        if healthy > 0 { "routing" } else { "no healthy origin" },
        members.len(),
    );
    h.push_str(
        "<h2>Traffic</h2><table><tr><th></th><th>requests</th><th>hit ratio</th>\
         <th>from memory</th><th>from disk</th><th>from origins</th></tr>",
    );
    let mut rows = vec![("since start".to_string(), "total", Some(now))];
    for (label, id, window) in [("last minute", "1m", 60), ("last 5 minutes", "5m", 300)] {
        let over = i.history.over(&now, Duration::from_secs(window));
        let label = match over {
            Some((_, took)) => format!("{label} ({} s)", took.as_secs()),
            None => label.to_string(),
        };
        rows.push((label, id, over.map(|(t, _)| t)));
    }
    for (label, id, t) in rows {
        let t = t.unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{label}</td><td id=\"requests-{id}\">{:.0}</td><td id=\"hit-ratio-{id}\">{}</td>\
             <td id=\"bytes-memory-{id}\">{}</td><td id=\"bytes-disk-{id}\">{}</td><td id=\"bytes-origin-{id}\">{}</td></tr>",
            t.requests,
            ratio(t.hits, t.requests),
            bytes(t.bytes[0]),
            bytes(t.bytes[1]),
            bytes(t.bytes[2]),
        );
    }
    h.push_str("</table>");
    h.push_str(
        "<h2>Origins</h2><table><tr><th>origin</th><th>region</th><th>address</th><th>health</th>\
         <th>in flight</th><th>latency (EWMA)</th><th>ring share</th></tr>",
    );
    for m in &members {
        let ok = view.is_healthy(&m.id);
        let _ = write!(
            h,
            "<tr id=\"origin-{id}\"><td>{id}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td>\
             <td>{:.1} ms</td><td>{:.1}%</td></tr>",
            esc(&m.region),
            esc(&m.address),
            if ok { "ok" } else { "down" },
            if ok { "healthy" } else { "out of routing" },
            view.load(&m.id),
            view.ewma_us(&m.id) / 1000.0,
            100.0 * shares.get(&m.id).copied().unwrap_or(0.0),
            id = esc(&m.id),
        );
    }
    h.push_str("</table><h2>Hottest modules</h2><table><tr><th>module</th><th>requests (decayed)</th></tr>");
    let hot = i.hot.top(10);
    if hot.is_empty() {
        h.push_str("<tr><td>none since the last hot report</td><td></td></tr>");
    }
    for (module, weight) in hot {
        let _ = write!(h, "<tr><td>{}</td><td>{weight:.0}</td></tr>", esc(&module));
    }
    h.push_str("</table><h2>Recent purges</h2><table><tr><th>when</th><th>target</th><th>entries removed</th></tr>");
    let purges = i.metrics.recent_purges();
    if purges.is_empty() {
        h.push_str("<tr><td>none since start</td><td></td><td></td></tr>");
    }
    for p in purges.iter().rev() {
        let _ = write!(
            h,
            "<tr><td>{} s ago</td><td>{}</td><td>{}</td></tr>",
            p.at.elapsed().unwrap_or_default().as_secs(),
            esc(&p.target),
            p.removed
        );
    }
    h.push_str("</table><p><a href=\"/metrics\">/metrics</a></p></body></html>\n");
    h
}
