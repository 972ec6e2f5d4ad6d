//! Building an image from a `.wasm`: the blobs and the manifest, in memory.
//!
//! Two formats:
//! * [`ImageFormat::Compat`] (default) — what Istio's `WasmPlugin` fetcher
//!   accepts: an OCI image manifest, a regular OCI image config, and ONE
//!   `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`
//!   (solo-io wasm spec, "compat" variant).
//! * [`ImageFormat::WasmArtifact`] — the CNCF TAG-Runtime Wasm OCI artifact:
//!   config `application/vnd.wasm.config.v0+json`, one `application/wasm`
//!   layer with the raw module. Used by wasmtime/Spin/wkg-style runtimes.
//!   Istio's fetcher does NOT accept it (istio/istio#39990).
//!
//! Everything is deterministic: no timestamps (the artifact config's required
//! `created` is fixed at the epoch), sorted annotations, fixed JSON field order.
//! The same `.wasm` and options always give the same manifest digest.

use crate::digest::Digest;
use crate::layer::{self, LayerError};
use crate::manifest::{Descriptor, ImageManifest};
use crate::media_types;
use crate::wasm::{self, WasmError};
use serde::Serialize;
use std::collections::BTreeMap;

/// Which image layout to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// Istio-compatible: one tar+gzip layer with `plugin.wasm`.
    #[default]
    Compat,
    /// CNCF TAG-Runtime Wasm artifact (NOT accepted by Istio, istio/istio#39990).
    WasmArtifact,
}

/// Options for [`build`].
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The layout to produce.
    pub format: ImageFormat,
    /// Manifest annotations (e.g. `org.opencontainers.image.source`). Sorted, so
    /// insertion order does not change the digest.
    pub annotations: BTreeMap<String, String>,
}

/// A blob together with its descriptor.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob {
    /// What the manifest says about it.
    pub descriptor: Descriptor,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("descriptor", &self.descriptor)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Self {
        Self {
            descriptor: Descriptor::of(media_type, &data),
            data,
        }
    }
}

/// A complete image: manifest bytes (exactly what gets pushed/written, so
/// their digest is the image's identity), config and layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The serialized manifest.
    pub manifest: Vec<u8>,
    /// The manifest's media type (the `Content-Type` of a manifest PUT).
    pub manifest_media_type: String,
    /// The config blob.
    pub config: Blob,
    /// The layer blobs, in manifest order.
    pub layers: Vec<Blob>,
}

impl Image {
    /// The manifest digest: what `oci://…@sha256:` and a `WasmPlugin`'s `sha256:` name.
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    /// A descriptor of the manifest (for `index.json`).
    pub fn manifest_descriptor(&self) -> Descriptor {
        Descriptor::of(&self.manifest_media_type, &self.manifest)
    }

    /// All blobs: layers first, then the config (the order a push uploads them).
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.layers.iter().chain(std::iter::once(&self.config))
    }
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The input is not a wasm core module.
    #[error("input refused: {0}")]
    NotWasm(#[from] WasmError),
    /// Building the layer failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// Serialising a JSON document failed.
    #[error("serialising {what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The serialiser's error.
        source: serde_json::Error,
    },
}

/// OCI image config of the compat image. Istio never reads it; it exists so
/// that the image is a valid OCI image for every other tool (skopeo, crane…).
#[derive(Serialize)]
struct CompatConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    config: BTreeMap<String, String>,
    rootfs: RootFs,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<Digest>,
}

/// Config of the CNCF Wasm artifact (`application/vnd.wasm.config.v0+json`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmArtifactConfig<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    layer_digests: Vec<Digest>,
}

/// `architecture` of both configs: GOARCH for WebAssembly.
const WASM_ARCH: &str = "wasm";
/// `os` of both configs: a core module (no component model) is `wasip1`.
const WASM_OS: &str = "wasip1";
/// Fixed creation time for the artifact config, for reproducible digests.
const EPOCH: &str = "1970-01-01T00:00:00Z";

fn to_json<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, BuildError> {
    serde_json::to_vec(value).map_err(|source| BuildError::Json { what, source })
}

/// Builds an image from the bytes of a `.wasm` file.
///
/// Refuses anything that is not a wasm core module (magic `\0asm`, version 1).
pub fn build(wasm_bytes: &[u8], options: &BuildOptions) -> Result<Image, BuildError> {
    wasm::validate_module(wasm_bytes)?;
    let (config, layers, artifact_type) = match options.format {
        ImageFormat::Compat => {
            let (gz, tar) = layer::compat_layer(wasm_bytes)?;
            let config = CompatConfig {
                architecture: WASM_ARCH,
                os: WASM_OS,
                config: BTreeMap::new(),
                rootfs: RootFs {
                    kind: "layers",
                    diff_ids: vec![Digest::of(&tar)],
                },
            };
            let config = Blob::new(media_types::OCI_CONFIG, to_json("image config", &config)?);
            let layer = Blob::new(media_types::OCI_LAYER_TAR_GZIP, gz);
            (config, vec![layer], None)
        }
        ImageFormat::WasmArtifact => {
            let layer = Blob::new(media_types::WASM_LAYER, wasm_bytes.to_vec());
            let config = WasmArtifactConfig {
                created: EPOCH,
                architecture: WASM_ARCH,
                os: WASM_OS,
                layer_digests: vec![layer.descriptor.digest.clone()],
            };
            let config = Blob::new(
                media_types::WASM_CONFIG_V0,
                to_json("wasm artifact config", &config)?,
            );
            (config, vec![layer], None::<String>)
        }
    };
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media_types::OCI_MANIFEST.to_string()),
        artifact_type,
        config: config.descriptor.clone(),
        layers: layers.iter().map(|l| l.descriptor.clone()).collect(),
        annotations: if options.annotations.is_empty() {
            None
        } else {
            Some(options.annotations.clone())
        },
    };
    Ok(Image {
        manifest: to_json("image manifest", &manifest)?,
        manifest_media_type: media_types::OCI_MANIFEST.to_string(),
        config,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    const WASM: &[u8] = b"\0asm\x01\0\0\0\0\x05\x04name";

    #[test]
    fn building_twice_gives_the_same_manifest_digest() {
        for format in [ImageFormat::Compat, ImageFormat::WasmArtifact] {
            let opts = BuildOptions {
                format,
                ..Default::default()
            };
            let a = build(WASM, &opts).unwrap();
            let b = build(WASM, &opts).unwrap();
            assert_eq!(a, b);
            assert_eq!(a.manifest_digest(), b.manifest_digest());
            let c = build(b"\0asm\x01\0\0\0", &opts).unwrap();
            assert_ne!(
                a.manifest_digest(),
                c.manifest_digest(),
                "content must matter"
            );
        }
    }

    #[test]
    fn annotation_insertion_order_does_not_change_the_digest() {
        let mut a = BuildOptions::default();
        a.annotations.insert("b".into(), "2".into());
        a.annotations.insert("a".into(), "1".into());
        let mut b = BuildOptions::default();
        b.annotations.insert("a".into(), "1".into());
        b.annotations.insert("b".into(), "2".into());
        assert_eq!(
            build(WASM, &a).unwrap().manifest_digest(),
            build(WASM, &b).unwrap().manifest_digest()
        );
        assert_ne!(
            build(WASM, &a).unwrap().manifest_digest(),
            build(WASM, &BuildOptions::default())
                .unwrap()
                .manifest_digest()
        );
    }

    #[test]
    fn compat_image_has_one_tar_gzip_layer_and_a_valid_config() {
        let image = build(WASM, &BuildOptions::default()).unwrap();
        let Manifest::Image(m) = Manifest::parse(&image.manifest, None).unwrap() else {
            panic!("not an image manifest");
        };
        assert_eq!(m.media_type.as_deref(), Some(media_types::OCI_MANIFEST));
        assert_eq!(m.config.media_type, media_types::OCI_CONFIG);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].media_type, media_types::OCI_LAYER_TAR_GZIP);
        assert_eq!(m.layers[0], image.layers[0].descriptor);
        assert_eq!(m.config, image.config.descriptor);
        let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        let tar = crate::layer::plugin_tar(WASM).unwrap();
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            Digest::of(&tar).to_string(),
            "diff_id is the digest of the UNcompressed tar"
        );
        assert!(config["architecture"].is_string() && config["os"].is_string());
    }

    #[test]
    fn artifact_image_has_the_raw_module_as_its_layer() {
        let opts = BuildOptions {
            format: ImageFormat::WasmArtifact,
            ..Default::default()
        };
        let image = build(WASM, &opts).unwrap();
        assert_eq!(
            image.config.descriptor.media_type,
            media_types::WASM_CONFIG_V0
        );
        assert_eq!(image.layers.len(), 1);
        assert_eq!(
            image.layers[0].descriptor.media_type,
            media_types::WASM_LAYER
        );
        assert_eq!(image.layers[0].data, WASM);
        let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(config["layerDigests"][0], Digest::of(WASM).to_string());
        assert_eq!(config["created"], EPOCH);
    }

    #[test]
    fn refuses_non_wasm_input() {
        let err = build(b"#!/bin/sh\necho hi\n", &BuildOptions::default()).unwrap_err();
        assert!(matches!(
            err,
            BuildError::NotWasm(WasmError::BadMagic { .. })
        ));
        assert!(
            err.to_string().contains("not a WebAssembly module"),
            "{err}"
        );
    }
}
