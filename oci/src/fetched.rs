//! An image read back from a registry or a layout, every blob verified.
//!
//! Pull and verify never trust a source: each blob must have exactly the
//! size and digest its descriptor declares (Distribution 2.8, for one, does
//! not check a layer's declared size when a manifest is pushed), and the
//! manifest must hash to the digest it was requested by.

use crate::digest::Digest;
use crate::image::{Blob, Image};
use crate::istio::{self, Accepted, Rejection, Rules};
use crate::manifest::{Descriptor, ImageManifest};
use crate::media_types;

/// A blob that is not what its descriptor says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// Wrong number of bytes.
    #[error("{what} {digest}: size mismatch: descriptor says {expected} bytes, got {actual}")]
    Size {
        /// Which blob (e.g. `layer 0`, `config`, `manifest`).
        what: String,
        /// Its declared digest.
        digest: Digest,
        /// Declared size.
        expected: u64,
        /// Received size.
        actual: u64,
    },
    /// Wrong content.
    #[error("{what}: digest mismatch: expected {expected}, content hashes to {actual}")]
    Digest {
        /// Which blob.
        what: String,
        /// Declared digest.
        expected: Digest,
        /// Digest of what was received.
        actual: Digest,
    },
}

/// Checks `data` against `descriptor` (size first, then digest).
pub fn verify_blob(what: &str, descriptor: &Descriptor, data: &[u8]) -> Result<(), IntegrityError> {
    if data.len() as u64 != descriptor.size {
        return Err(IntegrityError::Size {
            what: what.to_string(),
            digest: descriptor.digest.clone(),
            expected: descriptor.size,
            actual: data.len() as u64,
        });
    }
    let actual = Digest::of(data);
    if actual != descriptor.digest {
        return Err(IntegrityError::Digest {
            what: what.to_string(),
            expected: descriptor.digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// A fully fetched, verified image.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedImage {
    /// The manifest bytes as served.
    pub manifest_bytes: Vec<u8>,
    /// Their digest: the image identity Istio compares `sha256:` with.
    pub manifest_digest: Digest,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// When the reference named an index: the index digest (the image is
    /// the entry Istio would pick, see [`istio::select_from_index`]).
    pub index_digest: Option<Digest>,
    /// The config blob.
    pub config: Vec<u8>,
    /// Layer blobs, in manifest order.
    pub layers: Vec<Vec<u8>>,
}

impl std::fmt::Debug for FetchedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedImage")
            .field("manifest_digest", &self.manifest_digest)
            .field("manifest", &self.manifest)
            .field("index_digest", &self.index_digest)
            .field("config_len", &self.config.len())
            .field(
                "layer_lens",
                &self.layers.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl FetchedImage {
    /// What Istio's agent would do with this image (`url` appears in its messages).
    pub fn istio_verdict(&self, url: &str, rules: Rules) -> Result<Accepted, Rejection> {
        istio::extract(url, &self.manifest, &self.layers, rules)
    }

    /// The image as an [`Image`] to push or write to a layout: the manifest
    /// bytes as fetched, so its digest (the image's identity) stays the same.
    pub fn into_image(self) -> Image {
        Image {
            manifest_media_type: self
                .manifest
                .media_type
                .clone()
                .unwrap_or_else(|| media_types::OCI_MANIFEST.to_string()),
            config: Blob {
                descriptor: self.manifest.config.clone(),
                data: self.config,
            },
            layers: self
                .manifest
                .layers
                .iter()
                .cloned()
                .zip(self.layers)
                .map(|(descriptor, data)| Blob { descriptor, data })
                .collect(),
            manifest: self.manifest_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_checked_before_digest_and_both_name_the_blob() {
        let d = Descriptor::of("x", b"hello");
        assert_eq!(verify_blob("layer 0", &d, b"hello"), Ok(()));
        let e = verify_blob("layer 0", &d, b"hell").unwrap_err();
        assert!(matches!(
            e,
            IntegrityError::Size {
                expected: 5,
                actual: 4,
                ..
            }
        ));
        assert!(e.to_string().starts_with("layer 0 sha256:"), "{e}");
        let e = verify_blob("config", &d, b"HELLO").unwrap_err();
        assert!(matches!(e, IntegrityError::Digest { .. }));
        assert!(e.to_string().contains("digest mismatch"), "{e}");
    }
}
