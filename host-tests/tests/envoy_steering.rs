//! The built filter in real Envoy 1.40 (V8), in front of three loopback
//! backends that stand for three member clusters. Routes match the routing
//! header as the VirtualService Tideway renders does.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tideway_host_tests::backend::Backend;
use tideway_host_tests::envoy::{Client, Envoy, EnvoySpec};

const HOST: &str = "reviews.prod.svc.cluster.local";

struct Fleet {
    backends: Vec<Backend>,
    envoy: Envoy,
    client: Client,
}

impl Fleet {
    fn start(config: &str, record: bool) -> Fleet {
        let backends: Vec<Backend> = ["east", "west", "south"]
            .iter()
            .map(|n| Backend::start(n, record).expect("backend"))
            .collect();
        let dests: Vec<(&str, u16)> = backends.iter().map(|b| (b.name(), b.port)).collect();
        let envoy = Envoy::start(&EnvoySpec::new(config, &dests)).unwrap_or_else(|e| panic!("{e}"));
        Fleet {
            backends,
            envoy,
            client: Client::new(),
        }
    }

    fn get(&self, headers: &[(&str, &str)]) -> tideway_host_tests::envoy::Reply {
        self.client
            .get(&self.envoy.url("/"), HOST, headers)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log_tail(30)))
    }

    fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name() == name)
            .expect("backend")
    }
}

/// East starts answering 503; within 50 requests it must be ejected, at
/// the cost of at most 6 failed ones.
fn fail_east_until_ejected(fleet: &Fleet) {
    fleet.backend("east").set_status(503);
    let mut failures = 0;
    for _ in 0..50 {
        if fleet.get(&[]).status == 503 {
            failures += 1;
        }
    }
    assert!(failures <= 6, "{failures} requests failed before ejection");
}

fn config(weights: &str, extra: &str) -> String {
    config_with(weights, extra, "")
}

fn config_with(weights: &str, extra: &str, scheduler_extra: &str) -> String {
    format!(
        r#"{{"services":[{{"name":"reviews","hosts":["{HOST}"],{extra}
            "destinations":[
              {{"name":"east","cluster":"cluster-east","weight":70,"locality":"region-1/zone-a"}},
              {{"name":"west","cluster":"cluster-west","weight":20,"locality":"region-1/zone-b"}},
              {{"name":"south","cluster":"cluster-south","weight":10,"locality":"region-2/zone-a"}}]}}],
          "scheduler":{{"weights":{weights},"tickMs":100{scheduler_extra}}}}}"#
    )
}

const STATIC: &str = r#"{"latency":0,"load":0,"cost":0,"affinity":0}"#;
const DYNAMIC: &str = r#"{"latency":1,"load":0.2,"cost":0,"affinity":0}"#;

fn header<'a>(recorded: &'a [(String, String)], name: &str) -> Option<&'a str> {
    recorded
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn filter_sets_the_routing_header_and_envoy_routes_on_it() {
    let fleet = Fleet::start(&config(STATIC, ""), true);
    for _ in 0..20 {
        let reply = fleet.get(&[]);
        assert_eq!(reply.status, 200, "{}", fleet.envoy.log_tail(20));
        let served_by = reply.header("x-backend").expect("x-backend").to_string();
        let recorded = fleet
            .backend(&served_by)
            .take_recorded()
            .pop()
            .expect("recorded");
        // The route chosen by Envoy is the one the filter's header named.
        assert_eq!(
            header(&recorded, "x-tideway-destination"),
            Some(served_by.as_str())
        );
        assert_eq!(
            header(&recorded, "x-cluster-source"),
            Some("cluster-local"),
            "{}",
            fleet.envoy.log_tail(30)
        );
        assert_eq!(
            header(&recorded, "x-cluster-target"),
            Some(format!("cluster-{served_by}").as_str())
        );
        assert_eq!(header(&recorded, "x-service-name"), Some("reviews"));
    }
    assert!(
        fleet
            .envoy
            .stat("wasmcustom.tideway.config.generation")
            .expect("stat")
            >= 1
    );
}

#[test]
fn static_split_70_20_10_within_one_point() {
    let fleet = Fleet::start(&config(STATIC, ""), false);
    let n = 10_000;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..n {
        let reply = fleet.get(&[]);
        *counts
            .entry(reply.header("x-backend").unwrap_or("?").to_string())
            .or_default() += 1;
    }
    for (name, expected) in [("east", 70.0), ("west", 20.0), ("south", 10.0)] {
        let pct = f64::from(counts.get(name).copied().unwrap_or(0)) / f64::from(n) * 100.0;
        assert!(
            (pct - expected).abs() <= 0.1,
            "{name}: {pct:.2}% (expected {expected}%): {counts:?}"
        );
    }
    // The filter adds its counts to Envoy's counters on the tick (100 ms).
    let name = "wasmcustom.tideway.requests.reviews.east.static";
    let static_east = fleet
        .envoy
        .stat_once(name, Duration::from_secs(3), |n| {
            n == u64::from(counts["east"])
        })
        .expect("stat");
    assert_eq!(u64::from(counts["east"]), static_east);
}

#[test]
fn a_session_key_sticks_to_one_destination() {
    let fleet = Fleet::start(
        &config(
            DYNAMIC,
            r#""affinity":{"source":"header","name":"x-user-id"},"#,
        ),
        false,
    );
    let mut homes = HashMap::new();
    for round in 0..5 {
        for user in 0..40 {
            let id = format!("user-{user}");
            let reply = fleet.get(&[("x-user-id", &id)]);
            let backend = reply.header("x-backend").expect("x-backend").to_string();
            let home = homes.entry(id.clone()).or_insert_with(|| backend.clone());
            assert_eq!(*home, backend, "{id} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = homes.values().collect();
    assert!(distinct.len() >= 2, "sessions should spread: {homes:?}");
}

#[test]
fn a_destination_made_ten_times_slower_loses_most_traffic_within_two_seconds() {
    let fleet = Fleet::start(&config(DYNAMIC, ""), false);
    // 5 ms, not less: on a loaded machine scheduling adds milliseconds to
    // every answer, and against a 2 ms base that noise alone moved the
    // fast destinations' estimates by more than the slowdown's margin.
    for b in &fleet.backends {
        b.set_delay(Duration::from_millis(5));
    }
    // Warm up: every destination gets measured.
    for _ in 0..300 {
        fleet.get(&[]);
    }
    fleet.backend("east").set_delay(Duration::from_millis(50));
    let slowed_at = Instant::now();
    // Requests in the first two seconds after the slowdown: the filter must
    // have noticed by the end of that window.
    while slowed_at.elapsed() < Duration::from_secs(2) {
        fleet.get(&[]);
    }
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..400 {
        let reply = fleet.get(&[]);
        *counts
            .entry(reply.header("x-backend").unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let east = f64::from(counts.get("east").copied().unwrap_or(0)) / 400.0;
    // Its static share is 70%; "most of its traffic" lost means well under 35%.
    assert!(
        east < 0.2,
        "east still gets {:.1}%: {counts:?}",
        east * 100.0
    );
}

#[test]
fn a_destination_returning_503_is_ejected_and_traffic_fails_over() {
    // A long first ejection keeps east out for the whole test.
    let fleet = Fleet::start(&config_with(STATIC, "", r#","ejectBaseMs":20000"#), false);
    fail_east_until_ejected(&fleet);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        let reply = fleet.get(&[]);
        assert_eq!(reply.status, 200);
        *counts
            .entry(reply.header("x-backend").unwrap_or("?").to_string())
            .or_default() += 1;
    }
    assert_eq!(counts.get("east"), None, "{counts:?}");
    assert!(
        fleet
            .envoy
            .stat("wasmcustom.tideway.ejections.reviews.east")
            .expect("stat")
            >= 1
    );
    // Counted on the filter's tick (100 ms), which may come after the last
    // request.
    let failovers = fleet
        .envoy
        .stat_once(
            "wasmcustom.tideway.requests.reviews.west.failover",
            Duration::from_secs(3),
            |n| n > 100,
        )
        .expect("stat");
    assert!(failovers > 100, "{failovers} failovers to west: {counts:?}");
    assert!(
        fleet.envoy.log().contains("ejected reviews/east"),
        "{}",
        fleet.envoy.log_tail(30)
    );
}

#[test]
fn with_a_probe_configured_envoy_probes_an_ejected_destination_and_no_client_pays() {
    let probe = r#""probe":{"cluster":"dest-{destination}","path":"/healthz"},"#;
    let fleet = Fleet::start(&config_with(STATIC, probe, r#","ejectBaseMs":300"#), true);
    fail_east_until_ejected(&fleet);
    fleet.backend("east").take_recorded();
    // Ejections of 300 ms, 600 ms, 1.2 s… each ended by a failing probe:
    // no client request reaches east.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let reply = fleet.get(&[]);
        assert_eq!(reply.status, 200, "{}", fleet.envoy.log_tail(20));
    }
    let recorded = fleet.backend("east").take_recorded();
    assert!(!recorded.is_empty(), "east was never probed");
    for r in &recorded {
        assert_eq!(header(r, "user-agent"), Some("tideway-probe"), "{r:?}");
        assert_eq!(header(r, ":path"), Some("/healthz"), "{r:?}");
        assert_eq!(header(r, "host"), Some(HOST), "{r:?}");
    }
    // East recovers: a probe passes and clients are sent there again.
    fleet.backend("east").set_status(200);
    let until = Instant::now() + Duration::from_secs(8);
    loop {
        let reply = fleet.get(&[]);
        assert_eq!(reply.status, 200);
        if reply.header("x-backend") == Some("east") {
            break;
        }
        assert!(
            Instant::now() < until,
            "east never re-admitted\n{}",
            fleet.envoy.log_tail(20)
        );
    }
}

#[test]
fn a_spoofed_routing_header_is_ignored_unless_trusted() {
    let untrusted = Fleet::start(&config(STATIC, ""), false);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        let reply = untrusted.get(&[("x-tideway-destination", "south")]);
        *counts
            .entry(reply.header("x-backend").unwrap_or("?").to_string())
            .or_default() += 1;
    }
    assert!(
        counts.get("south").copied().unwrap_or(0) < 60,
        "client chose its destination: {counts:?}"
    );
    drop(untrusted);

    let trusted = Fleet::start(
        &config(STATIC, "").replace(
            r#""scheduler""#,
            r#""trust":{"allSources":true},"scheduler""#,
        ),
        false,
    );
    for _ in 0..50 {
        let reply = trusted.get(&[("x-tideway-destination", "south")]);
        assert_eq!(reply.header("x-backend"), Some("south"));
    }
}

#[test]
fn unknown_hosts_pass_untouched() {
    let fleet = Fleet::start(&config(STATIC, ""), true);
    for _ in 0..10 {
        let reply = fleet
            .client
            .get(&fleet.envoy.url("/"), "other.example.com", &[])
            .expect("request");
        assert_eq!(reply.status, 200);
    }
    for b in &fleet.backends {
        for recorded in b.take_recorded() {
            assert_eq!(header(&recorded, "x-tideway-destination"), None);
            assert_eq!(header(&recorded, "x-service-name"), None);
        }
    }
}

#[test]
fn an_invalid_configuration_is_rejected_naming_the_field() {
    let backend = Backend::start("east", false).expect("backend");
    let bad = r#"{"services":[{"name":"reviews","hosts":["reviews"],"destinations":[{"name":"east","weight":-5}]}]}"#;
    let err = match Envoy::start(&EnvoySpec::new(bad, &[("east", backend.port)])) {
        Ok(_) => panic!("Envoy accepted an invalid plugin configuration"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("services[0].destinations[0].weight"), "{err}");
    assert!(err.contains("-5"), "{err}");
}
