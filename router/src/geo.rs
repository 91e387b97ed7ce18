//! Client IP → country/continent (MaxMind DB) → region, through a region map.
//!
//! `X-Forwarded-For` is believed only when the socket peer is a configured
//! trusted proxy; then the client is the rightmost address in the chain that
//! is not itself trusted. Anything unparsable falls back to the peer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

/// The part of a GeoIP2/GeoLite2 Country record routing reads.
#[derive(Debug, Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<Names<'a>>,
    #[serde(borrow)]
    registered_country: Option<Names<'a>>,
    #[serde(borrow)]
    continent: Option<Continent<'a>>,
}

#[derive(Debug, Deserialize)]
struct Names<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct Continent<'a> {
    code: Option<&'a str>,
}

/// The test database of `geo-data/` (127.0.1.0/24 CN, 127.0.2.0/24 US,
/// 127.0.3.0/24 DE, 127.0.4.0/24 JP), for local clusters and tests.
pub const TEST_COUNTRY_DB: &[u8] = include_bytes!("../../geo-data/test-country.mmdb");

/// One region of the region map.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// ISO 3166-1 country codes served by this region.
    #[serde(default)]
    pub countries: Vec<String>,
    /// Continent codes (AF, AN, AS, EU, NA, OC, SA) for countries not listed anywhere.
    #[serde(default)]
    pub continents: Vec<String>,
    /// Regions to use, in order, when this one has no healthy origin.
    #[serde(default)]
    pub fallback: Vec<String>,
}

/// The region map: which region serves which countries.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionMap {
    /// Region for addresses the database does not place.
    pub default_region: String,
    pub regions: HashMap<String, RegionSpec>,
}

impl RegionMap {
    /// The embedded default map (`geo-data/regions.toml`).
    pub const DEFAULT_TOML: &'static str = include_str!("../../geo-data/regions.toml");

    /// Problems, as (key, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        if !self.regions.contains_key(&self.default_region) {
            errs.push(("default_region".into(), format!("region {:?} is not in [regions]", self.default_region)));
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        let mut names: Vec<&String> = self.regions.keys().collect();
        names.sort();
        for name in names {
            let spec = &self.regions[name];
            for f in &spec.fallback {
                if !self.regions.contains_key(f) {
                    errs.push((format!("regions.{name}.fallback"), format!("region {f:?} is not in [regions]")));
                }
            }
            for c in &spec.countries {
                if let Some(other) = seen.insert(c.as_str(), name.as_str()) {
                    errs.push((format!("regions.{name}.countries"), format!("{c} is already in region {other:?}")));
                }
            }
        }
        errs
    }
}

/// Resolves client addresses to regions.
pub struct Geo {
    reader: Option<maxminddb::Reader<Vec<u8>>>,
    by_country: HashMap<String, String>,
    by_continent: HashMap<String, String>,
    default_region: String,
    trusted: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("GeoIP database {path}: {message}")]
    Database { path: String, message: String },
}

impl Geo {
    /// With a MaxMind DB (GeoLite2/GeoIP2 Country, or the test database).
    pub fn open(db: &Path, map: &RegionMap, trusted: Vec<IpNet>) -> Result<Geo, GeoError> {
        let err = |message: String| GeoError::Database { path: db.display().to_string(), message };
        let bytes = std::fs::read(db).map_err(|e| err(e.to_string()))?;
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| err(e.to_string()))?;
        Ok(Self::build(Some(reader), map, trusted))
    }

    /// Single-region mode: everyone is in the default region.
    pub fn single_region(map: &RegionMap) -> Geo {
        Self::build(None, map, Vec::new())
    }

    fn build(reader: Option<maxminddb::Reader<Vec<u8>>>, map: &RegionMap, trusted: Vec<IpNet>) -> Geo {
        let mut by_country = HashMap::new();
        let mut by_continent = HashMap::new();
        for (name, spec) in &map.regions {
            for c in &spec.countries {
                by_country.insert(c.to_ascii_uppercase(), name.clone());
            }
            for c in &spec.continents {
                by_continent.entry(c.to_ascii_uppercase()).or_insert_with(|| name.clone());
            }
        }
        Geo { reader, by_country, by_continent, default_region: map.default_region.clone(), trusted }
    }

    /// The client's address: the peer, unless the peer is a trusted proxy
    /// and `X-Forwarded-For` names someone; garbage falls back to the peer.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        modcdn_shared::net::client_ip(peer, forwarded_for, &self.trusted)
    }

    /// Country and continent codes of `ip`, when the database knows it.
    pub fn locate(&self, ip: IpAddr) -> (Option<String>, Option<String>) {
        let Some(reader) = &self.reader else { return (None, None) };
        let Ok(result) = reader.lookup(ip) else { return (None, None) };
        let Ok(Some(rec)) = result.decode::<CountryRecord>() else { return (None, None) };
        let country = rec.country.or(rec.registered_country).and_then(|c| c.iso_code).map(str::to_string);
        (country, rec.continent.and_then(|c| c.code).map(str::to_string))
    }

    /// The region of `ip`: by country, else by continent, else the default.
    pub fn region_of(&self, ip: IpAddr) -> &str {
        let (country, continent) = self.locate(ip);
        country
            .and_then(|c| self.by_country.get(&c))
            .or_else(|| continent.and_then(|c| self.by_continent.get(&c)))
            .unwrap_or(&self.default_region)
    }

    /// [`Geo::client_ip`] then [`Geo::region_of`].
    pub fn region(&self, peer: IpAddr, forwarded_for: Option<&str>) -> &str {
        self.region_of(self.client_ip(peer, forwarded_for))
    }
}

/// Builds a MaxMind DB (IPv4, Country layout) from CSV lines
/// `network,country,continent` — the reproducible build of the test
/// database in `geo-data/`.
pub fn build_country_db(csv: &str) -> Result<Vec<u8>, String> {
    use maxminddb_writer::paths::IpAddrWithMask;
    use maxminddb_writer::Database;
    #[derive(serde::Serialize)]
    struct Iso<'a> {
        iso_code: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Code<'a> {
        code: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Rec<'a> {
        country: Iso<'a>,
        continent: Code<'a>,
    }
    let mut db = Database::default();
    db.metadata.ip_version = maxminddb_writer::metadata::IpVersion::V4;
    db.metadata.database_type = "modcdn-test-country".into();
    db.metadata.languages = vec!["en".into()];
    db.metadata.binary_format_major_version = 2;
    db.metadata.binary_format_minor_version = 0;
    db.metadata.build_epoch = 0; // reproducible: same CSV, same bytes
    db.metadata.description.insert("en".into(), "modcdn test ranges: 127.0.0.0/8 split into regions".into());
    for (n, line) in csv.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("network,") {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [net, country, continent] = fields[..] else {
            return Err(format!("line {}: want network,country,continent", n + 1));
        };
        let net: ipnet::Ipv4Net = net.parse().map_err(|e| format!("line {}: {net:?}: {e}", n + 1))?;
        let data = db
            .insert_value(Rec { country: Iso { iso_code: country }, continent: Code { code: continent } })
            .map_err(|e| format!("line {}: {e}", n + 1))?;
        db.insert_node(IpAddrWithMask::new(IpAddr::V4(net.network()), net.prefix_len()), data);
    }
    db.write_to(Vec::new()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> RegionMap {
        toml::from_str(RegionMap::DEFAULT_TOML).expect("embedded region map")
    }

    fn test_geo(trusted: Vec<IpNet>) -> Geo {
        let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("../geo-data/test-country.mmdb");
        Geo::open(&db, &map(), trusted).expect("test database")
    }

    #[test]
    fn embedded_map_is_valid() {
        assert_eq!(map().validate(), Vec::<(String, String)>::new());
    }

    #[test]
    fn checked_in_database_is_the_build_of_the_csv() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../geo-data");
        let csv = std::fs::read_to_string(dir.join("test-ranges.csv")).expect("csv");
        let built = build_country_db(&csv).expect("build");
        let checked_in = std::fs::read(dir.join("test-country.mmdb")).expect("mmdb");
        assert!(built == checked_in, "geo-data/test-country.mmdb is stale: rebuild it (see geo-data/README.md)");
    }

    #[test]
    fn loopback_ranges_land_in_regions() {
        let g = test_geo(vec![]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(g.locate(ip("127.0.1.7")), (Some("CN".into()), Some("AS".into())));
        assert_eq!(g.region_of(ip("127.0.1.7")), "cn");
        assert_eq!(g.region_of(ip("127.0.2.7")), "us");
        assert_eq!(g.region_of(ip("127.0.3.7")), "eu");
        assert_eq!(g.region_of(ip("127.0.4.7")), "ap");
        assert_eq!(g.region_of(ip("127.0.0.1")), "us", "unknown → default region");
        assert_eq!(g.region_of(ip("::1")), "us", "IPv6 in an IPv4 database → default");
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["127.0.9.0/24".parse().expect("cidr")];
        let g = test_geo(trusted);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // Untrusted peer: the header is ignored.
        assert_eq!(g.region(ip("127.0.2.1"), Some("127.0.1.1")), "us");
        // Trusted peer: the rightmost untrusted address counts.
        assert_eq!(g.region(ip("127.0.9.1"), Some("127.0.3.3, 127.0.1.1")), "cn");
        assert_eq!(g.region(ip("127.0.9.1"), Some("127.0.1.1, 127.0.9.2")), "cn");
        // Garbage: the peer (trusted proxy → its own region: default).
        assert_eq!(g.client_ip(ip("127.0.9.1"), Some("nonsense, 1.2.3.4")), ip("127.0.9.1"));
        assert_eq!(g.client_ip(ip("127.0.9.1"), Some("")), ip("127.0.9.1"));
        let single = Geo::single_region(&map());
        assert_eq!(single.region(ip("127.0.1.1"), None), "us");
    }
}
