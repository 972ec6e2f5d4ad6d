//! `tideway status`: one read-only look at a policy across its fleet, what
//! an operator would otherwise piece together from health-check and
//! troubleshooting scripts run against each member.
//!
//! Per member: is its API server reachable (and which Kubernetes), are
//! the Istio kinds the render needs served (and which Istio release the
//! CRDs say they are), is every object of the render there at the
//! expected revision (with the WasmPlugins' image and digest), has anyone
//! else changed them since the last apply ([`crate::apply::drift`]), what the
//! controller last said about the member (the hub's TrafficPolicy status),
//! how many ready endpoints the policy's service has there, and which
//! weights the member's filter configuration expects (static weights,
//! schema version, the weights API it polls). Every finding that means
//! "this member does not serve the policy as intended" is a problem; any
//! problem makes the whole report unhealthy (the CLI's exit status).
//!
//! Nothing here writes: it reads with the same identities `tideway apply`
//! uses (the member RBAC grants `get` on the Istio CRDs for the release
//! label), and never puts a credential in the report.

mod source;
mod table;
pub use source::{report, PolicySource};
pub use table::table;

use crate::api::{Condition, TrafficPolicy, TrafficPolicyStatus, DEGRADED, READY};
use crate::apply::drift::{self, Drift};
use crate::apply::STATUS_FIELD_MANAGER;
use crate::apply::{PolicyRef, FIELD_MANAGER, REVISION_ANNOTATION};
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::Client;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Labels an Istio install puts its release in (Helm's `base` chart,
/// istioctl's operator), in the order they are believed.
pub const ISTIO_VERSION_LABELS: &[&str] = &[
    "app.kubernetes.io/version",
    "operator.istio.io/version",
    "helm.sh/chart",
];

/// Everything `tideway status` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub policy: PolicyId,
    /// The revision every member should have: the controller's
    /// (`status.revision`) when the hub has the policy, else the render's.
    pub expected_revision: String,
    /// `controller` or `render`: where [`Self::expected_revision`] is from.
    pub revision_source: &'static str,
    /// The hub's view, when the policy is in the hub.
    pub controller: Option<ControllerView>,
    pub members: Vec<MemberReport>,
    /// Every problem, member problems prefixed with the member's name.
    pub problems: Vec<String>,
    /// No problems at all.
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyId {
    pub name: String,
    pub namespace: String,
    pub fleet: String,
    /// The service whose endpoints are counted (`namespace/name`).
    pub service: String,
}

/// What the controller (`tideway run`) last wrote about the policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerView {
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub revision: Option<String>,
    pub conditions: Vec<Condition>,
    /// Destinations the controller took out for lack of ready endpoints.
    pub drained: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReport {
    pub name: String,
    pub wave: u32,
    pub api: ApiView,
    pub istio: IstioView,
    /// The render's objects for this member, in apply order.
    pub objects: Vec<ObjectView>,
    /// The revision every object of the member carries, when they agree.
    pub revision: Option<String>,
    /// The controller's conditions for this member (hub status).
    pub conditions: Vec<Condition>,
    /// Ready endpoints of the policy's service here (when the member is a
    /// destination).
    pub endpoints: Option<EndpointsView>,
    /// What the member's filter configuration expects (its first WasmPlugin).
    pub weights: Option<WeightsView>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiView {
    pub reachable: bool,
    /// The API server's `gitVersion` (`v1.20.2`).
    pub version: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IstioView {
    /// The release the Istio CRDs are labelled with, when they are (and
    /// readable).
    pub version: Option<String>,
    /// Each kind the render needs: served or not.
    pub kinds: Vec<KindView>,
    /// The versions the member serves per Istio API group (e.g.
    /// `networking.istio.io: [v1, v1beta1, v1alpha3]`).
    pub served_versions: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindView {
    pub kind: String,
    pub api_version: String,
    pub served: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectView {
    /// `Kind namespace/name`.
    pub object: String,
    pub present: bool,
    /// Its `traffic.tideway.dev/revision` annotation.
    pub revision: Option<String>,
    /// At the expected revision.
    pub current: bool,
    /// WasmPlugins: the image (`oci://…@sha256:…`) and its digest.
    pub image: Option<String>,
    pub sha256: Option<String>,
    /// Changed by another manager since the last apply.
    pub drift: Option<Drift>,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsView {
    /// Ready addresses; `None` when the member has no Endpoints object for
    /// the service (or it could not be read: see `error`).
    pub ready: Option<usize>,
    pub not_ready: Option<usize>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightsView {
    /// The plugin configuration's `schemaVersion`.
    pub schema_version: u32,
    /// The weights API the filter polls (`weightsSource.authority`), or
    /// `None`: the static weights are all it has.
    pub source: Option<String>,
    /// The static weight per destination, in the policy's order.
    pub destinations: Vec<DestinationWeight>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationWeight {
    pub name: String,
    pub weight: f64,
}

/// A member to look at, with a client for it or why there is none.
pub struct MemberTarget {
    pub name: String,
    pub wave: u32,
    pub client: Result<Client, String>,
}

/// What [`gather`] needs: the policy and what the render makes of it for
/// its fleet, the hub's status of the policy (when the hub has it), and a
/// client per member.
pub struct Input {
    pub policy: TrafficPolicy,
    /// Compiled with the controller's drains applied (the destinations in
    /// the hub status's `drained` taken out), so the objects compare with
    /// what the controller applied.
    pub compiled: crate::Compiled,
    /// The policy as the hub has it (generation and status), if it does.
    pub hub_policy: Option<TrafficPolicy>,
    pub members: Vec<MemberTarget>,
}

/// The policy with the destinations the controller drained taken out, as
/// the controller compiled it (see [`crate::drain::drain`]).
pub fn with_drains(policy: &TrafficPolicy, status: Option<&TrafficPolicyStatus>) -> TrafficPolicy {
    let drained: BTreeSet<&str> = status
        .map(|s| s.drained.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if drained.is_empty() {
        return policy.clone();
    }
    let zero_at: BTreeSet<String> = policy
        .spec
        .destinations
        .iter()
        .filter(|d| drained.contains(d.subset()))
        .map(|d| d.cluster.clone())
        .collect();
    crate::drain::drain(policy, |member| zero_at.contains(member).then_some(0)).0
}

fn text_of(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => tideway_oci::error_chain(other),
    }
}

fn object_name(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

fn is_istio_group(group: &str) -> bool {
    group.ends_with(".istio.io")
}

/// The release in an Istio CRD's labels (`1.30.3`; a chart label
/// `base-1.30.3` gives its version part).
pub fn istio_release(labels: &BTreeMap<String, String>) -> Option<String> {
    ISTIO_VERSION_LABELS.iter().find_map(|key| {
        let value = labels.get(*key)?;
        let version = value.rsplit_once('-').map_or(value.as_str(), |(_, v)| v);
        (!version.is_empty()).then(|| version.to_string())
    })
}

/// Look at every member (concurrently) and put the report together.
pub async fn gather(input: Input) -> StatusReport {
    let policy_ref = PolicyRef::of(&input.policy);
    let hub_status = input
        .hub_policy
        .as_ref()
        .and_then(|p| p.status.clone())
        .filter(|s| s.revision.is_some() || !s.conditions.is_empty());
    let render_revision = crate::apply::revision(&input.compiled);
    let (expected_revision, revision_source) =
        match hub_status.as_ref().and_then(|s| s.revision.clone()) {
            Some(r) => (r, "controller"),
            None => (render_revision, "render"),
        };
    let service_namespace = input
        .policy
        .spec
        .service
        .namespace
        .clone()
        .unwrap_or_else(|| policy_ref.namespace.clone());
    let service = input.policy.spec.service.name.clone();
    let destinations: BTreeSet<String> = input
        .policy
        .spec
        .destinations
        .iter()
        .map(|d| d.cluster.clone())
        .collect();
    let looks = input.members.iter().map(|member| {
        let objects = input.compiled.member(&member.name);
        let conditions = hub_status
            .as_ref()
            .and_then(|s| s.members.iter().find(|m| m.name == member.name))
            .map(|m| m.conditions.clone())
            .unwrap_or_default();
        let service_at = destinations
            .contains(&member.name)
            .then(|| (service_namespace.clone(), service.clone()));
        look_at_member(member, objects, &expected_revision, conditions, service_at)
    });
    let members = futures::future::join_all(looks).await;

    let mut problems = Vec::new();
    let controller = input.hub_policy.as_ref().map(|p| {
        let status = p.status.clone().unwrap_or_default();
        ControllerView {
            generation: p.metadata.generation,
            observed_generation: status.observed_generation,
            revision: status.revision.clone(),
            conditions: status.conditions.clone(),
            drained: status.drained.clone(),
        }
    });
    if let Some(c) = &controller {
        if c.conditions.is_empty() {
            problems.push(
                "controller: the hub's TrafficPolicy has no status (is `tideway run` running?)"
                    .to_string(),
            );
        } else {
            if c.observed_generation != c.generation {
                problems.push(format!(
                    "controller: has not caught up with the policy (observed generation {}, policy at {})",
                    c.observed_generation.map_or("none".into(), |g| g.to_string()),
                    c.generation.map_or("none".into(), |g| g.to_string())
                ));
            }
            problems.extend(condition_problems("controller", &c.conditions));
        }
    }
    for m in &members {
        problems.extend(m.problems.iter().map(|p| format!("{}: {p}", m.name)));
    }
    StatusReport {
        policy: PolicyId {
            name: policy_ref.name,
            namespace: policy_ref.namespace,
            fleet: input.policy.spec.fleet.clone(),
            service: format!("{service_namespace}/{service}"),
        },
        expected_revision,
        revision_source,
        controller,
        healthy: problems.is_empty(),
        problems,
        members,
    }
}

/// `Ready` not True, or `Degraded` True, as problems.
fn condition_problems(who: &str, conditions: &[Condition]) -> Vec<String> {
    let mut out = Vec::new();
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    if let Some(c) = find(DEGRADED).filter(|c| c.status == "True") {
        out.push(format!("{who}: Degraded ({}): {}", c.reason, c.message));
    } else if let Some(c) = find(READY).filter(|c| c.status != "True") {
        out.push(format!("{who}: not Ready ({}): {}", c.reason, c.message));
    }
    out
}

async fn look_at_member(
    member: &MemberTarget,
    objects: Vec<Value>,
    expected_revision: &str,
    conditions: Vec<Condition>,
    service: Option<(String, String)>,
) -> MemberReport {
    let mut report = MemberReport {
        name: member.name.clone(),
        wave: member.wave,
        api: ApiView::default(),
        istio: IstioView::default(),
        objects: Vec::new(),
        revision: None,
        problems: condition_problems("controller", &conditions),
        conditions,
        endpoints: None,
        weights: None,
    };
    let client = match &member.client {
        Ok(c) => c.clone(),
        Err(why) => {
            report.api.error = Some(why.clone());
            report.problems.insert(0, format!("API unreachable: {why}"));
            return report;
        }
    };
    match client.apiserver_version().await {
        Ok(info) => {
            report.api.reachable = true;
            report.api.version = Some(info.git_version);
        }
        Err(e) => {
            let why = text_of(&e);
            report.api.error = Some(why.clone());
            report.problems.insert(0, format!("API unreachable: {why}"));
            return report;
        }
    }

    // The kinds the render needs, each looked up once.
    let mut kinds: BTreeMap<(String, String), Option<(kube::api::ApiResource, Scope)>> =
        BTreeMap::new();
    for object in &objects {
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        if kinds.contains_key(&(api_version.clone(), kind.clone())) {
            continue;
        }
        let (group, version) = split_api_version(&api_version);
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let found = kube::discovery::pinned_kind(&client, &gvk)
            .await
            .ok()
            .map(|(r, caps)| (r, caps.scope));
        if found.is_none() {
            report.problems.push(format!(
                "{kind} ({api_version}) is not served: install its CRD (Istio's, for *.istio.io)"
            ));
        }
        report.istio.kinds.push(KindView {
            kind: kind.clone(),
            api_version: api_version.clone(),
            served: found.is_some(),
        });
        kinds.insert((api_version, kind), found);
    }
    let groups: BTreeSet<String> = report
        .istio
        .kinds
        .iter()
        .map(|k| split_api_version(&k.api_version).0.to_string())
        .filter(|g| is_istio_group(g))
        .collect();
    for group in &groups {
        if let Ok(g) = kube::discovery::group(&client, group).await {
            let versions = g.versions().map(str::to_string).collect();
            report.istio.served_versions.insert(group.clone(), versions);
        }
    }
    report.istio.version = istio_version(&client, &kinds).await;

    let mut revisions = BTreeSet::new();
    for object in &objects {
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let (view, live) = look_at_object(
            &client,
            object,
            kinds.get(&(api_version, kind)).cloned().flatten(),
            expected_revision,
        )
        .await;
        if let Some(r) = &view.revision {
            revisions.insert(r.clone());
        }
        if let Some(p) = object_problem(&view, expected_revision) {
            report.problems.push(p);
        }
        if report.weights.is_none() && object["kind"] == "WasmPlugin" {
            report.weights = live.as_ref().and_then(weights_of);
        }
        report.objects.push(view);
    }
    if revisions.len() == 1 && report.objects.iter().all(|o| o.present) {
        report.revision = revisions.into_iter().next();
    }

    if let Some((namespace, name)) = service {
        let view = endpoints(&client, &namespace, &name).await;
        if view.ready == Some(0) {
            report
                .problems
                .push(format!("no ready endpoints for {namespace}/{name}"));
        }
        report.endpoints = Some(view);
    }
    report
}

fn object_problem(view: &ObjectView, expected: &str) -> Option<String> {
    if let Some(e) = &view.error {
        return Some(format!("{}: {e}", view.object));
    }
    if !view.present {
        return Some(format!("{} is missing", view.object));
    }
    if !view.current {
        return Some(format!(
            "{} is at revision {}, expected {expected}",
            view.object,
            view.revision.as_deref().unwrap_or("(none)")
        ));
    }
    let drift = view.drift.as_ref().filter(|d| !d.is_empty())?;
    let who = if drift.managers.is_empty() {
        "changed (not by its managers)".to_string()
    } else {
        format!(
            "changed by {} since the last apply",
            drift
                .managers
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let fields = if drift.fields.is_empty() {
        String::new()
    } else {
        format!("; differs from the render at {}", drift.fields.join(", "))
    };
    Some(format!("{} {who}{fields}", view.object))
}

async fn look_at_object(
    client: &Client,
    object: &Value,
    resource: Option<(kube::api::ApiResource, Scope)>,
    expected_revision: &str,
) -> (ObjectView, Option<Value>) {
    let mut view = ObjectView {
        object: object_name(object),
        present: false,
        revision: None,
        current: false,
        image: None,
        sha256: None,
        drift: None,
        error: None,
    };
    let Some((resource, scope)) = resource else {
        // Its kind is not served: reported once, with the kind.
        return (view, None);
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match (scope, object["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    };
    let live = match api.get_opt(name).await {
        Ok(Some(live)) => live,
        Ok(None) => return (view, None),
        Err(e) => {
            view.error = Some(format!("reading it: {}", text_of(&e)));
            return (view, None);
        }
    };
    view.present = true;
    let live = serde_json::to_value(&live).unwrap_or(Value::Null);
    view.revision = live["metadata"]["annotations"][REVISION_ANNOTATION]
        .as_str()
        .map(str::to_string);
    view.current = view.revision.as_deref() == Some(expected_revision);
    if object["kind"] == "WasmPlugin" {
        view.image = live["spec"]["url"].as_str().map(str::to_string);
        view.sha256 = live["spec"]["sha256"].as_str().map(str::to_string);
    }
    let mut drift = drift::drift(object, &live, FIELD_MANAGER, &[STATUS_FIELD_MANAGER]);
    if !view.current {
        // Another revision's fields differ from this render by design: only
        // who else wrote it is drift then.
        drift.fields.clear();
    }
    view.drift = Some(drift);
    (view, Some(live))
}

/// The Istio release from the CRD of the first Istio kind that has it
/// labelled (`get` on the CRD by name; a 403 leaves it unknown).
async fn istio_version(
    client: &Client,
    kinds: &BTreeMap<(String, String), Option<(kube::api::ApiResource, Scope)>>,
) -> Option<String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (resource, _) in kinds.values().flatten() {
        if !is_istio_group(&resource.group) {
            continue;
        }
        let name = format!("{}.{}", resource.plural, resource.group);
        if let Ok(Some(crd)) = crds.get_opt(&name).await {
            if let Some(v) = istio_release(&crd.metadata.labels.unwrap_or_default()) {
                return Some(v);
            }
        }
    }
    None
}

/// The weights a live WasmPlugin's filter configuration expects.
fn weights_of(live: &Value) -> Option<WeightsView> {
    let config = live["spec"].get("pluginConfig")?.clone();
    // The filter's own configuration type: what the filter would read.
    let config: tideway_filter::config::PluginConfig = serde_json::from_value(config).ok()?;
    Some(WeightsView {
        schema_version: config.schema_version,
        source: config.weights_source.map(|s| s.authority),
        destinations: config
            .services
            .first()
            .map(|s| {
                s.destinations
                    .iter()
                    .map(|d| DestinationWeight {
                        name: d.name.clone(),
                        weight: d.weight,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

async fn endpoints(client: &Client, namespace: &str, name: &str) -> EndpointsView {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(e)) => EndpointsView {
            ready: Some(crate::drain::ready_addresses(&e)),
            not_ready: Some(
                e.subsets
                    .iter()
                    .flatten()
                    .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
                    .sum(),
            ),
            error: None,
        },
        Ok(None) => EndpointsView {
            ready: None,
            not_ready: None,
            error: Some(format!("no Endpoints {namespace}/{name}")),
        },
        Err(e) => EndpointsView {
            ready: None,
            not_ready: None,
            error: Some(text_of(&e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_comes_from_the_labels_an_install_writes() {
        let labels = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            istio_release(&labels("app.kubernetes.io/version", "1.30.3")).as_deref(),
            Some("1.30.3")
        );
        assert_eq!(
            istio_release(&labels("helm.sh/chart", "base-1.29.0")).as_deref(),
            Some("1.29.0")
        );
        assert_eq!(istio_release(&labels("release", "istio")), None);
    }
}
