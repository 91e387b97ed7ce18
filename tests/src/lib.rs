//! modcdn-tests: test utilities shared by the integration tests and the
//! benchmark scripts: the fixture corpus, the fixture upstream with fault
//! injection, real node processes, and the real go command.

pub mod corpus;
pub mod go;
pub mod node;
pub mod sumdb;
pub mod upstream;

/// A fresh temp directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("modcdn-test-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}
