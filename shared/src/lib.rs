//! modcdn-shared: the GOPROXY protocol, once, for every modcdn node.
//!
//! Module path and version rules ([`module`], [`semver`]), the typed request
//! parsed from a URL ([`request`]), the cache and status table ([`policy`]),
//! `h1:` hashes ([`dirhash`]) and module zip checks ([`modzip`]), config
//! loading ([`config`]) and logging ([`telemetry`]).
//!
//! This crate must never do network I/O or know about any server framework:
//! its tests run in milliseconds and every node agrees on what it says.

pub mod config;
pub mod dirhash;
pub mod gomod;
pub mod hot;
pub mod module;
pub mod modzip;
pub mod net;
pub mod note;
pub mod pattern;
pub mod policy;
pub mod purge;
pub mod request;
pub mod secret;
pub mod semver;
pub mod telemetry;
pub mod tlog;

pub use request::{Kind, Request, RequestError};
