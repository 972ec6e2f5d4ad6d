//! What counts as a destination's failure, in real Envoy 1.40: a client
//! that goes away is not one; an upstream that resets or times out is.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tideway_host_tests::backend::Backend;
use tideway_host_tests::envoy::{Client, Envoy, EnvoySpec};

const HOST: &str = "reviews.prod.svc.cluster.local";
const NAMES: [&str; 3] = ["east", "west", "south"];

fn config() -> String {
    format!(
        r#"{{"services":[{{"name":"reviews","hosts":["{HOST}"],
            "destinations":[{{"name":"east","weight":1}},{{"name":"west","weight":1}},{{"name":"south","weight":1}}]}}],
          "scheduler":{{"weights":{{"latency":0,"load":0,"cost":0,"affinity":0}},"tickMs":100,"ejectBaseMs":30000}}}}"#
    )
}

fn ejections(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .stat(&format!("wasmcustom.tideway.ejections.reviews.{name}"))
        .expect("stat")
}

/// `n` requests sent on their own connections, which are closed (the
/// client goes away) while the slow backends are still working on them.
fn abort_in_flight(envoy: &Envoy, n: usize) {
    let mut sockets: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
            write!(s, "GET /slow HTTP/1.1\r\nHost: {HOST}\r\n\r\n").expect("send");
            s
        })
        .collect();
    // Long enough for every request to reach a backend, far shorter than
    // the backends take.
    std::thread::sleep(Duration::from_millis(300));
    sockets.clear();
}

#[test]
fn clients_aborting_in_flight_requests_to_slow_healthy_backends_eject_nothing() {
    // As `wrk -c32` stopping, three times: 32 requests in flight each time.
    let backends: Vec<Backend> = NAMES
        .iter()
        .map(|n| Backend::start(n, false).expect("backend"))
        .collect();
    for b in &backends {
        b.set_delay(Duration::from_millis(1500));
    }
    let dests: Vec<(&str, u16)> = backends.iter().map(|b| (b.name(), b.port)).collect();
    let mut spec = EnvoySpec::new(&config(), &dests);
    spec.concurrency = 2;
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..3 {
        abort_in_flight(&envoy, 32);
    }
    // Every aborted request has ended in Envoy.
    std::thread::sleep(Duration::from_millis(1500));
    for name in NAMES {
        assert_eq!(
            ejections(&envoy, name),
            0,
            "{name} was ejected for clients hanging up\n{}",
            envoy.log_tail(30)
        );
    }
    // And the destinations still serve, through the filter.
    for b in &backends {
        b.set_delay(Duration::ZERO);
    }
    let client = Client::new();
    let reply = client.get(&envoy.url("/"), HOST, &[]).expect("request");
    assert_eq!(reply.status, 200);
    // Counted on the filter's tick, which may come after the last request.
    assert!(
        envoy
            .stat_once(
                "wasmcustom.tideway.requests.reviews.east.static",
                Duration::from_secs(3),
                |n| n > 0
            )
            .expect("stat")
            > 0,
        "the requests were steered by the filter"
    );
}

/// A backend that accepts connections and closes them before answering.
fn resetting_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            drop(stream);
        }
    });
    port
}

/// Requests until `name` is ejected; how many it took.
fn until_ejected(envoy: &Envoy, name: &str, within: usize) -> usize {
    let client = Client::new();
    for i in 1..=within {
        let _ = client.get(&envoy.url("/"), HOST, &[]);
        if ejections(envoy, name) > 0 {
            return i;
        }
    }
    panic!(
        "{name} was never ejected in {within} requests\n{}",
        envoy.log_tail(40)
    );
}

#[test]
fn an_upstream_that_resets_connections_is_still_ejected() {
    let west = Backend::start("west", false).expect("backend");
    let south = Backend::start("south", false).expect("backend");
    let east = resetting_backend();
    let spec = EnvoySpec::new(
        &config(),
        &[("east", east), ("west", west.port), ("south", south.port)],
    );
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    until_ejected(&envoy, "east", 60);
    // Ejected: the next requests are all served.
    let client = Client::new();
    for _ in 0..20 {
        assert_eq!(
            client.get(&envoy.url("/"), HOST, &[]).expect("get").status,
            200
        );
    }
}

#[test]
fn an_upstream_that_times_out_is_still_ejected() {
    let east = Backend::start("east", false).expect("backend");
    let west = Backend::start("west", false).expect("backend");
    let south = Backend::start("south", false).expect("backend");
    east.set_delay(Duration::from_secs(3));
    let mut spec = EnvoySpec::new(
        &config(),
        &[
            ("east", east.port),
            ("west", west.port),
            ("south", south.port),
        ],
    );
    spec.route_timeout = Some("0.2s".to_string());
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    until_ejected(&envoy, "east", 60);
    assert!(started.elapsed() < Duration::from_secs(20));
}
