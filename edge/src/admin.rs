//! The operator listener, on its own port: `/healthz`, `/readyz`,
//! `/metrics`, and `POST /purge?path=…` or `POST /purge?module=…` with
//! `Authorization: Bearer <admin.token>`. A purge is applied here at once
//! and sent (with the cluster token, `origin.token`) to every origin's
//! operator listener and purge log, from which the other edges (and this
//! one, harmlessly) pick it up.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use modcdn_router::watch::Membership;
use pingora::apps::http_app::ServeHttp;
use pingora::cache::eviction::EvictionManager;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::purge::{self, Target};
use crate::storage::CacheStore;

pub struct Admin {
    pub membership: Arc<Membership>,
    pub store: &'static CacheStore,
    pub eviction: &'static (dyn EvictionManager + Sync),
    pub metrics: Arc<Metrics>,
    pub token: Option<modcdn_shared::secret::Token>,
    /// The cluster token, for forwarding purges to the origins.
    pub origins: crate::origins::OriginClient,
    /// Traffic over the last minutes, for `/status`.
    pub history: Arc<crate::status::History>,
    pub hot: Arc<modcdn_shared::hot::HotSet>,
    /// The region of clients GeoIP cannot place.
    pub region: String,
}

fn answer(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = r.body().len().to_string().parse() {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Vec<u8>> {
    answer(status, "text/plain; charset=utf-8", body.into().into_bytes())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let query: BTreeMap<String, String> =
            form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
        let auth = req.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => text(StatusCode::OK, "ok\n"),
            ("GET", "/readyz") => self.readyz(),
            ("GET", "/metrics") => self.metrics(),
            ("GET", "/status") => {
                self.refresh_gauges();
                let inputs = crate::status::Inputs {
                    membership: &self.membership,
                    metrics: &self.metrics,
                    history: &self.history,
                    hot: &self.hot,
                    region: &self.region,
                };
                answer(StatusCode::OK, "text/html; charset=utf-8", crate::status::page(&inputs).into_bytes())
            }
            ("POST", "/purge") => self.purge(auth.as_deref(), &query).await,
            (_, "/healthz" | "/readyz" | "/metrics" | "/status" | "/purge") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Admin {
    fn readyz(&self) -> Response<Vec<u8>> {
        let snapshot = self.membership.snapshot();
        let healthy = snapshot.topology.members().filter(|m| snapshot.view.is_healthy(&m.id)).count();
        if healthy == 0 {
            return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy origin\n");
        }
        text(StatusCode::OK, format!("ready: {healthy} healthy origins\n"))
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        self.refresh_gauges();
        answer(StatusCode::OK, "text/plain; version=0.0.4", self.metrics.render())
    }

    /// Brings the figures read on demand (tiers, evictions, membership,
    /// origin health) up to date.
    fn refresh_gauges(&self) {
        let (objects, bytes) = self.store.disk_usage();
        let m = &self.metrics;
        m.cache_objects.set(objects as i64);
        m.cache_bytes.set(bytes as i64);
        let (fills, held) = self.store.waiting();
        m.waiting_fills.set(fills as i64);
        m.waiting_bytes.set(held as i64);
        m.memory_bytes.set(self.store.memory_usage() as i64);
        m.mapped_objects.set(self.store.mapped_objects() as i64);
        // The eviction manager counts; these counters catch up with it.
        m.evictions.inc_by((self.eviction.evicted_items() as u64).saturating_sub(m.evictions.get()));
        m.budget_bytes.set(self.eviction.total_size() as i64);
        m.evicted_bytes.inc_by((self.eviction.evicted_size() as u64).saturating_sub(m.evicted_bytes.get()));
        let rejected = self.membership.rejected_reloads();
        m.membership_rejected.inc_by(rejected.saturating_sub(m.membership_rejected.get()));
        let applied = self.membership.applied_reloads();
        m.membership_applied.inc_by(applied.saturating_sub(m.membership_applied.get()));
        let snapshot = self.membership.snapshot();
        for member in snapshot.topology.members() {
            let labels = [member.id.as_str(), member.region.as_str()];
            m.origin_healthy.with_label_values(&labels).set(i64::from(snapshot.view.is_healthy(&member.id)));
            let changes = m.origin_health_changes.with_label_values(&labels);
            changes.inc_by(snapshot.view.health_changes(&member.id).saturating_sub(changes.get()));
            let not_made = m.origin_checks_not_made.with_label_values(&labels);
            not_made.inc_by(snapshot.view.checks_not_made(&member.id).saturating_sub(not_made.get()));
        }
    }

    async fn purge(&self, auth: Option<&str>, query: &BTreeMap<String, String>) -> Response<Vec<u8>> {
        let Some(token) = &self.token else {
            return text(StatusCode::FORBIDDEN, "purges are off: set admin.token\n");
        };
        if !token.is_bearer(auth.map(str::as_bytes)) {
            return text(StatusCode::UNAUTHORIZED, "a purge needs Authorization: Bearer <admin.token>\n");
        }
        let target = match Target::parse(query.get("path").map(String::as_str), query.get("module").map(String::as_str))
        {
            Ok(t) => t,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let removed = purge::apply(self.store, &self.metrics, &target).await;
        let mut origins = BTreeMap::new();
        let (name, value) = target.query();
        for member in self.membership.snapshot().topology.members() {
            if !self.origins.has_token() {
                origins.insert(member.id.clone(), "not sent: origin.token is empty".to_string());
                continue;
            }
            let sent = self
                .origins
                .operator(reqwest::Method::POST, &member.operator, "/purge")
                .query(&[(name, &value)])
                .send()
                .await
                .and_then(|r| r.error_for_status());
            origins.insert(member.id.clone(), sent.map_or_else(|e| format!("error: {e}"), |_| "logged".to_string()));
        }
        let body = serde_json::json!({ "removed": removed, "origins": origins });
        answer(StatusCode::OK, "application/json", body.to_string().into_bytes())
    }
}
