//! Fuzzing of every parser that reads network input, as property tests:
//! random and mutated inputs never panic, and what parses holds its
//! invariants. Each property runs `CASES` generated inputs (set
//! `PROPTEST_CASES` for a longer campaign); the seeds are real inputs of
//! each format, mutated byte by byte, so the search starts near the edges
//! that matter.

use std::io::{Cursor, Write};

use modcdn_shared::module::{self, ModulePath, Version};
use modcdn_shared::request::Request;
use modcdn_shared::{gomod, modzip, note, purge, semver, tlog};
use proptest::prelude::*;

const CASES: u32 = 20_000;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A seed with random byte edits (replace, insert, delete) at random places.
fn mutated(seeds: &'static [&'static str]) -> impl Strategy<Value = String> {
    (0..seeds.len(), prop::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 0..6)).prop_map(move |(i, edits)| {
        let mut b = seeds[i].as_bytes().to_vec();
        for (at, byte, op) in edits {
            let at = at as usize % (b.len() + 1);
            match op {
                0 if at < b.len() => b[at] = byte,
                1 => b.insert(at, byte),
                _ if at < b.len() => {
                    b.remove(at);
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

const PATHS: &[&str] = &[
    "/github.com/!azure/sdk/@v/v1.2.3.zip",
    "/example.com/m/v2/@v/v2.0.0-20191109021931-daa7c04131f5.info",
    "/gopkg.in/yaml.v2/@v/v2.4.0+incompatible.mod",
    "/example.com/m/@v/list",
    "/example.com/m/@latest",
    "/example.com/m/@v/master.info",
    "/sumdb/sum.golang.org/lookup/example.com/m@v1.0.0",
    "/sumdb/sum.golang.org/tile/8/0/x001/234.p/5",
    "/sumdb/sum.golang.org/tile/8/data/000",
    "/sumdb/sum.golang.org/latest",
    "/sumdb/sum.golang.org/supported",
];

proptest! {
    #![proptest_config(config(CASES * 2))]

    #[test]
    fn request_paths(path in prop_oneof![mutated(PATHS), "\\PC{0,200}", "/[a-zA-Z0-9!@%./+~_-]{0,120}"]) {
        if let Ok(r) = Request::parse(&path) {
            let key = r.key();
            prop_assert!(!key.starts_with('/') && !key.contains(['\\', '\0']), "{path} → {key}");
            prop_assert!(key.split('/').all(|e| !e.is_empty() && e != "." && e != ".."), "{path} → {key}");
            // The key is a path the parser takes back to the same request.
            prop_assert_eq!(Request::parse(&format!("/{key}")).ok(), Some(r));
        }
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn module_paths_and_versions_escape_and_back(s in prop_oneof![mutated(&["github.com/Azure/SDK", "gopkg.in/yaml.v2", "example.com/m/v2", "v1.0.0-RC1", "v2.0.0+incompatible"]), "\\PC{0,60}"]) {
        if let Ok(e) = module::escape_path(&s) {
            prop_assert_eq!(module::unescape_path(&e).ok(), Some(s.clone()));
            prop_assert!(ModulePath::from_escaped(&e).is_ok());
        }
        if let Ok(e) = module::escape_version(&s) {
            prop_assert_eq!(module::unescape_version(&e).ok(), Some(s.clone()));
        }
        let _ = module::unescape_path(&s);
        let _ = Version::from_escaped(&s);
        let _ = module::check(&s, "v1.0.0");
    }

    #[test]
    fn semver_never_panics_and_orders(a in "v?[0-9.a-zA-Z+-]{0,24}", b in "v?[0-9.a-zA-Z+-]{0,24}") {
        let _ = (semver::is_valid(&a), semver::canonical(&a), semver::is_pseudo_version(&a), semver::major(&a));
        prop_assert_eq!(semver::compare(&a, &b), semver::compare(&b, &a).reverse());
        let _ = semver::latest_of([a.as_str(), b.as_str()]);
    }

    #[test]
    fn tile_paths(p in prop_oneof![mutated(&["tile/8/0/x001/234.p/5", "tile/8/data/000", "tile/30/63/999", "tile/8/1/x123/x456/078"]), "tile/[0-9px./data]{0,40}"]) {
        if let Ok(t) = tlog::TilePath::parse(&p) {
            prop_assert_eq!(t.path(), p);
            prop_assert!(t.tile.h >= 1 && t.tile.h <= 30 && t.tile.w >= 1 && t.tile.w <= 1 << t.tile.h);
        }
    }

    #[test]
    fn tree_heads_and_records(t in prop_oneof![mutated(&["go.sum database tree\n1234\nnND/nri/U0xuHUrYSy0HtMeal2vzD9V4k/BO79C+QeI=\n", "5\nexample.com/m v1.0.0 h1:abc=\nexample.com/m v1.0.0/go.mod h1:def=\n\n"]), "\\PC{0,120}"]) {
        let _ = tlog::parse_tree(&t);
        let _ = tlog::parse_record(&t);
    }

    #[test]
    fn signed_notes(msg in prop_oneof![mutated(&["go.sum database tree\n5\nAAAA\n\n— sum.golang.org Az3grnmrIhhGEQ==\n", "text\n\n— a b\n— sum.golang.org AAAAAAAA\n"]), "\\PC{0,200}"]) {
        let v = note::Verifier::new("sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8").expect("key");
        prop_assert!(v.open(&msg).is_err(), "nothing random carries sum.golang.org's signature");
        let _ = note::Verifier::new(&msg);
    }

    #[test]
    fn go_mod_and_go_sum(text in prop_oneof![mutated(&["module example.com/m\n\ngo 1.19\n\nrequire (\n\texample.com/a v1.0.0\n\texample.com/b v1.2.0 // indirect\n)\n", "example.com/a v1.0.0 h1:abc=\nexample.com/a v1.0.0/go.mod h1:def=\n"]), "\\PC{0,200}"]) {
        for (m, v) in gomod::requires(&text) {
            prop_assert!(!m.is_empty() && !v.is_empty());
        }
        let _ = gomod::sum_entries(&text);
    }

    #[test]
    fn purge_targets(p in prop_oneof![mutated(PATHS), "\\PC{0,80}"], m in prop_oneof![mutated(&["example.com/m", "github.com/Azure/SDK"]), "\\PC{0,40}"]) {
        if let Ok(t) = purge::Target::parse(Some(&p), None) {
            let (key, prefix) = t.keys();
            prop_assert!(!prefix && !key.starts_with('/'));
        }
        if let Ok(t) = purge::Target::parse(None, Some(&m)) {
            let (key, prefix) = t.keys();
            prop_assert!(prefix && key.ends_with("/@"), "{key}");
        }
        prop_assert!(purge::Target::parse(Some(&p), Some(&m)).is_err());
    }

    #[test]
    fn hot_reports(module in "\\PC{0,40}", weight in any::<f64>()) {
        let h = modcdn_shared::hot::HotSet::new(4, std::time::Duration::from_secs(60));
        h.record_weighted(&module, weight);
        h.record_weighted("example.com/a", 1.0);
        for (_, w) in h.top(10) {
            prop_assert!(w.is_finite() && w > 0.0);
        }
    }
}

/// A module zip as upstream would send it.
fn seed_zip() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, body) in [
        ("example.com/m@v1.0.0/go.mod", &b"module example.com/m\n"[..]),
        ("example.com/m@v1.0.0/m.go", b"package m\n\nconst X = 1\n"),
        ("example.com/m@v1.0.0/sub/LICENSE", b"MIT\n"),
    ] {
        w.start_file(name, opts).expect("start");
        w.write_all(body).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

proptest! {
    #![proptest_config(config(CASES / 4))]

    #[test]
    fn module_zips(edits in prop::collection::vec((any::<u16>(), any::<u8>()), 0..8), cut in any::<u16>()) {
        let mut z = seed_zip();
        for (at, byte) in edits {
            let at = at as usize % z.len();
            z[at] = byte;
        }
        let keep = z.len() - (cut as usize % 8).min(z.len());
        z.truncate(keep);
        let _ = modzip::check_zip(Cursor::new(&z), z.len() as u64, "example.com/m", "v1.0.0");
    }
}

#[test]
fn the_seed_zip_is_a_valid_module_zip() {
    let z = seed_zip();
    let checked = modzip::check_zip(Cursor::new(&z), z.len() as u64, "example.com/m", "v1.0.0").expect("valid");
    assert_eq!(checked.files, 3);
}
