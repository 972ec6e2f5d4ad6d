//! [`Engine::route`]: a request's headers read in one pass, its
//! destination chosen, and the routing header, the hop headers and the
//! trace context written — each a phase of its own.

use super::engine::{Engine, Service};
use super::outcome::is_grpc;
use super::request::{HostFailure, InFlight, RouteHost, RESERVED_PREFIX};
use super::{Decision, Reason};
use crate::config::{AffinitySource, PluginConfig};
use crate::header_map::{self, HeaderMap};
use crate::trace::{self, hop_text::HopText, otlp};

impl Engine {
    /// Route one request from its headers: `None` when no service governs
    /// its `:authority` (the request passes untouched). Otherwise the
    /// routing header, hop headers and trace context have been written
    /// through `host`, and the returned [`InFlight`] goes to
    /// [`Engine::complete`] as the stream proceeds.
    pub fn route(&mut self, headers: &HeaderMap<'_>, host: &mut dyn RouteHost) -> Option<InFlight> {
        let service = self.service_for(headers.get(":authority")?)?;
        let (now, latest) = self.decision_time(service, headers, host)?;
        let read = RequestHeaders::read(&self.services[service], headers);
        let mut trust = Trust::default();
        let mut decision = self.choose(service, &read, now, &mut trust, host);
        self.write_routing_header(&mut decision, read.routing_header.is_some(), host);
        if read.reserved {
            let routing_header = &self.services[service].routing_header;
            strip_untrusted(headers, routing_header, &self.config, host, &mut trust);
        }
        self.write_hop_headers(&decision, headers, host);
        let span = self.write_trace_context(&decision, &read.trace, headers, host);
        self.note_time(now);
        let (started_ns, timed) = self.start(&decision, now, latest, host);
        self.count(&decision);
        Some(InFlight {
            epoch: self.epoch(),
            decision,
            started_ns,
            timed,
            responded: false,
            grpc: read.content_type.is_some_and(is_grpc),
            outcome_recorded: false,
            unrecorded: false,
            ended: false,
            status: None,
            span,
        })
    }

    /// When the decision is taken, and whether that is the worker's latest
    /// clock reading (at high rates a timed request's, a moment ago:
    /// `timing`) rather than a reading now. `None` when the clock fails:
    /// then nothing is decided.
    fn decision_time(
        &mut self,
        service: usize,
        headers: &HeaderMap<'_>,
        host: &mut dyn RouteHost,
    ) -> Option<(u64, Option<u64>)> {
        let latest =
            (self.services[service].sampling && self.clock_ns != 0).then_some(self.clock_ns);
        match latest.map_or_else(|| host.now_ns(), Ok) {
            Ok(now) => Some((now, latest)),
            Err(HostFailure) => {
                self.leave_to_mesh(service, headers, host);
                None
            }
        }
    }

    /// Decide nothing: the mesh routes, and a client's routing header must
    /// not route the request instead.
    fn leave_to_mesh(&mut self, service: usize, headers: &HeaderMap<'_>, host: &mut dyn RouteHost) {
        let routing_header = self.services[service].routing_header.as_str();
        if headers.get(routing_header).is_some() {
            let _ = host.set_request_header(routing_header, None, true);
        }
        self.count(&Decision {
            service,
            destination: None,
            reason: Reason::MeshDefault,
        });
    }

    /// The destination a trusted caller named, else the policy's choice.
    fn choose(
        &mut self,
        service: usize,
        read: &RequestHeaders<'_>,
        now: u64,
        trust: &mut Trust,
        host: &mut dyn RouteHost,
    ) -> Decision {
        let requested = read
            .routing_header
            .and_then(|name| self.destination_named(service, name));
        match requested {
            Some(d) if trust.check(&self.config, host) => Decision {
                service,
                destination: Some(d),
                reason: Reason::TrustedHeader,
            },
            _ => self.decide(service, read.session_key.filter(|v| !v.is_empty()), now),
        }
    }

    /// Write the routing header (`present`: a client sent one). If the
    /// write fails the mesh's default route serves the request, and a
    /// client's copy must not route it instead.
    fn write_routing_header(
        &self,
        decision: &mut Decision,
        present: bool,
        host: &mut dyn RouteHost,
    ) {
        let svc = &self.services[decision.service];
        let value = decision
            .destination
            .map(|d| svc.destinations[d].name.as_bytes());
        if host
            .set_request_header(&svc.routing_header, value, present)
            .is_ok()
        {
            return;
        }
        decision.destination = None;
        decision.reason = Reason::MeshDefault;
        if present {
            let _ = host.set_request_header(&svc.routing_header, None, true);
        }
    }

    /// The chosen destination's cluster.
    fn target(&self, decision: &Decision) -> Option<&str> {
        let svc = &self.services[decision.service];
        decision
            .destination
            .map(|d| svc.destinations[d].cluster.as_str())
    }

    /// `x-cluster-source`, `x-cluster-target` and `x-service-name`, when
    /// the filter writes them (`hopHeaders`).
    fn write_hop_headers(
        &self,
        decision: &Decision,
        headers: &HeaderMap<'_>,
        host: &mut dyn RouteHost,
    ) {
        if !self.config.hop_headers.written_by_filter() {
            return;
        }
        let target = self.target(decision);
        for (name, value) in [
            ("x-cluster-source", Some(self.local.cluster.as_bytes())),
            ("x-cluster-target", target.map(str::as_bytes)),
            (
                "x-service-name",
                Some(self.services[decision.service].name.as_bytes()),
            ),
        ] {
            let _ = host.set_request_header(name, value, headers.get(name).is_some());
        }
    }

    /// Propagate the trace context (and start our span, in span mode):
    /// the header writes, and the span's ids when it is recorded.
    fn write_trace_context(
        &mut self,
        decision: &Decision,
        input: &trace::TraceInput<'_>,
        headers: &HeaderMap<'_>,
        host: &mut dyn RouteHost,
    ) -> Option<otlp::SpanIds> {
        let buffer = std::mem::take(&mut self.trace_values);
        let hop = trace::HopInfo {
            source_cluster: &self.local.cluster,
            target_cluster: self.target(decision).unwrap_or(""),
            member_value: self
                .hop_text
                .get(decision.service, decision.destination)
                .map(HopText::member_value),
        };
        let output =
            trace::propagate_with(&self.config.tracing, input, &hop, host.trace_rng(), buffer);
        for op in output.ops() {
            let (name, value) = match op {
                trace::HeaderOp::Set { name, value } => (name, Some(value.as_bytes())),
                trace::HeaderOp::Remove { name } => (name, None),
            };
            // The header pass saw the trace headers: no scan for those.
            let present = input
                .has(name)
                .unwrap_or_else(|| headers.get(name).is_some());
            let _ = host.set_request_header(name, value, present);
        }
        let span = otlp::SpanIds::recorded(&output.context);
        self.trace_values = output.into_buffer();
        span
    }

    /// The request now counts as in flight at its destination; whether its
    /// latency is measured (`timing`), and from when.
    fn start(
        &mut self,
        decision: &Decision,
        now: u64,
        latest: Option<u64>,
        host: &mut dyn RouteHost,
    ) -> (u64, bool) {
        let Some(d) = decision.destination else {
            return (now, false);
        };
        self.begin(decision.service, d);
        let timed = self.services[decision.service].destinations[d]
            .timing
            .next_is_timed();
        if !(timed && latest.is_some()) {
            return (now, timed);
        }
        // The decision took the latest reading: a timed request reads its own.
        match host.now_ns() {
            Ok(t) => {
                self.note_time(t);
                (t, true)
            }
            Err(HostFailure) => (now, false),
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

/// Whether the downstream peer may steer its request, asked at most once
/// and only when needed: the peer's identity costs a host call, and only
/// matters when the request claims something.
#[derive(Default)]
struct Trust(Option<bool>);

impl Trust {
    fn check(&mut self, config: &PluginConfig, host: &mut dyn RouteHost) -> bool {
        *self
            .0
            .get_or_insert_with(|| source_is_trusted(config, host))
    }
}

/// What a request needs read from its headers, found in one pass: the
/// routing header a client sent, the session key (a header or a cookie:
/// the first `cookie` header that has it), trace context, gRPC or not,
/// and whether any other `x-tideway-*` header came in (rare: only then a
/// second pass strips them).
struct RequestHeaders<'h> {
    routing_header: Option<&'h [u8]>,
    session_key: Option<&'h [u8]>,
    trace: trace::TraceInput<'h>,
    content_type: Option<&'h [u8]>,
    reserved: bool,
}

impl<'h> RequestHeaders<'h> {
    fn read(svc: &Service, headers: &HeaderMap<'h>) -> Self {
        let routing_header = svc.routing_header.as_bytes();
        let (key_header, key_cookie) = match &svc.affinity {
            AffinitySource::None => (None, None),
            AffinitySource::Header { name } => (Some(name.as_bytes()), None),
            AffinitySource::Cookie { name } => (Some(&b"cookie"[..]), Some(name.as_str())),
        };
        let mut read = Self {
            routing_header: None,
            session_key: None,
            trace: trace::TraceInput::default(),
            content_type: None,
            reserved: false,
        };
        for (name, value) in headers.iter() {
            if name == routing_header {
                read.routing_header.get_or_insert(value);
                continue;
            }
            if read.session_key.is_none() && key_header == Some(name) {
                read.session_key = match key_cookie {
                    Some(cookie) => header_map::cookie(value, cookie),
                    None => Some(value),
                };
            }
            if read.trace.push_header(name, value) {
                continue;
            }
            if name.starts_with(RESERVED_PREFIX) {
                read.reserved = true;
            } else if read.content_type.is_none() && name == b"content-type" {
                read.content_type = Some(value);
            }
        }
        read
    }
}

/// Remove every `x-tideway-*` request header (but the routing header,
/// already written) unless the caller is trusted: none of them may steer a
/// request from outside the mesh, as `TrustConfig` promises.
fn strip_untrusted(
    headers: &HeaderMap<'_>,
    routing_header: &str,
    config: &PluginConfig,
    host: &mut dyn RouteHost,
    trust: &mut Trust,
) {
    let reserved =
        |name: &[u8]| name.starts_with(RESERVED_PREFIX) && name != routing_header.as_bytes();
    for (i, (name, _)) in headers.iter().enumerate() {
        // Removal takes every value: act on a name's first occurrence only.
        if !reserved(name) || headers.iter().take(i).any(|(n, _)| n == name) {
            continue;
        }
        if trust.check(config, host) {
            return;
        }
        if let Ok(name) = std::str::from_utf8(name) {
            let _ = host.set_request_header(name, None, true);
        }
    }
}
