//! Every text parser that reads network input, one input each run: the
//! first byte picks the parser, the rest is its input. Besides "never
//! panics", what parses must hold the invariants the property tests in
//! `shared/tests/fuzz.rs` check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modcdn_shared::module::{self, ModulePath, Version};
use modcdn_shared::request::Request;
use modcdn_shared::{gomod, note, purge, semver, tlog};

const SUM_GOLANG_ORG: &str = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let text = text.as_ref();
    match pick % 8 {
        0 => {
            if let Ok(r) = Request::parse(text) {
                let key = r.key();
                assert!(!key.starts_with('/') && !key.contains(['\\', '\0']), "{text:?} → {key}");
                assert!(key.split('/').all(|e| !e.is_empty() && e != "." && e != ".."), "{text:?} → {key}");
                assert_eq!(Request::parse(&format!("/{key}")).ok(), Some(r), "{text:?}");
            }
        }
        1 => {
            if let Ok(e) = module::escape_path(text) {
                assert_eq!(module::unescape_path(&e).ok().as_deref(), Some(text));
                assert!(ModulePath::from_escaped(&e).is_ok());
            }
            if let Ok(e) = module::escape_version(text) {
                assert_eq!(module::unescape_version(&e).ok().as_deref(), Some(text));
            }
            let _ = (module::unescape_path(text), Version::from_escaped(text), module::check(text, "v1.0.0"));
        }
        2 => {
            let (a, b) = text.split_once('\n').unwrap_or((text, "v1.0.0"));
            let _ = (semver::is_valid(a), semver::canonical(a), semver::is_pseudo_version(a), semver::major(a));
            assert_eq!(semver::compare(a, b), semver::compare(b, a).reverse());
            let _ = semver::latest_of([a, b]);
        }
        3 => {
            if let Ok(t) = tlog::TilePath::parse(text) {
                assert_eq!(t.path(), text);
                assert!(t.tile.h >= 1 && t.tile.h <= 30 && t.tile.w >= 1 && t.tile.w <= 1 << t.tile.h);
            }
            let _ = (tlog::parse_tree(text), tlog::parse_record(text));
        }
        4 => {
            let v = note::Verifier::new(SUM_GOLANG_ORG).expect("key");
            assert!(v.open(text).is_err(), "nothing fuzzed carries sum.golang.org's signature");
            let _ = note::Verifier::new(text);
        }
        5 => {
            for (m, v) in gomod::requires(text) {
                assert!(!m.is_empty() && !v.is_empty());
            }
            let _ = gomod::sum_entries(text);
        }
        6 => {
            let (p, m) = text.split_once('\n').unwrap_or((text, text));
            if let Ok(t) = purge::Target::parse(Some(p), None) {
                let (key, prefix) = t.keys();
                assert!(!prefix && !key.starts_with('/'));
            }
            if let Ok(t) = purge::Target::parse(None, Some(m)) {
                let (key, prefix) = t.keys();
                assert!(prefix && key.ends_with("/@"), "{key}");
            }
            assert!(purge::Target::parse(Some(p), Some(m)).is_err());
        }
        _ => {
            let h = modcdn_shared::hot::HotSet::new(4, std::time::Duration::from_secs(60));
            for line in text.lines().take(16) {
                let (module, weight) = line.rsplit_once(' ').unwrap_or((line, "1"));
                h.record_weighted(module, weight.parse().unwrap_or(f64::NAN));
            }
            for (_, w) in h.top(10) {
                assert!(w.is_finite() && w > 0.0);
            }
        }
    }
});
