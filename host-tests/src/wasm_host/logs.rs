//! Captured logs.
//!
//! Every `proxy_log` call, every line the module writes to stdout/stderr
//! through WASI `fd_write` (Envoy logs those at info and error:
//! proxy-wasm-cpp-host `writevImpl`), and every host-side event worth seeing
//! (an unimplemented host call, a trap) lands here, tagged with the worker
//! that produced it. Tests assert on it; `Host::dump_logs` prints it.

use super::abi::LogLevel;
use std::fmt;

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// `proxy_log`.
    Module,
    /// WASI `fd_write` to stdout (level Info) or stderr (level Error).
    Stdio,
    /// The host itself (unimplemented calls, traps, ABI misuse).
    Host,
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub worker: usize,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
}

impl fmt::Display for LogRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[worker {}] [{:?}] [{:?}] {}",
            self.worker, self.level, self.source, self.message
        )
    }
}
