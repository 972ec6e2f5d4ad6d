//! The service the W3C Trace Context test suite talks to, with real Envoy
//! and the Tideway filter on its outbound path: `cargo run -p
//! tideway-host-tests --bin tideway-trace-sut -- span|propagate` prints the
//! endpoint to hand the suite's `test/test.py` (`SERVICE_ENDPOINT`) and
//! serves until killed.
//!
//! The suite POSTs a JSON list of `{url, arguments}` to the endpoint; the
//! service POSTs `arguments` to each `url` carrying the trace context it
//! received. Tideway's filter steers a caller's outbound requests (it runs
//! in the caller's sidecar), so each of those callbacks goes through Envoy
//! with the filter, which routes it to the harness: every callback is a
//! request of its own through the filter, and what the suite judges is
//! what the filter forwarded.
//! - `span`: the filter runs in span mode and the app passes the context on
//!   unchanged (an uninstrumented app), so the filter alone is the
//!   participant under test: each callback gets a span of its own;
//! - `propagate`: the filter runs in propagate mode (it does not change the
//!   parent-id), and the app behaves as an instrumented app does — a client
//!   span per outgoing call, so each callback gets a new parent-id with the
//!   same trace id and flags, and `tracestate` as the app received it.
//!
//! The harness's port is `HARNESS_PORT` (the suite's variable, default
//! 7777): the filter's destination cluster points there.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use tideway_host_tests::envoy::{Envoy, EnvoySpec};

fn main() -> anyhow::Result<()> {
    let mode = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "span".to_string());
    let new_parent_id = match mode.as_str() {
        "span" => false,
        "propagate" => true,
        other => anyhow::bail!("usage: tideway-trace-sut span|propagate (got {other:?})"),
    };
    let harness_port: u16 = match std::env::var("HARNESS_PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| anyhow::anyhow!("HARNESS_PORT: not a port: {port:?}"))?,
        Err(_) => 7777,
    };
    let server = tiny_http::Server::http("127.0.0.1:0")
        .map_err(|e| anyhow::anyhow!("could not listen on loopback: {e}"))?;
    let app_port = server
        .server_addr()
        .to_ip()
        .map(|a| a.port())
        .ok_or_else(|| anyhow::anyhow!("no IP address"))?;
    let tracing = match mode.as_str() {
        "span" => r#"{"mode":"span","collector":{"cluster":"collector"}}"#,
        _ => r#"{"mode":"propagate"}"#,
    };
    // The callbacks address the harness by IP: that is the governed host.
    let config = format!(
        r#"{{"services":[{{"name":"harness","hosts":["127.0.0.1"],
            "destinations":[{{"name":"harness","cluster":"cluster-harness"}}]}}],
            "tracing":{tracing}}}"#
    );
    let mut spec = EnvoySpec::new(&config, &[("harness", harness_port)]);
    // Span exports go to a port nobody listens on: the suite does not
    // look at them.
    spec.extra_clusters.push(("collector".to_string(), 9));
    let envoy = Envoy::start(&spec)?;
    println!("SERVICE_ENDPOINT=http://127.0.0.1:{app_port}/test");
    println!(
        "(filter in {mode} mode on the callbacks' way out, Envoy port {}, harness port \
         {harness_port}; Ctrl-C to stop)",
        envoy.port
    );
    while let Ok(mut request) = server.recv() {
        let mut body = String::new();
        let _ = request.as_reader().read_to_string(&mut body);
        let header = |name: &str| -> Vec<String> {
            request
                .headers()
                .iter()
                .filter(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_string())
                .collect()
        };
        let traceparents = header("traceparent");
        let tracestate = header("tracestate");
        let calls: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        for call in calls {
            let Some(url) = call["url"].as_str() else {
                continue;
            };
            let Some((authority, path)) = url
                .strip_prefix("http://")
                .and_then(|rest| rest.find('/').map(|i| rest.split_at(i)))
            else {
                eprintln!("callback URL not understood: {url}");
                continue;
            };
            // Every value as received (a duplicated header stays
            // duplicated, so by hand: ureq keeps one value a name); an
            // instrumented app's client span per call.
            let mut headers: Vec<(&str, String)> = traceparents
                .iter()
                .map(|tp| {
                    let tp = if new_parent_id {
                        with_new_parent_id(tp)
                    } else {
                        tp.clone()
                    };
                    ("traceparent", tp)
                })
                .collect();
            headers.extend(tracestate.iter().map(|ts| ("tracestate", ts.clone())));
            let arguments = call["arguments"].to_string();
            // Through Envoy: the filter sees the harness's authority.
            if let Err(e) = post_via(envoy.port, authority, path, &headers, &arguments) {
                eprintln!("callback to {url}: {e}");
            }
        }
        let _ = request.respond(tiny_http::Response::from_string("ok"));
    }
    drop(envoy);
    Ok(())
}

/// POST `body` to `path` on Envoy's listener with `Host: authority` and
/// `headers` (names may repeat), and read the answer to its end.
fn post_via(
    envoy_port: u16,
    authority: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", envoy_port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: {authority}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if !response.starts_with(b"HTTP/1.1 2") {
        let head = String::from_utf8_lossy(&response[..response.len().min(200)]).into_owned();
        return Err(std::io::Error::other(format!("answered {head:?}")));
    }
    Ok(())
}

/// `00-<trace>-<parent>-<flags>` with a new random parent-id (what an
/// instrumented app's own span does).
/// A context the app cannot continue (an invalid `traceparent`) goes on as
/// it came: the filter, under test, decides to restart the trace. (Given a
/// new parent-id, an invalid parent-id would have been repaired by the app
/// and the suite would judge the app instead.)
fn with_new_parent_id(tp: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    if tideway_filter::trace::w3c::parse_traceparent(tp.as_bytes()).is_none() {
        return tp.to_string();
    }
    let parts: Vec<&str> = tp.trim().split('-').collect();
    let [version, trace, _, flags] = parts.as_slice() else {
        return tp.to_string();
    };
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let id = hasher.finish().max(1);
    format!("{version}-{trace}-{id:016x}-{flags}")
}
