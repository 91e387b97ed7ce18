//! Comparing secrets (tokens, passwords) a client sent with configured ones.

/// Whether `given` equals `expected`, in time that does not depend on where
/// they differ (only on their lengths), so a client cannot guess a token a
/// byte at a time.
pub fn secret_eq(expected: &[u8], given: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    expected.ct_eq(given).into()
}

/// Shortest token a config may set: a guessable one is worse than none.
pub const MIN_TOKEN_LEN: usize = 16;

/// A configured bearer token, checked when the config is read (long
/// enough, no spaces, not the example). Where a token turns an endpoint
/// on, the config holds an `Option<Token>` (see [`crate::config::optional`]:
/// empty is `None`). Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Whether `authorization` is `Bearer <this token>`.
    pub fn is_bearer(&self, authorization: Option<&[u8]>) -> bool {
        let given = authorization.and_then(|a| a.strip_prefix(b"Bearer ")).map(<[u8]>::trim_ascii);
        given.is_some_and(|g| secret_eq(self.0.as_bytes(), g))
    }

    /// The token itself, to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl std::str::FromStr for Token {
    type Err = String;
    fn from_str(token: &str) -> Result<Token, String> {
        if token.len() >= MIN_TOKEN_LEN && token != "change-me" && !token.contains(char::is_whitespace) {
            return Ok(Token(token.to_string()));
        }
        Err(format!(
            "a token must be at least {MIN_TOKEN_LEN} characters without spaces (e.g. `openssl rand -hex 32`), or empty to turn it off"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let token: Token = "s3cret-0123456789".parse().expect("token");
        assert!(token.is_bearer(Some(b"Bearer s3cret-0123456789")));
        assert!(!token.is_bearer(Some(b"Bearer s3cret-012345678")));
        assert!(!token.is_bearer(Some(b"Bearer s3cret-0123456789x")));
        assert!(!token.is_bearer(Some(b"Basic s3cret-0123456789")));
        assert!(!token.is_bearer(None));
        assert!(!token.is_bearer(Some(b"Bearer ")));
        assert_eq!(format!("{token:?}"), "Token(…)");
        assert!(secret_eq(b"ci:pw", b"ci:pw") && !secret_eq(b"ci:pw", b"ci:px"));
        assert!("0123456789abcdef".parse::<Token>().is_ok());
        for bad in ["change-me", "short", "0123456789 abcdef", ""] {
            assert!(bad.parse::<Token>().is_err(), "{bad:?}");
        }
    }
}
