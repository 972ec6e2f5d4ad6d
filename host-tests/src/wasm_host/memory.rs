//! Guest memory access for host calls.
//!
//! Every pointer and size comes from the module, so every access is bounds
//! checked and a bad one is `InvalidMemoryAccess` (what proxy-wasm-cpp-host
//! returns when `getMemory`/`setWord` fail), never a host panic. Values the
//! host returns are copied into memory the module allocates through its
//! exported allocator (`malloc`, or `proxy_on_memory_allocate`), and their
//! address and size are written to the pointers the module passed — cpp-host's
//! `copyToPointerSize`, which writes a null pointer and size 0 for an empty
//! value without allocating.

use super::abi::Status;
use super::state::VmState;
use wasmtime::{Caller, Extern, Memory};

/// A host-call result: `Err` becomes the status handed to the module.
pub type HostResult<T> = Result<T, Status>;

fn memory(caller: &mut Caller<'_, VmState>) -> HostResult<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(Status::InvalidMemoryAccess),
    }
}

/// Reads `len` bytes at `ptr`. A null pointer with length 0 is an empty slice.
pub fn read(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> HostResult<Vec<u8>> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = memory(caller)?;
    let data = mem.data(&*caller);
    let end = ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    data.get(ptr..end)
        .map(|s| s.to_vec())
        .ok_or(Status::InvalidMemoryAccess)
}

/// Reads a UTF-8 string (`BadArgument` if it is not UTF-8).
pub fn read_string(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> HostResult<String> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| Status::BadArgument)
}

/// Writes bytes at `ptr`.
pub fn write(caller: &mut Caller<'_, VmState>, ptr: i32, bytes: &[u8]) -> HostResult<()> {
    let ptr = ptr as u32 as usize;
    let mem = memory(caller)?;
    let data = mem.data_mut(&mut *caller);
    let end = ptr
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    data.get_mut(ptr..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32(caller: &mut Caller<'_, VmState>, ptr: i32, value: u32) -> HostResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, VmState>, ptr: i32, value: u64) -> HostResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Allocates `size` bytes in the module. Fails if the module exports no
/// allocator, traps in it, or returns null.
pub fn alloc(caller: &mut Caller<'_, VmState>, size: usize) -> HostResult<i32> {
    let size = i32::try_from(size).map_err(|_| Status::InvalidMemoryAccess)?;
    let malloc = caller
        .data()
        .malloc
        .clone()
        .ok_or(Status::InvalidMemoryAccess)?;
    match malloc.call(&mut *caller, size) {
        Ok(0) => Err(Status::InvalidMemoryAccess),
        Ok(ptr) => Ok(ptr),
        Err(_) => Err(Status::InvalidMemoryAccess),
    }
}

/// cpp-host's `copyToPointerSize`: allocate, copy, and store the address and
/// size at `ptr_ptr` / `size_ptr`.
pub fn copy_out(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult<()> {
    let addr = if bytes.is_empty() {
        0
    } else {
        let addr = alloc(caller, bytes.len())?;
        write(caller, addr, bytes)?;
        addr
    };
    write_u32(caller, ptr_ptr, addr as u32)?;
    write_u32(caller, size_ptr, bytes.len() as u32)
}
