//! Client tiers: differentiated bandwidth, as a mirror sells it (VIP,
//! normal, trial). A tier is chosen by credential or client network; each
//! client of a tier is paced to the tier's cap, and while the edge's uplink
//! is shared (`uplink_mbit`), the tiers sending now split it by weight, so a
//! higher tier keeps its share when the uplink is saturated. Off unless
//! configured.
//!
//! Pacing is a virtual clock per client and per tier (a GCRA over bytes):
//! a chunk of n bytes moves the clock from max(now, clock) by n / rate, and
//! leaves when the clock says (paid before it is sent, so that a download's
//! average is the rate, not one chunk above it). The proxy sleeps for that
//! before sending the chunk.
//! O(1) per chunk, sharded maps, no scan on the request path.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ipnet::IpNet;
use parking_lot::Mutex;
use serde::Deserialize;

use crate::limits::ClientKey;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BandwidthConfig {
    /// The edge's uplink in Mbit/s, shared by the sending tiers by weight;
    /// 0: tiers are not shared, only each client's cap applies. Default 0.
    pub uplink_mbit: f64,
    /// The tier of clients that no tier names; "" for none (unpaced).
    /// Default "".
    pub default_tier: String,
    /// The tiers. Default none (off).
    pub tier: Vec<TierConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub name: String,
    /// Most Mbit/s one client of the tier gets (0: no cap).
    #[serde(default)]
    pub mbit_per_client: f64,
    /// The tier's share of a saturated uplink, against the others' weights.
    #[serde(default = "one")]
    pub weight: f64,
    /// Client networks of the tier (the client address as routing sees it).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Bearer tokens of the tier (`Authorization: Bearer <token>`).
    #[serde(default)]
    pub tokens: Vec<String>,
}

fn one() -> f64 {
    1.0
}

impl BandwidthConfig {
    /// Errors as (key, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        if !(self.uplink_mbit.is_finite() && self.uplink_mbit >= 0.0) {
            errs.push(("bandwidth.uplink_mbit".into(), "must be a number ≥ 0".into()));
        }
        for (i, t) in self.tier.iter().enumerate() {
            let key = |k: &str| format!("bandwidth.tier[{i}].{k}");
            if t.name.trim().is_empty() {
                errs.push((key("name"), "must not be empty".into()));
            }
            if !(t.mbit_per_client.is_finite() && t.mbit_per_client >= 0.0) {
                errs.push((key("mbit_per_client"), "must be a number ≥ 0".into()));
            }
            if !(t.weight.is_finite() && t.weight > 0.0) {
                errs.push((key("weight"), "must be above 0".into()));
            }
            for n in &t.networks {
                if n.parse::<IpNet>().is_err() {
                    errs.push((key("networks"), format!("{n:?} is not a CIDR")));
                }
            }
        }
        if !self.default_tier.is_empty() && !self.tier.iter().any(|t| t.name == self.default_tier) {
            errs.push(("bandwidth.default_tier".into(), format!("no tier is named {:?}", self.default_tier)));
        }
        errs
    }
}

/// A virtual clock: when the next byte may leave.
struct Pace(Mutex<Instant>);

impl Pace {
    /// How long to wait before sending `bytes` at `bytes_per_sec`. A clock
    /// at most [`SLACK`] behind is not moved up to now: the timer's late
    /// wake-ups are made up for, not lost, so the average is the rate.
    fn delay(&self, now: Instant, bytes: usize, bytes_per_sec: f64) -> Duration {
        let mut next = self.0.lock();
        let floor = now.checked_sub(SLACK).unwrap_or(now);
        *next = (*next).max(floor) + Duration::from_secs_f64(bytes as f64 / bytes_per_sec);
        next.saturating_duration_since(now)
    }
}

struct Tier {
    name: String,
    per_client: Option<f64>,
    weight: f64,
    networks: Vec<IpNet>,
    tokens: Vec<String>,
    pace: Pace,
    /// When the tier last sent, to know which tiers share the uplink now.
    last_sent: Mutex<Option<Instant>>,
}

/// How far a clock may lag behind now and still be owed (timer slack).
const SLACK: Duration = Duration::from_millis(50);

/// A tier counts as sending for this long after its last chunk.
const ACTIVE: Duration = Duration::from_secs(1);

pub struct Bandwidth {
    tiers: Vec<Tier>,
    default: Option<usize>,
    uplink: Option<f64>,
    clients: DashMap<(usize, ClientKey), Pace>,
    chunks: std::sync::atomic::AtomicU64,
}

impl Bandwidth {
    pub fn new(cfg: &BandwidthConfig) -> Bandwidth {
        let bytes = |mbit: f64| (mbit > 0.0).then_some(mbit * 1e6 / 8.0);
        let tiers: Vec<Tier> = cfg
            .tier
            .iter()
            .map(|t| Tier {
                name: t.name.clone(),
                per_client: bytes(t.mbit_per_client),
                weight: t.weight,
                networks: t.networks.iter().filter_map(|n| n.parse().ok()).collect(),
                tokens: t.tokens.clone(),
                pace: Pace(Mutex::new(Instant::now())),
                last_sent: Mutex::new(None),
            })
            .collect();
        let default = tiers.iter().position(|t| t.name == cfg.default_tier);
        Bandwidth {
            tiers,
            default,
            uplink: bytes(cfg.uplink_mbit),
            clients: DashMap::new(),
            chunks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.tiers.is_empty()
    }

    /// The tier of a client: by its bearer token, then its network, then
    /// the default.
    pub fn tier_of(&self, ip: Option<IpAddr>, authorization: Option<&[u8]>) -> Option<usize> {
        let token = authorization.and_then(|a| a.strip_prefix(b"Bearer ")).map(|t| t.trim_ascii());
        let by_token = token.and_then(|tok| {
            self.tiers.iter().position(|t| t.tokens.iter().any(|x| modcdn_shared::secret::secret_eq(x.as_bytes(), tok)))
        });
        by_token
            .or_else(|| ip.and_then(|ip| self.tiers.iter().position(|t| t.networks.iter().any(|n| n.contains(&ip)))))
            .or(self.default)
    }

    /// A client of `tier` starts a request: the tier shares the uplink from
    /// now, before its first chunk (else the tiers already sending would
    /// take a newcomer's share for its first chunks).
    pub fn begin(&self, tier: usize, now: Instant) {
        if let (Some(t), Some(_)) = (self.tiers.get(tier), self.uplink) {
            *t.last_sent.lock() = Some(now);
        }
    }

    pub fn tier_name(&self, tier: usize) -> &str {
        self.tiers.get(tier).map_or("", |t| t.name.as_str())
    }

    /// How long to hold a chunk of `bytes` for a client of `tier` at `ip`.
    pub fn delay(&self, tier: usize, ip: Option<IpAddr>, bytes: usize, now: Instant) -> Duration {
        let Some(t) = self.tiers.get(tier) else { return Duration::ZERO };
        if self.chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(4096) {
            self.forget_idle(now);
        }
        let mut wait = Duration::ZERO;
        if let (Some(rate), Some(ip)) = (t.per_client, ip) {
            let pace = self.clients.entry((tier, ClientKey::of(ip))).or_insert_with(|| Pace(Mutex::new(now)));
            wait = pace.delay(now, bytes, rate);
        }
        if let Some(uplink) = self.uplink {
            *t.last_sent.lock() = Some(now);
            let active: f64 = self
                .tiers
                .iter()
                .filter(|o| o.last_sent.lock().is_some_and(|at| now.saturating_duration_since(at) < ACTIVE))
                .map(|o| o.weight)
                .sum();
            let share = uplink * t.weight / active.max(t.weight);
            wait = wait.max(t.pace.delay(now, bytes, share));
        }
        wait
    }

    /// Forgets clients whose clock is in the past (nothing owed), when many
    /// are tracked: a scan once in 4096 chunks, spread thin.
    fn forget_idle(&self, now: Instant) {
        if self.clients.len() > 10_000 {
            self.clients.retain(|_, p| *p.0.lock() > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(uplink: f64) -> BandwidthConfig {
        BandwidthConfig {
            uplink_mbit: uplink,
            default_tier: "normal".into(),
            tier: vec![
                TierConfig {
                    name: "vip".into(),
                    mbit_per_client: 80.0,
                    weight: 3.0,
                    networks: vec!["10.1.0.0/16".into()],
                    tokens: vec!["vip-token".into()],
                },
                TierConfig { name: "normal".into(), mbit_per_client: 8.0, weight: 1.0, ..TierConfig::default() },
            ],
        }
    }

    #[test]
    fn tiers_by_token_then_network_then_default() {
        let b = Bandwidth::new(&cfg(0.0));
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(b.tier_of(ip("10.1.2.3"), None).map(|t| b.tier_name(t)), Some("vip"));
        assert_eq!(b.tier_of(ip("192.0.2.1"), Some(b"Bearer vip-token")).map(|t| b.tier_name(t)), Some("vip"));
        assert_eq!(b.tier_of(ip("192.0.2.1"), Some(b"Bearer other")).map(|t| b.tier_name(t)), Some("normal"));
        assert_eq!(b.tier_of(None, None).map(|t| b.tier_name(t)), Some("normal"));
    }

    #[test]
    fn each_client_is_paced_to_its_cap() {
        let b = Bandwidth::new(&cfg(0.0));
        let ip = Some("192.0.2.1".parse().expect("ip"));
        let t0 = Instant::now();
        // 8 Mbit/s = 1 MB/s: ten 100 kB chunks take a second.
        let mut now = t0;
        for _ in 0..10 {
            now += b.delay(1, ip, 100_000, now);
        }
        let took = now - t0;
        assert!(took >= Duration::from_millis(990) && took <= Duration::from_millis(1010), "{took:?}");
        // Another client has its own clock.
        assert_eq!(b.delay(1, Some("192.0.2.2".parse().expect("ip")), 100_000, t0), Duration::from_millis(100));
    }

    #[test]
    fn a_saturated_uplink_is_split_by_weight() {
        // 40 Mbit/s = 5 MB/s; vip 3 : normal 1 → 3.75 and 1.25 MB/s.
        let mut c = cfg(40.0);
        for t in &mut c.tier {
            t.mbit_per_client = 0.0;
        }
        let b = Bandwidth::new(&c);
        let ip = Some("192.0.2.1".parse().expect("ip"));
        let t0 = Instant::now();
        let (mut vip, mut normal) = (t0, t0);
        let (mut vip_bytes, mut normal_bytes) = (0usize, 0usize);
        while vip.min(normal) < t0 + Duration::from_secs(4) {
            if vip <= normal {
                vip += b.delay(0, ip, 50_000, vip).max(Duration::from_micros(1));
                vip_bytes += 50_000;
            } else {
                normal += b.delay(1, ip, 50_000, normal).max(Duration::from_micros(1));
                normal_bytes += 50_000;
            }
        }
        let ratio = vip_bytes as f64 / normal_bytes as f64;
        assert!((2.7..3.3).contains(&ratio), "vip:normal = {ratio:.2}");
    }
}
