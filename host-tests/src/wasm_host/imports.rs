//! The `env.proxy_*` host functions of ABI 0.2.1.
//!
//! Signatures follow the proxy-wasm Rust SDK 0.2.5 `hostcalls.rs` (pointers
//! and sizes are `i32` in wasm32; metric values `i64`), behaviour follows
//! proxy-wasm-cpp-host `src/exports.cc` and Envoy's
//! `source/extensions/common/wasm/context.cc`; each function says where it
//! deviates. Calls act on the *effective* context (`proxy_set_effective_context`)
//! or else the context the host is calling into. Anything not defined here
//! is linked by [`super::unimplemented`] and answers `Unimplemented`.

use super::abi::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};
use super::http_call::{HttpCall, HttpReply, PendingCall};
use super::logs::LogSource;
use super::memory::{copy_out, read, read_string, write_u32, write_u64, HostResult};
use super::pairs::{decode_pairs, HeaderMap};
use super::properties::{resolve, split_path, PropValue};
use super::shared_data::QueueOwner;
use super::state::{lock, ForeignCall, LocalResponse, Phase, StreamState, VmState};
use std::collections::BTreeMap;
use std::time::Duration;
use wasmtime::{Caller, Linker};

fn status(r: HostResult<()>) -> i32 {
    match r {
        Ok(()) => Status::Ok.code(),
        Err(s) => s.code(),
    }
}

type C<'a> = Caller<'a, VmState>;

/// The status a test made this import answer instead of doing its work
/// ([`super::Host::fail_call`]), if any.
fn injected(c: &C<'_>, name: &str) -> Option<i32> {
    lock(&c.data().shared.failing_calls)
        .get(name)
        .map(|s| s.code())
}

/// The HTTP stream of the acting context, if it is one.
fn stream(state: &VmState) -> Option<&StreamState> {
    state.streams.get(&state.acting_context())
}

fn stream_mut(state: &mut VmState) -> Option<&mut StreamState> {
    let id = state.acting_context();
    state.streams.get_mut(&id)
}

/// A readable map, or `None` where Envoy has none (`getConstMap` null).
fn map_ref(state: &VmState, ty: MapType) -> Option<&HeaderMap> {
    if let (MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers, Some(r)) =
        (ty, state.http_response.as_ref())
    {
        return Some(if ty == MapType::HttpCallResponseHeaders {
            &r.headers
        } else {
            &r.trailers
        });
    }
    let s = stream(state)?;
    // In on_log (Done) Envoy exposes the access-log copies of the maps.
    let log = s.phase == Phase::Done;
    match ty {
        MapType::RequestHeaders if s.request_headers_open || log => Some(&s.request_headers),
        MapType::RequestTrailers if s.request_trailers_open => Some(&s.request_trailers),
        MapType::ResponseHeaders if s.response_headers_open || log => Some(&s.response_headers),
        MapType::ResponseTrailers if s.response_trailers_open || log => Some(&s.response_trailers),
        _ => None,
    }
}

/// A writable map (Envoy `getMap`: only the stream's own, while open).
fn map_mut(state: &mut VmState, ty: MapType) -> Option<&mut HeaderMap> {
    let s = stream_mut(state)?;
    match ty {
        MapType::RequestHeaders if s.request_headers_open => Some(&mut s.request_headers),
        MapType::RequestTrailers if s.request_trailers_open => Some(&mut s.request_trailers),
        MapType::ResponseHeaders if s.response_headers_open => Some(&mut s.response_headers),
        MapType::ResponseTrailers if s.response_trailers_open => Some(&mut s.response_trailers),
        _ => None,
    }
}

/// Envoy clears the route cache itself when request headers change.
fn note_request_mutation(state: &mut VmState, ty: MapType) {
    if ty == MapType::RequestHeaders {
        if let Some(s) = stream_mut(state) {
            s.route_cache_clears += 1;
        }
    }
}

fn map_type(code: i32) -> HostResult<MapType> {
    MapType::from_code(code).ok_or(Status::BadArgument)
}

fn mutate_map(caller: &mut C<'_>, ty: i32, f: impl FnOnce(&mut HeaderMap)) -> HostResult<()> {
    let ty = map_type(ty)?;
    let state = caller.data_mut();
    let map = map_mut(state, ty).ok_or(Status::BadArgument)?;
    f(map);
    note_request_mutation(state, ty);
    Ok(())
}

/// Envoy's `RequestWrapper` etc., built from the stream's headers.
fn stream_property(s: &StreamState, top: &str, start_nanos: u64) -> Option<PropValue> {
    let header_map = |m: &HeaderMap| {
        let mut out: BTreeMap<String, PropValue> = BTreeMap::new();
        for (k, _) in m.entries() {
            out.entry(k.clone())
                .or_insert_with(|| PropValue::String(m.get_all(k).join(",")));
        }
        PropValue::Map(out)
    };
    let h = |k: &str| s.request_headers.get(k);
    let mut fields: BTreeMap<String, PropValue> = BTreeMap::new();
    let mut put = |k: &str, v: Option<PropValue>| {
        if let Some(v) = v {
            fields.insert(k.to_string(), v);
        }
    };
    match top {
        "request" => {
            let path = h(":path");
            put("path", path.clone().map(PropValue::String));
            put(
                "url_path",
                path.as_deref()
                    .map(|p| PropValue::String(p.split('?').next().unwrap_or("").to_string())),
            );
            put(
                "query",
                path.as_deref()
                    .and_then(|p| p.split_once('?'))
                    .map(|(_, q)| PropValue::String(q.to_string())),
            );
            put("host", h(":authority").map(PropValue::String));
            put("scheme", h(":scheme").map(PropValue::String));
            put("method", h(":method").map(PropValue::String));
            put("referer", h("referer").map(PropValue::String));
            put("useragent", h("user-agent").map(PropValue::String));
            put("id", h("x-request-id").map(PropValue::String));
            put("protocol", Some(PropValue::String("HTTP/1.1".into())));
            put("time", Some(PropValue::Timestamp(start_nanos as i64)));
            put("headers", Some(header_map(&s.request_headers)));
        }
        "response" => {
            if s.response_headers.is_empty() && s.local_response.is_none() {
                return None;
            }
            let code = s
                .response_headers
                .get(":status")
                .and_then(|c| c.parse::<i64>().ok())
                .or(s.local_response.as_ref().map(|l| i64::from(l.status)));
            put("code", code.map(PropValue::Int));
            put("headers", Some(header_map(&s.response_headers)));
            put("trailers", Some(header_map(&s.response_trailers)));
        }
        _ => return None,
    }
    Some(PropValue::Map(fields))
}

/// Envoy's `Context::getProperty` for the acting context.
fn get_property(state: &VmState, raw_path: &[u8]) -> HostResult<Vec<u8>> {
    let segs = split_path(raw_path)?;
    let trimmed = raw_path.strip_suffix(&[0]).unwrap_or(raw_path);
    let stream = stream(state);
    if let Some(s) = stream {
        if let Some(v) = s.filter_state.get(trimmed) {
            return Ok(v.clone());
        }
        // Test-provided attributes by dotted path, e.g. "source.address".
        if let Some(v) = s.attributes.extra.get(&segs.join(".")) {
            return Ok(v.serialize());
        }
    }
    let plugin = &state.plugin;
    let top = segs[0].as_str();
    let root: PropValue = match top {
        "node" if plugin.legacy_node => plugin.node.to_value(),
        // Envoy 1.40 serves the node under the xDS attributes.
        "xds" => {
            let mut fields = match plugin.extra_properties.get("xds") {
                Some(PropValue::Map(m)) => m.clone(),
                _ => BTreeMap::new(),
            };
            fields
                .entry("node".to_string())
                .or_insert_with(|| plugin.node.to_value());
            PropValue::Map(fields)
        }
        "plugin_name" => PropValue::String(plugin.plugin_name.clone()),
        "plugin_root_id" => PropValue::String(plugin.root_id.clone()),
        "plugin_vm_id" => PropValue::String(plugin.vm_id.clone()),
        "request" | "response" => {
            let s = stream.ok_or(Status::NotFound)?;
            stream_property(s, top, s.start_nanos).ok_or(Status::NotFound)?
        }
        _ => {
            if let Some(s) = stream {
                // A whole extra object: "source" with "source.address" etc.
                let prefix = format!("{top}.");
                let sub: BTreeMap<String, PropValue> = s
                    .attributes
                    .extra
                    .iter()
                    .filter_map(|(k, v)| {
                        k.strip_prefix(&prefix)
                            .map(|rest| (rest.to_string(), v.clone()))
                    })
                    .collect();
                if !sub.is_empty() {
                    let v = PropValue::Map(sub);
                    return Ok(resolve(&v, &segs[1..])?.serialize());
                }
            }
            plugin
                .extra_properties
                .get(top)
                .cloned()
                .ok_or(Status::NotFound)?
        }
    };
    Ok(resolve(&root, &segs[1..])?.serialize())
}

fn buffer(state: &VmState, ty: BufferType) -> HostResult<Vec<u8>> {
    match ty {
        BufferType::VmConfiguration => Ok(state.vm_config.clone()),
        BufferType::PluginConfiguration => state.config_buffer.clone().ok_or(Status::NotFound),
        BufferType::HttpCallResponseBody => state
            .http_response
            .as_ref()
            .map(|r| r.body.clone())
            .ok_or(Status::NotFound),
        BufferType::HttpRequestBody => match stream(state) {
            Some(s) if s.request_body_open => Ok(s.request_body.clone()),
            _ => Err(Status::NotFound),
        },
        BufferType::HttpResponseBody => match stream(state) {
            Some(s) if s.response_body_open => Ok(s.response_body.clone()),
            _ => Err(Status::NotFound),
        },
        _ => Err(Status::NotFound),
    }
}

/// Adds every implemented `env.proxy_*` function to `linker`.
pub fn add_to_linker(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    add_logging_and_time(linker)?;
    add_buffers(linker)?;
    add_header_maps(linker)?;
    add_properties(linker)?;
    add_shared_data(linker)?;
    add_stream_control(linker)?;
    add_replies_and_contexts(linker)?;
    add_foreign_functions(linker)?;
    add_metrics(linker)?;
    add_http_calls(linker)?;
    Ok(())
}

/// Adds the logging, clock and tick timer imports.
fn add_logging_and_time(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_log") {
                return s;
            }
            status((|| {
                let level = LogLevel::from_code(level).ok_or(Status::BadArgument)?;
                let msg = read(&mut c, ptr, len)?;
                c.data().log(
                    level,
                    LogSource::Module,
                    String::from_utf8_lossy(&msg).into_owned(),
                );
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ret: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_log_level") {
                return s;
            }
            let level = *lock(&c.data().shared.log_level) as u32;
            status(write_u32(&mut c, ret, level))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_current_time_nanoseconds") {
                return s;
            }
            c.data()
                .shared
                .clock_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let now = c.data().shared.clock.now_nanos();
            status(write_u64(&mut c, ret, now))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_set_tick_period_milliseconds") {
                return s;
            }
            let s = c.data_mut();
            s.tick_period_ms = period as u32;
            s.next_tick_at = if period == 0 {
                None
            } else {
                Some(s.shared.clock.now_nanos() + u64::from(period as u32) * 1_000_000)
            };
            Status::Ok.code()
        },
    )?;
    Ok(())
}

/// Adds the buffer imports (bodies, call answers, configuration).
fn add_buffers(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, ty: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_buffer_bytes") {
                return s;
            }
            status((|| {
                let ty = BufferType::from_code(ty).ok_or(Status::BadArgument)?;
                let data = buffer(c.data(), ty)?;
                let (start, max) = (start as u32 as usize, max as u32 as usize);
                start.checked_add(max).ok_or(Status::BadArgument)?;
                let slice = if start >= data.len() {
                    &[][..]
                } else {
                    &data[start..data.len().min(start + max)]
                };
                copy_out(&mut c, slice, ret_ptr, ret_size)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, ty: i32, len_ptr: i32, flags_ptr: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_buffer_status") {
                return s;
            }
            status((|| {
                let ty = BufferType::from_code(ty).ok_or(Status::BadArgument)?;
                let len = buffer(c.data(), ty)?.len();
                write_u32(&mut c, len_ptr, len as u32)?;
                write_u32(&mut c, flags_ptr, 0)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, ty: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_set_buffer_bytes") {
                return s;
            }
            status((|| {
                let ty = BufferType::from_code(ty).ok_or(Status::BadArgument)?;
                let data = read(&mut c, ptr, len)?;
                let s = stream_mut(c.data_mut()).ok_or(Status::NotFound)?;
                let buf = match ty {
                    BufferType::HttpRequestBody if s.request_body_open => &mut s.request_body,
                    BufferType::HttpResponseBody if s.response_body_open => &mut s.response_body,
                    _ => return Err(Status::NotFound),
                };
                // Envoy `Buffer::copyFrom`: prepend, replace all, or append.
                let (start, size) = (start as u32 as usize, size as u32 as usize);
                if start == 0 && size == 0 {
                    let mut v = data;
                    v.extend_from_slice(buf);
                    *buf = v;
                } else if start == 0 && size >= buf.len() {
                    *buf = data;
                } else if start >= buf.len() {
                    buf.extend_from_slice(&data);
                } else {
                    return Err(Status::BadArgument);
                }
                Ok(())
            })())
        },
    )?;
    Ok(())
}

/// Adds the header and trailer map imports.
fn add_header_maps(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, ty: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_header_map_pairs") {
                return s;
            }
            status((|| {
                let ty = map_type(ty)?;
                // Envoy returns an empty map, not an error, when the map is absent.
                let bytes = map_ref(c.data(), ty)
                    .filter(|m| !m.is_empty())
                    .map(|m| m.encode())
                    .unwrap_or_default();
                copy_out(&mut c, &bytes, ret_ptr, ret_size)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, ty: i32, ptr: i32, len: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_set_header_map_pairs") {
                return s;
            }
            status((|| {
                let bytes = read(&mut c, ptr, len)?;
                let pairs = decode_pairs(&bytes).map_err(|_| Status::BadArgument)?;
                mutate_map(&mut c, ty, |m| m.set_all(pairs))
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, ty: i32, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_header_map_value") {
                return s;
            }
            status((|| {
                let ty = map_type(ty)?;
                let key = read_string(&mut c, kp, kl)?;
                let map = map_ref(c.data(), ty).ok_or(Status::BadArgument)?;
                let value = map.get_bytes(&key).ok_or(Status::NotFound)?.to_vec();
                copy_out(&mut c, &value, ret_ptr, ret_size)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, ty: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_add_header_map_value") {
                return s;
            }
            status((|| {
                let key = read_string(&mut c, kp, kl)?;
                let value = read(&mut c, vp, vl)?;
                mutate_map(&mut c, ty, |m| m.add(&key, &value))
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, ty: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_replace_header_map_value") {
                return s;
            }
            status((|| {
                let key = read_string(&mut c, kp, kl)?;
                let value = read(&mut c, vp, vl)?;
                mutate_map(&mut c, ty, |m| m.replace(&key, &value))
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, ty: i32, kp: i32, kl: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_remove_header_map_value") {
                return s;
            }
            status((|| {
                let key = read_string(&mut c, kp, kl)?;
                mutate_map(&mut c, ty, |m| m.remove(&key))
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, ty: i32, ret: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_header_map_size") {
                return s;
            }
            status((|| {
                let ty = map_type(ty)?;
                let size = map_ref(c.data(), ty)
                    .ok_or(Status::BadArgument)?
                    .encode()
                    .len();
                write_u32(&mut c, ret, size as u32)
            })())
        },
    )?;
    Ok(())
}

/// Adds the property imports.
fn add_properties(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_property") {
                return s;
            }
            status((|| {
                let path = read(&mut c, pp, pl)?;
                let value = get_property(c.data(), &path)?;
                copy_out(&mut c, &value, ret_ptr, ret_size)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_set_property") {
                return s;
            }
            status((|| {
                let path = read(&mut c, pp, pl)?;
                let value = read(&mut c, vp, vl)?;
                let path = path.strip_suffix(&[0]).map(|p| p.to_vec()).unwrap_or(path);
                let s = stream_mut(c.data_mut()).ok_or(Status::NotFound)?;
                s.filter_state.insert(path, value);
                Ok(())
            })())
        },
    )?;
    Ok(())
}

/// Adds the shared data and shared queue imports.
fn add_shared_data(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32, cas_ptr: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_shared_data") {
                return s;
            }
            status((|| {
                let key = read_string(&mut c, kp, kl)?;
                let entry = {
                    let s = c.data();
                    let store = lock(&s.shared.shared_data);
                    store.get(&s.plugin.vm_id, &key)?
                };
                copy_out(&mut c, &entry.value, ret_ptr, ret_size)?;
                write_u32(&mut c, cas_ptr, entry.cas)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_set_shared_data") {
                return s;
            }
            status((|| {
                let key = read_string(&mut c, kp, kl)?;
                let value = read(&mut c, vp, vl)?;
                let s = c.data();
                let mut store = lock(&s.shared.shared_data);
                store
                    .set(&s.plugin.vm_id, &key, &value, cas as u32)
                    .map(|_| ())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, ret: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_register_shared_queue") {
                return s;
            }
            status((|| {
                let name = read_string(&mut c, np, nl)?;
                let token = {
                    let s = c.data();
                    let owner = QueueOwner {
                        worker: s.worker,
                        context_id: s.root_context_id,
                    };
                    lock(&s.shared.queues).register(&s.plugin.vm_id, &name, owner)
                };
                write_u32(&mut c, ret, token)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_resolve_shared_queue") {
                return s;
            }
            status((|| {
                let vm_id = read_string(&mut c, vp, vl)?;
                let name = read_string(&mut c, np, nl)?;
                let token = lock(&c.data().shared.queues).resolve(&vm_id, &name)?;
                write_u32(&mut c, ret, token)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, token: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_dequeue_shared_queue") {
                return s;
            }
            status((|| {
                let item = lock(&c.data().shared.queues).dequeue(token as u32)?;
                copy_out(&mut c, &item, ret_ptr, ret_size)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, token: i32, vp: i32, vl: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_enqueue_shared_queue") {
                return s;
            }
            status((|| {
                let value = read(&mut c, vp, vl)?;
                lock(&c.data().shared.queues).enqueue(token as u32, &value)
            })())
        },
    )?;
    Ok(())
}

/// Adds the stream control imports: continue, close, clear the route cache.
fn add_stream_control(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    fn continue_stream(s: &mut VmState, ty: StreamType) -> HostResult<()> {
        let st = stream_mut(s).ok_or(Status::NotFound)?;
        match ty {
            StreamType::HttpRequest => {
                st.continued_request += 1;
                // Envoy drops the request maps once the request continues.
                st.request_headers_open = false;
                st.request_trailers_open = false;
                st.request_body_open = false;
            }
            StreamType::HttpResponse => st.continued_response += 1,
            _ => return Err(Status::BadArgument),
        }
        Ok(())
    }
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, ty: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_continue_stream") {
                return s;
            }
            status((|| {
                let ty = StreamType::from_code(ty).ok_or(Status::BadArgument)?;
                continue_stream(c.data_mut(), ty)
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_continue_request", |mut c: C<'_>| -> i32 {
        if let Some(s) = injected(&c, "proxy_continue_request") {
            return s;
        }
        status(continue_stream(c.data_mut(), StreamType::HttpRequest))
    })?;
    linker.func_wrap("env", "proxy_continue_response", |mut c: C<'_>| -> i32 {
        if let Some(s) = injected(&c, "proxy_continue_response") {
            return s;
        }
        status(continue_stream(c.data_mut(), StreamType::HttpResponse))
    })?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C<'_>, ty: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_close_stream") {
                return s;
            }
            status((|| {
                let ty = StreamType::from_code(ty).ok_or(Status::BadArgument)?;
                if let Some(st) = stream_mut(c.data_mut()) {
                    match ty {
                        StreamType::HttpRequest => st.closed_request = true,
                        StreamType::HttpResponse => st.closed_response = true,
                        _ => {}
                    }
                }
                Ok(())
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_clear_route_cache", |mut c: C<'_>| -> i32 {
        if let Some(s) = injected(&c, "proxy_clear_route_cache") {
            return s;
        }
        if let Some(st) = stream_mut(c.data_mut()) {
            st.route_cache_clears += 1;
            st.explicit_route_cache_clears += 1;
        }
        Status::Ok.code()
    })?;
    Ok(())
}

/// Adds the local reply, effective context, `proxy_done` and status imports.
fn add_replies_and_contexts(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> i32 {
            if let Some(s) = injected(&c, "proxy_send_local_response") {
                return s;
            }
            status((|| {
                let details = String::from_utf8_lossy(&read(&mut c, dp, dl)?).into_owned();
                let body = read(&mut c, bp, bl)?;
                let headers =
                    decode_pairs(&read(&mut c, hp, hl)?).map_err(|_| Status::BadArgument)?;
                let headers = headers
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.to_ascii_lowercase(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect();
                let st = stream_mut(c.data_mut()).ok_or(Status::NotFound)?;
                st.local_response = Some(LocalResponse {
                    status: code as u32,
                    details,
                    body,
                    headers,
                    grpc_status: grpc,
                });
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_set_effective_context") {
                return s;
            }
            let s = c.data_mut();
            let id = id as u32;
            if id == s.root_context_id || s.streams.contains_key(&id) {
                s.effective_context = Some(id);
                Status::Ok.code()
            } else {
                Status::BadArgument.code()
            }
        },
    )?;
    linker.func_wrap("env", "proxy_done", |mut c: C<'_>| -> i32 {
        if let Some(s) = injected(&c, "proxy_done") {
            return s;
        }
        c.data_mut().done_called = true;
        Status::Ok.code()
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_status") {
                return s;
            }
            status((|| {
                let (code, msg) = c.data().status.clone();
                write_u32(&mut c, code_ptr, code)?;
                copy_out(&mut c, msg.as_bytes(), ret_ptr, ret_size)
            })())
        },
    )?;
    Ok(())
}

/// Adds the foreign function imports.
fn add_foreign_functions(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, ap: i32, al: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_call_foreign_function") {
                return s;
            }
            status((|| {
                let name = read_string(&mut c, np, nl)?;
                let args = read(&mut c, ap, al)?;
                let s = c.data_mut();
                let known = lock(&s.shared.foreign_functions).contains(&name);
                lock(&s.shared.foreign_calls).push(ForeignCall {
                    worker: s.worker,
                    context_id: s.acting_context(),
                    name: name.clone(),
                    args,
                });
                if !known {
                    // Envoy: an unregistered foreign function is NotFound.
                    return Err(Status::NotFound);
                }
                if name == "clear_route_cache" {
                    if let Some(st) = stream_mut(s) {
                        st.route_cache_clears += 1;
                        st.explicit_route_cache_clears += 1;
                    }
                }
                if ret_ptr != 0 && ret_size != 0 {
                    copy_out(&mut c, &[], ret_ptr, ret_size)?;
                }
                Ok(())
            })())
        },
    )?;
    Ok(())
}

/// Adds the metric imports.
fn add_metrics(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, ty: i32, np: i32, nl: i32, ret: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_define_metric") {
                return s;
            }
            status((|| {
                let kind = MetricType::from_code(ty).ok_or(Status::BadArgument)?;
                let name = read_string(&mut c, np, nl)?;
                let id = {
                    let s = c.data_mut();
                    let mut metrics = lock(&s.shared.metrics);
                    s.metric_ids.define(&mut metrics, kind, &name)
                };
                write_u32(&mut c, ret, id)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C<'_>, id: i32, offset: i64| -> i32 {
            if let Some(s) = injected(&c, "proxy_increment_metric") {
                return s;
            }
            let s = c.data();
            status(
                s.metric_ids
                    .increment(&mut lock(&s.shared.metrics), id as u32, offset),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> i32 {
            if let Some(s) = injected(&c, "proxy_record_metric") {
                return s;
            }
            let s = c.data();
            status(
                s.metric_ids
                    .record(&mut lock(&s.shared.metrics), id as u32, value as u64),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ret: i32| -> i32 {
            if let Some(s) = injected(&c, "proxy_get_metric") {
                return s;
            }
            status((|| {
                let value = {
                    let s = c.data();
                    s.metric_ids.get(&lock(&s.shared.metrics), id as u32)?
                };
                write_u64(&mut c, ret, value)
            })())
        },
    )?;
    Ok(())
}

/// Adds the HTTP call imports.
fn add_http_calls(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout_ms: i32,
         ret: i32|
         -> i32 {
            if let Some(s) = injected(&c, "proxy_http_call") {
                return s;
            }
            status((|| {
                let upstream = read_string(&mut c, up, ul)?;
                let headers =
                    decode_pairs(&read(&mut c, hp, hl)?).map_err(|_| Status::BadArgument)?;
                let body = read(&mut c, bp, bl)?;
                let trailers =
                    decode_pairs(&read(&mut c, tp, tl)?).map_err(|_| Status::BadArgument)?;
                write_u32(&mut c, ret, 0)?;
                if timeout_ms < 0 {
                    return Err(Status::BadArgument);
                }
                let headers = HeaderMap::from_pairs(headers);
                if headers.get(":path").is_none()
                    || headers.get(":method").is_none()
                    || headers.get(":authority").is_none()
                {
                    return Err(Status::BadArgument);
                }
                let token = {
                    let s = c.data_mut();
                    if let Some(known) = lock(&s.shared.known_clusters).as_ref() {
                        if !known.contains(&upstream) {
                            return Err(Status::BadArgument);
                        }
                    }
                    let now = s.shared.clock.now_nanos();
                    // Pick the first matching rule.
                    let rule = {
                        let mut rules = lock(&s.shared.http_rules);
                        let idx = rules.iter().position(|r| {
                            r.upstream.as_deref().is_none_or(|u| u == upstream)
                                && r.times != Some(0)
                        });
                        idx.map(|i| {
                            let r = &mut rules[i];
                            if let Some(t) = r.times.as_mut() {
                                *t -= 1;
                            }
                            r.clone()
                        })
                    };
                    if let Some(HttpReply::Reject(st)) = rule.as_ref().map(|r| &r.reply) {
                        return Err(*st);
                    }
                    s.next_http_token = s.next_http_token.wrapping_add(1).max(1);
                    let token = s.next_http_token;
                    let call = HttpCall {
                        worker: s.worker,
                        token,
                        context_id: s.root_context_id,
                        upstream,
                        headers,
                        body,
                        trailers: HeaderMap::from_pairs(trailers),
                        timeout: Duration::from_millis(timeout_ms as u64),
                        dispatched_at: now,
                    };
                    let reply = rule.and_then(|r| match r.reply {
                        HttpReply::NoReply => None,
                        reply => Some((now + r.delay.as_nanos() as u64, reply)),
                    });
                    let timeout_at = (timeout_ms > 0).then(|| now + timeout_ms as u64 * 1_000_000);
                    lock(&s.shared.http_calls).push(call.clone());
                    lock(&s.shared.pending_calls).push(PendingCall {
                        call,
                        reply,
                        timeout_at,
                    });
                    token
                };
                write_u32(&mut c, ret, token)
            })())
        },
    )?;
    Ok(())
}
