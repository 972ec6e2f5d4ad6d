//! `tideway render` and `tideway check-config` as a user runs them: files on
//! disk, exit status, messages on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

fn tideway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tideway"))
        .args(args)
        .output()
        .expect("run tideway")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn render_writes_one_folder_per_member_then_check_config_accepts_its_plugins() {
    let out = tempfile::tempdir().expect("tmp");
    let fleet = examples().join("fleet.yaml");
    let policy = examples().join("canary/policy.yaml");
    let image = "registry.example.com/tideway/filter:v2@sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let r = tideway(&[
        "render",
        "-f",
        s(&policy),
        "--fleet",
        s(&fleet),
        "--image",
        image,
        "-o",
        s(out.path()),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for member in ["cluster-hangzhou", "cluster-shanghai", "cluster-beijing"] {
        let dir = out.path().join(member);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("member dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert!(names[0].starts_with("01-wasmplugin-frontend-"), "{names:?}");
        let plugin = std::fs::read_to_string(dir.join(&names[0])).expect("plugin");
        assert!(
            plugin.contains("oci://registry.example.com/tideway/filter@sha256:1111"),
            "--image wins over spec.plugin.image"
        );
        assert!(plugin.contains(&format!("cluster: {member}")), "{plugin}");
        // The rendered WasmPlugin passes the filter's own check.
        let c = tideway(&["check-config", s(&dir.join(&names[0]))]);
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
        assert!(String::from_utf8_lossy(&c.stdout).contains("1 service(s)"));
    }
    let k = tideway(&[
        "render",
        "-f",
        s(&policy),
        "--fleet",
        s(&fleet),
        "-o",
        s(out.path()),
        "--karmada",
    ]);
    assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
    assert!(out.path().join("karmada").is_dir());
}

#[test]
fn a_bad_policy_fails_with_path_value_and_expectation() {
    let dir = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(examples().join("resilience/policy.yaml"))
        .expect("policy")
        .replacen(
            "  - cluster: cluster-beijing\n",
            "  - cluster: cluster-mars\n    weight: -2\n",
            1,
        );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, text).expect("write");
    let fleet = examples().join("fleet.yaml");
    let r = tideway(&[
        "render",
        "-f",
        s(&bad),
        "--fleet",
        s(&fleet),
        "-o",
        s(&dir.path().join("out")),
    ]);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains(
            "spec.destinations[2].cluster: got \"cluster-mars\"; expected a member of Fleet"
        ),
        "{err}"
    );
    assert!(
        err.contains("spec.destinations[2].weight: got -2.0; expected a finite number ≥ 0"),
        "{err}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "nothing is written for a bad policy"
    );
}

#[test]
fn check_config_shares_the_error_format() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("c.json");
    std::fs::write(&bad, r#"{"scheduler":{"decayMs":5000.5}}"#).expect("write");
    let r = tideway(&["check-config", s(&bad)]);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("scheduler.decayMs: got floating point `5000.5`; expected u64"),
        "{err}"
    );
}
