//! Runs `wrk` against Envoy on loopback and parses its report.
//!
//! Why wrk: it is the standard HTTP/1.1 load generator, its one-thread event
//! loop costs far less per request than any client we would write, and the
//! command line reported with each figure lets anyone repeat it. Requests come
//! from a Lua script that cycles through a fixed set of pre-formatted
//! requests (built once in `init`, so the per-request Lua cost is a table
//! lookup) and `--latency` prints the percentiles.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// What one wrk run measured.
#[derive(Debug, Clone)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub command: String,
}

/// The Lua script: `variants` distinct requests to `host`, each with a W3C
/// `traceparent`; odd ones also carry `x-user-id` (a session key, so the
/// filter's affinity path runs), even ones do not (its scoring path runs).
pub fn write_script(path: &Path, host: &str, variants: u32) -> Result<()> {
    let script = format!(
        r#"-- tideway-bench: {variants} pre-built requests, cycled.
local reqs = {{}}
local n = 0
init = function(args)
  for i = 1, {variants} do
    local h = {{}}
    h["Host"] = "{host}"
    h["traceparent"] = string.format("00-%032x-%016x-01", 4096 + i, 1 + i)
    if i % 2 == 1 then h["x-user-id"] = "user-" .. i end
    reqs[i] = wrk.format("GET", "/", h)
  end
end
request = function()
  n = n % {variants} + 1
  return reqs[n]
end
"#
    );
    std::fs::write(path, script).with_context(|| format!("writing {}", path.display()))
}

/// `wrk -t1 -c<connections> -d<seconds>s --latency -s <script> http://127.0.0.1:<port>/`
pub fn run(port: u16, connections: u32, seconds: u32, script: &Path) -> Result<WrkResult> {
    let args = vec![
        "-t1".to_string(),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--latency".to_string(),
        "-s".to_string(),
        script.display().to_string(),
        format!("http://127.0.0.1:{port}/"),
    ];
    let command = format!("wrk {}", args.join(" "));
    let out = Command::new("wrk")
        .args(&args)
        .output()
        .context("could not run wrk (Debian package wrk; `cargo xtask setup` installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "{command} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text, command)
}

fn parse(text: &str, command: String) -> Result<WrkResult> {
    let mut r = WrkResult {
        requests_per_sec: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        requests: 0,
        non_2xx: 0,
        socket_errors: 0,
        command,
    };
    for line in text.lines() {
        let t = line.trim();
        let fields: Vec<&str> = t.split_whitespace().collect();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse().unwrap_or(f64::NAN);
        } else if fields.len() == 2 && fields[0] == "50%" {
            r.p50_us = duration_us(fields[1]).unwrap_or(f64::NAN);
        } else if fields.len() == 2 && fields[0] == "99%" {
            r.p99_us = duration_us(fields[1]).unwrap_or(f64::NAN);
        } else if t.contains("requests in") {
            r.requests = fields.first().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.socket_errors = v
                .split(',')
                .filter_map(|p| {
                    p.split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse::<u64>().ok())
                })
                .sum();
        }
    }
    if r.requests_per_sec.is_nan() || r.p99_us.is_nan() {
        bail!("could not parse wrk's output of `{}`:\n{text}", r.command);
    }
    Ok(r)
}

/// wrk's durations: `812.00us`, `1.23ms`, `1.02s`, `2.00m`.
fn duration_us(s: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|v| v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 3s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.50ms  200.00us   5.00ms   90.00%\n  Latency Distribution\n     50%    1.40ms\n     75%    1.60ms\n     90%    1.80ms\n     99%  812.00us\n  64000 requests in 3.00s, 5.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:  21333.33\nTransfer/sec:      1.67MB\n";
        let r = parse(out, "wrk".into()).expect("parses");
        assert_eq!(r.requests, 64000);
        assert_eq!(r.non_2xx, 3);
        assert!((r.requests_per_sec - 21333.33).abs() < 1e-6);
        assert!((r.p50_us - 1400.0).abs() < 1e-6);
        assert!((r.p99_us - 812.0).abs() < 1e-6);
        assert_eq!(duration_us("1.02s"), Some(1_020_000.0));
    }
}
