//! Host calls this host does not implement.
//!
//! A module must still link (Envoy links every ABI function it knows), and a
//! call must never look like success: every such import answers the ABI's
//! `Unimplemented` status (12) and leaves a captured log line
//! `unimplemented host call: <name>` at Error level, so a test log shows it.
//!
//! Two layers: the gRPC calls and the other ABI 0.2.1 functions we knowingly
//! skip are defined with their ABI signatures; then any other import the
//! module declares (in any module namespace but `wasi_snapshot_preview1`,
//! which wasmtime-wasi serves) and the linker lacks is defined from the
//! import's own type. Functions with no result just log; results of other
//! types are zero.

use super::abi::{LogLevel, Status};
use super::logs::LogSource;
use super::state::VmState;
use wasmtime::{Caller, ExternType, FuncType, Linker, Module, Val, ValType};

/// ABI 0.2.1 calls deliberately left unimplemented, with their i32 arity.
pub const KNOWN_UNIMPLEMENTED: &[(&str, usize)] = &[
    ("proxy_grpc_call", 12),
    ("proxy_grpc_stream", 9),
    ("proxy_grpc_send", 4),
    ("proxy_grpc_cancel", 1),
    ("proxy_grpc_close", 1),
    ("proxy_get_configuration", 2),
    ("proxy_dispatch_http_call", 10),
    ("proxy_call_foreign_function_async", 6),
];

fn stub(
    engine: &wasmtime::Engine,
    linker: &mut Linker<VmState>,
    module: &str,
    name: &str,
    ty: FuncType,
) -> wasmtime::Result<()> {
    let label = if module == "env" {
        name.to_string()
    } else {
        format!("{module}::{name}")
    };
    let _ = engine;
    linker.func_new(
        module,
        name,
        ty,
        move |c: Caller<'_, VmState>, _params: &[Val], results: &mut [Val]| {
            c.data().log(
                LogLevel::Error,
                LogSource::Host,
                format!("unimplemented host call: {label}"),
            );
            for r in results.iter_mut() {
                *r = match r {
                    Val::I64(_) => Val::I64(0),
                    Val::F32(_) => Val::F32(0),
                    Val::F64(_) => Val::F64(0),
                    _ => Val::I32(Status::Unimplemented.code()),
                };
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// Defines the known-unimplemented ABI calls.
pub fn add_known(engine: &wasmtime::Engine, linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    for (name, arity) in KNOWN_UNIMPLEMENTED {
        let ty = FuncType::new(
            engine,
            std::iter::repeat_n(ValType::I32, *arity),
            [ValType::I32],
        );
        stub(engine, linker, "env", name, ty)?;
    }
    Ok(())
}

/// Defines every remaining function import of `module` the linker lacks.
/// Returns the names it stubbed.
pub fn add_missing(
    engine: &wasmtime::Engine,
    linker: &mut Linker<VmState>,
    module: &Module,
) -> wasmtime::Result<Vec<String>> {
    let mut stubbed = Vec::new();
    let missing: Vec<(String, String, FuncType)> = module
        .imports()
        .filter(|i| i.module() != "wasi_snapshot_preview1" && i.module() != "wasi_unstable")
        .filter_map(|i| match i.ty() {
            ExternType::Func(f) => Some((i.module().to_string(), i.name().to_string(), f)),
            _ => None,
        })
        .collect();
    for (m, n, ty) in missing {
        // Shadowing is off, so defining an existing name fails: that is how
        // "already implemented" is detected without a store.
        if stub(engine, linker, &m, &n, ty).is_ok() {
            stubbed.push(format!("{m}::{n}"));
        }
    }
    Ok(stubbed)
}
