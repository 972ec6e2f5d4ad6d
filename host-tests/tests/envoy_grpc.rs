//! gRPC over HTTP/2 end to end in real Envoy 1.40: an h2c client (the `h2`
//! crate) → Envoy with the filter → h2c gRPC backends of our own. A gRPC
//! call answers HTTP 200 whatever happened; the filter must read
//! `grpc-status`.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tideway_host_tests::envoy::{Envoy, EnvoySpec};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const HOST: &str = "reviews.prod.svc.cluster.local";

/// How a backend answers.
const OK: u8 = 0;
/// UNAVAILABLE in the response headers (a trailers-only response).
const UNAVAILABLE_TRAILERS_ONLY: u8 = 1;
/// Headers, a message, then UNAVAILABLE in the trailers.
const UNAVAILABLE_IN_TRAILERS: u8 = 2;

/// An h2c gRPC backend: answers every call per its mode, `x-backend` its
/// name; a call whose path is `/stream/<ms>` streams for that long.
struct GrpcBackend {
    name: &'static str,
    port: u16,
    mode: Arc<AtomicU8>,
    recorded: Arc<Mutex<Vec<HeaderMap>>>,
}

impl GrpcBackend {
    fn start(rt: &Runtime, name: &'static str, mode: u8) -> Self {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(mode));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let (m, r) = (Arc::clone(&mode), Arc::clone(&recorded));
        rt.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (m, r) = (Arc::clone(&m), Arc::clone(&r));
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = conn.accept().await {
                        let mode = m.load(Ordering::Relaxed);
                        if let Ok(mut rec) = r.lock() {
                            rec.push(request.headers().clone());
                        }
                        let path = request.uri().path().to_string();
                        tokio::spawn(answer(name, mode, path, respond));
                    }
                });
            }
        });
        Self {
            name,
            port,
            mode,
            recorded,
        }
    }

    fn recorded(&self) -> Vec<HeaderMap> {
        self.recorded.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn grpc_message() -> Bytes {
    // One length-prefixed gRPC message: uncompressed, 2 bytes.
    Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1])
}

async fn answer(
    name: &'static str,
    mode: u8,
    path: String,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let mut response = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-backend", name);
    if mode == UNAVAILABLE_TRAILERS_ONLY {
        response = response
            .header("grpc-status", "14")
            .header("grpc-message", "down");
        let Ok(response) = response.body(()) else {
            return;
        };
        let _ = respond.send_response(response, true);
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
    let mut sent = 0;
    loop {
        let _ = stream.send_data(grpc_message(), false);
        if sent >= stream_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        sent += 100;
    }
    let mut trailers = HeaderMap::new();
    let status = if mode == UNAVAILABLE_IN_TRAILERS {
        "14"
    } else {
        "0"
    };
    if let Ok(v) = status.parse() {
        trailers.insert("grpc-status", v);
    }
    let _ = stream.send_trailers(trailers);
}

/// What a call came back with.
#[derive(Debug)]
struct Called {
    backend: String,
    grpc_status: Option<String>,
}

/// An h2c client over one connection to Envoy.
struct GrpcClient {
    sender: h2::client::SendRequest<Bytes>,
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

    async fn call(&mut self, path: &str, headers: &[(&str, &str)]) -> Called {
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
        let _ = body.send_data(grpc_message(), true);
        let response = response.await.expect("response");
        assert_eq!(response.status(), 200, "{response:?}");
        let header =
            |h: &HeaderMap, n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let backend = header(response.headers(), "x-backend").unwrap_or_default();
        let mut grpc_status = header(response.headers(), "grpc-status");
        let mut data = response.into_body();
        while let Some(chunk) = data.data().await {
            if let Ok(chunk) = chunk {
                let _ = data.flow_control().release_capacity(chunk.len());
            }
        }
        if let Ok(Some(trailers)) = data.trailers().await {
            grpc_status = grpc_status.or_else(|| header(&trailers, "grpc-status"));
        }
        Called {
            backend,
            grpc_status,
        }
    }
}

fn config(weights: &str, extra: &str, top: &str) -> String {
    format!(
        r#"{{{top}"services":[{{"name":"reviews","hosts":["{HOST}"],{extra}
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
    fn start(config: &str, east_mode: u8) -> Fleet {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let backends = vec![
            GrpcBackend::start(&rt, "east", east_mode),
            GrpcBackend::start(&rt, "west", OK),
            GrpcBackend::start(&rt, "south", OK),
        ];
        let dests: Vec<(&str, u16)> = backends.iter().map(|b| (b.name, b.port)).collect();
        let mut spec = EnvoySpec::new(config, &dests);
        spec.upstream_http2 = true;
        spec.concurrency = 2;
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
}

fn ejected_over_http2(east_mode: u8) {
    let fleet = Fleet::start(&config(STATIC, "", ""), east_mode);
    let calls: Vec<Called> = fleet.rt.block_on(async {
        let mut client = GrpcClient::connect(fleet.envoy.port).await;
        let mut calls = Vec::new();
        for _ in 0..90 {
            calls.push(client.call("/reviews.Reviews/Get", &[]).await);
        }
        calls
    });
    let unavailable = calls
        .iter()
        .filter(|c| c.grpc_status.as_deref() == Some("14"))
        .count();
    assert!(
        fleet.ejections("east") >= 1,
        "east answered UNAVAILABLE {unavailable} times and was not ejected\n{}",
        fleet.envoy.log_tail(30)
    );
    assert!(
        unavailable <= 6,
        "{unavailable} calls failed before ejection"
    );
    // After the ejection every call is answered OK by west or south.
    let last: Vec<&Called> = calls.iter().rev().take(30).collect();
    assert!(
        last.iter()
            .all(|c| c.grpc_status.as_deref() == Some("0") && c.backend != "east"),
        "{last:?}"
    );
    assert!(fleet.backends[0].mode.load(Ordering::Relaxed) == east_mode);
}

#[test]
fn a_grpc_backend_answering_unavailable_trailers_only_is_ejected() {
    ejected_over_http2(UNAVAILABLE_TRAILERS_ONLY);
}

#[test]
fn a_grpc_backend_answering_unavailable_in_its_trailers_is_ejected() {
    ejected_over_http2(UNAVAILABLE_IN_TRAILERS);
}

#[test]
fn a_long_stream_does_not_make_its_destination_look_slow() {
    // Latency and load scoring on; trusted routing headers let the test
    // pin three long streams on east.
    let fleet = Fleet::start(
        &config(
            r#"{"latency":1,"load":0.3,"cost":0,"affinity":0}"#,
            "",
            r#""trust":{"allSources":true},"#,
        ),
        OK,
    );
    let shares: HashMap<String, u32> = fleet.rt.block_on(async {
        let port = fleet.envoy.port;
        let streams: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(async move {
                    let mut client = GrpcClient::connect(port).await;
                    client
                        .call("/stream/2500", &[("x-tideway-destination", "east")])
                        .await
                })
            })
            .collect();
        for s in streams {
            let called = s.await.expect("stream");
            assert_eq!(called.backend, "east");
            assert_eq!(called.grpc_status.as_deref(), Some("0"));
        }
        // The streams lasted 2.5 s each; east answered their headers at once.
        let mut client = GrpcClient::connect(port).await;
        let mut shares = HashMap::new();
        for _ in 0..300 {
            let c = client.call("/reviews.Reviews/Get", &[]).await;
            *shares.entry(c.backend).or_insert(0) += 1;
        }
        shares
    });
    let east = shares.get("east").copied().unwrap_or(0);
    assert!(
        east >= 50,
        "east got {east} of 300 calls after its long streams: {shares:?}"
    );
}

#[test]
fn affinity_and_trace_context_work_over_http2() {
    let fleet = Fleet::start(
        &config(
            STATIC,
            r#""affinity":{"source":"header","name":"x-user"},"#,
            "",
        ),
        OK,
    );
    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let calls: Vec<Called> = fleet.rt.block_on(async {
        let mut client = GrpcClient::connect(fleet.envoy.port).await;
        let mut calls = Vec::new();
        for _ in 0..20 {
            calls.push(
                client
                    .call(
                        "/reviews.Reviews/Get",
                        &[("x-user", "alice"), ("traceparent", TP)],
                    )
                    .await,
            );
        }
        calls
    });
    let home = &calls[0].backend;
    assert!(
        calls.iter().all(|c| &c.backend == home),
        "a session moved: {calls:?}"
    );
    let backend = fleet
        .backends
        .iter()
        .find(|b| b.name == home)
        .expect("home backend");
    for h in backend.recorded() {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(get("x-tideway-destination"), home.as_str());
        assert_eq!(get("x-service-name"), "reviews");
        // The caller's valid context is propagated, not restarted.
        assert_eq!(get("traceparent"), TP);
    }
    assert_eq!(backend.recorded().len(), 20);
}
