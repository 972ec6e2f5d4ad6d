//! `tideway image` end to end, as a user runs it: the real filter module is
//! built into an image, pushed to a real `docker-registry` (plain, and with
//! token auth behind a token server of the test's own), verified the way
//! Istio's fetcher would, and pulled back byte-identical; credentials come
//! from where users keep them, and never show in the output.

#[path = "../../oci/tests/common/mod.rs"]
mod common;

use common::token_server::{Grant, Policy, TokenServer};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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

    fragment_digest(
        &pushed,
        &format!("oci://{}/tideway/filter", registry.addr),
        None,
    );
    // Credentials given to a registry that does not ask for them: Istio's
    // pull needs no secret either.
    let again = tideway_with(
        &[
            "image",
            "push",
            "--plain-http",
            &format!("oci:{layout_arg}:v1"),
            &target,
        ],
        &[
            ("TIDEWAY_REGISTRY_USERNAME", "someone"),
            ("TIDEWAY_REGISTRY_PASSWORD", "unused-Pa55"),
        ],
        None,
    );
    assert_no_secret(&again, &["unused-Pa55"]);
    fragment_digest(
        &succeeded(&again, "push with unneeded credentials"),
        &format!("oci://{}/tideway/filter", registry.addr),
        None,
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

const WRITER_PASSWORD: &str = "wr1ter-Pa55-never-printed";
const READER_PASSWORD: &str = "r3ader-Pa55-never-printed";

const REFRESH_TOKEN: &str = "refresh-cli-never-printed";

fn token_registry() -> (TokenServer, common::Registry) {
    let mut policy = Policy::new(
        &[("writer", WRITER_PASSWORD), ("reader", READER_PASSWORD)],
        vec![
            Grant::user("writer", "team/", &["pull", "push"]),
            Grant::user("reader", "team/", &["pull"]),
        ],
    );
    policy
        .refresh_tokens
        .push((REFRESH_TOKEN.to_string(), "writer".to_string()));
    let server = TokenServer::start(policy);
    let registry = common::Registry::token_auth(&server);
    (server, registry)
}

/// The start of every JWT (base64url of `{"`): registry tokens must not be
/// logged either.
const JWT_PREFIX: &str = "eyJ";

/// Runs tideway with extra environment and standard input; debug logging on,
/// so that a secret in any log line would show.
fn tideway_with(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tideway"));
    cmd.args(args)
        .env("RUST_LOG", "debug")
        .env_remove("RUST_BACKTRACE")
        .env_remove("DOCKER_CONFIG")
        .env_remove("TIDEWAY_REGISTRY_USERNAME")
        .env_remove("TIDEWAY_REGISTRY_PASSWORD")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running tideway");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing stdin");
    }
    child.wait_with_output().expect("waiting for tideway")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_secret(out: &Output, secrets: &[&str]) {
    let (stdout, stderr) = text(out);
    for s in secrets {
        assert!(
            !stdout.contains(s) && !stderr.contains(s),
            "a secret leaked:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

fn succeeded(out: &Output, what: &str) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "{what} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// The `error: …` line tideway ends a failed run with.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let (_, stderr) = text(out);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"))
        .to_string()
}

fn write_ca(dir: &Path, server: &TokenServer) -> PathBuf {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &server.tls.ca_pem).expect("writing the CA");
    ca
}

fn small_wasm(dir: &Path, tag: &str) -> PathBuf {
    let p = dir.join(format!("{tag}.wasm"));
    std::fs::write(&p, common::wasm_module(tag)).expect("writing wasm");
    p
}

/// The digest hex in the printed fragment, after checking the fragment's shape.
fn fragment_digest(stdout: &str, repo_url: &str, pull_secret: Option<&str>) -> String {
    let start = stdout
        .find("\nspec:\n")
        .unwrap_or_else(|| panic!("push prints the WasmPlugin fragment:\n{stdout}"));
    let fragment: Vec<&str> = stdout[start + 1..].lines().take(6).collect();
    let sha = fragment[2]
        .strip_prefix("  sha256: ")
        .unwrap_or_else(|| panic!("{fragment:?}"))
        .to_string();
    assert_eq!(fragment[1], format!("  url: {repo_url}@sha256:{sha}"));
    assert_eq!(fragment[3], "  imagePullPolicy: IfNotPresent");
    match pull_secret {
        Some(name) => assert_eq!(fragment[4], format!("  imagePullSecret: {name}")),
        None => assert!(
            !stdout.contains("imagePullSecret"),
            "no credentials, no pull secret:\n{stdout}"
        ),
    }
    sha
}

#[test]
fn push_to_a_token_registry_with_a_credential_helper_then_verify_and_skopeo() {
    let (server, registry) = token_registry();
    let work = tempfile::tempdir().expect("tempdir");
    let ca = write_ca(work.path(), &server);
    // A credential helper (Docker's protocol: server URL on stdin, JSON out)
    // that knows the writer; the config's `auths` holds the reader, which
    // must lose to the helper as in Docker.
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let helper = bin.join("docker-credential-tideway-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\nif [ \"$server\" = \"{}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"writer\",\"Secret\":\"{WRITER_PASSWORD}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
            registry.addr
        ),
    )
    .expect("writing the helper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let docker_dir = work.path().join("docker");
    std::fs::create_dir_all(&docker_dir).expect("docker dir");
    use base64::Engine as _;
    let reader_auth =
        base64::engine::general_purpose::STANDARD.encode(format!("reader:{READER_PASSWORD}"));
    std::fs::write(
        docker_dir.join("config.json"),
        format!(
            r#"{{"auths":{{"{0}":{{"auth":"{reader_auth}"}}}},"credHelpers":{{"{0}":"tideway-test"}}}}"#,
            registry.addr
        ),
    )
    .expect("writing config.json");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("DOCKER_CONFIG", docker_dir.to_str().expect("utf-8")),
        ("PATH", path.as_str()),
    ];
    let wasm = filter_wasm();
    let target = format!("{}/team/filter:v1", registry.addr);
    let ca_arg = ca.to_str().expect("utf-8");
    let pushed = tideway_with(
        &[
            "image",
            "push",
            wasm.to_str().expect("utf-8"),
            &target,
            "--ca-file",
            ca_arg,
        ],
        &env,
        None,
    );
    assert_no_secret(&pushed, &[WRITER_PASSWORD, READER_PASSWORD, JWT_PREFIX]);
    let stdout = succeeded(&pushed, "push with a credential helper");
    let sha = fragment_digest(
        &stdout,
        &format!("oci://{}/team/filter", registry.addr),
        Some("tideway-pull"),
    );
    assert!(
        stdout.contains("credential helper docker-credential-tideway-test"),
        "{stdout}"
    );

    let verified = tideway_with(
        &[
            "image",
            "verify",
            &target,
            "--ca-file",
            ca_arg,
            "--sha256",
            &sha,
        ],
        &env,
        None,
    );
    assert_no_secret(&verified, &[WRITER_PASSWORD, READER_PASSWORD]);
    assert!(succeeded(&verified, "verify").contains("ACCEPTED"));

    // skopeo pulls what was pushed, with the same credentials.
    let layout = work.path().join("from-skopeo");
    common::skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-cert-dir",
        server.tls.ca_dir.to_str().expect("utf-8"),
        "--src-creds",
        &format!("writer:{WRITER_PASSWORD}"),
        &format!("docker://{target}"),
        &format!("oci:{}:v1", layout.display()),
    ]);
    let index = std::fs::read_to_string(layout.join("index.json")).expect("skopeo's index");
    assert!(index.contains(&format!("sha256:{sha}")), "{index}");
}

#[test]
fn password_stdin_wins_over_the_docker_config_and_a_kubernetes_secret_names_the_pull_secret() {
    let (server, registry) = token_registry();
    let work = tempfile::tempdir().expect("tempdir");
    let ca = write_ca(work.path(), &server);
    let ca_arg = ca.to_str().expect("utf-8");
    let wasm = small_wasm(work.path(), "stdin");
    let wasm_arg = wasm.to_str().expect("utf-8");
    let target = format!("{}/team/filter:v1", registry.addr);
    let repo_url = format!("oci://{}/team/filter", registry.addr);
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    // The Docker config has the reader (pull only); the flags name the writer.
    let docker_dir = work.path().join("docker");
    std::fs::create_dir_all(&docker_dir).expect("docker dir");
    std::fs::write(
        docker_dir.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            registry.addr,
            b64(&format!("reader:{READER_PASSWORD}"))
        ),
    )
    .expect("config.json");
    let env = [("DOCKER_CONFIG", docker_dir.to_str().expect("utf-8"))];
    let out = tideway_with(
        &[
            "image",
            "push",
            wasm_arg,
            &target,
            "--ca-file",
            ca_arg,
            "--username",
            "writer",
            "--password-stdin",
            "--pull-secret",
            "regcred",
        ],
        &env,
        Some(&format!("{WRITER_PASSWORD}\n")),
    );
    assert_no_secret(&out, &[WRITER_PASSWORD, READER_PASSWORD]);
    fragment_digest(
        &succeeded(&out, "push with --password-stdin"),
        &repo_url,
        Some("regcred"),
    );

    // Without flags the config's reader is used, and refused word for word.
    let out = tideway_with(
        &["image", "push", wasm_arg, &target, "--ca-file", ca_arg],
        &env,
        None,
    );
    assert_no_secret(&out, &[READER_PASSWORD]);
    assert_eq!(
        error_line(&out),
        format!(
            "denied: user \"reader\" lacks push access to repository team/filter on registry {} (the token server granted: pull)",
            registry.addr
        )
    );

    // A wrong password read from stdin: refused by the token server, not shown.
    let wrong = "wrong-Pa55-from-stdin";
    let out = tideway_with(
        &[
            "image",
            "push",
            wasm_arg,
            &target,
            "--ca-file",
            ca_arg,
            "--username",
            "writer",
            "--password-stdin",
        ],
        &env,
        Some(wrong),
    );
    assert_no_secret(&out, &[wrong]);
    assert!(
        error_line(&out).starts_with(&format!(
            "unauthorized: registry {} refused access to team/filter as user \"writer\": the token server {} refused the request (401)",
            registry.addr,
            server.realm()
        )),
        "{}",
        error_line(&out)
    );

    // The Secret Istio's imagePullSecret names serves the push, and the
    // fragment names it.
    let docker_config = format!(
        r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
        registry.addr,
        b64(&format!("writer:{WRITER_PASSWORD}"))
    );
    // In YAML, as `kubectl create secret docker-registry filter-pull
    // --dry-run=client -o yaml` prints it.
    let secret = work.path().join("secret.yaml");
    std::fs::write(
        &secret,
        format!(
            "apiVersion: v1\ndata:\n  .dockerconfigjson: {}\nkind: Secret\nmetadata:\n  creationTimestamp: null\n  name: filter-pull\ntype: kubernetes.io/dockerconfigjson\n",
            b64(&docker_config)
        ),
    )
    .expect("secret.yaml");
    let out = tideway_with(
        &[
            "image",
            "push",
            wasm_arg,
            &target,
            "--ca-file",
            ca_arg,
            "--docker-config",
            secret.to_str().expect("utf-8"),
        ],
        &[],
        None,
    );
    assert_no_secret(&out, &[WRITER_PASSWORD, &b64(&docker_config)]);
    fragment_digest(
        &succeeded(&out, "push with a Kubernetes Secret"),
        &repo_url,
        Some("filter-pull"),
    );
}

#[test]
fn protocol_mismatches_are_named_with_the_flag_to_use_and_not_retried() {
    let work = tempfile::tempdir().expect("tempdir");
    let wasm = small_wasm(work.path(), "mismatch");
    let wasm_arg = wasm.to_str().expect("utf-8");

    let plain = common::Registry::plain();
    let out = tideway(&[
        "image",
        "push",
        wasm_arg,
        &format!("{}/tideway/filter:v1", plain.addr),
    ]);
    assert_eq!(
        error_line(&out),
        format!("{} speaks plain HTTP; use --plain-http", plain.addr)
    );
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("retrying"), "{stderr}");

    let tls = common::Registry::tls_open();
    let out = tideway(&[
        "image",
        "push",
        "--plain-http",
        wasm_arg,
        &format!("{}/tideway/filter:v1", tls.addr),
    ]);
    assert_eq!(
        error_line(&out),
        format!("{} speaks HTTPS; drop --plain-http", tls.addr)
    );
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("retrying"), "{stderr}");
}

#[test]
fn an_identity_token_from_docker_login_is_used_and_never_shown() {
    let (server, registry) = token_registry();
    let work = tempfile::tempdir().expect("tempdir");
    let ca = write_ca(work.path(), &server);
    let wasm = small_wasm(work.path(), "identity");
    let docker_dir = work.path().join("docker");
    std::fs::create_dir_all(&docker_dir).expect("docker dir");
    // What `docker login` leaves for a registry whose token server hands out
    // refresh tokens.
    std::fs::write(
        docker_dir.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"","identitytoken":"{REFRESH_TOKEN}"}}}}}}"#,
            registry.addr
        ),
    )
    .expect("config.json");
    let out = tideway_with(
        &[
            "image",
            "push",
            wasm.to_str().expect("utf-8"),
            &format!("{}/team/filter:v1", registry.addr),
            "--ca-file",
            ca.to_str().expect("utf-8"),
        ],
        &[("DOCKER_CONFIG", docker_dir.to_str().expect("utf-8"))],
        None,
    );
    assert_no_secret(&out, &[REFRESH_TOKEN, JWT_PREFIX]);
    fragment_digest(
        &succeeded(&out, "push with an identity token"),
        &format!("oci://{}/team/filter", registry.addr),
        Some("tideway-pull"),
    );
    let issued = server.issued();
    assert!(
        !issued.is_empty() && issued.iter().all(|i| i.method == "POST"),
        "the refresh-token grant was used: {issued:?}"
    );
}
