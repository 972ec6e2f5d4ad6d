//! Host names as Istio serves them, through real Envoy: a service listed by
//! its FQDN is steered whichever of its names the caller uses — with or
//! without the port, in any case — and the bare short name only from a
//! proxy in the service's own namespace (`node.metadata.NAMESPACE`), as
//! Istio's virtual hosts do.

use tideway_host_tests::backend::Backend;
use tideway_host_tests::envoy::{Client, Envoy, EnvoySpec};

const FQDN: &str = "reviews.production.svc.cluster.local";

fn config() -> String {
    format!(
        r#"{{"services":[{{"name":"reviews","hosts":["{FQDN}"],
            "destinations":[{{"name":"east","cluster":"cluster-east"}}]}}]}}"#
    )
}

fn start(namespace: Option<&str>) -> (Backend, Envoy) {
    let backend = Backend::start("east", true).expect("backend");
    let mut spec = EnvoySpec::new(&config(), &[("east", backend.port)]);
    spec.node_namespace = namespace.map(str::to_string);
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    (backend, envoy)
}

/// How many of `n` requests to `host` the filter steered (the backend saw
/// the routing header the filter sets; the mesh default route has none).
fn steered(backend: &Backend, envoy: &Envoy, host: &str, n: usize) -> usize {
    let client = Client::new();
    for _ in 0..n {
        let reply = client
            .get(&envoy.url("/"), host, &[])
            .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail(20)));
        assert_eq!(reply.status, 200, "{host}");
    }
    let recorded = backend.take_recorded();
    assert_eq!(recorded.len(), n, "{host}");
    recorded
        .iter()
        .filter(|r| {
            r.iter()
                .any(|(k, v)| k == "x-tideway-destination" && v == "east")
        })
        .count()
}

#[test]
fn every_name_istio_serves_is_steered_from_the_services_namespace() {
    let (backend, envoy) = start(Some("production"));
    for host in [
        "reviews:9080",
        "reviews.production:9080",
        "reviews.production.svc:9080",
        "reviews.production.svc.cluster.local:9080",
        "reviews",
        "reviews.production",
        "Reviews.Production.Svc:9080",
        "reviews.production.svc.cluster.local.:9080",
    ] {
        assert_eq!(steered(&backend, &envoy, host, 8), 8, "{host}");
    }
    // A host no service lists is left to the mesh.
    assert_eq!(steered(&backend, &envoy, "ratings:9080", 4), 0);
}

#[test]
fn the_short_name_is_not_steered_from_another_namespace() {
    for namespace in [Some("default"), None] {
        let (backend, envoy) = start(namespace);
        // Elsewhere `reviews` is another namespace's service: Istio does not
        // put it on this service's virtual host, and neither does the filter.
        assert_eq!(
            steered(&backend, &envoy, "reviews:9080", 4),
            0,
            "{namespace:?}"
        );
        for host in ["reviews.production:9080", "reviews.production.svc:9080"] {
            assert_eq!(
                steered(&backend, &envoy, host, 4),
                4,
                "{namespace:?} {host}"
            );
        }
    }
}
