//! Per-VM store data (the `T` of `wasmtime::Store<T>`) and per-stream state.
//!
//! A worker VM owns its contexts' state; everything shared between workers
//! (shared data, queues, metrics, logs, the clock, HTTP-call scripts) lives
//! in [`HostShared`] behind `Arc<Mutex<_>>`, like Envoy's process-wide
//! singletons.

use super::abi::{LogLevel, Status};
use super::clock::FakeClock;
use super::http_call::{DeliveredResponse, HttpCall, HttpRule, PendingCall};
use super::logs::{LogRecord, LogSource};
use super::metrics::{MetricIds, Metrics};
use super::pairs::HeaderMap;
use super::properties::{NodeInfo, PropValue};
use super::shared_data::{SharedData, SharedQueues};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime::TypedFunc;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Locks a mutex, ignoring poisoning: a panicking test thread must not turn
/// every later assertion into a poison error.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A foreign function call the module made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignCall {
    pub worker: usize,
    pub context_id: u32,
    pub name: String,
    pub args: Vec<u8>,
}

/// A `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub grpc_status: i32,
}

/// State shared by all the workers of one host ("the Envoy process").
#[derive(Debug)]
pub struct HostShared {
    pub clock: FakeClock,
    pub shared_data: Mutex<SharedData>,
    pub queues: Mutex<SharedQueues>,
    pub metrics: Mutex<Metrics>,
    pub logs: Mutex<Vec<LogRecord>>,
    pub foreign_calls: Mutex<Vec<ForeignCall>>,
    pub http_calls: Mutex<Vec<HttpCall>>,
    pub(crate) pending_calls: Mutex<Vec<PendingCall>>,
    pub http_rules: Mutex<Vec<HttpRule>>,
    /// Clusters `proxy_http_call` accepts; `None` accepts any.
    pub known_clusters: Mutex<Option<BTreeSet<String>>>,
    /// Foreign functions the host knows (others are `NotFound`, as in Envoy).
    pub foreign_functions: Mutex<BTreeSet<String>>,
    /// `proxy_get_log_level`.
    pub log_level: Mutex<LogLevel>,
    /// Echo every captured log line to stderr as it happens.
    pub echo_logs: bool,
    /// Imports a test made fail: each answers its status instead of doing
    /// its work (`Host::fail_call`).
    pub failing_calls: Mutex<BTreeMap<String, Status>>,
    /// `proxy_get_current_time_nanoseconds` calls answered, every worker's.
    pub clock_reads: std::sync::atomic::AtomicU64,
}

impl HostShared {
    pub fn new(clock: FakeClock, echo_logs: bool) -> Self {
        Self {
            clock,
            shared_data: Mutex::new(SharedData::default()),
            queues: Mutex::new(SharedQueues::default()),
            metrics: Mutex::new(Metrics::default()),
            logs: Mutex::new(Vec::new()),
            foreign_calls: Mutex::new(Vec::new()),
            http_calls: Mutex::new(Vec::new()),
            pending_calls: Mutex::new(Vec::new()),
            http_rules: Mutex::new(Vec::new()),
            known_clusters: Mutex::new(None),
            foreign_functions: Mutex::new(
                ["clear_route_cache"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            log_level: Mutex::new(LogLevel::Trace),
            echo_logs,
            failing_calls: Mutex::new(BTreeMap::new()),
            clock_reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn log(&self, worker: usize, level: LogLevel, source: LogSource, message: String) {
        let record = LogRecord {
            worker,
            level,
            source,
            message,
        };
        if self.echo_logs {
            eprintln!("{record}");
        }
        lock(&self.logs).push(record);
    }
}

/// Which phase of an HTTP stream is running: it decides which header maps
/// the module may touch (Envoy drops its pointer to the request headers once
/// the request headers callback continued, and so on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Done,
}

/// Per-request attributes behind the `request`, `source`, `destination`,
/// `connection`, `upstream` properties. Derived from headers when not set.
#[derive(Debug, Clone, Default)]
pub struct StreamAttributes {
    /// Extra/overriding properties by dotted path (e.g. `source.address`).
    pub extra: BTreeMap<String, PropValue>,
}

/// One HTTP context.
#[derive(Debug, Clone)]
pub struct StreamState {
    pub context_id: u32,
    pub phase: Phase,
    pub request_headers: HeaderMap,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_trailers: HeaderMap,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    /// Whether the module may currently access each map (Envoy nulls them
    /// after the callback continued).
    pub request_headers_open: bool,
    pub request_trailers_open: bool,
    pub response_headers_open: bool,
    pub response_trailers_open: bool,
    pub request_body_open: bool,
    pub response_body_open: bool,
    /// `set_property` values (Envoy's `wasm.`-prefixed filter state).
    pub filter_state: BTreeMap<Vec<u8>, Vec<u8>>,
    pub attributes: StreamAttributes,
    /// Clock time the stream started.
    pub start_nanos: u64,
    pub local_response: Option<LocalResponse>,
    /// Route-cache clears: the foreign function plus Envoy's implicit ones on
    /// request-header mutation.
    pub route_cache_clears: u32,
    pub explicit_route_cache_clears: u32,
    pub continued_request: u32,
    pub continued_response: u32,
    pub closed_request: bool,
    pub closed_response: bool,
}

impl StreamState {
    pub fn new(context_id: u32, start_nanos: u64) -> Self {
        Self {
            context_id,
            phase: Phase::Created,
            request_headers: HeaderMap::new(),
            request_trailers: HeaderMap::new(),
            response_headers: HeaderMap::new(),
            response_trailers: HeaderMap::new(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            request_headers_open: false,
            request_trailers_open: false,
            response_headers_open: false,
            response_trailers_open: false,
            request_body_open: false,
            response_body_open: false,
            filter_state: BTreeMap::new(),
            attributes: StreamAttributes::default(),
            start_nanos,
            local_response: None,
            route_cache_clears: 0,
            explicit_route_cache_clears: 0,
            continued_request: 0,
            continued_response: 0,
            closed_request: false,
            closed_response: false,
        }
    }
}

/// Static plugin identity and environment.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub vm_id: String,
    pub root_id: String,
    pub plugin_name: String,
    pub node: NodeInfo,
    /// Whether the node is also served as the top-level `node` property
    /// (Envoy before 1.40); it is always served as `xds.node`.
    pub legacy_node: bool,
    /// Extra top-level properties (e.g. `xds`, `listener_direction`).
    pub extra_properties: BTreeMap<String, PropValue>,
}

/// The data of one worker VM's store.
pub struct VmState {
    pub wasi: WasiP1Ctx,
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
    pub stdout_seen: usize,
    pub stderr_seen: usize,
    pub shared: Arc<HostShared>,
    pub worker: usize,
    pub plugin: Arc<PluginInfo>,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    /// The context the host is calling into (0 when none).
    pub current_context: u32,
    /// `proxy_set_effective_context`.
    pub effective_context: Option<u32>,
    pub root_context_id: u32,
    pub streams: HashMap<u32, StreamState>,
    pub tick_period_ms: u32,
    /// Clock time the next tick is due (None: no tick).
    pub next_tick_at: Option<u64>,
    pub metric_ids: MetricIds,
    pub next_http_token: u32,
    /// The reply being delivered to `proxy_on_http_call_response`.
    pub(crate) http_response: Option<DeliveredResponse>,
    /// `proxy_get_status`.
    pub status: (u32, String),
    /// Whether the plugin configuration buffer is readable (only during
    /// `on_configure`; the VM configuration during `on_vm_start`).
    pub config_buffer: Option<Vec<u8>>,
    pub malloc: Option<TypedFunc<i32, i32>>,
    /// Set by `proxy_done`.
    pub done_called: bool,
}

impl VmState {
    /// The context a host call acts on: the effective one if set.
    pub fn acting_context(&self) -> u32 {
        self.effective_context.unwrap_or(self.current_context)
    }

    pub fn log(&self, level: LogLevel, source: LogSource, message: String) {
        self.shared.log(self.worker, level, source, message);
    }

    /// Moves new stdout/stderr bytes into the log, a line per record.
    pub fn drain_stdio(&mut self) {
        for (pipe_is_err, level) in [(false, LogLevel::Info), (true, LogLevel::Error)] {
            let (contents, seen) = if pipe_is_err {
                (self.stderr.contents(), &mut self.stderr_seen)
            } else {
                (self.stdout.contents(), &mut self.stdout_seen)
            };
            if contents.len() <= *seen {
                continue;
            }
            let new = &contents[*seen..];
            // Only whole lines; a partial line waits for its newline.
            let Some(last_nl) = new.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let text = String::from_utf8_lossy(&new[..last_nl]).into_owned();
            *seen += last_nl + 1;
            for line in text.lines() {
                self.shared
                    .log(self.worker, level, LogSource::Stdio, line.to_string());
            }
        }
    }
}
