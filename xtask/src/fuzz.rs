//! `cargo xtask fuzz`: the filter's coverage-guided fuzz targets.
//!
//! The targets live in `filter/fuzz` (the cargo-fuzz layout, a workspace of
//! its own). cargo-fuzz passes nightly-only `-Z` flags; `RUSTC_BOOTSTRAP=1`
//! lets the stable toolchain the rest of the project builds with accept
//! them, so fuzzing needs no second toolchain.
//!
//! The targets run one after another, single-job: the machine's cores are
//! shared. Each gets the committed seeds (read-only) and a growing corpus of
//! its own under `target/fuzz/corpus/<target>`, so later runs start where
//! earlier ones stopped.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{run, step};

/// Every fuzz target in `filter/fuzz/fuzz_targets`, in run order.
pub const TARGETS: &[&str] = &[
    "plugin_config",
    "header_map",
    "traceparent",
    "tracestate",
    "b3",
    "shared_stats",
    "trace_context",
];

/// The cargo-fuzz release line the project uses.
const CARGO_FUZZ_VERSION: &str = "^0.13";

/// Where the fuzz crate lives, relative to the workspace root.
const FUZZ_DIR: &str = "filter/fuzz";

/// Without a sanitizer, LLVM expands short `memcmp`/`bcmp` calls of
/// constant length into plain loads, which libFuzzer cannot see: a target
/// whose next branch is gated on a string (a JSON field name, a header
/// name) would never get past it. Keep every comparison a call.
const NO_MEMCMP_EXPANSION: &str = "-Cllvm-args=-max-loads-per-memcmp=0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Sanitizer {
    /// No sanitizer: the filter's core is safe Rust, so this finds the same
    /// panics and logic errors at several times the speed.
    #[default]
    None,
    /// AddressSanitizer (cargo-fuzz's own default).
    Address,
}

#[derive(Debug, Clone, Args)]
pub struct FuzzArgs {
    /// Run each target this many seconds (libFuzzer -max_total_time).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Stop each target after this many executions instead (libFuzzer
    /// -runs); `--seconds` still bounds the time.
    #[arg(long)]
    pub runs: Option<u64>,
    /// Only these targets (repeatable; default: all of them).
    #[arg(long = "target", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
    /// What the targets are built with.
    #[arg(long, value_enum, default_value_t = Sanitizer::None)]
    pub sanitizer: Sanitizer,
}

impl Sanitizer {
    /// cargo-fuzz's name for it.
    fn name(self) -> &'static str {
        match self {
            Sanitizer::None => "none",
            Sanitizer::Address => "address",
        }
    }
}

impl Default for FuzzArgs {
    fn default() -> Self {
        Self {
            seconds: 60,
            runs: None,
            targets: Vec::new(),
            sanitizer: Sanitizer::None,
        }
    }
}

/// What one target's run reported.
struct Outcome {
    target: &'static str,
    executions: u64,
    seconds: f64,
    corpus: usize,
}

/// `cargo install cargo-fuzz` unless a `cargo fuzz` is already there.
pub fn install_cargo_fuzz() -> Result<()> {
    if let Some(version) = cargo_fuzz_version() {
        step(&format!("cargo-fuzz: {version}"));
        return Ok(());
    }
    step(&format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install)"
    ));
    run(
        Command::new(env!("CARGO")).args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
        "cargo install cargo-fuzz",
    )?;
    match cargo_fuzz_version() {
        Some(_) => Ok(()),
        None => bail!("cargo-fuzz was installed but `cargo fuzz --version` does not run"),
    }
}

fn cargo_fuzz_version() -> Option<String> {
    let out = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A `cargo fuzz <subcommand>` with the build settings every run shares
/// (the same ones each time, so the build is reused).
fn cargo_fuzz(root: &Path, subcommand: &str, sanitizer: Sanitizer) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", NO_MEMCMP_EXPANSION)
        .env_remove("CARGO_TARGET_DIR")
        .args(["fuzz", subcommand, "--fuzz-dir", FUZZ_DIR])
        .arg("--target-dir")
        .arg(root.join("target/fuzz/build"))
        .args(["--sanitizer", sanitizer.name()]);
    cmd
}

pub fn run_all(root: &Path, args: &FuzzArgs) -> Result<()> {
    install_cargo_fuzz()?;
    let targets: Vec<&'static str> = TARGETS
        .iter()
        .copied()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|a| a == t))
        .collect();
    step("building the fuzz targets (cargo fuzz build)");
    run(
        &mut cargo_fuzz(root, "build", args.sanitizer),
        "cargo fuzz build",
    )?;
    let mut outcomes = Vec::new();
    for target in targets {
        outcomes.push(run_target(root, target, args)?);
    }
    step("fuzzing done: no target failed");
    eprintln!(
        "{:<16} {:>14} {:>9} {:>11} {:>7}",
        "target", "executions", "seconds", "exec/s", "corpus"
    );
    for o in &outcomes {
        eprintln!(
            "{:<16} {:>14} {:>9.0} {:>11.0} {:>7}",
            o.target,
            o.executions,
            o.seconds,
            o.executions as f64 / o.seconds.max(1e-9),
            o.corpus
        );
    }
    Ok(())
}

fn run_target(root: &Path, target: &'static str, args: &FuzzArgs) -> Result<Outcome> {
    let fuzz = root.join("target/fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = root.join(FUZZ_DIR).join("seeds").join(target);
    let dict = root
        .join(FUZZ_DIR)
        .join("dicts")
        .join(format!("{target}.dict"));

    let mut cmd = cargo_fuzz(root, "run", args.sanitizer);
    cmd.arg(target).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={}", args.seconds))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // A hang is a finding too.
        .arg("-timeout=10")
        .arg("-print_final_stats=1");
    if let Some(runs) = args.runs {
        cmd.arg(format!("-runs={runs}"));
    }
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    step(&format!(
        "fuzzing {target} for {}{}",
        match args.runs {
            Some(runs) => format!("{runs} executions or "),
            None => String::new(),
        },
        format_args!("{} s", args.seconds)
    ));
    let started = Instant::now();
    // libFuzzer reports on stderr; pass it through and keep the final stats.
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start cargo fuzz run")?;
    let mut executions = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading cargo fuzz output")?;
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                executions = n.trim().parse::<u64>().ok();
            }
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("waiting for cargo fuzz run")?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}); the input is in {}. Reproduce with:\n  \
             RUSTC_BOOTSTRAP=1 RUSTFLAGS={NO_MEMCMP_EXPANSION} cargo fuzz run --fuzz-dir {FUZZ_DIR} \
             --target-dir target/fuzz/build --sanitizer {} {target} <that file>",
            artifacts.display(),
            args.sanitizer.name(),
        );
    }
    let executions = executions.with_context(|| {
        format!("fuzz target {target} ended without libFuzzer's final statistics")
    })?;
    let corpus_len = std::fs::read_dir(&corpus).map_or(0, |d| d.count());
    Ok(Outcome {
        target,
        executions,
        seconds,
        corpus: corpus_len,
    })
}
