//! Go's semantic versions, as golang.org/x/mod/semver and the go command read them.
//!
//! Go versions always start with `v`, may be shortened (`v1`, `v1.2`), and
//! carry an optional prerelease and build suffix. Ordering ignores build
//! metadata; a list is sorted the way `go list -m -versions` shows it.

use std::cmp::Ordering;

#[derive(Debug, Default, Clone, Copy)]
struct Parsed<'a> {
    major: &'a str,
    minor: &'a str,
    patch: &'a str,
    short: &'static str,
    prerelease: &'a str,
    build: &'a str,
}

fn parse(v: &str) -> Option<Parsed<'_>> {
    let mut p = Parsed::default();
    let rest = v.strip_prefix('v')?;
    let (major, rest) = parse_int(rest)?;
    p.major = major;
    if rest.is_empty() {
        p.minor = "0";
        p.patch = "0";
        p.short = ".0.0";
        return Some(p);
    }
    let (minor, rest) = parse_int(rest.strip_prefix('.')?)?;
    p.minor = minor;
    if rest.is_empty() {
        p.patch = "0";
        p.short = ".0";
        return Some(p);
    }
    let (patch, mut rest) = parse_int(rest.strip_prefix('.')?)?;
    p.patch = patch;
    if rest.starts_with('-') {
        let (pre, r) = parse_prerelease(rest)?;
        p.prerelease = pre;
        rest = r;
    }
    if rest.starts_with('+') {
        let (build, r) = parse_build(rest)?;
        p.build = build;
        rest = r;
    }
    rest.is_empty().then_some(p)
}

fn parse_int(v: &str) -> Option<(&str, &str)> {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || (v.starts_with('0') && digits != 1) {
        return None;
    }
    Some(v.split_at(digits))
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

fn is_bad_num(v: &str) -> bool {
    v.len() > 1 && v.starts_with('0') && v.bytes().all(|c| c.is_ascii_digit())
}

fn is_num(v: &str) -> bool {
    v.bytes().all(|c| c.is_ascii_digit())
}

fn parse_prerelease(v: &str) -> Option<(&str, &str)> {
    let end = v.find('+').unwrap_or(v.len());
    let body = &v[1..end];
    for ident in body.split('.') {
        if ident.is_empty() || is_bad_num(ident) || !ident.bytes().all(is_ident_char) {
            return None;
        }
    }
    Some(v.split_at(end))
}

fn parse_build(v: &str) -> Option<(&str, &str)> {
    let body = &v[1..];
    for ident in body.split('.') {
        if ident.is_empty() || !ident.bytes().all(is_ident_char) {
            return None;
        }
    }
    Some((v, ""))
}

/// Reports whether `v` is a valid Go semantic version.
pub fn is_valid(v: &str) -> bool {
    parse(v).is_some()
}

/// The canonical form of `v` (`v1` → `v1.0.0`, build metadata dropped), or
/// `None` when `v` is invalid.
pub fn canonical(v: &str) -> Option<String> {
    let p = parse(v)?;
    if !p.build.is_empty() {
        return Some(v[..v.len() - p.build.len()].to_string());
    }
    Some(format!("{v}{}", p.short))
}

/// The major version prefix (`v2` of `v2.1.0`), or `None` when invalid.
pub fn major(v: &str) -> Option<&str> {
    let p = parse(v)?;
    Some(&v[..1 + p.major.len()])
}

/// The prerelease suffix including its `-`, or `""`.
pub fn prerelease(v: &str) -> &str {
    parse(v).map(|p| p.prerelease).unwrap_or("")
}

/// The build suffix including its `+`, or `""`.
pub fn build(v: &str) -> &str {
    parse(v).map(|p| p.build).unwrap_or("")
}

/// Orders versions as x/mod's `semver.Compare`: an invalid version is lower
/// than every valid one, and two invalid ones are equal.
pub fn compare(v: &str, w: &str) -> Ordering {
    match (parse(v), parse(w)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => compare_int(a.major, b.major)
            .then_with(|| compare_int(a.minor, b.minor))
            .then_with(|| compare_int(a.patch, b.patch))
            .then_with(|| compare_prerelease(a.prerelease, b.prerelease)),
    }
}

fn compare_int(x: &str, y: &str) -> Ordering {
    x.len().cmp(&y.len()).then_with(|| x.cmp(y))
}

fn compare_prerelease(x: &str, y: &str) -> Ordering {
    if x == y {
        return Ordering::Equal;
    }
    if x.is_empty() {
        return Ordering::Greater;
    }
    if y.is_empty() {
        return Ordering::Less;
    }
    let mut xs = x[1..].split('.');
    let mut ys = y[1..].split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(dx), Some(dy)) if dx != dy => {
                return match (is_num(dx), is_num(dy)) {
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (true, true) => compare_int(dx, dy),
                    (false, false) => dx.cmp(dy),
                };
            }
            _ => {}
        }
    }
}

/// Sorts versions the way the go command lists them: by semver, then by
/// string so that equal versions with different spellings have a fixed order.
pub fn sort(list: &mut [String]) {
    list.sort_by(|a, b| compare(a, b).then_with(|| a.cmp(b)));
}

/// The canonical module version: like [`canonical`] but keeps `+incompatible`.
pub fn canonical_module_version(v: &str) -> Option<String> {
    let c = canonical(v)?;
    Some(if build(v) == "+incompatible" { c + "+incompatible" } else { c })
}

/// Reports whether `v` is a pseudo-version (`vX.0.0-yyyymmddhhmmss-abcdef123456`,
/// `vX.Y.(Z+1)-0.yyyymmddhhmmss-abcdef123456`, `vX.Y.Z-pre.0.yyyymmddhhmmss-abcdef123456`),
/// matching the regular expression of x/mod/module/pseudo.go.
pub fn is_pseudo_version(v: &str) -> bool {
    v.matches('-').count() >= 2 && is_valid(v) && pseudo_shape(&v[..v.len() - build(v).len()])
}

fn pseudo_shape(v: &str) -> bool {
    let Some((rest, rev)) = v.rsplit_once('-') else { return false };
    if rev.is_empty() || !rev.bytes().all(|c| c.is_ascii_alphanumeric()) || rest.len() < 15 {
        return false;
    }
    let (head, stamp) = rest.split_at(rest.len() - 14);
    if !stamp.bytes().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let (head, sep) = head.split_at(head.len() - 1);
    let Some(nums) = head.strip_prefix('v') else { return false };
    match sep {
        // vX.0.0-yyyymmddhhmmss-rev
        "-" => nums.strip_suffix(".0.0").is_some_and(|m| !m.is_empty() && m.bytes().all(|c| c.is_ascii_digit())),
        // vX.Y.Z-[pre.]0.yyyymmddhhmmss-rev
        "." => {
            let Some((triple, tail)) = nums.split_once('-') else { return false };
            let parts: Vec<&str> = triple.split('.').collect();
            parts.len() == 3
                && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
                && (tail == "0" || tail.ends_with(".0"))
        }
        _ => false,
    }
}

/// The version `@latest` resolves to from a `list` answer, as the go command
/// chooses it when a proxy has no `@latest`: the highest release if there is
/// one, else the highest prerelease. Invalid and pseudo-versions are ignored.
pub fn latest_of<'a>(list: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best_release: Option<&str> = None;
    let mut best_pre: Option<&str> = None;
    for v in list {
        if !is_valid(v) || is_pseudo_version(v) {
            continue;
        }
        let slot = if prerelease(v).is_empty() { &mut best_release } else { &mut best_pre };
        if slot.is_none_or(|b| compare(v, b) == Ordering::Greater) {
            *slot = Some(v);
        }
    }
    best_release.or(best_pre)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The table of x/mod/semver/semver_test.go: input and canonical form
    // ("" where invalid), in increasing order.
    const TESTS: &[(&str, &str)] = &[
        ("bad", ""),
        ("v1-alpha.beta.gamma", ""),
        ("v1-pre", ""),
        ("v1+meta", ""),
        ("v1-pre+meta", ""),
        ("v1.2-pre", ""),
        ("v1.2+meta", ""),
        ("v1.2-pre+meta", ""),
        ("v1.0.0-alpha", "v1.0.0-alpha"),
        ("v1.0.0-alpha.1", "v1.0.0-alpha.1"),
        ("v1.0.0-alpha.beta", "v1.0.0-alpha.beta"),
        ("v1.0.0-beta", "v1.0.0-beta"),
        ("v1.0.0-beta.2", "v1.0.0-beta.2"),
        ("v1.0.0-beta.11", "v1.0.0-beta.11"),
        ("v1.0.0-rc.1", "v1.0.0-rc.1"),
        ("v1", "v1.0.0"),
        ("v1.0", "v1.0.0"),
        ("v1.0.0", "v1.0.0"),
        ("v1.2", "v1.2.0"),
        ("v1.2.0", "v1.2.0"),
        ("v1.2.3-456", "v1.2.3-456"),
        ("v1.2.3-456.789", "v1.2.3-456.789"),
        ("v1.2.3-456-789", "v1.2.3-456-789"),
        ("v1.2.3-456a", "v1.2.3-456a"),
        ("v1.2.3-pre", "v1.2.3-pre"),
        ("v1.2.3-pre+meta", "v1.2.3-pre"),
        ("v1.2.3-pre.1", "v1.2.3-pre.1"),
        ("v1.2.3-zzz", "v1.2.3-zzz"),
        ("v1.2.3", "v1.2.3"),
        ("v1.2.3+meta", "v1.2.3"),
        ("v1.2.3+meta-pre", "v1.2.3"),
        ("v1.2.3+meta-pre.sha.256a", "v1.2.3"),
    ];

    #[test]
    fn canonical_and_validity_match_x_mod() {
        for (input, want) in TESTS {
            assert_eq!(canonical(input).unwrap_or_default(), *want, "{input}");
            assert_eq!(is_valid(input), !want.is_empty(), "{input}");
        }
        for bad in ["", "1.0.0", "v01.0.0", "v1.00.0", "v1.0.01", "v1.0.0-01", "v1.0.0-", "v1.0.0+", "v1.0.0-a..b"] {
            assert!(!is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn compare_matches_x_mod_table_order() {
        for (i, (a, _)) in TESTS.iter().enumerate() {
            for (j, (b, _)) in TESTS.iter().enumerate() {
                let got = compare(a, b);
                let ca = canonical(a).unwrap_or_default();
                let cb = canonical(b).unwrap_or_default();
                let want = if ca == cb { Ordering::Equal } else { i.cmp(&j) };
                assert_eq!(got, want, "compare({a}, {b})");
            }
        }
    }

    #[test]
    fn major_prerelease_build() {
        assert_eq!(major("v2.3.4"), Some("v2"));
        assert_eq!(major("bad"), None);
        assert_eq!(prerelease("v1.2.3-pre+meta"), "-pre");
        assert_eq!(build("v1.2.3-pre+meta"), "+meta");
        assert_eq!(canonical_module_version("v2.0.0+incompatible").as_deref(), Some("v2.0.0+incompatible"));
        assert_eq!(canonical_module_version("v2.0.0+meta").as_deref(), Some("v2.0.0"));
    }

    #[test]
    fn pseudo_versions_as_x_mod_pseudo_test() {
        for ok in [
            "v0.0.0-20060102150405-abcdef123456",
            "v1.2.4-0.20060102150405-abcdef123456",
            "v1.2.3-pre.0.20060102150405-abcdef123456",
            "v1.2.3-pre.0.20060102150405-abcdef123456+incompatible",
            "v2.0.0-20060102150405-abcdef123456",
        ] {
            assert!(is_pseudo_version(ok), "{ok}");
        }
        for bad in [
            "v1.2.3",
            "v1.2.3-pre",
            "v1.2.3-20060102150405-abcdef123456",
            "v0.0.0-2006010215040-abcdef123456",
            "v1.2.4-1.20060102150405-abcdef123456",
        ] {
            assert!(!is_pseudo_version(bad), "{bad}");
        }
    }

    #[test]
    fn sort_and_latest_like_the_go_command() {
        let mut list: Vec<String> =
            ["v1.10.0", "v1.2.0", "v1.2.0-rc.1", "v0.9.0", "v2.0.0+incompatible"].map(String::from).to_vec();
        sort(&mut list);
        assert_eq!(list, ["v0.9.0", "v1.2.0-rc.1", "v1.2.0", "v1.10.0", "v2.0.0+incompatible"]);
        assert_eq!(latest_of(["v1.0.0", "v1.1.0-rc.1"]), Some("v1.0.0"));
        assert_eq!(latest_of(["v1.1.0-rc.1", "v1.1.0-beta"]), Some("v1.1.0-rc.1"));
        assert_eq!(latest_of(["garbage", "v0.0.0-20060102150405-abcdef123456"]), None);
        assert_eq!(latest_of([]), None);
    }
}
