//! The filter's cost in instructions per request, counted by callgrind, and
//! the price of each proxy-wasm host call in Envoy.
//!
//! Why: on a shared 2-core machine wrk's throughput moves by ±15% from one
//! round to the next, which hides the few-percent changes an optimisation
//! makes. Callgrind counts the instructions Envoy executes (its C++, V8's
//! runtime and the JIT-compiled filter alike), and the count for the same
//! binary and requests repeats to about 0.1%. It counts user-space work
//! only: the kernel's share (sockets on loopback) is the same for every
//! variant, so throughput ratios sit somewhat closer to 1 than these.
//!
//! Method, per variant: Envoy runs under `valgrind --tool=callgrind`, all
//! variants started at once (start-up under valgrind takes minutes). Then,
//! one Envoy after the other: a warm-up (V8 compiles, pools fill); the
//! count over an idle period (timers, the filter's tick); the count over a
//! wrk run of the same length. Instructions per request = (load − idle) ÷
//! requests served, where the request count comes from Envoy's own
//! `http.ingress.downstream_rq_total`.
//!
//! Variants: no filter, the no-op filter, Tideway in its cost benchmark
//! configuration (everything on; once propagating trace context, once also
//! exporting spans), the same without the hop headers, Tideway for a host it
//! does not govern, optionally the same Tideway configuration on another
//! build of the module (`TIDEWAY_BASELINE_WASM`, for a before/after count
//! in one run), and the probe
//! filter making one host call per request, which, less the no-op, prices
//! that call.

use super::report::{Cmp, Figure, Section};
use super::{wrk, Mode, HOST};
use crate::backend::Backend;
use crate::envoy::{Envoy, EnvoySpec};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Connections wrk keeps open (Envoy under callgrind serves a few hundred
/// requests a second; more connections only queue).
const CONNECTIONS: u32 = 8;

/// What one variant is and what it is compared with.
struct Variant {
    name: &'static str,
    spec: EnvoySpec,
    /// For probe variants: the host call priced.
    prices: Option<&'static str>,
}

/// The count callgrind reported over one window.
struct Window {
    instructions: u64,
    requests: u64,
}

/// Runs the instruction benchmark; one section.
pub fn run(mode: Mode) -> Result<Section> {
    for tool in ["valgrind", "callgrind_control"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed (Debian package valgrind; `cargo xtask setup` installs it)");
        }
    }
    let out = super::out_dir().join("callgrind");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let script = super::out_dir().join("wrk-requests.lua");
    wrk::write_script(&script, HOST, 1000)?;

    // Span export goes to a real loopback collector, as in the throughput runs.
    let collector = Backend::start("collector", false)?;
    let variants = variants(mode, &out, collector.port);
    let seconds = mode.pick(5, 12);
    eprintln!(
        "[instructions] starting {} Envoys under callgrind (a few minutes), then {seconds} s idle + {seconds} s of load each",
        variants.len()
    );
    let started = Instant::now();
    let envoys = start_side_by_side(&variants)?;
    eprintln!(
        "[instructions] all ready after {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let mut measured = Vec::new();
    let mut command = String::new();
    for ((v, envoy), i) in variants.iter().zip(envoys).zip(0..) {
        let dump_prefix = out.join(format!("variant{i}.callgrind"));
        wrk::run(envoy.port, CONNECTIONS, 3, &script)?;
        let idle = window(&envoy, &dump_prefix, || {
            std::thread::sleep(Duration::from_secs(u64::from(seconds)));
            Ok(())
        })?;
        let load = window(&envoy, &dump_prefix, || {
            let r = wrk::run(envoy.port, CONNECTIONS, seconds, &script)?;
            command = r.command.replace(&format!(":{}/", envoy.port), ":<port>/");
            Ok(())
        })?;
        if load.requests == 0 {
            bail!("{}: no requests were served under callgrind", v.name);
        }
        let per_request =
            load.instructions.saturating_sub(idle.instructions) as f64 / load.requests as f64;
        eprintln!(
            "[instructions] {:<40} {:>9.0} instructions/request ({} requests; idle {:.1} M/s)",
            v.name,
            per_request,
            load.requests,
            idle.instructions as f64 / f64::from(seconds) / 1e6
        );
        measured.push((per_request, load, idle));
        drop(envoy);
    }

    let noop = measured[1].0;
    let mut section = Section::new(
        "Filter cost in instructions (callgrind)",
        vec![
            "valgrind --tool=callgrind --smc-check=all-non-file envoy --concurrency 1 …  (direct response on every route, as in the filter-cost runs)".to_string(),
            format!("per variant: {seconds} s idle, then {command} for {seconds} s; callgrind_control -z / -d around each window"),
            "instructions/request = (load − idle) ÷ requests served (Envoy's http.ingress.downstream_rq_total)".to_string(),
        ],
        &["Variant", "instructions/request", "minus no-op", "no-op ÷ variant", "requests measured", "idle M instr/s"],
    );
    let mut raw = Vec::new();
    for (v, (per_request, load, idle)) in variants.iter().zip(&measured) {
        section.rows.push(vec![
            v.name.to_string(),
            format!("{per_request:.0}"),
            format!("{:+.0}", per_request - noop),
            format!("{:.3}", noop / per_request),
            load.requests.to_string(),
            format!("{:.2}", idle.instructions as f64 / f64::from(seconds) / 1e6),
        ]);
        raw.push(json!({
            "variant": v.name,
            "prices": v.prices,
            "instructions_per_request": per_request,
            "load_instructions": load.instructions,
            "requests": load.requests,
            "idle_instructions": idle.instructions,
            "seconds": seconds,
        }));
        if let Some(call) = v.prices {
            section.figures.push(Figure::new(
                format!("host call price: {call}"),
                per_request - noop,
                "instructions",
                &command,
            ));
        }
    }
    let full = measured[2].0;
    let span = measured[3].0;
    // The cost targets are relative to the steering floor (the last
    // variant: the probe making only the three calls steering needs).
    if let (Some(v), Some((floor, _, _))) = (variants.last(), measured.last()) {
        if v.spec.filter_config.as_deref() == Some(super::cost::STEERING_FLOOR_OPS) {
            for (what, value, at_most) in [
                ("Tideway (trace propagate)", full, 1.10),
                ("Tideway (trace spans + export)", span, 1.25),
            ] {
                section.figures.push(
                    Figure::new(
                        format!("{what} ÷ steering floor, instructions per request"),
                        value / floor,
                        "×",
                        &command,
                    )
                    .target(Cmp::AtMost, at_most),
                );
            }
        }
    }
    section.figures.insert(
        0,
        Figure::new(
            "no-op ÷ Tideway (trace propagate), instructions per request",
            noop / full,
            "×",
            &command,
        )
        .target(Cmp::AtLeast, 0.90),
    );
    section.figures.insert(
        1,
        Figure::new(
            "no-op ÷ Tideway (trace spans + export), instructions per request",
            noop / span,
            "×",
            &command,
        )
        .target(Cmp::AtLeast, 0.90),
    );
    section.notes.push(
        "The target is the throughput target (≥ 0.90× the no-op filter) restated in instructions: with Envoy CPU-bound, \
         requests per second go as 1 ÷ instructions per request (plus the kernel's share, not counted here)."
            .to_string(),
    );
    section.raw = json!({ "variants": raw, "command": command });
    Ok(section)
}

/// Starts every variant's Envoy under callgrind at once: each start-up is
/// single-threaded and slow.
fn start_side_by_side(variants: &[Variant]) -> Result<Vec<Envoy>> {
    std::thread::scope(|scope| {
        let starting: Vec<_> = variants
            .iter()
            .map(|v| {
                scope.spawn(move || {
                    Envoy::start(&v.spec)
                        .with_context(|| format!("starting Envoy under callgrind ({})", v.name))
                })
            })
            .collect();
        starting
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("an Envoy start-up thread panicked")))
            })
            .collect::<Result<_>>()
    })
}

fn variants(mode: Mode, out: &Path, collector_port: u16) -> Vec<Variant> {
    let mut n = 0;
    let mut spec = |config: Option<String>, wasm: Option<PathBuf>| {
        let mut spec = EnvoySpec::new("", &[("east", 9), ("west", 9), ("south", 9)]);
        spec.filter_config = config;
        if let Some(wasm) = wasm {
            spec.wasm = wasm;
        }
        spec.direct_response = true;
        spec.direct_response_all = true;
        spec.concurrency = 1;
        spec.extra_clusters = vec![("otel-collector".to_string(), collector_port)];
        spec.command_prefix = vec![
            "valgrind".to_string(),
            "--tool=callgrind".to_string(),
            // V8 writes code it then runs: re-translate it when it changes.
            "--smc-check=all-non-file".to_string(),
            format!(
                "--callgrind-out-file={}",
                out.join(format!("variant{n}.callgrind")).display()
            ),
        ];
        n += 1;
        spec
    };
    let probe = |ops: &str| Some(ops.to_string());
    let rendered = |mut spec: EnvoySpec, span: bool| {
        super::cost::as_rendered(&mut spec, span);
        spec
    };
    let tideway = super::cost::tideway_config(false);
    let mut variants = vec![
        Variant {
            name: "no filter",
            spec: spec(None, None),
            prices: None,
        },
        Variant {
            name: "no-op filter",
            spec: spec(Some(String::new()), Some(super::noop_wasm())),
            prices: None,
        },
        Variant {
            name: "Tideway (trace propagate)",
            spec: rendered(spec(None, None), false),
            prices: None,
        },
        Variant {
            name: "Tideway (trace spans + export)",
            spec: rendered(spec(None, None), true),
            prices: None,
        },
        Variant {
            name: "Tideway (trace propagate), hop headers written by the filter",
            spec: spec(Some(tideway.clone()), None),
            prices: None,
        },
        Variant {
            name: "Tideway (trace propagate), hopHeaders off",
            spec: spec(
                Some(tideway.replacen('{', r#"{"hopHeaders":false,"#, 1)),
                None,
            ),
            prices: None,
        },
        Variant {
            name: "Tideway, host not governed",
            spec: spec(Some(tideway.replace(HOST, "elsewhere.example")), None),
            prices: None,
        },
    ];
    // A before/after comparison in one run: another build of the filter
    // (e.g. the main branch's), in the same configuration.
    if let Some(baseline) = std::env::var_os("TIDEWAY_BASELINE_WASM") {
        variants.push(Variant {
            name: "Tideway (trace propagate), hop headers written by the filter, baseline module (TIDEWAY_BASELINE_WASM)",
            spec: spec(Some(tideway.clone()), Some(PathBuf::from(baseline))),
            prices: None,
        });
    }
    // Quick runs keep the steering floor: the cost targets are relative to it.
    let probes: &[(&'static str, &'static str)] = if mode.quick {
        &[(
            super::cost::STEERING_FLOOR_OPS,
            "steering floor: header map read + 1 header add + :status read",
        )]
    } else {
        &[
            ("clock", "clock read (returns a number)"),
            ("read_missing", "request header read, header absent"),
            (
                "read_authority",
                "request header read, header present (bytes copied back)",
            ),
            (
                "read_request_headers",
                "header map read (one call, all request headers)",
            ),
            ("add_header", "request header add"),
            ("replace_header", "request header replace"),
            ("read_status", "response :status read"),
            (
                super::cost::STEERING_FLOOR_OPS,
                "steering floor: header map read + 1 header add + :status read",
            ),
        ]
    };
    for (ops, prices) in probes {
        variants.push(Variant {
            name: prices,
            spec: spec(probe(ops), Some(super::probe_wasm())),
            prices: Some(prices),
        });
    }
    variants
}

/// Zero the counts, run `during`, dump, and read back what was counted.
fn window(
    envoy: &Envoy,
    dump_prefix: &Path,
    during: impl FnOnce() -> Result<()>,
) -> Result<Window> {
    let pid = envoy.pid().to_string();
    callgrind_control(&["-z", &pid])?;
    let before = envoy.stat("http.ingress.downstream_rq_total")?;
    during()?;
    let after = envoy.stat("http.ingress.downstream_rq_total")?;
    let existing = dumps(dump_prefix)?;
    callgrind_control(&["-d", &pid])?;
    // The dump is written by Envoy's process, asynchronously to the
    // control command: wait for the new file and its totals line.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = dumps(dump_prefix)?;
        if let Some(new) = now.iter().find(|p| !existing.contains(p)) {
            if let Some(instructions) = totals(new) {
                return Ok(Window {
                    instructions,
                    requests: after.saturating_sub(before),
                });
            }
        }
        if Instant::now() > deadline {
            bail!(
                "callgrind wrote no dump for pid {pid} within 120 s ({})",
                dump_prefix.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn callgrind_control(args: &[&str]) -> Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .output()
        .context("running callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Dump files callgrind wrote for one variant (`<prefix>.<n>`).
fn dumps(prefix: &Path) -> Result<Vec<PathBuf>> {
    let dir = prefix.parent().context("dump prefix has no directory")?;
    let stem = prefix
        .file_name()
        .and_then(|f| f.to_str())
        .context("dump prefix is not UTF-8")?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
        if name
            .strip_prefix(stem)
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|n| n.parse::<u32>().is_ok())
        {
            found.push(path);
        }
    }
    Ok(found)
}

/// The `totals:` (or `summary:`) line of a finished dump.
fn totals(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
