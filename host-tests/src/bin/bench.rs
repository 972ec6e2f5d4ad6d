//! `cargo xtask bench`: Tideway's benchmark harness.
//!
//! Measures the filter's cost (against no filter and a no-op Rust
//! proxy-wasm filter) and its steering quality (against Envoy's own load
//! balancers), prints a markdown report and writes the figures, each with
//! its command and the environment, to `target/tideway/bench/results.json`.
//! Separate from the tests: numbers here are reported, not asserted.
//!
//! Usage: `tideway-bench [--quick] [--only cost|instructions|steering|latency|failure|split|affinity|tail|matrix|shift|equal|canary] [--scheduler JSON] [--out FILE]`.
//! `--quick` makes short runs (a smoke test, ~8 minutes); the default full
//! mode takes about 30 minutes on a 2-core machine, half of it Envoys
//! starting under callgrind. All load goes to 127.0.0.1.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use tideway_host_tests::bench::{self, machine, report::Report, Mode};

fn main() -> Result<()> {
    let mut quick = false;
    let mut only: Option<String> = None;
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => only = Some(args.next().context("--only needs a benchmark name")?),
            "--scheduler" => bench::steering::set_dynamic_scheduler(
                args.next().context("--scheduler needs a JSON object")?,
            ),
            "--cells" => bench::tail::set_cells(
                &args
                    .next()
                    .context("--cells needs FACTORxCONNECTIONS[,…], e.g. 3x128")?,
            )?,
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a file")?)),
            "-h" | "--help" => {
                println!("tideway-bench [--quick] [--only cost|instructions|steering|latency|failure|split|affinity|tail|matrix|shift|equal|canary] [--scheduler JSON] [--cells 3x128,…] [--out FILE]");
                println!(
                    "  --scheduler: Tideway's scheduler section for the dynamic steering runs (latency, failure, affinity)"
                );
                println!(
                    "  --cells: only these cells of the tail matrix (slow factor x connections)"
                );
                println!(
                    "  tail: the steering scenarios (matrix, shift, equal, canary), always under the default scheduler"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if let Some(o) = &only {
        if o != "cost"
            && o != "instructions"
            && o != "steering"
            && o != "tail"
            && !bench::steering::PARTS.contains(&o.as_str())
            && !bench::tail::PARTS.contains(&o.as_str())
        {
            bail!(
                "--only takes cost, instructions, steering, {}, tail, {}; not {o:?}",
                bench::steering::PARTS.join(", "),
                bench::tail::PARTS.join(", ")
            );
        }
    }
    let mode = Mode { quick };
    let started = Instant::now();
    let envoy = tideway_host_tests::env::envoy();
    let filter = tideway_host_tests::env::filter_wasm();
    let noop = bench::noop_wasm();
    let machine = machine::describe(&envoy, &filter, &noop);
    eprintln!(
        "tideway-bench ({} mode): {}",
        mode.name(),
        machine::summary(&machine)
    );

    let mut sections = Vec::new();
    if only.is_none() || only.as_deref() == Some("cost") {
        sections.extend(bench::cost::run(mode)?);
    }
    if only.is_none() || only.as_deref() == Some("instructions") {
        sections.push(bench::instructions::run(mode)?);
    }
    let steering_part = only
        .as_deref()
        .filter(|o| bench::steering::PARTS.contains(o));
    if only.is_none() || only.as_deref() == Some("steering") || steering_part.is_some() {
        sections.extend(bench::steering::run(mode, steering_part)?);
    }
    let tail_part = only.as_deref().filter(|o| bench::tail::PARTS.contains(o));
    if only.is_none() || only.as_deref() == Some("tail") || tail_part.is_some() {
        sections.extend(bench::tail::run(mode, tail_part)?);
    }
    let mut invocation = String::from("cargo xtask bench");
    let extra: Vec<String> = std::env::args().skip(1).collect();
    if !extra.is_empty() {
        invocation.push_str(" -- ");
        invocation.push_str(&extra.join(" "));
    }
    let report = Report {
        mode: mode.name().to_string(),
        invocation,
        machine,
        sections,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    println!("{}", report.markdown());
    let path = out.unwrap_or_else(|| bench::out_dir().join("results.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&report.json())?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("results: {} ({:.0} s)", path.display(), report.elapsed_s);
    Ok(())
}
