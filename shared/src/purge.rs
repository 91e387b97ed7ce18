//! Purges as nodes exchange them: what one targets, and the pages of an
//! origin's purge log that edges follow (`GET /purgez?after=N`).

use serde::{Deserialize, Serialize};

use crate::module::ModulePath;
use crate::request::Request;

/// What one purge removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// One GOPROXY path (`example.com/a/@v/v1.0.0.zip`).
    Path(String),
    /// Everything of one module: list, @latest and every version.
    Module(String),
}

impl Target {
    /// Checks and normalizes what an operator asked for: a path must parse as
    /// a GOPROXY request, a module must be a valid module path.
    pub fn parse(path: Option<&str>, module: Option<&str>) -> Result<Target, String> {
        match (path, module) {
            (Some(p), None) => {
                let r = Request::parse(&format!("/{}", p.trim_start_matches('/'))).map_err(|e| format!("path: {e}"))?;
                Ok(Target::Path(r.key()))
            }
            (None, Some(m)) => {
                let m = ModulePath::new(m).map_err(|e| format!("module: {e}"))?;
                Ok(Target::Module(m.as_str().to_string()))
            }
            _ => Err("give exactly one of `path` or `module`".into()),
        }
    }

    /// The store keys it covers, as (key, whether it is a prefix): one
    /// path, or everything under `<escaped module>/@` (list, @latest and
    /// every version's files).
    pub fn keys(&self) -> (String, bool) {
        match self {
            Target::Path(p) => (p.clone(), false),
            Target::Module(m) => {
                let escaped = ModulePath::new(m).map(|m| m.escaped().to_string()).unwrap_or_default();
                (format!("{escaped}/@"), true)
            }
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

    #[test]
    fn targets_are_checked_and_normalized() {
        assert_eq!(
            Target::parse(Some("example.com/!upper/@v/v1.0.0.zip"), None),
            Ok(Target::Path("example.com/!upper/@v/v1.0.0.zip".into()))
        );
        assert_eq!(Target::parse(None, Some("example.com/Upper")), Ok(Target::Module("example.com/Upper".into())));
        assert!(Target::parse(Some("../etc/passwd"), None).is_err());
        assert!(Target::parse(None, Some("not a module")).is_err());
        assert!(Target::parse(None, None).is_err());
        assert!(Target::parse(Some("a"), Some("b")).is_err());
        assert_eq!(Target::Module("example.com/Upper".into()).keys(), ("example.com/!upper/@".into(), true));
    }

    #[test]
    fn log_pages_round_trip() {
        let page =
            LogPage { entries: vec![LogEntry { seq: 3, target: Target::Module("example.com/a".into()) }], last: 3 };
        let json = serde_json::to_string(&page).expect("serializes");
        assert_eq!(json, r#"{"entries":[{"seq":3,"target":{"module":"example.com/a"}}],"last":3}"#);
        let back: LogPage = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.entries[0].target, Target::Module("example.com/a".into()));
    }
}
