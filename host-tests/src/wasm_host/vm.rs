//! One worker VM: a wasmtime store and instance of the module, and typed
//! calls into its `proxy_on_*` exports.
//!
//! Like an Envoy worker thread, each worker has its own instance, memory and
//! context ids (the root context is 1, HTTP contexts count up from 2), and
//! shares only what Envoy shares between workers. A trap marks the VM failed
//! (Envoy fails the VM and stops calling it); the error, with wasmtime's
//! backtrace, is returned and logged.

use super::abi::LogLevel;
use super::logs::LogSource;
use super::state::{HostShared, PluginInfo, VmState};
use anyhow::{anyhow, bail, Context as _};
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::{Instance, Linker, Module, Store, TypedFunc, WasmParams, WasmResults};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{Deterministic, WasiCtxBuilder};

/// The first context id of a VM: its root context.
pub const ROOT_CONTEXT_ID: u32 = 1;

/// Bytes of deterministic randomness per VM (WASI `random_get` cycles them).
const RANDOM_POOL: usize = 1 << 16;

fn random_pool(seed: u64) -> Vec<u8> {
    // splitmix64: tiny, good enough to feed hash-map seeds reproducibly.
    let mut x = seed;
    let mut out = Vec::with_capacity(RANDOM_POOL);
    while out.len() < RANDOM_POOL {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// Per-VM configuration the host hands a new worker.
pub struct WorkerConfig {
    pub index: usize,
    pub shared: Arc<HostShared>,
    pub plugin: Arc<PluginInfo>,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub seed: u64,
}

/// A worker VM.
pub struct Worker {
    pub(crate) store: Store<VmState>,
    instance: Instance,
    pub index: usize,
    /// Set after a trap: the VM is not called again.
    pub failed: Option<String>,
    /// The `proxy_abi_version_*` export found.
    pub abi_version: String,
    pub(crate) next_context_id: u32,
    funcs: HashMap<&'static str, wasmtime::Func>,
}

impl Worker {
    pub fn new(
        engine: &wasmtime::Engine,
        linker: &Linker<VmState>,
        module: &Module,
        cfg: WorkerConfig,
    ) -> anyhow::Result<Worker> {
        let stdout = MemoryOutputPipe::new(64 << 20);
        let stderr = MemoryOutputPipe::new(64 << 20);
        let clock = cfg.shared.clock.clone();
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .envs(&cfg.env)
            .wall_clock(clock.clone())
            .monotonic_clock(clock)
            .secure_random(Deterministic::new(random_pool(cfg.seed)))
            .insecure_random(Deterministic::new(random_pool(cfg.seed ^ 0x5eed)))
            .insecure_random_seed(u128::from(cfg.seed))
            .build_p1();
        let state = VmState {
            wasi,
            stdout,
            stderr,
            stdout_seen: 0,
            stderr_seen: 0,
            shared: cfg.shared,
            worker: cfg.index,
            plugin: cfg.plugin,
            vm_config: cfg.vm_config,
            plugin_config: cfg.plugin_config,
            current_context: 0,
            effective_context: None,
            root_context_id: ROOT_CONTEXT_ID,
            streams: HashMap::new(),
            tick_period_ms: 0,
            next_tick_at: None,
            metric_ids: Default::default(),
            next_http_token: 0,
            http_response: None,
            status: (0, String::new()),
            config_buffer: None,
            malloc: None,
            done_called: false,
        };
        let mut store = Store::new(engine, state);
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(anyhow::Error::from)
            .context("instantiating the module")?;
        let abi_version = [
            "proxy_abi_version_0_2_1",
            "proxy_abi_version_0_2_0",
            "proxy_abi_version_0_1_0",
        ]
        .iter()
        .find(|n| instance.get_func(&mut store, n).is_some())
        .map(|n| n.trim_start_matches("proxy_abi_version_").replace('_', "."))
        .ok_or_else(|| anyhow!("not a proxy-wasm module: no proxy_abi_version_* export"))?;
        let malloc = ["proxy_on_memory_allocate", "malloc"]
            .iter()
            .find_map(|n| instance.get_typed_func::<i32, i32>(&mut store, n).ok());
        store.data_mut().malloc = malloc;
        let mut worker = Worker {
            store,
            instance,
            index: cfg.index,
            failed: None,
            abi_version,
            next_context_id: ROOT_CONTEXT_ID + 1,
            funcs: HashMap::new(),
        };
        // A WASI reactor initializes its runtime in `_initialize`; a command
        // module would use `_start` (cpp-host calls whichever exists).
        if worker
            .instance
            .get_func(&mut worker.store, "_initialize")
            .is_some()
        {
            worker.call::<(), ()>("_initialize", 0, ())?;
        } else if worker
            .instance
            .get_func(&mut worker.store, "_start")
            .is_some()
        {
            worker.call::<(), ()>("_start", 0, ())?;
        }
        Ok(worker)
    }

    /// Whether the module exports `name`.
    pub fn exports(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    fn func<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
    ) -> anyhow::Result<Option<TypedFunc<P, R>>> {
        let func = match self.funcs.get(name) {
            Some(f) => *f,
            None => match self.instance.get_func(&mut self.store, name) {
                Some(f) => {
                    self.funcs.insert(name, f);
                    f
                }
                None => return Ok(None),
            },
        };
        let typed = func
            .typed::<P, R>(&self.store)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("export {name} has an unexpected signature"))?;
        Ok(Some(typed))
    }

    /// Calls export `name` acting as `context_id`. `Ok(None)`: not exported.
    pub fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        context_id: u32,
        params: P,
    ) -> anyhow::Result<Option<R>> {
        if let Some(reason) = &self.failed {
            bail!("worker {} VM has failed earlier: {reason}", self.index);
        }
        let Some(f) = self.func::<P, R>(name)? else {
            return Ok(None);
        };
        {
            let s = self.store.data_mut();
            s.current_context = context_id;
            s.effective_context = None;
        }
        let result = f.call(&mut self.store, params);
        {
            let s = self.store.data_mut();
            s.current_context = 0;
            s.effective_context = None;
            s.drain_stdio();
        }
        match result {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                // proc_exit surfaces as an I32Exit error rather than a trap.
                let msg = match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    Some(exit) => format!("module called proc_exit({}) in {name}", exit.0),
                    None => format!("trap in {name} (context {context_id}): {e:?}"),
                };
                self.store
                    .data()
                    .log(LogLevel::Critical, LogSource::Host, msg.clone());
                self.failed = Some(msg.clone());
                Err(anyhow!(msg))
            }
        }
    }

    pub fn state(&self) -> &VmState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut VmState {
        self.store.data_mut()
    }
}
