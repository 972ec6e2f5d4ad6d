//! The fleet dashboard as an operator uses it: headless Chromium (Debian's
//! `chromium`, over the DevTools protocol) on `/ui` of the real
//! `tideway serve-weights --ui`, with real Envoy 1.40 running the built
//! filter, which polls that server's weights and whose admin stats the
//! dashboard reads, and live traffic through Envoy.
//!
//! Checked: the page loads with no console error, exception or failed load;
//! its charts draw this run's live data; the what-if, run in the page by
//! the filter's core compiled for the browser, gives exactly what the
//! native core gives for the same input; and "apply" drains a cluster
//! through the weights API, after which Envoy sends it nothing and the page
//! shows the real outcome next to the prediction. A screenshot is left in
//! `target/tideway/dashboard.png` for a person to look at.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tideway_host_tests::backend::Backend;
use tideway_host_tests::browser::Browser;
use tideway_host_tests::env;
use tideway_host_tests::envoy::{Client, Envoy, EnvoySpec};
use tideway_host_tests::weights_server::WeightsServer;

const HOST: &str = "reviews.prod.svc.cluster.local";
const TOKEN: &str = "tw-dashboard-test-71c2";
const CLUSTERS: [&str; 3] = ["hangzhou", "shanghai", "beijing"];

fn policy() -> String {
    let mut p = String::from(
        "apiVersion: traffic.tideway.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: reviews\n  namespace: prod\nspec:\n  fleet: f\n  service:\n    name: reviews\n    port: 9080\n  destinations:\n",
    );
    for c in CLUSTERS {
        p.push_str(&format!("  - cluster: {c}\n    weight: 1\n"));
    }
    p
}

fn plugin_config(weights_port: u16, cluster: &str) -> String {
    serde_json::json!({
        "services": [{
            "name": "reviews",
            "hosts": [HOST],
            "destinations": CLUSTERS.iter().map(|c| serde_json::json!({"name": c, "weight": 1})).collect::<Vec<_>>()
        }],
        "scheduler": { "tickMs": 100 },
        "weightsSource": {
            "cluster": cluster,
            "authority": format!("tideway-weights.tideway-system.svc.cluster.local:{weights_port}"),
            "waitMs": 1000, "leaseMs": 500, "retryMs": 100, "ttlMs": 30000
        }
    })
    .to_string()
}

/// Requests through Envoy on a thread until stopped, counting per backend.
struct Traffic {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<std::collections::HashMap<String, u64>>>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, c, n) = (stop.clone(), counts.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let client = Client::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok(reply) = client.get(&url, HOST, &[]) {
                    *c.lock().unwrap().entry(reply.body).or_insert(0) += 1;
                }
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            stop,
            counts,
            sent,
            thread: Some(thread),
        }
    }

    fn take(&self) -> std::collections::HashMap<String, u64> {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_dashboard_shows_live_data_predicts_with_the_filters_core_and_applies_through_the_api() {
    let backends: Vec<Backend> = CLUSTERS
        .iter()
        .map(|n| Backend::start(n, false).expect("backend"))
        .collect();
    for b in &backends {
        b.set_delay(Duration::from_millis(3));
    }
    // Envoy first (the server reads its admin); the weights server's port
    // is chosen now and Envoy's poller retries until it listens.
    let weights_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cluster =
        format!("outbound|{weights_port}||tideway-weights.tideway-system.svc.cluster.local");
    let dests: Vec<(&str, u16)> = backends.iter().map(|b| (b.name(), b.port)).collect();
    let mut spec = EnvoySpec::new(&plugin_config(weights_port, &cluster), &dests);
    spec.extra_clusters = vec![(cluster, weights_port)];
    spec.istio_subset_clusters = Some((9080, HOST.to_string()));
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    let ui_dir = env::ui_dir().unwrap_or_else(|e| panic!("{e}"));
    let server = WeightsServer::start(
        &policy(),
        TOKEN,
        &format!("127.0.0.1:{weights_port}"),
        &[
            "--ui".into(),
            "--ui-dir".into(),
            ui_dir.display().to_string(),
            "--envoy-admin".into(),
            format!("gateway=http://127.0.0.1:{}", envoy.admin_port),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let traffic = Traffic::start(envoy.url("/"));

    let mut browser = Browser::launch().unwrap_or_else(|e| panic!("{e}"));
    browser
        .navigate(&format!("{}/ui/", server.url))
        .unwrap_or_else(|e| panic!("{e}"));
    let wait = |b: &mut Browser, what: &str, js: &str, secs: u64| {
        b.wait_for(what, js, Duration::from_secs(secs))
            .unwrap_or_else(|e| panic!("{e}\nserver: {}", server.stderr()))
    };
    wait(
        &mut browser,
        "the scheduler module loads",
        "document.getElementById('scheduler-status').textContent.includes('loaded')",
        30,
    );
    // Live data: the proxy reports the weights version the server
    // publishes, and the share chart has points with a line per cluster.
    let version = wait(
        &mut browser,
        "the proxy runs the published weights",
        "(() => { const t = document.querySelector('#proxies tr[data-proxy=gateway]'); \
         return t && t.textContent.includes('(current)') && t.textContent; })()",
        30,
    );
    assert!(version.as_str().unwrap_or("").contains("up"), "{version}");
    wait(
        &mut browser,
        "the share chart draws live points for every cluster",
        "(() => { const c = document.getElementById('share-reviews'); \
         return c && Number(c.dataset.points) >= 3 && c.querySelectorAll('path[data-destination]').length === 3; })()",
        30,
    );
    // Latency from Envoy's histograms of the destination clusters.
    wait(
        &mut browser,
        "p99 latency shows for every cluster",
        "[...document.querySelectorAll('#services tr[data-destination]')]\
         .every(r => /ms$/.test(r.children[7].textContent))",
        30,
    );
    let shares = browser
        .evaluate(
            "[...document.querySelectorAll('#services tr[data-destination] td.share')]\
             .map(td => parseFloat(td.textContent))",
        )
        .unwrap();
    let shares: Vec<f64> = shares
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    let sum: f64 = shares.iter().sum();
    // The last second's split, from the differences of Envoy's counters:
    // a share per cluster, adding up. (Not each above 0: with latency
    // scoring on, equal loopback backends' sub-millisecond jitter can
    // leave one out of a given second.)
    assert!(
        shares.len() == 3 && shares.iter().all(|s| s.is_finite()) && (sum - 100.0).abs() < 1.0,
        "live shares from Envoy's counters: {shares:?}"
    );

    // What-if: beijing drained. The page's prediction must be the native
    // core's for the same config and scenario, byte for byte.
    browser
        .evaluate(
            "(() => { const s = document.getElementById('wi-condition-2'); s.value = 'drained'; \
             s.dispatchEvent(new Event('change')); document.getElementById('wi-predict').click(); })()",
        )
        .unwrap();
    wait(
        &mut browser,
        "the what-if predicts",
        "document.getElementById('whatif-result').dataset.prediction",
        30,
    );
    let attr = |b: &mut Browser, name: &str| -> String {
        b.evaluate(&format!(
            "document.getElementById('whatif-result').dataset.{name}"
        ))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
    };
    let (config, scenario, in_page) = (
        attr(&mut browser, "config"),
        attr(&mut browser, "scenario"),
        attr(&mut browser, "prediction"),
    );
    let native = tideway_filter::whatif::predict_json(config.as_bytes(), scenario.as_bytes())
        .unwrap_or_else(|e| panic!("native what-if: {e}\nscenario: {scenario}"));
    assert_eq!(
        in_page,
        serde_json::to_string(&native).unwrap(),
        "the browser's prediction differs from the native core's for {scenario}"
    );
    let beijing = native
        .destinations
        .iter()
        .find(|d| d.name == "beijing")
        .unwrap();
    assert_eq!(
        beijing.share, 0.0,
        "a drained cluster is predicted no traffic"
    );
    assert!(native.requests > 1_000, "{native:?}");

    // Apply, with the token: the drain goes through the weights API.
    browser
        .evaluate(&format!(
            "(() => {{ document.getElementById('wi-token').value = '{TOKEN}'; \
             document.getElementById('wi-apply').click(); }})()"
        ))
        .unwrap();
    wait(
        &mut browser,
        "the page shows beijing drained",
        "(() => { const r = document.querySelector('#services tr[data-destination=beijing]'); \
         return r && r.textContent.includes('drained'); })()",
        20,
    );
    let doc = server.cli(&["weights", "get", "--json"]).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&doc.stdout)
        .unwrap_or_else(|e| panic!("weights get: {e}: {}", String::from_utf8_lossy(&doc.stderr)));
    let drained: Vec<&str> = doc["services"][0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["drained"] == true)
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(drained, ["beijing"], "the API publishes the drain: {doc}");

    // Envoy follows: once the proxy runs the new version, nothing reaches
    // beijing, and the page's live column shows it beside the prediction.
    let published = doc["version"].as_u64().unwrap();
    let start = std::time::Instant::now();
    while envoy
        .stat("wasmcustom.tideway.weights.version")
        .unwrap_or(0)
        != published
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "Envoy did not adopt version {published}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    traffic.take();
    let before = traffic.sent.load(Ordering::Relaxed);
    while traffic.sent.load(Ordering::Relaxed) < before + 200 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = traffic.take();
    assert_eq!(
        after.get("beijing").copied().unwrap_or(0),
        0,
        "Envoy still sends to the drained cluster: {after:?}"
    );
    wait(
        &mut browser,
        "the live column shows beijing at 0% next to the prediction",
        "(() => { const r = document.querySelector('#whatif-result tr[data-destination=beijing]'); \
         return r && r.querySelector('td.live').textContent === '0.0%' \
                  && r.querySelector('td.predicted').textContent === '0.0%'; })()",
        20,
    );

    let errors = browser.errors().unwrap();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    let shot = env::workspace_root().join("target/tideway/dashboard.png");
    browser.screenshot(&shot).unwrap();
    eprintln!("dashboard screenshot: {}", shot.display());
}
