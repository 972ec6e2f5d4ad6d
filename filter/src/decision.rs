//! The routing core: every decision the filter makes, independent of the host.
//!
//! One [`Engine`] lives in each worker VM. The host layer (`proxy`) makes
//! two calls per request and only converts between Envoy and these types:
//! - [`Engine::route`]: from the request headers (and, only when a routing
//!   header arrived, the peer's identity), the service, the destination and
//!   every request-header write — the routing header, the hop headers, the
//!   trace context, and the removal of untrusted `x-tideway-*` headers;
//! - [`Engine::complete`]: what the host saw of the response (its headers,
//!   trailers, the end of the stream) becomes the destination's outcome:
//!   latency into the peak-EWMA, failures into `health` and the shared
//!   failure streak, in-flight counts into load, the span into the export
//!   queue.
//!
//! Submodules, one concept each:
//! - [`engine`]: per-service state, built from the config;
//! - [`request`]: one request's way through the core, and the host traits;
//! - [`route`]: a request's headers to a destination and header writes;
//! - [`complete`]: its response and stream end to the destination's outcome;
//! - [`outcome`]: what counts as a destination's failure;
//! - [`pick`]: choosing a destination (affinity, scoring, static split,
//!   failover);
//! - [`probe`]: active re-admission after an ejection, and
//!   [`active_probe`] a destination's probe state;
//! - [`runtime_weights`]: the weights channel's values applied (and the
//!   static ones restored), and drained destinations set aside;
//! - [`sync`]: sharing statistics with the other workers;
//! - [`memory`]: the host in memory, for everything that runs the core
//!   off the proxy.

mod active_probe;
mod complete;
mod engine;
pub mod memory;
mod outcome;
mod pick;
mod probe;
mod request;
mod route;
mod runtime_weights;
mod sync;
mod timing;

pub use active_probe::ActiveProbe;
pub use engine::{Destination, Engine, LocalIdentity, Service};
pub use outcome::Outcome;
pub use request::{
    Completion, Ejection, HostFailure, InFlight, RouteHost, StreamEvent, StreamHost,
};

/// Why a destination was chosen; a metrics dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Dynamic multi-factor scoring (P2C).
    Score,
    /// Static weights only (latency and load factors off).
    Static,
    /// Session affinity (rendezvous hashing).
    Affinity,
    /// The choice was ejected; the failover order picked another.
    Failover,
    /// A trusted caller named the destination in the routing header.
    TrustedHeader,
    /// Nothing usable: left to the mesh's default route.
    MeshDefault,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Score,
        Reason::Static,
        Reason::Affinity,
        Reason::Failover,
        Reason::TrustedHeader,
        Reason::MeshDefault,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Score => "score",
            Reason::Static => "static",
            Reason::Affinity => "affinity",
            Reason::Failover => "failover",
            Reason::TrustedHeader => "trusted_header",
            Reason::MeshDefault => "mesh_default",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where one request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub service: usize,
    /// `None`: no routing header; the mesh's default route serves it.
    pub destination: Option<usize>,
    pub reason: Reason,
}

#[cfg(test)]
mod tests;
