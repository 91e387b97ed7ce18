//! The edge's config file (see `default.toml` beside this crate, which is
//! embedded and documents every key with its default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use modcdn_shared::config::{self, ConfigError, LogConfig, TtlConfig, Validate};
use modcdn_shared::secret::Token;
use serde::Deserialize;

/// The embedded default config.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "MODCDN_EDGE";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Plain HTTP listener. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Membership file. Default `deploy/router.toml`.
    pub membership: PathBuf,
    /// Region of clients the GeoIP database cannot place (loopback, private
    /// networks); empty: the region map's default. Default "".
    #[serde(deserialize_with = "modcdn_shared::config::optional")]
    pub region: Option<String>,
    /// Worker threads, each with the connections handed to it (no work
    /// stealing, see `lib.rs`). Default: the CPUs the edge may run on (its
    /// affinity, its cgroup's quota), as nginx's `worker_processes auto`.
    pub threads: usize,
    /// Grace period at shutdown and upgrade. Default 5.
    pub grace_secs: u64,
    /// How long a client has to send a request's headers, from the moment a
    /// connection opens or its previous request was answered; then the
    /// connection is closed (slowloris). Default 10000.
    pub header_timeout_ms: u64,
    /// How long a write of an answer may wait for a client that takes none
    /// of it; then the connection is closed (a client that stops reading
    /// holds it, and what its answer holds, no longer), or on HTTP/2, for a
    /// stream whose window stays shut, the stream is reset. Default 60000.
    pub send_timeout_ms: u64,
    /// Default `modcdn-data/edge/upgrade.sock`.
    pub upgrade_sock: PathBuf,
    /// Default `modcdn-data/edge/edge.pid`.
    pub pid_file: PathBuf,
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub cache: CacheConfig,
    pub ttl: TtlConfig,
    pub origin: OriginClientConfig,
    pub purge: PurgeConfig,
    pub hot: HotConfig,
    pub rate_limit: RateLimitConfig,
    /// Client tiers: bandwidth per client and shares of the uplink.
    pub bandwidth: crate::bandwidth::BandwidthConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// HTTPS listener; off when empty. Default "".
    #[serde(deserialize_with = "modcdn_shared::config::optional")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain. Default "".
    pub cert: PathBuf,
    /// PEM private key. Default "".
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Default `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// Bearer token for purges; empty refuses them. Default "".
    #[serde(deserialize_with = "modcdn_shared::config::optional")]
    pub token: Option<Token>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Default `modcdn-data/edge/cache`.
    pub dir: PathBuf,
    /// Disk budget in MiB. Default 10240.
    pub max_mib: u64,
    /// Memory tier in MiB. Default 256.
    pub memory_mib: u64,
    /// Largest body a fill copies into the memory tier, in KiB (at most 64).
    /// Default 64. (A body read from disk is copied in up to 4 KiB; a larger
    /// one is served from a mapping of its file, the mapped tier.)
    pub memory_object_max_kib: u64,
    /// Cache lock timeout in ms. Default 30000.
    pub lock_timeout_ms: u64,
    /// Cache answers to credentialed requests (private modules), each under
    /// its credential. Default false.
    pub private: bool,
    /// How long a private copy is kept (whatever the artifact), so a
    /// revoked credential stops working within it. Default 300.
    pub private_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginClientConfig {
    /// Default 1000.
    pub connect_timeout_ms: u64,
    /// How long an origin may stay silent; above the origins'
    /// `http.pull_deadline_ms`, since an origin answers a miss when its pull
    /// is done. Default 75000.
    pub read_timeout_ms: u64,
    /// Origins tried after the first fails for its own reasons. Default 2.
    pub retries: usize,
    /// The cluster token (the origins' `operator.token`), sent only to their
    /// operator listeners; while empty, the purge log is not followed, hot
    /// modules are neither reported nor prefetched, and purges stay at this
    /// edge. Default "".
    #[serde(deserialize_with = "modcdn_shared::config::optional")]
    pub token: Option<Token>,
    /// PEM file of the CA that signed the origins' certificates: set, the
    /// edge reaches origins (both listeners) over TLS only, trusting that
    /// CA alone. Default: plain HTTP (origins on a private network).
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PurgeConfig {
    /// Default 2000; 0 turns polling off.
    pub poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HotConfig {
    /// Milliseconds between rounds; 0 turns reports and prefetch off. Default 30000.
    pub interval_ms: u64,
    /// Hot modules whose new versions are prefetched per round. Default 20.
    pub modules: usize,
    /// Newest new versions of one module prefetched per round. Default 2.
    pub versions: usize,
}

impl Default for HotConfig {
    fn default() -> Self {
        HotConfig { interval_ms: 30_000, modules: 20, versions: 2 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Default 0 (unlimited).
    pub requests_per_sec: f64,
    /// Default 0.
    pub burst: u32,
    /// Default 0 (unlimited).
    pub max_in_flight_per_ip: u32,
    /// Connections open at once per client IP, 0 = unlimited. Default 1024.
    pub max_connections_per_ip: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { requests_per_sec: 0.0, burst: 0, max_in_flight_per_ip: 0, max_connections_per_ip: 1024 }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            membership: PathBuf::from("deploy/router.toml"),
            region: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            grace_secs: 5,
            header_timeout_ms: 10_000,
            send_timeout_ms: 60_000,
            upgrade_sock: PathBuf::from("modcdn-data/edge/upgrade.sock"),
            pid_file: PathBuf::from("modcdn-data/edge/edge.pid"),
            tls: TlsConfig::default(),
            admin: AdminConfig::default(),
            cache: CacheConfig::default(),
            ttl: TtlConfig::default(),
            origin: OriginClientConfig::default(),
            purge: PurgeConfig::default(),
            hot: HotConfig::default(),
            rate_limit: RateLimitConfig::default(),
            bandwidth: crate::bandwidth::BandwidthConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8081)), token: None }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("modcdn-data/edge/cache"),
            max_mib: 10240,
            memory_mib: 256,
            memory_object_max_kib: 64,
            lock_timeout_ms: 30_000,
            private: false,
            private_ttl_secs: 300,
        }
    }
}

impl Default for OriginClientConfig {
    fn default() -> Self {
        OriginClientConfig { connect_timeout_ms: 1000, read_timeout_ms: 75_000, retries: 2, token: None, tls_ca: None }
    }
}

impl Default for PurgeConfig {
    fn default() -> Self {
        PurgeConfig { poll_ms: 2000 }
    }
}

impl Validate for EdgeConfig {
    fn validate(&self) -> Vec<(String, String)> {
        let mut errs = self.ttl.validate();
        if self.threads == 0 || self.threads > 1024 {
            errs.push(("threads".into(), format!("{} is out of range (1..=1024)", self.threads)));
        }
        if self.membership.as_os_str().is_empty() {
            errs.push(("membership".into(), "must name the membership file".into()));
        }
        if self.cache.dir.as_os_str().is_empty() {
            errs.push(("cache.dir".into(), "must not be empty".into()));
        }
        if self.cache.max_mib == 0 {
            errs.push(("cache.max_mib".into(), "must be above 0".into()));
        }
        if self.cache.memory_object_max_kib > 64 {
            errs.push((
                "cache.memory_object_max_kib".into(),
                "is above 64: a larger body is served from the mapped tier (a mapping of its cache file)".into(),
            ));
        }
        for (key, v) in [
            ("cache.lock_timeout_ms", self.cache.lock_timeout_ms),
            ("origin.connect_timeout_ms", self.origin.connect_timeout_ms),
            ("origin.read_timeout_ms", self.origin.read_timeout_ms),
            ("header_timeout_ms", self.header_timeout_ms),
            ("send_timeout_ms", self.send_timeout_ms),
        ] {
            if v == 0 {
                errs.push((key.into(), "must be above 0".into()));
            }
        }
        if self.hot.modules > 1000 || self.hot.versions > 100 {
            errs.push(("hot.modules".into(), "at most 1000 modules and 100 versions a round".into()));
        }
        if self.origin.retries > 10 {
            errs.push(("origin.retries".into(), format!("{} is above the limit of 10", self.origin.retries)));
        }
        if let Some(Err(e)) = self.origin.tls_ca.as_deref().map(crate::origins::read_ca) {
            let file = self.origin.tls_ca.as_deref().unwrap_or(Path::new("")).display();
            errs.push(("origin.tls_ca".into(), format!("{file}: {e}")));
        }
        if self.tls.listen.is_some() {
            for (key, path) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
                if path.as_os_str().is_empty() {
                    errs.push((key.into(), "required when tls.listen is set".into()));
                }
            }
        }
        let rl = &self.rate_limit;
        if !(rl.requests_per_sec.is_finite() && rl.requests_per_sec >= 0.0) {
            errs.push(("rate_limit.requests_per_sec".into(), "must be a number ≥ 0".into()));
        }
        if rl.requests_per_sec > 0.0 && rl.burst == 0 {
            errs.push(("rate_limit.burst".into(), "must be above 0 when requests_per_sec is set".into()));
        }
        errs.extend(self.bandwidth.validate());
        errs
    }
}

impl EdgeConfig {
    /// Loads from `file` or the embedded default, with environment
    /// overrides; relative paths then resolve against the file's directory.
    /// Loads `file` (or the embedded default), then `MODCDN_EDGE__*`
    /// environment overrides, then command-line `flags`, and validates.
    pub fn load(file: Option<&Path>, flags: &[config::Flag]) -> Result<Self, ConfigError> {
        let mut cfg: EdgeConfig = config::load(file, DEFAULT_TOML, ENV_PREFIX, std::env::vars(), flags)?;
        let base = file.and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        for p in [
            &mut cfg.membership,
            &mut cfg.upgrade_sock,
            &mut cfg.pid_file,
            &mut cfg.cache.dir,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.origin.connect_timeout_ms)
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.origin.read_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_matches_code_defaults() {
        let from_file: EdgeConfig = toml::from_str(DEFAULT_TOML).expect("default.toml parses");
        let code = EdgeConfig::default();
        assert_eq!(format!("{from_file:?}"), format!("{code:?}"));
        assert!(from_file.validate().is_empty());
    }

    #[test]
    fn deploy_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge.toml");
        let c = EdgeConfig::load(Some(&path), &[]).expect("deploy/edge.toml");
        assert!(c.membership.ends_with("deploy/router.toml"), "{}", c.membership.display());
        assert_eq!(c.tls.listen, Some("0.0.0.0:443".parse().expect("addr")));
        assert!(c.rate_limit.requests_per_sec > 0.0);
    }

    #[test]
    fn settings_that_turn_things_on_are_parsed_when_read() {
        let dir = std::env::temp_dir().join(format!("modcdn-edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("edge.toml");
        for (text, key) in [
            ("[admin]\ntoken = \"short\"\n", "admin.token"),
            ("[origin]\ntoken = \"change-me\"\n", "origin.token"),
            ("[tls]\nlisten = \"localhost\"\n", "tls.listen"),
        ] {
            std::fs::write(&file, text).expect("write");
            let e = EdgeConfig::load(Some(&file), &[]).expect_err(text).to_string();
            assert!(e.contains(&file.display().to_string()) && e.contains(key), "{text}: {e}");
        }
        // Empty is off, as documented.
        std::fs::write(&file, "region = \"\"\n[admin]\ntoken = \"\"\n[tls]\nlisten = \"\"\n").expect("write");
        let c = EdgeConfig::load(Some(&file), &[]).expect("empty is off");
        assert!(c.admin.token.is_none() && c.tls.listen.is_none() && c.region.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn worker_threads_are_the_cpus_the_edge_may_run_on() {
        // Held to one CPU (as `taskset -c 0` or a cgroup's quota would), the
        // edge runs one worker thread, not a fixed number; unset, as many
        // as it may use (nginx's `worker_processes auto`).
        let one = std::thread::spawn(|| {
            // SAFETY: a CPU set on the stack, for this thread alone (0).
            #[allow(unsafe_code)]
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set), 0);
                let first = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set)).expect("a CPU");
                libc::CPU_ZERO(&mut set);
                libc::CPU_SET(first, &mut set);
                assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0);
            }
            EdgeConfig::load(None, &[]).expect("defaults load").threads
        });
        assert_eq!(one.join().expect("thread"), 1);
        let cpus = std::thread::available_parallelism().expect("CPUs").get();
        assert_eq!(EdgeConfig::load(None, &[]).expect("defaults load").threads, cpus);
        let set: EdgeConfig = toml::from_str("threads = 3\n").expect("parses");
        assert_eq!(set.threads, 3);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("threads = 0\n", "threads"),
            ("[cache]\nmax_mib = 0\n", "cache.max_mib"),
            ("[cache]\nmemory_object_max_kib = 4096\n", "cache.memory_object_max_kib"),
            ("[tls]\nlisten = \"127.0.0.1:8443\"\n", "tls.cert"),
            ("[rate_limit]\nrequests_per_sec = 5\n", "rate_limit.burst"),
            ("[ttl]\nnegative_secs = 0\n", "ttl.negative_secs"),
            ("[origin]\ntls_ca = \"/nonexistent/ca.pem\"\n", "origin.tls_ca"),
            ("[origin]\ntls_ca = \"Cargo.toml\"\n", "origin.tls_ca"),
        ] {
            let cfg: EdgeConfig = toml::from_str(text).expect("parses");
            let errs = cfg.validate();
            assert!(errs.iter().any(|(k, _)| k == key), "{text}: {errs:?}");
        }
    }
}
