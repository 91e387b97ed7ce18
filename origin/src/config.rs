//! The origin's config file (see `default.toml` beside this crate, which is
//! embedded and documents every key with its default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use modcdn_shared::config::{self, ConfigError, LogConfig, TtlConfig, Validate};
use modcdn_shared::policy::Ttls;
use serde::Deserialize;

use crate::upstream::Chain;

/// The embedded default config.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "MODCDN_ORIGIN";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// Listen address. Default `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// Upstream chain in GOPROXY syntax. Default `https://proxy.golang.org`.
    pub upstream: String,
    /// Store directory. Default `modcdn-data/origin`.
    pub store_dir: PathBuf,
    /// Most MiB the store may take; least recently used artifacts are
    /// removed past it (0: unbounded). Default 10240. With an object store,
    /// the size of the local tier.
    pub store_max_mib: u64,
    /// The store's backend: disk (default) or an S3-compatible object store.
    pub store: crate::s3::StoreConfig,
    /// Grace period for in-flight requests at shutdown. Default 30.
    pub shutdown_grace_secs: u64,
    /// How long a client connection may take to send a request's headers,
    /// and may stay idle between requests, in ms. Default 30000.
    pub header_timeout_ms: u64,
    /// How long a write of an answer may wait on a client that takes none
    /// of it, in ms; then the connection is closed. Default 60000.
    pub send_timeout_ms: u64,
    /// Capacity of the negative cache. Default 100000.
    pub negative_cache_entries: usize,
    /// Memory tier budget in MiB (0 turns it off). Default 256.
    pub memory_cache_mib: u64,
    /// Largest artifact kept in the memory tier, in KiB. Default 4096.
    pub memory_object_max_kib: u64,
    pub ttl: TtlConfig,
    pub http: HttpConfig,
    pub prefetch: crate::prefetch::PrefetchConfig,
    pub sync: crate::sync::SyncConfig,
    /// Checksum databases proxied at `/sumdb/<name>/`. Default: sum.golang.org.
    pub checksum_db: Vec<ChecksumDb>,
    /// Verify zips and go.mod files against the checksum database before
    /// storing them (`verify`, default) or not (`off`).
    pub verify: VerifyMode,
    /// How `direct` runs the go command.
    pub direct: crate::direct::DirectConfig,
    /// Private module routes (patterns, upstream, client credentials).
    pub private: Vec<crate::private::PrivateRouteConfig>,
    /// Patterns never fetched from `upstream` (GONOPROXY syntax). Default "".
    pub noproxy: String,
    /// Patterns never looked up in a checksum database (GONOSUMDB syntax). Default "".
    pub nosumdb: String,
    /// Peers (the edges) whose `X-Forwarded-For` names the client, for
    /// private routes' `networks` (CIDRs). Default none.
    pub trusted_proxies: Vec<String>,
    /// The operator listener and the cluster token.
    pub operator: OperatorConfig,
    /// TLS for both listeners; plain HTTP when absent.
    pub tls: Option<crate::tls::TlsConfig>,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// Listener for `/metrics`, `/loadz`, `/hotz`, `/purge` and `/purgez`:
    /// edges, Prometheus and operators, never the internet. Default
    /// `127.0.0.1:7071`.
    pub listen: SocketAddr,
    /// The cluster token (`Authorization: Bearer`) for `/hotz`, `/purge` and
    /// `/purgez`; those are off while it is empty. Default "".
    #[serde(deserialize_with = "modcdn_shared::config::optional")]
    pub token: Option<modcdn_shared::secret::Token>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig { listen: SocketAddr::from(([127, 0, 0, 1], 7071)), token: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Default 5000.
    pub connect_timeout_ms: u64,
    /// Default 15000.
    pub header_timeout_ms: u64,
    /// Default 30000.
    pub read_timeout_ms: u64,
    /// Most retries of one upstream request (the retry budget bounds them
    /// during an outage; `pull_deadline_ms` bounds their time). Default 10.
    pub retries: u32,
    /// Retries allowed as a share of upstream requests, over time (the
    /// retry budget; a few are saved up for bursts). Default 0.5.
    pub retry_ratio: f64,
    /// Default 100.
    pub retry_backoff_ms: u64,
    /// Default 32.
    pub pool_idle_per_host: usize,
    /// Longest a whole pull may take, every attempt included; then 504.
    /// Default 60000.
    pub pull_deadline_ms: u64,
    /// Pulls running at once; past it a miss is answered 503. Default 256.
    pub max_pulls: usize,
}

/// A checksum database the origin proxies for the go command.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChecksumDb {
    /// Its name, as in GOSUMDB (`sum.golang.org`).
    pub name: String,
    /// Where it is served (`https://sum.golang.org`).
    pub url: String,
    /// Its verifier key (GOSUMDB form). With a key and `verify = "verify"`,
    /// the origin checks what it stores against this database.
    #[serde(default)]
    pub key: Option<String>,
}

/// The public key of sum.golang.org, as the go command has it built in.
pub const SUM_GOLANG_ORG_KEY: &str = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    Verify,
    Off,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            upstream: "https://proxy.golang.org".into(),
            store_dir: PathBuf::from("modcdn-data/origin"),
            store_max_mib: 10_240,
            store: crate::s3::StoreConfig::default(),
            shutdown_grace_secs: 30,
            header_timeout_ms: 30_000,
            send_timeout_ms: 60_000,
            negative_cache_entries: 100_000,
            memory_cache_mib: 256,
            memory_object_max_kib: 4096,
            ttl: TtlConfig::default(),
            http: HttpConfig::default(),
            prefetch: crate::prefetch::PrefetchConfig::default(),
            sync: crate::sync::SyncConfig::default(),
            checksum_db: vec![ChecksumDb {
                name: "sum.golang.org".into(),
                url: "https://sum.golang.org".into(),
                key: Some(SUM_GOLANG_ORG_KEY.into()),
            }],
            verify: VerifyMode::Verify,
            direct: crate::direct::DirectConfig::default(),
            private: Vec::new(),
            noproxy: String::new(),
            nosumdb: String::new(),
            trusted_proxies: Vec::new(),
            operator: OperatorConfig::default(),
            tls: None,
            log: LogConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout_ms: 5000,
            header_timeout_ms: 15_000,
            read_timeout_ms: 30_000,
            retries: 10,
            retry_ratio: 0.5,
            retry_backoff_ms: 100,
            pool_idle_per_host: 32,
            pull_deadline_ms: 60_000,
            max_pulls: 256,
        }
    }
}

impl Validate for OriginConfig {
    fn validate(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        if let Err(e) = Chain::parse(&self.upstream) {
            errs.push(("upstream".into(), e));
        }
        if self.store_dir.as_os_str().is_empty() {
            errs.push(("store_dir".into(), "must not be empty".into()));
        }
        errs.extend(self.store.validate());
        errs.extend(self.ttl.validate());
        for (key, v) in [
            ("http.connect_timeout_ms", self.http.connect_timeout_ms),
            ("http.header_timeout_ms", self.http.header_timeout_ms),
            ("http.read_timeout_ms", self.http.read_timeout_ms),
            ("http.pull_deadline_ms", self.http.pull_deadline_ms),
            ("header_timeout_ms", self.header_timeout_ms),
            ("send_timeout_ms", self.send_timeout_ms),
            ("http.max_pulls", self.http.max_pulls as u64),
        ] {
            if v == 0 {
                errs.push((key.into(), "must be above 0".into()));
            }
        }
        if let Err(e) = modcdn_shared::net::parse_networks(&self.trusted_proxies) {
            errs.push(("trusted_proxies".into(), e));
        }
        if self.operator.listen == self.listen && self.listen.port() != 0 {
            errs.push(("operator.listen".into(), "must differ from listen".into()));
        }
        if self.http.retries > 10 {
            errs.push(("http.retries".into(), format!("{} is above the limit of 10", self.http.retries)));
        }
        if !(0.0..=1.0).contains(&self.http.retry_ratio) {
            errs.push(("http.retry_ratio".into(), format!("{} is not in 0..=1", self.http.retry_ratio)));
        }
        if self.memory_cache_mib > 1 << 20 {
            errs.push(("memory_cache_mib".into(), format!("{} MiB is more than 1 TiB", self.memory_cache_mib)));
        }
        if self.memory_object_max_kib > 500 << 10 {
            errs.push(("memory_object_max_kib".into(), "is above the 500 MiB largest module zip".into()));
        }
        if self.negative_cache_entries == 0 {
            errs.push(("negative_cache_entries".into(), "must be above 0".into()));
        }
        if self.prefetch.depth > 10 {
            errs.push(("prefetch.depth".into(), format!("{} is above the limit of 10", self.prefetch.depth)));
        }
        if self.prefetch.enabled && (self.prefetch.workers == 0 || self.prefetch.queue == 0) {
            errs.push(("prefetch.workers".into(), "workers and queue must be above 0 when prefetch is enabled".into()));
        }
        if self.sync.enabled && (self.sync.interval_ms < 100 || self.sync.tracked == 0 || self.sync.half_life_secs == 0)
        {
            errs.push((
                "sync.interval_ms".into(),
                "interval_ms must be at least 100, tracked and half_life_secs above 0".into(),
            ));
        }
        for (i, db) in self.checksum_db.iter().enumerate() {
            if let Err(e) = modcdn_shared::request::SumDbName::parse(&db.name) {
                errs.push((format!("checksum_db[{i}].name"), e));
            }
            if let Some(key) = &db.key {
                if let Err(e) = crate::verify::SumDbVerifier::new(&db.name, key) {
                    errs.push((format!("checksum_db[{i}].key"), e));
                }
            }
            if !(db.url.starts_with("http://") || db.url.starts_with("https://")) {
                errs.push((
                    format!("checksum_db[{i}].url"),
                    format!("{:?} must be an http:// or https:// URL", db.url),
                ));
            }
        }
        for (i, p) in self.private.iter().enumerate() {
            if p.patterns.split(',').all(|g| g.trim().is_empty()) {
                errs.push((format!("private[{i}].patterns"), "must name at least one pattern".into()));
            }
            if let Err(e) = Chain::parse(&p.upstream) {
                errs.push((format!("private[{i}].upstream"), e));
            }
            if p.basic_users.iter().any(|u| !u.contains(':')) {
                errs.push((format!("private[{i}].basic_users"), "entries are user:password".into()));
            }
            if let Err(e) = modcdn_shared::net::parse_networks(&p.networks) {
                errs.push((format!("private[{i}].networks"), e));
            }
            if p.bearer_tokens.is_empty() && p.basic_users.is_empty() && p.networks.is_empty() {
                let why = "a private route needs bearer_tokens, basic_users or networks (who may read it)";
                errs.push((format!("private[{i}].networks"), why.into()));
            }
        }
        if self.direct.timeout_secs == 0 || self.direct.concurrency == 0 {
            errs.push(("direct.timeout_secs".into(), "timeout_secs and concurrency must be above 0".into()));
        }
        if self.log.level.trim().is_empty() {
            errs.push(("log.level".into(), "must not be empty".into()));
        }
        if let Some(Err(e)) = self.tls.as_ref().map(crate::tls::server_config) {
            errs.push(e);
        }
        errs
    }
}

impl OriginConfig {
    /// Loads from `file` or the embedded default, with environment overrides.
    /// Loads `file` (or the embedded default), then `MODCDN_ORIGIN__*`
    /// environment overrides, then command-line `flags`, and validates.
    pub fn load(file: Option<&Path>, flags: &[config::Flag]) -> Result<Self, ConfigError> {
        config::load(file, DEFAULT_TOML, ENV_PREFIX, std::env::vars(), flags)
    }

    pub fn ttls(&self) -> Ttls {
        self.ttl.ttls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_equals_struct_default() {
        let from_file: OriginConfig = toml::from_str(DEFAULT_TOML).expect("embedded default parses");
        assert!(from_file.validate().is_empty());
        assert_eq!(format!("{from_file:?}"), format!("{:?}", OriginConfig::default()));
    }

    #[test]
    fn deploy_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/origin.toml");
        let c = config::load::<OriginConfig>(Some(&path), "", ENV_PREFIX, [], &[]).expect("deploy/origin.toml");
        assert_eq!(c.upstream, "https://proxy.golang.org");
    }

    #[test]
    fn errors_name_file_and_key() {
        let dir = std::env::temp_dir().join(format!("modcdn-origin-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("bad.toml");
        std::fs::write(&f, "upstream = \"https://a.example,,direct\"\n").expect("write");
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &[]).expect_err("empty entry").to_string();
        assert!(e.contains("bad.toml") && e.contains("`upstream`") && e.contains("empty entry"), "{e}");
        std::fs::write(&f, "[ttl]\nmutable = 5\n").expect("write");
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &[]).expect_err("unknown").to_string();
        assert!(e.contains("bad.toml") && e.contains("mutable"), "{e}");
        std::fs::write(&f, "[ttl]\nmutable_secs = 0\n").expect("write");
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &[]).expect_err("range").to_string();
        assert!(e.contains("ttl.mutable_secs"), "{e}");
        std::fs::write(&f, "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n").expect("write");
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &[]).expect_err("tls").to_string();
        assert!(e.contains("bad.toml") && e.contains("tls.cert") && e.contains("/nonexistent/cert.pem"), "{e}");
        let env = [("MODCDN_ORIGIN__HTTP__RETRIES".to_string(), "3".to_string())];
        std::fs::write(&f, "").expect("write");
        let c = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, env, &[]).expect("env");
        assert_eq!(c.http.retries, 3);
        std::fs::write(&f, "[[private]]\nunauthorized_status = 403\n").expect("write");
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &[]).expect_err("403").to_string();
        assert!(e.contains("bad.toml") && e.contains("unauthorized_status") && e.contains("404 or 401"), "{e}");
        std::fs::write(&f, "[operator]\ntoken = \"short\"\n").expect("write");
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &[]).expect_err("token").to_string();
        assert!(e.contains("bad.toml") && e.contains("operator.token") && e.contains("16 characters"), "{e}");
        std::fs::write(&f, "[store]\nkind = \"s3\"\n").expect("write");
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &[]).expect_err("s3").to_string();
        assert!(e.contains("bad.toml") && e.contains("store.bucket"), "{e}");
        std::fs::write(&f, "[store]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"ftp://x\"\n").expect("write");
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &[]).expect_err("s3").to_string();
        assert!(e.contains("store.endpoint") && e.contains("ftp://x"), "{e}");
        // Flags are validated with the rest, and named as flags.
        std::fs::write(&f, "").expect("write");
        let flag = |key, flag, value: &str| config::Flag { key, flag, value: value.into() };
        let bad_dir = [flag("store_dir", "--store-dir", "")];
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &bad_dir).expect_err("dir").to_string();
        assert!(e.contains("command line") && e.contains("`--store-dir`") && e.contains("empty"), "{e}");
        let bad_upstream = [flag("upstream", "--upstream", "ftp://x")];
        let e = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &bad_upstream).expect_err("up").to_string();
        assert!(e.contains("`--upstream`") && e.contains("http"), "{e}");
        let good = [flag("upstream", "--upstream", "off"), flag("listen", "--listen", "127.0.0.1:9")];
        let c = config::load::<OriginConfig>(Some(&f), "", ENV_PREFIX, [], &good).expect("flags");
        assert_eq!((c.upstream.as_str(), c.listen.port()), ("off", 9));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
