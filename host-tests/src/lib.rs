//! Host-side tests of the Tideway filter.

pub mod backend;
pub mod bench;
pub mod browser;
pub mod demo;
pub mod env;
pub mod envoy;
pub mod istio_routes;
pub mod wasm_host;
pub mod weights_server;
