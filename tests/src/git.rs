//! Git repositories on this machine for `direct` tests, and a git server on
//! 127.0.0.1 that serves them over smart HTTP (`git http-backend` as CGI)
//! only to a client with the right basic-auth credentials, as a company's
//! git host does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;

/// Runs git in `dir`; panics with its stderr if it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git").args(args).current_dir(dir).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A bare repository `<repos>/<name>` holding module `module`, one commit
/// and tag per version of `tags`.
pub fn bare_repo(repos: &Path, name: &str, module: &str, tags: &[&str]) -> PathBuf {
    let src = repos.join(".src").join(name);
    std::fs::create_dir_all(&src).expect("src");
    git(&src, &["init", "-q"]);
    git(&src, &["config", "user.email", "dev@corp.example"]);
    git(&src, &["config", "user.name", "dev"]);
    std::fs::write(src.join("go.mod"), format!("module {module}\n\ngo 1.19\n")).expect("go.mod");
    for (i, tag) in tags.iter().enumerate() {
        std::fs::write(src.join("lib.go"), format!("package lib\n\nfunc Hello() string {{ return \"{name} {i}\" }}\n"))
            .expect("lib.go");
        git(&src, &["add", "."]);
        git(&src, &["commit", "-q", "-m", tag]);
        git(&src, &["tag", tag]);
    }
    let bare = repos.join(name);
    std::fs::create_dir_all(bare.parent().unwrap_or(repos)).expect("repos");
    git(repos, &["clone", "-q", "--bare", src.to_str().unwrap_or(""), bare.to_str().unwrap_or("")]);
    bare
}

/// A HOME whose `.gitconfig` sends `https://<host>/` (and its ssh and git forms)
/// to `target` (a `file://` or `http://` URL ending in `/`).
pub fn home_rewriting(home: &Path, host: &str, target: &str) -> PathBuf {
    std::fs::create_dir_all(home).expect("home");
    std::fs::write(
        home.join(".gitconfig"),
        format!(
            "[url \"{target}\"]\n\tinsteadOf = https://{host}/\n\tinsteadOf = ssh://{host}/\n\
             \tinsteadOf = git+ssh://{host}/\n\tinsteadOf = git://{host}/\n[protocol \"file\"]\n\tallow = always\n"
        ),
    )
    .expect("gitconfig");
    home.to_path_buf()
}

struct Inner {
    repos: PathBuf,
    /// `Authorization` header value required.
    authorization: String,
    served: AtomicU64,
    refused: AtomicU64,
}

/// The git server; stopped when dropped.
pub struct GitServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl GitServer {
    /// Serves the bare repositories under `repos` to clients sending
    /// basic-auth `user:password`.
    pub async fn start(repos: PathBuf, user_password: &str) -> std::io::Result<GitServer> {
        use base64::Engine;
        let inner = Arc::new(Inner {
            repos,
            authorization: format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_password)),
            served: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let app = axum::Router::new().fallback(serve).with_state(Arc::clone(&inner));
        let (addr, tx) = crate::http::serve_on(SocketAddr::from(([127, 0, 0, 1], 0)), app).await?;
        Ok(GitServer { addr, inner, stop: Some(tx) })
    }

    /// `http://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Requests answered with the credentials.
    pub fn served(&self) -> u64 {
        self.inner.served.load(Ordering::Relaxed)
    }

    /// Requests refused for want of them.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn serve(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let reply = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        r
    };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    if given != inner.authorization {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        let mut r = reply(StatusCode::UNAUTHORIZED, "credentials required\n");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"git\""));
        return r;
    }
    inner.served.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return reply(StatusCode::BAD_REQUEST, "body\n");
    };
    let header_env =
        |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &inner.repos)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header_env(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header_env(header::CONTENT_ENCODING))
        .env("HTTP_GIT_PROTOCOL", header_env(header::HeaderName::from_static("git-protocol")))
        .env("REMOTE_USER", "dev")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let Ok(mut child) = cmd.spawn() else { return reply(StatusCode::INTERNAL_SERVER_ERROR, "git\n") };
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    }
    let Ok(out) = child.wait_with_output().await else { return reply(StatusCode::INTERNAL_SERVER_ERROR, "git\n") };
    // CGI output: header lines, a blank line, the body.
    let split = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else { return reply(StatusCode::BAD_GATEWAY, "git http-backend\n") };
    let mut resp = Response::new(Body::from(out.stdout[end + sep..].to_vec()));
    for line in String::from_utf8_lossy(&out.stdout[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|c| c.parse().ok());
            *resp.status_mut() = code.and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let (Ok(n), Ok(v)) = (header::HeaderName::try_from(name.trim()), header::HeaderValue::from_str(value))
        {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}
