//! The one cache and status table, used by every node (ARCHITECTURE.md
//! shows it as a table).
//!
//! Every decision about how long an answer may be kept, when it is
//! refreshed, whether a stale copy may stand in, what `Cache-Control` goes
//! to clients, and how statuses map to outcomes is made here: [`decide`]
//! from the request [`Kind`], the [`Outcome`] and the [`Audience`], and
//! [`decide_downstream`] for a cache in front of another node (the edge),
//! from the status and `Cache-Control` that node sent. Nodes call these and
//! decide nothing themselves.

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
    /// Fresh for this long; after that refreshed, and served stale within
    /// the decision's stale windows.
    Ttl(Duration),
    /// Never kept.
    Never,
}

/// How long a cache that counts freshness in time (the edge's) takes
/// [`Freshness::Forever`] to be: ten years.
pub const FOREVER: Duration = Duration::from_secs(10 * 365 * 86_400);

/// How long an expired `list`, `@latest`, query `.info` or sumdb `latest`
/// may still stand in when the node behind fails: a day.
pub const STALE_IF_ERROR: Duration = Duration::from_secs(86_400);

/// The share of its TTL after which a node refreshes a kept mutable answer
/// in the background, so that clients keep getting fresh copies without
/// waiting for a pull.
const REFRESH_AT: f64 = 0.75;

impl Freshness {
    /// How long the answer is fresh for a cache that counts in time; `None`
    /// for an answer that is never kept.
    pub fn duration(self) -> Option<Duration> {
        match self {
            Freshness::Forever => Some(FOREVER),
            Freshness::Ttl(ttl) => Some(ttl),
            Freshness::Never => None,
        }
    }
}

/// The tunable TTLs (all but `private` default to 60 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// `list`, `@latest` and sumdb `latest`.
    pub mutable: Duration,
    /// `.info` of a query (branch, commit, non-canonical version).
    pub query: Duration,
    /// 404 and 410 answers.
    pub negative: Duration,
    /// The longest a copy of a private answer is kept (by a cache keyed by
    /// the credential), so that a revoked credential stops working within
    /// it. Default 300 s.
    pub private: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        Ttls { mutable: minute, query: minute, negative: minute, private: Duration::from_secs(300) }
    }
}

/// Who an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Anyone: any cache may keep it.
    Public,
    /// A client of a private route: only a cache keyed by the client's
    /// credential may keep it, for at most [`Ttls::private`], never stale.
    Private,
}

/// The decision for one answer: its status, how long it is kept, when it
/// may be served stale, and what clients are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub status: u16,
    pub freshness: Freshness,
    /// After freshness ends, how long a copy may still be served while one
    /// request refreshes it.
    pub stale_while_revalidate: Duration,
    /// After freshness ends, how long a copy may stand in for a failing
    /// upstream (or origin).
    pub stale_if_error: Duration,
    /// The age at which a node holding the answer refreshes it in the
    /// background, before it expires.
    pub refresh_at: Option<Duration>,
    /// `Cache-Control` sent to clients.
    pub cache_control: String,
}

impl Decision {
    /// Whether a copy `age` old is fresh.
    pub fn is_fresh(&self, age: Duration) -> bool {
        match self.freshness {
            Freshness::Forever => true,
            Freshness::Ttl(ttl) => age < ttl,
            Freshness::Never => false,
        }
    }

    /// Whether a copy `age` old may stand in for a failing upstream.
    pub fn may_serve_stale_on_error(&self, age: Duration) -> bool {
        match self.freshness {
            Freshness::Ttl(ttl) => age < ttl.saturating_add(self.stale_if_error),
            _ => false,
        }
    }
}

/// The whole table: what happens to an answer of `outcome` to a request of
/// `kind` for `audience`.
pub fn decide(kind: Kind, outcome: Outcome, audience: Audience, ttls: &Ttls) -> Decision {
    let never = |status: u16| Decision {
        status,
        freshness: Freshness::Never,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        refresh_at: None,
        cache_control: CC_NO_STORE.to_string(),
    };
    let immutable = |cache_control: &str| Decision {
        status: 200,
        freshness: Freshness::Forever,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        refresh_at: None,
        cache_control: cache_control.to_string(),
    };
    let mutable = |status: u16, ttl: Duration, stale: bool| Decision {
        status,
        freshness: Freshness::Ttl(ttl),
        stale_while_revalidate: if stale { ttl } else { Duration::ZERO },
        stale_if_error: if stale { STALE_IF_ERROR } else { Duration::ZERO },
        refresh_at: stale.then(|| ttl.mul_f64(REFRESH_AT)),
        cache_control: format!("public, max-age={}", ttl.as_secs()),
    };
    let public = match outcome {
        Outcome::Found => match kind {
            Kind::Info | Kind::Mod | Kind::Zip | Kind::SumDbTile => immutable(CC_IMMUTABLE),
            Kind::SumDbLookup => immutable(CC_SUMDB_LOOKUP),
            Kind::Query => mutable(200, ttls.query, true),
            Kind::List | Kind::Latest | Kind::SumDbLatest | Kind::SumDbSupported => mutable(200, ttls.mutable, true),
        },
        Outcome::NotFound => mutable(404, ttls.negative, false),
        Outcome::Gone => mutable(410, ttls.negative, false),
        Outcome::UpstreamError => never(502),
        Outcome::UpstreamTimeout => never(504),
    };
    match (audience, public.freshness.duration()) {
        (Audience::Private, Some(fresh)) => {
            let fresh = fresh.min(ttls.private);
            Decision {
                freshness: Freshness::Ttl(fresh),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                refresh_at: None,
                cache_control: format!("private, max-age={}", fresh.as_secs()),
                ..public
            }
        }
        _ => public,
    }
}

/// What a cache in front of another node (the edge in front of an origin)
/// does with that node's answer: `status` and its `Cache-Control`, to a
/// request of `kind` that carried a credential or not, where the cache
/// keeps credentialed answers (per credential) only when `cache_private`.
/// `no-store`, a status the table has no row for, and a `private` answer
/// the cache may not keep are never kept.
pub fn decide_downstream(
    kind: Kind,
    status: u16,
    cache_control: Option<&str>,
    credentialed: bool,
    cache_private: bool,
    ttls: &Ttls,
) -> Decision {
    let directives = Directives::parse(cache_control.unwrap_or(""));
    let outcome = Outcome::from_status(status).unwrap_or(Outcome::UpstreamError);
    let audience = if directives.private { Audience::Private } else { Audience::Public };
    let mut d = decide(kind, outcome, audience, ttls);
    let kept_privately = credentialed && cache_private;
    if directives.no_store || Outcome::from_status(status).is_none() || (directives.private && !kept_privately) {
        d.freshness = Freshness::Never;
        d.stale_while_revalidate = Duration::ZERO;
        d.stale_if_error = Duration::ZERO;
        d.refresh_at = None;
    }
    d.status = status;
    d
}

/// The `Cache-Control` directives the table reads from a node behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Directives {
    private: bool,
    no_store: bool,
}

impl Directives {
    fn parse(cache_control: &str) -> Directives {
        let mut d = Directives::default();
        for directive in cache_control.split(',') {
            let name = directive.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("private") {
                d.private = true;
            } else if name.eq_ignore_ascii_case("no-store") {
                d.no_store = true;
            }
        }
        d
    }
}

impl Outcome {
    /// The outcome an answer's status stands for: 200, 404, 410, 504, and
    /// any other 5xx as an upstream error; `None` for statuses the table
    /// has no row for (400, 401, 403, 416, ...), which are never kept.
    pub fn from_status(status: u16) -> Option<Outcome> {
        match status {
            200 => Some(Outcome::Found),
            404 => Some(Outcome::NotFound),
            410 => Some(Outcome::Gone),
            504 => Some(Outcome::UpstreamTimeout),
            500..=599 => Some(Outcome::UpstreamError),
            _ => None,
        }
    }
}

/// Where an answer came from, as every node says it in `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the node's cache or store, fresh.
    Hit,
    /// Fetched from behind for this request.
    Miss,
    /// An expired copy (while one request refreshes it, or standing in for
    /// a failure).
    Stale,
    /// An expired copy was there and was fetched again.
    Expired,
    /// The cache was not used (credentialed requests at an edge that keeps
    /// no private copies).
    Bypass,
    /// Not a cacheable answer at all (errors, refusals).
    None,
}

/// The header [`CacheStatus`] is sent in.
pub const CACHE_STATUS_HEADER: &str = "x-cache";

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::None => "NONE",
        }
    }

    /// The `cache` label of both nodes' `requests_total` (lower case).
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Expired => "expired",
            CacheStatus::Bypass => "bypass",
            CacheStatus::None => "none",
        }
    }

    /// The status a header names; anything else is [`CacheStatus::None`].
    pub fn of_header(value: Option<&[u8]>) -> CacheStatus {
        match value {
            Some(b"HIT") => CacheStatus::Hit,
            Some(b"MISS") => CacheStatus::Miss,
            Some(b"STALE") => CacheStatus::Stale,
            Some(b"EXPIRED") => CacheStatus::Expired,
            Some(b"BYPASS") => CacheStatus::Bypass,
            _ => CacheStatus::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const DAY: Duration = Duration::from_secs(86_400);

    fn public(kind: Kind, outcome: Outcome) -> Decision {
        decide(kind, outcome, Audience::Public, &Ttls::default())
    }

    #[test]
    fn artifacts_are_kept_for_good_and_never_served_stale() {
        for kind in [Kind::Info, Kind::Mod, Kind::Zip, Kind::SumDbTile] {
            let d = public(kind, Outcome::Found);
            assert_eq!(d.status, 200);
            assert_eq!(d.freshness, Freshness::Forever);
            assert_eq!(d.freshness.duration(), Some(Duration::from_secs(315_360_000)));
            assert_eq!(d.cache_control, "public, max-age=31536000, immutable");
            assert_eq!(
                (d.stale_while_revalidate, d.stale_if_error, d.refresh_at),
                (Duration::ZERO, Duration::ZERO, None)
            );
            assert!(d.is_fresh(10 * 365 * DAY) && !d.may_serve_stale_on_error(DAY));
        }
        assert_eq!(public(Kind::SumDbLookup, Outcome::Found).cache_control, "public, max-age=86400");
    }

    #[test]
    fn mutable_answers_live_a_minute_refresh_at_45_s_and_stand_in_for_a_day() {
        for kind in [Kind::List, Kind::Latest, Kind::Query, Kind::SumDbLatest] {
            let d = public(kind, Outcome::Found);
            assert_eq!(d.freshness, Freshness::Ttl(MINUTE), "{kind:?}");
            assert_eq!(d.stale_while_revalidate, MINUTE);
            assert_eq!(d.stale_if_error, DAY);
            assert_eq!(d.refresh_at, Some(Duration::from_secs(45)));
            assert_eq!(d.cache_control, "public, max-age=60");
            assert!(d.is_fresh(Duration::from_secs(59)) && !d.is_fresh(MINUTE));
            assert!(d.may_serve_stale_on_error(Duration::from_secs(86_459)));
            assert!(!d.may_serve_stale_on_error(Duration::from_secs(86_460)));
        }
        let custom = Ttls { mutable: Duration::from_secs(5), ..Ttls::default() };
        assert_eq!(decide(Kind::List, Outcome::Found, Audience::Public, &custom).cache_control, "public, max-age=5");
    }

    #[test]
    fn not_found_is_remembered_briefly_and_failures_never() {
        for kind in Kind::ALL {
            let nf = public(kind, Outcome::NotFound);
            assert_eq!((nf.status, nf.cache_control.as_str()), (404, "public, max-age=60"));
            assert_eq!(
                (nf.freshness, nf.stale_if_error, nf.refresh_at),
                (Freshness::Ttl(MINUTE), Duration::ZERO, None)
            );
            assert_eq!(public(kind, Outcome::Gone).status, 410);
            let e = public(kind, Outcome::UpstreamError);
            assert_eq!((e.status, e.freshness, e.cache_control.as_str()), (502, Freshness::Never, "no-store"));
            assert_eq!(e.freshness.duration(), None);
            assert_eq!(public(kind, Outcome::UpstreamTimeout).status, 504);
        }
    }

    #[test]
    fn private_answers_are_kept_at_most_the_private_ttl_and_never_stale() {
        let t = Ttls::default();
        let d = decide(Kind::Zip, Outcome::Found, Audience::Private, &t);
        assert_eq!(
            (d.freshness, d.cache_control.as_str()),
            (Freshness::Ttl(Duration::from_secs(300)), "private, max-age=300")
        );
        let d = decide(Kind::List, Outcome::Found, Audience::Private, &t);
        assert_eq!(
            (d.freshness, d.stale_if_error, d.stale_while_revalidate),
            (Freshness::Ttl(MINUTE), Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(d.cache_control, "private, max-age=60");
        assert_eq!(decide(Kind::Zip, Outcome::UpstreamError, Audience::Private, &t).cache_control, "no-store");
    }

    #[test]
    fn a_cache_in_front_keeps_what_the_node_behind_allows() {
        let t = Ttls::default();
        let keep = |status, cc: Option<&str>, credentialed, cache_private| {
            decide_downstream(Kind::Zip, status, cc, credentialed, cache_private, &t).freshness
        };
        let immutable = Some("public, max-age=31536000, immutable");
        assert_eq!(keep(200, immutable, false, false), Freshness::Forever);
        assert_eq!(keep(410, Some("public, max-age=60"), false, false), Freshness::Ttl(MINUTE));
        assert_eq!(keep(404, None, false, false), Freshness::Ttl(MINUTE));
        for status in [206, 304, 400, 401, 416, 429, 500, 502, 503, 504] {
            assert_eq!(keep(status, immutable, false, false), Freshness::Never, "{status}");
        }
        assert_eq!(keep(200, Some("No-Store"), false, false), Freshness::Never);
        // `private` as a directive, not as a substring of something else.
        assert_eq!(keep(200, Some("public, x-not-private-at-all=1"), false, false), Freshness::Forever);
        let private = Some("private, max-age=31536000, immutable");
        assert_eq!(keep(200, private, false, true), Freshness::Never);
        assert_eq!(keep(200, private, true, false), Freshness::Never);
        assert_eq!(keep(200, private, true, true), Freshness::Ttl(Duration::from_secs(300)));
        let d = decide_downstream(Kind::Latest, 410, None, false, false, &t);
        assert_eq!((d.status, d.cache_control.as_str()), (410, "public, max-age=60"));
    }

    #[test]
    fn statuses_outcomes_and_cache_statuses() {
        let o = |s| Outcome::from_status(s);
        assert_eq!(
            [o(200), o(404), o(410), o(504)],
            [Some(Outcome::Found), Some(Outcome::NotFound), Some(Outcome::Gone), Some(Outcome::UpstreamTimeout)]
        );
        assert_eq!([o(500), o(502), o(503)], [Some(Outcome::UpstreamError); 3]);
        assert_eq!([o(206), o(304), o(400), o(401)], [None; 4]);
        for s in ["HIT", "MISS", "STALE", "EXPIRED", "BYPASS", "NONE"] {
            assert_eq!(CacheStatus::of_header(Some(s.as_bytes())).as_str(), s);
        }
        assert_eq!(CacheStatus::of_header(Some(b"hit")), CacheStatus::None);
        assert_eq!(CacheStatus::of_header(None), CacheStatus::None);
        assert_eq!(Fault::of_answer(Some(b"upstream")), Fault::Upstream);
        assert_eq!(Fault::of_answer(Some(b"request")), Fault::Request);
        assert_eq!(Fault::of_answer(Some(b"origin")), Fault::Origin);
        assert_eq!(Fault::of_answer(Some(b"busy")), Fault::Busy);
        assert_eq!(Fault::of_answer(None), Fault::Origin);
    }
}
