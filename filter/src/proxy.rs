//! The proxy-wasm layer: speaks ABI 0.2.1 to Envoy and nothing else.
//!
//! It converts between the host and the core and decides nothing: a request's
//! headers go to `Engine::route` (with what it asks for: the clock, the
//! peer's identity, header writes, entropy), what the response shows goes to
//! `Engine::complete`, and what the core reports back (an ejection, a span,
//! a replaced shared record) becomes counters and log lines.
//!
//! No host-call failure can trap the VM: every call goes through `abi`,
//! whose wrappers return the host's status instead of panicking (the SDK's
//! would), and the callbacks come through `exports`, not the SDK's
//! dispatcher. A failed call means "decide nothing, let the mesh route":
//! the request passes with the mesh's default route, nothing is recorded
//! about its destination, and the failure is counted in
//! `tideway.host_call_errors`.
//!
//! Host calls are what a request pays for here, not the scoring: measured
//! with callgrind on Envoy 1.40 (`cargo xtask bench -- --only instructions`),
//! a plain host call costs about 2k instructions and any call that returns
//! bytes about 9k more, because Envoy must call back into the VM to allocate
//! them. So per request this layer makes: one call for the whole request
//! header map (read in place by `header_map`), one for the clock, one write
//! per header it sets (`add` when the header was absent, which spares Envoy
//! a lookup), and on the response one read of `:status` and one of the
//! clock — both clock reads only for the requests the core times, which at
//! high rates is one in several per destination (`decision::timing`). It
//! does not call `clear_route_cache`: Envoy clears the route cache
//! itself on every request-header change (`Context::replaceHeaderMapValue`
//! and `addHeaderMapValue` in `source/extensions/common/wasm/context.cc`).
//! Counters are kept in the VM and added to Envoy's on the tick, and trace
//! ids come from a pool of host entropy refilled 4 KiB at a time. Shared
//! data is touched on the tick and after a failed request, never on a
//! successful one.

mod abi;
mod exports;

use crate::config::PluginConfig;
use crate::decision::{
    Completion, Engine, HostFailure, InFlight, LocalIdentity, Reason, RouteHost, StreamEvent,
    StreamHost,
};
use crate::header_map::HeaderMap;
use crate::health::HealthEvent;
use crate::metrics;
use crate::shared_stats::{SharedStore, StoreError};
use crate::trace;
use crate::weights_channel::{self, RejectReason, WeightsChannel};
use abi::{Level, Map, MetricKind};

fn log(level: Level, message: &str) {
    abi::log(level, message);
}

/// The host's clock; 0 when it fails (only where a time is informational).
fn now_or_zero() -> u64 {
    abi::now_ns().unwrap_or(0)
}

/// Fill `buf` from the host's entropy (WASI `random_get`).
fn host_random(buf: &mut [u8]) {
    if buf.is_empty() || abi::random(buf) {
        return;
    }
    // No entropy from the host: fall back to the clock so ids still differ;
    // never stop serving over it.
    let t = now_or_zero().to_le_bytes();
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= t[i % 8].wrapping_add(i as u8);
    }
}

/// Host entropy drawn 4 KiB per `random_get` call: trace and span ids stay
/// unpredictable (fresh host randomness, never a seeded generator) while a
/// request no longer pays a host call for its 8 or 16 bytes.
struct EntropyPool {
    buf: [u8; 4096],
    used: usize,
}

impl EntropyPool {
    const fn new() -> Self {
        // Starts exhausted: the first draw fills it.
        Self {
            buf: [0; 4096],
            used: 4096,
        }
    }
}

impl trace::TraceRng for EntropyPool {
    fn fill(&mut self, out: &mut [u8]) {
        let mut written = 0;
        while written < out.len() {
            if self.used == self.buf.len() {
                host_random(&mut self.buf);
                self.used = 0;
            }
            let n = (out.len() - written).min(self.buf.len() - self.used);
            out[written..written + n].copy_from_slice(&self.buf[self.used..self.used + n]);
            // Bytes handed out are never handed out again.
            self.buf[self.used..self.used + n].fill(0);
            self.used += n;
            written += n;
        }
    }
}

/// Metric ids, defined once per configuration (`u32::MAX`: the host
/// refused to define it, so it is skipped).
#[derive(Default)]
struct Metrics {
    /// [service][destination, then one slot for `none`][reason]
    requests: Vec<Vec<[u32; 6]>>,
    ejections: Vec<Vec<u32>>,
    generation: u32,
    hash: u32,
    rejected: u32,
    decision_errors: u32,
    host_call_errors: u32,
    locality_known: u32,
    spans_exported: u32,
    spans_dropped: u32,
    weights_adopted: u32,
    weights_expired: u32,
    weights_poll_errors: u32,
    weights_version: u32,
    /// By `RejectReason::index`.
    weights_rejected: [u32; 4],
}

fn define(kind: MetricKind, name: &str) -> u32 {
    abi::define_metric(kind, name).unwrap_or_else(|e| {
        log(
            Level::Warn,
            &format!("tideway: could not define metric {name}: {e}"),
        );
        u32::MAX
    })
}

fn add(id: u32, n: i64) {
    if id != u32::MAX && n != 0 {
        let _ = abi::increment_metric(id, n);
    }
}

fn record(id: u32, value: u64) {
    if id != u32::MAX {
        let _ = abi::record_metric(id, value);
    }
}

impl Metrics {
    fn define_fixed(&mut self) {
        self.generation = define(MetricKind::Gauge, metrics::CONFIG_GENERATION);
        self.hash = define(MetricKind::Gauge, metrics::CONFIG_HASH);
        self.rejected = define(MetricKind::Counter, metrics::CONFIG_REJECTED);
        self.decision_errors = define(MetricKind::Counter, metrics::DECISION_ERRORS);
        self.host_call_errors = define(MetricKind::Counter, metrics::HOST_CALL_ERRORS);
        self.locality_known = define(MetricKind::Gauge, metrics::LOCALITY_KNOWN);
        self.spans_exported = define(MetricKind::Counter, metrics::SPANS_EXPORTED);
        self.spans_dropped = define(MetricKind::Counter, metrics::SPANS_DROPPED);
        self.weights_adopted = define(MetricKind::Counter, metrics::WEIGHTS_ADOPTED);
        self.weights_expired = define(MetricKind::Counter, metrics::WEIGHTS_EXPIRED);
        self.weights_poll_errors = define(MetricKind::Counter, metrics::WEIGHTS_POLL_ERRORS);
        self.weights_version = define(MetricKind::Gauge, metrics::WEIGHTS_VERSION);
        self.weights_rejected =
            RejectReason::ALL.map(|r| define(MetricKind::Counter, &metrics::weights_rejected(r)));
    }

    fn define_for(&mut self, engine: &Engine) {
        self.requests = engine
            .services
            .iter()
            .map(|s| {
                let dest_names = s
                    .destinations
                    .iter()
                    .map(|d| Some(d.name.as_str()))
                    .chain([None]);
                dest_names
                    .map(|d| {
                        Reason::ALL
                            .map(|r| define(MetricKind::Counter, &metrics::requests(&s.name, d, r)))
                    })
                    .collect()
            })
            .collect();
        self.ejections = engine
            .services
            .iter()
            .map(|s| {
                s.destinations
                    .iter()
                    .map(|d| define(MetricKind::Counter, &metrics::ejections(&s.name, &d.name)))
                    .collect()
            })
            .collect();
    }

    /// Add the engine's decision counts since the last flush to Envoy's
    /// counters.
    fn flush(&self, engine: &mut Engine) {
        engine.drain_decision_counts(|service, slot, reason, count| {
            if let Some(id) = self
                .requests
                .get(service)
                .and_then(|s| s.get(slot))
                .map(|ids| ids[reason.index()])
            {
                add(id, i64::from(count));
            }
        });
    }
}

/// One root context's state: its engine, metric ids, entropy and the
/// probes it sent. A VM is single-threaded; its contexts live in `exports`.
struct Worker {
    engine: Option<Engine>,
    metrics: Metrics,
    entropy: EntropyPool,
    /// This proxy's cluster or locality still has to be read from Envoy's
    /// node properties (possible only in a stream context).
    identity_pending: bool,
    /// Re-admission probes awaiting their answer.
    probes: Vec<PendingProbe>,
    /// The unknown-locality warning was logged (it is logged once).
    locality_warned: bool,
    /// The weights channel, when the config has a `weightsSource`.
    weights: Option<WeightsChannel>,
    /// This VM instance's lease-holder id (random at VM start).
    holder_id: u64,
}

/// A probe sent with `proxy_http_call`, by its token.
struct PendingProbe {
    token: u32,
    epoch: u64,
    service: usize,
    destination: usize,
}

/// This proxy's cluster and locality: config first, else Envoy's node
/// properties as Istio sets them.
fn local_identity(config: &PluginConfig) -> LocalIdentity {
    // Envoy 1.40 serves the node as `xds.node`; older releases as `node`.
    let property = |path: &[&str]| -> Option<String> {
        let read = |prefix: &[&str]| -> Option<String> {
            let full: Vec<&str> = prefix.iter().chain(path).copied().collect();
            match abi::property(&full) {
                Ok(Some(bytes)) => String::from_utf8(bytes).ok().filter(|s| !s.is_empty()),
                Ok(None) => None,
                Err(e) => {
                    log(
                        Level::Warn,
                        &format!("tideway: reading property node.{}: {e}", path.join(".")),
                    );
                    None
                }
            }
        };
        read(&["xds", "node"]).or_else(|| read(&["node"]))
    };
    let cluster = config
        .local
        .cluster
        .clone()
        .or_else(|| property(&["metadata", "CLUSTER_ID"]))
        .unwrap_or_default();
    let locality = config.local.locality.clone().or_else(|| {
        let region = property(&["locality", "region"])?;
        let mut out = region;
        if let Some(zone) = property(&["locality", "zone"]) {
            out.push('/');
            out.push_str(&zone);
            if let Some(sub) = property(&["locality", "sub_zone"]) {
                out.push('/');
                out.push_str(&sub);
            }
        }
        Some(out)
    });
    let namespace = config
        .local
        .namespace
        .clone()
        .or_else(|| property(&["metadata", "NAMESPACE"]));
    LocalIdentity {
        cluster,
        locality,
        namespace,
    }
}

impl Worker {
    fn new() -> Self {
        Self {
            engine: None,
            metrics: Metrics::default(),
            entropy: EntropyPool::new(),
            identity_pending: false,
            probes: Vec::new(),
            locality_warned: false,
            weights: None,
            holder_id: 0,
        }
    }

    fn on_vm_start(&mut self) -> bool {
        self.metrics.define_fixed();
        let mut id = [0u8; 8];
        host_random(&mut id);
        self.holder_id = u64::from_le_bytes(id);
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match abi::plugin_configuration(size) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Unreadable is not empty: keep serving the previous one.
                log(
                    Level::Error,
                    &format!("tideway: plugin configuration unreadable: {e}"),
                );
                return false;
            }
        };
        let config = match PluginConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log(Level::Error, &format!("tideway: {e}"));
                add(self.metrics.rejected, 1);
                // Envoy rejects the update; the previous engine (if any)
                // keeps serving.
                return false;
            }
        };
        // If Envoy does not expose the node to the root context yet, what
        // is missing is read again on the first request.
        let local = local_identity(&config);
        let identity_pending =
            local.cluster.is_empty() || local.locality.is_none() || local.namespace.is_none();
        let tick_ms = u32::try_from(config.scheduler.tick_ms).unwrap_or(u32::MAX);
        let mut seed = [0u8; 8];
        host_random(&mut seed);
        // What was gathered under the old configuration goes to its
        // counters and its collector, every span now.
        self.flush(None);
        let mut engine = Engine::new(
            config,
            local,
            u64::from_le_bytes(seed),
            self.engine.as_ref(),
        );
        self.configure_weights(&mut engine);
        self.metrics.define_for(&engine);
        record(self.metrics.generation, engine.epoch());
        record(self.metrics.hash, metrics::config_hash(&bytes));
        log(
            Level::Info,
            &format!(
                "tideway: configuration accepted: {} service(s), local cluster {:?}, locality {:?}",
                engine.services.len(),
                engine.local.cluster,
                engine.local.locality
            ),
        );
        let locality_known = engine.local.locality.is_some();
        self.engine = Some(engine);
        self.identity_pending = identity_pending;
        if !identity_pending || locality_known {
            Self::locality_resolved(&self.metrics, &mut self.locality_warned, locality_known);
        }
        if let Err(e) = abi::set_tick_period_ms(tick_ms) {
            // No tick: no cross-worker merge and no probes, but requests
            // are still routed on this worker's own view.
            log(Level::Error, &format!("tideway: no tick period: {e}"));
        }
        true
    }

    fn on_tick(&mut self) {
        let now = abi::now_ns();
        if let (Some(engine), Ok(now)) = (self.engine.as_mut(), now) {
            engine.retune_timing(now);
            for (key, error) in engine.sync_shared(&mut HostSharedData, now) {
                log(
                    Level::Warn,
                    &format!("tideway: replaced shared record {key}: {error}"),
                );
            }
            if let Some(channel) = self.weights.as_mut() {
                let step = channel.on_tick(engine, &mut HostSharedData, now);
                weights_step(channel, &self.metrics, step, now);
            }
            self.send_probes(now);
        }
        // Without the time every span batch goes, as before a
        // reconfiguration: none waits on a clock that cannot be read.
        self.flush(now.ok());
    }

    /// Start, keep or end the weights channel for a new engine: a kept
    /// channel checks its document against the new config.
    fn configure_weights(&mut self, engine: &mut Engine) {
        let Some(source) = engine.config.weights_source.clone() else {
            self.weights = None;
            return;
        };
        let now = now_or_zero();
        let channel = match self.weights.take() {
            Some(mut channel) => {
                channel.reconfigured(source);
                channel
            }
            None => {
                // Istio leaves vm_id empty, so the keys carry the plugin's name.
                let plugin = abi::property(&["plugin_name"])
                    .ok()
                    .flatten()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                WeightsChannel::new(source, &plugin, self.holder_id)
            }
        };
        // Adopt what the holder wrote now, not on the first tick. The poll
        // waits for the tick: at start-up Envoy may not have the cluster yet.
        let channel = self.weights.insert(channel);
        let mut step = channel.on_tick(engine, &mut HostSharedData, now);
        step.poll = None;
        weights_step(channel, &self.metrics, step, now);
    }

    /// Hand Envoy what was gathered: decision counts, finished spans (the
    /// batches due at `now`; all of them without a `now`), failed host
    /// calls.
    fn flush(&mut self, now: Option<u64>) {
        if let Some(engine) = self.engine.as_mut() {
            self.metrics.flush(engine);
            let batches = engine.take_span_batches(now);
            export_spans(engine, &batches, &self.metrics);
            // Envoy copied the bodies: their buffers can be refilled.
            engine.recycle_span_batches(batches);
        }
        add(self.metrics.host_call_errors, i64::from(abi::take_errors()));
    }

    /// Send the re-admission probes that are due (see `Engine::probes_due`).
    fn send_probes(&mut self, now: u64) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let due: Vec<(usize, usize)> = engine.probes_due(now).collect();
        for (service, destination) in due {
            let (Some(config), Some(dest)) = (
                engine.config.services.get(service),
                engine.services[service].destinations.get(destination),
            ) else {
                continue;
            };
            let (Some(probe), Some(active)) = (config.probe.as_ref(), dest.probe.as_ref()) else {
                continue;
            };
            let headers = [
                (":method", "GET"),
                (":path", probe.path.as_str()),
                (":authority", probe.authority_for(config)),
                ("user-agent", "tideway-probe"),
            ];
            let timeout = u32::try_from(probe.timeout_ms).unwrap_or(u32::MAX);
            let sent = abi::http_call(&active.cluster, &headers, &[], timeout);
            match sent {
                Ok(token) => self.probes.push(PendingProbe {
                    token,
                    epoch: engine.epoch(),
                    service,
                    destination,
                }),
                Err(e) => log(
                    Level::Warn,
                    &format!(
                        "tideway: probe of {}/{} to cluster {:?} not sent ({e}); the next client request probes instead",
                        config.name, dest.name, active.cluster
                    ),
                ),
            }
            engine.probe_dispatched(service, destination, sent.is_ok());
        }
    }

    /// An HTTP call's answer: a weights poll's, a probe's, or a span export's.
    fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        // A reset or timeout arrives with no headers: no status, a failure.
        let status = abi::header(Map::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .unwrap_or_default();
        if let (Some(channel), Some(engine)) = (self.weights.as_mut(), self.engine.as_mut()) {
            if channel.owns(token) {
                // `:status` is three digits.
                let code = match status[..] {
                    [a, b, c] if [a, b, c].iter().all(u8::is_ascii_digit) => Some(
                        u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
                    ),
                    _ => None,
                };
                let now = now_or_zero();
                let body = |max: u64| {
                    if body_size as u64 > max {
                        return Err(body_size as u64);
                    }
                    // Unreadable is reported as an empty (malformed) body.
                    Ok(abi::http_call_response_body(body_size).unwrap_or_default())
                };
                if let Some(step) =
                    channel.on_answer(token, code, body, engine, &mut HostSharedData, now)
                {
                    weights_step(channel, &self.metrics, step, now);
                }
                return;
            }
        }
        if let Some(i) = self.probes.iter().position(|p| p.token == token) {
            let probe = self.probes.swap_remove(i);
            self.probe_answered(&probe, &status);
            return;
        }
        if !status.starts_with(b"2") {
            log(
                Level::Warn,
                &format!(
                    "tideway: span export failed: status {:?}",
                    String::from_utf8_lossy(&status)
                ),
            );
        }
    }

    /// A probe's answer: re-admit, or eject again and tell the other workers.
    fn probe_answered(&mut self, probe: &PendingProbe, status: &[u8]) {
        let Some(engine) = self.engine.as_mut().filter(|e| e.epoch() == probe.epoch) else {
            return;
        };
        let Ok(now) = abi::now_ns() else {
            // When is unknown, so the answer cannot be placed: the probe is
            // resent on a later tick.
            engine.probe_dispatched(probe.service, probe.destination, false);
            return;
        };
        let passed = status.first() == Some(&b'2') && status.len() == 3;
        let event = engine.probe_result(probe.service, probe.destination, passed, now);
        if let HealthEvent::Ejected { until_ns } = event {
            report_ejection(
                engine,
                &self.metrics,
                probe.service,
                probe.destination,
                until_ns,
                now,
            );
            if let Some((key, error)) =
                engine.publish(&mut HostSharedData, probe.service, probe.destination, now)
            {
                log(
                    Level::Warn,
                    &format!("tideway: replaced shared record {key}: {error}"),
                );
            }
        }
    }

    /// This proxy's locality is settled: known, or not at all — then say
    /// so once, since locality scoring and locality-ordered failover are
    /// silently off without it.
    fn locality_resolved(metrics: &Metrics, warned: &mut bool, known: bool) {
        record(metrics.locality_known, u64::from(known));
        if !known && !*warned {
            *warned = true;
            log(
                Level::Warn,
                "tideway: this proxy's locality is unknown (no local.locality in the plugin \
                 configuration, and Envoy's node.locality is empty): locality scoring and \
                 locality-ordered failover are off. Istio sets node.locality from the pod \
                 label topology.istio.io/locality (region/zone/subzone) or the cloud's \
                 metadata; set one of those, or local.locality.",
            );
        }
    }

    /// A request's headers: route it (or leave it to the mesh).
    fn on_request_headers(&mut self) -> Option<InFlight> {
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
    fn on_response_headers(&mut self, flight: &mut InFlight) {
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
    fn on_response_trailers(&mut self, flight: &mut InFlight) {
        self.complete(flight, StreamEvent::ResponseTrailers);
    }

    /// A routed request's stream is over (its context is being deleted).
    fn on_stream_end(&mut self, flight: &mut InFlight) {
        self.complete(flight, StreamEvent::End);
    }

    /// Hand one stream event to the core and act on its report.
    fn complete(&mut self, flight: &mut InFlight, event: StreamEvent) -> Option<Completion> {
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

/// Act on a weights-channel step: log and count its events, send its poll.
fn weights_step(
    channel: &mut WeightsChannel,
    metrics: &Metrics,
    step: weights_channel::Step,
    now: u64,
) {
    for event in step.events {
        weights_event(metrics, &channel.source().cluster, event);
    }
    let Some(request) = step.poll else {
        return;
    };
    let source = channel.source();
    let headers = [
        (":method", "GET"),
        (":path", request.path.as_str()),
        (":authority", source.authority.as_str()),
        ("accept", "application/json"),
        (
            "if-none-match",
            request.if_none_match.as_deref().unwrap_or(""),
        ),
    ];
    // No version held: no If-None-Match.
    let headers = &headers[..if request.if_none_match.is_some() {
        5
    } else {
        4
    }];
    let timeout = u32::try_from(request.timeout_ms).unwrap_or(u32::MAX);
    match abi::http_call(&source.cluster, headers, &[], timeout) {
        Ok(token) => channel.sent(token, &request, now),
        Err(e) => {
            let event = channel.not_sent(&e.to_string(), now);
            weights_event(metrics, &channel.source().cluster, event);
        }
    }
}

/// Log and count one weights-channel event.
fn weights_event(metrics: &Metrics, cluster: &str, event: weights_channel::Event) {
    use weights_channel::{Event, LeaseChange};
    match event {
        Event::Adopted { version } => {
            add(metrics.weights_adopted, 1);
            record(metrics.weights_version, version);
            log(
                Level::Info,
                &format!("tideway: weights version {version} adopted"),
            );
        }
        Event::Expired { version } => {
            add(metrics.weights_expired, 1);
            record(metrics.weights_version, 0);
            log(
                Level::Warn,
                &format!(
                    "tideway: weights version {version} not confirmed by the weights API within \
                     weightsSource.ttlMs: the static weights of the plugin configuration apply"
                ),
            );
        }
        Event::Rejected(rejection) => {
            add(metrics.weights_rejected[rejection.reason.index()], 1);
            log(
                Level::Warn,
                &format!("tideway: {rejection}; the previous weights stay"),
            );
        }
        Event::PollFailed(why) => {
            add(metrics.weights_poll_errors, 1);
            log(
                Level::Warn,
                &format!("tideway: weights poll to cluster {cluster:?} failed: {why}"),
            );
        }
        Event::Lease(LeaseChange::Acquired { from_lapsed }) => log(
            Level::Info,
            &match from_lapsed {
                Some(_) => {
                    "tideway: weights lease taken over from a lapsed holder; this worker polls"
                        .to_string()
                }
                None => "tideway: weights lease taken; this worker polls".to_string(),
            },
        ),
        Event::Lease(LeaseChange::Lost) => log(
            Level::Info,
            "tideway: weights lease held by another worker; this worker stops polling",
        ),
        Event::Lease(LeaseChange::None) => {}
    }
}

/// Send span export requests (OTLP/HTTP JSON) to the collector.
fn export_spans(engine: &Engine, batches: &[trace::otlp::Batch], metrics: &Metrics) {
    let Some(collector) = engine.config.tracing.collector.as_ref() else {
        return;
    };
    for batch in batches {
        let headers = [
            (":method", "POST"),
            (":path", collector.path.as_str()),
            (":authority", collector.authority()),
            ("content-type", "application/json"),
        ];
        let sent = abi::http_call(
            &collector.cluster,
            &headers,
            &batch.body,
            collector.timeout_ms,
        );
        let n = i64::from(batch.spans);
        match sent {
            Ok(_) => add(metrics.spans_exported, n),
            Err(e) => {
                add(metrics.spans_dropped, n);
                log(
                    Level::Warn,
                    &format!(
                        "tideway: span export to cluster {:?} failed: {e}",
                        collector.cluster
                    ),
                );
            }
        }
    }
}

/// Act on what completing a request step reported.
fn report(engine: &Engine, metrics: &Metrics, done: &Completion, now: u64) {
    if let Some(e) = done.ejection {
        report_ejection(engine, metrics, e.service, e.destination, e.until_ns, now);
    }
    if let Some((key, error)) = &done.bad_record {
        log(
            Level::Warn,
            &format!("tideway: replaced shared record {key}: {error}"),
        );
    }
    if done.span_dropped {
        add(metrics.spans_dropped, 1);
    }
}

/// Count and log an ejection.
fn report_ejection(
    engine: &Engine,
    metrics: &Metrics,
    service: usize,
    destination: usize,
    until_ns: u64,
    now: u64,
) {
    if let Some(id) = metrics
        .ejections
        .get(service)
        .and_then(|e| e.get(destination))
    {
        add(*id, 1);
    }
    let Some(svc) = engine.services.get(service) else {
        return;
    };
    let name = svc
        .destinations
        .get(destination)
        .map_or("?", |d| d.name.as_str());
    log(
        Level::Warn,
        &format!(
            "tideway: ejected {}/{name} for {} ms",
            svc.name,
            until_ns.saturating_sub(now) / 1_000_000
        ),
    );
}

/// Shared data through the host, for the merge on the tick and after a failure.
struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        abi::shared_data(key).map_err(|_| StoreError::Unavailable)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match abi::set_shared_data(key, value, cas.unwrap_or(0)) {
            Ok(()) => Ok(()),
            Err(abi::HostError(abi::CAS_MISMATCH)) => Err(StoreError::CasMismatch),
            Err(e) => {
                log(
                    Level::Warn,
                    &format!("tideway: shared data write {key} failed: {e}"),
                );
                Err(StoreError::Unavailable)
            }
        }
    }
}

/// What the core asks of the host while routing a request.
struct RouteCalls<'w> {
    entropy: &'w mut EntropyPool,
}

impl RouteHost for RouteCalls<'_> {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        abi::now_ns().map_err(|_| HostFailure)
    }

    fn peer_principal(&mut self) -> Option<Vec<u8>> {
        abi::property(&["connection", "uri_san_peer_certificate"])
            .ok()
            .flatten()
    }

    fn set_request_header(
        &mut self,
        name: &str,
        value: Option<&[u8]>,
        present: bool,
    ) -> Result<(), HostFailure> {
        let map = Map::RequestHeaders;
        match (value, present) {
            (Some(value), false) => abi::add_header(map, name, value),
            (Some(value), true) => abi::replace_header(map, name, value),
            (None, true) => abi::remove_header(map, name),
            (None, false) => Ok(()),
        }
        .map_err(|_| HostFailure)
    }

    fn trace_rng(&mut self) -> &mut dyn trace::TraceRng {
        self.entropy
    }
}

/// What the core asks of the host while completing a request.
struct StreamCalls {
    shared: HostSharedData,
    /// The clock, read at most once per step.
    now: Option<u64>,
}

impl StreamHost for StreamCalls {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        if let Some(now) = self.now {
            return Ok(now);
        }
        let now = abi::now_ns().map_err(|_| HostFailure)?;
        self.now = Some(now);
        Ok(now)
    }

    fn response_header(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        abi::header(Map::ResponseHeaders, name).map_err(|_| HostFailure)
    }

    fn response_trailer(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        abi::header(Map::ResponseTrailers, name).map_err(|_| HostFailure)
    }

    fn response_flags(&mut self) -> Result<u64, HostFailure> {
        // An integer property: 8 bytes, little-endian.
        match abi::property(&["response", "flags"]) {
            Ok(Some(bytes)) => bytes
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .ok_or(HostFailure),
            Ok(None) => Ok(0),
            Err(_) => Err(HostFailure),
        }
    }

    fn shared_store(&mut self) -> &mut dyn SharedStore {
        &mut self.shared
    }
}
