//! `cargo xtask demo`: the whole bundle on one machine — three member
//! clusters, a local registry, `tideway image push/pull`, `tideway render`,
//! Envoy 1.40 running the pulled filter, a scripted scenario under load for
//! Tideway and for Envoy's own ROUND_ROBIN and LEAST_REQUEST — then a
//! table and an HTML report. See [`tideway_host_tests::demo`].

use clap_free_args::Args;
use std::time::Duration;
use tideway_host_tests::demo::{self, load::LoadSpec, DemoConfig};

/// Hand-parsed: two options do not justify clap in the test crate.
mod clap_free_args {
    pub struct Args {
        /// Seconds per phase.
        pub phase_seconds: f64,
        pub out_dir: Option<std::path::PathBuf>,
    }

    impl Args {
        pub fn parse() -> Result<Self, String> {
            let mut args = Args {
                phase_seconds: 6.0,
                out_dir: None,
            };
            let mut it = std::env::args().skip(1);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--phase-seconds" => {
                        let v = it.next().ok_or("--phase-seconds needs a value")?;
                        args.phase_seconds = v
                            .parse()
                            .ok()
                            .filter(|s: &f64| *s >= 1.0 && *s <= 600.0)
                            .ok_or(format!(
                                "--phase-seconds: {v:?} is not a number of seconds in 1..=600"
                            ))?;
                    }
                    "--out" => {
                        args.out_dir = Some(it.next().ok_or("--out needs a directory")?.into());
                    }
                    "-h" | "--help" => {
                        return Err("usage: tideway-demo [--phase-seconds N (default 6)] [--out DIR (default target/tideway/demo)]".into());
                    }
                    other => return Err(format!("unknown argument {other:?} (try --help)")),
                }
            }
            Ok(args)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse().map_err(|e| anyhow::anyhow!(e))?;
    let out_dir = args
        .out_dir
        .unwrap_or_else(|| tideway_host_tests::env::workspace_root().join("target/tideway/demo"));
    let unit = Duration::from_secs_f64(args.phase_seconds);
    let load = LoadSpec {
        anonymous_rps: 600.0,
        anonymous_workers: 24,
        users: 24,
        user_rps: 0.5,
    };
    let config = DemoConfig::new(out_dir.clone(), DemoConfig::scenario(unit, true), load)?;
    let outcome = demo::run(&config)?;
    println!("\n{}", demo::report::table(&outcome));
    for gap in &outcome.gaps {
        println!("GAP: {gap}");
    }
    let html = out_dir.join("report.html");
    std::fs::write(&html, demo::report::html(&outcome))?;
    println!("HTML report: {}", html.display());
    Ok(())
}
