//! Purges as nodes exchange them: what one targets, and the pages of an
//! origin's purge log that edges follow (`GET /purgez?after=N`).

use serde::{Deserialize, Serialize};

use crate::module::ModulePath;
use crate::request::Request;

/// What one purge removes, checked when it is made and when it is read
/// back (from a log file, an object store or another node's `/purgez`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTarget", into = "RawTarget")]
pub enum Target {
    /// One GOPROXY path (`example.com/a/@v/v1.0.0.zip`).
    Path(Request),
    /// Everything of one module: list, @latest and every version.
    Module(ModulePath),
}

/// A target as it travels: `{"path": "<escaped key>"}` or `{"module": "<path>"}`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawTarget {
    Path(String),
    Module(String),
}

impl TryFrom<RawTarget> for Target {
    type Error = String;
    fn try_from(raw: RawTarget) -> Result<Target, String> {
        match raw {
            RawTarget::Path(p) => Target::parse(Some(&p), None),
            RawTarget::Module(m) => Target::parse(None, Some(&m)),
        }
    }
}

impl From<Target> for RawTarget {
    fn from(t: Target) -> RawTarget {
        match t {
            Target::Path(r) => RawTarget::Path(r.key()),
            Target::Module(m) => RawTarget::Module(m.as_str().to_string()),
        }
    }
}

impl Target {
    /// Checks what an operator asked for: a path must parse as a GOPROXY
    /// request, a module must be a valid module path.
    pub fn parse(path: Option<&str>, module: Option<&str>) -> Result<Target, String> {
        match (path, module) {
            (Some(p), None) => Request::parse(&format!("/{}", p.trim_start_matches('/')))
                .map(Target::Path)
                .map_err(|e| format!("path: {e}")),
            (None, Some(m)) => ModulePath::new(m).map(Target::Module).map_err(|e| format!("module: {e}")),
            _ => Err("give exactly one of `path` or `module`".into()),
        }
    }

    /// The query that names it (`path=<key>` or `module=<path>`), to send it on.
    pub fn query(&self) -> (&'static str, String) {
        match self {
            Target::Path(r) => ("path", r.key()),
            Target::Module(m) => ("module", m.as_str().to_string()),
        }
    }

    /// The store keys it covers, as (key, whether it is a prefix): one
    /// path, or everything under `<escaped module>/@` (list, @latest and
    /// every version's files).
    pub fn keys(&self) -> (String, bool) {
        match self {
            Target::Path(r) => (r.key(), false),
            Target::Module(m) => (format!("{}/@", m.escaped()), true),
        }
    }
}

/// One entry of an origin's purge log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    pub target: Target,
}

/// An origin's answer to `GET /purgez?after=N`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// The log's last sequence number.
    pub last: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(m: &str) -> Target {
        Target::parse(None, Some(m)).expect("module")
    }

    #[test]
    fn targets_are_checked_and_normalized() {
        let path = Target::parse(Some("/example.com/!upper/@v/v1.0.0.zip"), None).expect("path");
        assert_eq!(path.keys(), ("example.com/!upper/@v/v1.0.0.zip".into(), false));
        assert_eq!(path.query(), ("path", "example.com/!upper/@v/v1.0.0.zip".into()));
        assert!(Target::parse(Some("../etc/passwd"), None).is_err());
        assert!(Target::parse(None, Some("not a module")).is_err());
        assert!(Target::parse(None, None).is_err());
        assert!(Target::parse(Some("a"), Some("b")).is_err());
        assert_eq!(module("example.com/Upper").keys(), ("example.com/!upper/@".into(), true));
        assert_eq!(module("example.com/Upper").query(), ("module", "example.com/Upper".into()));
    }

    #[test]
    fn log_pages_round_trip_and_are_checked_when_read() {
        let page = LogPage { entries: vec![LogEntry { seq: 3, target: module("example.com/a") }], last: 3 };
        let json = serde_json::to_string(&page).expect("serializes");
        assert_eq!(json, r#"{"entries":[{"seq":3,"target":{"module":"example.com/a"}}],"last":3}"#);
        let back: LogPage = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.entries[0].target, module("example.com/a"));
        for bad in [r#"{"module":"not a module"}"#, r#"{"path":"../../etc/passwd"}"#, r#"{"path":"example.com/a"}"#] {
            assert!(serde_json::from_str::<Target>(bad).is_err(), "{bad}");
        }
    }
}
