//! Checks on what upstream sent, before anything is stored. A failure is a
//! 502 and nothing is kept.

use modcdn_shared::modzip::{MAX_GO_MOD, MAX_ZIP_FILE};
use modcdn_shared::{semver, Kind};
use serde::Deserialize;

/// Largest `.info`, `@latest` or query answer accepted.
pub const MAX_INFO: u64 = 1 << 20;
/// Largest `list` answer accepted.
pub const MAX_LIST: u64 = 16 << 20;

/// The most bytes an upstream answer of `kind` may have.
pub fn size_limit(kind: Kind) -> u64 {
    match kind {
        Kind::Zip => MAX_ZIP_FILE,
        Kind::Mod => MAX_GO_MOD,
        Kind::List => MAX_LIST,
        _ => MAX_INFO,
    }
}

#[derive(Deserialize)]
struct Info {
    #[serde(rename = "Version")]
    version: String,
    #[serde(rename = "Time")]
    time: String,
}

/// An `.info` (or `@latest`, or query answer): JSON with a valid version
/// (`want` when the request named a canonical one) and an RFC 3339 `Time`.
/// Returns the version it names.
pub fn check_info(body: &[u8], want: Option<&str>) -> Result<String, String> {
    let info: Info = serde_json::from_slice(body).map_err(|e| format!(".info is not the expected JSON: {e}"))?;
    match want {
        Some(w) if info.version != w => {
            return Err(format!(".info names version {:?}, not the requested {w:?}", info.version))
        }
        _ => {}
    }
    if semver::canonical_module_version(&info.version).as_deref() != Some(info.version.as_str()) {
        return Err(format!(".info version {:?} is not a canonical version", info.version));
    }
    time::OffsetDateTime::parse(&info.time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!(".info Time {:?} is not RFC 3339: {e}", info.time))?;
    Ok(info.version)
}

/// A go.mod: UTF-8 text whose `module` directive names `module`. Every
/// proxy answer has one (for code without a go.mod, proxies synthesize
/// `module <path>`), so its absence means an error page, not a go.mod.
pub fn check_mod(body: &[u8], module: &str) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "go.mod is not UTF-8 text".to_string())?;
    match module_directive(text) {
        Some(declared) if declared == module => Ok(()),
        Some(declared) => Err(format!("go.mod declares module {declared:?}, not {module:?}")),
        None => Err("go.mod has no module directive".to_string()),
    }
}

/// The path of the first `module` directive (`module x`, `module "x"`,
/// `module x // comment`, or the block form's first entry).
fn module_directive(text: &str) -> Option<String> {
    let mut lines = text.lines().map(|l| l.split("//").next().unwrap_or("").trim());
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("module") else { continue };
        if !rest.is_empty() && !rest.starts_with([' ', '\t', '(']) {
            continue;
        }
        let rest = rest.trim();
        let arg = if rest == "(" { lines.by_ref().find(|l| !l.is_empty())? } else { rest };
        return Some(arg.trim_matches(|c| c == '"' || c == '`').to_string());
    }
    None
}

/// A checksum-database answer: `latest` is a signed note and `lookup` a
/// record followed by one (text); tiles are binary hashes or record text.
/// The go command verifies signatures and proofs itself; this refuses what
/// cannot be one (an error page instead of a note).
pub fn check_sumdb(endpoint: &modcdn_shared::request::SumDbEndpoint, body: &[u8]) -> Result<(), String> {
    use modcdn_shared::request::SumDbEndpoint;
    match endpoint {
        SumDbEndpoint::Latest | SumDbEndpoint::Lookup { .. } => {
            let text =
                std::str::from_utf8(body).map_err(|_| "checksum database answer is not UTF-8 text".to_string())?;
            // A signed note ends with signature lines "— <name> <base64>".
            if !text.contains("\n\n\u{2014} ") {
                return Err("checksum database answer has no signed note".into());
            }
            Ok(())
        }
        SumDbEndpoint::Tile(_) | SumDbEndpoint::Supported => {
            if body.is_empty() {
                return Err("empty tile".into());
            }
            Ok(())
        }
    }
}

/// A `list`: UTF-8 text, one version per line (optionally followed by more
/// fields). The go command skips lines it cannot read, so a list is refused
/// only when it has text but not a single version: an error page, not a list.
pub fn check_list(body: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "list is not UTF-8 text".to_string())?;
    let mut first_fields = text.lines().filter_map(|l| l.split_whitespace().next()).peekable();
    if first_fields.peek().is_some() && !first_fields.any(semver::is_valid) {
        return Err("list has text but no version".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_checks() {
        let ok = br#"{"Version":"v1.0.0","Time":"2024-01-02T03:04:05Z"}"#;
        assert_eq!(check_info(ok, Some("v1.0.0")), Ok("v1.0.0".into()));
        assert!(check_info(ok, Some("v1.0.1")).is_err());
        assert!(check_info(br#"{"Version":"v1.0.0","Time":"yesterday"}"#, None).is_err());
        assert!(check_info(br#"{"Version":"v1.0","Time":"2024-01-02T03:04:05Z"}"#, None).is_err());
        assert!(check_info(b"<html>", None).is_err());
        assert!(check_info(br#"{"Version":"v1.0.0"}"#, None).is_err());
    }

    #[test]
    fn list_checks() {
        assert!(check_list(b"").is_ok());
        assert!(check_list(b"v1.0.0\nv1.1.0 2024-01-02T03:04:05Z\n").is_ok());
        assert!(check_list(b"<html>\n<body>oops</body>\n").is_err());
        assert!(check_list(&[0xff]).is_err());
    }

    #[test]
    fn mod_checks() {
        assert!(check_mod(b"module example.com/m\n\ngo 1.19\n", "example.com/m").is_ok());
        assert!(check_mod(b"// c\nmodule \"example.com/m\" // x\n", "example.com/m").is_ok());
        assert!(check_mod(b"module (\n\texample.com/m\n)\n", "example.com/m").is_ok());
        assert!(check_mod(b"go 1.19\n", "example.com/m").is_err());
        assert!(check_mod(b"<html><body>Service Unavailable</body></html>\n", "example.com/m").is_err());
        assert!(check_mod(b"module example.com/other\n", "example.com/m").is_err());
        assert!(check_mod(b"modulex example.com/other\nmodule example.com/m\n", "example.com/m").is_ok());
        assert!(check_mod(&[0xff, 0xfe], "example.com/m").is_err());
    }
}
