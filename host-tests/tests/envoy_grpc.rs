//! gRPC over HTTP/2 end to end in real Envoy 1.40: an h2c client (the `h2`
//! crate, prior knowledge) → Envoy with the filter → h2c gRPC backends of
//! our own (Envoy speaks HTTP/2 to them, as Istio does on a gRPC port).
//!
//! A gRPC call answers HTTP 200 whatever happened, so the filter must read
//! `grpc-status` (in the response headers of a trailers-only response, else
//! in the trailers) to see a failing destination; a stream's latency sample
//! is the time to its response headers, and it counts as in flight until it
//! ends. What the filter measured is read back from its
//! `x-tideway-decision` response header (`decisionHeader`), which carries
//! the scores each decision was made on.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tideway_host_tests::backend::Backend;
use tideway_host_tests::envoy::{Envoy, EnvoySpec};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const HOST: &str = "reviews.prod.svc.cluster.local";
const NAMES: [&str; 3] = ["east", "west", "south"];
const ROUTING_HEADER: &str = tideway_filter::config::DEFAULT_ROUTING_HEADER;

/// How a backend answers a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Headers, one message, `grpc-status: 0` in the trailers.
    Ok,
    /// HTTP 200 with `grpc-status: 14` (UNAVAILABLE) in the response
    /// headers and nothing else: a trailers-only response.
    UnavailableTrailersOnly,
    /// Headers, one message, then `grpc-status: 14` in the trailers.
    UnavailableInTrailers,
}

/// An h2c gRPC backend: answers every call per its mode, `x-backend` its
/// name. A call to `/stream/<ms>` is a server stream: the headers at once,
/// then a message every 100 ms for that long, then the trailers.
struct GrpcBackend {
    name: &'static str,
    port: u16,
    recorded: Arc<Mutex<Vec<HeaderMap>>>,
}

impl GrpcBackend {
    fn start(rt: &Runtime, name: &'static str, mode: Mode) -> Self {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let rec = Arc::clone(&recorded);
        rt.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let rec = Arc::clone(&rec);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = conn.accept().await {
                        if let Ok(mut rec) = rec.lock() {
                            rec.push(request.headers().clone());
                        }
                        tokio::spawn(answer(name, mode, request, respond));
                    }
                });
            }
        });
        Self {
            name,
            port,
            recorded,
        }
    }

    fn recorded(&self) -> Vec<HeaderMap> {
        self.recorded.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// One length-prefixed gRPC message: uncompressed, 2 bytes of protobuf.
fn grpc_message() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1])
}

/// Request header: answer the headers only after this many milliseconds
/// (the time to response headers the filter samples).
const HEADERS_AFTER_MS: &str = "x-test-headers-after-ms";

async fn answer(
    name: &'static str,
    mode: Mode,
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let path = request.uri().path().to_string();
    let headers_after: u64 = header(request.headers(), HEADERS_AFTER_MS)
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    // As a gRPC server does with a unary call: the request message first.
    let mut body = request.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    tokio::time::sleep(Duration::from_millis(headers_after)).await;
    let response = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-backend", name);
    if mode == Mode::UnavailableTrailersOnly {
        let response = response
            .header("grpc-status", "14")
            .header("grpc-message", "down")
            .body(());
        if let Ok(response) = response {
            let _ = respond.send_response(response, true);
        }
        return;
    }
    let Ok(response) = response.body(()) else {
        return;
    };
    let Ok(mut stream) = respond.send_response(response, false) else {
        return;
    };
    let stream_ms: u64 = path
        .strip_prefix("/stream/")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    let mut streamed = 0;
    loop {
        if stream.send_data(grpc_message(), false).is_err() {
            return;
        }
        if streamed >= stream_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        streamed += 100;
    }
    let mut trailers = HeaderMap::new();
    let status = if mode == Mode::UnavailableInTrailers {
        "14"
    } else {
        "0"
    };
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    let _ = stream.send_trailers(trailers);
}

/// What a call came back with.
#[derive(Debug, Clone)]
struct Called {
    backend: String,
    /// From the response headers (trailers-only) or the trailers.
    grpc_status: Option<String>,
    /// The filter's `x-tideway-decision` response header.
    decision: Option<String>,
}

impl Called {
    /// `destination`'s score in the decision header.
    fn score(&self, destination: &str) -> f64 {
        let decision = self.decision.as_deref().unwrap_or_default();
        decision
            .split("scores=")
            .nth(1)
            .and_then(|scores| {
                scores.split(',').find_map(|s| {
                    let (name, score) = s.split_once(':')?;
                    (name == destination).then(|| score.trim().parse().ok())?
                })
            })
            .unwrap_or_else(|| panic!("no score for {destination} in {decision:?}"))
    }
}

/// An h2c client over one connection to Envoy.
#[derive(Clone)]
struct GrpcClient {
    sender: h2::client::SendRequest<Bytes>,
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl GrpcClient {
    async fn connect(port: u16) -> Self {
        let socket = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (sender, conn) = h2::client::handshake(socket).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Self { sender }
    }

    /// One unary (or server-streaming) call to `path`, read to its end.
    async fn call(&self, path: &str, headers: &[(&str, &str)]) -> Called {
        let mut request = Request::builder()
            .method("POST")
            .uri(format!("http://{HOST}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(()).expect("request");
        let mut sender = self.sender.clone().ready().await.expect("ready");
        let (response, mut body) = sender.send_request(request, false).expect("send");
        // The stream may already be over (Envoy resets it once the
        // response is complete); the response below tells what happened.
        let _ = body.send_data(grpc_message(), true);
        let response = response.await.expect("response");
        assert_eq!(response.status(), 200, "{response:?}");
        let backend = header(response.headers(), "x-backend").unwrap_or_default();
        let decision = header(response.headers(), "x-tideway-decision");
        let mut grpc_status = header(response.headers(), "grpc-status");
        let mut data = response.into_body();
        while let Some(chunk) = data.data().await {
            let chunk = chunk.expect("response data");
            let _ = data.flow_control().release_capacity(chunk.len());
        }
        if let Ok(Some(trailers)) = data.trailers().await {
            grpc_status = grpc_status.or_else(|| header(&trailers, "grpc-status"));
        }
        Called {
            backend,
            grpc_status,
            decision,
        }
    }
}

/// The plugin config: three equal destinations; `weights` the scheduler's
/// factor weights, `service_extra` / `top_extra` more fields.
fn config(weights: &str, service_extra: &str, top_extra: &str) -> String {
    format!(
        r#"{{{top_extra}"services":[{{"name":"reviews","hosts":["{HOST}"],{service_extra}
            "destinations":[{{"name":"east","weight":1}},{{"name":"west","weight":1}},{{"name":"south","weight":1}}]}}],
          "scheduler":{{"weights":{weights},"tickMs":100,"ejectBaseMs":30000}}}}"#
    )
}

const STATIC: &str = r#"{"latency":0,"load":0,"cost":0,"affinity":0}"#;

struct Fleet {
    rt: Runtime,
    backends: Vec<GrpcBackend>,
    envoy: Envoy,
}

impl Fleet {
    /// Three h2c gRPC backends (east answering per `east_mode`), Envoy with
    /// `workers` worker threads in front.
    fn start(config: &str, east_mode: Mode, workers: u32) -> Fleet {
        Self::start_with(config, east_mode, workers, |_| {})
    }

    fn start_with(
        config: &str,
        east_mode: Mode,
        workers: u32,
        adjust: impl FnOnce(&mut EnvoySpec),
    ) -> Fleet {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let backends: Vec<GrpcBackend> = NAMES
            .iter()
            .map(|&name| {
                let mode = if name == "east" { east_mode } else { Mode::Ok };
                GrpcBackend::start(&rt, name, mode)
            })
            .collect();
        let dests: Vec<(&str, u16)> = backends.iter().map(|b| (b.name, b.port)).collect();
        let mut spec = EnvoySpec::new(config, &dests);
        spec.upstream_http2 = true;
        spec.concurrency = workers;
        adjust(&mut spec);
        let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
        Fleet {
            rt,
            backends,
            envoy,
        }
    }

    fn ejections(&self, name: &str) -> u64 {
        self.envoy
            .stat(&format!("wasmcustom.tideway.ejections.reviews.{name}"))
            .expect("stat")
    }

    fn backend(&self, name: &str) -> &GrpcBackend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .expect("backend")
    }
}

fn ejected_over_http2(east_mode: Mode) {
    let fleet = Fleet::start(&config(STATIC, "", ""), east_mode, 2);
    let calls: Vec<Called> = fleet.rt.block_on(async {
        let client = GrpcClient::connect(fleet.envoy.port).await;
        let mut calls = Vec::new();
        for _ in 0..90 {
            calls.push(client.call("/reviews.Reviews/Get", &[]).await);
        }
        calls
    });
    let unavailable: Vec<&Called> = calls
        .iter()
        .filter(|c| c.grpc_status.as_deref() == Some("14"))
        .collect();
    // Every failed call came from east, and east did fail (or the test
    // would prove nothing).
    assert!(
        unavailable.iter().all(|c| c.backend == "east"),
        "{unavailable:?}"
    );
    assert!(!unavailable.is_empty(), "east never answered UNAVAILABLE");
    assert!(
        fleet.ejections("east") >= 1,
        "east answered UNAVAILABLE {} times and was not ejected\n{}",
        unavailable.len(),
        fleet.envoy.log_tail(30)
    );
    // Ejected after its consecutive failures (5, Envoy's default), not
    // after a third of all traffic.
    assert!(
        unavailable.len() <= 6,
        "{} calls failed before east was ejected",
        unavailable.len()
    );
    for healthy in ["west", "south"] {
        assert_eq!(fleet.ejections(healthy), 0, "{healthy} was ejected");
    }
    // After the ejection every call is served OK by the healthy ones.
    let last: Vec<&Called> = calls.iter().rev().take(45).collect();
    assert!(
        last.iter()
            .all(|c| c.grpc_status.as_deref() == Some("0") && c.backend != "east"),
        "{last:?}"
    );
    for healthy in ["west", "south"] {
        assert!(
            last.iter().any(|c| c.backend == healthy),
            "{healthy} got none of the last 45 calls: {last:?}"
        );
    }
}

#[test]
fn a_grpc_backend_answering_unavailable_trailers_only_is_ejected() {
    ejected_over_http2(Mode::UnavailableTrailersOnly);
}

#[test]
fn a_grpc_backend_answering_unavailable_in_its_trailers_is_ejected() {
    ejected_over_http2(Mode::UnavailableInTrailers);
}

/// Trusted routing headers let a test pin streams on east; the decision
/// header shows what the filter measured.
const PINNABLE: &str = r#""trust":{"allSources":true},"decisionHeader":true,"#;

#[test]
fn a_long_stream_does_not_make_its_destination_look_slow() {
    // Latency scoring alone; one worker, so every call sees the same
    // estimates. Every backend answers headers after 50 ms, so loopback
    // noise (a few ms, peaks of tens under load) is small beside it.
    let fleet = Fleet::start(
        &config(
            r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
            "",
            PINNABLE,
        ),
        Mode::Ok,
        1,
    );
    let slow_headers = (HEADERS_AFTER_MS, "50");
    let (stream, after) = fleet.rt.block_on(async {
        let client = GrpcClient::connect(fleet.envoy.port).await;
        // Every destination measured first.
        for name in NAMES {
            for _ in 0..5 {
                client
                    .call(
                        "/reviews.Reviews/Get",
                        &[(ROUTING_HEADER, name), slow_headers],
                    )
                    .await;
            }
        }
        // A two-second server stream on east: its headers after 50 ms as
        // well, then a message every 100 ms.
        let stream = client
            .call("/stream/2000", &[(ROUTING_HEADER, "east"), slow_headers])
            .await;
        let mut after = Vec::new();
        for _ in 0..5 {
            after.push(client.call("/reviews.Reviews/Get", &[slow_headers]).await);
        }
        (stream, after)
    });
    assert_eq!(stream.backend, "east");
    assert_eq!(stream.grpc_status.as_deref(), Some("0"));
    // Latency score = best estimate ÷ this one's. Had the stream's
    // lifetime been the sample, east would score about 50 ÷ 2050 ≈ 0.02;
    // with the time to its headers it is about the others' (1 when equal).
    let last = after.last().expect("calls");
    let east = last.score("east");
    // 0.1, not higher: one scheduler stall on a loaded machine can make a
    // single 50 ms sample look several times slower, and the lifetime
    // sample this guards against scores 0.02.
    assert!(
        east > 0.1,
        "east's latency score fell to {east} after one long stream: {:?}",
        last.decision
    );
}

#[test]
fn a_stream_counts_as_in_flight_until_it_ends() {
    // Load scoring alone: a destination is hot when its in-flight + 1 is
    // over twice its own typical in-flight + 1, and then scores
    // 2 × (typical + 1) ÷ (in-flight + 1) (`score.rs`).
    let fleet = Fleet::start(
        &config(
            r#"{"latency":0,"load":1,"cost":0,"affinity":0}"#,
            "",
            PINNABLE,
        ),
        Mode::Ok,
        1,
    );
    let (during, streams, after) = fleet.rt.block_on(async {
        let client = GrpcClient::connect(fleet.envoy.port).await;
        // Three streams on east, each past its response headers at once.
        let streams: Vec<_> = (0..3)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .call("/stream/1500", &[(ROUTING_HEADER, "east")])
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let during = client.call("/reviews.Reviews/Get", &[]).await;
        let mut ended = Vec::new();
        for s in streams {
            ended.push(s.await.expect("stream"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = client.call("/reviews.Reviews/Get", &[]).await;
        (during, ended, after)
    });
    for s in &streams {
        assert_eq!(s.backend, "east");
        assert_eq!(s.grpc_status.as_deref(), Some("0"));
    }
    // While the streams run, east has three requests in flight against a
    // typical count near 0: 2 × (≈0 + 1) ÷ (3 + 1) ≈ ½. Were the streams
    // not counted, or counted only to their headers, it would score 1.
    let east = during.score("east");
    assert!(
        (0.4..0.75).contains(&east),
        "east scored {east} with three streams open: {:?}",
        during.decision
    );
    assert!(during.score("west") > 0.99 && during.score("south") > 0.99);
    // Once they ended, nothing is in flight on east any more.
    let east = after.score("east");
    assert!(
        east > 0.99,
        "east scored {east} after its streams ended: {:?}",
        after.decision
    );
}

#[test]
fn affinity_and_propagated_trace_context_work_over_http2() {
    let fleet = Fleet::start(
        &config(
            STATIC,
            r#""affinity":{"source":"header","name":"x-user"},"#,
            "",
        ),
        Mode::Ok,
        2,
    );
    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const TS: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let (alice, others) = fleet.rt.block_on(async {
        // Each call on a connection of its own: the session sticks across
        // connections (and Envoy workers), not by connection reuse.
        let mut alice = Vec::new();
        for _ in 0..12 {
            let client = GrpcClient::connect(fleet.envoy.port).await;
            alice.push(
                client
                    .call(
                        "/reviews.Reviews/Get",
                        &[("x-user", "alice"), ("traceparent", TP), ("tracestate", TS)],
                    )
                    .await,
            );
        }
        let client = GrpcClient::connect(fleet.envoy.port).await;
        let mut others = Vec::new();
        for i in 0..30 {
            let user = format!("user-{i}");
            others.push(
                client
                    .call("/reviews.Reviews/Get", &[("x-user", user.as_str())])
                    .await,
            );
        }
        (alice, others)
    });
    let home = alice[0].backend.clone();
    assert!(
        alice.iter().all(|c| c.backend == home),
        "alice's session moved: {alice:?}"
    );
    // Different sessions do spread (the key is read, not ignored).
    let mut spread: HashMap<&str, u32> = HashMap::new();
    for c in &others {
        *spread.entry(c.backend.as_str()).or_default() += 1;
    }
    assert!(
        spread.len() >= 2,
        "30 sessions all on one backend: {spread:?}"
    );
    let recorded: Vec<HeaderMap> = fleet
        .backend(&home)
        .recorded()
        .into_iter()
        .filter(|h| header(h, "x-user").as_deref() == Some("alice"))
        .collect();
    assert_eq!(recorded.len(), 12);
    for h in recorded {
        let get = |n: &str| header(&h, n).unwrap_or_default();
        assert_eq!(get(ROUTING_HEADER), home);
        assert_eq!(get("x-service-name"), "reviews");
        // Propagate mode: the caller's valid context goes on as it came.
        assert_eq!(get("traceparent"), TP);
        assert_eq!(get("tracestate"), TS);
    }
}

#[test]
fn span_mode_continues_the_trace_over_http2() {
    let collector = Backend::start("collector", false).expect("collector");
    let fleet = Fleet::start_with(
        &config(
            STATIC,
            "",
            r#""tracing":{"mode":"span","collector":{"cluster":"otel-collector","batchSize":1}},"#,
        ),
        Mode::Ok,
        1,
        |spec| {
            spec.extra_clusters
                .push(("otel-collector".to_string(), collector.port));
        },
    );
    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let called = fleet.rt.block_on(async {
        let client = GrpcClient::connect(fleet.envoy.port).await;
        client
            .call(
                "/reviews.Reviews/Get",
                &[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")],
            )
            .await
    });
    let recorded = fleet.backend(&called.backend).recorded();
    let h = recorded.last().expect("recorded");
    let traceparent = header(h, "traceparent").unwrap_or_default();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    // Same trace and flags, our span as the new parent.
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE_ID);
    assert_eq!(parts[3], "01");
    assert_ne!(parts[2], "b7ad6b7169203331", "parent-id not replaced");
    assert_eq!(parts[2].len(), 16);
    // Our member first, the caller's kept.
    let tracestate = header(h, "tracestate").unwrap_or_default();
    assert!(
        tracestate.starts_with("tideway=") && tracestate.ends_with(",congo=t61rcWkgMzE"),
        "{tracestate}"
    );
}
