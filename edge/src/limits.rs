//! Per-client limits: a token bucket of requests per second (governor's
//! GCRA, one state per client) and caps on what a client holds at once
//! (requests in flight here, open connections in `conn`), all keyed
//! by client: an IPv4 address, or the /64 of an IPv6 address (one host
//! commonly holds a whole /64). O(1) per request, sharded maps, no scan under
//! a lock on the request path. Request limits are off unless configured;
//! the connection cap is on by default.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimitConfig;

/// Clients tracked before idle ones are dropped (checked every
/// [`HOUSEKEEPING_EVERY`] requests, so the cost is spread thin).
const MAX_TRACKED: usize = 100_000;
const HOUSEKEEPING_EVERY: u64 = 4096;

/// Whom a limit counts: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6Net(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(u32::from(v4)),
                None => ClientKey::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// One GCRA state per client.
type Keyed<C> = RateLimiter<ClientKey, DashMapStateStore<ClientKey>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct Limits<C: Clock = DefaultClock> {
    rate: Option<Keyed<C>>,
    clock: C,
    in_flight: Arc<PerClient>,
    admitted: AtomicU64,
}

/// Why a request was refused, and when to come back.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_secs: u64,
    pub reason: &'static str,
}

/// Counts what each client holds at once (requests in flight, open
/// connections) against a cap; 0 means no cap.
pub struct PerClient {
    max: u32,
    held: DashMap<ClientKey, u32>,
}

/// One unit a client holds, given back when dropped.
pub struct Slot {
    of: Arc<PerClient>,
    key: ClientKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.of.held.remove_if_mut(&self.key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl PerClient {
    pub fn new(max: u32) -> Arc<PerClient> {
        Arc::new(PerClient { max, held: DashMap::new() })
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// A slot for `ip`'s client, or `None` at its cap. O(1), one shard locked.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = ClientKey::of(ip);
        let mut n = self.held.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(n);
        Some(Slot { of: Arc::clone(self), key })
    }
}

impl Limits<DefaultClock> {
    pub fn new(cfg: &RateLimitConfig) -> Arc<Limits> {
        Limits::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub fn with_clock(cfg: &RateLimitConfig, clock: C) -> Arc<Limits<C>> {
        let quota = (cfg.requests_per_sec > 0.0)
            .then(|| Quota::with_period(Duration::from_secs_f64(1.0 / cfg.requests_per_sec)))
            .flatten()
            .map(|q| q.allow_burst(NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN)));
        Arc::new(Limits {
            rate: quota.map(|q| RateLimiter::dashmap_with_clock(q, clock.clone())),
            clock,
            in_flight: PerClient::new(cfg.max_in_flight_per_ip),
            admitted: AtomicU64::new(0),
        })
    }

    /// Whether any limit is configured.
    pub fn enabled(&self) -> bool {
        self.rate.is_some() || self.in_flight.enabled()
    }

    /// Admits one request from `ip` or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Option<Slot>, Refused> {
        if let Some(rate) = &self.rate {
            if self.admitted.fetch_add(1, Ordering::Relaxed).is_multiple_of(HOUSEKEEPING_EVERY)
                && rate.len() > MAX_TRACKED
            {
                // A client whose bucket is full again carries no state worth keeping.
                rate.retain_recent();
                rate.shrink_to_fit();
            }
            if let Err(not_until) = rate.check_key(&ClientKey::of(ip)) {
                let wait = not_until.wait_time_from(self.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(Refused { retry_after_secs: secs.max(1), reason: "request rate" });
            }
        }
        if !self.in_flight.enabled() {
            return Ok(None);
        }
        match self.in_flight.take(ip) {
            Some(slot) => Ok(Some(slot)),
            None => Err(Refused { retry_after_secs: 1, reason: "requests in flight" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn bucket_refills_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let cfg = RateLimitConfig { requests_per_sec: 10.0, burst: 3, max_in_flight_per_ip: 0, ..Default::default() };
        let l = Limits::with_clock(&cfg, clock.clone());
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.admit(ip).is_ok());
        }
        let refused = l.admit(ip).err().expect("over the burst");
        assert_eq!(refused.retry_after_secs, 1);
        assert!(l.admit(other).is_ok(), "buckets are per IP");
        clock.advance(Duration::from_millis(100));
        assert!(l.admit(ip).is_ok(), "one token back after 1/rate");
        assert!(l.admit(ip).is_err());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let clock = FakeRelativeClock::default();
        let cfg = RateLimitConfig { requests_per_sec: 1.0, burst: 2, max_in_flight_per_ip: 0, ..Default::default() };
        let l = Limits::with_clock(&cfg, clock);
        for ip in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
            assert!(l.admit(ip.parse().expect("ip")).is_ok(), "{ip}");
        }
        assert!(l.admit("2001:db8:1:2::77".parse().expect("ip")).is_err(), "the same /64 shares one bucket");
        assert!(l.admit("2001:db8:1:3::1".parse().expect("ip")).is_ok(), "another /64 has its own");
        assert_eq!(
            ClientKey::of("::ffff:10.0.0.1".parse().expect("ip")),
            ClientKey::of("10.0.0.1".parse().expect("ip"))
        );
    }

    #[test]
    fn in_flight_cap_frees_on_drop() {
        let l = Limits::new(&RateLimitConfig {
            requests_per_sec: 0.0,
            burst: 0,
            max_in_flight_per_ip: 2,
            ..Default::default()
        });
        let ip: IpAddr = "::1".parse().expect("ip");
        let a = l.admit(ip).expect("first");
        let _b = l.admit(ip).expect("second");
        assert!(l.admit(ip).is_err());
        drop(a);
        assert!(l.admit(ip).is_ok());
    }

    #[test]
    fn unlimited_by_default() {
        let l = Limits::new(&RateLimitConfig::default());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..10_000 {
            assert!(matches!(l.admit(ip), Ok(None)));
        }
    }
}
