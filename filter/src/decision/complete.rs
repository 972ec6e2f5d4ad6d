//! [`Engine::complete`]: what the host saw of a routed request's stream
//! — its response headers, its trailers, its end — becomes the
//! destination's outcome, latency sample and in-flight count, and the
//! request's span.

use super::engine::Engine;
use super::outcome::{upstream_failure, Outcome};
use super::request::{Completion, Ejection, InFlight, StreamEvent, StreamHost};
use crate::health::HealthEvent;
use crate::trace::{hop_text::HopText, otlp};

impl Engine {
    /// Record what the host saw of a routed request: its response headers
    /// (the outcome and the latency sample), then the end of its stream
    /// (in-flight accounting, the span; no response at all is an outcome
    /// too). Each step counts once; a request routed under an earlier
    /// configuration touches nothing.
    pub fn complete(
        &mut self,
        flight: &mut InFlight,
        event: StreamEvent,
        host: &mut dyn StreamHost,
    ) -> Completion {
        let mut done = Completion::default();
        if flight.epoch != self.epoch() {
            return done;
        }
        match event {
            StreamEvent::ResponseHeaders => self.response_headers(flight, host, &mut done),
            StreamEvent::ResponseTrailers => self.response_trailers(flight, host, &mut done),
            StreamEvent::End => self.stream_end(flight, host, &mut done),
        }
        done
    }

    /// The response headers: the outcome they tell and the latency sample.
    fn response_headers(
        &mut self,
        flight: &mut InFlight,
        host: &mut dyn StreamHost,
        done: &mut Completion,
    ) {
        if flight.responded || flight.ended {
            return;
        }
        flight.responded = true;
        let Ok(status) = host.response_header(":status") else {
            // Unread: nothing is known about the destination.
            flight.unrecorded = true;
            return;
        };
        let status = status.and_then(|s| parse_status(&s));
        flight.status = status.and_then(|s| u16::try_from(s).ok());
        let outcome = response_outcome(flight, status, host);
        self.record_response(flight, status, outcome, host, done);
        if self.config.decision_header {
            done.decision_header = Some(self.explain(&flight.decision));
        }
    }

    /// Record what the response headers told: the outcome, if they tell
    /// one, and the latency sample. A timed request reads the clock for
    /// its sample; so does a failure (its latency weighs on the estimate),
    /// from a start that is then the decision's reading (`timing`).
    fn record_response(
        &mut self,
        flight: &mut InFlight,
        status: Option<u32>,
        outcome: Option<Outcome>,
        host: &mut dyn StreamHost,
        done: &mut Completion,
    ) {
        let decision = flight.decision;
        let failed = outcome.is_some_and(|o| !o.is_success(self.grpc_failures));
        let read = (flight.timed || failed) && decision.destination.is_some() && status.is_some();
        let now = if read {
            host.now_ns().ok()
        } else {
            Some(self.clock_ns)
        };
        let (Some(d), Some(_), Some(now)) = (decision.destination, status, now) else {
            return;
        };
        self.note_time(now);
        let latency = read.then(|| now.saturating_sub(flight.started_ns));
        match outcome {
            Some(outcome) => {
                flight.outcome_recorded = true;
                self.record(decision.service, d, outcome, latency, now, host, done);
            }
            None if !flight.unrecorded => {
                if let Some(latency) = latency {
                    self.observe_latency(decision.service, d, latency, now);
                }
            }
            None => {}
        }
    }

    /// The response trailers: a gRPC call's outcome, when its headers did
    /// not tell it.
    fn response_trailers(
        &mut self,
        flight: &mut InFlight,
        host: &mut dyn StreamHost,
        done: &mut Completion,
    ) {
        if !flight.grpc || flight.outcome_recorded || flight.unrecorded || flight.ended {
            return;
        }
        let decision = flight.decision;
        let Some(d) = decision.destination else {
            return;
        };
        let code = match host.response_trailer("grpc-status") {
            Ok(code) => code.as_deref().and_then(parse_grpc_status),
            Err(_) => {
                flight.unrecorded = true;
                return;
            }
        };
        if let (Some(code), Ok(now)) = (code, host.now_ns()) {
            flight.outcome_recorded = true;
            self.record(
                decision.service,
                d,
                Outcome::Grpc(code),
                None,
                now,
                host,
                done,
            );
        }
    }

    /// The end of the stream: in-flight accounting, the outcome of a
    /// request that got none, and the span.
    fn stream_end(
        &mut self,
        flight: &mut InFlight,
        host: &mut dyn StreamHost,
        done: &mut Completion,
    ) {
        if flight.ended {
            return;
        }
        flight.ended = true;
        let decision = flight.decision;
        // No outcome yet (no response, or a gRPC stream that ended without
        // `grpc-status`): Envoy's verdict says whose doing that was. The
        // clock is read again only if something here needs it.
        let undecided = !flight.outcome_recorded
            && !flight.unrecorded
            && (!flight.responded || flight.grpc)
            && decision.destination.is_some();
        let now = if flight.span.is_some() || undecided {
            host.now_ns().ok()
        } else {
            None
        };
        if let Some(d) = decision.destination {
            // One property read, only on this path.
            let verdict = match (undecided, now) {
                (true, Some(_)) => host.response_flags().ok().and_then(upstream_failure),
                _ => None,
            };
            if let (Some(outcome), Some(now)) = (verdict, now) {
                // No latency sample: nothing answered.
                self.record(decision.service, d, outcome, None, now, host, done);
            }
            self.end(decision.service, d);
        }
        if let Some(ids) = flight.span.take() {
            done.span_dropped = !self.finish_span(flight, ids, now.unwrap_or(0));
        }
    }

    /// Encode a request's span into the export queue; `false` when the
    /// queue is full and the span is dropped.
    fn finish_span(&mut self, flight: &InFlight, ids: otlp::SpanIds, end: u64) -> bool {
        let decision = flight.decision;
        // A span-mode engine has every hop's text.
        let attributes = self
            .hop_text
            .get(decision.service, decision.destination)
            .map_or(&[][..], HopText::span_attributes);
        let span = otlp::FinishedSpan {
            ids,
            start_unix_nanos: flight.started_ns,
            end_unix_nanos: end,
            hop_attributes: attributes,
            http_status_code: flight.status,
        };
        let batch_size = self
            .config
            .tracing
            .collector
            .as_ref()
            .map_or(0, |c| c.batch_size);
        self.spans.push(&span, batch_size, end)
    }

    /// Record one outcome here, then share it with the other workers
    /// (`share_outcome`: a failure at once, a success only to end a failure
    /// streak). An ejection, by this worker's streak or the shared one, is
    /// reported in `done`.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        service: usize,
        destination: usize,
        outcome: Outcome,
        latency_ns: Option<u64>,
        now: u64,
        host: &mut dyn StreamHost,
        done: &mut Completion,
    ) {
        let local = self.observe(service, destination, outcome, latency_ns, now);
        let success = outcome.is_success(self.grpc_failures);
        let (shared, bad) =
            self.share_outcome(host.shared_store(), service, destination, success, now);
        done.bad_record = bad;
        if let (HealthEvent::Ejected { until_ns }, _) | (_, HealthEvent::Ejected { until_ns }) =
            (local, shared)
        {
            done.ejection = Some(Ejection {
                service,
                destination,
                until_ns,
            });
        }
    }

    /// A request was sent to `destination`: it now counts as in flight.
    pub(super) fn begin(&mut self, service: usize, destination: usize) {
        if let Some(d) = self.dest_mut(service, destination) {
            d.in_flight = d.in_flight.saturating_add(1);
        }
    }

    /// The request is over: it no longer counts as in flight.
    pub(super) fn end(&mut self, service: usize, destination: usize) {
        if let Some(d) = self.dest_mut(service, destination) {
            d.in_flight = d.in_flight.saturating_sub(1);
        }
    }

    /// This worker's view of one outcome: the latency sample (if it has
    /// one) and health.
    pub(super) fn observe(
        &mut self,
        service: usize,
        destination: usize,
        outcome: Outcome,
        latency_ns: Option<u64>,
        now_ns: u64,
    ) -> HealthEvent {
        let success = outcome.is_success(self.grpc_failures);
        let scheduler = &self.config.scheduler;
        let Some(d) = self
            .services
            .get_mut(service)
            .and_then(|s| s.destinations.get_mut(destination))
        else {
            return HealthEvent::None;
        };
        if let Some(latency_ns) = latency_ns {
            if success {
                d.latency.observe(latency_ns as f64, now_ns);
                d.floor.observe(latency_ns as f64, now_ns);
            } else {
                d.latency.observe_failure(latency_ns as f64, now_ns);
            }
        }
        d.health.record(success, now_ns, scheduler)
    }

    /// A latency sample alone: a gRPC call's response headers, its outcome
    /// still to come in the trailers.
    fn observe_latency(
        &mut self,
        service: usize,
        destination: usize,
        latency_ns: u64,
        now_ns: u64,
    ) {
        if let Some(d) = self.dest_mut(service, destination) {
            d.latency.observe(latency_ns as f64, now_ns);
            d.floor.observe(latency_ns as f64, now_ns);
        }
    }
}

/// The outcome the response headers tell. A gRPC call that answers 200
/// tells its outcome in `grpc-status`: here for a trailers-only response,
/// else in the trailers (`None` until then). Either way the latency sample
/// is the time to these headers, not the stream's lifetime.
fn response_outcome(
    flight: &mut InFlight,
    status: Option<u32>,
    host: &mut dyn StreamHost,
) -> Option<Outcome> {
    match status {
        Some(200) if flight.grpc => match host.response_header("grpc-status") {
            Ok(grpc) => grpc
                .as_deref()
                .and_then(parse_grpc_status)
                .map(Outcome::Grpc),
            Err(_) => {
                flight.unrecorded = true;
                None
            }
        },
        other => other.map(Outcome::Status),
    }
}

/// `grpc-status` as a number (`None`: not a number).
fn parse_grpc_status(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.trim().parse::<u32>().ok()
}

/// `:status` as a number (`None`: absent, not a number, or 0).
fn parse_status(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes)
        .ok()?
        .parse::<u32>()
        .ok()
        .filter(|s| *s > 0)
}
