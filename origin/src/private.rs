//! Private modules: paths matching a private route's patterns (Go's
//! GOPRIVATE syntax) are fetched only from that route's upstream — never
//! from the public chain, never looked up in a checksum database — and are
//! served only to clients that present one of the route's credentials. An
//! unauthenticated client gets a plain 404 (no hint the module exists), or
//! 401 if the route says so.
//!
//! Patterns match case-insensitively: GitHub and most VCS hosts treat
//! `github.com/Corp/secret` and `github.com/corp/secret` as one repository,
//! so a case variant of a private path is private too (and never reaches a
//! public upstream or a checksum database). The module path itself stays
//! case-sensitive everywhere else.

use std::net::IpAddr;

use axum::http::{header, HeaderMap};
use base64::Engine;
use modcdn_shared::pattern::match_prefix_patterns;
use serde::Deserialize;

use crate::upstream::Fetch;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrivateRouteConfig {
    /// Module path patterns, comma-separated globs as in GOPRIVATE.
    pub patterns: String,
    /// Where these modules come from (GOPROXY syntax).
    pub upstream: String,
    /// Accepted `Authorization: Bearer <token>` values.
    #[serde(default)]
    pub bearer_tokens: Vec<String>,
    /// Accepted basic-auth `user:password` pairs.
    #[serde(default)]
    pub basic_users: Vec<String>,
    /// Client networks (CIDRs) that may read without credentials; the
    /// client address is taken through `trusted_proxies` (the edges).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Status for a client without valid credentials: 401 with
    /// `WWW-Authenticate: Basic` (default for a route with credentials, as
    /// the go command's GOAUTH and `.netrc` expect), or 404 (default for a
    /// route open to `networks` only; says nothing of the module).
    #[serde(default)]
    pub unauthorized_status: Option<Unauthorized>,
}

/// What a client without valid credentials for a private route gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u16")]
pub enum Unauthorized {
    /// 401 with `WWW-Authenticate: Basic`.
    Challenge,
    /// 404, as for a module that does not exist.
    NotFound,
}

impl TryFrom<u16> for Unauthorized {
    type Error = String;
    fn try_from(status: u16) -> Result<Unauthorized, String> {
        match status {
            401 => Ok(Unauthorized::Challenge),
            404 => Ok(Unauthorized::NotFound),
            other => Err(format!("unauthorized_status {other} must be 404 or 401")),
        }
    }
}

pub struct PrivateRoute {
    pub patterns: String,
    /// What artifacts fetched under this route are tagged with
    /// ([`crate::store::Meta::route`]).
    pub tag: String,
    pub upstream: std::sync::Arc<dyn Fetch>,
    bearer: Vec<String>,
    basic: Vec<String>,
    networks: Vec<modcdn_shared::net::IpNet>,
    /// Whether a client without credentials is asked for them (401) rather
    /// than told the module does not exist (404).
    pub challenge: bool,
}

impl PrivateRoute {
    /// The route `cfg` describes, fetching from `upstream` (its chain).
    pub fn new(cfg: &PrivateRouteConfig, upstream: std::sync::Arc<dyn Fetch>) -> Result<PrivateRoute, String> {
        Ok(PrivateRoute {
            patterns: cfg.patterns.clone(),
            tag: format!("private {}", cfg.patterns),
            upstream,
            bearer: cfg.bearer_tokens.clone(),
            basic: cfg.basic_users.clone(),
            networks: modcdn_shared::net::parse_networks(&cfg.networks)?,
            challenge: match cfg.unauthorized_status {
                Some(u) => u == Unauthorized::Challenge,
                None => !(cfg.bearer_tokens.is_empty() && cfg.basic_users.is_empty()),
            },
        })
    }

    pub fn matches(&self, module: &str) -> bool {
        matches_folded(&self.patterns, module)
    }

    /// Whether the request carries one of this route's credentials, or
    /// comes from one of its networks (`client`: the address through
    /// trusted proxies). A route with neither, which the config refuses,
    /// would admit no one.
    pub fn authorized(&self, headers: &HeaderMap, client: Option<IpAddr>) -> bool {
        if client.is_some_and(|ip| self.networks.iter().any(|n| n.contains(&ip))) {
            return true;
        }
        let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
        if let Some(token) = auth.strip_prefix("Bearer ") {
            return self.bearer.iter().any(|t| modcdn_shared::secret::secret_eq(t.as_bytes(), token.trim().as_bytes()));
        }
        if let Some(b64) = auth.strip_prefix("Basic ") {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
            return self.basic.iter().any(|u| modcdn_shared::secret::secret_eq(u.as_bytes(), &raw));
        }
        false
    }
}

/// The private policy of an origin.
pub struct PrivatePolicy {
    pub routes: Vec<PrivateRoute>,
    /// Never fetched from the public chain (GONOPROXY), besides the routes' patterns.
    pub noproxy: String,
    /// Never looked up in a checksum database (GONOSUMDB), besides the routes' patterns.
    pub nosumdb: String,
}

impl PrivatePolicy {
    /// The private route serving `module`, if any.
    pub fn route(&self, module: &str) -> Option<&PrivateRoute> {
        self.routes.iter().find(|r| r.matches(module))
    }

    /// Whether `module` must never reach the public upstream chain.
    pub fn is_noproxy(&self, module: &str) -> bool {
        self.route(module).is_some() || matches_folded(&self.noproxy, module)
    }

    /// Whether `module` must never be looked up in a checksum database.
    pub fn is_nosumdb(&self, module: &str) -> bool {
        self.route(module).is_some() || matches_folded(&self.nosumdb, module)
    }
}

/// GOPRIVATE-style matching with ASCII case folded on both sides.
fn matches_folded(patterns: &str, module: &str) -> bool {
    match_prefix_patterns(&patterns.to_ascii_lowercase(), &module.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn route(bearer: &[&str], basic: &[&str]) -> PrivateRoute {
        let cfg = PrivateRouteConfig {
            patterns: "corp.example.com,*.internal/*".into(),
            upstream: "http://127.0.0.1:9".into(),
            bearer_tokens: bearer.iter().map(|s| s.to_string()).collect(),
            basic_users: basic.iter().map(|s| s.to_string()).collect(),
            networks: Vec::new(),
            unauthorized_status: None,
        };
        PrivateRoute::new(&cfg, std::sync::Arc::new(Unreachable)).expect("route")
    }

    /// These tests check who may read a route, never fetch from it.
    struct Unreachable;
    impl Fetch for Unreachable {
        fn fetch<'a>(
            &'a self,
            _: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<crate::upstream::Fetched, crate::error::UpstreamError>> {
            Box::pin(async { Err(crate::error::UpstreamError::Off) })
        }
    }

    #[test]
    fn patterns_and_credentials() {
        let r = route(&["s3cret"], &["ci:pw"]);
        assert!(
            r.matches("corp.example.com/team/lib") && r.matches("git.internal/x/y") && !r.matches("github.com/x/y")
        );
        let mut h = HeaderMap::new();
        assert!(!r.authorized(&h, None));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(r.authorized(&h, None));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer wrong"));
        assert!(!r.authorized(&h, None));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("ci:pw"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&basic).expect("header"));
        assert!(r.authorized(&h, None));
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert!(!route(&[], &[]).authorized(&HeaderMap::new(), ip("10.1.2.3")), "neither: no one");
        let mut open = route(&[], &[]);
        open.networks = modcdn_shared::net::parse_networks(&["10.0.0.0/8".into()]).expect("cidr");
        assert!(open.authorized(&HeaderMap::new(), ip("10.1.2.3")));
        assert!(!open.authorized(&HeaderMap::new(), ip("192.0.2.1")) && !open.authorized(&HeaderMap::new(), None));
        let p = PrivatePolicy {
            routes: vec![r],
            noproxy: "vendor.example.org".into(),
            nosumdb: "nosum.example.org".into(),
        };
        assert!(
            p.is_noproxy("corp.example.com/a") && p.is_noproxy("vendor.example.org/x") && !p.is_noproxy("github.com/a")
        );
        assert!(
            p.is_nosumdb("corp.example.com/a")
                && p.is_nosumdb("nosum.example.org/x")
                && !p.is_nosumdb("vendor.example.org/x")
        );
    }

    #[test]
    fn case_variants_of_private_paths_are_private() {
        let mut cfg_route = route(&["t"], &[]);
        cfg_route.patterns = "github.com/Corp,example.com/corp/*".into();
        let p = PrivatePolicy { routes: vec![cfg_route], noproxy: "Vendor.example.org".into(), nosumdb: String::new() };
        for m in ["github.com/corp/secret", "github.com/CORP/secret", "example.com/Corp/Lib", "example.com/corp/lib"] {
            assert!(p.route(m).is_some() && p.is_noproxy(m) && p.is_nosumdb(m), "{m}");
        }
        assert!(p.is_noproxy("vendor.example.org/x"));
        assert!(p.route("github.com/corporate/x").is_none(), "whole elements only");
    }
}
