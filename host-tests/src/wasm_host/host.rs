//! The test-facing host: load a module, configure the plugin on N workers,
//! drive HTTP streams, move the clock, and read back what the filter did.
//!
//! ```ignore
//! let mut host = HostBuilder::from_file(env::filter_wasm())
//!     .plugin_config_json(&serde_json::json!({ "services": [] }))
//!     .cluster_id("cluster-a")
//!     .locality("us-east1", "us-east1-b", "")
//!     .workers(2)
//!     .start()?;                       // Err if a worker rejects the config
//! let s = host.stream(0)?;             // a new HTTP context on worker 0
//! host.request_headers(s, &[(":authority", "reviews"), (":path", "/")], true)?;
//! host.response_headers(s, &[(":status", "200")], true)?;
//! host.finish(s)?;                     // on_done, on_log, on_delete
//! host.upstream_request(s).get("x-tideway-destination");
//! host.advance(Duration::from_secs(5))?; // fires the ticks that fall due
//! ```
//!
//! Everything runs on the calling thread, so a test is deterministic: the
//! only time is the fake clock and the only randomness is seeded.

use super::abi::{Action, LogLevel, Status};
use super::clock::FakeClock;
use super::http_call::{DeliveredResponse, HttpCall, HttpReply, HttpRule, PendingCall};
use super::imports;
use super::logs::{LogRecord, LogSource};
use super::metrics::MetricValue;
use super::pairs::HeaderMap;
use super::properties::{Locality, NodeInfo, PropValue};
use super::shared_data::SharedEntry;
use super::state::{lock, ForeignCall, HostShared, LocalResponse, Phase, PluginInfo, StreamState};
use super::unimplemented;
use super::vm::{Worker, WorkerConfig, ROOT_CONTEXT_ID};
use anyhow::{anyhow, bail, Context as _};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Config, Engine, Linker, Module};

/// Builds a [`Host`].
#[derive(Clone)]
pub struct HostBuilder {
    wasm: Vec<u8>,
    source: String,
    vm_id: String,
    root_id: String,
    plugin_name: String,
    vm_config: Vec<u8>,
    plugin_config: Vec<u8>,
    workers: usize,
    node: NodeInfo,
    legacy_node: bool,
    extra_properties: BTreeMap<String, PropValue>,
    env: Vec<(String, String)>,
    seed: u64,
    start_nanos: Option<u64>,
    echo_logs: bool,
    failing_calls: Vec<(String, Status)>,
}

impl HostBuilder {
    /// A module from bytes (binary or WAT text).
    pub fn new(wasm: impl Into<Vec<u8>>) -> Self {
        Self {
            wasm: wasm.into(),
            source: "<bytes>".into(),
            vm_id: "tideway".into(),
            root_id: "tideway".into(),
            plugin_name: "tideway".into(),
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            workers: 1,
            node: NodeInfo::default(),
            legacy_node: true,
            extra_properties: BTreeMap::new(),
            env: Vec::new(),
            seed: DEFAULT_SEED,
            start_nanos: None,
            echo_logs: std::env::var_os("WASM_HOST_ECHO_LOGS").is_some(),
            failing_calls: Vec::new(),
        }
    }

    /// A module from a file.
    pub fn from_file(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut b = Self::new(bytes);
        b.source = path.display().to_string();
        Ok(b)
    }

    pub fn vm_id(mut self, id: &str) -> Self {
        self.vm_id = id.into();
        self
    }
    pub fn root_id(mut self, id: &str) -> Self {
        self.root_id = id.into();
        self
    }
    pub fn plugin_name(mut self, name: &str) -> Self {
        self.plugin_name = name.into();
        self
    }
    pub fn vm_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.vm_config = bytes.into();
        self
    }
    pub fn plugin_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.plugin_config = bytes.into();
        self
    }
    pub fn plugin_config_json(self, json: &serde_json::Value) -> Self {
        self.plugin_config(json.to_string())
    }
    /// Number of worker VMs (Envoy's `--concurrency`).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }
    pub fn node_id(mut self, id: &str) -> Self {
        self.node.id = id.into();
        self
    }
    /// A `node.metadata` entry (a Struct value; JSON numbers become doubles).
    pub fn node_metadata(mut self, key: &str, value: serde_json::Value) -> Self {
        self.node
            .metadata
            .insert(key.into(), PropValue::from_json(&value));
        self
    }
    /// Istio's `node.metadata.CLUSTER_ID`.
    pub fn cluster_id(self, id: &str) -> Self {
        self.node_metadata("CLUSTER_ID", serde_json::Value::String(id.into()))
    }
    pub fn locality(mut self, region: &str, zone: &str, sub_zone: &str) -> Self {
        self.node.locality = Locality::new(region, zone, sub_zone);
        self
    }
    /// Whether the node is also served as the top-level `node` property, as
    /// Envoy before 1.40 does (default `true`). It is always served as
    /// `xds.node`, as Envoy 1.40 serves it; `false` emulates 1.40 exactly.
    pub fn legacy_node(mut self, on: bool) -> Self {
        self.legacy_node = on;
        self
    }
    /// Any other top-level property (e.g. `listener_direction`). An `xds`
    /// map given here is merged with the `xds.node` the host serves.
    pub fn property(mut self, name: &str, value: PropValue) -> Self {
        self.extra_properties.insert(name.into(), value);
        self
    }
    /// A WASI environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Seed of the VMs' WASI randomness (each worker derives its own).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Start time of the fake clock, Unix nanoseconds.
    pub fn start_time_nanos(mut self, nanos: u64) -> Self {
        self.start_nanos = Some(nanos);
        self
    }
    /// Print every captured log line to stderr as it happens (also enabled
    /// by the `WASM_HOST_ECHO_LOGS` environment variable).
    pub fn echo_logs(mut self, on: bool) -> Self {
        self.echo_logs = on;
        self
    }

    /// Import `name` answers `status` from the start, `on_vm_start` and
    /// `on_configure` included (see [`Host::fail_call`]).
    pub fn failing_call(mut self, name: &str, status: Status) -> Self {
        self.failing_calls.push((name.into(), status));
        self
    }

    /// Loads the module and creates the workers, then runs `on_vm_start` and
    /// `on_configure` on each. Configuration results are in
    /// [`Host::configured`]; use [`start`](Self::start) to fail on rejection.
    pub fn build(self) -> anyhow::Result<Host> {
        let (engine, module) = compiled(&self.wasm, &self.source)?;
        let mut linker: Linker<super::state::VmState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi)?;
        imports::add_to_linker(&mut linker)?;
        unimplemented::add_known(&engine, &mut linker)?;
        let stubbed = unimplemented::add_missing(&engine, &mut linker, &module)?;
        let clock = self
            .start_nanos
            .map(FakeClock::starting_at)
            .unwrap_or_default();
        let shared = Arc::new(HostShared::new(clock, self.echo_logs));
        lock(&shared.failing_calls).extend(self.failing_calls.iter().cloned());
        for name in &stubbed {
            shared.log(
                0,
                LogLevel::Warn,
                LogSource::Host,
                format!(
                    "import {name} is not implemented by this host; calls answer Unimplemented"
                ),
            );
        }
        let plugin = Arc::new(PluginInfo {
            vm_id: self.vm_id.clone(),
            root_id: self.root_id.clone(),
            plugin_name: self.plugin_name.clone(),
            node: self.node.clone(),
            legacy_node: self.legacy_node,
            extra_properties: self.extra_properties.clone(),
        });
        let mut workers = Vec::new();
        for index in 0..self.workers {
            workers.push(Worker::new(
                &engine,
                &linker,
                &module,
                WorkerConfig {
                    index,
                    shared: shared.clone(),
                    plugin: plugin.clone(),
                    vm_config: self.vm_config.clone(),
                    plugin_config: self.plugin_config.clone(),
                    env: self.env.clone(),
                    seed: self.seed.wrapping_add(index as u64),
                },
            )?);
        }
        let mut host = Host {
            shared,
            workers,
            configured: Vec::new(),
            stubbed_imports: stubbed,
            respawn: Respawn {
                engine,
                linker,
                module,
                plugin,
                vm_config: self.vm_config.clone(),
                env: self.env.clone(),
                seed: self.seed,
                restarts: 0,
            },
        };
        for w in 0..host.workers.len() {
            let ok = host.start_worker(w)?;
            host.configured.push(ok);
        }
        host.pump()?;
        Ok(host)
    }

    /// [`build`](Self::build), failing if any worker rejects the
    /// configuration (the error carries the captured logs).
    pub fn start(self) -> anyhow::Result<Host> {
        let host = self.build()?;
        if let Some(w) = host.configured.iter().position(|ok| !ok) {
            bail!(
                "worker {w} rejected the plugin configuration; logs:\n{}",
                host.logs_text()
            );
        }
        Ok(host)
    }
}

/// Compiles a module once per process: Cranelift compilation of the filter
/// takes far longer than instantiation, and property tests build many hosts.
fn compiled(wasm: &[u8], source: &str) -> anyhow::Result<(Engine, Module)> {
    use std::collections::HashMap;
    use std::hash::{DefaultHasher, Hash, Hasher};
    use std::sync::{Mutex, OnceLock};
    type ModuleCache = Mutex<HashMap<(u64, usize), (Engine, Module)>>;
    static CACHE: OnceLock<ModuleCache> = OnceLock::new();
    let mut h = DefaultHasher::new();
    wasm.hash(&mut h);
    let key = (h.finish(), wasm.len());
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = lock(cache).get(&key) {
        return Ok(hit.clone());
    }
    let mut config = Config::new();
    config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
    let engine = Engine::new(&config)?;
    let module = Module::new(&engine, wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling {source}"))?;
    lock(cache).insert(key, (engine.clone(), module.clone()));
    Ok((engine, module))
}

/// The default seed of the VMs' randomness ("tideway\0"): fixed, so runs repeat.
pub const DEFAULT_SEED: u64 = 0x7469_6465_7761_7900;

/// A handle on one HTTP context of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpStream {
    pub worker: usize,
    pub context_id: u32,
}

/// What one request did, for assertions (see [`Host::exchange`]).
#[derive(Debug, Clone)]
pub struct Exchange {
    pub stream: HttpStream,
    pub request_action: Action,
    pub response_action: Option<Action>,
    /// The request headers as forwarded upstream.
    pub upstream_request: HeaderMap,
    /// The response headers as sent downstream.
    pub downstream_response: HeaderMap,
    pub local_response: Option<LocalResponse>,
    pub route_cache_clears: u32,
    pub explicit_route_cache_clears: u32,
}

/// A running proxy-wasm host: one module, one plugin, N workers.
pub struct Host {
    pub(crate) shared: Arc<HostShared>,
    pub(crate) workers: Vec<Worker>,
    /// `on_configure` result per worker.
    pub configured: Vec<bool>,
    /// Imports the module declares that this host answers `Unimplemented`.
    pub stubbed_imports: Vec<String>,
    respawn: Respawn,
}

/// What it takes to create a worker VM again ([`Host::restart_worker`]).
struct Respawn {
    engine: Engine,
    linker: Linker<super::state::VmState>,
    module: Module,
    plugin: Arc<PluginInfo>,
    vm_config: Vec<u8>,
    env: Vec<(String, String)>,
    seed: u64,
    restarts: u64,
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_bytes())))
}

impl Host {
    fn start_worker(&mut self, w: usize) -> anyhow::Result<bool> {
        let worker = &mut self.workers[w];
        worker.call::<(i32, i32), ()>(
            "proxy_on_context_create",
            ROOT_CONTEXT_ID,
            (ROOT_CONTEXT_ID as i32, 0),
        )?;
        let vm_len = worker.state().vm_config.len() as i32;
        let started = worker
            .call::<(i32, i32), i32>(
                "proxy_on_vm_start",
                ROOT_CONTEXT_ID,
                (ROOT_CONTEXT_ID as i32, vm_len),
            )?
            .unwrap_or(1);
        if started == 0 {
            worker.state().log(
                LogLevel::Error,
                LogSource::Host,
                "proxy_on_vm_start returned false".into(),
            );
            return Ok(false);
        }
        let config = worker.state().plugin_config.clone();
        self.configure_worker(w, config)
    }

    fn configure_worker(&mut self, w: usize, config: Vec<u8>) -> anyhow::Result<bool> {
        let worker = &mut self.workers[w];
        let len = config.len() as i32;
        worker.state_mut().config_buffer = Some(config);
        let r = worker.call::<(i32, i32), i32>(
            "proxy_on_configure",
            ROOT_CONTEXT_ID,
            (ROOT_CONTEXT_ID as i32, len),
        );
        worker.state_mut().config_buffer = None;
        let ok = r?.unwrap_or(1) != 0;
        if !ok {
            worker.state().log(
                LogLevel::Error,
                LogSource::Host,
                "proxy_on_configure returned false: configuration rejected".into(),
            );
        }
        Ok(ok)
    }

    /// Delivers a new plugin configuration to every worker (an xDS update).
    /// Returns whether every worker accepted it.
    pub fn reconfigure(&mut self, config: impl Into<Vec<u8>>) -> anyhow::Result<bool> {
        let config = config.into();
        let mut all = true;
        for w in 0..self.workers.len() {
            self.workers[w].state_mut().plugin_config = config.clone();
            all &= self.configure_worker(w, config.clone())?;
        }
        self.pump()?;
        Ok(all)
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The worker's VM is gone (Envoy failed or destroyed it): it is never
    /// called again — no ticks, no streams — and the HTTP calls it had out
    /// are cancelled, as Envoy cancels a destroyed context's calls. Its
    /// shared-data writes stay.
    pub fn stop_worker(&mut self, worker: usize) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.failed = Some("stopped by the test".into());
            w.state_mut().next_tick_at = None;
        }
        lock(&self.shared.pending_calls).retain(|p| p.call.worker != worker);
    }

    /// Replaces the worker's VM with a new instance of the module (fresh
    /// memory, fresh randomness), started and configured with the current
    /// plugin configuration — Envoy restarting a failed VM, or a worker
    /// coming back. Shared data, metrics and the clock carry on. Returns
    /// whether the new VM accepted the configuration.
    pub fn restart_worker(&mut self, worker: usize) -> anyhow::Result<bool> {
        if worker >= self.workers.len() {
            bail!("no worker {worker}");
        }
        lock(&self.shared.pending_calls).retain(|p| p.call.worker != worker);
        let plugin_config = self.workers[worker].state().plugin_config.clone();
        let r = &mut self.respawn;
        r.restarts += 1;
        let fresh = Worker::new(
            &r.engine,
            &r.linker,
            &r.module,
            WorkerConfig {
                index: worker,
                shared: self.shared.clone(),
                plugin: r.plugin.clone(),
                vm_config: r.vm_config.clone(),
                plugin_config,
                env: r.env.clone(),
                seed: r
                    .seed
                    .wrapping_add(worker as u64)
                    .wrapping_add(r.restarts.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            },
        )?;
        self.workers[worker] = fresh;
        let ok = self.start_worker(worker)?;
        if let Some(c) = self.configured.get_mut(worker) {
            *c = ok;
        }
        self.pump()?;
        Ok(ok)
    }

    /// The ABI version the module declares.
    pub fn abi_version(&self) -> &str {
        &self.workers[0].abi_version
    }

    /// Whether the module exports a function (e.g. `proxy_on_tick`).
    pub fn module_exports(&mut self, name: &str) -> bool {
        self.workers[0].exports(name)
    }

    // --- clock and ticks ------------------------------------------------------------

    pub fn clock(&self) -> &FakeClock {
        &self.shared.clock
    }

    pub fn now_nanos(&self) -> u64 {
        self.shared.clock.now_nanos()
    }

    /// The tick period a worker's root context asked for.
    pub fn tick_period(&self, worker: usize) -> Duration {
        Duration::from_millis(u64::from(self.workers[worker].state().tick_period_ms))
    }

    /// Calls `proxy_on_tick` on one worker now, regardless of its period.
    pub fn tick(&mut self, worker: usize) -> anyhow::Result<()> {
        self.workers[worker].call::<i32, ()>(
            "proxy_on_tick",
            ROOT_CONTEXT_ID,
            ROOT_CONTEXT_ID as i32,
        )?;
        self.pump()
    }

    /// Ticks every worker once, in worker order.
    pub fn tick_all(&mut self) -> anyhow::Result<()> {
        for w in 0..self.workers.len() {
            self.tick(w)?;
        }
        Ok(())
    }

    /// Clock reads the module made so far, on every worker.
    pub fn clock_reads(&self) -> u64 {
        self.shared
            .clock_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves the clock forward by `by`, firing in time order every tick,
    /// HTTP-call reply and timeout that falls due on the way (each at its
    /// own time).
    pub fn advance(&mut self, by: Duration) -> anyhow::Result<()> {
        let target = self
            .now_nanos()
            .saturating_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX));
        loop {
            // Earliest due event ≤ target.
            let mut next: Option<(u64, Event)> = None;
            let mut consider = |at: u64, ev: Event| {
                if at <= target && next.as_ref().is_none_or(|(t, _)| at < *t) {
                    next = Some((at, ev));
                }
            };
            for (i, w) in self.workers.iter().enumerate() {
                if w.failed.is_none() {
                    if let Some(at) = w.state().next_tick_at {
                        consider(at, Event::Tick(i));
                    }
                }
            }
            for (i, p) in lock(&self.shared.pending_calls).iter().enumerate() {
                let due = match (&p.reply, p.timeout_at) {
                    (Some((at, _)), Some(t)) => (*at).min(t),
                    (Some((at, _)), None) => *at,
                    (None, Some(t)) => t,
                    (None, None) => continue,
                };
                consider(due, Event::Call(i));
            }
            let Some((at, ev)) = next else { break };
            if at > self.now_nanos() {
                self.shared.clock.set_nanos(at);
            }
            match ev {
                Event::Tick(w) => {
                    let period = u64::from(self.workers[w].state().tick_period_ms) * 1_000_000;
                    self.workers[w].state_mut().next_tick_at = Some(at + period.max(1));
                    self.workers[w].call::<i32, ()>(
                        "proxy_on_tick",
                        ROOT_CONTEXT_ID,
                        ROOT_CONTEXT_ID as i32,
                    )?;
                }
                Event::Call(_) => {}
            }
            self.pump()?;
        }
        if target > self.now_nanos() {
            self.shared.clock.set_nanos(target);
        }
        self.pump()
    }

    /// Delivers everything due now: queue notifications, HTTP replies and
    /// timeouts. Called after every host-driven VM call, so a reply with no
    /// delay arrives right after the callback that dispatched it returns.
    pub fn pump(&mut self) -> anyhow::Result<()> {
        loop {
            let ready = lock(&self.shared.queues).ready.pop_front();
            if let Some((owner, token)) = ready {
                if let Some(w) = self.workers.get_mut(owner.worker) {
                    w.call::<(i32, i32), ()>(
                        "proxy_on_queue_ready",
                        owner.context_id,
                        (owner.context_id as i32, token as i32),
                    )?;
                }
                continue;
            }
            let now = self.now_nanos();
            let due = {
                let mut pending = lock(&self.shared.pending_calls);
                let idx = pending.iter().position(|p| {
                    p.reply.as_ref().is_some_and(|(at, _)| *at <= now)
                        || p.timeout_at.is_some_and(|t| t <= now)
                });
                idx.map(|i| pending.remove(i))
            };
            let Some(p) = due else { break };
            self.deliver(p)?;
        }
        Ok(())
    }

    fn deliver(&mut self, p: PendingCall) -> anyhow::Result<()> {
        let now = self.now_nanos();
        let reply = match p.reply {
            Some((at, reply)) if at <= now && p.timeout_at.is_none_or(|t| at <= t) => reply,
            _ => HttpReply::timeout_reply(),
        };
        let (response, status) = match reply {
            HttpReply::Response {
                headers,
                body,
                trailers,
            } => (
                DeliveredResponse {
                    headers: HeaderMap::from_pairs(
                        headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
                    ),
                    body,
                    trailers: HeaderMap::from_pairs(
                        trailers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
                    ),
                },
                (0, String::new()),
            ),
            _ => (
                DeliveredResponse::default(),
                (Status::BrokenConnection as u32, "reset".to_string()),
            ),
        };
        let counts = (
            response.headers.len() as i32,
            response.body.len() as i32,
            response.trailers.len() as i32,
        );
        let w = &mut self.workers[p.call.worker];
        w.state_mut().http_response = Some(response);
        w.state_mut().status = status;
        let r = w.call::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            p.call.context_id,
            (
                p.call.context_id as i32,
                p.call.token as i32,
                counts.0,
                counts.1,
                counts.2,
            ),
        );
        w.state_mut().http_response = None;
        w.state_mut().status = (0, String::new());
        r.map(|_| ())
    }

    // --- HTTP streams ---------------------------------------------------------------

    /// Creates an HTTP context on `worker` (`proxy_on_context_create`).
    pub fn stream(&mut self, worker: usize) -> anyhow::Result<HttpStream> {
        let w = self
            .workers
            .get_mut(worker)
            .ok_or_else(|| anyhow!("no worker {worker}"))?;
        let id = w.next_context_id;
        w.next_context_id += 1;
        let now = self.shared.clock.now_nanos();
        w.state_mut().streams.insert(id, StreamState::new(id, now));
        w.call::<(i32, i32), ()>(
            "proxy_on_context_create",
            id,
            (id as i32, ROOT_CONTEXT_ID as i32),
        )?;
        Ok(HttpStream {
            worker,
            context_id: id,
        })
    }

    fn stream_state_mut(&mut self, s: HttpStream) -> anyhow::Result<&mut StreamState> {
        self.workers
            .get_mut(s.worker)
            .and_then(|w| w.state_mut().streams.get_mut(&s.context_id))
            .ok_or_else(|| anyhow!("no stream {s:?}"))
    }

    /// The state of a stream (headers, local response, counters).
    pub fn stream_state(&self, s: HttpStream) -> Option<&StreamState> {
        self.workers
            .get(s.worker)?
            .state()
            .streams
            .get(&s.context_id)
    }

    /// Sets a per-request property by dotted path (e.g. `source.address`).
    pub fn set_stream_property(
        &mut self,
        s: HttpStream,
        path: &str,
        value: PropValue,
    ) -> anyhow::Result<()> {
        self.stream_state_mut(s)?
            .attributes
            .extra
            .insert(path.into(), value);
        Ok(())
    }

    fn run_headers(
        &mut self,
        s: HttpStream,
        export: &'static str,
        count: usize,
        eos: bool,
    ) -> anyhow::Result<Action> {
        let r = self.workers[s.worker].call::<(i32, i32, i32), i32>(
            export,
            s.context_id,
            (s.context_id as i32, count as i32, i32::from(eos)),
        )?;
        let action = Action::from_code(r.unwrap_or(0));
        Ok(action)
    }

    /// `proxy_on_request_headers`. On `Continue` the request headers are
    /// forwarded (and no longer writable, as in Envoy).
    pub fn request_headers(
        &mut self,
        s: HttpStream,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> anyhow::Result<Action> {
        let map = header_map(headers);
        let count = map.len();
        {
            let st = self.stream_state_mut(s)?;
            st.phase = Phase::RequestHeaders;
            st.request_headers = map;
            st.request_headers_open = true;
        }
        let action = self.run_headers(s, "proxy_on_request_headers", count, end_of_stream)?;
        if action == Action::Continue {
            self.stream_state_mut(s)?.request_headers_open = false;
        }
        self.pump()?;
        Ok(action)
    }

    /// `proxy_on_request_body`.
    pub fn request_body(
        &mut self,
        s: HttpStream,
        body: &[u8],
        end_of_stream: bool,
    ) -> anyhow::Result<Action> {
        {
            let st = self.stream_state_mut(s)?;
            st.phase = Phase::RequestBody;
            st.request_body = body.to_vec();
            st.request_body_open = true;
        }
        let r = self.workers[s.worker].call::<(i32, i32, i32), i32>(
            "proxy_on_request_body",
            s.context_id,
            (
                s.context_id as i32,
                body.len() as i32,
                i32::from(end_of_stream),
            ),
        )?;
        let action = Action::from_code(r.unwrap_or(0));
        if action == Action::Continue {
            self.stream_state_mut(s)?.request_body_open = false;
        }
        self.pump()?;
        Ok(action)
    }

    /// `proxy_on_response_headers`.
    pub fn response_headers(
        &mut self,
        s: HttpStream,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> anyhow::Result<Action> {
        let map = header_map(headers);
        let count = map.len();
        {
            let st = self.stream_state_mut(s)?;
            st.phase = Phase::ResponseHeaders;
            st.request_headers_open = false;
            st.response_headers = map;
            st.response_headers_open = true;
        }
        let action = self.run_headers(s, "proxy_on_response_headers", count, end_of_stream)?;
        if action == Action::Continue {
            self.stream_state_mut(s)?.response_headers_open = false;
        }
        self.pump()?;
        Ok(action)
    }

    /// `proxy_on_response_body`.
    pub fn response_body(
        &mut self,
        s: HttpStream,
        body: &[u8],
        end_of_stream: bool,
    ) -> anyhow::Result<Action> {
        {
            let st = self.stream_state_mut(s)?;
            st.phase = Phase::ResponseBody;
            st.response_body = body.to_vec();
            st.response_body_open = true;
        }
        let r = self.workers[s.worker].call::<(i32, i32, i32), i32>(
            "proxy_on_response_body",
            s.context_id,
            (
                s.context_id as i32,
                body.len() as i32,
                i32::from(end_of_stream),
            ),
        )?;
        let action = Action::from_code(r.unwrap_or(0));
        if action == Action::Continue {
            self.stream_state_mut(s)?.response_body_open = false;
        }
        self.pump()?;
        Ok(action)
    }

    /// Ends the stream: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn finish(&mut self, s: HttpStream) -> anyhow::Result<()> {
        {
            let st = self.stream_state_mut(s)?;
            st.phase = Phase::Done;
            st.request_headers_open = false;
            st.response_headers_open = false;
        }
        let id = s.context_id as i32;
        let w = &mut self.workers[s.worker];
        w.call::<i32, i32>("proxy_on_done", s.context_id, id)?;
        w.call::<i32, ()>("proxy_on_log", s.context_id, id)?;
        w.call::<i32, ()>("proxy_on_delete", s.context_id, id)?;
        self.pump()
    }

    /// Forgets a finished stream's state (long loops keep memory flat).
    pub fn drop_stream(&mut self, s: HttpStream) {
        if let Some(w) = self.workers.get_mut(s.worker) {
            w.state_mut().streams.remove(&s.context_id);
        }
    }

    /// The request headers as the filter left them (what goes upstream).
    pub fn upstream_request(&self, s: HttpStream) -> HeaderMap {
        self.stream_state(s)
            .map(|st| st.request_headers.clone())
            .unwrap_or_default()
    }

    /// The response headers as the filter left them.
    pub fn downstream_response(&self, s: HttpStream) -> HeaderMap {
        self.stream_state(s)
            .map(|st| st.response_headers.clone())
            .unwrap_or_default()
    }

    pub fn local_response(&self, s: HttpStream) -> Option<LocalResponse> {
        self.stream_state(s)
            .and_then(|st| st.local_response.clone())
    }

    /// One whole request on `worker`: request headers (end of stream), then,
    /// unless the filter paused or answered locally, response headers (end
    /// of stream), then the end of the stream. Returns what happened; the
    /// stream's state is dropped afterwards.
    pub fn exchange(
        &mut self,
        worker: usize,
        request: &[(&str, &str)],
        response: &[(&str, &str)],
    ) -> anyhow::Result<Exchange> {
        let s = self.stream(worker)?;
        let request_action = self.request_headers(s, request, true)?;
        let mut response_action = None;
        let local = self.local_response(s);
        if request_action == Action::Continue && local.is_none() {
            response_action = Some(self.response_headers(s, response, true)?);
        }
        self.finish(s)?;
        let st = self
            .stream_state(s)
            .cloned()
            .ok_or_else(|| anyhow!("stream vanished"))?;
        self.drop_stream(s);
        Ok(Exchange {
            stream: s,
            request_action,
            response_action,
            upstream_request: st.request_headers,
            downstream_response: st.response_headers,
            local_response: st.local_response,
            route_cache_clears: st.route_cache_clears,
            explicit_route_cache_clears: st.explicit_route_cache_clears,
        })
    }

    // --- HTTP calls -----------------------------------------------------------------

    /// Scripts the answer to calls to `upstream` (`None`: any upstream).
    /// Rules are tried in order; the first that matches answers.
    pub fn on_http_call(&mut self, upstream: Option<&str>, reply: HttpReply, delay: Duration) {
        lock(&self.shared.http_rules).push(HttpRule {
            upstream: upstream.map(Into::into),
            reply,
            delay,
            times: None,
        });
    }

    /// Forgets every scripted answer: calls from now on stay pending until
    /// answered by hand or timed out.
    pub fn clear_http_rules(&mut self) {
        lock(&self.shared.http_rules).clear();
    }

    /// Adds a full rule (e.g. one that answers only N times).
    pub fn add_http_rule(&mut self, rule: HttpRule) {
        lock(&self.shared.http_rules).push(rule);
    }

    /// Restricts `proxy_http_call` to these clusters (others: `BadArgument`).
    pub fn known_clusters(&mut self, clusters: &[&str]) {
        *lock(&self.shared.known_clusters) = Some(clusters.iter().map(|c| c.to_string()).collect());
    }

    /// Every call dispatched so far.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        lock(&self.shared.http_calls).clone()
    }

    /// Calls dispatched and not answered yet.
    pub fn pending_http_calls(&self) -> Vec<HttpCall> {
        lock(&self.shared.pending_calls)
            .iter()
            .map(|p| p.call.clone())
            .collect()
    }

    /// Answers a pending call now (by worker and token).
    pub fn reply_http_call(
        &mut self,
        worker: usize,
        token: u32,
        reply: HttpReply,
    ) -> anyhow::Result<()> {
        let now = self.now_nanos();
        {
            let mut pending = lock(&self.shared.pending_calls);
            let p = pending
                .iter_mut()
                .find(|p| p.call.worker == worker && p.call.token == token)
                .ok_or_else(|| anyhow!("no pending HTTP call {token} on worker {worker}"))?;
            p.reply = Some((now, reply));
        }
        self.pump()
    }

    // --- observations ---------------------------------------------------------------

    pub fn logs(&self) -> Vec<LogRecord> {
        lock(&self.shared.logs).clone()
    }

    /// All logs as text, one line per record.
    pub fn logs_text(&self) -> String {
        lock(&self.shared.logs)
            .iter()
            .map(|r| format!("{r}\n"))
            .collect()
    }

    /// Whether any log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        lock(&self.shared.logs)
            .iter()
            .any(|r| r.message.contains(needle))
    }

    pub fn clear_logs(&mut self) {
        lock(&self.shared.logs).clear();
    }

    /// Prints the logs to stderr (shown by `cargo test` for failing tests).
    pub fn dump_logs(&self) {
        eprint!("{}", self.logs_text());
    }

    pub fn metric(&self, name: &str) -> Option<MetricValue> {
        lock(&self.shared.metrics).get(name).cloned()
    }

    pub fn metrics(&self) -> BTreeMap<String, MetricValue> {
        lock(&self.shared.metrics).all().clone()
    }

    pub fn foreign_calls(&self) -> Vec<ForeignCall> {
        lock(&self.shared.foreign_calls).clone()
    }

    /// The shared data of this plugin's `vm_id`.
    pub fn shared_data(&self) -> BTreeMap<String, SharedEntry> {
        let vm_id = &self.workers[0].state().plugin.vm_id;
        lock(&self.shared.shared_data).snapshot(vm_id)
    }

    /// Writes shared data as a VM would (`cas` 0: unconditional).
    pub fn set_shared_data(&mut self, key: &str, value: &[u8], cas: u32) -> Result<u32, Status> {
        let vm_id = self.workers[0].state().plugin.vm_id.clone();
        lock(&self.shared.shared_data).set(&vm_id, key, value, cas)
    }

    /// Makes import `name` (e.g. `proxy_get_header_map_pairs`) answer
    /// `status` on every call, without doing its work, until
    /// [`clear_failing_calls`](Self::clear_failing_calls): how a test shows
    /// the module survives a host that fails.
    pub fn fail_call(&mut self, name: &str, status: Status) {
        lock(&self.shared.failing_calls).insert(name.to_string(), status);
    }

    /// Every import does its work again.
    pub fn clear_failing_calls(&mut self) {
        lock(&self.shared.failing_calls).clear();
    }

    /// Sets what `proxy_get_log_level` answers.
    pub fn set_log_level(&mut self, level: LogLevel) {
        *lock(&self.shared.log_level) = level;
    }

    /// Whether a worker's VM trapped (and why).
    pub fn failure(&self, worker: usize) -> Option<&str> {
        self.workers.get(worker)?.failed.as_deref()
    }

    /// Calls any export by name with i32 arguments, acting as the root
    /// context. For hand-written test modules.
    pub fn call_export_i32(
        &mut self,
        worker: usize,
        name: &'static str,
        args: &[i32],
    ) -> anyhow::Result<Option<i32>> {
        let w = &mut self.workers[worker];
        let ctx = ROOT_CONTEXT_ID;
        match args.len() {
            0 => w.call::<(), i32>(name, ctx, ()),
            1 => w.call::<i32, i32>(name, ctx, args[0]),
            2 => w.call::<(i32, i32), i32>(name, ctx, (args[0], args[1])),
            3 => w.call::<(i32, i32, i32), i32>(name, ctx, (args[0], args[1], args[2])),
            n => bail!("call_export_i32 supports up to 3 arguments, got {n}"),
        }
    }
}

enum Event {
    Tick(usize),
    Call(#[allow(dead_code)] usize),
}
