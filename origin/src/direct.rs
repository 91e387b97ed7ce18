//! `direct`: fetching from version control with the go command itself, as
//! Athens does — `go mod download -json` and `go list -m -json` in a sandbox
//! (its own GOPATH, module and build caches; GOPROXY=direct; the origin
//! verifies against the checksum database itself), with a timeout and a
//! concurrency limit.
//!
//! Public and private fetches run apart: each has its own sandbox (so a
//! module cached by one is never answered by the other) and budget. Only
//! private fetches see credentials — the go command's usual places
//! (`.netrc`, git's config and credential helpers, ssh keys) in
//! `direct.home`, and the origin's `SSH_AUTH_SOCK`, `NETRC` and `GIT_*`
//! environment. Public fetches run with HOME `<dir>/public/home` (where an
//! operator may put a `.gitconfig` without credentials) and no system git
//! config.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use modcdn_shared::Request;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::error::UpstreamError;
use crate::upstream::Fetched;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectConfig {
    /// Sandbox for the go command (GOPATH, module cache, build cache).
    /// Default `modcdn-data/direct`.
    pub dir: PathBuf,
    /// HOME of the go command for private routes (its `.netrc`,
    /// `.gitconfig`, ssh keys). Default: the origin's own HOME. Public
    /// fetches never see it.
    pub home: Option<PathBuf>,
    /// Longest a go command may run, in seconds. Default 300.
    pub timeout_secs: u64,
    /// go commands at once. Default 4.
    pub concurrency: usize,
}

impl Default for DirectConfig {
    fn default() -> Self {
        DirectConfig { dir: PathBuf::from("modcdn-data/direct"), home: None, timeout_secs: 300, concurrency: 4 }
    }
}

pub struct Direct {
    /// GOPATH, module and build caches, working directory.
    sandbox: PathBuf,
    /// HOME; `None`: the origin's own.
    home: Option<PathBuf>,
    /// Whether the origin's credential environment is passed on.
    credentials: bool,
    timeout: Duration,
    slots: Semaphore,
}

/// What the go command prints with -json (the parts used here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoJson {
    version: Option<String>,
    time: Option<String>,
    versions: Option<Vec<String>>,
    go_mod: Option<String>,
    zip: Option<String>,
    error: Option<serde_json::Value>,
}

impl Direct {
    /// Fetches for the public chain: no credentials of any kind.
    pub fn public(cfg: &DirectConfig) -> Direct {
        let sandbox = cfg.dir.join("public");
        Direct { home: Some(sandbox.join("home")), sandbox, credentials: false, ..Direct::private(cfg) }
    }

    /// Fetches for private routes, with the credentials in `direct.home`.
    pub fn private(cfg: &DirectConfig) -> Direct {
        Direct {
            sandbox: cfg.dir.join("private"),
            home: cfg.home.clone(),
            credentials: true,
            timeout: Duration::from_secs(cfg.timeout_secs),
            slots: Semaphore::new(cfg.concurrency.max(1)),
        }
    }

    /// Answers `key` (an escaped GOPROXY path) from version control.
    pub async fn fetch(&self, key: &str) -> Result<Fetched, UpstreamError> {
        let req = Request::parse(&format!("/{key}"))
            .map_err(|e| UpstreamError::NotFound { status: 404, message: format!("direct: {e}") })?;
        let module = req.module().map(|m| m.as_str().to_string()).unwrap_or_default();
        let body: Vec<u8> = match &req {
            // A zip streams from the go command's module cache, never whole in memory.
            Request::Zip(_, v) => {
                let j = self.go(&["mod", "download", "-json", &format!("{module}@{v}")]).await?;
                let file = j.zip.ok_or_else(|| UpstreamError::Body(format!("direct: go printed no zip for {key}")))?;
                return open_stream(&file).await;
            }
            Request::List(_) => {
                let j = self.go(&["list", "-m", "-versions", "-json", &module]).await?;
                let mut text = j.versions.unwrap_or_default().join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                text.into_bytes()
            }
            Request::Latest(_) | Request::Info(..) | Request::Query(..) => {
                let query = req.version().map(|v| v.as_str().to_string()).unwrap_or_else(|| "latest".into());
                let j = self.go(&["list", "-m", "-json", &format!("{module}@{query}")]).await?;
                serde_json::to_vec(&serde_json::json!({"Version": j.version, "Time": j.time})).unwrap_or_default()
            }
            Request::Mod(_, v) => {
                let j = self.go(&["mod", "download", "-json", &format!("{module}@{v}")]).await?;
                let file =
                    j.go_mod.ok_or_else(|| UpstreamError::Body(format!("direct: go printed no go.mod for {key}")))?;
                let limit = crate::validate::size_limit(modcdn_shared::Kind::Mod);
                let f = tokio::fs::File::open(&file).await.map_err(|e| UpstreamError::Body(format!("direct: {e}")))?;
                let (body, cut) = read_capped(f, limit as usize).await;
                if cut {
                    return Err(UpstreamError::Body(format!("direct: {key}: go.mod above the {limit}-byte limit")));
                }
                body
            }
            Request::SumDb(_) => {
                return Err(UpstreamError::NotFound { status: 404, message: "direct: not a module path".into() })
            }
        };
        let len = body.len() as u64;
        Ok(Fetched {
            upstream: "direct".into(),
            content_length: Some(len),
            body: Box::new(futures::stream::iter([Ok(Bytes::from(body))])),
        })
    }

    /// Runs the go command in the sandbox and reads its JSON answer.
    async fn go(&self, args: &[&str]) -> Result<GoJson, UpstreamError> {
        let _slot = self.slots.acquire().await.map_err(|_| UpstreamError::Connect("direct: shutting down".into()))?;
        let dir = std::path::absolute(&self.sandbox).unwrap_or_else(|_| self.sandbox.clone());
        let home = self.home.clone().or_else(|| std::env::var_os("HOME").map(PathBuf::from)).unwrap_or(dir.clone());
        for d in [dir.join("work"), home.clone()] {
            tokio::fs::create_dir_all(&d)
                .await
                .map_err(|e| UpstreamError::Connect(format!("direct: {}: {e}", d.display())))?;
        }
        let mut cmd = tokio::process::Command::new("go");
        cmd.args(args)
            .current_dir(dir.join("work"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("GOPATH", dir.join("gopath"))
            .env("GOMODCACHE", dir.join("modcache"))
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPROXY", "direct")
            .env("GOSUMDB", "off")
            .env("GOFLAGS", "-modcacherw")
            .env("GO111MODULE", "on")
            .env("GOTOOLCHAIN", "local")
            .env("GOENV", "off")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("CGO_ENABLED", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in std::env::vars_os() {
            // Transport settings for every fetch; credentials (and git
            // settings, which can name them) for private ones only.
            let k_str = k.to_string_lossy();
            let credential = k_str.starts_with("GIT_") && k_str != "GIT_TERMINAL_PROMPT"
                || matches!(&*k_str, "SSH_AUTH_SOCK" | "NETRC");
            if matches!(&*k_str, "GOVCS" | "GOINSECURE") || credential && self.credentials {
                cmd.env(&k, v);
            }
        }
        if !self.credentials {
            cmd.env("GIT_CONFIG_NOSYSTEM", "1");
        }
        let mut child = cmd.spawn().map_err(|e| UpstreamError::Connect(format!("direct: cannot run go: {e}")))?;
        let timeout = self.timeout;
        // What it prints is read with a cap (the rest drained, so that it
        // never blocks on a full pipe); nothing it prints grows the origin.
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let run = async move {
            let (out, err, status) = tokio::join!(
                async move {
                    match stdout {
                        Some(s) => read_capped(s, OUTPUT_CAP).await.0,
                        None => Vec::new(),
                    }
                },
                async move {
                    match stderr {
                        Some(s) => read_capped(s, OUTPUT_CAP).await.0,
                        None => Vec::new(),
                    }
                },
                child.wait()
            );
            status.map(|status| Output { status, stdout: out, stderr: err })
        };
        let out = match tokio::time::timeout(timeout, run).await {
            Err(_) => {
                return Err(UpstreamError::Timeout(format!(
                    "direct: go {} took over {}s",
                    args.join(" "),
                    timeout.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(UpstreamError::Connect(format!("direct: go: {e}"))),
            Ok(Ok(out)) => out,
        };
        let parsed: Option<GoJson> = serde_json::from_slice(&out.stdout).ok();
        let error = match &parsed {
            Some(GoJson { error: Some(e), .. }) => {
                Some(e.get("Err").and_then(|v| v.as_str()).map(str::to_string).unwrap_or_else(|| e.to_string()))
            }
            Some(_) if out.status.success() => None,
            _ => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        };
        match (parsed, error) {
            (Some(j), None) => Ok(j),
            (_, Some(e)) => Err(classify(&e)),
            (None, None) => Err(UpstreamError::Body("direct: go printed no JSON".into())),
        }
    }
}

/// The most of the go command's output that is read; JSON answers are far
/// smaller, and error messages are cut much shorter still.
const OUTPUT_CAP: usize = 1 << 20;

struct Output {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Reads at most `cap` bytes of `r` and discards the rest; whether it was cut.
async fn read_capped(r: impl tokio::io::AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut r = r;
    let _ = (&mut r).take(cap as u64).read_to_end(&mut buf).await;
    let rest = tokio::io::copy(&mut r, &mut tokio::io::sink()).await.unwrap_or(0);
    (buf, rest > 0)
}

/// A file of the module cache as a streamed upstream answer.
async fn open_stream(file: &str) -> Result<Fetched, UpstreamError> {
    let f = tokio::fs::File::open(file).await.map_err(|e| UpstreamError::Body(format!("direct: {e}")))?;
    let len = f.metadata().await.map_err(|e| UpstreamError::Body(format!("direct: {e}")))?.len();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    let body = futures::StreamExt::map(stream, |r| r.map_err(|e| UpstreamError::Body(format!("direct: {e}"))));
    Ok(Fetched { upstream: "direct".into(), content_length: Some(len), body: Box::new(body) })
}

/// The go command's "does not exist" errors are 404s (as proxy.golang.org
/// answers them); anything else is an upstream failure.
fn classify(message: &str) -> UpstreamError {
    let not_found = [
        "unknown revision",
        "invalid version",
        "no matching versions",
        "malformed module path",
        "repository not found",
        "does not exist",
        "404 Not Found",
        "410 Gone",
    ];
    // A missing git (or go) is this node's failure, and a VCS that cannot be
    // reached or refuses our credentials is upstream's: neither is a
    // missing module (git says "repository not found" for both).
    let broken = [
        "executable file not found",
        "missing Git command",
        "cannot run go",
        "could not read Username",
        "could not read Password",
        "terminal prompts disabled",
        "Authentication failed",
        "unable to access",
        "Permission denied",
        "Could not resolve host",
        "unable to look up",
        "Connection refused",
        "connection refused",
        "timed out",
        "i/o timeout",
    ];
    let short: String = message.lines().take(3).collect::<Vec<_>>().join(" ").chars().take(400).collect();
    if !broken.iter().any(|b| message.contains(b)) && not_found.iter().any(|n| message.contains(n)) {
        UpstreamError::NotFound { status: 404, message: format!("direct: {short}") }
    } else {
        UpstreamError::Status { status: 502, message: format!("direct: {short}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_modules_are_404_and_broken_tools_are_not() {
        for m in [
            "example.com/x@v9.9.9: invalid version: unknown revision v9.9.9",
            "no matching versions for query \"latest\"",
        ] {
            assert!(classify(m).is_not_found(), "{m}");
        }
        for m in [
            "go: missing Git command. See https://golang.org/s/gogetcmd",
            "exec: \"git\": executable file not found in $PATH: invalid version",
            "context deadline exceeded",
            "fatal: could not read Username for 'https://git.corp.example': terminal prompts disabled",
            "fatal: unable to access 'https://git.corp.example/x/': Could not resolve host: git.corp.example",
            "remote: Repository not found. fatal: Authentication failed for 'https://git.corp.example/x/'",
            "git@git.corp.example: Permission denied (publickey). fatal: Could not read from remote repository.",
            "invalid version: git ls-remote -q origin: exit status 128: fatal: unable to look up git.corp.example (port 9418) (Name or service not known)",
        ] {
            assert!(!classify(m).is_not_found(), "{m}");
        }
    }
}
