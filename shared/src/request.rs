//! The GOPROXY protocol request, parsed once from the URL path.
//!
//! Every endpoint of <https://go.dev/ref/mod#goproxy-protocol> is a variant of
//! [`Request`]. Parsing checks module paths and versions with the rules of
//! [`crate::module`], so nothing a client sends can name a file outside the
//! store: no `..`, no empty elements, no backslashes, no NUL, no
//! percent-encoded separators.

use crate::module::{self, ModulePath, PathError, Version};
use crate::semver;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `<module>/@v/list`
    List(ModulePath),
    /// `<module>/@latest`
    Latest(ModulePath),
    /// `<module>/@v/<version>.info` for a canonical version.
    Info(ModulePath, Version),
    /// `<module>/@v/<query>.info` for a branch, commit or non-canonical version.
    Query(ModulePath, Version),
    /// `<module>/@v/<version>.mod`
    Mod(ModulePath, Version),
    /// `<module>/@v/<version>.zip`
    Zip(ModulePath, Version),
    /// `sumdb/<name>/<endpoint>`
    SumDb(SumDb),
}

/// A checksum-database request, as parsed: nobody splits its path again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumDb {
    pub name: SumDbName,
    pub endpoint: SumDbEndpoint,
}

/// The parts of the checksum-database protocol a proxy passes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SumDbEndpoint {
    /// `supported`: whether the proxy passes this database through.
    Supported,
    /// `latest`: the signed tree head.
    Latest,
    /// `lookup/<module>@<version>`: a module version's record.
    Lookup { module: ModulePath, version: Version },
    /// `tile/...`: a tile of the log's hashes or records, canonical only.
    Tile(crate::tlog::TilePath),
}

impl SumDbEndpoint {
    /// The path below `sumdb/<name>/`, as the database serves it.
    pub fn path(&self) -> String {
        match self {
            SumDbEndpoint::Supported => "supported".into(),
            SumDbEndpoint::Latest => "latest".into(),
            SumDbEndpoint::Lookup { module, version } => format!("lookup/{}@{}", module.escaped(), version.escaped()),
            SumDbEndpoint::Tile(tile) => tile.path(),
        }
    }
}

/// A checksum database's name, as in GOSUMDB (`sum.golang.org`): a host
/// name, so it can be neither a path nor a file name of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SumDbName(String);

impl SumDbName {
    /// Letters, digits, `.` and `-`, with at least one dot.
    pub fn parse(name: &str) -> Result<SumDbName, String> {
        match name.contains('.') && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-') {
            true => Ok(SumDbName(name.to_string())),
            false => Err(format!("{name:?} is not a checksum database name (a host name)")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Request kinds, for the policy table, metrics and content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    List,
    Latest,
    Info,
    Query,
    Mod,
    Zip,
    SumDbSupported,
    SumDbLatest,
    SumDbLookup,
    SumDbTile,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::List,
        Kind::Latest,
        Kind::Info,
        Kind::Query,
        Kind::Mod,
        Kind::Zip,
        Kind::SumDbSupported,
        Kind::SumDbLatest,
        Kind::SumDbLookup,
        Kind::SumDbTile,
    ];

    /// A short stable name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::List => "list",
            Kind::Latest => "latest",
            Kind::Info => "info",
            Kind::Query => "query",
            Kind::Mod => "mod",
            Kind::Zip => "zip",
            Kind::SumDbSupported => "sumdb_supported",
            Kind::SumDbLatest => "sumdb_latest",
            Kind::SumDbLookup => "sumdb_lookup",
            Kind::SumDbTile => "sumdb_tile",
        }
    }

    /// The `Content-Type` of a successful answer.
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Info | Kind::Query | Kind::Latest => "application/json",
            Kind::Zip => "application/zip",
            Kind::SumDbTile => "application/octet-stream",
            _ => "text/plain; charset=utf-8",
        }
    }
}

/// Why a path was refused. Each variant has one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("bad request path: {0}")]
    Malformed(String),
    #[error(transparent)]
    Path(#[from] PathError),
    /// A well-formed version that cannot exist for this module path
    /// (`v2.0.0` of a path without `/v2`): the version is simply not there.
    #[error("not found: {module}@{version}: invalid version: {reason}")]
    ImpossibleVersion { module: String, version: String, reason: String },
    /// Longer than any module path needs, and than a store may name.
    #[error("request path too long: {0} bytes, at most {MAX_PATH} are served")]
    TooLong(usize),
}

/// The longest request path served: far above real module paths, and short
/// enough that every store key stays within the file system's path limit
/// under any store directory.
pub const MAX_PATH: usize = 2048;

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::ImpossibleVersion { .. } => 404,
            RequestError::TooLong(_) => 414,
            _ => 400,
        }
    }
}

fn malformed(msg: impl Into<String>) -> RequestError {
    RequestError::Malformed(msg.into())
}

/// Decodes percent-escapes, refusing any that would hide a separator, a dot,
/// a control byte or non-ASCII: the GOPROXY protocol never needs them, so
/// they can only be tricks.
fn percent_decode(path: &str) -> Result<String, RequestError> {
    if !path.contains('%') {
        return Ok(path.to_string());
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3).ok_or_else(|| malformed("truncated percent-escape"))?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| malformed("invalid percent-escape"))?;
            if !(b.is_ascii_alphanumeric() || b"!+-_~@".contains(&b)) {
                return Err(malformed(format!("percent-escape %{hex} is not allowed")));
            }
            out.push(b as char);
            i += 3;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    Ok(out)
}

impl Request {
    /// Parses a URL path such as `/github.com/!azure/sdk/@v/v1.2.3.zip`.
    /// A query string must already be stripped.
    pub fn parse(raw: &str) -> Result<Request, RequestError> {
        if raw.len() > MAX_PATH {
            return Err(RequestError::TooLong(raw.len()));
        }
        if raw.bytes().any(|b| b == 0 || b == b'\\' || !(0x20..0x7f).contains(&b)) {
            return Err(malformed("path has a NUL, backslash, control or non-ASCII byte"));
        }
        let decoded = percent_decode(raw)?;
        let path = decoded.strip_prefix('/').ok_or_else(|| malformed("path must start with /"))?;
        if path.split('/').any(|e| e.is_empty() || e == "." || e == "..") {
            return Err(malformed("empty, '.' or '..' path element"));
        }
        if let Some(rest) = path.strip_prefix("sumdb/") {
            return parse_sumdb(rest);
        }
        if let Some(module) = path.strip_suffix("/@latest") {
            return Ok(Request::Latest(ModulePath::from_escaped(module)?));
        }
        let (module, file) = path.rsplit_once("/@v/").ok_or_else(|| malformed("expected /@v/ or /@latest"))?;
        let module = ModulePath::from_escaped(module)?;
        if file == "list" {
            return Ok(Request::List(module));
        }
        let (ver, ext) = file.rsplit_once('.').ok_or_else(|| malformed(format!("unknown file {file:?}")))?;
        let version = Version::from_escaped(ver)?;
        if ver.starts_with('.') {
            // No Go version or query starts with a dot; refusing it keeps
            // every key clear of hidden and temporary file names.
            return Err(malformed(format!("invalid version {ver:?}")));
        }
        let canonical = version.is_canonical();
        let check_major = |version: &Version| -> Result<(), RequestError> {
            module::check_path_major(version.as_str(), module.major_suffix()).map_err(|reason| {
                RequestError::ImpossibleVersion { module: module.to_string(), version: version.to_string(), reason }
            })
        };
        match ext {
            "info" if canonical => {
                check_major(&version)?;
                Ok(Request::Info(module, version))
            }
            "info" => Ok(Request::Query(module, version)),
            "mod" | "zip" if !canonical => Err(malformed(format!(
                "version {version:?} is not canonical (want {:?})",
                semver::canonical_module_version(version.as_str()).unwrap_or_default()
            ))),
            "mod" | "zip" => {
                check_major(&version)?;
                Ok(if ext == "mod" { Request::Mod(module, version) } else { Request::Zip(module, version) })
            }
            _ => Err(malformed(format!("unknown file extension {ext:?}"))),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Request::List(_) => Kind::List,
            Request::Latest(_) => Kind::Latest,
            Request::Info(..) => Kind::Info,
            Request::Query(..) => Kind::Query,
            Request::Mod(..) => Kind::Mod,
            Request::Zip(..) => Kind::Zip,
            Request::SumDb(db) => match db.endpoint {
                SumDbEndpoint::Supported => Kind::SumDbSupported,
                SumDbEndpoint::Latest => Kind::SumDbLatest,
                SumDbEndpoint::Lookup { .. } => Kind::SumDbLookup,
                SumDbEndpoint::Tile(_) => Kind::SumDbTile,
            },
        }
    }

    pub fn module(&self) -> Option<&ModulePath> {
        match self {
            Request::List(m) | Request::Latest(m) => Some(m),
            Request::Info(m, _) | Request::Query(m, _) | Request::Mod(m, _) | Request::Zip(m, _) => Some(m),
            Request::SumDb(_) => None,
        }
    }

    pub fn version(&self) -> Option<&Version> {
        match self {
            Request::Info(_, v) | Request::Query(_, v) | Request::Mod(_, v) | Request::Zip(_, v) => Some(v),
            _ => None,
        }
    }

    /// Where the ring places this request.
    pub fn routing_key(&self) -> crate::module::RoutingKey {
        use crate::module::RoutingKey;
        match self {
            Request::SumDb(db) => RoutingKey::sumdb(&db.name),
            Request::List(m) | Request::Latest(m) => RoutingKey::of(m),
            Request::Info(m, _) | Request::Query(m, _) | Request::Mod(m, _) | Request::Zip(m, _) => RoutingKey::of(m),
        }
    }

    /// The escaped path relative to a GOPROXY root, without a leading `/`.
    /// It is the key of the artifact in every store and cache, and the path
    /// asked of upstream proxies.
    pub fn key(&self) -> String {
        match self {
            Request::List(m) => format!("{}/@v/list", m.escaped()),
            Request::Latest(m) => format!("{}/@latest", m.escaped()),
            Request::Info(m, v) | Request::Query(m, v) => format!("{}/@v/{}.info", m.escaped(), v.escaped()),
            Request::Mod(m, v) => format!("{}/@v/{}.mod", m.escaped(), v.escaped()),
            Request::Zip(m, v) => format!("{}/@v/{}.zip", m.escaped(), v.escaped()),
            Request::SumDb(db) => format!("sumdb/{}/{}", db.name.as_str(), db.endpoint.path()),
        }
    }
}

fn parse_sumdb(path: &str) -> Result<Request, RequestError> {
    let (name, rest) = path.split_once('/').ok_or_else(|| malformed("sumdb path needs a name and an endpoint"))?;
    let name = SumDbName::parse(name).map_err(malformed)?;
    let endpoint = if rest == "supported" {
        SumDbEndpoint::Supported
    } else if rest == "latest" {
        SumDbEndpoint::Latest
    } else if let Some(lookup) = rest.strip_prefix("lookup/") {
        let (m, v) = lookup.rsplit_once('@').ok_or_else(|| malformed("sumdb lookup needs module@version"))?;
        SumDbEndpoint::Lookup { module: ModulePath::from_escaped(m)?, version: Version::from_escaped(v)? }
    } else if let Some(tile) = rest.strip_prefix("tile/") {
        // tile/H/L/[xNNN/]*NNN[.p/W] or tile/H/data/..., canonical only.
        let parsed =
            crate::tlog::TilePath::parse(rest).map_err(|_| malformed(format!("invalid tile path {tile:?}")))?;
        SumDbEndpoint::Tile(parsed)
    } else {
        return Err(malformed(format!("unknown sumdb endpoint {rest:?}")));
    };
    Ok(Request::SumDb(SumDb { name, endpoint }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_endpoint() {
        let cases = [
            ("/github.com/!azure/go/@v/list", Kind::List, "github.com/!azure/go/@v/list"),
            ("/example.com/m/@latest", Kind::Latest, "example.com/m/@latest"),
            ("/example.com/m/@v/v1.2.3.info", Kind::Info, "example.com/m/@v/v1.2.3.info"),
            ("/example.com/m/@v/master.info", Kind::Query, "example.com/m/@v/master.info"),
            ("/example.com/m/@v/v1.2.info", Kind::Query, "example.com/m/@v/v1.2.info"),
            ("/example.com/m/@v/v1.0.0-!r!c1.mod", Kind::Mod, "example.com/m/@v/v1.0.0-!r!c1.mod"),
            ("/example.com/m/@v/v3.0.0+incompatible.zip", Kind::Zip, "example.com/m/@v/v3.0.0+incompatible.zip"),
            ("/example.com/m/v2/@v/v2.0.1.zip", Kind::Zip, "example.com/m/v2/@v/v2.0.1.zip"),
            ("/gopkg.in/yaml.v2/@v/v2.4.0.mod", Kind::Mod, "gopkg.in/yaml.v2/@v/v2.4.0.mod"),
            ("/example.com/m/@v/v3.0.0%2Bincompatible.zip", Kind::Zip, "example.com/m/@v/v3.0.0+incompatible.zip"),
            ("/sumdb/sum.golang.org/supported", Kind::SumDbSupported, "sumdb/sum.golang.org/supported"),
            ("/sumdb/sum.golang.org/latest", Kind::SumDbLatest, "sumdb/sum.golang.org/latest"),
            (
                "/sumdb/sum.golang.org/lookup/example.com/m@v1.0.0",
                Kind::SumDbLookup,
                "sumdb/sum.golang.org/lookup/example.com/m@v1.0.0",
            ),
            (
                "/sumdb/sum.golang.org/tile/8/0/x001/234.p/5",
                Kind::SumDbTile,
                "sumdb/sum.golang.org/tile/8/0/x001/234.p/5",
            ),
            ("/sumdb/sum.golang.org/tile/8/data/000", Kind::SumDbTile, "sumdb/sum.golang.org/tile/8/data/000"),
        ];
        for (path, kind, key) in cases {
            let r = Request::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(r.kind(), kind, "{path}");
            assert_eq!(r.key(), key, "{path}");
        }
        let r = Request::parse("/github.com/!azure/go/@v/v1.0.0-!r!c1.info").expect("valid");
        assert_eq!(r.module().map(|m| m.as_str()), Some("github.com/Azure/go"));
        assert_eq!(r.version().map(|v| v.as_str()), Some("v1.0.0-RC1"));
    }

    #[test]
    fn checksum_database_requests_keep_what_was_checked() {
        let parse = |p: &str| match Request::parse(p) {
            Ok(Request::SumDb(db)) => db,
            other => panic!("{p}: {other:?}"),
        };
        let db = parse("/sumdb/sum.golang.org/lookup/github.com/!azure/sdk@v1.0.0");
        assert_eq!(db.name.as_str(), "sum.golang.org");
        match &db.endpoint {
            SumDbEndpoint::Lookup { module, version } => {
                assert_eq!((module.as_str(), version.as_str()), ("github.com/Azure/sdk", "v1.0.0"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(db.endpoint.path(), "lookup/github.com/!azure/sdk@v1.0.0");
        let tile = parse("/sumdb/sum.golang.org/tile/8/1/x001/234.p/5");
        assert!(matches!(tile.endpoint, SumDbEndpoint::Tile(t) if t.tile.h == 8 && t.tile.l == 1 && t.tile.w == 5));
        assert_eq!(Request::SumDb(tile).key(), "sumdb/sum.golang.org/tile/8/1/x001/234.p/5");
        assert_eq!(parse("/sumdb/sum.golang.org/supported").endpoint, SumDbEndpoint::Supported);
        assert!(SumDbName::parse("sum.golang.org").is_ok());
        for bad in ["localhost", "sum_golang.org", "a/b.org", ""] {
            assert!(SumDbName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_malformed_and_tricks_with_400() {
        for path in [
            "",
            "no-slash",
            "/",
            "/example.com/m",
            "/example.com/m/@v/",
            "/example.com/m/@v/v1.0.0",
            "/example.com/m/@v/v1.0.0.tar",
            "/example.com/../etc/@v/list",
            "/example.com/./m/@v/list",
            "/example.com//m/@v/list",
            "/example.com/m/@v/..info",
            "/example.com/m/@v/../../x.info",
            "/example.com\\m/@v/list",
            "/example.com/m\0/@v/list",
            "/example.com/%2e%2e/@v/list",
            "/example.com/m%2F..%2F../@v/list",
            "/example.com/m/@v/v1.0.0%00.zip",
            "/example.com/m/@v/%zz.info",
            "/example.com/m/@v/v1.0.0.%",
            "/Example.com/m/@v/list",
            "/github.com/!!x/@v/list",
            "/example.com/m/@v/v1.0.mod",
            "/example.com/m/@v/master.zip",
            "/example.com/m/@v/v1.0.0+meta.zip",
            "/example.com/m/@v/a!.info",
            "/example.com/m/@v/.tmp-x.info",
            "/example.com/m/@v/.hidden.info",
            "/sumdb/sum.golang.org/bogus",
            "/sumdb/../supported",
            "/sumdb/sum.golang.org/tile/8/0/../../x",
            "/sumdb/sum.golang.org/lookup/nodot",
            // Tile heights, levels, widths and numbers past what the
            // protocol allows, and non-canonical spellings of good ones.
            "/sumdb/sum.golang.org/tile/99/0/000",
            "/sumdb/sum.golang.org/tile/0/0/000",
            "/sumdb/sum.golang.org/tile/8/64/000",
            "/sumdb/sum.golang.org/tile/8/0/000.p/256",
            "/sumdb/sum.golang.org/tile/8/0/000.p/0",
            "/sumdb/sum.golang.org/tile/8/0/1000",
            "/sumdb/sum.golang.org/tile/8/0/1",
            "/sumdb/sum.golang.org/tile/8/0/x000/001",
            "/sumdb/sum.golang.org/tile/8/0/001/002",
            "/sumdb/sum.golang.org/tile/8/0",
            "/sumdb/sum.golang.org/tile/08/0/000",
            "/sumdb/sum.golang.org/tile/8/0/x999/x999/x999/x999/x999/x999/x999/999",
            "/sumdb/sum.golang.org/tile/8/data/000.p/x",
            "/sumdb/sum.golang.org/lookup/example.com/m@",
            "/sumdb/sum.golang.org/lookup/example.com/m@v1.0.0@v1.0.0",
            "/example.com/ünïcode/@v/list",
        ] {
            match Request::parse(path) {
                Err(e) => assert_eq!(e.status(), 400, "{path}: {e}"),
                Ok(r) => panic!("{path:?} parsed as {r:?}"),
            }
        }
    }

    #[test]
    fn paths_past_the_limit_are_414() {
        let long = format!("/example.com/{}/@v/list", "a".repeat(MAX_PATH));
        assert_eq!(Request::parse(&long).map_err(|e| e.status()), Err(414));
        let fits = format!("/example.com/{}/@v/list", "a".repeat(MAX_PATH - 30));
        assert!(Request::parse(&fits).is_ok());
    }

    /// Random paths from an alphabet of the characters that matter: parsing
    /// never panics, and whatever parses has a key that is a safe relative path.
    #[test]
    fn random_paths_never_panic_and_keys_stay_inside() {
        const ALPHABET: &[&str] = &[
            "/",
            ".",
            "..",
            "@v",
            "@latest",
            "!",
            "%",
            "%2e",
            "%2f",
            "%00",
            "%2B",
            "\\",
            "a",
            "Z",
            "v1",
            ".0",
            "-",
            "+incompatible",
            "example.com",
            "list",
            ".info",
            ".mod",
            ".zip",
            "sumdb",
            "tile",
            "lookup",
            "~",
            "\0",
            "é",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut parsed = 0;
        for _ in 0..200_000 {
            let n = 1 + next() % 12;
            let mut path = String::from("/");
            for _ in 0..n {
                path.push_str(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
            }
            if let Ok(r) = Request::parse(&path) {
                parsed += 1;
                let key = r.key();
                assert!(!key.starts_with('/') && !key.contains('\\') && !key.contains('\0'), "{path} → {key}");
                assert!(key.split('/').all(|e| !e.is_empty() && e != "." && e != ".."), "{path} → {key}");
            }
        }
        assert!(parsed > 0, "the alphabet should produce some valid paths");
    }

    #[test]
    fn impossible_major_is_404() {
        let e = Request::parse("/example.com/m/@v/v2.0.0.zip").expect_err("v2 without /v2");
        assert_eq!(e.status(), 404);
        let e = Request::parse("/example.com/m/v2/@v/v1.0.0.mod").expect_err("v1 with /v2");
        assert_eq!(e.status(), 404);
        assert!(Request::parse("/example.com/m/@v/v2.0.0+incompatible.zip").is_ok());
    }
}
