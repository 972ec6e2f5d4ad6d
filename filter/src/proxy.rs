//! The proxy-wasm layer: speaks ABI 0.2.1 to Envoy and nothing else.
//!
//! It converts between the host and the core and decides nothing: a request's
//! headers go to `Engine::route` (with what it asks for: the clock, the
//! peer's identity, header writes, entropy), what the response shows goes to
//! `Engine::complete`, and what the core reports back (an ejection, a span,
//! a replaced shared record) becomes counters and log lines.
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

/// Metric ids, defined once per configuration, and the counts not yet added
/// to Envoy's counters (flushed on the tick: one host call per counter that
/// moved, instead of one per request).
#[derive(Default)]
struct Metrics {
    /// [service][destination, then one slot for `none`][reason]
    requests: Vec<Vec<[u32; 6]>>,
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

fn add(id: u32, n: i64) {
    if id != u32::MAX && n != 0 {
        let _ = hostcalls::increment_metric(id, n);
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

/// State shared by the root context and this worker's HTTP contexts (one
/// VM is single-threaded, so `Rc<RefCell>` is enough).
struct Worker {
    engine: Option<Engine>,
    metrics: Metrics,
    entropy: EntropyPool,
    /// This proxy's cluster or locality still has to be read from Envoy's
    /// node properties (possible only in a stream context).
    identity_pending: bool,
    /// Re-admission probes awaiting their answer.
    probes: Vec<PendingProbe>,
}

/// A probe sent with `dispatch_http_call`, by its token.
struct PendingProbe {
    token: u32,
    epoch: u64,
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
                metrics: Metrics::default(),
                entropy: EntropyPool::new(),
                identity_pending: false,
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
                add(self.worker.borrow().metrics.rejected, 1);
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
        // What was gathered under the old configuration goes to its
        // counters and its collector.
        flush(&mut worker);
        let engine = Engine::new(
            config,
            local,
            u64::from_le_bytes(seed),
            worker.engine.as_ref(),
        );
        worker.metrics.define_for(&engine);
        let _ = hostcalls::record_metric(worker.metrics.generation, engine.epoch());
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
        flush(&mut worker);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            worker: Rc::clone(&self.worker),
            flight: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Hand Envoy what the engine gathered: decision counts, finished spans.
fn flush(worker: &mut Worker) {
    let Worker {
        engine, metrics, ..
    } = worker;
    if let Some(engine) = engine.as_mut() {
        metrics.flush(engine);
        export_spans(engine, metrics);
    }
}

/// Export finished spans as OTLP/HTTP JSON, `batchSize` spans a request.
fn export_spans(engine: &mut Engine, metrics: &Metrics) {
    let spans = engine.take_spans();
    let Some(collector) = engine.config.tracing.collector.as_ref() else {
        return;
    };
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
            Ok(_) => add(metrics.spans_exported, n),
            Err(status) => {
                add(metrics.spans_dropped, n);
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
    let Worker { engine, probes, .. } = worker;
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
                epoch: engine.epoch(),
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
    let Worker {
        engine, metrics, ..
    } = worker;
    let Some(engine) = engine.as_mut().filter(|e| e.epoch() == probe.epoch) else {
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

/// Act on what completing a request step reported.
fn report(engine: &Engine, metrics: &Metrics, done: &Completion, now: u64) {
    if let Some(e) = done.ejection {
        report_ejection(engine, metrics, e.service, e.destination, e.until_ns, now);
    }
    if let Some((key, error)) = &done.bad_record {
        log(
            LogLevel::Warn,
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
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Ok(Some((value, cas))),
            Ok(_) => Ok(None),
            Err(_) => Err(StoreError::Unavailable),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("tideway: shared data write {key} failed: {status:?}"),
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
        Ok(now_ns())
    }

    fn peer_principal(&mut self) -> Option<Vec<u8>> {
        hostcalls::get_property(vec!["connection", "uri_san_peer_certificate"])
            .ok()
            .flatten()
    }

    fn set_request_header(
        &mut self,
        name: &str,
        value: Option<&[u8]>,
        present: bool,
    ) -> Result<(), HostFailure> {
        match (value, present) {
            (Some(value), false) => add_request_header(name, value),
            (value, true) => {
                hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value)
            }
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
    now: Option<u64>,
}

impl StreamCalls {
    fn new() -> Self {
        Self {
            shared: HostSharedData,
            now: None,
        }
    }
}

impl StreamHost for StreamCalls {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        Ok(*self.now.get_or_insert_with(now_ns))
    }

    fn response_header(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).map_err(|_| HostFailure)
    }

    fn shared_store(&mut self) -> &mut dyn SharedStore {
        &mut self.shared
    }
}

struct Request {
    worker: Rc<RefCell<Worker>>,
    flight: Option<InFlight>,
}

impl Request {
    /// Hand one stream event to the core and act on its report.
    fn complete(&mut self, event: StreamEvent) -> Option<Completion> {
        let flight = self.flight.as_mut()?;
        let mut worker = self.worker.borrow_mut();
        let Worker {
            engine, metrics, ..
        } = &mut *worker;
        let engine = engine.as_mut()?;
        let mut calls = StreamCalls::new();
        let done = engine.complete(flight, event, &mut calls);
        report(engine, metrics, &done, calls.now.unwrap_or(0));
        Some(done)
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut worker = self.worker.borrow_mut();
        let Worker {
            engine,
            metrics,
            identity_pending,
            entropy,
            ..
        } = &mut *worker;
        let Some(engine) = engine.as_mut().filter(|e| !e.services.is_empty()) else {
            return Action::Continue;
        };
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
            add(metrics.decision_errors, 1);
            return Action::Continue;
        };
        let headers = HeaderMap::parse(&buffer);
        self.flight = engine.route(&headers, &mut RouteCalls { entropy });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(header) = self
            .complete(StreamEvent::ResponseHeaders)
            .and_then(|done| done.decision_header)
        {
            let _ = hostcalls::add_map_value(
                MapType::HttpResponseHeaders,
                "x-tideway-decision",
                &header,
            );
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.complete(StreamEvent::End);
        self.flight = None;
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
