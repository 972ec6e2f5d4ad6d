//! The service the W3C Trace Context test suite talks to, behind real Envoy
//! with the Tideway filter: `cargo run -p tideway-host-tests --bin
//! tideway-trace-sut -- span|propagate` prints the endpoint to hand the
//! suite's `test/test.py` and serves until killed.
//!
//! The suite POSTs a JSON list of `{url, arguments}` to the endpoint; the
//! service POSTs `arguments` to each `url` carrying the trace context it
//! received. What the suite judges is therefore what the filter forwarded:
//! - `span`: the filter runs in span mode and the app passes the context on
//!   unchanged, so the filter alone is the participant under test;
//! - `propagate`: the filter runs in propagate mode (it does not change the
//!   parent-id), and the app behaves as an instrumented app does — it
//!   starts its own span, so it sends a new parent-id with the same trace id
//!   and flags, and passes `tracestate` on as it received it.

use std::hash::{BuildHasher, Hasher};
use std::io::Read;
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
    // The suite addresses the service by IP: that is the governed host.
    let config = format!(
        r#"{{"services":[{{"name":"sut","hosts":["127.0.0.1"],
            "destinations":[{{"name":"app","cluster":"cluster-app"}}]}}],
            "tracing":{tracing}}}"#
    );
    let mut spec = EnvoySpec::new(&config, &[("app", app_port)]);
    // Span exports go to a port nobody listens on: the suite does not
    // look at them.
    spec.extra_clusters.push(("collector".to_string(), 9));
    let envoy = Envoy::start(&spec)?;
    println!("SERVICE_ENDPOINT=http://127.0.0.1:{}/test", envoy.port);
    println!("(filter in {mode} mode; Ctrl-C to stop)");
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(10))
        .build();
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
        let traceparent = header("traceparent").pop().map(|tp| {
            if new_parent_id {
                with_new_parent_id(&tp)
            } else {
                tp
            }
        });
        let tracestate = header("tracestate");
        let calls: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        for call in calls {
            let Some(url) = call["url"].as_str() else {
                continue;
            };
            let mut out = agent.post(url).set("content-type", "application/json");
            if let Some(tp) = &traceparent {
                out = out.set("traceparent", tp);
            }
            if !tracestate.is_empty() {
                out = out.set("tracestate", &tracestate.join(","));
            }
            if let Err(e) = out.send_string(&call["arguments"].to_string()) {
                eprintln!("callback to {url}: {e}");
            }
        }
        let _ = request.respond(tiny_http::Response::from_string("ok"));
    }
    drop(envoy);
    Ok(())
}

/// `00-<trace>-<parent>-<flags>` with a new random parent-id (what an
/// instrumented app's own span does).
fn with_new_parent_id(tp: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let parts: Vec<&str> = tp.trim().split('-').collect();
    let [version, trace, _, flags] = parts.as_slice() else {
        return tp.to_string();
    };
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let id = hasher.finish().max(1);
    format!("{version}-{trace}-{id:016x}-{flags}")
}
