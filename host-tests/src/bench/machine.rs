//! The environment every figure is reported with: CPU model and cores,
//! memory, kernel, Envoy's version, the modules' sizes, the git commit, the
//! tools' versions. Numbers without their machine are not comparable.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Describe this machine and build.
pub fn describe(envoy: &Path, filter: &Path, noop: &Path) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let envoy_version = first_line(Command::new(envoy).arg("--version"))
        .map(|v| {
            v.split_once("version:")
                .map_or(v.clone(), |(_, r)| r.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let commit = first_line(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_default();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let wrk_version = first_line(Command::new("wrk").arg("-v")).unwrap_or_default();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    json!({
        "cpu_model": cpu_model,
        "cores": cores,
        "memory_gib": (mem_total_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": kernel,
        "os": os,
        "envoy_version": envoy_version,
        "envoy_binary": envoy.display().to_string(),
        "wasm_runtime": "envoy.wasm.runtime.v8",
        "filter_wasm": filter.display().to_string(),
        "filter_wasm_bytes": size(filter),
        "noop_wasm": noop.display().to_string(),
        "noop_wasm_bytes": size(noop),
        "git_commit": if dirty { format!("{commit}-dirty") } else { commit },
        "wrk": wrk_version,
    })
}

/// One line of prose for the report's header.
pub fn summary(m: &Value) -> String {
    format!(
        "{} ({} cores, {} GiB), {} / kernel {}; Envoy {} (V8); filter {} bytes, no-op filter {} bytes; commit {}",
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cores"],
        m["memory_gib"],
        m["os"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["envoy_version"].as_str().unwrap_or("?"),
        m["filter_wasm_bytes"],
        m["noop_wasm_bytes"],
        m["git_commit"].as_str().unwrap_or("?"),
    )
}

fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// A process's CPU time so far (user + system), in seconds, from
/// `/proc/<pid>/stat`; `NaN` if it cannot be read.
pub(super) fn cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces, so split after
    // its closing parenthesis): state is field 3, utime 14, stime 15.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) / ticks_per_second,
        _ => f64::NAN,
    }
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub(super) fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The machine's CPU time so far, in clock ticks summed over its CPUs:
/// `(busy, idle)` from the first line of `/proc/stat` (idle counts
/// `iowait` too); `None` if it cannot be read.
pub(super) fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let first = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = first
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((ticks.iter().sum::<u64>() - idle, idle))
}
