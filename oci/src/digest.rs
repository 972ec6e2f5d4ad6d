//! Content digests (`sha256:<64 hex>`), the addresses of everything in an OCI image.
//!
//! Only sha256 is supported: it is what registries, Istio's fetcher and the
//! OCI image layout use in practice, and refusing anything else keeps
//! verification simple and strict.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// A sha256 content digest. Always valid: 64 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a string is not a digest we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest `{0}` has no algorithm prefix (expected `sha256:<64 hex>`)")]
    MissingAlgorithm(String),
    /// An algorithm other than sha256.
    #[error(
        "digest `{value}` uses unsupported algorithm `{algorithm}` (only sha256 is supported)"
    )]
    UnsupportedAlgorithm {
        /// The whole digest string.
        value: String,
        /// Its algorithm part.
        algorithm: String,
    },
    /// The hex part is not 64 lowercase hex characters.
    #[error("digest `{0}` does not have 64 lowercase hex characters after `sha256:`")]
    BadHex(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let sum = Sha256::digest(bytes);
        Self {
            hex: to_hex(sum.as_slice()),
        }
    }

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let (algorithm, hex) = value
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(value.to_string()))?;
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm {
                value: value.to_string(),
                algorithm: algorithm.to_string(),
            });
        }
        Self::from_hex(hex).map_err(|_| DigestError::BadHex(value.to_string()))
    }

    /// Builds a digest from its bare hex part (as in a `WasmPlugin`'s `sha256:` field).
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        let ok = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self {
                hex: hex.to_string(),
            })
        } else {
            Err(DigestError::BadHex(format!("sha256:{hex}")))
        }
    }

    /// The 64 hex characters, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// True if `bytes` hash to this digest.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Digest::of(bytes) == *self
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_is_the_known_sha256() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_round_trips_and_rejects_malformed_values() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::parse(&d.to_string()), Ok(d.clone()));
        assert!(matches!(
            Digest::parse("sha512:00"),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert!(matches!(
            Digest::parse(d.hex()),
            Err(DigestError::MissingAlgorithm(_))
        ));
        let upper = format!("sha256:{}", d.hex().to_uppercase());
        assert!(matches!(Digest::parse(&upper), Err(DigestError::BadHex(_))));
        assert!(matches!(
            Digest::parse("sha256:abc"),
            Err(DigestError::BadHex(_))
        ));
    }

    #[test]
    fn matches_detects_a_changed_byte() {
        let d = Digest::of(b"hello");
        assert!(d.matches(b"hello"));
        assert!(!d.matches(b"hellp"));
    }

    #[test]
    fn serde_uses_the_prefixed_string_form() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"sha256:{}\"", d.hex()));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"md5:00\"").is_err());
    }
}
