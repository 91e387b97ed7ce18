//! Everything under `deploy/` is checked by the tool its world uses:
//! systemd units by `systemd-analyze verify`, the Dockerfile by `hadolint`,
//! Kubernetes manifests by `kubernetes-validate --strict` (offline schemas),
//! and every node config and membership file there — also those inside the
//! Kubernetes ConfigMap — is loaded by the node's own loader.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs `cmd`; its exit status must be success and its output free of
/// `markers` (warnings some tools print while exiting 0).
fn passes(cmd: &mut Command, markers: &[&str]) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (the README's test command installs it)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    for m in markers {
        assert!(!text.contains(m), "{cmd:?} said {m}:\n{text}");
    }
}

/// A tool pip installed: on PATH, else in the scripts directory of python3.
fn pip_tool(name: &str) -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .output()
        .expect("python3");
    let scripts = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join(name);
    if scripts.is_file() {
        scripts
    } else {
        PathBuf::from(name)
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let tmp = modcdn_tests::tempdir();
    let mut units = Vec::new();
    for node in ["edge", "origin"] {
        let text = std::fs::read_to_string(deploy().join(format!("systemd/modcdn-{node}.service"))).expect("unit");
        // verify checks that ExecStart's binary exists: point it at the one built.
        let bin = modcdn_tests::node::binary(&format!("modcdn-{node}"));
        let here = text.replace(&format!("/usr/local/bin/modcdn-{node}"), &bin.display().to_string());
        assert_ne!(here, text, "the unit starts /usr/local/bin/modcdn-{node}");
        let unit = tmp.path().join(format!("modcdn-{node}.service"));
        std::fs::write(&unit, here).expect("write");
        units.push(unit);
    }
    passes(Command::new("systemd-analyze").arg("verify").args(&units), &["Unknown", "ignoring", "not executable"]);
}

#[test]
fn the_dockerfile_passes_hadolint() {
    passes(Command::new(pip_tool("hadolint")).arg(deploy().join("container/Dockerfile")), &[]);
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate() {
    let dir = deploy().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    passes(Command::new(pip_tool("kubernetes-validate")).arg("--strict").args(&files), &["ERROR"]);
}

/// The data of the ConfigMap in deploy/kubernetes/config.yaml, and the
/// StatefulSet's (name, serviceName, namespace, replicas), read with PyYAML
/// (which kubernetes-validate brings).
fn kubernetes_facts() -> serde_json::Value {
    let script = r#"
import json, sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
sts = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d["kind"] == "StatefulSet"][0]
print(json.dumps({"data": config["data"], "name": sts["metadata"]["name"], "namespace": sts["metadata"]["namespace"],
                  "service": sts["spec"]["serviceName"], "replicas": sts["spec"]["replicas"]}))
"#;
    let k = deploy().join("kubernetes");
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(k.join("config.yaml"))
        .arg(k.join("origin.yaml"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn every_config_under_deploy_loads() {
    let tmp = modcdn_tests::tempdir();
    // The ConfigMap's files, written out as the pods see them.
    let facts = kubernetes_facts();
    let mut from_configmap = Vec::new();
    for (name, text) in facts["data"].as_object().expect("data") {
        let path = tmp.path().join(format!("kubernetes-{name}"));
        std::fs::write(&path, text.as_str().expect("text")).expect("write");
        from_configmap.push((name.clone(), path));
    }
    let kinds = [("edge.toml", "edge"), ("origin.toml", "origin"), ("router.toml", "membership")];
    let mut files: Vec<(PathBuf, &str)> = Vec::new();
    for dir in [deploy(), deploy().join("container")] {
        for (name, kind) in kinds {
            files.push((dir.join(name), kind));
        }
    }
    for (name, path) in &from_configmap {
        let kind = kinds.iter().find(|(n, _)| n == name).map(|(_, k)| *k).unwrap_or_else(|| panic!("{name}?"));
        files.push((path.clone(), kind));
    }
    for (path, kind) in &files {
        let loaded = match *kind {
            "edge" => modcdn_edge::config::EdgeConfig::load(Some(path), &[]).map(drop).map_err(|e| e.to_string()),
            "origin" => modcdn_origin::config::OriginConfig::load(Some(path), &[]).map(drop).map_err(|e| e.to_string()),
            _ => modcdn_router::watch::Membership::load(path).map(drop).map_err(|e| e.to_string()),
        };
        loaded.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    assert_eq!(files.len(), 9);
}

#[test]
fn the_kubernetes_membership_names_every_origin_of_the_statefulset() {
    let facts = kubernetes_facts();
    let (name, service, namespace) = (
        facts["name"].as_str().expect("name"),
        facts["service"].as_str().expect("service"),
        facts["namespace"].as_str().expect("ns"),
    );
    let replicas = facts["replicas"].as_u64().expect("replicas");
    let tmp = modcdn_tests::tempdir();
    let path = tmp.path().join("router.toml");
    std::fs::write(&path, facts["data"]["router.toml"].as_str().expect("router.toml")).expect("write");
    let membership = modcdn_router::watch::Membership::load(&path).expect("membership");
    let snapshot = membership.snapshot();
    let mut members: Vec<(String, String)> =
        snapshot.topology.members().map(|m| (m.id.clone(), m.address.clone())).collect();
    members.sort();
    let want: Vec<(String, String)> =
        (0..replicas).map(|i| (format!("{name}-{i}"), format!("{name}-{i}.{service}.{namespace}.svc:7070"))).collect();
    assert_eq!(members, want, "the membership and the StatefulSet disagree");
}
