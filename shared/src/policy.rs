//! The one cache and status table of DESIGN.md, used by every node.
//!
//! Every decision about how long an answer may be kept, what `Cache-Control`
//! goes to clients and whether a stale copy may stand in for a failing
//! upstream is made here, from the request [`Kind`] and the [`Outcome`].

use std::time::Duration;

use crate::request::Kind;

/// `Cache-Control` for immutable artifacts (canonical info, mod, zip; tiles).
pub const CC_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` for answers that must never be kept (upstream failures).
pub const CC_NO_STORE: &str = "no-store";
/// `Cache-Control` for checksum-database lookups: records never change, but a
/// day bounds how long a purge takes to reach clients.
pub const CC_SUMDB_LOOKUP: &str = "public, max-age=86400";

/// What happened when a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with content.
    Found,
    /// Upstream said 404.
    NotFound,
    /// Upstream said 410.
    Gone,
    /// Upstream failed (connection, 5xx, invalid content).
    UpstreamError,
    /// Upstream did not answer in time.
    UpstreamTimeout,
}

/// The header an origin names the fault of an error answer in, so that an
/// edge moves to the next origin (and counts it against the origin's health)
/// only when the origin itself failed, never for what upstream or the
/// request did.
pub const FAULT_HEADER: &str = "x-modcdn-fault";

/// Whose fault an error answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The node itself: its store, its process, its own load. Another
    /// origin may do better.
    Origin,
    /// Upstream (a GOPROXY, a VCS, a checksum database) failed, timed out or
    /// sent something invalid. Every origin would ask the same upstream.
    Upstream,
    /// The node is at a limit of its own (concurrent pulls): another origin
    /// may answer, but this one is not broken.
    Busy,
    /// The request cannot be answered (malformed, not allowed).
    Request,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Origin => "origin",
            Fault::Upstream => "upstream",
            Fault::Busy => "busy",
            Fault::Request => "request",
        }
    }

    /// The fault a 5xx answer names; an answer that names none (an older
    /// origin, a crash, something in between) is the origin's.
    pub fn of_answer(header: Option<&[u8]>) -> Fault {
        match header {
            Some(b"upstream") => Fault::Upstream,
            Some(b"request") => Fault::Request,
            Some(b"busy") => Fault::Busy,
            _ => Fault::Origin,
        }
    }
}

/// How long a kept answer is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Never changes; evicted only by size.
    Forever,
    /// Fresh for this long; after that refreshed, and served stale if the
    /// refresh fails when `stale_if_error` is set.
    Ttl(Duration),
    /// Never kept.
    Never,
}

/// The tunable TTLs (all default to 60 s, as DESIGN.md says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// `list`, `@latest` and sumdb `latest`.
    pub mutable: Duration,
    /// `.info` of a query (branch, commit, non-canonical version).
    pub query: Duration,
    /// 404 and 410 answers.
    pub negative: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        Ttls { mutable: minute, query: minute, negative: minute }
    }
}

/// The decision for one (kind, outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub status: u16,
    pub freshness: Freshness,
    /// Whether an expired copy may be served when upstream fails.
    pub stale_if_error: bool,
    pub cache_control: String,
}

fn public_max_age(ttl: Duration) -> String {
    format!("public, max-age={}", ttl.as_secs())
}

/// The whole table.
pub fn rule(kind: Kind, outcome: Outcome, ttls: &Ttls) -> Rule {
    let keep = |freshness: Freshness, stale_if_error: bool, cache_control: String| Rule {
        status: 200,
        freshness,
        stale_if_error,
        cache_control,
    };
    match outcome {
        Outcome::Found => match kind {
            Kind::Info | Kind::Mod | Kind::Zip | Kind::SumDbTile => {
                keep(Freshness::Forever, false, CC_IMMUTABLE.to_string())
            }
            Kind::SumDbLookup => keep(Freshness::Forever, false, CC_SUMDB_LOOKUP.to_string()),
            Kind::Query => keep(Freshness::Ttl(ttls.query), true, public_max_age(ttls.query)),
            Kind::List | Kind::Latest | Kind::SumDbLatest | Kind::SumDbSupported => {
                keep(Freshness::Ttl(ttls.mutable), true, public_max_age(ttls.mutable))
            }
        },
        Outcome::NotFound | Outcome::Gone => Rule {
            status: if outcome == Outcome::Gone { 410 } else { 404 },
            freshness: Freshness::Ttl(ttls.negative),
            stale_if_error: false,
            cache_control: public_max_age(ttls.negative),
        },
        Outcome::UpstreamError | Outcome::UpstreamTimeout => Rule {
            status: if outcome == Outcome::UpstreamTimeout { 504 } else { 502 },
            freshness: Freshness::Never,
            stale_if_error: false,
            cache_control: CC_NO_STORE.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_design() {
        let t = Ttls::default();
        for kind in [Kind::Info, Kind::Mod, Kind::Zip] {
            let r = rule(kind, Outcome::Found, &t);
            assert_eq!((r.status, r.freshness, r.cache_control.as_str()), (200, Freshness::Forever, CC_IMMUTABLE));
        }
        for kind in [Kind::List, Kind::Latest, Kind::Query, Kind::SumDbLatest] {
            let r = rule(kind, Outcome::Found, &t);
            assert_eq!(r.freshness, Freshness::Ttl(Duration::from_secs(60)));
            assert!(r.stale_if_error, "{kind:?}");
            assert_eq!(r.cache_control, "public, max-age=60");
        }
        for kind in Kind::ALL {
            let nf = rule(kind, Outcome::NotFound, &t);
            assert_eq!((nf.status, nf.cache_control.as_str()), (404, "public, max-age=60"));
            assert_eq!(rule(kind, Outcome::Gone, &t).status, 410);
            let e = rule(kind, Outcome::UpstreamError, &t);
            assert_eq!((e.status, e.freshness, e.cache_control.as_str()), (502, Freshness::Never, CC_NO_STORE));
            assert_eq!(rule(kind, Outcome::UpstreamTimeout, &t).status, 504);
        }
        assert_eq!(rule(Kind::SumDbLookup, Outcome::Found, &t).cache_control, CC_SUMDB_LOOKUP);
        assert_eq!(Fault::of_answer(Some(b"upstream")), Fault::Upstream);
        assert_eq!(Fault::of_answer(Some(b"request")), Fault::Request);
        assert_eq!(Fault::of_answer(Some(b"origin")), Fault::Origin);
        assert_eq!(Fault::of_answer(Some(b"busy")), Fault::Busy);
        assert_eq!(Fault::of_answer(None), Fault::Origin);
        let custom = Ttls { mutable: Duration::from_secs(5), ..t };
        assert_eq!(rule(Kind::List, Outcome::Found, &custom).cache_control, "public, max-age=5");
    }
}
