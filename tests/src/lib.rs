//! modcdn-tests: test utilities shared by the integration tests and the
//! benchmark scripts: the fixture corpus, the fixture upstream with fault
//! injection, real node processes, and the real go command.

pub mod corpus;
pub mod git;
pub mod go;
pub mod http;
pub mod node;
pub mod seaweed;
pub mod sumdb;
pub mod upstream;

/// A fresh temp directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("modcdn-test-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

/// Every file under `dir`, as paths relative to it, sorted.
pub fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if let Ok(rel) = e.path().strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}
