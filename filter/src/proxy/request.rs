//! The per-request callbacks: a request's headers are routed, its
//! response and the end of its stream completed, and what the core
//! reports acted on.

use super::abi::{self, Map};
use super::host::{local_identity, HostSharedData, RouteCalls, StreamCalls};
use super::metrics::{add, report};
use super::worker::Worker;
use super::{log, Level};
use crate::decision::{Completion, InFlight, StreamEvent};
use crate::header_map::HeaderMap;

impl Worker {
    pub(super) fn on_request_headers(&mut self) -> Option<InFlight> {
        let engine = self.engine.as_mut().filter(|e| !e.services.is_empty())?;
        if self.identity_pending {
            let local = local_identity(&engine.config);
            log(
                Level::Info,
                &format!(
                    "tideway: local cluster {:?}, locality {:?}",
                    local.cluster, local.locality
                ),
            );
            let locality_known = local.locality.is_some();
            engine.set_local(local);
            self.identity_pending = false;
            Self::locality_resolved(&self.metrics, &mut self.locality_warned, locality_known);
        }
        let Ok(buffer) = abi::header_map_pairs(Map::RequestHeaders) else {
            add(self.metrics.decision_errors, 1);
            return None;
        };
        let headers = HeaderMap::parse(&buffer);
        engine.route(
            &headers,
            &mut RouteCalls {
                entropy: &mut self.entropy,
            },
        )
    }

    /// A routed request's response headers.
    pub(super) fn on_response_headers(&mut self, flight: &mut InFlight) {
        let Some(done) = self.complete(flight, StreamEvent::ResponseHeaders) else {
            return;
        };
        if let Some(header) = done.decision_header {
            let _ = abi::add_header(
                Map::ResponseHeaders,
                "x-tideway-decision",
                header.as_bytes(),
            );
        }
    }

    /// A routed request's response trailers (a gRPC call's status).
    pub(super) fn on_response_trailers(&mut self, flight: &mut InFlight) {
        self.complete(flight, StreamEvent::ResponseTrailers);
    }

    /// A routed request's stream is over (its context is being deleted).
    pub(super) fn on_stream_end(&mut self, flight: &mut InFlight) {
        self.complete(flight, StreamEvent::End);
    }

    /// Hand one stream event to the core and act on its report.
    pub(super) fn complete(
        &mut self,
        flight: &mut InFlight,
        event: StreamEvent,
    ) -> Option<Completion> {
        let engine = self.engine.as_mut()?;
        let mut calls = StreamCalls {
            shared: HostSharedData,
            now: None,
        };
        let done = engine.complete(flight, event, &mut calls);
        report(engine, &self.metrics, &done, calls.now.unwrap_or(0));
        Some(done)
    }
}
