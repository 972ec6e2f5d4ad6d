//! `cargo xtask image`: the controller's container image.
//!
//! The `tideway` program is built statically (glibc with `crt-static`) so
//! the image needs no libraries: no dynamic loader, no `libc.so`, nothing to
//! patch but the program. glibc rather than musl because the rustup
//! toolchain here carries only the gnu target's std, and aws-lc-sys (rustls'
//! crypto) builds for it with the system C compiler; glibc 2.34 and later
//! have DNS and `/etc/hosts` lookups in libc itself, so a static program
//! still resolves member API servers' names.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The compressed image must stay under this.
const MAX_COMPRESSED_BYTES: u64 = 40 * 1000 * 1000;
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the static program and the image; returns the static program.
pub fn build(root: &Path) -> Result<PathBuf> {
    let wasm = super::build_wasm(root)?;
    let filter_digest = filter_image_digest(root, &wasm)?;
    super::step(&format!(
        "building the static tideway (release, crt-static) for the controller image; filter image {filter_digest}"
    ));
    let target_dir = root.join("target/static");
    super::run(
        Command::new(env!("CARGO"))
            .current_dir(root)
            .env("CARGO_TARGET_DIR", &target_dir)
            // Only the target's code: build scripts and proc macros stay
            // dynamic host programs (hence the explicit --target).
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("TIDEWAY_FILTER_DIGEST", &filter_digest)
            .args(["build", "--release", "--target", TARGET])
            .args(["-p", "tideway-controller", "--bin", "tideway"]),
        "the static tideway build",
    )?;
    let program = target_dir.join(TARGET).join("release/tideway");
    let out = root.join("target/tideway/controller-oci");
    let _ = std::fs::remove_dir_all(&out);
    super::step("packaging it (tideway image build-controller)");
    let printed = output(
        Command::new(&program)
            .args(["image", "build-controller", "-o"])
            .arg(&out),
        "tideway image build-controller",
    )?;
    eprint!("{printed}");
    let compressed = compressed_size(&out)?;
    if compressed > MAX_COMPRESSED_BYTES {
        bail!("the controller image is {compressed} bytes compressed, over its {MAX_COMPRESSED_BYTES}");
    }
    eprintln!(
        "==> controller image in {} ({compressed} bytes compressed; budget {MAX_COMPRESSED_BYTES})",
        out.display()
    );
    Ok(program)
}

/// The filter image's manifest digest, as `tideway image build` makes it
/// from `wasm` (reproducible, so it is the digest a push of it gets).
fn filter_image_digest(root: &Path, wasm: &Path) -> Result<String> {
    let cli = super::build_cli(root)?;
    let out = root.join("target/tideway/filter-oci");
    let printed = output(
        Command::new(cli)
            .args(["image", "build"])
            .arg(wasm)
            .arg("-o")
            .arg(&out),
        "tideway image build",
    )?;
    printed
        .lines()
        .find_map(|l| l.strip_prefix("manifest digest: "))
        .map(|d| d.trim().to_string())
        .with_context(|| format!("`tideway image build` printed no manifest digest:\n{printed}"))
}

fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bytes of every blob in an OCI layout: what a registry stores and a node
/// pulls.
fn compressed_size(layout: &Path) -> Result<u64> {
    let mut total = 0;
    let blobs = layout.join("blobs/sha256");
    for entry in std::fs::read_dir(&blobs).with_context(|| blobs.display().to_string())? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
