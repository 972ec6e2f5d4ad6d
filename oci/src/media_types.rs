//! The media types this crate writes, reads or recognises.
//!
//! Kept in one place because the whole point of packaging for Istio is using
//! exactly the strings its fetcher compares against (see [`crate::istio`]).

/// OCI image manifest (`image-spec/manifest.md`). Both our formats use it.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index: a list of manifests, usually one per platform.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image configuration (`image-spec/config.md`).
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip-compressed tar layer: the one layer of the "compat" image Istio accepts.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Docker image manifest, schema 2. Istio treats an image whose manifest
/// declares this media type as a Docker image (tar.gz layer, see [`DOCKER_LAYER_TAR_GZIP`]).
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (Docker's counterpart of the OCI index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image configuration.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip-compressed tar layer.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Solo.io "oci" variant: the raw wasm module as a layer (Istio accepts it in a
/// two-layer image).
pub const SOLO_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// Solo.io "oci" variant: its config media type.
pub const SOLO_WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";

/// CNCF TAG-Runtime "Wasm OCI artifact" config. Istio does NOT accept images in
/// this format (istio/istio#39990).
pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
/// CNCF TAG-Runtime "Wasm OCI artifact" layer: the raw module.
pub const WASM_LAYER: &str = "application/wasm";

/// Every manifest media type a pull asks for in its `Accept` header.
///
/// Distribution 2.8 answers `404 MANIFEST_UNKNOWN` to a GET of an OCI manifest
/// when the request does not accept the OCI type, so the list must be explicit.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    DOCKER_MANIFEST_V2,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];
