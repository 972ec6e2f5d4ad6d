//! Trace context through real Envoy: what the backend receives.

use std::io::{Read, Write};
use tideway_host_tests::backend::Backend;
use tideway_host_tests::envoy::{Client, Envoy, EnvoySpec};

const HOST: &str = "reviews.prod.svc.cluster.local";
const CONFIG: &str = r#"{"services":[{"name":"reviews","hosts":["reviews.prod.svc.cluster.local"],
    "destinations":[{"name":"east","cluster":"cluster-east"}]}]}"#;
const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn start() -> (Backend, Envoy) {
    let backend = Backend::start("east", true).expect("backend");
    let envoy = Envoy::start(&EnvoySpec::new(CONFIG, &[("east", backend.port)]))
        .unwrap_or_else(|e| panic!("{e}"));
    (backend, envoy)
}

fn received(backend: &Backend, name: &str) -> Vec<String> {
    let recorded = backend.take_recorded().pop().expect("one request recorded");
    recorded
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

fn is_valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && v.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
}

/// The header values `name` arrived with at the backend, in order.
fn values(recorded: &[(String, String)], name: &str) -> Vec<String> {
    recorded
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .collect()
}

/// One request through Envoy with `headers` (sent by hand, so a header may
/// repeat), and the headers the backend received.
fn through(envoy: &Envoy, backend: &Backend, headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
    let mut request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n");
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    backend.take_recorded().pop().expect("one request recorded")
}

#[test]
fn propagate_mode_forwards_traceparent_and_tracestate_untouched() {
    let (backend, envoy) = start();
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let recorded = through(
        &envoy,
        &backend,
        &[("traceparent", TP), ("tracestate", tracestate)],
    );
    assert_eq!(values(&recorded, "traceparent"), [TP]);
    // The filter did not change parent-id: it has no member to write.
    assert_eq!(values(&recorded, "tracestate"), [tracestate]);
    // Several fields, duplicate keys and our own key are forwarded as they came.
    let recorded = through(
        &envoy,
        &backend,
        &[
            ("traceparent", TP),
            ("tracestate", "foo=1,tideway=s:x;t:y"),
            ("tracestate", "foo=2"),
        ],
    );
    let joined = values(&recorded, "tracestate").join(",");
    assert_eq!(joined, "foo=1,tideway=s:x;t:y,foo=2");
}

#[test]
fn an_invalid_tracestate_is_dropped_whole() {
    let thirty_three: String = (1..=33)
        .map(|i| format!("bar{i:02}={i:02}"))
        .collect::<Vec<_>>()
        .join(",");
    for (mode, config) in [("propagate", CONFIG.to_string()), ("span", span_config())] {
        let backend = Backend::start("east", true).expect("backend");
        let collector = Backend::start("collector", false).expect("collector");
        let mut spec = EnvoySpec::new(&config, &[("east", backend.port)]);
        spec.extra_clusters
            .push(("otel-collector".to_string(), collector.port));
        let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
        for bad in [
            vec!["foo=1,BAD=2"],
            vec!["foo=1", "bar=2,@baz=3"],
            vec!["foo=,bar=3"],
            vec![thirty_three.as_str()],
        ] {
            let mut headers = vec![("traceparent", TP)];
            headers.extend(bad.iter().map(|v| ("tracestate", *v)));
            let recorded = through(&envoy, &backend, &headers);
            let forwarded = values(&recorded, "tracestate");
            match mode {
                "propagate" => assert!(forwarded.is_empty(), "{bad:?} -> {forwarded:?}"),
                _ => assert_eq!(
                    forwarded,
                    ["tideway=s:cluster-local;t:cluster-east"],
                    "span mode keeps only its own member: {bad:?}"
                ),
            }
        }
    }
}

fn span_config() -> String {
    r#"{"services":[{"name":"reviews","hosts":["reviews.prod.svc.cluster.local"],
        "destinations":[{"name":"east","cluster":"cluster-east"}]}],
        "scheduler":{"tickMs":100},
        "tracing":{"mode":"span","collector":{"cluster":"otel-collector","batchSize":8,"flushMs":200}}}"#
        .to_string()
}

#[test]
fn span_mode_writes_its_member_first_and_keeps_the_rest() {
    let backend = Backend::start("east", true).expect("backend");
    let collector = Backend::start("collector", false).expect("collector");
    let mut spec = EnvoySpec::new(&span_config(), &[("east", backend.port)]);
    spec.extra_clusters
        .push(("otel-collector".to_string(), collector.port));
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    let recorded = through(
        &envoy,
        &backend,
        &[
            ("traceparent", TP),
            (
                "tracestate",
                "congo=t61rcWkgMzE,tideway=old,rojo=00f067aa0ba902b7",
            ),
        ],
    );
    let tp = values(&recorded, "traceparent");
    assert_eq!(tp.len(), 1);
    assert!(tp[0].starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    assert!(!tp[0].contains("b7ad6b7169203331"), "new parent-id: {tp:?}");
    let tracestate = values(&recorded, "tracestate").join(",");
    let members: Vec<&str> = tracestate.split(',').map(str::trim).collect();
    assert_eq!(
        members,
        [
            "tideway=s:cluster-local;t:cluster-east",
            "congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7"
        ],
        "{tracestate}"
    );
}

#[test]
fn a_malformed_traceparent_is_replaced_by_a_valid_one() {
    let (backend, envoy) = start();
    let client = Client::new();
    for bad in [
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01", // uppercase
        "00-00000000000000000000000000000000-b7ad6b7169203331-01", // zero trace id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // version ff
        "garbage",
    ] {
        client
            .get(
                &envoy.url("/"),
                HOST,
                &[("traceparent", bad), ("tracestate", "congo=1")],
            )
            .expect("request");
        let recorded = backend.take_recorded().pop().expect("recorded");
        let get = |name: &str| {
            recorded
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let tp = get("traceparent").expect("traceparent");
        assert!(is_valid_traceparent(&tp), "{bad} -> {tp}");
        assert!(
            !tp.contains("0af7651916cd43dd8448eb211c80319c"),
            "{bad} -> {tp}"
        );
        // A new trace discards the old tracestate (and, in propagate mode,
        // writes no member of its own).
        assert_eq!(get("tracestate"), None, "{bad}");
    }
    // A request without any trace context gets one too.
    client.get(&envoy.url("/"), HOST, &[]).expect("request");
    assert!(is_valid_traceparent(&received(&backend, "traceparent")[0]));
}

#[test]
fn duplicated_traceparent_headers_start_a_new_trace() {
    let (backend, envoy) = start();
    // ureq folds duplicates, so speak HTTP/1.1 by hand.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\ntraceparent: {TP}\r\ntraceparent: {TP}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let tps = received(&backend, "traceparent");
    assert_eq!(tps.len(), 1, "{tps:?}");
    assert!(is_valid_traceparent(&tps[0]));
    assert!(
        !tps[0].contains("0af7651916cd43dd8448eb211c80319c"),
        "{tps:?}"
    );
}

#[test]
fn span_mode_sends_a_new_parent_id_downstream_and_exports_the_span_as_otlp_json() {
    let backend = Backend::start("east", true).expect("backend");
    let collector = Backend::start("collector", true).expect("collector");
    let config = r#"{"services":[{"name":"reviews","hosts":["reviews.prod.svc.cluster.local"],
        "destinations":[{"name":"east","cluster":"cluster-east"}]}],
        "scheduler":{"tickMs":100},
        "tracing":{"mode":"span","collector":{"cluster":"otel-collector","batchSize":8,"flushMs":200}}}"#;
    let mut spec = EnvoySpec::new(config, &[("east", backend.port)]);
    spec.extra_clusters
        .push(("otel-collector".to_string(), collector.port));
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    let reply = Client::new()
        .get(&envoy.url("/"), HOST, &[("traceparent", TP)])
        .expect("request");
    assert_eq!(reply.status, 200);

    let tp = received(&backend, "traceparent")
        .pop()
        .expect("traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(
        parts[1], "0af7651916cd43dd8448eb211c80319c",
        "same trace: {tp}"
    );
    assert_ne!(
        parts[2], "b7ad6b7169203331",
        "a new parent-id goes downstream: {tp}"
    );

    // The span is exported on a tick.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let body = loop {
        if let Some(body) = collector.take_bodies().pop() {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no span export\n{}",
            envoy.log_tail(20)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let export: serde_json::Value = serde_json::from_slice(&body).expect("OTLP JSON");
    let span = &export["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        span["spanId"], parts[2],
        "the exported span is the downstream parent"
    );
    assert_eq!(span["parentSpanId"], "b7ad6b7169203331");
    let attrs = span["attributes"].as_array().expect("attributes");
    let attr = |key: &str| {
        attrs
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
            .unwrap_or_else(|| panic!("attribute {key} missing: {span}"))
    };
    assert_eq!(
        attr("tideway.cluster.source")["stringValue"],
        "cluster-local"
    );
    assert_eq!(
        attr("tideway.cluster.target")["stringValue"],
        "cluster-east"
    );
    assert_eq!(attr("tideway.service.name")["stringValue"], "reviews");
    assert!(
        envoy
            .stat("wasmcustom.tideway.spans.exported")
            .expect("stat")
            >= 1
    );
}

#[test]
fn the_decision_header_explains_the_choice_when_enabled() {
    let backend = Backend::start("east", false).expect("backend");
    let config = CONFIG.replace(
        r#""destinations""#,
        r#""affinity":{"source":"header","name":"x-user-id"},"destinations""#,
    );
    let config = format!(
        "{},\"decisionHeader\":true}}",
        config.trim_end().trim_end_matches('}')
    );
    let envoy = Envoy::start(&EnvoySpec::new(&config, &[("east", backend.port)]))
        .unwrap_or_else(|e| panic!("{e}"));
    let reply = Client::new()
        .get(&envoy.url("/"), HOST, &[("x-user-id", "alice")])
        .expect("request");
    let decision = reply
        .header("x-tideway-decision")
        .expect("x-tideway-decision");
    assert!(
        decision.contains("service=reviews; destination=east; reason=affinity"),
        "{decision}"
    );
}
