//! Starting and stopping real node processes on 127.0.0.1 random ports.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Path of a workspace binary built next to the running test binary
/// (`target/<profile>/`), or from `MODCDN_BIN_DIR`.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("MODCDN_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/test-binary → target/<profile>/<name>
    let dir =
        exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) }).unwrap_or(Path::new("."));
    dir.join(name)
}

/// Writes an origin config for tests: random port, store under `dir`.
pub fn write_config(dir: &Path, upstream: &str, extra: &str) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("origin.toml");
    let store = dir.join("store");
    // Tests never reach the internet: unless a test names its own checksum
    // database, sum.golang.org points at a closed local port.
    let sumdb = if extra.contains("[[checksum_db]]") {
        ""
    } else {
        "[[checksum_db]]\nname = \"sum.golang.org\"\nurl = \"http://127.0.0.1:9\"\n"
    };
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nstore_dir = \"{}\"\n{extra}\n{sumdb}",
            store.display()
        ),
    )?;
    Ok(config)
}

/// A running `modcdn-origin serve`; killed when dropped.
pub struct OriginProcess {
    child: Child,
    pub url: String,
    pub config: PathBuf,
}

impl OriginProcess {
    /// Writes `<dir>/origin.toml` (listen on a random port, store in
    /// `<dir>/store`, upstream as given, plus `extra` TOML lines) and starts it.
    pub fn start(dir: &Path, upstream: &str, extra: &str) -> io::Result<OriginProcess> {
        Self::start_with_config(&write_config(dir, upstream, extra)?)
    }

    /// As [`OriginProcess::start`], with a limit on the size of any file the
    /// process writes (RLIMIT_FSIZE), so a large write fails as on a full disk.
    pub fn start_limited(dir: &Path, upstream: &str, extra: &str, max_file_bytes: u64) -> io::Result<OriginProcess> {
        let config = write_config(dir, upstream, extra)?;
        let mut cmd = Command::new("sh");
        // SIGXFSZ ignored, so the write fails with EFBIG instead of killing.
        cmd.args(["-c", "trap '' XFSZ; exec prlimit --fsize=\"$0\" -- \"$1\" serve --config \"$2\""])
            .arg(max_file_bytes.to_string())
            .arg(binary("modcdn-origin"))
            .arg(&config);
        Self::spawn(cmd, &config)
    }

    pub fn start_with_config(config: &Path) -> io::Result<OriginProcess> {
        let mut cmd = Command::new(binary("modcdn-origin"));
        cmd.args(["serve", "--config"]).arg(config);
        Self::spawn(cmd, config)
    }

    fn spawn(mut cmd: Command, config: &Path) -> io::Result<OriginProcess> {
        let bin = binary("modcdn-origin");
        let mut child = cmd
            .env("RUST_LOG", std::env::var("MODCDN_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("{}: {e} (build the workspace binaries first)", bin.display()))
            })?;
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                return Err(io::Error::other(format!("modcdn-origin did not start (exit: {status:?})")));
            }
        };
        let url = line
            .strip_prefix("GOPROXY=")
            .ok_or_else(|| io::Error::other(format!("unexpected first line {line:?}")))?
            .to_string();
        Ok(OriginProcess { child, url, config: config.to_path_buf() })
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit (bounded); returns whether it exited cleanly.
    pub fn terminate(&mut self, within: Duration) -> bool {
        // The shell's own `kill`: no procps needed on a minimal machine.
        let _ = Command::new("sh").args(["-c", &format!("kill -TERM {}", self.child.id())]).status();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OriginProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
