//! The callbacks the host calls (proxy-wasm ABI 0.2.1 exports) and the
//! table of contexts they act on.
//!
//! Why not the SDK's dispatcher: it `panic!`s on a context id it does not
//! know and `unwrap`s `set_effective_context` before every HTTP-call
//! answer, and a panic traps the VM. Here an unknown context is ignored
//! and no host call is needed to dispatch (the host already calls into the
//! context an event is for). Only the callbacks the filter uses are
//! exported, so the host skips the rest (request bodies, network events…).

use super::Worker;
use crate::decision::InFlight;
use std::cell::RefCell;
use std::collections::HashMap;

/// The VM's contexts: root contexts (one per plugin sharing this VM) with
/// their worker state, and HTTP contexts with their routed request.
#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Worker>,
    /// HTTP context → (its root, the request routed on it).
    streams: HashMap<u32, (u32, Option<InFlight>)>,
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

/// A root context's worker and one of its streams, borrowed together.
fn with_stream<R>(
    context_id: u32,
    fallback: R,
    f: impl FnOnce(&mut Worker, &mut Option<InFlight>) -> R,
) -> R {
    with(None, |c| {
        let (root, flight) = c.streams.get_mut(&context_id)?;
        let worker = c.roots.get_mut(root)?;
        Some(f(worker, flight))
    })
    .unwrap_or(fallback)
}

fn with_root<R>(context_id: u32, fallback: R, f: impl FnOnce(&mut Worker) -> R) -> R {
    with(None, |c| c.roots.get_mut(&context_id).map(f)).unwrap_or(fallback)
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
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    with((), |c| {
        if parent_id == 0 {
            c.roots.insert(context_id, Worker::new());
        } else if c.roots.contains_key(&parent_id) {
            c.streams.insert(context_id, (parent_id, None));
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(context_id: u32, _vm_configuration_size: usize) -> u32 {
    with_root(context_id, 1, |w| u32::from(w.on_vm_start()))
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> u32 {
    with_root(context_id, 0, |w| {
        u32::from(w.on_configure(plugin_configuration_size))
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
    with_stream(context_id, (), |w, flight| *flight = w.on_request_headers());
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    with_stream(context_id, (), |w, flight| {
        if let Some(flight) = flight {
            w.on_response_headers(flight);
        }
    });
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _trailers: usize) -> u32 {
    with_stream(context_id, (), |w, flight| {
        if let Some(flight) = flight {
            w.on_response_trailers(flight);
        }
    });
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    with_stream(context_id, (), |w, flight| {
        if let Some(mut flight) = flight.take() {
            w.on_log(&mut flight);
        }
    });
}

/// The stream may be torn down at once: the filter holds nothing back.
#[no_mangle]
pub extern "C" fn proxy_on_done(_context_id: u32) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    with((), |c| {
        if c.streams.remove(&context_id).is_none() {
            c.roots.remove(&context_id);
        }
    });
}
