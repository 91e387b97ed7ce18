//! modcdn-shared: the GOPROXY protocol, once, for every modcdn node.
//!
//! Module path and version rules ([`module`], [`semver`]), the typed request
//! parsed from a URL ([`request`]), the cache and status table ([`policy`]),
//! `h1:` hashes ([`dirhash`]) and module zip checks ([`modzip`]), config
//! loading ([`config`]) and logging ([`telemetry`]).
//!
//! This crate knows no server framework, and its only I/O is what a node
//! asks of it: [`config`] reads the config file, [`telemetry::init`] starts
//! the OTLP trace exporter when one is configured, and [`background`] runs
//! the writes a node makes behind its answers on low-priority threads.
//! Everything else is pure, so its tests run in milliseconds and every node
//! agrees on what it says.

pub mod background;
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
