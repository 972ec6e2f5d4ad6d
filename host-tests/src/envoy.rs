//! Real Envoy with the filter, configured as Istio delivers a WasmPlugin.
//!
//! Istio turns a WasmPlugin into an `envoy.filters.http.wasm` filter whose
//! `config` has `root_id` = the plugin name, an empty `vm_id`, the V8
//! runtime, and the `pluginConfig` as a JSON string in a
//! `google.protobuf.StringValue`. The route table stands in for the
//! VirtualService Tideway's controller renders: one route per destination
//! matching the routing header exactly, then a default route (the mesh's own
//! load balancing over all of them).
//!
//! Every port is chosen by the kernel (port 0) and read back from Envoy's
//! admin API, so tests run in parallel without collisions.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to start.
#[derive(Debug, Clone)]
pub struct EnvoySpec {
    /// The filter's plugin configuration (JSON text), or no filter at all.
    pub filter_config: Option<String>,
    pub wasm: PathBuf,
    pub routing_header: String,
    /// (subset name, backend port): one route + cluster each.
    pub destinations: Vec<(String, u16)>,
    /// Extra clusters the filter may call (e.g. a trace collector).
    pub extra_clusters: Vec<(String, u16)>,
    /// Name the destination clusters as Istio names a service's subset
    /// clusters, `outbound|PORT|SUBSET|HOST` (what the dashboard reads
    /// Envoy's latency by); `None`: `dest-<subset>`.
    pub istio_subset_clusters: Option<(u16, String)>,
    /// Envoy worker threads.
    pub concurrency: u32,
    /// `node.metadata.CLUSTER_ID` and `node.locality`, as Istio sets them.
    pub node_cluster_id: String,
    pub node_locality: (String, String),
    /// `node.metadata.NAMESPACE`, as Istio sets it; `None` = absent.
    pub node_namespace: Option<String>,
    /// Return a fixed response instead of proxying (filter-cost benchmarks).
    pub direct_response: bool,
    /// With `direct_response`: the per-destination routes answer directly
    /// too, so a request the filter steers is still served by Envoy itself
    /// and a benchmark measures only the filter's cost.
    pub direct_response_all: bool,
    /// `lb_policy` of the destination clusters and `mesh-default`
    /// (`ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`, `RING_HASH`, `MAGLEV`).
    pub lb_policy: String,
    /// `load_balancing_weight` of each `mesh-default` endpoint, in
    /// `destinations` order; empty = unweighted.
    pub mesh_default_weights: Vec<u32>,
    /// `outlier_detection` of every destination cluster and `mesh-default`
    /// (`Some(json!({}))` = Envoy's defaults); `None` = off.
    pub outlier_detection: Option<Value>,
    /// A `hash_policy` on the default route hashing this request header
    /// (for `RING_HASH` / `MAGLEV` session affinity).
    pub hash_header: Option<String>,
    /// The wasm filter's `failure_policy` (`FAIL_OPEN`, `FAIL_CLOSED`,
    /// `FAIL_RELOAD`, as Istio's `failStrategy` sets it); `None` = Envoy's
    /// default.
    pub failure_policy: Option<String>,
    /// A command Envoy runs under (e.g. `valgrind --tool=callgrind …`);
    /// empty = Envoy itself. Start-up may then take minutes.
    pub command_prefix: Vec<String>,
    /// Every route's upstream timeout (e.g. `"0.3s"`); `None`: Envoy's 15 s.
    pub route_timeout: Option<String>,
    /// Speak HTTP/2 (h2c) to the backends, as Istio does for gRPC ports.
    pub upstream_http2: bool,
    /// Environment variables for Envoy's process.
    pub env: Vec<(String, String)>,
    /// Routes to a destination set the hop headers themselves, as the
    /// controller's VirtualService does (`x-cluster-source` from
    /// `ISTIO_META_CLUSTER_ID` in `env`); give the filter
    /// `"hopHeaders":"routes"` with it.
    pub route_hop_headers: Option<RouteHopHeaders>,
    /// A second Tideway plugin after the first, with this configuration:
    /// another WasmPlugin on the same workload, as Istio delivers it (its
    /// own name and `root_id`, the same module and VM settings, so Envoy
    /// runs both plugins in one VM per worker).
    pub second_plugin: Option<String>,
}

/// What [`EnvoySpec::route_hop_headers`] sets: the service's name, and each
/// destination's cluster (by destination name).
#[derive(Debug, Clone)]
pub struct RouteHopHeaders {
    pub service: String,
    pub clusters: Vec<(String, String)>,
}

impl EnvoySpec {
    /// The Envoy cluster of destination `subset`.
    pub fn destination_cluster(&self, subset: &str) -> String {
        match &self.istio_subset_clusters {
            Some((port, host)) => format!("outbound|{port}|{subset}|{host}"),
            None => format!("dest-{subset}"),
        }
    }

    pub fn new(filter_config: &str, destinations: &[(&str, u16)]) -> Self {
        Self {
            filter_config: Some(filter_config.to_string()),
            wasm: crate::env::filter_wasm(),
            routing_header: tideway_filter::config::DEFAULT_ROUTING_HEADER.to_string(),
            destinations: destinations
                .iter()
                .map(|(n, p)| (n.to_string(), *p))
                .collect(),
            extra_clusters: Vec::new(),
            istio_subset_clusters: None,
            concurrency: 1,
            node_cluster_id: "cluster-local".to_string(),
            node_locality: ("region-1".to_string(), "zone-a".to_string()),
            node_namespace: None,
            direct_response: false,
            direct_response_all: false,
            lb_policy: "ROUND_ROBIN".to_string(),
            mesh_default_weights: Vec::new(),
            outlier_detection: None,
            hash_header: None,
            failure_policy: None,
            command_prefix: Vec::new(),
            route_timeout: None,
            upstream_http2: false,
            env: Vec::new(),
            route_hop_headers: None,
            second_plugin: None,
        }
    }

    fn bootstrap(&self, log_dir: &Path) -> Value {
        let routes = self.routes();
        let http_filters = self.http_filters();
        let clusters = self.clusters();
        let mut metadata = json!({"CLUSTER_ID": self.node_cluster_id});
        if let Some(ns) = &self.node_namespace {
            metadata["NAMESPACE"] = json!(ns);
        }
        json!({
            "node": {
                "id": "tideway-test",
                "cluster": "tideway-test",
                "metadata": metadata,
                "locality": {"region": self.node_locality.0, "zone": self.node_locality.1}
            },
            "admin": {
                "access_log_path": log_dir.join("admin.log").display().to_string(),
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
            },
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "route_config": {"name": "tideway-routes", "virtual_hosts": [
                                {"name": "all", "domains": ["*"], "routes": routes}
                            ]},
                            "http_filters": http_filters
                        }
                    }]}]
                }],
                "clusters": clusters
            }
        })
    }

    /// One route per destination on the routing header, then the default
    /// route; with `route_hop_headers`, each sets the hop headers as the
    /// rendered VirtualService's routes do.
    fn routes(&self) -> Vec<Value> {
        let mut routes: Vec<Value> = self
            .destinations
            .iter()
            .map(|(name, _)| {
                json!({
                    "match": {"prefix": "/", "headers": [
                        {"name": self.routing_header, "string_match": {"exact": name}}
                    ]},
                    "route": {"cluster": self.destination_cluster(name)}
                })
            })
            .map(|mut route| {
                if let Some(timeout) = &self.route_timeout {
                    route["route"]["timeout"] = json!(timeout);
                }
                route
            })
            .map(|mut route| {
                if self.direct_response && self.direct_response_all {
                    if let Some(r) = route.as_object_mut() {
                        r.remove("route");
                        r.insert(
                            "direct_response".to_string(),
                            json!({"status": 200, "body": {"inline_string": "ok"}}),
                        );
                    }
                }
                route
            })
            .collect();
        let default_route = if self.direct_response {
            json!({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
        } else {
            let mut route = json!({"cluster": "mesh-default"});
            if let Some(header) = &self.hash_header {
                route["hash_policy"] = json!([{"header": {"header_name": header}}]);
            }
            if let Some(timeout) = &self.route_timeout {
                route["timeout"] = json!(timeout);
            }
            json!({"match": {"prefix": "/"}, "route": route})
        };
        routes.push(default_route);
        if let Some(hop) = &self.route_hop_headers {
            let names: Vec<Option<&str>> = self
                .destinations
                .iter()
                .map(|(name, _)| Some(name.as_str()))
                .chain([None])
                .collect();
            for (route, name) in routes.iter_mut().zip(names) {
                let set = |key: &str, value: &str| json!({"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"});
                let mut add = vec![
                    set("x-cluster-source", "%ENVIRONMENT(ISTIO_META_CLUSTER_ID)%"),
                    set("x-service-name", &hop.service),
                ];
                let target = name.and_then(|n| {
                    hop.clusters
                        .iter()
                        .find(|(d, _)| d == n)
                        .map(|(_, c)| c.as_str())
                });
                match target {
                    Some(cluster) => add.push(set("x-cluster-target", cluster)),
                    None => route["request_headers_to_remove"] = json!(["x-cluster-target"]),
                }
                route["request_headers_to_add"] = json!(add);
            }
        }
        routes
    }

    /// The filter (twice, with `second_plugin`: two plugins in one VM), then
    /// the router.
    fn http_filters(&self) -> Vec<Value> {
        let mut http_filters = Vec::new();
        if let Some(config) = &self.filter_config {
            let mut filter = json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "tideway",
                        "root_id": "tideway",
                        "vm_config": {
                            "vm_id": "",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": self.wasm.display().to_string()}}
                        },
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": config
                        }
                    }
                }
            });
            if let Some(policy) = &self.failure_policy {
                filter["typed_config"]["config"]["failure_policy"] = json!(policy);
            }
            if let Some(second) = &self.second_plugin {
                let mut other = filter.clone();
                let c = &mut other["typed_config"]["config"];
                c["name"] = json!("tideway-second");
                c["root_id"] = json!("tideway-second");
                c["configuration"]["value"] = json!(second);
                http_filters.push(filter);
                http_filters.push(other);
            } else {
                http_filters.push(filter);
            }
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        http_filters
    }

    /// A cluster per destination, `mesh-default` over all of them, and the
    /// extra clusters (probes, collectors, the weights API).
    fn clusters(&self) -> Vec<Value> {
        let cluster = |name: String, ports: Vec<u16>, weights: &[u32], steered: bool| {
            let mut c = json!({
                "name": name,
                "type": "STATIC",
                "connect_timeout": "1s",
                "lb_policy": if steered { self.lb_policy.as_str() } else { "ROUND_ROBIN" },
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints":
                    ports.iter().enumerate().map(|(i, p)| {
                        let mut e = json!({"endpoint": {"address": {"socket_address":
                            {"address": "127.0.0.1", "port_value": p}}}});
                        if let Some(w) = weights.get(i) {
                            e["load_balancing_weight"] = json!(w);
                        }
                        e
                    }).collect::<Vec<_>>()
                }]}
            });
            if let (true, Some(od)) = (steered, &self.outlier_detection) {
                c["outlier_detection"] = od.clone();
            }
            if steered && self.upstream_http2 {
                c["typed_extension_protocol_options"] = json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                });
            }
            c
        };
        let mut clusters: Vec<Value> = self
            .destinations
            .iter()
            .map(|(name, port)| cluster(self.destination_cluster(name), vec![*port], &[], true))
            .collect();
        if !self.destinations.is_empty() {
            clusters.push(cluster(
                "mesh-default".to_string(),
                self.destinations.iter().map(|(_, p)| *p).collect(),
                &self.mesh_default_weights,
                true,
            ));
        }
        for (name, port) in &self.extra_clusters {
            clusters.push(cluster(name.clone(), vec![*port], &[], false));
        }
        clusters
    }
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    dir: tempfile::TempDir,
}

impl Envoy {
    pub fn start(spec: &EnvoySpec) -> Result<Self> {
        Self::launch(
            |dir| spec.bootstrap(dir),
            &spec.command_prefix,
            spec.concurrency,
            &spec.env,
        )
    }

    /// Starts Envoy on a bootstrap of the caller's (given the directory
    /// for its logs). Its first listener is the one requests go to.
    pub fn start_with(bootstrap: impl FnOnce(&Path) -> Value, concurrency: u32) -> Result<Self> {
        Self::launch(bootstrap, &[], concurrency, &[])
    }

    /// As [`Envoy::start_with`], with environment variables set for Envoy
    /// (as Istio's injector sets `ISTIO_META_CLUSTER_ID` for the sidecar).
    pub fn start_with_env(
        bootstrap: impl FnOnce(&Path) -> Value,
        concurrency: u32,
        env: &[(String, String)],
    ) -> Result<Self> {
        Self::launch(bootstrap, &[], concurrency, env)
    }

    fn launch(
        bootstrap: impl FnOnce(&Path) -> Value,
        command_prefix: &[String],
        concurrency: u32,
        env: &[(String, String)],
    ) -> Result<Self> {
        let binary = crate::env::envoy();
        let dir = tempfile::tempdir().context("creating a temp dir for Envoy")?;
        let config_path = dir.path().join("envoy.json");
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&bootstrap(dir.path()))?,
        )?;
        let mut command = match command_prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let child = command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            // Flush the log file quickly: tests read it (default 10 s).
            .args([
                "-l",
                "info",
                "--disable-hot-restart",
                "--file-flush-interval-msec",
                "50",
            ])
            .args(["--concurrency", &concurrency.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start Envoy at {}", binary.display()))?;
        let mut envoy = Self {
            child,
            port: 0,
            admin_port: 0,
            dir,
        };
        let ready_within = Duration::from_secs(if command_prefix.is_empty() { 60 } else { 900 });
        if let Err(e) = envoy.wait_ready(&admin_path, ready_within) {
            // A rejected bootstrap is logged as one long critical line
            // (the reason, then the whole config): its head first.
            let log = envoy.log();
            let critical: Vec<String> = log
                .lines()
                .filter(|l| l.contains("[critical]"))
                .map(|l| l.chars().take(600).collect())
                .collect();
            bail!(
                "{e}\n{}\n--- tail of Envoy's log ---\n{}",
                critical.join("\n"),
                envoy.log_tail(40)
            );
        }
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_path: &Path, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("Envoy exited during start-up ({status})");
            }
            if Instant::now() > deadline {
                bail!("Envoy did not become ready within {} s", within.as_secs());
            }
            if self.admin_port == 0 {
                if let Ok(address) = std::fs::read_to_string(admin_path) {
                    if let Some(port) = address
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                    {
                        self.admin_port = port;
                    }
                }
            }
            if self.admin_port != 0 {
                let ready = self
                    .admin("/ready")
                    .map(|b| b.trim() == "LIVE")
                    .unwrap_or(false);
                if ready {
                    let listeners: Value =
                        serde_json::from_str(&self.admin("/listeners?format=json")?)?;
                    self.port = listeners["listener_statuses"][0]["local_address"]
                        ["socket_address"]["port_value"]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(|| anyhow!("no listener port in {listeners}"))?;
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET an admin endpoint.
    pub fn admin(&self, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        match ureq::get(&url).timeout(Duration::from_secs(5)).call() {
            Ok(r) => Ok(r.into_string()?),
            Err(ureq::Error::Status(_, r)) => Ok(r.into_string()?),
            Err(e) => Err(anyhow!("admin {path}: {e}")),
        }
    }

    /// A counter or gauge from `/stats`, 0 when absent.
    pub fn stat(&self, name: &str) -> Result<u64> {
        let stats = self.admin(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))?;
        Ok(stats
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Stat `name` once `done` holds for it, or its last value when
    /// `within` has passed. For the filter's request counters, which it
    /// adds to Envoy's on its tick rather than per request: a test that
    /// reads one right after its requests can see the counts before the
    /// tick flushed them.
    pub fn stat_once(
        &self,
        name: &str,
        within: Duration,
        done: impl Fn(u64) -> bool,
    ) -> Result<u64> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let value = self.stat(name)?;
            if done(value) || std::time::Instant::now() >= deadline {
                return Ok(value);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        // Let Envoy flush (--file-flush-interval-msec 50).
        std::thread::sleep(Duration::from_millis(150));
        let log = std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::thread::sleep(Duration::from_millis(150));
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The Envoy process id (for its RSS in `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP exchange's result.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive client for requests through Envoy.
pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Self {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .max_idle_connections_per_host(8)
                .build(),
        }
    }

    /// GET `url` with `Host: host` and extra headers (repeat a name to send
    /// it twice).
    pub fn get(&self, url: &str, host: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let mut request = self.agent.get(url).set("host", host);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let response = match request.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(anyhow!("GET {url} (host {host}): {e}")),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .flat_map(|n| {
                response
                    .all(&n)
                    .into_iter()
                    .map(|v| (n.clone(), v.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let body = response.into_string()?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}
