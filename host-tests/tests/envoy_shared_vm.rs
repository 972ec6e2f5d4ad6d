//! Two Tideway plugins in one VM, through real Envoy: two WasmPlugins on
//! one workload, each governing its own service. Envoy runs plugins with
//! the same module and VM settings in one VM per worker, and the filter
//! does not export `proxy_on_context_create`, so nothing tells it which
//! plugin a new stream belongs to: it must find out (the stream's
//! `plugin_name`), or one policy would steer with the other's services —
//! or not at all.

use tideway_host_tests::backend::Backend;
use tideway_host_tests::envoy::{Client, Envoy, EnvoySpec};

fn config(host: &str, destination: &str) -> String {
    format!(
        r#"{{"services":[{{"name":"svc","hosts":["{host}"],
            "destinations":[{{"name":"{destination}","cluster":"cluster-{destination}"}}]}}]}}"#
    )
}

/// (requests that reached `backend` with the routing header naming
/// `destination`, all requests that reached it); the mesh default route
/// adds no routing header.
fn steered_to(backend: &Backend, destination: &str) -> (usize, usize) {
    let recorded = backend.take_recorded();
    let steered = recorded
        .iter()
        .filter(|r| {
            r.iter()
                .any(|(k, v)| k == "x-tideway-destination" && v == destination)
        })
        .count();
    (steered, recorded.len())
}

#[test]
fn each_plugin_sharing_a_vm_steers_its_own_service() {
    let east = Backend::start("east", true).expect("backend");
    let west = Backend::start("west", true).expect("backend");
    let mut spec = EnvoySpec::new(
        &config("first.example", "east"),
        &[("east", east.port), ("west", west.port)],
    );
    spec.second_plugin = Some(config("second.example", "west"));
    spec.concurrency = 2;
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    let client = Client::new();
    let n = 40;
    for round in 0..n {
        // Alternate, so a stream context follows one of the other plugin's.
        for host in ["first.example", "second.example"] {
            let reply = client
                .get(&envoy.url("/"), host, &[])
                .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail(30)));
            assert_eq!(reply.status, 200, "{host}, round {round}");
        }
    }
    // Every request to each host was steered by the plugin governing it
    // (one left unsteered would have gone to the mesh default, which
    // spreads over both backends).
    assert_eq!(
        steered_to(&east, "east"),
        (n, n),
        "first.example via the first plugin"
    );
    assert_eq!(
        steered_to(&west, "west"),
        (n, n),
        "second.example via the second plugin"
    );
    // And the filter never trapped or lost track of a stream.
    let log = envoy.log_tail(400);
    assert!(
        !log.contains("Function: proxy_on") && !log.contains("panicked"),
        "{log}"
    );
}
