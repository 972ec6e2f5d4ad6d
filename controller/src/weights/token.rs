//! The bearer token that guards the weights API's write endpoints (and,
//! when the operator asks, its reads).
//!
//! The secret never leaves this type: `Debug` prints `Token(redacted)`,
//! there is no `Display`, and comparison is of SHA-256 digests in constant
//! time (`subtle`), so neither the bytes nor their length leak through
//! timing. Read from a file (a mounted Secret) or an environment variable;
//! one trailing newline is dropped, since `echo secret > file` writes one.

use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

/// The environment variable the CLI and `serve-weights` read the token
/// from when no `--token-file` is given.
pub const TOKEN_ENV: &str = "TIDEWAY_TOKEN";

/// A bearer token (see the module doc).
#[derive(Clone)]
pub struct Token {
    secret: Vec<u8>,
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

impl Token {
    /// A token from its text; empty or containing whitespace/control
    /// characters (which could not be sent in a header) is an error.
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err("the token is empty".into());
        }
        if text
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b >= 0x80)
        {
            return Err(
                "the token has whitespace, control or non-ASCII characters (a bearer token is printable ASCII)"
                    .into(),
            );
        }
        Ok(Self {
            secret: text.as_bytes().to_vec(),
            digest: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// Read from `file`; errors name the file, never the content.
    pub fn from_file(file: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("reading token file {}: {e}", file.display()))?;
        Self::new(&text).map_err(|e| anyhow::anyhow!("token file {}: {e}", file.display()))
    }

    /// `--token-file` if given, else `$TIDEWAY_TOKEN` if set, else none.
    pub fn from_file_or_env(file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        if let Some(file) = file {
            return Self::from_file(file).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(text) => Self::new(&text)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("${TOKEN_ENV}: {e}")),
            Err(_) => Ok(None),
        }
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn accepts(&self, authorization: &[u8]) -> bool {
        let Some(presented) = bearer(authorization) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }

    /// The `Authorization` header value for a request.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.secret))
    }
}

/// The credentials of `Bearer <token>` (scheme case-insensitive, RFC 6750).
pub fn bearer(authorization: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = authorization.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(&rest[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_same_token_and_never_shows_it() {
        let t = Token::new("s3cret\n").unwrap();
        assert!(t.accepts(b"Bearer s3cret"));
        assert!(t.accepts(b"bearer s3cret"));
        assert!(!t.accepts(b"Bearer s3cre"));
        assert!(!t.accepts(b"Bearer s3cret2"));
        assert!(!t.accepts(b"Basic s3cret"));
        assert!(!t.accepts(b"s3cret"));
        assert!(!t.accepts(b""));
        assert_eq!(format!("{t:?}"), "Token(redacted)");
        assert!(Token::new("\n").is_err());
        assert!(Token::new("a b").is_err());
    }
}
