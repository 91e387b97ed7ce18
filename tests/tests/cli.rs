//! Every binary and subcommand answers `--help` with what it does and an
//! example, and exits 0.

use std::process::Command;

#[test]
fn every_binary_and_subcommand_has_help_with_an_example() {
    let commands: [(&str, &[&str]); 5] = [
        ("modcdn-edge", &["serve", "default-config"]),
        ("modcdn-origin", &["serve", "default-config"]),
        ("modcdn-router", &["plan", "lookup", "geo-build"]),
        ("modcdn", &["cluster", "prewarm"]),
        ("modcdn-fixture", &["corpus", "upstream", "consumer", "latency"]),
    ];
    for (bin, subcommands) in commands {
        let path = modcdn_tests::node::binary(bin);
        let top = Command::new(&path).arg("--help").output().unwrap_or_else(|e| panic!("{bin}: {e}"));
        let text = String::from_utf8_lossy(&top.stdout);
        assert!(top.status.success(), "{bin} --help");
        for sub in subcommands {
            assert!(text.contains(sub), "{bin} --help lists {sub}:\n{text}");
            let out = Command::new(&path).args([sub, &"--help"]).output().expect("run");
            let help = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{bin} {sub} --help");
            assert!(help.contains("Example:") && help.contains(&format!("{bin} {sub}")), "{bin} {sub} --help:\n{help}");
        }
    }
}
