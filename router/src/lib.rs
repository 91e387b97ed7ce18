//! modcdn-router: which origin serves a module. A consistent-hash ring per
//! region with bounded loads, GeoIP regions, a live load view, and
//! membership from a TOML file.
//!
//! The routing path never does I/O: it reads immutable snapshots and atomic
//! counters. Reading files (membership, GeoIP database) happens only when a
//! snapshot is built ([`watch`]), and origins are asked for their load by a
//! background thread ([`health`]).

pub mod geo;
pub mod health;
pub mod load;
pub mod membership;
pub mod plan;
pub mod ring;
pub mod route;
pub mod watch;
