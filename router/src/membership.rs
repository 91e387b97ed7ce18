//! The membership file: origins (id, address, region, weight) and routing
//! knobs, in TOML. Loading validates everything and names the file, line
//! and key at fault; a bad file never replaces a good snapshot.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::geo::{Geo, RegionMap};
use std::sync::Arc;

use crate::load::{HealthPolicy, LoadView};
use crate::route::{Member, RoutePolicy, Topology};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipFile {
    /// Region map file; default: the embedded `geo-data/regions.toml`.
    #[serde(default)]
    pub region_map: Option<PathBuf>,
    /// MaxMind DB (GeoLite2/GeoIP2 Country). Required unless `single_region`.
    #[serde(default)]
    pub geoip_db: Option<PathBuf>,
    /// Route every client as if in the default region; no database needed.
    #[serde(default)]
    pub single_region: bool,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs). Default none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Bounded-load factor c (≥ 1). Default 1.25.
    #[serde(default = "default_bounded_load")]
    pub bounded_load: f64,
    /// Virtual nodes per unit of weight. Default 160.
    #[serde(default = "default_vnodes")]
    pub vnodes_per_weight: u32,
    /// Candidates per request (chosen + failovers). Default 3.
    #[serde(default = "default_candidates")]
    pub max_candidates: usize,
    #[serde(default)]
    pub health: HealthFile,
    #[serde(default, rename = "origin")]
    pub origins: Vec<toml::Spanned<OriginEntry>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginEntry {
    pub id: String,
    /// `host:port` of the origin's HTTP listener (the GOPROXY protocol).
    pub address: String,
    /// `host:port` of the origin's operator listener (`/loadz` for health
    /// checks, `/hotz` and `/purgez` with the cluster token).
    pub operator: String,
    pub region: String,
    /// Share of keys relative to others (default 1).
    #[serde(default = "default_weight")]
    pub weight: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthFile {
    /// Active check interval in milliseconds. Default 1000.
    pub interval_ms: u64,
    /// Check timeout in milliseconds. Default 500.
    pub timeout_ms: u64,
    /// Consecutive failures that mark an origin down. Default 3.
    pub fall: u32,
    /// Consecutive successes that mark it up again. Default 2.
    pub rise: u32,
}

impl Default for HealthFile {
    fn default() -> Self {
        HealthFile { interval_ms: 1000, timeout_ms: 500, fall: 3, rise: 2 }
    }
}

fn default_bounded_load() -> f64 {
    1.25
}
fn default_vnodes() -> u32 {
    crate::ring::DEFAULT_VNODES_PER_WEIGHT
}
fn default_candidates() -> usize {
    3
}
fn default_weight() -> f64 {
    1.0
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}:{line}: key `{key}`: {message}")]
    Invalid { file: String, line: usize, key: String, message: String },
}

/// Everything routing needs, built from one membership file.
pub struct Snapshot {
    pub topology: Topology,
    pub view: Arc<LoadView>,
    pub geo: Geo,
    pub health: HealthFile,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

impl MembershipFile {
    /// Reads and checks `path` (relative paths inside resolve against its
    /// directory).
    pub fn load(path: &Path) -> Result<(MembershipFile, RegionMap), MembershipError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| MembershipError::Read { file: file.clone(), message: e.to_string() })?;
        let m: MembershipFile = toml::from_str(&text)
            .map_err(|e| MembershipError::Parse { file: file.clone(), message: e.to_string().trim_end().into() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let map_file = m.region_map.as_deref().map(resolve);
        let map: RegionMap = match &map_file {
            Some(p) => {
                let f = p.display().to_string();
                let t = std::fs::read_to_string(p)
                    .map_err(|e| MembershipError::Read { file: f.clone(), message: e.to_string() })?;
                toml::from_str(&t)
                    .map_err(|e| MembershipError::Parse { file: f, message: e.to_string().trim_end().into() })?
            }
            None => toml::from_str(RegionMap::DEFAULT_TOML)
                .map_err(|e| MembershipError::Parse { file: "<embedded region map>".into(), message: e.to_string() })?,
        };
        if let Some((key, message)) = map.validate().into_iter().next() {
            let f = map_file.map(|p| p.display().to_string()).unwrap_or_else(|| "<embedded region map>".into());
            return Err(MembershipError::Invalid { file: f, line: 0, key, message });
        }
        let invalid = |line: usize, key: &str, message: String| MembershipError::Invalid {
            file: file.clone(),
            line,
            key: key.into(),
            message,
        };
        let top = |key: &str| text.lines().position(|l| l.trim_start().starts_with(key)).map_or(1, |i| i + 1);
        if !(m.bounded_load >= 1.0 && m.bounded_load.is_finite()) {
            return Err(invalid(
                top("bounded_load"),
                "bounded_load",
                format!("{} must be a number ≥ 1", m.bounded_load),
            ));
        }
        if m.vnodes_per_weight == 0 || m.vnodes_per_weight > 10_000 {
            return Err(invalid(top("vnodes_per_weight"), "vnodes_per_weight", "must be 1..=10000".into()));
        }
        if m.max_candidates == 0 {
            return Err(invalid(top("max_candidates"), "max_candidates", "must be at least 1".into()));
        }
        if m.geoip_db.is_none() && !m.single_region {
            return Err(invalid(1, "geoip_db", "missing: name a MaxMind DB, or set single_region = true".into()));
        }
        for (i, cidr) in m.trusted_proxies.iter().enumerate() {
            if cidr.parse::<IpNet>().is_err() {
                return Err(invalid(
                    top("trusted_proxies"),
                    &format!("trusted_proxies[{i}]"),
                    format!("{cidr:?} is not a CIDR"),
                ));
            }
        }
        if m.health.interval_ms == 0 || m.health.timeout_ms == 0 || m.health.fall == 0 || m.health.rise == 0 {
            return Err(invalid(
                top("[health]"),
                "health",
                "interval_ms, timeout_ms, fall and rise must be above 0".into(),
            ));
        }
        let mut ids = HashSet::new();
        for (i, o) in m.origins.iter().enumerate() {
            let line = line_of(&text, o.span().start);
            let e = o.get_ref();
            let key = |k: &str| format!("origin[{i}].{k}");
            if e.id.is_empty() || !e.id.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) {
                return Err(invalid(line, &key("id"), format!("{:?} must be letters, digits, '-', '_' or '.'", e.id)));
            }
            if !ids.insert(e.id.clone()) {
                return Err(invalid(line, &key("id"), format!("{:?} appears twice", e.id)));
            }
            if !map.regions.contains_key(&e.region) {
                return Err(invalid(line, &key("region"), format!("{:?} is not a region of the region map", e.region)));
            }
            if !(e.weight > 0.0 && e.weight.is_finite() && e.weight <= 1000.0) {
                return Err(invalid(line, &key("weight"), format!("{} must be in (0, 1000]", e.weight)));
            }
            for (k, addr) in [("address", &e.address), ("operator", &e.operator)] {
                let ok = addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(invalid(line, &key(k), format!("{addr:?} is not host:port")));
                }
            }
            if e.address == e.operator {
                return Err(invalid(line, &key("operator"), "must differ from address".into()));
            }
        }
        Ok((m, map))
    }

    /// Builds the routing snapshot (opens the GeoIP database).
    pub fn snapshot(path: &Path) -> Result<Snapshot, MembershipError> {
        Self::snapshot_with(path, None)
    }

    /// As [`MembershipFile::snapshot`], keeping the live numbers of `view`
    /// (a reload keeps what the edge has learned); without one, a new view
    /// with the file's health policy. The file is read once.
    pub fn snapshot_with(path: &Path, view: Option<Arc<LoadView>>) -> Result<Snapshot, MembershipError> {
        let (m, map) = Self::load(path)?;
        let view = view.unwrap_or_else(|| Arc::new(LoadView::new(m.health.policy())));
        let file = path.display().to_string();
        let base = path.parent().unwrap_or(Path::new("."));
        let trusted: Vec<IpNet> = m.trusted_proxies.iter().filter_map(|c| c.parse().ok()).collect();
        let geo = match (&m.geoip_db, m.single_region) {
            (_, true) => Geo::single_region(&map),
            (Some(db), false) => {
                let db = if db.is_absolute() { db.clone() } else { base.join(db) };
                Geo::open(&db, &map, trusted).map_err(|e| MembershipError::Invalid {
                    file,
                    line: 0,
                    key: "geoip_db".into(),
                    message: e.to_string(),
                })?
            }
            (None, false) => Geo::single_region(&map),
        };
        let members: Vec<Member> = m
            .origins
            .iter()
            .map(|o| {
                let e = o.get_ref();
                Member {
                    id: e.id.clone(),
                    address: e.address.clone(),
                    operator: e.operator.clone(),
                    region: e.region.clone(),
                    weight: e.weight,
                }
            })
            .collect();
        let fallbacks: HashMap<String, Vec<String>> =
            map.regions.iter().map(|(k, v)| (k.clone(), v.fallback.clone())).collect();
        let policy = RoutePolicy {
            bounded_load: m.bounded_load,
            vnodes_per_weight: m.vnodes_per_weight,
            max_candidates: m.max_candidates,
        };
        let topology = Topology::new(&members, &fallbacks, policy, &view);
        Ok(Snapshot { topology, view, geo, health: m.health })
    }
}

impl HealthFile {
    pub fn policy(&self) -> HealthPolicy {
        HealthPolicy { fall: self.fall, rise: self.rise, ..HealthPolicy::default() }
    }
}
