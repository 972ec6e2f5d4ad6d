//! The proxy-wasm layer: speaks ABI 0.2.1 to Envoy and nothing else.
//!
//! Host calls are what a request pays for here, not the scoring: measured
//! with callgrind on Envoy 1.40 (`cargo xtask bench -- --only instructions`),
//! a plain host call costs about 2k instructions and any call that returns
//! bytes about 9k more, because Envoy must call back into the VM to allocate
//! them. So per request this layer makes: one call for the whole request
//! header map (read in place by `header_map`), one for the clock, one write
//! per header it sets (`add` when the header was absent, which spares Envoy
//! a lookup), and on the response one read of `:status` and one of the
//! clock. It does not call `clear_route_cache`: Envoy clears the route cache
//! itself on every request-header change (`Context::replaceHeaderMapValue`
//! and `addHeaderMapValue` in `source/extensions/common/wasm/context.cc`).
//! Counters are kept in the VM and added to Envoy's on the tick, and trace
//! ids come from a pool of host entropy refilled 4 KiB at a time. Shared
//! data is touched on the tick and after a failed request, never on a
//! successful one. Input never reaches a panic: header
//! values are bytes, and every host call's error is handled.
//!
//! The SDK's convenience getters (`get_http_request_header`) panic on
//! non-UTF-8 values, so this layer uses the byte-level hostcalls instead.

use crate::config::{AffinitySource, PluginConfig};
use crate::decision::{Decision, Engine, LocalIdentity, Outcome, Reason};
use crate::header_map::{self, HeaderMap};
use crate::health::HealthEvent;
use crate::metrics;
use crate::shared_stats::{CasMismatch, SharedStore};
use crate::trace;
use crate::trace::otlp::SpanRecord;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::new()) });
}}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, buf_len: usize) -> i32;
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: i32, data: *mut *mut u8, size: *mut usize) -> i32;
    fn proxy_add_header_map_value(
        map_type: i32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> i32;
}

/// Fill `buf` from the host's entropy (WASI `random_get`).
fn host_random(buf: &mut [u8]) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: the pointer and length describe a live, writable buffer.
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    if errno != 0 {
        // No entropy from the host: fall back to the clock so ids still
        // differ; never stop serving over it.
        let t = now_ns().to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= t[i % 8].wrapping_add(i as u8);
        }
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

/// Every request header in one host call; the buffer is ours to free.
fn request_header_buffer() -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to a buffer it allocated through
    // our `proxy_on_memory_allocate` (the SDK's allocator, a Vec with
    // capacity == size), so rebuilding that Vec transfers ownership back.
    unsafe {
        if proxy_get_header_map_pairs(MapType::HttpRequestHeaders as i32, &mut data, &mut size) != 0
        {
            return None;
        }
        if data.is_null() || size == 0 {
            return Some(Vec::new());
        }
        Some(Vec::from_raw_parts(data, size, size))
    }
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Metric ids, defined once per configuration, and the per-request counts
/// not yet added to Envoy's counters (flushed on the tick: one host call per
/// counter that moved, instead of one per request).
#[derive(Default)]
struct Metrics {
    /// [service][destination, then one slot for `none`][reason]
    requests: Vec<Vec<[u32; 6]>>,
    /// Same shape as `requests`: decisions counted since the last flush.
    pending: Vec<Vec<[u32; 6]>>,
    ejections: Vec<Vec<u32>>,
    generation: u32,
    hash: u32,
    rejected: u32,
    decision_errors: u32,
    spans_exported: u32,
    spans_dropped: u32,
}

fn define(kind: MetricType, name: &str) -> u32 {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => id,
        Err(status) => {
            log(
                LogLevel::Warn,
                &format!("tideway: could not define metric {name}: {status:?}"),
            );
            u32::MAX
        }
    }
}

fn increment(id: u32) {
    if id != u32::MAX {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

impl Metrics {
    fn define_fixed(&mut self) {
        self.generation = define(MetricType::Gauge, metrics::CONFIG_GENERATION);
        self.hash = define(MetricType::Gauge, metrics::CONFIG_HASH);
        self.rejected = define(MetricType::Counter, metrics::CONFIG_REJECTED);
        self.decision_errors = define(MetricType::Counter, metrics::DECISION_ERRORS);
        self.spans_exported = define(MetricType::Counter, metrics::SPANS_EXPORTED);
        self.spans_dropped = define(MetricType::Counter, metrics::SPANS_DROPPED);
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
                            .map(|r| define(MetricType::Counter, &metrics::requests(&s.name, d, r)))
                    })
                    .collect()
            })
            .collect();
        self.pending = self
            .requests
            .iter()
            .map(|per_dest| vec![[0; 6]; per_dest.len()])
            .collect();
        self.ejections = engine
            .services
            .iter()
            .map(|s| {
                s.destinations
                    .iter()
                    .map(|d| define(MetricType::Counter, &metrics::ejections(&s.name, &d.name)))
                    .collect()
            })
            .collect();
    }

    fn count_decision(&mut self, d: &Decision) {
        let Some(per_dest) = self.pending.get_mut(d.service) else {
            return;
        };
        let slot = d.destination.unwrap_or(per_dest.len().saturating_sub(1));
        if let Some(counts) = per_dest.get_mut(slot) {
            counts[d.reason.index()] = counts[d.reason.index()].saturating_add(1);
        }
    }

    /// Add the counts gathered since the last flush to Envoy's counters.
    fn flush(&mut self) {
        for (ids, pending) in self.requests.iter().zip(self.pending.iter_mut()) {
            for (ids, counts) in ids.iter().zip(pending.iter_mut()) {
                for (id, count) in ids.iter().zip(counts.iter_mut()) {
                    if *count > 0 && *id != u32::MAX {
                        let _ = hostcalls::increment_metric(*id, i64::from(*count));
                    }
                    *count = 0;
                }
            }
        }
    }
}

/// State shared by the root context and this worker's HTTP contexts (one
/// VM is single-threaded, so `Rc<RefCell>` is enough).
struct Worker {
    engine: Option<Engine>,
    /// Bumped on every accepted configuration; HTTP contexts started under
    /// an older one do not report into the new engine.
    generation: u64,
    metrics: Metrics,
    entropy: EntropyPool,
    /// This proxy's cluster or locality still has to be read from Envoy's
    /// node properties (possible only in a stream context).
    identity_pending: bool,
    spans: Vec<SpanRecord>,
    /// Re-admission probes awaiting their answer.
    probes: Vec<PendingProbe>,
}

/// A probe sent with `dispatch_http_call`, by its token.
struct PendingProbe {
    token: u32,
    generation: u64,
    service: usize,
    destination: usize,
}

struct Root {
    worker: Rc<RefCell<Worker>>,
}

impl Root {
    fn new() -> Self {
        Self {
            worker: Rc::new(RefCell::new(Worker {
                engine: None,
                generation: 0,
                metrics: Metrics::default(),
                entropy: EntropyPool::new(),
                identity_pending: false,
                spans: Vec::new(),
                probes: Vec::new(),
            })),
        }
    }

    /// This proxy's cluster and locality: config first, else Envoy's node
    /// properties as Istio sets them.
    fn local_identity(config: &PluginConfig) -> LocalIdentity {
        // Envoy 1.40 serves the node as `xds.node`; older releases as `node`.
        let property = |path: &[&str]| -> Option<String> {
            let read = |prefix: &[&str]| -> Option<String> {
                let full: Vec<&str> = prefix.iter().chain(path).copied().collect();
                match hostcalls::get_property(full) {
                    Ok(Some(bytes)) => String::from_utf8(bytes).ok().filter(|s| !s.is_empty()),
                    Ok(None) => None,
                    Err(status) => {
                        log(
                            LogLevel::Warn,
                            &format!(
                                "tideway: reading property node.{}: {status:?}",
                                path.join(".")
                            ),
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
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        // A reset or timeout arrives with no headers: no status, a failure.
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut worker = self.worker.borrow_mut();
        if let Some(i) = worker.probes.iter().position(|p| p.token == token) {
            let probe = worker.probes.swap_remove(i);
            probe_answered(&mut worker, &probe, &status);
            return;
        }
        if !status.starts_with(b"2") {
            log(
                LogLevel::Warn,
                &format!(
                    "tideway: span export failed: status {:?}",
                    String::from_utf8_lossy(&status)
                ),
            );
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.worker.borrow_mut().metrics.define_fixed();
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let config = match PluginConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log(LogLevel::Error, &format!("tideway: {e}"));
                increment(self.worker.borrow().metrics.rejected);
                // Envoy rejects the update; the previous engine (if any)
                // keeps serving.
                return false;
            }
        };
        // If Envoy does not expose the node to the root context yet, what
        // is missing is read again on the first request.
        let local = Self::local_identity(&config);
        let identity_pending =
            local.cluster.is_empty() || local.locality.is_none() || local.namespace.is_none();
        let tick = Duration::from_millis(config.scheduler.tick_ms);
        let mut seed = [0u8; 8];
        host_random(&mut seed);
        let mut worker = self.worker.borrow_mut();
        let engine = Engine::new(
            config,
            local,
            u64::from_le_bytes(seed),
            worker.engine.as_ref(),
        );
        // Counts gathered under the old configuration go to its counters.
        worker.metrics.flush();
        worker.metrics.define_for(&engine);
        worker.generation += 1;
        let _ = hostcalls::record_metric(worker.metrics.generation, worker.generation);
        let _ = hostcalls::record_metric(worker.metrics.hash, metrics::config_hash(&bytes));
        log(
            LogLevel::Info,
            &format!(
                "tideway: configuration accepted: {} service(s), local cluster {:?}, locality {:?}",
                engine.services.len(),
                engine.local.cluster,
                engine.local.locality
            ),
        );
        worker.engine = Some(engine);
        worker.identity_pending = identity_pending;
        drop(worker);
        let _ = hostcalls::set_tick_period(tick);
        true
    }

    fn on_tick(&mut self) {
        let now = now_ns();
        let mut worker = self.worker.borrow_mut();
        if let Some(engine) = worker.engine.as_mut() {
            for (key, error) in engine.sync_shared(&mut HostSharedData, now) {
                log(
                    LogLevel::Warn,
                    &format!("tideway: replaced shared record {key}: {error}"),
                );
            }
        }
        send_probes(&mut worker, now);
        worker.metrics.flush();
        flush_spans(&mut worker);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            worker: Rc::clone(&self.worker),
            routed: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Export finished spans as OTLP/HTTP JSON, `batchSize` spans a request.
fn flush_spans(worker: &mut Worker) {
    if worker.spans.is_empty() {
        return;
    }
    let Some(collector) = worker
        .engine
        .as_ref()
        .and_then(|e| e.config.tracing.collector.clone())
    else {
        worker.spans.clear();
        return;
    };
    let spans = std::mem::take(&mut worker.spans);
    let mut body = String::new();
    for batch in spans.chunks(collector.batch_size.max(1) as usize) {
        body.clear();
        if !trace::otlp::encode_batch(batch, &mut body) {
            continue;
        }
        let headers = vec![
            (":method", "POST"),
            (":path", collector.path.as_str()),
            (":authority", collector.authority()),
            ("content-type", "application/json"),
        ];
        let sent = hostcalls::dispatch_http_call(
            &collector.cluster,
            headers,
            Some(body.as_bytes()),
            vec![],
            Duration::from_millis(u64::from(collector.timeout_ms)),
        );
        let n = batch.len() as i64;
        match sent {
            Ok(_) => {
                let _ = hostcalls::increment_metric(worker.metrics.spans_exported, n);
            }
            Err(status) => {
                let _ = hostcalls::increment_metric(worker.metrics.spans_dropped, n);
                log(
                    LogLevel::Warn,
                    &format!(
                        "tideway: span export to cluster {:?} failed: {status:?}",
                        collector.cluster
                    ),
                );
            }
        }
    }
}

/// Send the re-admission probes that are due (see `Engine::probes_due`).
fn send_probes(worker: &mut Worker, now: u64) {
    let Worker {
        engine,
        probes,
        generation,
        ..
    } = worker;
    let Some(engine) = engine.as_mut() else {
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
        let headers = vec![
            (":method", "GET"),
            (":path", probe.path.as_str()),
            (":authority", probe.authority_for(config)),
            ("user-agent", "tideway-probe"),
        ];
        let sent = hostcalls::dispatch_http_call(
            &active.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(probe.timeout_ms),
        );
        match sent {
            Ok(token) => probes.push(PendingProbe {
                token,
                generation: *generation,
                service,
                destination,
            }),
            Err(status) => log(
                LogLevel::Warn,
                &format!(
                    "tideway: probe of {}/{} to cluster {:?} not sent ({status:?}); the next client request probes instead",
                    config.name, dest.name, active.cluster
                ),
            ),
        }
        engine.probe_dispatched(service, destination, sent.is_ok());
    }
}

/// A probe's answer: re-admit, or eject again and tell the other workers.
fn probe_answered(worker: &mut Worker, probe: &PendingProbe, status: &[u8]) {
    if probe.generation != worker.generation {
        return;
    }
    let Worker {
        engine, metrics, ..
    } = worker;
    let Some(engine) = engine.as_mut() else {
        return;
    };
    let now = now_ns();
    let passed = status.first() == Some(&b'2') && status.len() == 3;
    let event = engine.probe_result(probe.service, probe.destination, passed, now);
    if let HealthEvent::Ejected { until_ns } = event {
        report_ejection(
            engine,
            metrics,
            probe.service,
            probe.destination,
            until_ns,
            now,
        );
        if let Some((key, error)) =
            engine.publish(&mut HostSharedData, probe.service, probe.destination, now)
        {
            log(
                LogLevel::Warn,
                &format!("tideway: replaced shared record {key}: {error}"),
            );
        }
    }
}

/// Record a response's outcome here and share it with the other workers
/// (`Engine::share_outcome`: a failure at once, a success only to end a
/// failure streak); an ejection, by this worker's streak or the shared one,
/// is counted and logged.
fn record_outcome(
    engine: &mut Engine,
    metrics: &Metrics,
    service: usize,
    destination: usize,
    outcome: Outcome,
    latency_ns: u64,
    now: u64,
) {
    let local = engine.observe(service, destination, outcome, latency_ns, now);
    let (shared, bad) = engine.share_outcome(
        &mut HostSharedData,
        service,
        destination,
        outcome.is_success(),
        now,
    );
    if let Some((key, error)) = bad {
        log(
            LogLevel::Warn,
            &format!("tideway: replaced shared record {key}: {error}"),
        );
    }
    let until_ns = match (local, shared) {
        (HealthEvent::Ejected { until_ns }, _) | (_, HealthEvent::Ejected { until_ns }) => until_ns,
        _ => return,
    };
    report_ejection(engine, metrics, service, destination, until_ns, now);
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
        increment(*id);
    }
    let svc = &engine.services[service];
    log(
        LogLevel::Warn,
        &format!(
            "tideway: ejected {}/{} for {} ms",
            svc.name,
            svc.destinations[destination].name,
            until_ns.saturating_sub(now) / 1_000_000
        ),
    );
}

/// Shared data through the host, for the merge on the tick and after a failure.
struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(CasMismatch),
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("tideway: shared data write {key} failed: {status:?}"),
                );
                Ok(())
            }
        }
    }
}

/// What a routed request remembers until it ends.
struct Routed {
    generation: u64,
    decision: Decision,
    started_ns: u64,
    responded: bool,
    span: Option<SpanRecord>,
    status: Option<u16>,
}

struct Request {
    worker: Rc<RefCell<Worker>>,
    routed: Option<Routed>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let worker_rc = Rc::clone(&self.worker);
        let mut worker = worker_rc.borrow_mut();
        let generation = worker.generation;
        let Worker {
            engine,
            metrics,
            identity_pending,
            entropy,
            ..
        } = &mut *worker;
        let Some(engine) = engine.as_mut() else {
            return Action::Continue;
        };
        if engine.services.is_empty() {
            return Action::Continue;
        }
        if *identity_pending {
            let local = Root::local_identity(&engine.config);
            log(
                LogLevel::Info,
                &format!(
                    "tideway: local cluster {:?}, locality {:?}",
                    local.cluster, local.locality
                ),
            );
            engine.set_local(local);
            *identity_pending = false;
        }
        let Some(buffer) = request_header_buffer() else {
            increment(metrics.decision_errors);
            return Action::Continue;
        };
        let headers = HeaderMap::parse(&buffer);
        let Some(service) = headers
            .get(":authority")
            .and_then(|a| engine.service_for(a))
        else {
            return Action::Continue;
        };
        let now = now_ns();
        let decision = decide(engine, service, &headers, now);
        if let Some(d) = decision.destination {
            engine.begin(service, d);
        }
        metrics.count_decision(&decision);

        let svc = &engine.services[service];
        let target = decision
            .destination
            .map(|d| svc.destinations[d].cluster.as_str());
        let write = RequestHeaderWriter { received: &headers };
        write.set(
            &svc.routing_header,
            decision
                .destination
                .map(|d| svc.destinations[d].name.as_bytes()),
        );
        if engine.config.hop_headers {
            write.set("x-cluster-source", Some(engine.local.cluster.as_bytes()));
            write.set("x-cluster-target", target.map(str::as_bytes));
            write.set("x-service-name", Some(svc.name.as_bytes()));
        }

        let hop = trace::HopInfo {
            source_cluster: &engine.local.cluster,
            target_cluster: target.unwrap_or(""),
        };
        let span = apply_trace(
            &engine.config.tracing,
            &headers,
            &hop,
            &svc.name,
            now,
            &write,
            entropy,
        );
        self.routed = Some(Routed {
            generation,
            decision,
            started_ns: now,
            responded: false,
            span,
            status: None,
        });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(routed) = self.routed.as_mut() else {
            return Action::Continue;
        };
        routed.responded = true;
        let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| {
                std::str::from_utf8(&s)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
            })
            .unwrap_or(0);
        routed.status = u16::try_from(status).ok().filter(|s| *s > 0);
        let now = now_ns();
        let mut worker = self.worker.borrow_mut();
        if worker.generation != routed.generation {
            return Action::Continue;
        }
        let Worker {
            engine, metrics, ..
        } = &mut *worker;
        let Some(engine) = engine.as_mut() else {
            return Action::Continue;
        };
        let decision = routed.decision;
        if let Some(d) = decision.destination {
            let outcome = if status == 0 {
                Outcome::Reset
            } else {
                Outcome::Status(status)
            };
            let latency = now.saturating_sub(routed.started_ns);
            record_outcome(engine, metrics, decision.service, d, outcome, latency, now);
        }
        if engine.config.decision_header {
            let explanation = engine.explain(&decision);
            let _ = hostcalls::add_map_value(
                MapType::HttpResponseHeaders,
                "x-tideway-decision",
                &explanation,
            );
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(routed) = self.routed.take() else {
            return;
        };
        // The clock is read again only if something here needs it: a span
        // to finish, or a request that ended without a response.
        let now = if routed.span.is_some()
            || (!routed.responded && routed.decision.destination.is_some())
        {
            now_ns()
        } else {
            0
        };
        let mut worker = self.worker.borrow_mut();
        if worker.generation != routed.generation {
            return;
        }
        let Worker {
            engine,
            spans,
            metrics,
            ..
        } = &mut *worker;
        let Some(engine) = engine.as_mut() else {
            return;
        };
        let decision = routed.decision;
        if let Some(d) = decision.destination {
            if !routed.responded {
                let latency = now.saturating_sub(routed.started_ns);
                record_outcome(
                    engine,
                    metrics,
                    decision.service,
                    d,
                    Outcome::Reset,
                    latency,
                    now,
                );
            }
            engine.end(decision.service, d);
        }
        if let Some(mut span) = routed.span {
            span.finish(now, routed.status);
            let cap = engine
                .config
                .tracing
                .collector
                .as_ref()
                .map_or(0, |c| c.batch_size as usize);
            // Bound the backlog if the collector is slow or down.
            if spans.len() < cap.saturating_mul(16) {
                spans.push(span);
            } else {
                increment(metrics.spans_dropped);
            }
        }
    }
}

/// Writes request headers knowing which ones the request arrived with.
struct RequestHeaderWriter<'h, 'b> {
    received: &'h HeaderMap<'b>,
}

impl RequestHeaderWriter<'_, '_> {
    /// Set `name` to `value` (`None` removes it). A header the request did
    /// not carry is added, which spares Envoy the search a replace makes;
    /// one it did carry is replaced, so a client's copy never survives next
    /// to ours.
    fn set(&self, name: &str, value: Option<&[u8]>) {
        let present = self.received.get(name).is_some();
        let _ = match (value, present) {
            (Some(value), false) => add_request_header(name, value),
            (Some(value), true) => {
                hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value))
            }
            (None, true) => hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None),
            (None, false) => Ok(()),
        };
    }
}

/// `proxy_add_header_map_value` with a byte value (the SDK's wrapper takes
/// `&str` only).
fn add_request_header(name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live slices for the call.
    let status = unsafe {
        proxy_add_header_map_value(
            MapType::HttpRequestHeaders as i32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(Status::InternalFailure)
    }
}

/// Honour a trusted inbound routing header, else decide anew.
fn decide(engine: &mut Engine, service: usize, headers: &HeaderMap<'_>, now: u64) -> Decision {
    let svc = &engine.services[service];
    if let Some(requested) = headers.get(&svc.routing_header) {
        if let Some(d) = engine.destination_named(service, requested) {
            if source_is_trusted(&engine.config) {
                return Decision {
                    service,
                    destination: Some(d),
                    reason: Reason::TrustedHeader,
                };
            }
        }
    }
    let key = match &svc.affinity {
        AffinitySource::None => None,
        AffinitySource::Header { name } => headers.get(name).filter(|v| !v.is_empty()),
        AffinitySource::Cookie { name } => headers
            .iter()
            .filter(|(n, _)| *n == b"cookie")
            .find_map(|(_, v)| header_map::cookie(v, name))
            .filter(|v| !v.is_empty()),
    };
    engine.decide(service, key, now)
}

/// Whether the downstream peer may choose its destination. The peer's
/// mTLS identity is only read when a routing header actually arrived.
fn source_is_trusted(config: &PluginConfig) -> bool {
    if config.trust.all_sources {
        return true;
    }
    if config.trust.principals.is_empty() {
        return false;
    }
    let Ok(Some(san)) = hostcalls::get_property(vec!["connection", "uri_san_peer_certificate"])
    else {
        return false;
    };
    config
        .trust
        .principals
        .iter()
        .any(|p| p.as_bytes() == san.as_slice())
}

/// Apply trace-context propagation; returns the span to record in span mode.
fn apply_trace(
    config: &trace::TracingConfig,
    headers: &HeaderMap<'_>,
    hop: &trace::HopInfo<'_>,
    service_name: &str,
    now: u64,
    write: &RequestHeaderWriter<'_, '_>,
    entropy: &mut EntropyPool,
) -> Option<SpanRecord> {
    let input = trace::TraceInput::from_headers(headers.iter());
    let output = trace::propagate(config, &input, hop, entropy);
    for op in output.ops() {
        match op {
            trace::HeaderOp::Set { name, value } => write.set(name, Some(value.as_bytes())),
            trace::HeaderOp::Remove { name } => write.set(name, None),
        }
    }
    SpanRecord::start(&output.context, hop, "tideway route", service_name, now)
}
