//! The weights API over real HTTP on loopback: the real `tideway
//! serve-weights` binary (and the CLI commands against it), and the library
//! server where a test needs its counters.
//!
//! What would break if the code were wrong: ETag/304, a long-poll that
//! returns on a change and not before, writes without the token, the token
//! showing up in debug logs, bad parameters not named, a cluster drain
//! missing a service, versions going backwards, a poller that hangs up
//! keeping its poll alive.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tideway_filter::weights::WeightsDocument;

const TOKEN: &str = "tw-test-9f3c1b7e2d";

/// Two services sharing cluster `east`.
fn policies(dir: &Path) -> PathBuf {
    let policy = |name: &str, service: &str, clusters: &[(&str, f64)]| {
        let destinations: String = clusters
            .iter()
            .map(|(c, w)| format!("  - cluster: {c}\n    weight: {w}\n"))
            .collect();
        format!(
            "apiVersion: traffic.tideway.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  fleet: f\n  service:\n    name: {service}\n    port: 8080\n  destinations:\n{destinations}"
        )
    };
    let policies = dir.join("policies");
    std::fs::create_dir_all(policies.join("more")).unwrap();
    std::fs::write(
        policies.join("alpha.yaml"),
        policy("alpha", "alpha", &[("east", 70.0), ("west", 30.0)]),
    )
    .unwrap();
    // In a subdirectory: directories are searched recursively.
    std::fs::write(
        policies.join("more/beta.yaml"),
        policy("beta", "beta", &[("east", 1.0), ("north", 1.0)]),
    )
    .unwrap();
    policies
}

/// A running `tideway serve-weights`, killed on drop.
struct Server {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
    token_file: PathBuf,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, &[])
    }

    fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let policies = policies(dir.path());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tideway"));
        cmd.args(["serve-weights", "--listen", "127.0.0.1:0", "--policy"])
            .arg(&policies)
            .args(
                extra
                    .iter()
                    .map(|a| a.replace("{TOKEN_FILE}", &token_file.display().to_string())),
            )
            .env_remove("TIDEWAY_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("tideway serve-weights starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no address line: {line:?}; stderr: {}",
                    stderr.lock().unwrap()
                )
            })
            .to_string();
        Self {
            child,
            url,
            stderr,
            _dir: dir,
            token_file,
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_tideway"))
            .args(args)
            .args(["--server", &self.url])
            .env_remove("TIDEWAY_TOKEN")
            .output()
            .unwrap()
    }

    fn cli_with_token(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        let file = self.token_file.display().to_string();
        all.extend(["--token-file", &file]);
        self.cli(&all)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

async fn get(url: &str, etag: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = http().get(url);
    if let Some(e) = etag {
        req = req.header("if-none-match", e);
    }
    let resp = req.send().await.expect("GET");
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    (status, etag, resp.text().await.unwrap())
}

async fn post(server: &Server, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = http()
        .post(format!("{}{path}", server.url))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

fn drained(doc: &WeightsDocument) -> Vec<String> {
    doc.services
        .iter()
        .flat_map(|s| {
            s.destinations
                .iter()
                .filter(|d| d.drained)
                .map(move |d| format!("{}/{}", s.name, d.name))
        })
        .collect()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etag_304_and_a_bounded_wait() {
    let server = Server::start(&[]);
    let url = format!("{}/v1/weights", server.url);
    let (status, etag, body) = get(&url, None).await;
    assert_eq!(status, 200, "{body}");
    let doc = WeightsDocument::parse(body.as_bytes()).expect("a valid document");
    let etag = etag.expect("an ETag");
    assert_eq!(etag, format!("\"{}\"", doc.version));
    // The policies' values, factor weights included.
    let alpha = &doc.services[0];
    assert_eq!(alpha.name, "alpha");
    assert_eq!(alpha.destinations[0].weight, 70.0);
    assert!(alpha.factors.is_some());

    // Same version: 304 at once without wait, after the wait with one.
    let (status, etag2, body) = get(&url, Some(&etag)).await;
    assert_eq!((status, body.as_str()), (304, ""));
    assert_eq!(etag2.as_deref(), Some(etag.as_str()));
    let t = Instant::now();
    let (status, _, _) = get(&format!("{url}?wait=700ms"), Some(&etag)).await;
    assert_eq!(status, 304);
    assert!(
        t.elapsed() >= Duration::from_millis(650),
        "{:?}",
        t.elapsed()
    );
    // Another version: the document, at once even with a wait.
    let t = Instant::now();
    let (status, _, _) = get(&format!("{url}?wait=30s"), Some("\"1\"")).await;
    assert_eq!(status, 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    // A subset.
    let (_, _, body) = get(&format!("{url}?service=beta"), None).await;
    let only = WeightsDocument::parse(body.as_bytes()).unwrap();
    assert_eq!(only.services.len(), 1);
    assert_eq!(only.services[0].name, "beta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_a_drain_happens_and_not_before() {
    let server = Server::start(&["--token-file", "{TOKEN_FILE}"]);
    let url = format!("{}/v1/weights", server.url);
    let (_, etag, body) = get(&url, None).await;
    let before = WeightsDocument::parse(body.as_bytes()).unwrap();
    let etag = etag.unwrap();
    let poll = {
        let url = format!("{url}?wait=30s&service=alpha,beta");
        let etag = etag.clone();
        tokio::spawn(async move {
            let r = get(&url, Some(&etag)).await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !poll.is_finished(),
        "the poll answered before anything changed"
    );

    let (status, reply) = post(&server, "/v1/drain", serde_json::json!({"cluster": "east"})).await;
    assert_eq!(status, 200, "{reply}");
    let drained_at = Instant::now();
    let ((status, new_etag, body), answered_at) =
        tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .expect("the poll answers")
            .unwrap();
    assert_eq!(status, 200);
    let lag = answered_at.saturating_duration_since(drained_at);
    // A poll that is not woken answers at the end of its 30 s wait: 2 s
    // tells the two apart with room for a stalled scheduler on a loaded CI
    // machine.
    assert!(
        lag < Duration::from_secs(2),
        "the poll answered {lag:?} after the drain"
    );
    let after = WeightsDocument::parse(body.as_bytes()).unwrap();
    assert!(after.version > before.version);
    assert_eq!(new_etag, Some(format!("\"{}\"", after.version)));
    assert_eq!(reply["version"], after.version);
    assert_eq!(drained(&after), ["alpha/east", "beta/east"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_by_cluster_reaches_every_service_and_versions_only_increase() {
    let server = Server::start(&["--token-file", "{TOKEN_FILE}"]);
    let url = format!("{}/v1/weights", server.url);
    let doc = |b: String| WeightsDocument::parse(b.as_bytes()).unwrap();
    let mut last = doc(get(&url, None).await.2).version;

    // The CLI, as an operator runs it.
    let out = server.cli_with_token(&["drain", "east"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("changed"),
        "{}",
        text(&out)
    );
    let d = doc(get(&url, None).await.2);
    assert_eq!(drained(&d), ["alpha/east", "beta/east"]);
    assert!(d.version > last);
    last = d.version;

    // Repeating changes nothing: same version, and says so.
    let out = server.cli_with_token(&["drain", "east"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(doc(get(&url, None).await.2).version, last);

    // One service only.
    let out = server.cli_with_token(&["drain", "north", "--service", "beta"]);
    assert!(out.status.success(), "{}", text(&out));
    let d = doc(get(&url, None).await.2);
    assert_eq!(drained(&d), ["alpha/east", "beta/east", "beta/north"]);
    assert!(d.version > last);
    last = d.version;

    // Weight and cost set, then reset.
    let out = server.cli_with_token(&[
        "weight", "set", "alpha", "west", "--weight", "5", "--cost", "2.5",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let d = doc(get(&url, None).await.2);
    let west = &d.services[0].destinations[1];
    assert_eq!((west.weight, west.cost), (5.0, 2.5));
    assert!(d.version > last);
    last = d.version;
    // A negative number reaches the check and is named with its field, as
    // typed (not taken for an unknown flag).
    for (flag, field) in [("--weight", "weight"), ("--cost", "cost")] {
        let out = server.cli_with_token(&["weight", "set", "alpha", "west", flag, "-1"]);
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{field}: got -1; expected a finite number ≥ 0")),
            "{}",
            text(&out)
        );
    }
    let out = server.cli_with_token(&["weight", "set", "alpha", "west", "--reset"]);
    assert!(out.status.success(), "{}", text(&out));
    let d = doc(get(&url, None).await.2);
    assert_eq!(d.services[0].destinations[1].weight, 30.0);
    assert!(d.version > last);
    last = d.version;

    // Undrain everywhere lifts the per-service drains too.
    let out = server.cli_with_token(&["drain", "east", "--undo"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = server.cli_with_token(&["drain", "north", "--undo"]);
    assert!(out.status.success(), "{}", text(&out));
    let d = doc(get(&url, None).await.2);
    assert!(drained(&d).is_empty(), "{:?}", drained(&d));
    assert!(d.version > last);

    // `weights get` shows the same.
    let out = server.cli(&["weights", "get", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown: WeightsDocument = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown, d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_token_and_it_never_reaches_the_logs() {
    let server = Server::start_with(&["--token-file", "{TOKEN_FILE}"], &[("RUST_LOG", "debug")]);
    // No token.
    let out = server.cli(&["drain", "east"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.contains("--token-file"),
        "{}",
        text(&out)
    );
    // A wrong token.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let out = server.cli(&["drain", "east", "--token-file", wrong.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the bearer token"), "{}", text(&out));
    assert!(!err.contains("not-the-token"), "{}", text(&out));
    // Raw: 401 with a challenge, and nothing changed.
    let resp = http()
        .post(format!("{}/v1/drain", server.url))
        .bearer_auth("not-the-token")
        .json(&serde_json::json!({"cluster": "east"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = resp.json().await.unwrap();
    let said = body["error"].as_str().unwrap_or_default().to_string();
    assert!(
        said.starts_with("authorization: got a token the server does not accept; expected `Authorization: Bearer <token>`"),
        "{said}"
    );
    assert!(!said.contains("not-the-token"), "{said}");
    // No header at all: the error says what to send.
    let resp = http()
        .post(format!("{}/v1/drain", server.url))
        .json(&serde_json::json!({"cluster": "east"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    let said = body["error"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("authorization: missing; expected `Authorization: Bearer <token>`")
            && said.contains("--token-file"),
        "{said}"
    );
    let (_, _, body) = get(&format!("{}/v1/weights", server.url), None).await;
    assert!(drained(&WeightsDocument::parse(body.as_bytes()).unwrap()).is_empty());
    // The right token, through $TIDEWAY_TOKEN this time, at debug level.
    let out = Command::new(env!("CARGO_BIN_EXE_tideway"))
        .args(["drain", "east", "--server", &server.url])
        .env("TIDEWAY_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(TOKEN), "the CLI printed the token");
    // Let the server log the request (within 5 s), then look.
    let logged_by = Instant::now() + Duration::from_secs(5);
    while !server.stderr().contains("weights API request") && Instant::now() < logged_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = server.stderr();
    assert!(
        log.contains("weights API request"),
        "debug logging is on: {log}"
    );
    assert!(!log.contains(TOKEN), "the server logged the token: {log}");
    assert!(
        !log.contains("not-the-token"),
        "the server logged a presented token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_token_is_read_only_and_protect_reads_guards_gets() {
    let server = Server::start(&[]);
    let (status, body) = post(&server, "/v1/drain", serde_json::json!({"cluster": "east"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--token-file"),
        "{body}"
    );

    let server = Server::start(&["--token-file", "{TOKEN_FILE}", "--protect-reads"]);
    let (status, _, _) = get(&format!("{}/v1/weights", server.url), None).await;
    assert_eq!(status, 401);
    let out = server.cli_with_token(&["weights", "get"]);
    assert!(out.status.success(), "{}", text(&out));
    // Health stays open for probes.
    let (status, _, _) = get(&format!("{}/healthz", server.url), None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_naming_the_parameter_and_value() {
    let server = Server::start(&["--token-file", "{TOKEN_FILE}"]);
    let url = format!("{}/v1/weights", server.url);
    for (query, field, value) in [
        ("wait=abc", "wait", "abc"),
        ("wait=61s", "wait", "61s"),
        ("wait=-1s", "wait", "-1s"),
        ("service=alpha,gamma", "service", "gamma"),
        ("timeout=5s", "timeout", "5s"),
    ] {
        let (status, _, body) = get(&format!("{url}?{query}"), None).await;
        assert_eq!(status, 400, "{query}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["field"], field, "{query}: {body}");
        assert!(
            v["value"].as_str().unwrap().contains(value),
            "{query}: {body}"
        );
        assert!(
            v["error"].as_str().unwrap().contains(field),
            "{query}: {body}"
        );
    }
    let (_, _, body) = get(&format!("{url}?service=gamma"), None).await;
    assert!(
        body.contains("alpha") && body.contains("beta"),
        "lists the known services: {body}"
    );

    for (path, req, field) in [
        (
            "/v1/drain",
            serde_json::json!({"cluster": "south"}),
            "cluster",
        ),
        (
            "/v1/drain",
            serde_json::json!({"cluster": "west", "service": "beta"}),
            "cluster",
        ),
        (
            "/v1/drain",
            serde_json::json!({"cluster": "east", "service": "gamma"}),
            "service",
        ),
        ("/v1/drain", serde_json::json!({"clustr": "east"}), "clustr"),
        (
            "/v1/weight",
            serde_json::json!({"service": "alpha", "destination": "east", "weight": -2}),
            "weight",
        ),
        (
            "/v1/weight",
            serde_json::json!({"service": "alpha", "destination": "nowhere", "weight": 1}),
            "destination",
        ),
        (
            "/v1/weight",
            serde_json::json!({"service": "alpha", "destination": "east", "cost": "cheap"}),
            "cost",
        ),
    ] {
        let (status, body) = post(&server, path, req.clone()).await;
        assert_eq!(status, 400, "{req}: {body}");
        assert_eq!(body["field"], field, "{req}: {body}");
    }
    // Nothing of that changed the weights.
    let out = server.cli(&["weights", "get", "--json"]);
    let doc: WeightsDocument = serde_json::from_slice(&out.stdout).unwrap();
    assert!(drained(&doc).is_empty());
    assert_eq!(doc.services[0].destinations[0].weight, 70.0);

    // The CLI passes the server's message on.
    let out = server.cli_with_token(&["drain", "south"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster") && err.contains("south") && err.contains("east"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_unreachable_server_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_tideway"))
        .args(["weights", "get", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the weights server at http://127.0.0.1:9"),
        "{err}"
    );
}

#[test]
fn tls_where_the_operator_configures_it() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_file, key_file, ca_file) = (
        dir.path().join("c.pem"),
        dir.path().join("k.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let server = Server::start(&[
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let out = server.cli(&["weights", "get", "--ca-file", ca_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("alpha"));
    // Without trusting the CA: a TLS error, naming the server.
    let out = server.cli(&["weights", "get"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&server.url),
        "{}",
        text(&out)
    );

    // A key file that is not a key: named.
    let out = Command::new(env!("CARGO_BIN_EXE_tideway"))
        .args(["serve-weights", "--listen", "127.0.0.1:0", "--policy"])
        .arg(policies(dir.path()))
        .args([
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            ca_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        text(&out)
    );
}

/// A poller that hangs up mid-poll frees its poll (and its connection):
/// ten thousand sidecars restarting must not leave ten thousand dead polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_that_hangs_up_frees_its_poll() {
    use tideway_controller::weights::{ServerOptions, WeightsApi, WeightsState};
    let dir = tempfile::tempdir().unwrap();
    let policies = tideway_controller::load::policies_from_paths(&[policies(dir.path())]).unwrap();
    let state = Arc::new(WeightsState::from_policies(&policies).unwrap());
    let version = state.snapshot().version();
    let api = WeightsApi::new(state.clone(), ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api.clone().serve(listener, std::future::pending()));

    let mut pollers = Vec::new();
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /v1/weights?wait=60s HTTP/1.1\r\nhost: x\r\nif-none-match: \"{version}\"\r\n\r\n"
        )
        .unwrap();
        pollers.push(s);
    }
    let until = |want: usize| {
        let api = api.clone();
        async move {
            let t = Instant::now();
            while api.stats.waiting.load(std::sync::atomic::Ordering::Relaxed) != want {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "waiting never reached {want}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    until(3).await;
    drop(pollers.pop());
    drop(pollers.pop());
    until(1).await;
    // The one still connected is answered by the next change.
    state.drain("east", None, true).unwrap();
    until(0).await;
    let mut s = pollers.pop().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The hung-up connections' counter drops after their polls' (the
    // connection task ends after the request future): wait for it.
    let counted_by = Instant::now() + Duration::from_secs(5);
    while api
        .stats
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        != 1
        && Instant::now() < counted_by
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        api.stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// With --state-file a drain survives a restart, and the restarted server's
/// versions start above the old ones (pollers reject a lower version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_and_version_order_survive_a_restart() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("overrides.json");
    let state_arg = state.to_str().unwrap();
    let first = Server::start(&["--token-file", "{TOKEN_FILE}", "--state-file", state_arg]);
    let out = first.cli_with_token(&["drain", "west", "--service", "alpha"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = first.cli_with_token(&["weight", "set", "beta", "north", "--weight", "9"]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, _, body) = get(&format!("{}/v1/weights", first.url), None).await;
    let before = WeightsDocument::parse(body.as_bytes()).unwrap();
    drop(first);

    let second = Server::start(&["--token-file", "{TOKEN_FILE}", "--state-file", state_arg]);
    let (_, _, body) = get(&format!("{}/v1/weights", second.url), None).await;
    let after = WeightsDocument::parse(body.as_bytes()).unwrap();
    assert_eq!(drained(&after), ["alpha/west"]);
    assert_eq!(after.services[1].destinations[1].weight, 9.0);
    assert!(
        after.version > before.version,
        "{} after {}",
        after.version,
        before.version
    );
    assert_eq!(after.services, before.services);

    // A state file that is not one stops the server, naming it.
    std::fs::write(&state, "{\"drained\": 3}").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tideway"))
        .args([
            "serve-weights",
            "--listen",
            "127.0.0.1:0",
            "--state-file",
            state_arg,
            "--policy",
        ])
        .arg(policies(dir.path()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("overrides.json"),
        "{}",
        text(&out)
    );
}
