//! The core's per-request work (route, response headers, end of stream) in a
//! loop, natively, with the instruction bench's configuration and requests:
//! where the filter's own instructions go, function by function, which the
//! bench under Envoy (V8's compiled wasm) cannot show.
//!
//! ```text
//! cargo build --release -p tideway-filter --example request_cost
//! valgrind --tool=callgrind target/release/examples/request_cost "" 40000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//! Arguments: a plugin config (empty: the bench's) and a request count; run
//! two counts and subtract for the per-request figure without the set-up.
//! The host's side is free here (no host calls), so this prices only our
//! code. With a span-mode config (`"tracing":{"mode":"span","collector":…}`)
//! a tick takes the due span batches every 256 requests.
use tideway_filter::config::PluginConfig;
use tideway_filter::decision::memory::MemoryHost;
use tideway_filter::decision::*;
use tideway_filter::header_map::{serialize_pairs, HeaderMap};

fn main() {
    let config = std::env::args()
        .nth(1)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            r#"{"services":[{"name":"reviews","hosts":["reviews.default.svc.cluster.local"],
  "affinity":{"source":"header","name":"x-user-id"},
  "destinations":[
    {"name":"east","cluster":"cluster-east","locality":"region-1/zone-a","weight":70,"cost":1},
    {"name":"west","cluster":"cluster-west","locality":"region-1/zone-b","weight":20,"cost":1},
    {"name":"south","cluster":"cluster-south","locality":"region-2/zone-a","weight":10,"cost":2}]}],
 "scheduler":{"weights":{"latency":0.5,"load":0.2,"cost":0.1,"affinity":0.2},"tickMs":100},
 "tracing":{"mode":"propagate"}}"#
                .to_string()
        });
    let n: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let config = PluginConfig::from_json(config.as_bytes()).expect("config");
    let local = LocalIdentity {
        cluster: "cluster-east".into(),
        locality: Some("region-1/zone-a".into()),
        namespace: Some("default".into()),
    };
    let mut engine = Engine::new(config, local, 1, None);
    let bufs: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| {
            let tp = format!("00-{:032x}-{:016x}-01", 4096 + i, 1 + i);
            let user = format!("user-{i}");
            let mut pairs = vec![
                (":authority", "reviews.default.svc.cluster.local"),
                (":path", "/"),
                (":method", "GET"),
                (":scheme", "http"),
                ("traceparent", tp.as_str()),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "2b3c4d5e-1111-2222-3333-444455556666"),
            ];
            if i % 2 == 1 {
                pairs.push(("x-user-id", user.as_str()));
            }
            serialize_pairs(&pairs)
        })
        .collect();
    // Calls counted, not recorded: the record's allocations are not the
    // filter's cost.
    let mut host = MemoryHost::simulated(7);
    host.now = 1_700_000_000_000_000_000;
    let mut routed = 0u64;
    let mut exported = 0usize;
    for i in 0..n {
        host.now += 100_000;
        let headers = HeaderMap::parse(&bufs[(i % 1000) as usize]);
        if let Some(mut flight) = engine.route(&headers, &mut host) {
            routed += 1;
            let routed_at = host.now;
            host.now += 1_000_000;
            engine.complete(&mut flight, StreamEvent::ResponseHeaders, &mut host);
            engine.complete(&mut flight, StreamEvent::End, &mut host);
            host.now = routed_at;
        }
        // Span mode: a tick's export, every 256 requests.
        if i % 256 == 255 {
            let batches = engine.take_span_batches(Some(host.now));
            exported += batches.iter().map(|b| b.spans as usize).sum::<usize>();
            engine.recycle_span_batches(batches);
        }
    }
    println!(
        "{routed} routed, {} writes, {exported} spans",
        host.header_writes
    );
}
