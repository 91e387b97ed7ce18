//! Per-client limits: a token bucket of requests per second and a cap on
//! requests in flight, both by client IP. Off (unlimited) unless configured,
//! since edges on a trusted network need neither.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::RateLimitConfig;

/// Buckets kept before idle ones are dropped.
const MAX_TRACKED: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Limits {
    rate: f64,
    burst: f64,
    max_in_flight: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    in_flight: Mutex<HashMap<IpAddr, u32>>,
}

/// Why a request was refused, and when to come back.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_secs: u64,
    pub reason: &'static str,
}

/// Holds a client's in-flight slot until dropped.
pub struct Permit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self.limits.in_flight.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    pub fn new(cfg: &RateLimitConfig) -> Arc<Limits> {
        Arc::new(Limits {
            rate: cfg.requests_per_sec,
            burst: f64::from(cfg.burst),
            max_in_flight: cfg.max_in_flight_per_ip,
            buckets: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Whether any limit is configured.
    pub fn enabled(&self) -> bool {
        self.rate > 0.0 || self.max_in_flight > 0
    }

    /// Admits one request from `ip` or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Option<Permit>, Refused> {
        if self.rate > 0.0 {
            let mut buckets = self.buckets.lock();
            if buckets.len() >= MAX_TRACKED {
                // A full bucket carries no state worth keeping.
                let (rate, burst) = (self.rate, self.burst);
                buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            }
            let b = buckets.entry(ip).or_insert(Bucket { tokens: self.burst, at: now });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
            b.at = now;
            if b.tokens < 1.0 {
                let wait = (1.0 - b.tokens) / self.rate;
                return Err(Refused { retry_after_secs: wait.ceil().max(1.0) as u64, reason: "request rate" });
            }
            b.tokens -= 1.0;
        }
        if self.max_in_flight == 0 {
            return Ok(None);
        }
        let mut map = self.in_flight.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_in_flight {
            return Err(Refused { retry_after_secs: 1, reason: "requests in flight" });
        }
        *n += 1;
        Ok(Some(Permit { limits: Arc::clone(self), ip }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = Limits::new(&RateLimitConfig { requests_per_sec: 10.0, burst: 3, max_in_flight_per_ip: 0 });
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.admit(ip, t0).is_ok());
        }
        let refused = l.admit(ip, t0).err().expect("over the burst");
        assert_eq!(refused.retry_after_secs, 1);
        assert!(l.admit(other, t0).is_ok(), "buckets are per IP");
        assert!(l.admit(ip, t0 + Duration::from_millis(100)).is_ok(), "one token back after 1/rate");
        assert!(l.admit(ip, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn in_flight_cap_frees_on_drop() {
        let l = Limits::new(&RateLimitConfig { requests_per_sec: 0.0, burst: 0, max_in_flight_per_ip: 2 });
        let ip: IpAddr = "::1".parse().expect("ip");
        let now = Instant::now();
        let a = l.admit(ip, now).expect("first");
        let _b = l.admit(ip, now).expect("second");
        assert!(l.admit(ip, now).is_err());
        drop(a);
        assert!(l.admit(ip, now).is_ok());
    }

    #[test]
    fn unlimited_by_default() {
        let l = Limits::new(&RateLimitConfig::default());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..10_000 {
            assert!(matches!(l.admit(ip, Instant::now()), Ok(None)));
        }
    }
}
