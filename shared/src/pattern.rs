//! Go's module path patterns (GOPRIVATE, GONOPROXY, GONOSUMDB): comma-separated
//! globs in `path.Match` syntax, each matched against as many leading path
//! elements as it has (x/mod's `MatchPrefixPatterns`).

/// Reports whether any glob in the comma-separated `globs` matches a prefix
/// of `target` (a module path), as x/mod's `MatchPrefixPatterns`.
pub fn match_prefix_patterns(globs: &str, target: &str) -> bool {
    for glob in globs.split(',') {
        let glob = glob.strip_suffix('/').unwrap_or(glob);
        if glob.is_empty() {
            continue;
        }
        // As many leading elements of target as the glob has.
        let mut n = glob.matches('/').count();
        let mut prefix = target;
        for (i, b) in target.bytes().enumerate() {
            if b == b'/' {
                if n == 0 {
                    prefix = &target[..i];
                    break;
                }
                n -= 1;
            }
        }
        if n > 0 {
            continue;
        }
        if glob_match(glob, prefix) == Some(true) {
            return true;
        }
    }
    false
}

/// `path.Match`: `*` any run of non-`/`, `?` one non-`/`, `[...]` a class
/// (`^` negates, `a-z` ranges), `\` escapes. `None` for a malformed pattern.
pub fn glob_match(pattern: &str, name: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_at(&p, &n)
}

fn match_at(p: &[char], n: &[char]) -> Option<bool> {
    let Some((&first, rest)) = p.split_first() else { return Some(n.is_empty()) };
    match first {
        '*' => {
            // Any run of non-separators, shortest first.
            let mut i = 0;
            loop {
                if match_at(rest, &n[i..])? {
                    return Some(true);
                }
                if i == n.len() || n[i] == '/' {
                    // Still check the rest of the pattern is well formed.
                    return check_rest(rest).map(|_| false);
                }
                i += 1;
            }
        }
        '?' => match n.split_first() {
            Some((&c, nrest)) if c != '/' => match_at(rest, nrest),
            _ => check_rest(rest).map(|_| false),
        },
        '[' => {
            let (matched, after) = class(rest, n.first().copied())?;
            match (matched, n.split_first()) {
                (true, Some((_, nrest))) => match_at(after, nrest),
                _ => check_rest(after).map(|_| false),
            }
        }
        '\\' => {
            let (&lit, rest) = rest.split_first()?;
            match n.split_first() {
                Some((&c, nrest)) if c == lit => match_at(rest, nrest),
                _ => check_rest(rest).map(|_| false),
            }
        }
        lit => match n.split_first() {
            Some((&c, nrest)) if c == lit => match_at(rest, nrest),
            _ => check_rest(rest).map(|_| false),
        },
    }
}

/// Whether a pattern is well formed (path.Match reports ErrBadPattern even
/// when an earlier part already failed to match).
fn check_rest(p: &[char]) -> Option<()> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return None;
                }
                i += 2;
            }
            '[' => {
                let (_, after) = class(&p[i + 1..], None)?;
                i = p.len() - after.len();
            }
            _ => i += 1,
        }
    }
    Some(())
}

/// A class body after `[`: whether `c` is in it, and the pattern after `]`.
fn class(p: &[char], c: Option<char>) -> Option<(bool, &[char])> {
    let (negated, mut p) = match p.split_first() {
        Some(('^', rest)) => (true, rest),
        _ => (false, p),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        let (&ch, rest) = p.split_first()?;
        if ch == ']' && !first {
            let hit = c.is_some_and(|c| c != '/') && (matched != negated);
            return Some((hit, rest));
        }
        first = false;
        let (lo, rest) = class_char(ch, rest)?;
        let (hi, rest) = match rest.split_first() {
            Some(('-', r)) => {
                let (&h, r) = r.split_first()?;
                class_char(h, r)?
            }
            _ => (lo, rest),
        };
        if lo > hi {
            return None;
        }
        if let Some(c) = c {
            if lo <= c && c <= hi {
                matched = true;
            }
        }
        p = rest;
    }
}

fn class_char(ch: char, rest: &[char]) -> Option<(char, &[char])> {
    match ch {
        '\\' => rest.split_first().map(|(&c, r)| (c, r)),
        '-' | ']' => None,
        c => Some((c, rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_prefix_patterns_as_x_mod() {
        for (globs, target, want) in [
            ("", "rsc.io/quote", false),
            ("/", "rsc.io/quote", false),
            ("*/quote", "rsc.io/quote", true),
            ("*/quo", "rsc.io/quote", false),
            ("*/quo??", "rsc.io/quote", true),
            ("*/quo*", "rsc.io/quote", true),
            ("*quo*", "rsc.io/quote", false),
            ("rsc.io", "rsc.io/quote", true),
            ("*.io", "rsc.io/quote", true),
            ("rsc.io/", "rsc.io/quote", true),
            ("rsc", "rsc.io/quote", false),
            ("rsc*", "rsc.io/quote", true),
            ("rsc.io", "rsc.io/quote/v3", true),
            ("*/quote", "rsc.io/quote/v3", true),
            ("*/quote/", "rsc.io/quote/v3", true),
            ("*/quote/*", "rsc.io/quote/v3", true),
            ("*/quote/*/", "rsc.io/quote/v3", true),
            ("*/v3", "rsc.io/quote/v3", false),
            ("*/*/v3", "rsc.io/quote/v3", true),
            ("*/*/*", "rsc.io/quote/v3", true),
            ("*/*/*/", "rsc.io/quote/v3", true),
            ("*/*/*", "rsc.io/quote", false),
            ("*/*/*/", "rsc.io/quote", false),
            ("*/*/*,,", "rsc.io/quote", false),
            ("*/*/*,,*/quote", "rsc.io/quote", true),
            (",,*/quote", "rsc.io/quote", true),
            // Beyond x/mod's table: classes, escapes, malformed patterns.
            ("corp.example.com", "corp.example.com", true),
            ("corp.example.[a-c]om", "corp.example.com/x", true),
            ("corp.example.[^c]om", "corp.example.com/x", false),
            ("corp\\.example.com", "corp.example.com/x", true),
            ("corp.example.[", "corp.example.com/x", false),
        ] {
            assert_eq!(match_prefix_patterns(globs, target), want, "({globs:?}, {target:?})");
        }
    }

    #[test]
    fn glob_match_as_path_match() {
        for (pattern, name, want) in [
            ("abc", "abc", Some(true)),
            ("*", "abc", Some(true)),
            ("*c", "abc", Some(true)),
            ("a*", "a", Some(true)),
            ("a*/b", "abc/b", Some(true)),
            ("a*/b", "a/c/b", Some(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Some(true)),
            ("ab[c]", "abc", Some(true)),
            ("ab[b-d]", "abc", Some(true)),
            ("ab[^c]", "abc", Some(false)),
            ("ab[^e-g]", "abc", Some(true)),
            ("a\\*b", "a*b", Some(true)),
            ("a\\*b", "ab", Some(false)),
            ("a?b", "a/b", Some(false)),
            ("[", "a", None),
            ("[^", "a", None),
            ("a[", "x", None),
            ("*x", "xxx", Some(true)),
        ] {
            assert_eq!(glob_match(pattern, name), want, "({pattern:?}, {name:?})");
        }
    }
}
