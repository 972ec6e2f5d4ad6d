//! One request's way through the core, and what it needs of the host:
//! [`Engine::route`](super::Engine::route) (`route`) when its headers arrive, [`Engine::complete`](super::Engine::complete)
//! (`complete`) as its response arrives and its stream ends. Here are the
//! host traits and the request's state between the two.
//!
//! Why here and not in the host layer: whether an inbound routing header is
//! honoured, where the session key comes from, which headers are written
//! and what counts as the destination's failure are the filter's policy.
//! Kept here they are tested natively, and the host layer only reads and
//! writes what these calls ask for — through [`RouteHost`] and
//! [`StreamHost`], which the core calls only when it needs the answer (the
//! peer's identity only when a routing header arrived, the clock at the end
//! only when something needs it).

use super::sync::BadRecord;
use super::Decision;
use crate::shared_stats::SharedStore;
use crate::trace::{otlp, TraceRng};

/// Request headers of the `x-tideway-` family. From a caller the policy
/// does not trust they are removed: none of them may steer the request.
pub const RESERVED_PREFIX: &[u8] = b"x-tideway-";

/// A host call failed. The core then decides nothing for the request (the
/// mesh's default route serves it) and records nothing about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFailure;

/// What [`Engine::route`](super::Engine::route) needs from the host.
pub trait RouteHost {
    /// The host's clock, Unix nanoseconds.
    fn now_ns(&mut self) -> Result<u64, HostFailure>;
    /// The downstream peer's mTLS identity (its URI SAN); `None` when it
    /// has none or it cannot be read. Asked only when the request carries a
    /// routing or `x-tideway-*` header and the policy trusts some
    /// principals.
    fn peer_principal(&mut self) -> Option<Vec<u8>>;
    /// Set request header `name` to `value` (`None` removes it). `present`:
    /// the request arrived with it (so an add spares the host a lookup, and
    /// a replace leaves no client copy next to ours).
    fn set_request_header(
        &mut self,
        name: &str,
        value: Option<&[u8]>,
        present: bool,
    ) -> Result<(), HostFailure>;
    /// Fresh randomness for trace and span ids.
    fn trace_rng(&mut self) -> &mut dyn TraceRng;
}

/// What [`Engine::complete`](super::Engine::complete) needs from the host.
pub trait StreamHost {
    /// The host's clock, Unix nanoseconds.
    fn now_ns(&mut self) -> Result<u64, HostFailure>;
    /// A response header's value (`Ok(None)`: absent).
    fn response_header(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure>;
    /// A response trailer's value (`Ok(None)`: absent). Asked only for
    /// gRPC calls.
    fn response_trailer(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure>;
    /// Envoy's response flags (`response.flags`), asked only for a stream
    /// that ended without response headers.
    fn response_flags(&mut self) -> Result<u64, HostFailure>;
    /// The shared data the workers merge their statistics through.
    fn shared_store(&mut self) -> &mut dyn SharedStore;
}

/// What the host saw of a routed request's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent {
    /// The response headers arrived.
    ResponseHeaders,
    /// The response trailers arrived (a gRPC call's `grpc-status`).
    ResponseTrailers,
    /// The stream is over (Envoy's access-log callback).
    End,
}

/// A request routed by [`Engine::route`](super::Engine::route), until its stream ends.
#[derive(Debug)]
pub struct InFlight {
    /// The engine (configuration) that routed it.
    pub(super) epoch: u64,
    pub decision: Decision,
    pub(super) started_ns: u64,
    /// Its latency is measured (`timing`): `started_ns` is its own start.
    pub(super) timed: bool,
    pub(super) responded: bool,
    /// A gRPC call: its outcome is its `grpc-status`.
    pub(super) grpc: bool,
    /// The destination's outcome is recorded (it counts once).
    pub(super) outcome_recorded: bool,
    /// A host call failed on the way: nothing is recorded for it.
    pub(super) unrecorded: bool,
    pub(super) ended: bool,
    pub(super) status: Option<u16>,
    /// The span recorded for it (span mode, sampled).
    pub(super) span: Option<otlp::SpanIds>,
}

/// An ejection caused by a request's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub service: usize,
    pub destination: usize,
    pub until_ns: u64,
}

/// What completing a step of a request did, for the host to act on.
#[derive(Debug, Default)]
pub struct Completion {
    /// The destination was ejected (count it, log it).
    pub ejection: Option<Ejection>,
    /// A shared record was not understood and was replaced.
    pub bad_record: Option<BadRecord>,
    /// The `x-tideway-decision` response header to add (`decisionHeader`).
    pub decision_header: Option<String>,
    /// A finished span was dropped: the export queue is full.
    pub span_dropped: bool,
}
