//! The `require` directives of a go.mod, as much of golang.org/x/mod/modfile
//! as a proxy needs to know what the go command will ask for next.

use crate::{module, semver};

/// Module requirements (`path`, canonical `version`) of a go.mod, in file
/// order. Lines that are not valid requirements are skipped: the go command
/// is the judge of a go.mod, a proxy only looks ahead.
pub fn requires(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap_or("").trim();
        if in_block {
            if line == ")" {
                in_block = false;
            } else {
                push(&mut out, line);
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("require") else { continue };
        let rest = rest.trim();
        if rest == "(" {
            in_block = true;
        } else if rest.len() < line.len() - "require".len() {
            push(&mut out, rest);
        }
    }
    out
}

fn push(out: &mut Vec<(String, String)>, entry: &str) {
    let mut fields = entry.split_whitespace();
    let (Some(path), Some(version)) = (fields.next(), fields.next()) else { return };
    let path = path.trim_matches('"');
    if module::check(path, version).is_ok() && semver::canonical_module_version(version).as_deref() == Some(version) {
        out.push((path.to_string(), version.to_string()));
    }
}

/// What a go.sum line records: a module version's zip (`go_mod_only =
/// false`) or only its go.mod (`<version>/go.mod`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumEntry {
    pub path: String,
    pub version: String,
    pub go_mod_only: bool,
}

/// The entries of a go.sum (`<path> <version>[/go.mod] h1:<hash>`), in file
/// order, skipping malformed lines.
pub fn sum_entries(text: &str) -> Vec<SumEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(path), Some(ver), Some(hash)) = (f.next(), f.next(), f.next()) else { continue };
        if !hash.starts_with("h1:") {
            continue;
        }
        let (version, go_mod_only) = match ver.strip_suffix("/go.mod") {
            Some(v) => (v, true),
            None => (ver, false),
        };
        if module::check(path, version).is_ok() {
            out.push(SumEntry { path: path.to_string(), version: version.to_string(), go_mod_only });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_sum_lines() {
        let text = "example.com/a v1.0.0 h1:abc=\nexample.com/a v1.0.0/go.mod h1:def=\nbroken line\nexample.com/b/v2 v2.0.0/go.mod h1:x=\nexample.com/c v1.0.0 sha256:nope\n";
        assert_eq!(
            sum_entries(text),
            vec![
                SumEntry { path: "example.com/a".into(), version: "v1.0.0".into(), go_mod_only: false },
                SumEntry { path: "example.com/a".into(), version: "v1.0.0".into(), go_mod_only: true },
                SumEntry { path: "example.com/b/v2".into(), version: "v2.0.0".into(), go_mod_only: true },
            ]
        );
    }

    #[test]
    fn single_lines_blocks_comments_and_junk() {
        let text = "module example.com/m\n\ngo 1.19\n\nrequire example.com/a v1.0.0\nrequire (\n\texample.com/b/v2 v2.1.0 // indirect\n\t\"example.com/c\" v0.0.0-20240102030405-abcdef123456\n\n\tnot a requirement\n\texample.com/d v1.2\n)\nrequirement example.com/x v1.0.0\nreplace example.com/a => ../a\n";
        assert_eq!(
            requires(text),
            vec![
                ("example.com/a".to_string(), "v1.0.0".to_string()),
                ("example.com/b/v2".to_string(), "v2.1.0".to_string()),
                ("example.com/c".to_string(), "v0.0.0-20240102030405-abcdef123456".to_string()),
            ]
        );
        assert!(requires("<html>").is_empty());
    }
}
