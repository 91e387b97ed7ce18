//! The origin's errors. Each has one HTTP status; `serve::respond_error` is
//! the one place they become responses.

use modcdn_shared::policy::{Fault, Outcome};
use modcdn_shared::RequestError;

/// What went wrong talking to an upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found: module lookup disabled by upstream = \"off\"")]
    Off,
    #[error("not found: {message}")]
    NotFound { status: u16, message: String },
    #[error("upstream timed out: {0}")]
    Timeout(String),
    #[error("upstream connection failed: {0}")]
    Connect(String),
    #[error("upstream answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("upstream body failed: {0}")]
    Body(String),
}

impl UpstreamError {
    /// 404/410: the next `,` upstream may have it.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::NotFound { .. } | UpstreamError::Off)
    }

    /// Worth retrying on the same upstream.
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Timeout(_) | UpstreamError::Connect(_) => true,
            UpstreamError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Anything that keeps the origin from answering 200.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Upstream sent something that fails validation; nothing was stored.
    #[error("invalid upstream content: {0}")]
    Invalid(String),
    /// Writing to the store failed (disk full, permissions); nothing was stored.
    #[error("store write failed: {0}")]
    Store(String),
    /// The shared object store did not answer (down, unreachable, refusing);
    /// nothing was stored, and a retry may find it back.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// The checksum database has another hash for this module version.
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),
    /// The checksum database could not vouch for the content (bad signature,
    /// failed proof, forked log, no record).
    #[error("checksum database verification failed: {0}")]
    Verification(String),
    /// The fetch was cut off (the node is shutting down, or it hit a bug);
    /// nothing was stored. Retrying is fine.
    #[error("fetch interrupted: {0}")]
    Interrupted(String),
    /// Too many pulls are running on this origin; retry shortly (another
    /// origin may take it now).
    #[error("origin busy: {0}")]
    Busy(String),
}

impl OriginError {
    pub fn status(&self) -> u16 {
        match self {
            OriginError::Request(e) => e.status(),
            OriginError::Upstream(UpstreamError::NotFound { status, .. }) => *status,
            OriginError::Upstream(UpstreamError::Off) => 404,
            OriginError::Upstream(UpstreamError::Timeout(_)) => 504,
            OriginError::Upstream(_) | OriginError::Invalid(_) => 502,
            OriginError::ChecksumMismatch(_) | OriginError::Verification(_) => 502,
            OriginError::Store(_) => 500,
            OriginError::Interrupted(_) | OriginError::Busy(_) | OriginError::StoreUnavailable(_) => 503,
        }
    }

    /// What a client is told: the module, version and a short reason, never
    /// an internal host, a file path, a credential or raw go/git output
    /// (those are in [`std::fmt::Display`], for the log).
    pub fn client_message(&self) -> String {
        match self {
            OriginError::Upstream(UpstreamError::NotFound { message, .. }) => match message.strip_prefix("direct: ") {
                // The go command's error, reduced to the phrase that says why.
                Some(stderr) => format!("not found: {}", go_reason(stderr)),
                None => format!("not found: {}", without_urls(message)),
            },
            OriginError::Upstream(UpstreamError::Status { status, .. }) => format!("upstream answered {status}"),
            OriginError::Upstream(UpstreamError::Timeout(_)) => "upstream timed out".into(),
            OriginError::Upstream(UpstreamError::Connect(_)) => "upstream connection failed".into(),
            OriginError::Upstream(UpstreamError::Body(_)) => "upstream body failed".into(),
            other => without_urls(&other.to_string()),
        }
    }

    /// Whose fault it is, for edges deciding whether another origin should
    /// be asked and whether it counts against this one's health.
    pub fn fault(&self) -> Fault {
        match self {
            OriginError::Request(_) => Fault::Request,
            OriginError::Upstream(_)
            | OriginError::Invalid(_)
            | OriginError::ChecksumMismatch(_)
            | OriginError::Verification(_) => Fault::Upstream,
            OriginError::Store(_) | OriginError::StoreUnavailable(_) | OriginError::Interrupted(_) => Fault::Origin,
            OriginError::Busy(_) => Fault::Busy,
        }
    }

    /// A store operation on `key` failed: unavailable when the object store
    /// did not answer, a store failure otherwise.
    pub fn store(key: &str, e: std::io::Error) -> OriginError {
        if e.get_ref().is_some_and(|inner| inner.is::<crate::s3::Unavailable>()) {
            OriginError::StoreUnavailable(format!("{key}: {e}"))
        } else {
            OriginError::Store(format!("{key}: {e}"))
        }
    }

    /// The policy-table outcome of the error's status.
    pub fn outcome(&self) -> Option<Outcome> {
        Outcome::from_status(self.status())
    }
}

/// `text` with every URL replaced by `<upstream>`: upstream hosts, ports and
/// paths stay in the log.
fn without_urls(text: &str) -> String {
    text.split(' ').map(|w| if w.contains("://") { "<upstream>" } else { w }).collect::<Vec<_>>().join(" ")
}

/// The reason a go command gave for a missing version, as a known phrase.
fn go_reason(stderr: &str) -> &'static str {
    const KNOWN: [&str; 6] = [
        "unknown revision",
        "invalid version",
        "no matching versions",
        "malformed module path",
        "repository not found",
        "does not exist",
    ];
    KNOWN.iter().find(|k| stderr.contains(*k)).copied().unwrap_or("not in version control")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_told_no_internal_hosts_paths_or_stderr() {
        let cases = [
            UpstreamError::Status { status: 502, message: "http://10.1.2.3:8080/x/@v/list: 502 Bad Gateway".into() },
            UpstreamError::Timeout("https://proxy.corp.internal/x: no response within 15000 ms".into()),
            UpstreamError::Connect("http://10.1.2.3:8080/x: tcp connect error".into()),
            UpstreamError::NotFound {
                status: 404,
                message: "direct: go: git.corp.internal/x@v9: invalid version: git fetch /home/modcdn/direct/x".into(),
            },
            UpstreamError::NotFound {
                status: 404,
                message: "404 Not Found: see https://proxy.corp.internal/help".into(),
            },
        ];
        for e in cases {
            let m = OriginError::Upstream(e.clone()).client_message();
            assert!(!m.contains("10.1.2.3") && !m.contains("corp.internal") && !m.contains("/home/"), "{e}: {m}");
        }
        let m = OriginError::Upstream(UpstreamError::NotFound {
            status: 404,
            message: "direct: go: x@v9: invalid version: unknown revision v9".into(),
        })
        .client_message();
        assert_eq!(m, "not found: unknown revision");
    }
}
