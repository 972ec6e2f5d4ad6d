//! The JSON documents of an OCI image: descriptors, image manifests, indexes.
//!
//! Shared by the builder (which serialises them, field order fixed by the
//! struct order so output is reproducible) and by pull/verify (which parse
//! what a registry or an OCI layout holds, Docker schema-2 manifests
//! included: they have the same shape).

use crate::digest::Digest;
use crate::media_types;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A content descriptor: what a blob is, its digest and its exact size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Optional annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform, for entries of an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor of `data` with `media_type`.
    pub fn of(media_type: &str, data: &[u8]) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: Digest::of(data),
            size: data.len() as u64,
            annotations: None,
            platform: None,
        }
    }
}

/// The platform an index entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (GOARCH values, e.g. `amd64`).
    pub architecture: String,
    /// Operating system (GOOS values, e.g. `linux`).
    pub os: String,
    /// CPU variant, e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An OCI image manifest, or a Docker schema-2 manifest (same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type. Optional in OCI; Docker sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// OCI 1.1 artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layers, in order.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Optional annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An OCI image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests it lists.
    pub manifests: Vec<Descriptor>,
    /// Optional annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A parsed manifest document: an image manifest or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single image.
    Image(ImageManifest),
    /// A list of images.
    Index(ImageIndex),
}

/// Why manifest bytes could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("manifest is not valid JSON for {kind}: {source}")]
    Json {
        /// What we tried to parse it as.
        kind: &'static str,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// `schemaVersion` is not 2.
    #[error("manifest has schemaVersion {0}, only 2 is supported")]
    SchemaVersion(u32),
    /// A media type that is not a manifest or an index.
    #[error("unsupported manifest mediaType `{0}`")]
    MediaType(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

impl Manifest {
    /// Parses manifest bytes. `content_type` is the `Content-Type` a registry
    /// served them with, if any; the `mediaType` field inside wins when present.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        let probe: Probe = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            kind: "a manifest",
            source,
        })?;
        let schema = probe.schema_version.unwrap_or(0);
        if schema != 2 {
            return Err(ManifestError::SchemaVersion(schema));
        }
        let media_type = probe
            .media_type
            .clone()
            .or_else(|| content_type.map(str::to_string));
        let is_index = match media_type.as_deref() {
            Some(media_types::OCI_INDEX) | Some(media_types::DOCKER_MANIFEST_LIST) => true,
            Some(media_types::OCI_MANIFEST) | Some(media_types::DOCKER_MANIFEST_V2) => false,
            // OCI allows omitting mediaType; an index is recognised by `manifests`.
            None | Some("") | Some("application/json") => probe.manifests.is_some(),
            Some(other) => return Err(ManifestError::MediaType(other.to_string())),
        };
        if is_index {
            serde_json::from_slice(bytes)
                .map(Manifest::Index)
                .map_err(|source| ManifestError::Json {
                    kind: "an image index",
                    source,
                })
        } else {
            serde_json::from_slice(bytes)
                .map(Manifest::Image)
                .map_err(|source| ManifestError::Json {
                    kind: "an image manifest",
                    source,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc_json(mt: &str) -> String {
        format!(
            r#"{{"mediaType":"{mt}","digest":"{}","size":3}}"#,
            Digest::of(b"abc")
        )
    }

    #[test]
    fn parses_oci_manifest_without_media_type_field() {
        let json = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
            desc_json(media_types::OCI_CONFIG),
            desc_json(media_types::OCI_LAYER_TAR_GZIP)
        );
        match Manifest::parse(json.as_bytes(), None).unwrap() {
            Manifest::Image(m) => {
                assert_eq!(m.media_type, None);
                assert_eq!(m.layers.len(), 1);
                assert_eq!(m.layers[0].size, 3);
            }
            other => panic!("expected an image manifest, got {other:?}"),
        }
    }

    #[test]
    fn recognises_an_index_and_rejects_other_types_and_schema_versions() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
            media_types::OCI_INDEX,
            desc_json(media_types::OCI_MANIFEST)
        );
        assert!(matches!(
            Manifest::parse(index.as_bytes(), None),
            Ok(Manifest::Index(_))
        ));
        let schema1 = r#"{"schemaVersion":1,"name":"x"}"#;
        assert!(matches!(
            Manifest::parse(schema1.as_bytes(), None),
            Err(ManifestError::SchemaVersion(1))
        ));
        let odd = r#"{"schemaVersion":2,"mediaType":"text/plain"}"#;
        let err = Manifest::parse(odd.as_bytes(), None).unwrap_err();
        assert!(err.to_string().contains("text/plain"), "{err}");
    }

    #[test]
    fn bad_digest_inside_a_descriptor_is_an_error() {
        let json = r#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:zz","size":1},"layers":[]}"#;
        let err = Manifest::parse(json.as_bytes(), None).unwrap_err();
        assert!(err.to_string().contains("sha256:zz"), "{err}");
    }
}
