//! Live membership: file changes are picked up, a bad file keeps the old
//! membership, and active health checks take dead origins out of routing
//! within an interval and bring them back.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modcdn_router::watch::Membership;

fn membership(ids: &[(&str, String)], health: &str) -> String {
    let mut s = format!("single_region = true\n{health}\n");
    for (id, addr) in ids {
        // Health checks ask the operator listener; the fake answers there.
        s.push_str(&format!(
            "[[origin]]\nid = \"{id}\"\naddress = \"{id}.public:80\"\noperator = \"{addr}\"\nregion = \"us\"\n\n"
        ));
    }
    s
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// A stand-in origin load endpoint on 127.0.0.1: answers `/loadz` while
/// `up`, closes connections at once while down.
struct FakeOrigin {
    addr: String,
    up: Arc<AtomicBool>,
    in_flight: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
}

impl FakeOrigin {
    fn start() -> FakeOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let (up, in_flight, stop) =
            (Arc::new(AtomicBool::new(true)), Arc::new(AtomicI64::new(0)), Arc::new(AtomicBool::new(false)));
        let (u, f, s) = (Arc::clone(&up), Arc::clone(&in_flight), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        if !u.load(Ordering::Relaxed) {
                            continue; // dropped: connection closed without an answer
                        }
                        let _ = conn.set_nonblocking(false);
                        let mut line = String::new();
                        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                        while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                            line.clear();
                        }
                        let body = format!("{{\"in_flight\":{},\"ewma_latency_ms\":1.5}}", f.load(Ordering::Relaxed));
                        let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeOrigin { addr, up, in_flight, stop }
    }
}

impl Drop for FakeOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn file_changes_are_picked_up_and_bad_files_keep_the_old_membership() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("router.toml");
    let two = [("a", "127.0.0.1:1".to_string()), ("b", "127.0.0.1:2".to_string())];
    write(&path, &membership(&two, ""));
    let m = Membership::load(&path).expect("load");
    let _watch = m.watch(Duration::from_millis(100)).expect("watch");
    let before = m.snapshot();
    assert_eq!(before.topology.members().count(), 2);

    let three = [("a", "127.0.0.1:1".to_string()), ("b", "127.0.0.1:2".to_string()), ("c", "127.0.0.1:3".to_string())];
    write(&path, &membership(&three, ""));
    assert_eq!(m.applied_reloads(), 0);
    wait_for("the third origin", Duration::from_secs(5), || m.snapshot().topology.members().count() == 3);
    assert_eq!(m.applied_reloads(), 1);
    // The old snapshot is still whole for whoever holds it.
    assert_eq!(before.topology.members().count(), 2);

    write(
        &path,
        "single_region = true\n[[origin]]\nid = \"a\"\naddress = \"h:1\"\noperator = \"h:2\"\nregion = \"nowhere\"\n",
    );
    wait_for("the bad file to be read", Duration::from_secs(5), || m.rejected_reloads() == 1);
    assert_eq!(m.snapshot().topology.members().count(), 3, "a bad file keeps the previous membership");
    let e = m.reload(true).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(m.rejected_reloads(), 2);
    assert_eq!(m.applied_reloads(), 1, "refused versions are not counted as applied");
    assert!(e.contains("router.toml:2:") && e.contains("origin[0].region"), "{e}");
}

#[test]
fn dead_origins_leave_routing_within_an_interval_and_come_back() {
    let (a, b) = (FakeOrigin::start(), FakeOrigin::start());
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("router.toml");
    let health = "[health]\ninterval_ms = 100\ntimeout_ms = 200\nfall = 2\nrise = 2\n";
    write(&path, &membership(&[("a", a.addr.clone()), ("b", b.addr.clone())], health));
    let m = Membership::load(&path).expect("load");
    let _checks = modcdn_router::health::spawn(Arc::clone(&m), None).expect("health");
    let keys: Vec<_> = (0..200)
        .map(|i| modcdn_shared::module::ModulePath::new(&format!("example.com/m{i}")).expect("module path"))
        .map(|m| modcdn_shared::module::RoutingKey::of(&m))
        .collect();
    let owners = |m: &Membership| -> Vec<String> {
        let s = m.snapshot();
        keys.iter().map(|k| s.topology.route(k, "us").next().map(|x| x.id.clone()).unwrap_or_default()).collect()
    };
    assert!(owners(&m).iter().any(|o| o == "a") && owners(&m).iter().any(|o| o == "b"));

    // Reported load reaches the view.
    b.in_flight.store(5, Ordering::Relaxed);
    wait_for("b's reported load", Duration::from_secs(3), || m.view().load("b") == 5);

    a.up.store(false, Ordering::Relaxed);
    let down_at = Instant::now();
    wait_for("a to leave routing", Duration::from_secs(3), || owners(&m).iter().all(|o| o == "b"));
    assert!(
        down_at.elapsed() < Duration::from_millis(2000),
        "within fall × (interval + timeout), with room for a loaded machine"
    );

    a.up.store(true, Ordering::Relaxed);
    wait_for("a to come back", Duration::from_secs(3), || owners(&m).iter().any(|o| o == "a"));
    // Out and back: two changes of a's health at least (a loaded machine
    // may time a check out once more).
    assert!(m.view().health_changes("a") >= 2, "{}", m.view().health_changes("a"));
}

#[test]
fn an_origin_that_refuses_connections_leaves_within_one_interval() {
    let a = FakeOrigin::start();
    // A port nothing listens on (bound, then released).
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("router.toml");
    let health = "[health]\ninterval_ms = 1000\ntimeout_ms = 200\nfall = 3\nrise = 2\n";
    write(&path, &membership(&[("a", a.addr.clone()), ("dead", dead)], health));
    let m = Membership::load(&path).expect("load");
    let started = Instant::now();
    let _checks = modcdn_router::health::spawn(Arc::clone(&m), None).expect("health");
    wait_for("dead to leave routing", Duration::from_secs(3), || !m.view().is_healthy("dead"));
    // Three failed checks would take two more intervals (2 s).
    assert!(started.elapsed() < Duration::from_millis(900), "first check, not after fall = 3: {:?}", started.elapsed());
    assert!(m.view().is_healthy("a"));
}
