//! The proxy-wasm ABI 0.2.1 host calls the filter makes, declared here.
//!
//! Why not the SDK's `hostcalls`: its wrappers `panic!` on any status they
//! do not expect (`get_map_value_bytes`, `set_map_value_bytes`,
//! `get_shared_data`, `add_map_value_bytes`, …), and its dispatcher
//! `unwrap`s `set_effective_context`. A panic traps the VM, and a trapped VM
//! takes the listener's traffic with it (or, fail-open, silently ends
//! steering). So the filter declares the imports itself and every wrapper
//! here returns the host's status as a `Result`: the layer above turns any
//! failure into "decide nothing, let the mesh route", and every failure is
//! counted ([`take_errors`], exported as `tideway.host_call_errors`).
//! `NotFound` from a read is not a failure: it is how the host says a
//! header, property or key is absent.
//!
//! Buffers the host returns were allocated through our
//! `proxy_on_memory_allocate` (a `Vec<u8>` with capacity == length), so
//! rebuilding that `Vec` hands ownership back to Rust.

use std::cell::Cell;

/// A status the host answered other than `Ok` (proxy-wasm `WasmResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

/// `WasmResult::NotFound`.
const NOT_FOUND: u32 = 1;
/// `WasmResult::CasMismatch`.
pub const CAS_MISMATCH: u32 = 8;

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            5 => "BadExpression",
            6 => "InvalidMemoryAccess",
            7 => "Empty",
            8 => "CasMismatch",
            9 => "ResultMismatch",
            10 => "InternalFailure",
            11 => "BrokenConnection",
            12 => "Unimplemented",
            _ => "unknown status",
        };
        write!(f, "{name} ({})", self.0)
    }
}

thread_local! {
    /// Failed host calls since the last [`take_errors`].
    static ERRORS: Cell<u32> = const { Cell::new(0) };
}

/// Failed host calls since the last call (and reset the count).
pub fn take_errors() -> u32 {
    ERRORS.with(|e| e.replace(0))
}

fn check(status: u32) -> Result<(), HostError> {
    if status == 0 {
        Ok(())
    } else {
        ERRORS.with(|e| e.set(e.get().saturating_add(1)));
        Err(HostError(status))
    }
}

/// A read's status: `NotFound` is `Ok(None)`, not an error.
fn check_read(status: u32) -> Result<bool, HostError> {
    match status {
        0 => Ok(true),
        NOT_FOUND => Ok(false),
        other => check(other).map(|()| false),
    }
}

/// Proxy-wasm map types (`proxy_*_header_map_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    HttpCallResponseHeaders = 6,
}

/// Proxy-wasm log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Proxy-wasm metric kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
}

/// `BufferType::HttpCallResponseBody`.
const HTTP_CALL_RESPONSE_BODY: u32 = 4;
/// `BufferType::PluginConfiguration`.
const PLUGIN_CONFIGURATION: u32 = 7;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, buf_len: usize) -> i32;
}

/// Take ownership of a buffer the host allocated through our allocator.
///
/// # Safety
/// `data`/`size` must come from a host call that just returned `Ok` and
/// describe a buffer from `proxy_on_memory_allocate` (or be null/0).
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the caller's contract; our allocator makes Vecs with
    // capacity == length.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// A call returning a buffer: `Ok(None)` on `NotFound`.
fn read_buffer(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let found = check_read(call(&mut data, &mut size))?;
    // SAFETY: the host returned Ok, so data/size describe its buffer.
    Ok(found.then(|| unsafe { owned(data, size) }))
}

pub fn log(level: Level, message: &str) {
    // SAFETY: pointer and length describe a live string.
    let _ = check(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) });
}

/// Unix time in nanoseconds.
pub fn now_ns() -> Result<u64, HostError> {
    let mut t = 0u64;
    // SAFETY: `t` is a live u64 for the host to write.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn set_tick_period_ms(period: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// The plugin configuration (`on_configure`).
pub fn plugin_configuration(size: usize) -> Result<Vec<u8>, HostError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: out-pointers are live locals (see `read_buffer`).
    read_buffer(|d, s| unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, d, s) })
        .map(Option::unwrap_or_default)
}

/// The body of the HTTP-call answer being delivered (`size` bytes, as
/// `on_http_call_response` announced).
pub fn http_call_response_body(size: usize) -> Result<Vec<u8>, HostError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: out-pointers are live locals (see `read_buffer`).
    read_buffer(|d, s| unsafe { proxy_get_buffer_bytes(HTTP_CALL_RESPONSE_BODY, 0, size, d, s) })
        .map(Option::unwrap_or_default)
}

/// Every header of `map`, serialised (see `header_map`), in one call.
pub fn header_map_pairs(map: Map) -> Result<Vec<u8>, HostError> {
    // SAFETY: out-pointers are live locals (see `read_buffer`).
    read_buffer(|d, s| unsafe { proxy_get_header_map_pairs(map as u32, d, s) })
        .map(Option::unwrap_or_default)
}

/// One header's value; `None` when absent.
pub fn header(map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    // SAFETY: `name` is live for the call; out-pointers are live locals.
    read_buffer(|d, s| unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), d, s)
    })
}

/// Add a header value (the header was absent: spares Envoy a lookup).
pub fn add_header(map: Map, name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live slices for the call.
    check(unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Replace every value of a header.
pub fn replace_header(map: Map, name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live slices for the call.
    check(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: Map, name: &str) -> Result<(), HostError> {
    // SAFETY: pointer and length describe a live string for the call.
    check(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property by path; `None` when absent.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    // The ABI's path: segments each followed by a NUL.
    let mut encoded = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for segment in path {
        encoded.extend_from_slice(segment.as_bytes());
        encoded.push(0);
    }
    // SAFETY: `encoded` is live for the call; out-pointers are live locals.
    read_buffer(|d, s| unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), d, s) })
}

/// A shared-data value and its CAS token; `None` when absent.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    let mut cas = 0u32;
    // SAFETY: `key` and `cas` are live for the call; out-pointers are
    // live locals.
    let value = read_buffer(|d, s| unsafe {
        proxy_get_shared_data(key.as_ptr(), key.len(), d, s, &mut cas)
    })?;
    Ok(value.map(|v| (v, cas)))
}

/// Write shared data if `cas` still matches (0: unconditionally).
/// `Err(HostError(CAS_MISMATCH))` is the expected race, not counted.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live slices for the call.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    if status == CAS_MISMATCH {
        return Err(HostError(CAS_MISMATCH));
    }
    check(status)
}

pub fn define_metric(kind: MetricKind, name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: `name` and `id` are live for the call.
    check(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    check(unsafe { proxy_record_metric(id, value) })
}

/// Dispatch an HTTP call to an Envoy cluster; the token its answer comes
/// back with (`on_http_call_response`).
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, HostError> {
    let pairs = crate::header_map::serialize_pairs(headers);
    let mut token = 0u32;
    // SAFETY: every pointer and length describes a live slice for the
    // call (empty trailers: a null pointer with length 0).
    check(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            pairs.as_ptr(),
            pairs.len(),
            body.as_ptr(),
            body.len(),
            std::ptr::null(),
            0,
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Fill `buf` from the host's entropy (WASI `random_get`). `false`: the
/// host had none to give.
pub fn random(buf: &mut [u8]) -> bool {
    // SAFETY: the pointer and length describe a live, writable buffer.
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    if errno != 0 {
        ERRORS.with(|e| e.set(e.get().saturating_add(1)));
    }
    errno == 0
}

/// The allocator the host calls to hand us buffers (`malloc` in the ABI's
/// terms): an exactly sized boxed slice, which [`owned`] takes back as a
/// `Vec` with capacity == length.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buf: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: MaybeUninit needs no initialisation; the host writes it.
    unsafe { buf.set_len(size) };
    Box::into_raw(buf.into_boxed_slice()).cast::<u8>()
}

/// The ABI version this module speaks: the host looks for this export.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}
