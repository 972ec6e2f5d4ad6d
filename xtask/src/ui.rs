//! The dashboard's scheduler module: `filter/web` (the filter's core with a
//! wasm-bindgen binding) built for `wasm32-unknown-unknown` by the same
//! route as the filter, then bound by the wasm-bindgen CLI of exactly the
//! crate's version (the two must agree on the schema they exchange; a
//! mismatch fails at bind time). The controller serves the result at
//! `/ui/scheduler/` from `TIDEWAY_UI_DIR` (`tideway serve-weights --ui-dir`).

use crate::{debian_wasm_cargo, run, step, wasm_route, WasmRoute};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const UI_TARGET: &str = "wasm32-unknown-unknown";
const UI_PACKAGE: &str = "tideway-scheduler-web";
const UI_ARTEFACT: &str = "tideway_scheduler_web.wasm";
/// The filter's release profile, unstripped (Cargo.toml says why).
const UI_PROFILE: &str = "wasm-web";
/// The module's name on the page: `scheduler.js` and `scheduler_bg.wasm`.
const OUT_NAME: &str = "scheduler";
/// The CLI is built once per version and kept outside the clone (as the
/// kube-apiserver is), so a fresh clone on a set-up machine reuses it.
const CLI_CACHE: &str = "/var/cache/tideway";

/// Build the scheduler module into `target/tideway/ui/`; returns that
/// directory.
pub fn build(root: &Path) -> Result<PathBuf> {
    let version = locked_version(root, "wasm-bindgen")?;
    let cli = ensure_cli(&version)?;
    let built = match rustup_has_target()? {
        true => {
            step(&format!(
                "building the dashboard's scheduler for {UI_TARGET} (route: rustup target)"
            ));
            run(
                Command::new(env!("CARGO"))
                    .current_dir(root)
                    .args(["build", "-p", UI_PACKAGE, "--profile", UI_PROFILE])
                    .args(["--target", UI_TARGET]),
                "cargo build (wasm32-unknown-unknown, rustup)",
            )?;
            root.join("target")
        }
        false => {
            if wasm_route()? != WasmRoute::Debian {
                bail!("rustup has {} but not {UI_TARGET}", crate::WASM_TARGET);
            }
            step(&format!(
                "building the dashboard's scheduler for {UI_TARGET} (route: Debian rustc-web with -Zbuild-std)"
            ));
            let (mut cargo, target_dir) = debian_wasm_cargo(root)?;
            run(
                cargo
                    .args(["build", "-p", UI_PACKAGE, "--profile", UI_PROFILE])
                    .args(["--target", UI_TARGET]),
                "cargo build (wasm32-unknown-unknown, Debian rustc-web)",
            )?;
            target_dir
        }
    };
    let module = built.join(UI_TARGET).join(UI_PROFILE).join(UI_ARTEFACT);
    let out = root.join("target/tideway/ui");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    run(
        Command::new(&cli)
            .args(["--target", "web", "--no-typescript", "--out-name", OUT_NAME])
            .arg("--out-dir")
            .arg(&out)
            .arg(&module),
        "wasm-bindgen",
    )?;
    let size = std::fs::metadata(out.join(format!("{OUT_NAME}_bg.wasm")))
        .map(|m| m.len())
        .unwrap_or(0);
    step(&format!(
        "dashboard scheduler built: {} ({size} bytes, wasm-bindgen {version})",
        out.display()
    ));
    Ok(out)
}

fn rustup_has_target() -> Result<bool> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    Ok(
        matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == UI_TARGET)),
    )
}

/// The version Cargo.lock pins for `package` (one version expected).
fn locked_version(root: &Path, package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut versions = Vec::new();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{package}\"") {
            if let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
            {
                versions.push(v.to_string());
            }
        }
    }
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("Cargo.lock has no {package} (is filter/web in the workspace?)"),
        many => bail!(
            "Cargo.lock has several {package} versions ({}): the CLI can match only one",
            many.join(", ")
        ),
    }
}

/// The wasm-bindgen CLI of `version`, installed with `cargo install` into
/// the cache when it is missing.
fn ensure_cli(version: &str) -> Result<PathBuf> {
    let root = Path::new(CLI_CACHE).join(format!("wasm-bindgen-cli-{version}"));
    let cli = root.join("bin/wasm-bindgen");
    if cli_version(&cli).as_deref() == Some(version) {
        step(&format!("wasm-bindgen CLI {version}: {}", cli.display()));
        return Ok(cli);
    }
    step(&format!(
        "installing the wasm-bindgen CLI {version} (cargo install, once per version, into {})",
        root.display()
    ));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let install = |locked: bool| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.arg("install");
        if locked {
            cmd.arg("--locked");
        }
        cmd.args(["wasm-bindgen-cli", "--version"])
            .arg(format!("={version}"))
            .arg("--root")
            .arg(&root);
        run(&mut cmd, "cargo install wasm-bindgen-cli")
    };
    // --locked first (the CLI's own lockfile); a registry mirror may lack
    // a version it pins (this machine's lacked webpki-roots 1.0.11), and
    // then a fresh resolution within the CLI's requirements is the way on.
    if let Err(e) = install(true) {
        step(&format!(
            "cargo install --locked failed ({e}); resolving the CLI's dependencies afresh"
        ));
        install(false)?;
    }
    match cli_version(&cli) {
        Some(v) if v == version => Ok(cli),
        other => bail!("{} reports version {other:?}, not {version}", cli.display()),
    }
}

/// `wasm-bindgen --version` prints `wasm-bindgen 0.2.x`.
fn cli_version(cli: &Path) -> Option<String> {
    let out = Command::new(cli).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_string)
}
