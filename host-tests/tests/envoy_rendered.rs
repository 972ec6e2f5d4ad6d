//! What `tideway render` produces, run in real Envoy 1.40 the way Istio
//! would run it: every example policy in manifests/examples is compiled for
//! every member cluster, its VirtualService, DestinationRule and WasmPlugin
//! translated as istiod translates them (host_tests::istio_routes), and the
//! built filter, with the rendered `pluginConfig` of that member, runs in
//! front of loopback backends standing for the pods of each member cluster
//! (labelled `topology.istio.io/cluster` as Istio labels endpoints).
//!
//! Checked: every request is served by a pod of the cluster the filter
//! named in the routing header (steering works end to end through the
//! rendered routes and subsets), under every host name a caller uses; a
//! request of a canary example without the canary's match lands on the
//! stable version; and with the filter removed, the default route serves
//! every request.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tideway_host_tests::backend::{Backend, RecordedHeaders};
use tideway_host_tests::envoy::{Client, Envoy};
use tideway_host_tests::istio_routes::{self, Direction, Endpoint, Proxy, Service};

const CLUSTER_LABEL: &str = "topology.istio.io/cluster";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

/// Every example policy with the fleet beside it.
fn examples() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(examples_dir())
        .expect("manifests/examples")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("policy.yaml").exists())
        .map(|p| {
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string(),
                p.join("policy.yaml"),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 6, "the six examples: {out:?}");
    out
}

struct Rendered {
    /// member → its objects.
    members: Vec<(String, Vec<Value>)>,
    /// member → (region, zone).
    localities: BTreeMap<String, (String, String)>,
    port: u16,
}

fn render(policy_path: &Path) -> Rendered {
    let policy_text = std::fs::read_to_string(policy_path).expect("policy");
    let fleet_text = std::fs::read_to_string(examples_dir().join("fleet.yaml")).expect("fleet");
    let policy = tideway_controller::load::policy_from_str(&policy_text, "policy")
        .unwrap_or_else(|e| panic!("{e}"));
    let fleet = tideway_controller::load::fleet_from_str(&fleet_text, "fleet")
        .unwrap_or_else(|e| panic!("{e}"));
    let compiled =
        tideway_controller::compile(&policy, &fleet, None).unwrap_or_else(|e| panic!("{e}"));
    let fleet_value = serde_json::to_value(&fleet).expect("fleet json");
    let localities = fleet_value["spec"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                (
                    m["region"].as_str().unwrap_or("").to_string(),
                    m["zone"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect();
    let policy_value = serde_json::to_value(&policy).expect("policy json");
    let port = policy_value["spec"]["service"]["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("spec.service.port");
    Rendered {
        members: compiled.members(),
        localities,
        port,
    }
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The pods: for each member cluster, one backend per distinct set of
/// non-cluster labels the subsets select on (e.g. version v1 and v2).
struct Pods {
    backends: Vec<(Backend, BTreeMap<String, String>)>,
}

impl Pods {
    fn start(destination_rule: &Value, clusters: &[String]) -> Pods {
        let mut extras: BTreeSet<BTreeMap<String, String>> = BTreeSet::new();
        for subset in destination_rule["spec"]["subsets"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let labels: BTreeMap<String, String> = subset["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.as_str() != CLUSTER_LABEL)
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            extras.insert(labels);
        }
        if extras.is_empty() {
            extras.insert(BTreeMap::new());
        }
        let mut backends = Vec::new();
        for cluster in clusters {
            for extra in &extras {
                let mut labels = extra.clone();
                labels.insert(CLUSTER_LABEL.to_string(), cluster.clone());
                let name = labels.values().cloned().collect::<Vec<_>>().join("/");
                backends.push((Backend::start(&name, true).expect("backend"), labels));
            }
        }
        Pods { backends }
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.backends
            .iter()
            .map(|(b, labels)| Endpoint {
                address: "127.0.0.1".into(),
                port: b.port,
                labels: labels.clone(),
            })
            .collect()
    }

    fn labels_of(&self, backend_name: &str) -> &BTreeMap<String, String> {
        &self
            .backends
            .iter()
            .find(|(b, _)| b.name() == backend_name)
            .unwrap_or_else(|| panic!("no backend {backend_name}"))
            .1
    }

    /// The request a backend just served (its recorded headers).
    fn last_request(&self, backend_name: &str) -> RecordedHeaders {
        self.backends
            .iter()
            .find(|(b, _)| b.name() == backend_name)
            .and_then(|(b, _)| b.take_recorded().pop())
            .unwrap_or_default()
    }
}

/// Hop headers a client sends: the routes must overwrite or remove them.
const SPOOFED_HOP_HEADERS: &[(&str, &str)] = &[
    ("x-cluster-source", "spoofed"),
    ("x-cluster-target", "spoofed"),
    ("x-service-name", "spoofed"),
];

/// `x-cluster-source`, `x-cluster-target`, `x-service-name` as the backend
/// received them.
fn hop_headers(recorded: &RecordedHeaders) -> [Option<&str>; 3] {
    ["x-cluster-source", "x-cluster-target", "x-service-name"].map(|n| header(recorded, n))
}

fn header<'a>(recorded: &'a RecordedHeaders, name: &str) -> Option<&'a str> {
    recorded
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The labels of subset `name` of the DestinationRule.
fn subset_labels(destination_rule: &Value, name: &str) -> Option<BTreeMap<String, String>> {
    destination_rule["spec"]["subsets"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| {
            s["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
}

fn selects(subset: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    subset.iter().all(|(k, v)| pod.get(k) == Some(v))
}

/// One member's client proxy, for one of its WasmPlugins (one per caller
/// namespace / selector).
struct Caller {
    proxy: Proxy,
    plugin_name: String,
}

fn callers(objects: &[Value]) -> Vec<Caller> {
    of_kind(objects, "WasmPlugin")
        .into_iter()
        .map(|p| Caller {
            proxy: Proxy {
                namespace: p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                labels: p["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect(),
                cluster_domain: "cluster.local".into(),
            },
            plugin_name: format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap_or(""),
                p["metadata"]["name"].as_str().unwrap_or("")
            ),
        })
        .collect()
}

#[test]
fn rendered_routes_steer_every_request_to_the_cluster_the_filter_names() {
    let wasm = tideway_host_tests::env::filter_wasm();
    let client = Client::new();
    let mut runs = 0;
    let only = std::env::var("TIDEWAY_EXAMPLE").ok();
    for (example, policy_path) in examples() {
        if only.as_ref().is_some_and(|o| *o != example) {
            continue;
        }
        let rendered = render(&policy_path);
        let clusters: Vec<String> = rendered.localities.keys().cloned().collect();
        for (member, objects) in &rendered.members {
            let dr = *of_kind(objects, "DestinationRule")
                .first()
                .expect("a DestinationRule");
            let host = dr["spec"]["host"].as_str().expect("host").to_string();
            let (name, namespace) = {
                let mut parts = host.split('.');
                (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                )
            };
            let pods = Pods::start(dr, &clusters);
            let services = vec![Service {
                hostname: host.clone(),
                namespace: namespace.clone(),
                ports: vec![rendered.port],
                endpoints: pods.endpoints(),
            }];
            let stable = subset_labels(dr, "stable");
            let fault_abort = fault_abort_status(objects);
            for caller in callers(objects) {
                let translation = istio_routes::translate(
                    objects,
                    &services,
                    &caller.proxy,
                    Direction::Outbound,
                    rendered.port,
                    &wasm,
                )
                .unwrap_or_else(|e| panic!("{example}/{member}: {e}"));
                assert_eq!(
                    translation.wasm_filters(),
                    1,
                    "{example}/{member}: {} must apply to its caller",
                    caller.plugin_name
                );
                let inbound = istio_routes::translate(
                    objects,
                    &services,
                    &caller.proxy,
                    Direction::Inbound,
                    rendered.port,
                    &wasm,
                )
                .expect("inbound");
                assert_eq!(
                    inbound.wasm_filters(),
                    0,
                    "{example}/{member}: the filter must not run inbound"
                );
                let (region, zone) = rendered.localities.get(member).cloned().unwrap_or_default();
                // As Istio's injector sets it for the sidecar: the rendered
                // routes read `x-cluster-source` from it.
                let sidecar_env = [("ISTIO_META_CLUSTER_ID".to_string(), member.clone())];
                let envoy = Envoy::start_with_env(
                    |dir| translation.bootstrap(member, (&region, &zone), dir, false),
                    1,
                    &sidecar_env,
                )
                .unwrap_or_else(|e| panic!("{example}/{member}: {e}"));
                let mut hosts = vec![
                    host.clone(),
                    format!("{name}.{namespace}"),
                    format!("{name}.{namespace}.svc"),
                    format!("{host}:{}", rendered.port),
                ];
                if caller.proxy.namespace == namespace {
                    hosts.push(name.clone());
                }
                let mut served_clusters = BTreeSet::new();
                for i in 0..40 {
                    let authority = &hosts[i % hosts.len()];
                    // A client's own hop headers must not survive the hop.
                    let reply = client
                        .get(&envoy.url("/"), authority, SPOOFED_HOP_HEADERS)
                        .unwrap_or_else(|e| {
                            panic!("{example}/{member}: {e}\n{}", envoy.log_tail(30))
                        });
                    if is_injected_abort(fault_abort, reply.status, &reply.body) {
                        continue;
                    }
                    assert_eq!(
                        reply.status,
                        200,
                        "{example}/{member} host {authority}: {}\n{}",
                        reply.body,
                        envoy.log_tail(30)
                    );
                    let backend = reply.header("x-backend").expect("x-backend").to_string();
                    let request = pods.last_request(&backend);
                    let pod = pods.labels_of(&backend);
                    let chosen = header(&request, "x-tideway-destination")
                        .unwrap_or_else(|| panic!("{example}/{member} host {authority}: the filter did not steer: {request:?}"));
                    let subset = subset_labels(dr, chosen).unwrap_or_else(|| {
                        panic!(
                            "{example}/{member}: the filter named {chosen:?}, which is no subset"
                        )
                    });
                    assert_eq!(
                        pod.get(CLUSTER_LABEL), subset.get(CLUSTER_LABEL),
                        "{example}/{member} host {authority}: the filter chose {chosen} but a pod of {:?} served it",
                        pod.get(CLUSTER_LABEL)
                    );
                    // Without the canary's match, the stable version serves.
                    if let Some(stable) = &stable {
                        assert!(selects(stable, pod), "{example}/{member}: a plain request reached {pod:?}, not the stable version {stable:?}");
                    }
                    assert_eq!(
                        hop_headers(&request),
                        [
                            Some(member.as_str()),
                            pod.get(CLUSTER_LABEL).map(String::as_str),
                            Some(name.as_str())
                        ],
                        "{example}/{member} host {authority}: x-cluster-source, x-cluster-target, x-service-name as the routes set them"
                    );
                    served_clusters.insert(pod.get(CLUSTER_LABEL).cloned().unwrap_or_default());
                }
                assert!(!served_clusters.is_empty());
                drop(envoy);

                // The filter removed: the VirtualService's default route
                // serves every request, unsteered.
                let bare = Envoy::start_with_env(
                    |dir| translation.bootstrap(member, (&region, &zone), dir, true),
                    1,
                    &sidecar_env,
                )
                .unwrap_or_else(|e| panic!("{example}/{member}: {e}"));
                for authority in &hosts {
                    let reply = client
                        .get(&bare.url("/"), authority, SPOOFED_HOP_HEADERS)
                        .expect("request");
                    if is_injected_abort(fault_abort, reply.status, &reply.body) {
                        continue;
                    }
                    assert_eq!(
                        reply.status, 200,
                        "{example}/{member} without the filter, host {authority}: {}",
                        reply.body
                    );
                    let backend = reply.header("x-backend").expect("x-backend").to_string();
                    let request = pods.last_request(&backend);
                    assert_eq!(
                        header(&request, "x-tideway-destination"),
                        None,
                        "{request:?}"
                    );
                    assert_eq!(
                        hop_headers(&request),
                        [Some(member.as_str()), None, Some(name.as_str())],
                        "{example}/{member} without the filter: no target is known, and a client's is removed"
                    );
                    if let Some(stable) = &stable {
                        assert!(
                            selects(stable, pods.labels_of(&backend)),
                            "{example}/{member}: the default route left the stable version"
                        );
                    }
                }
                runs += 1;
            }
        }
    }
    assert!(only.is_some() || runs >= 18, "{runs} member/caller runs");
}

/// The HTTP status of the policy's fault-injected abort, if its
/// VirtualService injects one (the resilience example aborts 0.1% of
/// requests with a 503).
fn fault_abort_status(objects: &[Value]) -> Option<u16> {
    of_kind(objects, "VirtualService").iter().find_map(|vs| {
        vs["spec"]["http"].as_array()?.iter().find_map(|route| {
            let status = route["fault"]["abort"]["httpStatus"].as_u64()?;
            u16::try_from(status).ok()
        })
    })
}

/// A reply that is the fault filter's own abort, as the policy configures
/// it: the intended behaviour, not a routing failure. Any other non-200
/// still fails the test.
fn is_injected_abort(configured: Option<u16>, status: u16, body: &str) -> bool {
    configured == Some(status) && body.contains("fault filter abort")
}
