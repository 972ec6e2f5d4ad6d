//! One request's way through the core: [`Engine::route`] when its headers
//! arrive, [`Engine::complete`] as its response arrives and its stream ends.
//!
//! Why here and not in the host layer: whether an inbound routing header is
//! honoured, where the session key comes from, which headers are written
//! and what counts as the destination's failure are the filter's policy.
//! Kept here they are tested natively, and the host layer only reads and
//! writes what these calls ask for — through [`RouteHost`] and
//! [`StreamHost`], which the core calls only when it needs the answer (the
//! peer's identity only when a routing header arrived, the clock at the end
//! only when something needs it).

use super::engine::Engine;
use super::outcome::{is_grpc, upstream_failure, Outcome};
use super::sync::BadRecord;
use super::{Decision, Reason};
use crate::config::{AffinitySource, PluginConfig};
use crate::header_map::{self, HeaderMap};
use crate::health::HealthEvent;
use crate::shared_stats::SharedStore;
use crate::trace::{self, hop_text::HopText, otlp, TraceRng};

/// Request headers of the `x-tideway-` family. From a caller the policy
/// does not trust they are removed: none of them may steer the request.
pub const RESERVED_PREFIX: &[u8] = b"x-tideway-";

/// A host call failed. The core then decides nothing for the request (the
/// mesh's default route serves it) and records nothing about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFailure;

/// What [`Engine::route`] needs from the host.
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

/// What [`Engine::complete`] needs from the host.
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

/// A request routed by [`Engine::route`], until its stream ends.
#[derive(Debug)]
pub struct InFlight {
    /// The engine (configuration) that routed it.
    epoch: u64,
    pub decision: Decision,
    started_ns: u64,
    /// Its latency is measured (`timing`): `started_ns` is its own start.
    timed: bool,
    responded: bool,
    /// A gRPC call: its outcome is its `grpc-status`.
    grpc: bool,
    /// The destination's outcome is recorded (it counts once).
    outcome_recorded: bool,
    /// A host call failed on the way: nothing is recorded for it.
    unrecorded: bool,
    ended: bool,
    status: Option<u16>,
    /// The span recorded for it (span mode, sampled).
    span: Option<otlp::SpanIds>,
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

impl Engine {
    /// Route one request from its headers: `None` when no service governs
    /// its `:authority` (the request passes untouched). Otherwise the
    /// routing header, hop headers and trace context have been written
    /// through `host`, and the returned [`InFlight`] goes to
    /// [`Engine::complete`] as the stream proceeds.
    pub fn route(&mut self, headers: &HeaderMap<'_>, host: &mut dyn RouteHost) -> Option<InFlight> {
        let service = self.service_for(headers.get(":authority")?)?;
        // At high rates the decision takes the worker's latest clock
        // reading, a timed request's a moment ago (`timing`).
        let latest =
            (self.services[service].sampling && self.clock_ns != 0).then_some(self.clock_ns);
        let Ok(now) = latest.map_or_else(|| host.now_ns(), Ok) else {
            // Decide nothing: the mesh routes, and a client's routing header
            // must not route it instead.
            let routing_header = self.services[service].routing_header.as_str();
            if headers.get(routing_header).is_some() {
                let _ = host.set_request_header(routing_header, None, true);
            }
            self.count(&Decision {
                service,
                destination: None,
                reason: Reason::MeshDefault,
            });
            return None;
        };
        let svc = &self.services[service];
        // Lazily: the peer's identity costs a host call, and only matters
        // when the request claims something.
        let mut trusted: Option<bool> = None;
        let mut is_trusted = |host: &mut dyn RouteHost, config: &PluginConfig| {
            *trusted.get_or_insert_with(|| source_is_trusted(config, host))
        };
        // One pass over the headers for everything a request needs read: the
        // routing header a client sent, the session key (a header or a
        // cookie: the first `cookie` header that has it), trace
        // context, gRPC or not, and whether any other `x-tideway-*` header
        // came in (rare: only then a second pass strips them).
        let routing_header = svc.routing_header.as_bytes();
        let (key_header, key_cookie) = match &svc.affinity {
            AffinitySource::None => (None, None),
            AffinitySource::Header { name } => (Some(name.as_bytes()), None),
            AffinitySource::Cookie { name } => (Some(&b"cookie"[..]), Some(name.as_str())),
        };
        let mut inbound_routing_header: Option<&[u8]> = None;
        let mut key_value: Option<&[u8]> = None;
        let mut input = trace::TraceInput::default();
        let mut content_type: Option<&[u8]> = None;
        let mut reserved = false;
        for (name, value) in headers.iter() {
            if name == routing_header {
                inbound_routing_header.get_or_insert(value);
                continue;
            }
            if key_value.is_none() && key_header == Some(name) {
                key_value = match key_cookie {
                    Some(cookie) => header_map::cookie(value, cookie),
                    None => Some(value),
                };
            }
            if input.push_header(name, value) {
                continue;
            }
            if name.starts_with(RESERVED_PREFIX) {
                reserved = true;
            } else if content_type.is_none() && name == b"content-type" {
                content_type = Some(value);
            }
        }
        let requested =
            inbound_routing_header.and_then(|name| self.destination_named(service, name));
        let mut decision = match requested {
            Some(d) if is_trusted(host, &self.config) => Decision {
                service,
                destination: Some(d),
                reason: Reason::TrustedHeader,
            },
            _ => self.decide(service, key_value.filter(|v| !v.is_empty()), now),
        };

        let svc = &self.services[service];
        let present = |name: &str| headers.get(name).is_some();
        let routing_header_present = inbound_routing_header.is_some();
        let written = host.set_request_header(
            &svc.routing_header,
            decision
                .destination
                .map(|d| svc.destinations[d].name.as_bytes()),
            routing_header_present,
        );
        if written.is_err() {
            // Without our header the mesh's default route serves it; a
            // client's copy must not route it instead.
            decision.destination = None;
            decision.reason = Reason::MeshDefault;
            if routing_header_present {
                let _ = host.set_request_header(&svc.routing_header, None, true);
            }
        }
        let target = decision
            .destination
            .map(|d| svc.destinations[d].cluster.as_str());
        if reserved {
            strip_untrusted(
                headers,
                &svc.routing_header,
                &self.config,
                host,
                &mut is_trusted,
            );
        }
        if self.config.hop_headers.written_by_filter() {
            for (name, value) in [
                ("x-cluster-source", Some(self.local.cluster.as_bytes())),
                ("x-cluster-target", target.map(str::as_bytes)),
                ("x-service-name", Some(svc.name.as_bytes())),
            ] {
                let _ = host.set_request_header(name, value, present(name));
            }
        }
        let hop = trace::HopInfo {
            source_cluster: &self.local.cluster,
            target_cluster: target.unwrap_or(""),
            member_value: self
                .hop_text
                .get(service, decision.destination)
                .map(HopText::member_value),
        };
        let output = trace::propagate_with(
            &self.config.tracing,
            &input,
            &hop,
            host.trace_rng(),
            std::mem::take(&mut self.trace_values),
        );
        for op in output.ops() {
            let (name, value) = match op {
                trace::HeaderOp::Set { name, value } => (name, Some(value.as_bytes())),
                trace::HeaderOp::Remove { name } => (name, None),
            };
            // The header pass saw the trace headers: no scan for those.
            let present = input.has(name).unwrap_or_else(|| present(name));
            let _ = host.set_request_header(name, value, present);
        }
        let span = otlp::SpanIds::recorded(&output.context);
        self.trace_values = output.into_buffer();
        self.note_time(now);
        let mut started_ns = now;
        let mut timed = false;
        if let Some(d) = decision.destination {
            self.begin(service, d);
            timed = self.services[service].destinations[d]
                .timing
                .next_is_timed();
            if timed && latest.is_some() {
                match host.now_ns() {
                    Ok(t) => {
                        self.note_time(t);
                        started_ns = t;
                    }
                    Err(HostFailure) => timed = false,
                }
            }
        }
        self.count(&decision);
        Some(InFlight {
            epoch: self.epoch(),
            decision,
            started_ns,
            timed,
            responded: false,
            grpc: content_type.is_some_and(is_grpc),
            outcome_recorded: false,
            unrecorded: false,
            ended: false,
            status: None,
            span,
        })
    }

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
        let decision = flight.decision;
        match event {
            StreamEvent::ResponseHeaders => {
                if flight.responded || flight.ended {
                    return done;
                }
                flight.responded = true;
                let Ok(status) = host.response_header(":status") else {
                    // Unread: nothing is known about the destination.
                    flight.unrecorded = true;
                    return done;
                };
                let status = status.and_then(|s| parse_status(&s));
                flight.status = status.and_then(|s| u16::try_from(s).ok());
                // A gRPC call that answers 200 tells its outcome in
                // `grpc-status`: here for a trailers-only response, else in
                // the trailers. Either way the latency sample is the time to
                // these headers, not the stream's lifetime.
                let outcome = match status {
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
                };
                // A timed request reads the clock for its sample; so does a
                // failure (its latency weighs on the estimate), from a start
                // that is then the decision's reading (`timing`).
                let failed = outcome.is_some_and(|o| !o.is_success(self.grpc_failures));
                let read =
                    (flight.timed || failed) && decision.destination.is_some() && status.is_some();
                let now = if read {
                    host.now_ns().ok()
                } else {
                    Some(self.clock_ns)
                };
                if let (Some(d), Some(_), Some(now)) = (decision.destination, status, now) {
                    self.note_time(now);
                    let latency = read.then(|| now.saturating_sub(flight.started_ns));
                    match outcome {
                        Some(outcome) => {
                            flight.outcome_recorded = true;
                            self.record(
                                decision.service,
                                d,
                                outcome,
                                latency,
                                now,
                                host,
                                &mut done,
                            );
                        }
                        None if !flight.unrecorded => {
                            if let Some(latency) = latency {
                                self.observe_latency(decision.service, d, latency, now);
                            }
                        }
                        None => {}
                    }
                }
                if self.config.decision_header {
                    done.decision_header = Some(self.explain(&decision));
                }
            }
            StreamEvent::ResponseTrailers => {
                if !flight.grpc || flight.outcome_recorded || flight.unrecorded || flight.ended {
                    return done;
                }
                let Some(d) = decision.destination else {
                    return done;
                };
                let code = match host.response_trailer("grpc-status") {
                    Ok(code) => code.as_deref().and_then(parse_grpc_status),
                    Err(_) => {
                        flight.unrecorded = true;
                        return done;
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
                        &mut done,
                    );
                }
            }
            StreamEvent::End => {
                if flight.ended {
                    return done;
                }
                flight.ended = true;
                // No outcome yet (no response, or a gRPC stream that ended
                // without `grpc-status`): Envoy's verdict says whose doing
                // that was. The clock is read again only if something here
                // needs it.
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
                        self.record(decision.service, d, outcome, None, now, host, &mut done);
                    }
                    self.end(decision.service, d);
                }
                if let Some(ids) = flight.span.take() {
                    let end = now.unwrap_or(0);
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
                    done.span_dropped = !self.spans.push(&span, batch_size, end);
                }
            }
        }
        done
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

/// Whether the downstream peer may steer its request: every source is
/// trusted, or its mTLS identity is one of the trusted principals.
fn source_is_trusted(config: &PluginConfig, host: &mut dyn RouteHost) -> bool {
    if config.trust.all_sources {
        return true;
    }
    if config.trust.principals.is_empty() {
        return false;
    }
    let Some(san) = host.peer_principal() else {
        return false;
    };
    config
        .trust
        .principals
        .iter()
        .any(|p| p.as_bytes() == san.as_slice())
}

/// Remove every `x-tideway-*` request header (but the routing header,
/// already written) unless the caller is trusted: none of them may steer a
/// request from outside the mesh, as `TrustConfig` promises.
fn strip_untrusted(
    headers: &HeaderMap<'_>,
    routing_header: &str,
    config: &PluginConfig,
    host: &mut dyn RouteHost,
    is_trusted: &mut dyn FnMut(&mut dyn RouteHost, &PluginConfig) -> bool,
) {
    let reserved =
        |name: &[u8]| name.starts_with(RESERVED_PREFIX) && name != routing_header.as_bytes();
    for (i, (name, _)) in headers.iter().enumerate() {
        // Removal takes every value: act on a name's first occurrence only.
        if !reserved(name) || headers.iter().take(i).any(|(n, _)| n == name) {
            continue;
        }
        if is_trusted(host, config) {
            return;
        }
        if let Ok(name) = std::str::from_utf8(name) {
            let _ = host.set_request_header(name, None, true);
        }
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
