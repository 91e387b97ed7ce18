//! SIGHUP reloads the membership at once (own test binary: the signal is
//! process-wide).

use std::time::{Duration, Instant};

use modcdn_router::watch::Membership;

#[test]
fn sighup_reloads_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("router.toml");
    let origin = |id: &str| {
        format!(
            "[[origin]]\nid = \"{id}\"\naddress = \"127.0.0.1:9\"\noperator = \"127.0.0.1:10\"\nregion = \"us\"\n\n"
        )
    };
    std::fs::write(&path, format!("single_region = true\n{}", origin("a"))).expect("write");
    let m = Membership::load(&path).expect("load");
    // A poll interval far beyond the test: only the signal can reload.
    let _watch = m.watch(Duration::from_secs(600)).expect("watch");
    std::fs::write(&path, format!("single_region = true\n{}{}", origin("a"), origin("b"))).expect("write");
    signal_hook::low_level::raise(signal_hook::consts::SIGHUP).expect("raise");
    let deadline = Instant::now() + Duration::from_secs(3);
    while m.snapshot().topology.members().count() != 2 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(10));
    }
}
