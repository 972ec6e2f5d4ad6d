//! `cargo xtask demo`: the whole bundle on one machine, as a platform team
//! runs it — policy → image → registry → Envoy → traffic — and a report.
//!
//! What runs (loopback only, every port chosen free):
//! - three member clusters of the example fleet ([`cluster`]), each
//!   the service's pods with their own latency, capacity and cost;
//! - a local OCI registry ([`registry`], Debian's `docker-registry`): the
//!   filter is pushed with `tideway image push`, pulled back by digest with
//!   `tideway image pull`, and Envoy loads exactly the pulled module;
//! - `tideway render` of the demo TrafficPolicy (host-tests/demo/) for the
//!   caller's member (cluster-hangzhou), translated as istiod would
//!   ([`crate::istio_routes`]): the WasmPlugin's pluginConfig is the
//!   filter's configuration, the VirtualService and DestinationRule give
//!   the routes and clusters;
//! - Envoy 1.40 on that configuration, and a paced load generator
//!   ([`load`]) with session-affine users and anonymous traffic.
//!
//! The scripted scenario ([`Phase`]) runs for Tideway, then for Envoy's own
//! ROUND_ROBIN and LEAST_REQUEST on the same backends, the same load and
//! the same rendered DestinationRule (its outlier detection and istiod's
//! default retries included), the filter removed and the DestinationRule's
//! `loadBalancer` set to the policy under comparison. [`report`] turns the
//! samples into the terminal table and the HTML report.

pub mod cluster;
pub mod load;
pub mod registry;
pub mod report;
pub mod weights;

use anyhow::{anyhow, bail, Context, Result};
use cluster::{Cluster, ClusterSpec, Fault};
use load::{Load, LoadSpec, Sample, Target};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::envoy::Envoy;
use crate::istio_routes::{self, Direction, Endpoint, Proxy, Service};

/// The caller's member cluster: the demo's Envoy is a sidecar there.
pub const LOCAL_MEMBER: &str = "cluster-hangzhou";
pub const SERVICE_HOST: &str = "api.production.svc.cluster.local";
pub const SERVICE_NAMESPACE: &str = "production";
pub const SERVICE_PORT: u16 = 8080;
const CLUSTER_LABEL: &str = "topology.istio.io/cluster";

/// How requests are balanced in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The Tideway filter, as rendered.
    Tideway,
    /// No filter; Envoy's ROUND_ROBIN over every cluster's pods.
    RoundRobin,
    /// No filter; Envoy's LEAST_REQUEST (power of two choices).
    LeastRequest,
}

impl Policy {
    pub fn label(self) -> &'static str {
        match self {
            Policy::Tideway => "tideway",
            Policy::RoundRobin => "envoy ROUND_ROBIN",
            Policy::LeastRequest => "envoy LEAST_REQUEST",
        }
    }

    /// A name for ids and file names.
    pub fn id(self) -> &'static str {
        match self {
            Policy::Tideway => "tideway",
            Policy::RoundRobin => "round-robin",
            Policy::LeastRequest => "least-request",
        }
    }

    fn istio_simple(self) -> Option<&'static str> {
        match self {
            Policy::Tideway => None,
            Policy::RoundRobin => Some("ROUND_ROBIN"),
            Policy::LeastRequest => Some("LEAST_REQUEST"),
        }
    }
}

/// What happens at the start of a phase. Clusters a phase does not name
/// are healthy and undrained.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Everything healthy.
    Steady,
    /// Cluster `cluster` serves `factor` times slower (and so also loses
    /// capacity: its slots are held longer).
    Slow { cluster: usize, factor: u32 },
    /// Cluster `cluster` answers 503.
    Fail503 { cluster: usize },
    /// Cluster `cluster` resets every connection.
    Reset { cluster: usize },
    /// An operator runs `tideway drain` on cluster `cluster`.
    Drain { cluster: usize },
    /// `tideway undrain`, everything healthy again.
    Recover,
}

impl Action {
    /// The cluster traffic must leave, if the phase has one.
    pub fn avoided_cluster(&self) -> Option<usize> {
        match self {
            Action::Fail503 { cluster } | Action::Reset { cluster } | Action::Drain { cluster } => {
                Some(*cluster)
            }
            _ => None,
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, Action::Fail503 { .. } | Action::Reset { .. })
    }
}

/// One step of the scenario.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub action: Action,
    pub duration: Duration,
}

/// Everything a demo run needs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub clusters: Vec<ClusterSpec>,
    /// The scenario each policy runs.
    pub phases: Vec<Phase>,
    /// The Envoy-policy runs' scenario when different (a test's shortcut);
    /// `None`: the same as Tideway's.
    pub baseline_phases: Option<Vec<Phase>>,
    pub policies: Vec<Policy>,
    pub load: LoadSpec,
    /// Load before the first phase, not recorded (connections, the
    /// filter's first latency samples).
    pub warmup: Duration,
    /// Envoy worker threads (Istio's sidecar default is 2).
    pub envoy_concurrency: u32,
    /// The `tideway` CLI.
    pub tideway_cli: PathBuf,
    /// The filter module to publish.
    pub filter_wasm: PathBuf,
    /// Rendered files, the pulled module and the report go here.
    pub work_dir: PathBuf,
    pub policy_file: PathBuf,
    pub fleet_file: PathBuf,
    /// Print progress to stderr.
    pub progress: bool,
}

impl DemoConfig {
    /// The demo's clusters: hangzhou near and cheap with the most
    /// capacity, shanghai a little farther, beijing far and dear.
    pub fn default_clusters() -> Vec<ClusterSpec> {
        let c = |name: &str, ms: u64, capacity: usize, cost: f64| ClusterSpec {
            name: name.to_string(),
            latency: Duration::from_millis(ms),
            capacity,
            cost,
        };
        vec![
            c("hangzhou", 2, 24, 1.0),
            c("shanghai", 4, 16, 1.5),
            c("beijing", 8, 16, 2.0),
        ]
    }

    /// The scripted scenario with each phase lasting `unit` (the failure
    /// phases twice that: their success rate needs requests to mean much).
    pub fn scenario(unit: Duration, drain: bool) -> Vec<Phase> {
        let p = |name: &str, action: Action, d: Duration| Phase {
            name: name.to_string(),
            action,
            duration: d,
        };
        let mut phases = vec![
            p("steady", Action::Steady, unit),
            p(
                "hangzhou 10x slower",
                Action::Slow {
                    cluster: 0,
                    factor: 10,
                },
                unit,
            ),
            p("shanghai 503s", Action::Fail503 { cluster: 1 }, unit),
            p("shanghai resets", Action::Reset { cluster: 1 }, unit),
        ];
        if drain {
            phases.push(p("drain hangzhou", Action::Drain { cluster: 0 }, unit));
        }
        phases.push(p("recovery", Action::Recover, unit));
        phases
    }

    /// Paths inside the workspace (the policy, the fleet, the built
    /// filter) and the `tideway` CLI from `TIDEWAY_CLI` or built now.
    pub fn new(work_dir: PathBuf, phases: Vec<Phase>, load: LoadSpec) -> Result<Self> {
        let root = crate::env::workspace_root();
        Ok(Self {
            clusters: Self::default_clusters(),
            phases,
            baseline_phases: None,
            policies: vec![Policy::Tideway, Policy::RoundRobin, Policy::LeastRequest],
            load,
            warmup: Duration::from_millis(1500),
            envoy_concurrency: 2,
            tideway_cli: crate::env::tideway_cli()?,
            filter_wasm: crate::env::filter_wasm(),
            work_dir,
            policy_file: root.join("host-tests/demo/trafficpolicy.yaml"),
            fleet_file: root.join("manifests/examples/fleet.yaml"),
            progress: true,
        })
    }
}

/// What one phase of one run was.
#[derive(Debug, Clone)]
pub struct PhaseWindow {
    pub name: String,
    pub action: Action,
    pub start_ms: u32,
    pub end_ms: u32,
}

/// One policy's run of the scenario.
#[derive(Debug, Clone)]
pub struct Run {
    pub policy: Policy,
    pub phases: Vec<PhaseWindow>,
    pub samples: Vec<Sample>,
}

/// How the filter got into Envoy: the proof the published artifact runs.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// `127.0.0.1:PORT/tideway/filter@sha256:…`, as pushed.
    pub reference: String,
    pub manifest_digest: String,
    /// The module `tideway image pull` wrote; Envoy loads this file.
    pub pulled_module: PathBuf,
    /// The rendered WasmPlugin's `url`.
    pub wasm_plugin_url: String,
}

/// The whole demo's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub clusters: Vec<ClusterSpec>,
    pub artifact: Artifact,
    pub runs: Vec<Run>,
    /// What the demo could not show, said plainly (e.g. the drain phase
    /// when the weights server is not there).
    pub gaps: Vec<String>,
    /// The fleet dashboard's URL (served while the demo ran).
    pub dashboard: Option<String>,
}

fn say(config: &DemoConfig, line: &str) {
    if config.progress {
        eprintln!("{line}");
    }
}

/// Run `tideway ARGS…`; its stdout, or an error with its stderr.
pub fn tideway(cli: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(cli)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("could not run {}", cli.display()))?;
    if !out.status.success() {
        bail!(
            "`tideway {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Build, push and pull the filter image; render the policy against it.
fn publish(
    config: &DemoConfig,
    registry: &registry::Registry,
    fleet_file: &Path,
) -> Result<(Artifact, Vec<Value>)> {
    let cli = &config.tideway_cli;
    let repository = format!("{}/tideway/filter", registry.addr);
    let wasm = config.filter_wasm.display().to_string();
    let pushed = tideway(
        cli,
        &[
            "image",
            "push",
            &wasm,
            &format!("{repository}:demo"),
            "--plain-http",
        ],
    )?;
    let digest = pushed
        .lines()
        .find_map(|l| l.trim().strip_prefix("manifest digest: "))
        .map(str::trim)
        .ok_or_else(|| anyhow!("`tideway image push` printed no manifest digest:\n{pushed}"))?
        .to_string();
    say(
        config,
        &format!("  tideway image push  → {repository}:demo, manifest {digest}"),
    );
    let reference = format!("{repository}@{digest}");
    let pulled_module = config.work_dir.join("pulled/plugin.wasm");
    std::fs::create_dir_all(config.work_dir.join("pulled"))?;
    tideway(
        cli,
        &[
            "image",
            "pull",
            &reference,
            "-o",
            &pulled_module.display().to_string(),
            "--plain-http",
        ],
    )?;
    say(
        config,
        &format!(
            "  tideway image pull  ← {reference} → {}",
            pulled_module.display()
        ),
    );
    let rendered_dir = config.work_dir.join("rendered");
    let _ = std::fs::remove_dir_all(&rendered_dir);
    tideway(
        cli,
        &[
            "render",
            "-f",
            &config.policy_file.display().to_string(),
            "--fleet",
            &fleet_file.display().to_string(),
            "--image",
            &reference,
            "-o",
            &rendered_dir.display().to_string(),
        ],
    )?;
    let member_dir = rendered_dir.join(LOCAL_MEMBER);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&member_dir)
        .with_context(|| format!("tideway render wrote no {}", member_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let object: Value = yaml_serde::from_str(&text)
            .with_context(|| format!("{} is not YAML", file.display()))?;
        objects.push(object);
    }
    let plugin = objects
        .iter()
        .find(|o| o["kind"] == "WasmPlugin")
        .ok_or_else(|| anyhow!("no WasmPlugin under {}", member_dir.display()))?;
    let url = plugin["spec"]["url"].as_str().unwrap_or("").to_string();
    if url != format!("oci://{reference}") {
        bail!("the rendered WasmPlugin's url is {url:?}, not the pushed oci://{reference}");
    }
    if plugin["spec"]["sha256"].as_str() != digest.strip_prefix("sha256:") {
        bail!(
            "the rendered WasmPlugin's sha256 {:?} is not the manifest digest {digest}",
            plugin["spec"]["sha256"]
        );
    }
    say(
        config,
        &format!(
            "  tideway render      → {} ({} objects for {LOCAL_MEMBER}; WasmPlugin url {url})",
            member_dir.display(),
            objects.len()
        ),
    );
    Ok((
        Artifact {
            reference,
            manifest_digest: digest,
            pulled_module,
            wasm_plugin_url: url,
        },
        objects,
    ))
}

/// The objects for `policy`: as rendered for Tideway; for an Envoy policy
/// the WasmPlugin left out and the DestinationRule's `loadBalancer` set to
/// it (its outlier detection kept).
fn objects_for(objects: &[Value], policy: Policy) -> Vec<Value> {
    let Some(simple) = policy.istio_simple() else {
        return objects.to_vec();
    };
    objects
        .iter()
        .filter(|o| o["kind"] != "WasmPlugin")
        .cloned()
        .map(|mut o| {
            if o["kind"] == "DestinationRule" {
                o["spec"]["trafficPolicy"]["loadBalancer"] = json!({"simple": simple});
            }
            o
        })
        .collect()
}

struct Stack<'a> {
    config: &'a DemoConfig,
    clusters: Vec<Cluster>,
    objects: Vec<Value>,
    artifact: Artifact,
    weights: Option<weights::WeightsControl>,
}

impl Stack<'_> {
    fn services(&self) -> Vec<Service> {
        vec![Service {
            hostname: SERVICE_HOST.to_string(),
            namespace: SERVICE_NAMESPACE.to_string(),
            ports: vec![SERVICE_PORT],
            endpoints: self
                .clusters
                .iter()
                .map(|c| Endpoint {
                    address: "127.0.0.1".to_string(),
                    port: c.port,
                    labels: BTreeMap::from([
                        ("app".to_string(), "api".to_string()),
                        (CLUSTER_LABEL.to_string(), c.member()),
                    ]),
                })
                .collect(),
        }]
    }

    fn start_envoy(&self, policy: Policy) -> Result<Envoy> {
        let objects = objects_for(&self.objects, policy);
        let proxy = Proxy {
            namespace: SERVICE_NAMESPACE.to_string(),
            labels: BTreeMap::from([("app".to_string(), "client".to_string())]),
            cluster_domain: "cluster.local".to_string(),
        };
        let mut translation = istio_routes::translate(
            &objects,
            &self.services(),
            &proxy,
            Direction::Outbound,
            SERVICE_PORT,
            &self.artifact.pulled_module,
        )?;
        let filters = translation.wasm_filters();
        if filters != usize::from(policy == Policy::Tideway) {
            bail!(
                "{}: {filters} wasm filter(s) in the translated chain",
                policy.label()
            );
        }
        // Observability only: which pod served (or was tried for) each
        // response, so the load generator can attribute failures too.
        translation.route_config["response_headers_to_add"] = json!([{
            "header": {"key": "x-upstream-host", "value": "%UPSTREAM_HOST%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
        }]);
        if let (Policy::Tideway, Some(w)) = (policy, &self.weights) {
            translation.clusters.push(w.envoy_cluster(&objects)?);
        }
        let region_zone = ("east-china", "hangzhou-a");
        Envoy::start_with(
            |dir| translation.bootstrap(LOCAL_MEMBER, region_zone, dir, false),
            self.config.envoy_concurrency,
        )
    }

    fn apply(&self, action: &Action) -> Result<()> {
        for (i, c) in self.clusters.iter().enumerate() {
            match action {
                Action::Slow { cluster, factor } if *cluster == i => {
                    c.set_fault(Fault::None);
                    c.set_latency(c.spec.latency * *factor);
                }
                Action::Fail503 { cluster } if *cluster == i => {
                    c.set_latency(c.spec.latency);
                    c.set_fault(Fault::Status503);
                }
                Action::Reset { cluster } if *cluster == i => {
                    c.set_latency(c.spec.latency);
                    c.set_fault(Fault::Reset);
                }
                _ => c.heal(),
            }
        }
        if let Some(w) = &self.weights {
            match action {
                Action::Drain { cluster } => w.drain(&self.clusters[*cluster].member())?,
                _ => w.undrain_all()?,
            }
        }
        Ok(())
    }

    fn run(&self, policy: Policy, phases: &[Phase]) -> Result<Run> {
        self.apply(&Action::Steady)?;
        let envoy = self.start_envoy(policy)?;
        // The dashboard reads the Tideway run's sidecar while it runs.
        let admin_file = match (policy, &self.weights) {
            (Policy::Tideway, Some(w)) => {
                std::fs::write(&w.admin_file, format!("127.0.0.1:{}", envoy.admin_port))?;
                Some(w.admin_file.clone())
            }
            _ => None,
        };
        let _forget = RemoveOnDrop(admin_file);
        let target = Target {
            url: envoy.url("/"),
            host: SERVICE_HOST.to_string(),
            cluster_addresses: self
                .clusters
                .iter()
                .map(|c| format!("127.0.0.1:{}", c.port))
                .collect(),
        };
        let warm = Load::start(&self.config.load, &target, Instant::now());
        std::thread::sleep(self.config.warmup);
        let warmup_samples = warm.stop();
        if warmup_samples.iter().filter(|s| s.ok()).count() == 0 {
            bail!(
                "{}: no request succeeded during warm-up; Envoy's log:\n{}",
                policy.label(),
                envoy.log_tail(30)
            );
        }
        let start = Instant::now();
        let load = Load::start(&self.config.load, &target, start);
        let mut windows = Vec::new();
        let mut at = Duration::ZERO;
        for phase in phases {
            self.apply(&phase.action)?;
            let start_ms = at.as_millis() as u32;
            at += phase.duration;
            let wait = (start + at).saturating_duration_since(Instant::now());
            std::thread::sleep(wait);
            windows.push(PhaseWindow {
                name: phase.name.clone(),
                action: phase.action.clone(),
                start_ms,
                end_ms: at.as_millis() as u32,
            });
        }
        let samples = load.stop();
        self.apply(&Action::Steady)?;
        let run = Run {
            policy,
            phases: windows,
            samples,
        };
        if self.config.progress {
            for line in report::progress_lines(&run, &self.config.clusters) {
                eprintln!("{line}");
            }
        }
        drop(envoy);
        Ok(run)
    }
}

/// Runs the whole demo: start everything, publish, render, run every
/// policy through the scenario.
pub fn run(config: &DemoConfig) -> Result<Outcome> {
    std::fs::create_dir_all(&config.work_dir)?;
    say(config, "==> starting the fleet");
    let clusters: Vec<Cluster> = config
        .clusters
        .iter()
        .cloned()
        .map(Cluster::start)
        .collect::<Result<_>>()?;
    for c in &clusters {
        say(
            config,
            &format!(
                "  {:<14} 127.0.0.1:{:<5}  {:>2} ms per request, {:>2} slots, cost {}",
                c.member(),
                c.port,
                c.spec.latency.as_millis(),
                c.spec.capacity,
                c.spec.cost
            ),
        );
    }
    let registry = registry::Registry::start()?;
    say(
        config,
        &format!("  registry        {} (docker-registry)", registry.addr),
    );
    let mut gaps = Vec::new();
    let weights = match weights::WeightsControl::start(config) {
        Ok(w) => {
            say(
                config,
                &format!("  weights API     {} (tideway serve-weights)", w.url),
            );
            say(
                config,
                &format!(
                    "  dashboard       {} (live while the demo runs)",
                    w.dashboard_url()
                ),
            );
            Some(w)
        }
        Err(gap) => {
            gaps.push(gap);
            None
        }
    };
    say(config, "==> publishing the filter and rendering the policy");
    let fleet_file = weights
        .as_ref()
        .map_or(config.fleet_file.clone(), |w| w.fleet_file.clone());
    let (artifact, objects) = publish(config, &registry, &fleet_file)?;
    let manifest_gets = registry.count_requests("GET", &artifact.manifest_digest);
    if manifest_gets == 0 {
        bail!(
            "the registry logged no GET of manifest {}: the module was not pulled from it",
            artifact.manifest_digest
        );
    }
    let stack = Stack {
        config,
        clusters,
        objects,
        artifact: artifact.clone(),
        weights,
    };
    let drain_wired = stack.weights.is_some();
    let keep = |phases: &[Phase]| -> Vec<Phase> {
        phases
            .iter()
            .filter(|p| drain_wired || !matches!(p.action, Action::Drain { .. }))
            .cloned()
            .collect()
    };
    let mut runs = Vec::new();
    for policy in &config.policies {
        let phases = match (policy, &config.baseline_phases) {
            (Policy::Tideway, _) | (_, None) => keep(&config.phases),
            (_, Some(b)) => keep(b),
        };
        let total: Duration = phases.iter().map(|p| p.duration).sum();
        say(
            config,
            &format!(
                "==> {}: {} phases, {:.0} s",
                policy.label(),
                phases.len(),
                total.as_secs_f64()
            ),
        );
        runs.push(stack.run(*policy, &phases)?);
    }
    Ok(Outcome {
        clusters: config.clusters.clone(),
        artifact,
        runs,
        gaps,
        dashboard: stack.weights.as_ref().map(|w| w.dashboard_url()),
    })
}

/// Removes a file when dropped (the dashboard's admin address once its
/// Envoy is gone: the page then shows the proxy down, not stale numbers).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
