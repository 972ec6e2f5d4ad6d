//! The callbacks the host calls (proxy-wasm ABI 0.2.1 exports) and the
//! table of contexts they act on.
//!
//! Why not the SDK's dispatcher: it `panic!`s on a context id it does not
//! know and `unwrap`s `set_effective_context` before every HTTP-call
//! answer, and a panic traps the VM. Here an unknown context is ignored
//! and no host call is needed to dispatch (the host already calls into the
//! context an event is for). Only the callbacks the filter uses are
//! exported, so the host skips the rest (request bodies, network events…).
//!
//! Each callback the host enters costs it a VM call, on every request. So a
//! stream's end is taken from `proxy_on_delete`, which the host calls for
//! every stream context anyway, and neither `proxy_on_log` nor
//! `proxy_on_done` is exported: proxy-wasm-cpp-host's `ContextBase::onDone`
//! answers "done" without entering the VM when the export is missing, and
//! Envoy's `Context::onDestroy` calls `onDone` then `onDelete` once the
//! stream is over (`source/extensions/common/wasm/context.cc`).
//!
//! Nor is `proxy_on_context_create`: proxy-wasm-cpp-host's
//! `ContextBase::onCreate` and `onConfigure` skip it when it is missing
//! ("the in-VM SDK is responsible for managing any required in-VM state",
//! `src/context.cc`). A root context is made when the host first names it
//! (`proxy_on_vm_start` or `proxy_on_configure`), and a stream is entered
//! in the table only when its request is routed. Without the create call a
//! stream's parent is not given, so it is found: the VM's one root — the
//! case of every sidecar with one Tideway plugin — or, when several plugins
//! share the VM (two policies' plugins, or a reconfigured plugin beside the
//! one whose streams are draining), the newest root of the plugin named by
//! the stream's `plugin_name` property (one more host call, only then).

use super::Worker;
use crate::decision::InFlight;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The VM's contexts: root contexts (one per plugin sharing this VM) with
/// their worker state, and HTTP contexts with their routed request.
#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Root, ContextIdHash>,
    /// HTTP context → (its root, the request routed on it); only routed
    /// requests are entered.
    streams: HashMap<u32, (u32, InFlight), ContextIdHash>,
}

/// One plugin's root context in this VM.
struct Root {
    worker: Worker,
    /// The root's plugin, by which its streams are told apart from another
    /// plugin's in the same VM (see the module doc); empty until the host
    /// configures the root.
    plugin_name: Vec<u8>,
}

impl Contexts {
    /// The root context `id`, made on first use.
    fn root(&mut self, id: u32) -> &mut Root {
        self.roots.entry(id).or_insert_with(|| Root {
            worker: Worker::new(),
            plugin_name: Vec::new(),
        })
    }

    fn worker(&mut self, id: u32) -> Option<&mut Worker> {
        self.roots.get_mut(&id).map(|r| &mut r.worker)
    }
}

/// The root a new stream belongs to (see the module doc): the VM's one
/// root, or the newest root of the stream's plugin. Context ids only grow,
/// so the newest of several same-named roots has the largest id.
fn root_of_new_stream(roots: &mut HashMap<u32, Root, ContextIdHash>) -> Option<(u32, &mut Root)> {
    let found = if roots.len() == 1 {
        roots.iter_mut().next()
    } else {
        let name = super::abi::property(&["plugin_name"]).ok().flatten()?;
        roots
            .iter_mut()
            .filter(|(_, root)| root.plugin_name == name)
            .max_by_key(|(id, _)| **id)
    };
    found.map(|(id, root)| (*id, root))
}

/// The context tables' hash. Context ids are the host's counter, not
/// anything a client chooses, so the default SipHash's flooding defence
/// buys nothing, and it costs a few hundred instructions per lookup —
/// five lookups a request. One multiplication by 2⁶⁴/φ spreads sequential
/// ids over the table's buckets and its control bytes (the top bits).
type ContextIdHash = BuildHasherDefault<ContextIdHasher>;

#[derive(Default)]
struct ContextIdHasher(u64);

impl Hasher for ContextIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u32` keys; any bytes still hash deterministically.
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.write_u64(u64::from(id));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Run `f` on the context table; `fallback` if it is busy (the host never
/// re-enters the VM during a callback, so only a host bug gets there).
fn with<R>(fallback: R, f: impl FnOnce(&mut Contexts) -> R) -> R {
    CONTEXTS.with(|c| match c.try_borrow_mut() {
        Ok(mut contexts) => f(&mut contexts),
        Err(_) => fallback,
    })
}

/// A routed stream's request and its root context's worker, borrowed
/// together.
fn with_stream<R>(
    context_id: u32,
    fallback: R,
    f: impl FnOnce(&mut Worker, &mut InFlight) -> R,
) -> R {
    with(None, |c| {
        let (root, flight) = c.streams.get_mut(&context_id)?;
        let worker = &mut c.roots.get_mut(root)?.worker;
        Some(f(worker, flight))
    })
    .unwrap_or(fallback)
}

fn with_root<R>(context_id: u32, fallback: R, f: impl FnOnce(&mut Worker) -> R) -> R {
    with(None, |c| c.worker(context_id).map(f)).unwrap_or(fallback)
}

/// `Action::Continue`: the filter never pauses a stream.
const CONTINUE: u32 = 0;

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The reactor's start: run the static constructors wasm-ld collected, and
/// make a panic (there should be none) say where it was before the VM traps.
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    // SAFETY: called once by the host before any other export.
    unsafe {
        __wasm_call_ctors();
    }
    std::panic::set_hook(Box::new(|info| {
        super::abi::log(super::abi::Level::Critical, &format!("tideway: {info}"));
    }));
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(context_id: u32, _vm_configuration_size: usize) -> u32 {
    with(1, |c| u32::from(c.root(context_id).worker.on_vm_start()))
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> u32 {
    with(0, |c| {
        let root = c.root(context_id);
        root.plugin_name = super::abi::property(&["plugin_name"])
            .ok()
            .flatten()
            .unwrap_or_default();
        u32::from(root.worker.on_configure(plugin_configuration_size))
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    with_root(context_id, (), Worker::on_tick);
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    with_root(context_id, (), |w| {
        w.on_http_call_response(token, body_size)
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    with((), |c| {
        // The host sends a stream's request headers once; a second call
        // would otherwise drop the first request's flight uncompleted.
        let Entry::Vacant(stream) = c.streams.entry(context_id) else {
            return;
        };
        let Some((root_id, root)) = root_of_new_stream(&mut c.roots) else {
            return;
        };
        if let Some(flight) = root.worker.on_request_headers() {
            stream.insert((root_id, flight));
        }
    });
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    with_stream(context_id, (), Worker::on_response_headers);
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _trailers: usize) -> u32 {
    with_stream(context_id, (), Worker::on_response_trailers);
    CONTINUE
}

/// A stream context is deleted once its stream is over: that is its end
/// for the filter (see the module doc). A root context goes with its
/// plugin.
#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    with((), |c| match c.streams.remove(&context_id) {
        Some((root, mut flight)) => {
            if let Some(worker) = c.worker(root) {
                worker.on_stream_end(&mut flight);
            }
        }
        None => {
            c.roots.remove(&context_id);
        }
    });
}
