//! Module paths and versions, checked and escaped exactly as
//! golang.org/x/mod/module does it.
//!
//! Escaping exists because module paths are case-sensitive while many file
//! systems and URL caches are not: `github.com/Azure` becomes
//! `github.com/!azure`, so two paths that differ only in case never share a
//! file or a cache key.

use std::fmt;

use crate::semver;

/// Why a module path, file path or version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind} {value:?}: {reason}")]
pub struct PathError {
    pub kind: &'static str,
    pub value: String,
    pub reason: String,
}

fn err(kind: &'static str, value: &str, reason: impl Into<String>) -> PathError {
    PathError { kind, value: value.to_string(), reason: reason.into() }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Module,
    Import,
    File,
}

fn first_path_ok(c: char) -> bool {
    c == '-' || c == '.' || c.is_ascii_digit() || c.is_ascii_lowercase()
}

fn mod_path_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

fn import_path_ok(c: char) -> bool {
    mod_path_ok(c) || c == '+'
}

fn file_name_ok(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || "!#$%&()+,-.=@[]^_{}~ ".contains(c)
    } else {
        c.is_alphabetic()
    }
}

const BAD_WINDOWS_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2",
    "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

fn check_path_kind(path: &str, kind: PathKind) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty string".into());
    }
    if path.starts_with('-') && kind != PathKind::File {
        return Err("leading dash".into());
    }
    if path.contains("//") {
        return Err("double slash".into());
    }
    if path.ends_with('/') {
        return Err("trailing slash".into());
    }
    path.split('/').try_for_each(|elem| check_elem(elem, kind))
}

fn check_elem(elem: &str, kind: PathKind) -> Result<(), String> {
    if elem.is_empty() {
        return Err("empty path element".into());
    }
    if elem.bytes().all(|c| c == b'.') {
        return Err(format!("invalid path element {elem:?}"));
    }
    if elem.starts_with('.') && kind == PathKind::Module {
        return Err("leading dot in path element".into());
    }
    if elem.ends_with('.') {
        return Err("trailing dot in path element".into());
    }
    let ok = match kind {
        PathKind::Module => mod_path_ok,
        PathKind::Import => import_path_ok,
        PathKind::File => file_name_ok,
    };
    if let Some(c) = elem.chars().find(|c| !ok(*c)) {
        return Err(format!("invalid char {c:?}"));
    }
    let short = elem.split('.').next().unwrap_or(elem);
    if BAD_WINDOWS_NAMES.iter().any(|bad| bad.eq_ignore_ascii_case(short)) {
        return Err(format!("{short:?} disallowed as path element component on Windows"));
    }
    if kind == PathKind::File {
        return Ok(());
    }
    if let Some(tilde) = short.rfind('~') {
        let suffix = &short[tilde + 1..];
        if !suffix.is_empty() && suffix.bytes().all(|c| c.is_ascii_digit()) {
            return Err("trailing tilde and digits in path element".into());
        }
    }
    Ok(())
}

/// Checks a module path as x/mod's `CheckPath`.
pub fn check_path(path: &str) -> Result<(), PathError> {
    let fail = |r: String| err("module path", path, r);
    check_path_kind(path, PathKind::Module).map_err(fail)?;
    let first = path.split('/').next().unwrap_or("");
    if first.is_empty() {
        return Err(fail("leading slash".into()));
    }
    if !first.contains('.') {
        return Err(fail("missing dot in first path element".into()));
    }
    if let Some(c) = first.chars().find(|c| !first_path_ok(*c)) {
        return Err(fail(format!("invalid char {c:?} in first path element")));
    }
    if split_path_version(path).is_none() {
        return Err(fail("invalid version".into()));
    }
    Ok(())
}

/// Checks an import path as x/mod's `CheckImportPath`.
pub fn check_import_path(path: &str) -> Result<(), PathError> {
    check_path_kind(path, PathKind::Import).map_err(|r| err("import path", path, r))
}

/// Checks a file path inside a module zip as x/mod's `CheckFilePath`.
pub fn check_file_path(path: &str) -> Result<(), PathError> {
    check_path_kind(path, PathKind::File).map_err(|r| err("file path", path, r))
}

/// Splits `path` into its prefix and major version suffix (`/v2`, or `.v2`
/// for gopkg.in). `None` when the suffix is malformed (`/v0`, `/v1`, `/v2.0`).
pub fn split_path_version(path: &str) -> Option<(&str, &str)> {
    if path.starts_with("gopkg.in/") {
        return split_gopkg_in(path);
    }
    let b = path.as_bytes();
    let mut i = b.len();
    let mut dot = false;
    while i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.') {
        dot |= b[i - 1] == b'.';
        i -= 1;
    }
    if i <= 1 || i == b.len() || b[i - 1] != b'v' || b[i - 2] != b'/' {
        return Some((path, ""));
    }
    let (prefix, major) = path.split_at(i - 2);
    if dot || major.len() <= 2 || major.as_bytes()[2] == b'0' || major == "/v1" {
        return None;
    }
    Some((prefix, major))
}

fn split_gopkg_in(path: &str) -> Option<(&str, &str)> {
    let b = path.as_bytes();
    let mut i = b.len();
    if path.ends_with("-unstable") {
        i -= "-unstable".len();
    }
    while i > 0 && b[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i <= 1 || b[i - 1] != b'v' || b[i - 2] != b'.' {
        return None;
    }
    let (prefix, major) = path.split_at(i - 2);
    if major.len() <= 2 || (major.as_bytes()[2] == b'0' && major != ".v0") {
        return None;
    }
    Some((prefix, major))
}

/// Checks that version `v` is allowed for a path with major suffix
/// `path_major` (x/mod's `CheckPathMajor`).
pub fn check_path_major(v: &str, path_major: &str) -> Result<(), String> {
    let mut pm = path_major;
    if pm.starts_with(".v") {
        pm = pm.strip_suffix("-unstable").unwrap_or(pm);
    }
    if v.starts_with("v0.0.0-") && pm == ".v1" {
        return Ok(());
    }
    let m = semver::major(v).unwrap_or("");
    let want = if pm.is_empty() {
        if m == "v0" || m == "v1" || semver::build(v) == "+incompatible" {
            return Ok(());
        }
        "v0 or v1"
    } else {
        if m == &pm[1..] {
            return Ok(());
        }
        &pm[1..]
    };
    Err(format!("should be {want}, not {m}"))
}

/// Checks a module path and version together (x/mod's `Check`).
pub fn check(path: &str, version: &str) -> Result<(), PathError> {
    check_path(path)?;
    if !semver::is_valid(version) {
        return Err(err("version", version, "not a semantic version"));
    }
    let (_, major) = split_path_version(path).unwrap_or((path, ""));
    check_path_major(version, major).map_err(|r| err("version", version, r))
}

/// Escapes a module path (`EscapePath`): checks it, then writes each upper
/// case letter as `!` and its lower case.
pub fn escape_path(path: &str) -> Result<String, PathError> {
    check_path(path)?;
    escape_string(path).ok_or_else(|| err("module path", path, "internal error: inconsistency in EscapePath"))
}

/// Escapes a version (`EscapeVersion`).
pub fn escape_version(v: &str) -> Result<String, PathError> {
    check_elem(v, PathKind::File).map_err(|r| err("version", v, r))?;
    if v.contains('!') {
        return Err(err("version", v, "disallowed version string"));
    }
    // A file-path element may hold non-ASCII letters; an escaped one never
    // does (x/mod's escapeString refuses them, found here by fuzzing).
    escape_string(v).ok_or_else(|| err("version", v, "disallowed version string"))
}

/// `!`-escapes upper case; `None` for non-ASCII (or `!`), which no escaped
/// form may carry.
fn escape_string(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c == '!' || !c.is_ascii() {
            return None;
        }
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Reverses [`escape_path`]; refuses upper case, a dangling or misplaced `!`,
/// and anything that is not a valid module path once unescaped.
pub fn unescape_path(escaped: &str) -> Result<String, PathError> {
    let path = unescape_string(escaped).ok_or_else(|| err("escaped module path", escaped, "invalid escaping"))?;
    check_path(&path)?;
    Ok(path)
}

/// Reverses [`escape_version`].
pub fn unescape_version(escaped: &str) -> Result<String, PathError> {
    let v = unescape_string(escaped).ok_or_else(|| err("escaped version", escaped, "invalid escaping"))?;
    check_elem(&v, PathKind::File).map_err(|r| err("version", &v, r))?;
    Ok(v)
}

fn unescape_string(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut bang = false;
    for c in escaped.chars() {
        if !c.is_ascii() {
            return None;
        }
        if bang {
            bang = false;
            if !c.is_ascii_lowercase() {
                return None;
            }
            out.push(c.to_ascii_uppercase());
        } else if c == '!' {
            bang = true;
        } else if c.is_ascii_uppercase() {
            return None;
        } else {
            out.push(c);
        }
    }
    (!bang).then_some(out)
}

/// A checked module path, with its escaped form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModulePath {
    path: String,
    escaped: String,
}

impl ModulePath {
    pub fn new(path: &str) -> Result<Self, PathError> {
        Ok(Self { escaped: escape_path(path)?, path: path.to_string() })
    }
    /// From the escaped form found in a URL.
    pub fn from_escaped(escaped: &str) -> Result<Self, PathError> {
        Ok(Self { path: unescape_path(escaped)?, escaped: escaped.to_string() })
    }
    pub fn as_str(&self) -> &str {
        &self.path
    }
    pub fn escaped(&self) -> &str {
        &self.escaped
    }
    /// The major version suffix (`/v2`, `.v2`) or `""`.
    pub fn major_suffix(&self) -> &str {
        split_path_version(&self.path).map(|(_, m)| m).unwrap_or("")
    }
}

/// Where the ring places a request: a module's escaped path (so every
/// artifact of a module goes to one origin, and `github.com/Azure/x` is
/// placed the same by the edge, the hot-set owner lookup and
/// `modcdn-router lookup`), or `sumdb/<name>` for a checksum database. Built
/// only from a checked module path (or a [`crate::Request`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoutingKey(String);

impl RoutingKey {
    pub fn of(module: &ModulePath) -> RoutingKey {
        RoutingKey(module.escaped.clone())
    }
    /// A checksum database's key (its name is checked by the request parser).
    pub(crate) fn sumdb(name: &crate::request::SumDbName) -> RoutingKey {
        RoutingKey(format!("sumdb/{}", name.as_str()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// A checked version string with its escaped form. It is a safe single file
/// name element, but not necessarily canonical semver (it may be a query).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    version: String,
    escaped: String,
}

impl Version {
    pub fn new(v: &str) -> Result<Self, PathError> {
        Ok(Self { escaped: escape_version(v)?, version: v.to_string() })
    }
    pub fn from_escaped(escaped: &str) -> Result<Self, PathError> {
        let version = unescape_version(escaped)?;
        Ok(Self { escaped: escape_version(&version)?, version })
    }
    pub fn as_str(&self) -> &str {
        &self.version
    }
    pub fn escaped(&self) -> &str {
        &self.escaped
    }
    /// Whether this is the canonical spelling of a module version.
    pub fn is_canonical(&self) -> bool {
        semver::canonical_module_version(&self.version).as_deref() == Some(self.version.as_str())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // x/mod module_test.go checkTests: (path, version, ok).
    const CHECK: &[(&str, &str, bool)] = &[
        ("rsc.io/quote", "0.1.0", false),
        ("rsc io/quote", "v1.0.0", false),
        ("github.com/go-yaml/yaml", "v0.8.0", true),
        ("github.com/go-yaml/yaml", "v1.0.0", true),
        ("github.com/go-yaml/yaml", "v2.0.0", false),
        ("github.com/go-yaml/yaml", "v2.1.5", false),
        ("github.com/go-yaml/yaml", "v3.0.0", false),
        ("github.com/go-yaml/yaml/v2", "v1.0.0", false),
        ("github.com/go-yaml/yaml/v2", "v2.0.0", true),
        ("github.com/go-yaml/yaml/v2", "v2.1.5", true),
        ("github.com/go-yaml/yaml/v2", "v3.0.0", false),
        ("gopkg.in/yaml.v0", "v0.8.0", true),
        ("gopkg.in/yaml.v0", "v1.0.0", false),
        ("gopkg.in/yaml.v0", "v2.0.0", false),
        ("gopkg.in/yaml.v0", "v2.1.5", false),
        ("gopkg.in/yaml.v0", "v3.0.0", false),
        ("gopkg.in/yaml.v1", "v0.8.0", false),
        ("gopkg.in/yaml.v1", "v1.0.0", true),
        ("gopkg.in/yaml.v1", "v2.0.0", false),
        ("gopkg.in/yaml.v1", "v2.1.5", false),
        ("gopkg.in/yaml.v1", "v3.0.0", false),
        ("gopkg.in/check.v1", "v0.0.0", false),
        ("gopkg.in/check.v1", "v0.0.0-20160102150405-abcdef123456", true),
        ("gopkg.in/yaml.v2", "v1.0.0", false),
        ("gopkg.in/yaml.v2", "v2.0.0", true),
        ("gopkg.in/yaml.v2", "v2.1.5", true),
        ("gopkg.in/yaml.v2", "v3.0.0", false),
        ("rsc.io/quote", "v17.0.0", false),
        ("rsc.io/quote", "v17.0.0+incompatible", true),
    ];

    #[test]
    fn check_matches_x_mod() {
        for (path, version, ok) in CHECK {
            assert_eq!(check(path, version).is_ok(), *ok, "check({path}, {version})");
        }
    }

    // x/mod module_test.go checkPathTests: (path, module ok, import ok, file ok).
    const CHECK_PATH: &[(&str, bool, bool, bool)] = &[
        ("x.y/z", true, true, true),
        ("x.y", true, true, true),
        ("", false, false, false),
        ("/x.y/z", false, false, false),
        ("x./z", false, false, false),
        (".x/z", false, true, true),
        ("-x/z", false, false, true),
        ("x..y/z", true, true, true),
        ("x.y/z/../../w", false, false, false),
        ("x.y//z", false, false, false),
        ("x.y/z//w", false, false, false),
        ("x.y/z/", false, false, false),
        ("x.y/z/v0", false, true, true),
        ("x.y/z/v1", false, true, true),
        ("x.y/z/v2", true, true, true),
        ("x.y/z/v2.0", false, true, true),
        ("X.y/z", false, true, true),
        ("!x.y/z", false, false, true),
        ("_x.y/z", false, true, true),
        ("x.y!/z", false, false, true),
        ("x.y\"/z", false, false, false),
        ("x.y#/z", false, false, true),
        ("x.y$/z", false, false, true),
        ("x.y%/z", false, false, true),
        ("x.y&/z", false, false, true),
        ("x.y'/z", false, false, false),
        ("x.y(/z", false, false, true),
        ("x.y)/z", false, false, true),
        ("x.y*/z", false, false, false),
        ("x.y+/z", false, true, true),
        ("x.y,/z", false, false, true),
        ("x.y-/z", true, true, true),
        ("x.y./zt", false, false, false),
        ("x.y:/z", false, false, false),
        ("x.y;/z", false, false, false),
        ("x.y</z", false, false, false),
        ("x.y=/z", false, false, true),
        ("x.y>/z", false, false, false),
        ("x.y?/z", false, false, false),
        ("x.y@/z", false, false, true),
        ("x.y[/z", false, false, true),
        ("x.y\\/z", false, false, false),
        ("x.y]/z", false, false, true),
        ("x.y^/z", false, false, true),
        ("x.y_/z", false, true, true),
        ("x.y`/z", false, false, false),
        ("x.y{/z", false, false, true),
        ("x.y}/z", false, false, true),
        ("x.y~/z", false, true, true),
        ("x.y/z!", false, false, true),
        ("x.y/z\"", false, false, false),
        ("x.y/z#", false, false, true),
        ("x.y/z$", false, false, true),
        ("x.y/z%", false, false, true),
        ("x.y/z&", false, false, true),
        ("x.y/z'", false, false, false),
        ("x.y/z(", false, false, true),
        ("x.y/z)", false, false, true),
        ("x.y/z*", false, false, false),
        ("x.y/z++", false, true, true),
        ("x.y/z,", false, false, true),
        ("x.y/z-", true, true, true),
        ("x.y/z.t", true, true, true),
        ("x.y/z/t", true, true, true),
        ("x.y/z:", false, false, false),
        ("x.y/z;", false, false, false),
        ("x.y/z<", false, false, false),
        ("x.y/z=", false, false, true),
        ("x.y/z>", false, false, false),
        ("x.y/z?", false, false, false),
        ("x.y/z@", false, false, true),
        ("x.y/z[", false, false, true),
        ("x.y/z\\", false, false, false),
        ("x.y/z]", false, false, true),
        ("x.y/z^", false, false, true),
        ("x.y/z_", true, true, true),
        ("x.y/z`", false, false, false),
        ("x.y/z{", false, false, true),
        ("x.y/z}", false, false, true),
        ("x.y/z~", true, true, true),
        ("x.y/x.foo", true, true, true),
        ("x.y/aux.foo", false, false, false),
        ("x.y/prn", false, false, false),
        ("x.y/prn2", true, true, true),
        ("x.y/com", true, true, true),
        ("x.y/com1", false, false, false),
        ("x.y/com1.txt", false, false, false),
        ("x.y/calm1", true, true, true),
        ("x.y/z~", true, true, true),
        ("x.y/z~0", false, false, true),
        ("x.y/z~09", false, false, true),
        ("x.y/z09", true, true, true),
        ("x.y/z09~", true, true, true),
        ("x.y/z09~09z", true, true, true),
        ("x.y/z09~09z~09", false, false, true),
        ("github.com/!123/logrus", false, false, true),
        ("github.com/user/unicode/испытание", false, false, true),
        ("../x", false, false, false),
        ("./y", false, false, false),
        ("x:y", false, false, false),
        ("\\temp\\foo", false, false, false),
        (".gitignore", false, true, true),
        (".github/ISSUE_TEMPLATE", false, true, true),
        ("x☺y", false, false, false),
    ];

    #[test]
    fn check_path_import_file_match_x_mod() {
        for (path, module, import, file) in CHECK_PATH {
            assert_eq!(check_path(path).is_ok(), *module, "check_path({path:?})");
            assert_eq!(check_import_path(path).is_ok(), *import, "check_import_path({path:?})");
            assert_eq!(check_file_path(path).is_ok(), *file, "check_file_path({path:?})");
            let (prefix, major) = split_path_version(path).unwrap_or((path, ""));
            assert!(major.is_empty() || format!("{prefix}{major}") == *path);
        }
    }

    #[test]
    fn split_path_version_matches_x_mod() {
        for (prefix, major) in [
            ("x.y/z", ""),
            ("x.y/z", "/v2"),
            ("x.y/z", "/v3"),
            ("x.y/v", ""),
            ("gopkg.in/yaml", ".v0"),
            ("gopkg.in/yaml", ".v1"),
            ("gopkg.in/yaml", ".v2"),
            ("gopkg.in/yaml", ".v3"),
        ] {
            let whole = format!("{prefix}{major}");
            assert_eq!(split_path_version(&whole), Some((prefix, major)), "{whole}");
        }
    }

    #[test]
    fn escape_and_unescape_match_x_mod() {
        for (path, module_ok, ..) in CHECK_PATH {
            if !module_ok {
                assert!(escape_path(path).is_err(), "escape {path:?}");
                assert!(unescape_path(path).is_err(), "unescape {path:?}");
            }
        }
        let plain = "ascii.com/abcdefghijklmnopqrstuvwxyz.-/~_0123456789";
        assert_eq!(escape_path(plain).as_deref(), Ok(plain));
        assert_eq!(unescape_path(plain).as_deref(), Ok(plain));
        let upper = "github.com/GoogleCloudPlatform/omega";
        let esc = "github.com/!google!cloud!platform/omega";
        assert_eq!(escape_path(upper).as_deref(), Ok(esc));
        assert_eq!(unescape_path(esc).as_deref(), Ok(upper));
        for bad in [
            "github.com/GoogleCloudPlatform/omega",
            "github.com/!google!cloud!platform!/omega",
            "github.com/!0google!cloud!platform/omega",
            "github.com/!_google!cloud!platform/omega",
            "github.com/!!google!cloud!platform/omega",
            "",
        ] {
            assert!(unescape_path(bad).is_err(), "{bad}");
        }
        assert_eq!(escape_version("v1.0.0-RC1").as_deref(), Ok("v1.0.0-!r!c1"));
        assert_eq!(unescape_version("v1.0.0-!r!c1").as_deref(), Ok("v1.0.0-RC1"));
        assert!(escape_version("v1!").is_err());
        assert!(escape_version("a/b").is_err());
        assert!(unescape_version("..").is_err());
    }

    #[test]
    fn match_path_major_as_x_mod() {
        for (v, pm, want) in [
            ("v0.0.0", "", true),
            ("v0.0.0", "/v2", false),
            ("v0.0.0", ".v0", true),
            ("v0.0.0-20190510104115-cbcb75029529", ".v1", true),
            ("v1.0.0", "/v2", false),
            ("v1.0.0", ".v1", true),
            ("v1.0.0", ".v1-unstable", true),
            ("v2.0.0+incompatible", "", true),
            ("v2.0.0", "", false),
            ("v2.0.0", "/v2", true),
            ("v2.0.0", ".v2", true),
        ] {
            assert_eq!(check_path_major(v, pm).is_ok(), want, "{v} {pm}");
        }
    }
}
