//! HTTP mechanics of the origin's answers: conditional requests (ETag),
//! byte ranges, small text answers, and responses that cannot be built.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use modcdn_shared::policy;

/// Whether `If-None-Match` (a list of tags, `*`, weak `W/` tags) matches
/// `etag`.
pub(crate) fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

pub(crate) enum RangeSpec {
    Ignore,
    Unsatisfiable,
    /// Inclusive first and last byte.
    Bytes(u64, u64),
}

/// One `bytes=` range; several ranges or other units are ignored (a full
/// answer is always allowed).
pub(crate) fn parse_range(spec: &str, size: u64) -> RangeSpec {
    let Some(set) = spec.trim().strip_prefix("bytes=") else { return RangeSpec::Ignore };
    if set.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = set.trim().split_once('-') else { return RangeSpec::Ignore };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, true) => return RangeSpec::Ignore,
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeSpec::Unsatisfiable,
            Ok(n) => Some((size.saturating_sub(n), size.saturating_sub(1))),
            Err(_) => return RangeSpec::Ignore,
        },
        (false, _) => match (a.parse::<u64>(), if b.is_empty() { Ok(u64::MAX) } else { b.parse::<u64>() }) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e.min(size.saturating_sub(1)))),
            _ => return RangeSpec::Ignore,
        },
    };
    match parsed {
        Some((s, e)) if size > 0 && s < size => RangeSpec::Bytes(s, e),
        _ => RangeSpec::Unsatisfiable,
    }
}

pub(crate) fn text(status: StatusCode, cache_control: &str, body: &str) -> Response {
    built(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::CACHE_CONTROL, cache_control)
            .body(Body::from(body.to_string())),
    )
}

/// A built response, or a 500 that no cache keeps if building failed —
/// never an empty 200 (which an edge would keep as the artifact).
pub(crate) fn built(r: Result<Response, axum::http::Error>) -> Response {
    r.unwrap_or_else(|e| internal_error(&e))
}

pub(crate) fn internal_error(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "could not build a response");
    let mut r = Response::new(Body::from("internal error\n"));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(policy::CC_NO_STORE));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_response_that_cannot_be_built_is_a_500_no_cache_keeps() {
        let r = super::built(Response::builder().header("x-bad", "a\nb").body(Body::empty()));
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let r = super::text(StatusCode::OK, "bad\nvalue", "x");
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    use super::*;

    #[test]
    fn etags() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", W/\"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abcd\"", "\"abc\""));
    }

    #[test]
    fn ranges() {
        let b = |s: &str| match parse_range(s, 100) {
            RangeSpec::Bytes(a, b) => format!("{a}-{b}"),
            RangeSpec::Ignore => "ignore".into(),
            RangeSpec::Unsatisfiable => "416".into(),
        };
        assert_eq!(b("bytes=0-9"), "0-9");
        assert_eq!(b("bytes=90-"), "90-99");
        assert_eq!(b("bytes=-10"), "90-99");
        assert_eq!(b("bytes=50-500"), "50-99");
        assert_eq!(b("bytes=100-"), "416");
        assert_eq!(b("bytes=-0"), "416");
        assert_eq!(b("bytes=5-1"), "ignore");
        assert_eq!(b("bytes=0-1,5-6"), "ignore");
        assert_eq!(b("items=0-1"), "ignore");
        assert_eq!(b("bytes=x-y"), "ignore");
    }
}
