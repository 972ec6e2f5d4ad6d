//! Image references (`host[:port]/repo[:tag][@sha256:…]`), with or without
//! the `oci://` scheme a `WasmPlugin` URL uses.
//!
//! Parsing is delegated to `oci-client` (the distribution reference
//! grammar); this type adds the `oci://` handling and the exact strings a
//! `WasmPlugin` needs.

use crate::digest::Digest;
use std::fmt;

/// A parsed image reference.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageRef {
    inner: oci_client::Reference,
}

/// A string that is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference `{input}`: {detail} (expected host[:port]/repository[:tag][@sha256:digest])")]
pub struct ReferenceError {
    /// What was given.
    pub input: String,
    /// Why it was refused.
    pub detail: String,
}

impl ImageRef {
    /// Parses a reference; a leading `oci://` is accepted and ignored.
    /// A registry host is required (no implicit Docker Hub): `reg.example/repo:tag`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |detail: String| ReferenceError {
            input: input.to_string(),
            detail,
        };
        let s = input.strip_prefix("oci://").unwrap_or(input);
        let first = s.split('/').next().unwrap_or("");
        let looks_like_host =
            s.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
        if !looks_like_host {
            return Err(err("it does not start with a registry host".into()));
        }
        let inner: oci_client::Reference = s.parse().map_err(|e| err(format!("{e}")))?;
        if let Some(d) = inner.digest() {
            Digest::parse(d).map_err(|e| err(e.to_string()))?;
        }
        Ok(Self { inner })
    }

    /// `host[:port]`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository path, e.g. `tideway/filter`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, if one was given.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The digest, if one was given.
    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| Digest::parse(d).ok())
    }

    /// The same repository, pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: &Digest) -> Self {
        Self {
            inner: oci_client::Reference::with_digest(
                self.registry().to_string(),
                self.repository().to_string(),
                digest.to_string(),
            ),
        }
    }

    /// The `url:` of a `WasmPlugin` pinned to `digest`: `oci://host/repo@sha256:…`.
    pub fn wasm_plugin_url(&self, digest: &Digest) -> String {
        format!("oci://{}/{}@{}", self.registry(), self.repository(), digest)
    }

    /// The `oci-client` form.
    pub(crate) fn client_ref(&self) -> &oci_client::Reference {
        &self.inner
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry(), self.repository())?;
        if let Some(t) = self.tag() {
            write!(f, ":{t}")?;
        }
        if let Some(d) = self.inner.digest() {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({self})")
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_repo_tag_and_oci_scheme() {
        let r = ImageRef::parse("oci://127.0.0.1:5000/tideway/filter:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "tideway/filter");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.to_string(), "127.0.0.1:5000/tideway/filter:v1");
    }

    #[test]
    fn wasm_plugin_url_pins_the_manifest_digest() {
        let r = ImageRef::parse("reg.example/f:latest").unwrap();
        let d = Digest::of(b"manifest");
        assert_eq!(
            r.wasm_plugin_url(&d),
            format!("oci://reg.example/f@sha256:{}", d.hex())
        );
        let pinned = r.with_digest(&d);
        assert_eq!(pinned.digest(), Some(d.clone()));
        assert_eq!(pinned.tag(), None);
    }

    #[test]
    fn refuses_references_without_a_host_or_with_bad_digests() {
        assert!(ImageRef::parse("filter:v1").is_err());
        assert!(ImageRef::parse("library/filter").is_err());
        let e = ImageRef::parse("reg.example/f@sha256:1234").unwrap_err();
        assert!(e.to_string().contains("reg.example/f@sha256:1234"), "{e}");
    }
}
