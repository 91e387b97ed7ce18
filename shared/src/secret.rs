//! Comparing secrets (tokens, passwords) a client sent with configured ones.

/// Whether `given` equals `expected`, in time that does not depend on where
/// they differ (only on their lengths), so a client cannot guess a token a
/// byte at a time.
pub fn secret_eq(expected: &[u8], given: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    expected.ct_eq(given).into()
}

/// Whether `authorization` is `Bearer <token>` for the non-empty `token`.
pub fn bearer_is(authorization: Option<&[u8]>, token: &str) -> bool {
    let given = authorization.and_then(|a| a.strip_prefix(b"Bearer ")).map(<[u8]>::trim_ascii);
    !token.is_empty() && given.is_some_and(|g| secret_eq(token.as_bytes(), g))
}

/// Shortest token a config may set: a guessable one is worse than none.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a configured token cannot be used (empty is fine: it turns its
/// endpoint off).
pub fn token_problem(token: &str) -> Option<String> {
    if token.is_empty()
        || (token.len() >= MIN_TOKEN_LEN && token != "change-me" && !token.contains(char::is_whitespace))
    {
        return None;
    }
    Some(format!(
        "a token must be at least {MIN_TOKEN_LEN} characters without spaces (e.g. `openssl rand -hex 32`), or empty to turn it off"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert!(bearer_is(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!bearer_is(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!bearer_is(Some(b"Bearer s3cretx"), "s3cret"));
        assert!(!bearer_is(Some(b"Basic s3cret"), "s3cret"));
        assert!(!bearer_is(None, "s3cret"));
        assert!(!bearer_is(Some(b"Bearer "), ""), "an empty token matches nothing");
        assert!(secret_eq(b"ci:pw", b"ci:pw") && !secret_eq(b"ci:pw", b"ci:px"));
        assert!(token_problem("").is_none() && token_problem("0123456789abcdef").is_none());
        assert!(token_problem("change-me").is_some() && token_problem("short").is_some());
        assert!(token_problem("0123456789 abcdef").is_some());
    }
}
