//! Membership files: the deploy example parses, errors name file, line and
//! key, and the CLI answers `plan` and `lookup`.

use std::path::Path;
use std::process::Command;

use modcdn_router::membership::MembershipFile;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn origins(n: usize, region: &str) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[origin]]\nid = \"{region}-{i}\"\naddress = \"127.0.0.1:{}\"\noperator = \"127.0.0.1:{}\"\nregion = \"{region}\"\n\n",
                7000 + i,
                7500 + i
            )
        })
        .collect()
}

#[test]
fn deploy_example_loads_and_routes_by_region() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/router.toml");
    let s = MembershipFile::snapshot(&path).expect("deploy/router.toml");
    let cn_client = s.geo.region("127.0.1.9".parse().expect("ip"), None);
    assert_eq!(cn_client, "cn");
    assert_eq!(
        s.topology.route(&rk("golang.org/x/mod"), cn_client).next().map(|m| m.id.as_str()).unwrap_or(""),
        "cn-1"
    );
    let us: Vec<_> =
        s.topology.route(&rk("golang.org/x/mod"), s.geo.region("127.0.2.9".parse().expect("ip"), None)).collect();
    assert!(us.iter().all(|m| m.region == "us") && us.len() == 2);
}

#[test]
fn errors_name_file_line_and_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let head = "single_region = true\n\n";
    for (body, line, key) in [
        (
            format!(
                "{head}{}{}",
                origins(2, "us"),
                "[[origin]]\nid = \"us-0\"\naddress = \"h:1\"\noperator = \"h:2\"\nregion = \"us\"\n"
            ),
            15,
            "origin[2].id",
        ),
        (
            format!("{head}[[origin]]\nid = \"x\"\naddress = \"h:1\"\noperator = \"h:2\"\nregion = \"mars\"\n"),
            3,
            "origin[0].region",
        ),
        (
            format!("{head}[[origin]]\nid = \"x\"\naddress = \"nohost\"\noperator = \"h:2\"\nregion = \"us\"\n"),
            3,
            "origin[0].address",
        ),
        (
            format!(
                "{head}[[origin]]\nid = \"x\"\naddress = \"h:1\"\noperator = \"h:2\"\nregion = \"us\"\nweight = -1\n"
            ),
            3,
            "origin[0].weight",
        ),
        (
            format!("{head}[[origin]]\nid = \"x\"\naddress = \"h:1\"\noperator = \"h:1\"\nregion = \"us\"\n"),
            3,
            "origin[0].operator",
        ),
        (format!("{head}bounded_load = 0.5\n"), 3, "bounded_load"),
        ("trusted_proxies = [\"bogus\"]\nsingle_region = true\n".to_string(), 1, "trusted_proxies[0]"),
        ("bounded_load = 1.5\n".to_string(), 1, "geoip_db"),
    ] {
        let p = write(tmp.path(), "m.toml", &body);
        let e = MembershipFile::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("m.toml") && e.contains(&format!(":{line}:")) && e.contains(key),
            "want line {line} key {key}: {e}"
        );
    }
    let p = write(
        tmp.path(),
        "m.toml",
        "single_region = true\n[[origin]]\nid = \"x\"\nadress = \"h:1\"\nregion = \"us\"\n",
    );
    let e = MembershipFile::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("m.toml") && e.contains("adress") && e.contains("line 4"), "{e}");
    let p = write(
        tmp.path(),
        "m.toml",
        "single_region = true\n[[origin]]\nid = \"x\"\naddress = \"h:1\"\nregion = \"us\"\n",
    );
    let e = MembershipFile::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("m.toml") && e.contains("operator"), "an origin without its operator listener: {e}");
    let p = write(tmp.path(), "m.toml", "geoip_db = \"missing.mmdb\"\n");
    let e = MembershipFile::snapshot(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("missing.mmdb"), "a missing database is a start-up error: {e}");
}

#[test]
fn cli_plan_and_lookup() {
    let tmp = tempfile::tempdir().expect("tmp");
    let from = write(tmp.path(), "from.toml", &format!("single_region = true\n{}", origins(4, "us")));
    let to = write(tmp.path(), "to.toml", &format!("single_region = true\n{}", origins(5, "us")));
    let bin = env!("CARGO_BIN_EXE_modcdn-router");
    let out = Command::new(bin)
        .args(["plan", "--keys", "20000", "--from"])
        .arg(&from)
        .arg("--to")
        .arg(&to)
        .output()
        .expect("plan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("region us") && text.contains("ideal 20.00%") && text.contains("us-4"), "{text}");

    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/router.toml");
    let out = Command::new(bin)
        .args(["lookup", "--ip", "127.0.1.5", "--config"])
        .arg(&cfg)
        .arg("github.com/Azure/go")
        .output()
        .expect("lookup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("country CN")
            && text.contains("region cn")
            && text.contains("key github.com/!azure/go")
            && text.contains("1. cn-1"),
        "{text}"
    );

    let bad = write(tmp.path(), "bad.toml", "nonsense = 1\n");
    let out = Command::new(bin)
        .args(["lookup", "--ip", "127.0.0.1", "--config"])
        .arg(&bad)
        .arg("x.y/z")
        .output()
        .expect("lookup");
    assert_eq!(out.status.code(), Some(64));
}

fn rk(module: &str) -> modcdn_shared::module::RoutingKey {
    modcdn_shared::module::RoutingKey::of(&modcdn_shared::module::ModulePath::new(module).expect("module path"))
}
