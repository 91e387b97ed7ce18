//! Running the real go command, hermetically: its own GOPATH, module cache,
//! build cache and HOME in a temp dir; only the given GOPROXY; no network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct GoEnv {
    pub root: PathBuf,
    pub proxy: String,
    /// GOSUMDB (`off` unless set).
    pub sumdb: String,
}

impl GoEnv {
    pub fn new(root: &Path, proxy: &str) -> GoEnv {
        let _ = std::fs::create_dir_all(root.join("home"));
        GoEnv { root: root.to_path_buf(), proxy: proxy.to_string(), sumdb: "off".into() }
    }

    /// Runs `go args...` in `dir`.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Output {
        self.run_env(dir, &[], args)
    }

    /// Runs and asserts success, with extra environment.
    pub fn ok_env(&self, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self.run_env(dir, env, args);
        assert!(
            out.status.success(),
            "go {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `go args...` in `dir` with extra environment.
    pub fn run_env(&self, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
        let out = Command::new("go")
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.root.join("home"))
            .env("GOPATH", self.root.join("gopath"))
            .env("GOMODCACHE", self.root.join("modcache"))
            .env("GOCACHE", self.root.join("gocache"))
            .env("GOPROXY", &self.proxy)
            .env("GOSUMDB", &self.sumdb)
            .env("GOFLAGS", "-modcacherw -mod=mod")
            .env("GO111MODULE", "on")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .env("GOENV", "off")
            .envs(env.iter().copied())
            .output();
        match out {
            Ok(o) => o,
            Err(e) => panic!("cannot run go (apt-get install golang-go): {e}"),
        }
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
        self.ok_env(dir, &[], args)
    }
}

/// `go mod download -json` of every one of `versions` in `dir`, asserting
/// that the go command's own hashes equal the corpus's (and so
/// `shared::dirhash`) and that none failed.
pub fn download_and_check(go: &GoEnv, dir: &Path, versions: &[crate::corpus::ModVersion]) {
    let args: Vec<String> = versions.iter().map(|v| format!("{}@{}", v.path, v.version)).collect();
    let mut cmd = vec!["mod", "download", "-json"];
    cmd.extend(args.iter().map(String::as_str));
    let out = go.ok(dir, &cmd);
    let mut seen = 0;
    for item in serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>() {
        let item = item.expect("json");
        let (path, version) = (item["Path"].as_str().unwrap_or(""), item["Version"].as_str().unwrap_or(""));
        assert!(item.get("Error").is_none(), "{path}@{version}: {}", item["Error"]);
        let want = versions.iter().find(|v| v.path == path && v.version == version).expect("known version");
        assert_eq!(item["Sum"].as_str(), Some(want.sum.as_str()), "{path}@{version} zip hash");
        assert_eq!(item["GoModSum"].as_str(), Some(want.go_mod_sum.as_str()), "{path}@{version} go.mod hash");
        seen += 1;
    }
    assert_eq!(seen, versions.len());
}
