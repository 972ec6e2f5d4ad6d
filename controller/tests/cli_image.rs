//! `tideway image` end to end, as a user runs it: the real filter module is
//! built into an image, pushed to a real `docker-registry`, verified the way
//! Istio's fetcher would, and pulled back byte-identical.

#[path = "../../oci/tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

fn tideway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tideway"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running tideway")
}

fn ok(args: &[&str]) -> String {
    let out = tideway(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tideway {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The filter module `cargo xtask build-wasm` wrote.
fn filter_wasm() -> std::path::PathBuf {
    let path = std::env::var_os("TIDEWAY_FILTER_WASM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/tideway/tideway_filter.wasm")
        });
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build-wasm`",
        path.display()
    );
    path
}

#[test]
fn build_push_verify_pull_round_trip_of_the_real_filter() {
    let registry = common::Registry::plain();
    let work = tempfile::tempdir().expect("tempdir");
    let wasm = filter_wasm();
    let layout = work.path().join("layout");
    let wasm_arg = wasm.to_str().expect("utf-8 path");
    let layout_arg = layout.to_str().expect("utf-8 path");

    let built = ok(&["image", "build", wasm_arg, "-o", layout_arg, "--tag", "v1"]);
    let again = ok(&[
        "image",
        "build",
        wasm_arg,
        "-o",
        work.path().join("again").to_str().expect("utf-8"),
        "--tag",
        "v1",
    ]);
    let manifest_digest = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("manifest digest: sha256:"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("build prints the manifest digest:\n{s}"))
    };
    let built_digest = manifest_digest(&built);
    assert_eq!(
        built_digest,
        manifest_digest(&again),
        "builds are reproducible"
    );

    let target = format!("{}/tideway/filter:v1", registry.addr);
    let pushed = ok(&[
        "image",
        "push",
        "--plain-http",
        &format!("oci:{layout_arg}:v1"),
        &target,
    ]);
    let url = pushed
        .lines()
        .find_map(|l| l.trim().strip_prefix("url: "))
        .unwrap_or_else(|| panic!("push prints the WasmPlugin url:\n{pushed}"))
        .to_string();
    let sha = pushed
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256: "))
        .unwrap_or_else(|| panic!("push prints the WasmPlugin sha256:\n{pushed}"))
        .to_string();
    assert_eq!(
        url,
        format!("oci://{}/tideway/filter@sha256:{sha}", registry.addr)
    );
    assert_eq!(
        sha, built_digest,
        "the WasmPlugin sha256 is the manifest digest"
    );

    let verified = ok(&["image", "verify", "--plain-http", &target]);
    assert!(verified.to_lowercase().contains("accept"), "{verified}");

    let pulled = work.path().join("pulled.wasm");
    ok(&[
        "image",
        "pull",
        "--plain-http",
        &url,
        "-o",
        pulled.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read(&pulled).expect("pulled"),
        std::fs::read(&wasm).expect("wasm")
    );

    let inspected = ok(&["image", "inspect", &format!("oci:{layout_arg}:v1")]);
    assert!(inspected.contains(&sha), "{inspected}");
}

#[test]
fn pushing_to_a_registry_that_is_down_fails_clearly() {
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    ok(&[
        "image",
        "build",
        filter_wasm().to_str().expect("utf-8"),
        "-o",
        layout.to_str().expect("utf-8"),
    ]);
    let port = common::free_port();
    let out = tideway(&[
        "image",
        "push",
        "--plain-http",
        &format!("oci:{}:latest", layout.display()),
        &format!("127.0.0.1:{port}/tideway/filter:v1"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}
