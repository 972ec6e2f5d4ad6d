//! `cargo xtask demo`: a local fleet — real Envoy with the Tideway filter in
//! front of three loopback "clusters" — showing steered requests, a
//! slowdown, and a failover.

use std::collections::BTreeMap;
use std::time::Duration;
use tideway_host_tests::backend::Backend;
use tideway_host_tests::envoy::{Client, Envoy, EnvoySpec};

const HOST: &str = "reviews.prod.svc.cluster.local";

/// The embedded default policy: a 70/20/10 spread over three clusters,
/// steered by latency and load, with session affinity on `x-user-id`.
const DEFAULT_CONFIG: &str = r#"{
  "services": [{
    "name": "reviews",
    "hosts": ["reviews.prod.svc.cluster.local"],
    "affinity": {"source": "header", "name": "x-user-id"},
    "destinations": [
      {"name": "east",  "cluster": "cluster-east",  "locality": "region-1/zone-a", "weight": 70, "cost": 1},
      {"name": "west",  "cluster": "cluster-west",  "locality": "region-1/zone-b", "weight": 20, "cost": 1},
      {"name": "south", "cluster": "cluster-south", "locality": "region-2/zone-a", "weight": 10, "cost": 2}
    ]
  }],
  "scheduler": {"weights": {"latency": 0.5, "load": 0.2, "cost": 0.1, "affinity": 0.2}, "tickMs": 100},
  "decisionHeader": true
}"#;

fn main() -> anyhow::Result<()> {
    let backends: Vec<Backend> = ["east", "west", "south"]
        .iter()
        .map(|n| Backend::start(n, 8, false))
        .collect::<anyhow::Result<_>>()?;
    for b in &backends {
        b.set_delay(Duration::from_millis(2));
    }
    let dests: Vec<(&str, u16)> = backends.iter().map(|b| (b.name(), b.port)).collect();
    let envoy = Envoy::start(&EnvoySpec::new(DEFAULT_CONFIG, &dests))?;
    let client = Client::new();
    println!(
        "Envoy 1.40 with the Tideway filter on 127.0.0.1:{} (admin :{})",
        envoy.port, envoy.admin_port
    );
    println!(
        "backends: {}",
        backends
            .iter()
            .map(|b| format!("{}=:{}", b.name(), b.port))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let one = client.get(&envoy.url("/"), HOST, &[])?;
    println!(
        "\none request: served by {:?}\n  x-tideway-decision: {}",
        one.header("x-backend").unwrap_or("?"),
        one.header("x-tideway-decision").unwrap_or("?")
    );

    let phase = |title: &str, n: usize| -> anyhow::Result<()> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut errors = 0;
        for _ in 0..n {
            let reply = client.get(&envoy.url("/"), HOST, &[])?;
            if reply.status >= 500 {
                errors += 1;
            }
            *counts
                .entry(reply.header("x-backend").unwrap_or("?").to_string())
                .or_default() += 1;
        }
        let spread: Vec<String> = counts
            .iter()
            .map(|(k, v)| format!("{k} {:.1}%", *v as f64 / n as f64 * 100.0))
            .collect();
        println!("{title:<44} {}  (5xx: {errors})", spread.join("  "));
        Ok(())
    };
    println!();
    phase("all healthy, 2 ms each (weights 70/20/10):", 1000)?;
    backends[0].set_delay(Duration::from_millis(20));
    phase("east slowed to 20 ms (first 1000 requests):", 1000)?;
    phase("east slowed to 20 ms (next 1000):", 1000)?;
    backends[0].set_delay(Duration::from_millis(2));
    backends[1].set_status(503);
    phase("east recovered, west answers 503:", 1000)?;
    backends[1].set_status(200);

    let mut sticky = 0;
    for user in 0..50 {
        let id = format!("user-{user}");
        let first = client.get(&envoy.url("/"), HOST, &[("x-user-id", &id)])?;
        let again = client.get(&envoy.url("/"), HOST, &[("x-user-id", &id)])?;
        if first.header("x-backend") == again.header("x-backend") {
            sticky += 1;
        }
    }
    println!("session affinity (x-user-id): {sticky}/50 sessions stayed on their destination");
    println!("\nfilter metrics (Envoy /stats):");
    for line in envoy.admin("/stats?filter=wasmcustom.tideway")?.lines() {
        if !line.ends_with(": 0") {
            println!("  {line}");
        }
    }
    Ok(())
}
