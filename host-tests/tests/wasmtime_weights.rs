//! The weights channel in the built filter, on our wasmtime host: two
//! worker VMs sharing one shared-data store, HTTP-call answers given by the
//! test, and the fake clock driving ticks, the lease and the TTL.
//!
//! The weights API is played by the test (each poll is answered by hand),
//! so every answer — 200, 304, garbage, a stale version, an unknown
//! destination, no answer at all — is exact; the real server is the Envoy
//! test's (`envoy_weights`).

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tideway_host_tests::env;
use tideway_host_tests::wasm_host::{Host, HostBuilder, HttpCall, HttpReply};

const CLUSTER: &str = "outbound|8080||tideway-weights.tideway-system.svc.cluster.local";
const AUTHORITY: &str = "tideway-weights.tideway-system.svc.cluster.local:8080";
const PLUGIN: &str = "prod.tideway";
const LEASE_MS: u64 = 1_000;
const TTL_MS: u64 = 5_000;

fn config() -> Value {
    json!({
        "scheduler": { "tickMs": 100 },
        "services": [{
            "name": "reviews",
            "hosts": ["reviews.prod.svc.cluster.local"],
            "weights": { "latency": 0, "load": 0, "cost": 0, "affinity": 0 },
            "destinations": [
                { "name": "east", "weight": 1 },
                { "name": "west", "weight": 1 },
                { "name": "central", "weight": 1 }
            ]
        }],
        "weightsSource": {
            "cluster": CLUSTER, "authority": AUTHORITY,
            "waitMs": 1000, "leaseMs": LEASE_MS, "retryMs": 200, "ttlMs": TTL_MS
        }
    })
}

fn start() -> Host {
    HostBuilder::from_file(env::filter_wasm())
        .expect("filter wasm readable")
        .plugin_config_json(&config())
        .plugin_name(PLUGIN)
        .workers(2)
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Version `v`: east 1, west 3, central drained.
fn document(v: u64) -> String {
    json!({ "version": v, "services": [{ "name": "reviews", "destinations": [
        { "name": "east", "weight": 1, "cost": 0 },
        { "name": "west", "weight": 3, "cost": 0 },
        { "name": "central", "weight": 1, "cost": 0, "drained": true }
    ]}]})
    .to_string()
}

fn ok(body: &str) -> HttpReply {
    let mut reply = HttpReply::status(200, body.as_bytes().to_vec());
    if let HttpReply::Response { headers, .. } = &mut reply {
        headers.push(("content-type".into(), "application/json".into()));
    }
    reply
}

/// Where `n` requests on `worker` went (static mode: smooth weighted
/// round-robin, so the split is exact over a multiple of the weights' sum).
fn split(host: &mut Host, worker: usize, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let x = host
            .exchange(
                worker,
                &[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "reviews.prod.svc.cluster.local"),
                    (":path", "/"),
                ],
                &[(":status", "200")],
            )
            .expect("exchange");
        let dest = x
            .upstream_request
            .get("x-tideway-destination")
            .unwrap_or_default();
        *counts.entry(dest).or_default() += 1;
    }
    counts
}

fn expect_split(host: &mut Host, worker: usize, east: usize, west: usize, central: usize) {
    let n = east + west + central;
    let got = split(host, worker, n);
    let want: BTreeMap<String, usize> = [("east", east), ("west", west), ("central", central)]
        .into_iter()
        .filter(|(_, c)| *c > 0)
        .map(|(d, c)| (d.to_string(), c))
        .collect();
    assert_eq!(got, want, "worker {worker}:\n{}", host.logs_text());
}

const DOCUMENT_SPLIT: (usize, usize, usize) = (10, 30, 0);
const STATIC_SPLIT: (usize, usize, usize) = (10, 10, 10);

fn expect_document(host: &mut Host, worker: usize) {
    let (e, w, c) = DOCUMENT_SPLIT;
    expect_split(host, worker, e, w, c);
}

fn expect_static(host: &mut Host, worker: usize) {
    let (e, w, c) = STATIC_SPLIT;
    expect_split(host, worker, e, w, c);
}

/// The one poll in flight (there is never more than one per proxy).
fn the_poll(host: &Host) -> HttpCall {
    let polls: Vec<HttpCall> = host
        .pending_http_calls()
        .into_iter()
        .filter(|c| c.upstream == CLUSTER)
        .collect();
    assert_eq!(
        polls.len(),
        1,
        "one poll in flight: {polls:#?}\n{}",
        host.logs_text()
    );
    polls.into_iter().next().unwrap()
}

fn answer(host: &mut Host, reply: HttpReply) -> HttpCall {
    let poll = the_poll(host);
    host.reply_http_call(poll.worker, poll.token, reply)
        .expect("reply");
    poll
}

fn counter(host: &Host, name: &str) -> u64 {
    host.metric(name).map_or(0, |m| m.value)
}

/// Both workers on version 1, its poll answered.
fn on_version_1() -> Host {
    let mut host = start();
    host.advance(ms(100)).unwrap();
    let first = answer(&mut host, ok(&document(1)));
    assert_eq!(first.headers.get(":method").as_deref(), Some("GET"));
    assert_eq!(first.headers.get(":authority").as_deref(), Some(AUTHORITY));
    assert_eq!(
        first.headers.get(":path").as_deref(),
        Some("/v1/weights?service=reviews")
    );
    assert_eq!(first.headers.get("if-none-match"), None);
    host.advance(ms(100)).unwrap();
    host
}

#[test]
fn one_worker_polls_and_both_adopt_the_document_on_their_next_tick() {
    let mut host = on_version_1();
    for w in 0..2 {
        expect_document(&mut host, w);
    }
    assert_eq!(counter(&host, "tideway.weights.version"), 1);
    assert_eq!(
        counter(&host, "tideway.weights.adopted"),
        2,
        "once per worker"
    );
    let keys: Vec<String> = host.shared_data().keys().cloned().collect();
    for key in [
        "tideway/prod.tideway/weights/lease",
        "tideway/prod.tideway/weights/document",
    ] {
        assert!(keys.contains(&key.to_string()), "{key} in {keys:?}");
    }
    // The next poll long-polls for a change from version 1.
    let next = the_poll(&host);
    assert_eq!(
        next.headers.get(":path").as_deref(),
        Some("/v1/weights?service=reviews&wait=1s")
    );
    assert_eq!(next.headers.get("if-none-match").as_deref(), Some("\"1\""));
    assert_eq!(next.timeout, ms(1_000 + 5_000));
}

#[test]
fn a_304_keeps_the_weights_past_the_ttl_and_polls_again_at_once() {
    let mut host = on_version_1();
    // Ten long-polls that each end in a 304 a second later: 10 s, twice the TTL.
    for _ in 0..10 {
        host.advance(ms(1_000)).unwrap();
        let poll = answer(&mut host, HttpReply::status(304, Vec::new()));
        assert_eq!(poll.headers.get("if-none-match").as_deref(), Some("\"1\""));
        assert!(
            host.pending_http_calls()
                .iter()
                .any(|c| c.dispatched_at == host.now_nanos()),
            "the next poll goes out with the answer"
        );
    }
    for w in 0..2 {
        expect_document(&mut host, w);
    }
    assert_eq!(counter(&host, "tideway.weights.expired"), 0);
    assert_eq!(counter(&host, "tideway.weights.poll_errors"), 0);
}

#[test]
fn malformed_stale_and_unauthorised_documents_are_rejected_and_the_previous_weights_stay() {
    let mut host = on_version_1();
    // Version 2 replaces version 1 on both workers.
    answer(&mut host, ok(&document(2)));
    host.advance(ms(100)).unwrap();
    assert_eq!(counter(&host, "tideway.weights.version"), 2);
    let unknown_destination = json!({ "version": 3, "services": [{ "name": "reviews",
        "destinations": [{ "name": "mars", "weight": 100, "cost": 0 }] }] })
    .to_string();
    let unknown_service = json!({ "version": 3, "services": [{ "name": "payments",
        "destinations": [] }] })
    .to_string();
    let cases = [
        (
            "malformed",
            "{\"version\": 3, \"services\": [".to_string(),
            "not a weights document",
        ),
        (
            "malformed",
            document(3).replace("\"weight\":3", "\"weight\":-3"),
            "services[0].destinations[1].weight",
        ),
        ("stale", document(1), "1 is lower than version 2"),
        (
            "unauthorised",
            unknown_destination,
            "\"mars\" is not a destination",
        ),
        (
            "unauthorised",
            unknown_service,
            "\"payments\" is not a service",
        ),
    ];
    for (i, (reason, body, logged)) in cases.into_iter().enumerate() {
        // Each rejection waits retryMs before the next poll.
        if host.pending_http_calls().is_empty() {
            host.advance(ms(200)).unwrap();
        }
        answer(&mut host, ok(&body));
        let metric = format!("tideway.weights.rejected.{reason}");
        assert!(
            counter(&host, &metric) >= 1,
            "{metric} after case {i}:\n{}",
            host.logs_text()
        );
        assert!(
            host.logged(logged),
            "the log names {logged:?}:\n{}",
            host.logs_text()
        );
        assert!(
            host.pending_http_calls().is_empty(),
            "case {i}: no poll before retryMs"
        );
        host.advance(ms(100)).unwrap();
        for w in 0..2 {
            expect_document(&mut host, w);
        }
        assert_eq!(counter(&host, "tideway.weights.version"), 2, "case {i}");
    }
    assert_eq!(counter(&host, "tideway.weights.rejected.malformed"), 2);
    assert_eq!(counter(&host, "tideway.weights.rejected.stale"), 1);
    assert_eq!(counter(&host, "tideway.weights.rejected.unauthorised"), 2);
    // A 403 is rejected too, and nothing changes.
    host.advance(ms(200)).unwrap();
    answer(&mut host, HttpReply::status(403, b"forbidden".to_vec()));
    assert_eq!(counter(&host, "tideway.weights.rejected.denied"), 1);
    host.advance(ms(100)).unwrap();
    expect_document(&mut host, 1);
}

#[test]
fn an_unreachable_controller_keeps_the_last_weights_for_the_ttl_then_static_ones() {
    let mut host = on_version_1();
    // From now on every poll is reset (the controller is gone).
    host.on_http_call(Some(CLUSTER), HttpReply::Failure, Duration::ZERO);
    // The pending long-poll fails when its connection goes.
    answer(&mut host, HttpReply::Failure);
    let confirmed_at = host.now_nanos();
    host.advance(ms(TTL_MS - 300)).unwrap();
    assert!(
        counter(&host, "tideway.weights.poll_errors") >= 10,
        "retried every retryMs"
    );
    for w in 0..2 {
        expect_document(&mut host, w);
    }
    host.advance(ms(400)).unwrap();
    assert!(host.now_nanos() >= confirmed_at + TTL_MS * 1_000_000);
    for w in 0..2 {
        expect_static(&mut host, w);
    }
    assert_eq!(
        counter(&host, "tideway.weights.expired"),
        2,
        "on each worker"
    );
    assert_eq!(counter(&host, "tideway.weights.version"), 0);
    assert!(host.logged("static weights of the plugin configuration apply"));
    // The controller comes back: version 1 is confirmed and adopted again.
    host.clear_http_rules();
    host.advance(ms(300)).unwrap();
    answer(&mut host, HttpReply::status(304, Vec::new()));
    host.advance(ms(100)).unwrap();
    for w in 0..2 {
        expect_document(&mut host, w);
    }
}

/// The worker polling now.
fn poller(host: &Host) -> usize {
    the_poll(host).worker
}

#[test]
fn the_lease_passes_to_the_other_worker_when_the_holder_stops() {
    let mut host = on_version_1();
    let holder = poller(&host);
    let other = 1 - holder;
    host.stop_worker(holder);
    let stopped_at = host.now_nanos();
    // Until the lease lapses nobody polls.
    host.advance(ms(LEASE_MS - 300)).unwrap();
    assert!(
        host.pending_http_calls().is_empty(),
        "{:#?}",
        host.pending_http_calls()
    );
    host.advance(ms(500)).unwrap();
    let poll = the_poll(&host);
    assert_eq!(poll.worker, other);
    assert!(poll.dispatched_at - stopped_at <= (LEASE_MS + 100) * 1_000_000);
    assert_eq!(poll.headers.get("if-none-match").as_deref(), Some("\"1\""));
    assert!(host.logged("taken over from a lapsed holder"));
    // The new holder's answers reach it: version 2 adopted.
    answer(&mut host, ok(&document(2)));
    assert_eq!(counter(&host, "tideway.weights.version"), 2);
    expect_document(&mut host, other);
}

#[test]
fn a_restarted_holder_vm_waits_for_its_old_lease_to_lapse_and_one_worker_polls() {
    let mut host = on_version_1();
    let holder = poller(&host);
    assert!(host.restart_worker(holder).expect("restart"));
    let restarted_at = host.now_nanos();
    // The old VM's poll went with it; the new VM has another holder id, so
    // the lease is nobody's to renew until it lapses.
    host.advance(ms(LEASE_MS - 300)).unwrap();
    assert!(
        host.pending_http_calls().is_empty(),
        "{:#?}",
        host.pending_http_calls()
    );
    // The restarted VM adopted version 1 from shared data meanwhile.
    expect_document(&mut host, holder);
    host.advance(ms(500)).unwrap();
    let poll = the_poll(&host);
    assert!(poll.dispatched_at > restarted_at);
    // Over many lease periods, still one poll at a time.
    for _ in 0..5 {
        answer(&mut host, HttpReply::status(304, Vec::new()));
        host.advance(ms(LEASE_MS)).unwrap();
    }
    the_poll(&host);
    for w in 0..2 {
        expect_document(&mut host, w);
    }
}
