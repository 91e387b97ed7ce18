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
    }
}
