//! The weights channel's controller side: run-time scheduler weights that
//! every proxy adopts within a second, without a new WasmPlugin.
//!
//! - [`state`]: the one owner of the weights — policies, operator
//!   overrides, health — published under a monotonically increasing version;
//! - [`server`]: `GET /v1/weights` (ETag, long-poll) and the write
//!   endpoints over HTTP/1.1, optionally TLS;
//! - [`token`]: the bearer token guarding writes;
//! - [`store`]: the operator overrides on disk, surviving a restart;
//! - [`client`]: what `tideway drain`, `tideway weight set` and
//!   `tideway weights get` use to talk to a server.
//!
//! The wire format is the filter's own ([`tideway_filter::weights`]), so the
//! server cannot write a document the filter does not parse.

pub mod client;
pub mod local;
pub mod server;
pub mod state;
pub mod store;
pub mod token;

pub use server::{ServerOptions, WeightsApi};
pub use state::{ServiceBase, WeightsState};
pub use token::Token;
