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

/// The cluster token test origins and edges share (origins'
/// `operator.token`, edges' `origin.token`).
pub const CLUSTER_TOKEN: &str = "test-cluster-token-0123456789";
/// The edges' `admin.token` in tests.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Writes an origin config for tests: random ports (public and operator
/// listeners), the cluster token, store under `dir`.
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
            "listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nstore_dir = \"{}\"\n{extra}\n{sumdb}\n\
             [operator]\nlisten = \"127.0.0.1:0\"\ntoken = \"{CLUSTER_TOKEN}\"\n",
            store.display()
        ),
    )?;
    Ok(config)
}

/// A running `modcdn-origin serve`; killed when dropped.
pub struct OriginProcess {
    child: Child,
    /// `http://host:port` of the public (GOPROXY) listener.
    pub url: String,
    /// `http://host:port` of the operator listener.
    pub operator: String,
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

    /// As [`OriginProcess::start`], with the store on a tmpfs of its own of
    /// `bytes` bytes and `inodes` inodes, mounted in a mount namespace of
    /// the process (`unshare`), so that it fills up as a real disk does.
    pub fn start_on_tmpfs(
        dir: &Path,
        upstream: &str,
        extra: &str,
        bytes: u64,
        inodes: u64,
    ) -> io::Result<OriginProcess> {
        let config = write_config(dir, upstream, extra)?;
        let store = dir.join("store");
        std::fs::create_dir_all(&store)?;
        let mut cmd = on_tmpfs(&store, bytes, inodes, &binary("modcdn-origin"));
        cmd.args(["serve", "--config"]).arg(&config);
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
            for _ in 0..2 {
                if let Some(Ok(line)) = lines.next() {
                    let _ = tx.send(line);
                }
            }
            for _ in lines {}
        });
        let mut addresses = Vec::new();
        for prefix in ["GOPROXY=", "OPERATOR="] {
            let line = match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(io::Error::other(format!("modcdn-origin did not start (exit: {status:?})")));
                }
            };
            let address = line
                .strip_prefix(prefix)
                .ok_or_else(|| io::Error::other(format!("unexpected line {line:?}, want {prefix}")))?;
            addresses.push(address.to_string());
        }
        let (url, operator) = (addresses.remove(0), addresses.remove(0));
        Ok(OriginProcess { child, url, operator, config: config.to_path_buf() })
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

/// A free port on 127.0.0.1 (bound, read, released). Pingora binds the
/// address it is given, so edges get concrete ports; [`EdgeProcess`]
/// retries with others in the rare case one was taken in between.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether process `pid` holds a socket listening on `addr`
/// (`127.0.0.1:port`), as `/proc` says.
fn listens(pid: u32, addr: &str) -> bool {
    let Some(port) = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) else { return false };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    let sockets: std::collections::HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local_port = cols.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
        local_port == Some(port) && cols.get(3) == Some(&"0A") && cols.get(9).is_some_and(|i| sockets.contains(*i))
    })
}

/// The test GeoIP database (127.0.1.0/24 CN, 127.0.2.0/24 US, ...).
pub fn test_mmdb() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../geo-data/test-country.mmdb")
}

/// One origin as the membership file names it.
pub struct Member<'a> {
    pub id: &'a str,
    /// `http://host:port`, as [`OriginProcess::url`].
    pub url: &'a str,
    /// `http://host:port`, as [`OriginProcess::operator`].
    pub operator: &'a str,
    pub region: &'a str,
}

impl<'a> Member<'a> {
    /// `origin` as member `id` of `region`.
    pub fn of(id: &'a str, origin: &'a OriginProcess, region: &'a str) -> Member<'a> {
        Member { id, url: &origin.url, operator: &origin.operator, region }
    }
}

/// Writes a membership file for `members`, routing by the test GeoIP
/// database, with fast health checks.
pub fn write_membership(path: &Path, members: &[Member<'_>]) -> io::Result<()> {
    let mut s = format!(
        "geoip_db = \"{}\"\n[health]\ninterval_ms = 200\ntimeout_ms = 200\nfall = 2\nrise = 2\n\n",
        test_mmdb().display()
    );
    for m in members {
        let bare = |url: &str| url.trim_start_matches("http://").trim_start_matches("https://").to_string();
        let (address, operator) = (bare(m.url), bare(m.operator));
        s.push_str(&format!(
            "[[origin]]\nid = \"{}\"\naddress = \"{address}\"\noperator = \"{operator}\"\nregion = \"{}\"\n\n",
            m.id, m.region
        ));
    }
    std::fs::write(path, s)
}

/// `bin` (its arguments to add) in a user and mount namespace of its own
/// (`unshare`), a tmpfs of `bytes` bytes and `inodes` inodes mounted at `at`
/// first: a disk that fills up as a real one does.
fn on_tmpfs(at: &Path, bytes: u64, inodes: u64, bin: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-rm",
        "sh",
        "-c",
        "mount -t tmpfs -o size=\"$0\",nr_inodes=\"$1\" modcdn-test \"$2\" && shift 2 && exec \"$@\"",
    ])
    .arg(bytes.to_string())
    .arg(inodes.to_string())
    .arg(at)
    .arg(bin);
    cmd
}

/// A running `modcdn-edge serve`; killed when dropped.
pub struct EdgeProcess {
    child: Option<Child>,
    /// What it runs under besides its config.
    under: Under,
    pub url: String,
    pub admin: String,
    pub config: PathBuf,
    pub dir: PathBuf,
}

/// What an edge runs under besides its config.
#[derive(Clone, Copy)]
enum Under {
    Plain,
    /// Its cache directory a tmpfs of so many bytes (see
    /// [`EdgeProcess::start_on_tmpfs`]).
    Tmpfs(u64),
    /// A file limit of so many descriptors.
    Files(u64),
}

impl EdgeProcess {
    /// Writes `<dir>/edge.toml` (random ports, cache in `<dir>/cache`,
    /// membership in `<dir>/membership.toml` from `members`, admin token
    /// [`ADMIN_TOKEN`], origin token [`CLUSTER_TOKEN`], plus `extra` TOML)
    /// and starts it.
    pub fn start(dir: &Path, members: &[Member<'_>], extra: &str) -> io::Result<EdgeProcess> {
        Self::start_with(dir, members, extra, Under::Plain)
    }

    /// As [`EdgeProcess::start`], its cache directory a tmpfs of `bytes`
    /// (mounted in a user and mount namespace of its own, as the origin's
    /// in [`OriginProcess::start_on_tmpfs`]): a disk that fills up.
    pub fn start_on_tmpfs(dir: &Path, members: &[Member<'_>], extra: &str, bytes: u64) -> io::Result<EdgeProcess> {
        Self::start_with(dir, members, extra, Under::Tmpfs(bytes))
    }

    /// As [`EdgeProcess::start`], with a file limit of `files` descriptors.
    pub fn start_with_file_limit(
        dir: &Path,
        members: &[Member<'_>],
        extra: &str,
        files: u64,
    ) -> io::Result<EdgeProcess> {
        Self::start_with(dir, members, extra, Under::Files(files))
    }

    fn start_with(dir: &Path, members: &[Member<'_>], extra: &str, under: Under) -> io::Result<EdgeProcess> {
        std::fs::create_dir_all(dir)?;
        write_membership(&dir.join("membership.toml"), members)?;
        let mut last = None;
        for _ in 0..3 {
            let (port, admin) = (free_port()?, free_port()?);
            let config = dir.join("edge.toml");
            std::fs::write(&config, Self::config_text(port, admin, extra))?;
            let mut edge = EdgeProcess {
                child: None,
                under,
                url: format!("http://127.0.0.1:{port}"),
                admin: format!("http://127.0.0.1:{admin}"),
                config,
                dir: dir.to_path_buf(),
            };
            match edge.spawn(false) {
                Ok(()) => return Ok(edge),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("edge did not start")))
    }

    fn config_text(port: u16, admin: u16, extra: &str) -> String {
        // Top-level keys of `extra` must come before any table.
        let (top, tables) = match extra.find("\n[").or(extra.starts_with('[').then_some(0)) {
            Some(i) => extra.split_at(i),
            None => (extra, ""),
        };
        // A `[cache]` table of `extra` gets the cache directory added.
        let (cache, tables) = if tables.contains("[cache]\n") {
            (String::new(), tables.replacen("[cache]\n", "[cache]\ndir = \"cache\"\n", 1))
        } else {
            ("[cache]\ndir = \"cache\"\n".to_string(), tables.to_string())
        };
        // So does an `[origin]` table, the cluster token.
        let (origin, tables) = if tables.contains("[origin]\n") {
            (String::new(), tables.replacen("[origin]\n", &format!("[origin]\ntoken = \"{CLUSTER_TOKEN}\"\n"), 1))
        } else {
            (format!("[origin]\ntoken = \"{CLUSTER_TOKEN}\"\n"), tables)
        };
        format!(
            "listen = \"127.0.0.1:{port}\"\nmembership = \"membership.toml\"\nupgrade_sock = \"upgrade.sock\"\n\
             pid_file = \"edge.pid\"\n{top}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
             {cache}{origin}[purge]\npoll_ms = 200\n{tables}\n"
        )
    }

    /// Starts the process on the config already written; with `upgrade`,
    /// as the successor of a running edge (it takes over its sockets).
    pub fn spawn(&mut self, upgrade: bool) -> io::Result<()> {
        let bin = binary("modcdn-edge");
        let mut cmd = match self.under {
            Under::Plain => Command::new(&bin),
            Under::Tmpfs(bytes) => {
                let cache = self.dir.join("cache");
                std::fs::create_dir_all(&cache)?;
                on_tmpfs(&cache, bytes, 1 << 20, &bin)
            }
            Under::Files(files) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={files}:{files}")).arg("--").arg(&bin);
                cmd
            }
        };
        cmd.args(["serve", "--config"]).arg(&self.config);
        if upgrade {
            cmd.arg("--upgrade");
        }
        let mut child = cmd
            .env("RUST_LOG", std::env::var("MODCDN_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("{}: {e} (build the workspace binaries first)", bin.display()))
            })?;
        let addr = self.url.trim_start_matches("http://").to_string();
        let admin = self.admin.trim_start_matches("http://").to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(io::Error::other(format!("modcdn-edge exited at start: {status}")));
            }
            // Started: both listeners accept (the admin one comes up apart),
            // and are this process's: a port taken in between by another
            // test's server accepts too (Pingora then retries its bind).
            let up = |a: &str| std::net::TcpStream::connect(a).is_ok();
            if !upgrade && up(&addr) && up(&admin) {
                let pid = child.id();
                if listens(pid, &addr) && listens(pid, &admin) {
                    self.child = Some(child);
                    return Ok(());
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!("a port of {addr}, {admin} was taken by another process")));
            }
            if upgrade && std::path::Path::new(&self.dir.join("upgrade.sock")).exists() {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Err(io::Error::other("modcdn-edge did not start listening within 30 s"))
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. "TERM", "QUIT") to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("sh").args(["-c", &format!("kill -{signal} {}", c.id())]).status();
        }
    }

    /// SIGTERM, then wait for exit (bounded); returns whether it exited cleanly.
    pub fn terminate(&mut self, within: Duration) -> bool {
        self.signal("TERM");
        self.wait_exit(within)
    }

    /// Waits for the process to exit (bounded); kills it after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return status.success();
                }
            } else {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        false
    }

    /// Takes the process out of this handle (for graceful upgrades, where
    /// the old and new process overlap).
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTPS listener for an edge in `dir`: a self-signed certificate for
/// `localhost` written there, and the edge config lines naming it. Returns
/// the config lines, the port, and the certificate (PEM) to trust.
pub fn edge_tls(dir: &Path) -> io::Result<(String, u16, String)> {
    std::fs::create_dir_all(dir)?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(io::Error::other)?;
    std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem())?;
    let port = free_port()?;
    let extra = format!("[tls]\nlisten = \"127.0.0.1:{port}\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
    Ok((extra, port, cert.cert.pem()))
}
