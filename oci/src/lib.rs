//! OCI packaging of Tideway's proxy-wasm filter, the way Istio fetches it.
//!
//! * [`image`] builds an image from a `.wasm` (Istio "compat" layout, or the
//!   CNCF Wasm artifact for other runtimes), reproducibly;
//! * [`layout`] writes/reads it as an OCI image layout directory;
//! * [`registry`] pushes/pulls it over the OCI Distribution API (via the
//!   `oci-client` crate) with auth, TLS and bounded retries;
//! * [`token`] is the registry token flow (Bearer challenge, token server);
//! * [`auth`] finds credentials where users keep them (flags, Docker config,
//!   credential helpers, a Kubernetes `dockerconfigjson` Secret);
//! * [`istio`] answers "would Istio's agent accept this image?", mirroring
//!   `pkg/wasm/imagefetcher.go`.
//!
//! The identity of an image is its MANIFEST digest. A `WasmPlugin` with
//! `url: oci://…` must carry that digest in `sha256:` (not the hash of the
//! `.wasm` file: istio/istio#37565, #38989).

pub mod auth;
pub mod container;
pub mod digest;
pub mod error_chain;
pub mod fetched;
pub mod image;
pub mod istio;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod media_types;
pub mod reference;
pub mod registry;
pub mod retry;
pub mod token;
pub mod wasm;

pub use digest::Digest;
pub use error_chain::error_chain;
pub use image::{build, BuildOptions, Image, ImageFormat};
