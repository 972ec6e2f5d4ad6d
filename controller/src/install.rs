//! What `tideway install` prints: the CRDs and the controller's manifests,
//! its image pinned by digest, or a member cluster's RBAC.
//!
//! The manifests are the files under `manifests/`, compiled in: the
//! kustomize directory users apply and what `install` prints are one source
//! and cannot drift. `install` only sets the controller's image.

use crate::api;
use anyhow::{bail, Context};
use serde_json::Value;

/// The controller's manifests in apply order (the namespace first).
const CONTROLLER_MANIFESTS: &[(&str, &str)] = &[
    (
        "manifests/controller/namespace.yaml",
        include_str!("../../manifests/controller/namespace.yaml"),
    ),
    (
        "manifests/controller/serviceaccount.yaml",
        include_str!("../../manifests/controller/serviceaccount.yaml"),
    ),
    (
        "manifests/controller/rbac.yaml",
        include_str!("../../manifests/controller/rbac.yaml"),
    ),
    (
        "manifests/controller/service.yaml",
        include_str!("../../manifests/controller/service.yaml"),
    ),
    (
        "manifests/controller/pdb.yaml",
        include_str!("../../manifests/controller/pdb.yaml"),
    ),
    (
        "manifests/controller/deployment.yaml",
        include_str!("../../manifests/controller/deployment.yaml"),
    ),
];

/// A member cluster's RBAC for the controller.
const MEMBER_MANIFESTS: &[(&str, &str)] = &[(
    "manifests/member/rbac.yaml",
    include_str!("../../manifests/member/rbac.yaml"),
)];

/// The name of the controller's container in its Deployment.
const CONTAINER: &str = "controller";

/// The CRDs, then the controller's objects with its container's image set to
/// `image`, which must be pinned by digest (`…@sha256:<64 hex>`): a tag can
/// move under a running Deployment, a digest cannot.
pub fn hub_objects(image: &str) -> anyhow::Result<Vec<Value>> {
    require_digest(image)?;
    let mut objects = hub_objects_as_in_manifests()?;
    let containers = objects
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .and_then(|d| d.pointer_mut("/spec/template/spec/containers"))
        .and_then(Value::as_array_mut)
        .context("manifests/controller/deployment.yaml has no containers")?;
    let container = containers
        .iter_mut()
        .find(|c| c["name"] == CONTAINER)
        .with_context(|| format!("the Deployment has no container named {CONTAINER:?}"))?;
    container["image"] = Value::String(image.to_string());
    Ok(objects)
}

/// The CRDs and the controller's objects as `manifests/controller/` has them
/// (the image unpinned): what `tideway uninstall` removes.
pub fn hub_objects_as_in_manifests() -> anyhow::Result<Vec<Value>> {
    let mut objects: Vec<Value> = api::crds()
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    for (origin, text) in CONTROLLER_MANIFESTS {
        objects.extend(documents(text).with_context(|| origin.to_string())?);
    }
    Ok(objects)
}

/// The objects a member cluster applies: the controller's identity there
/// and what it may do.
pub fn member_objects() -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for (origin, text) in MEMBER_MANIFESTS {
        objects.extend(documents(text).with_context(|| origin.to_string())?);
    }
    Ok(objects)
}

/// The objects as one YAML stream, each document after a `---`.
pub fn to_yaml(objects: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(object)?);
    }
    Ok(out)
}

fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// `REPO@sha256:<64 lowercase hex>`, with or without a tag before the `@`.
pub fn require_digest(image: &str) -> anyhow::Result<()> {
    let pinned = image.rsplit_once("@sha256:").is_some_and(|(repo, hex)| {
        !repo.is_empty()
            && hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !pinned {
        bail!(
            "--image: got {image:?}; expected an image pinned by digest, REPOSITORY@sha256:<64 hex> \
             (`tideway image push` prints it)"
        );
    }
    Ok(())
}

/// The field manager of `tideway install --apply`.
pub const MANAGER: &str = "tideway-install";

/// Server-side applies `objects` in order (never forced: a field another
/// manager owns is reported with the server's message). Returns one line per
/// object. A PodDisruptionBudget goes as `policy/v1beta1` to a server that
/// does not serve `policy/v1` (Kubernetes before 1.21).
pub async fn apply(client: &kube::Client, objects: &[Value]) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for object in objects {
        let mut object = object.clone();
        let (api, what) = match api_for(client, &object).await {
            Ok(found) => found,
            Err(e)
                if object["kind"] == "PodDisruptionBudget"
                    && object["apiVersion"] == "policy/v1" =>
            {
                object["apiVersion"] = Value::String("policy/v1beta1".to_string());
                api_for(client, &object).await.map_err(|_| e)?
            }
            Err(e) => return Err(e),
        };
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.patch(
            &name,
            &kube::api::PatchParams::apply(MANAGER),
            &kube::api::Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("applying {what}"))?;
        done.push(format!("applied {what}"));
    }
    Ok(done)
}

/// Deletes `objects` in reverse order (what does not exist is said, not an
/// error). On the hub it first looks for TrafficPolicies that still carry
/// the controller's cleanup finalizer: their objects in member clusters are
/// removed only by the controller, so uninstalling under them would leave
/// those objects behind and the policies stuck terminating. It refuses,
/// naming them, unless `force`, which removes the finalizers first.
pub async fn uninstall(
    client: &kube::Client,
    objects: &[Value],
    force: bool,
) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let pending = policies_with_finalizer(client).await?;
    if !pending.is_empty() && !force {
        bail!(
            "{} TrafficPolicies still carry the controller's cleanup finalizer ({}): delete them \
             and let the controller remove their objects from the member clusters first, or \
             uninstall with --force (their objects then stay in the members)",
            pending.len(),
            pending
                .iter()
                .map(|(ns, name)| format!("{ns}/{name}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (namespace, name) in &pending {
        let api: kube::Api<crate::api::TrafficPolicy> =
            kube::Api::namespaced(client.clone(), namespace);
        let patch = serde_json::json!({"metadata": {"finalizers": null}});
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("removing the finalizer of TrafficPolicy {namespace}/{name}"))?;
        done.push(format!(
            "removed the finalizer of TrafficPolicy {namespace}/{name} (--force)"
        ));
    }
    for object in objects.iter().rev() {
        let Ok((api, what)) = api_for(client, object).await else {
            done.push(format!(
                "not served: {} {}",
                object["apiVersion"], object["kind"]
            ));
            continue;
        };
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        match api.delete(name, &Default::default()).await {
            Ok(_) => done.push(format!("deleted {what}")),
            Err(kube::Error::Api(e)) if e.code == 404 => done.push(format!("not found: {what}")),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("deleting {what}"))),
        }
    }
    Ok(done)
}

async fn policies_with_finalizer(client: &kube::Client) -> anyhow::Result<Vec<(String, String)>> {
    let api: kube::Api<crate::api::TrafficPolicy> = kube::Api::all(client.clone());
    let list = match api.list(&Default::default()).await {
        Ok(list) => list,
        // No CRD, no policies.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::Error::new(e).context("listing TrafficPolicies")),
    };
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == crate::run::reconcile::FINALIZER)
        })
        .map(|p| {
            (
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default(),
            )
        })
        .collect())
}

/// The API for `object`'s kind, found by discovery, and how to name it.
async fn api_for(
    client: &kube::Client,
    object: &Value,
) -> anyhow::Result<(kube::Api<kube::api::DynamicObject>, String)> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the server does not serve {api_version} {kind}"))?;
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    Ok(
        match (caps.scope, object["metadata"]["namespace"].as_str()) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => (
                kube::Api::namespaced_with(client.clone(), namespace, &resource),
                format!("{kind} {namespace}/{name}"),
            ),
            _ => (
                kube::Api::all_with(client.clone(), &resource),
                format!("{kind} {name}"),
            ),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "registry.example.com/tideway/controller@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_hub_gets_the_crds_then_the_controller_with_its_image_pinned() {
        let objects = hub_objects(IMAGE).unwrap();
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(
            &kinds[..3],
            [
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "Namespace"
            ]
        );
        for kind in [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "PodDisruptionBudget",
            "Deployment",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
        }
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["image"],
            IMAGE
        );
        assert!(to_yaml(&objects).unwrap().contains(IMAGE));
    }

    #[test]
    fn an_image_not_pinned_by_digest_is_refused_naming_the_flag() {
        for bad in [
            "tideway/controller:0.1.0",
            "x@sha256:abc",
            "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let err = hub_objects(bad).unwrap_err().to_string();
            assert!(err.starts_with("--image: got"), "{err}");
        }
        assert!(require_digest(&IMAGE.replace("/controller@", "/controller:0.1.0@")).is_ok());
    }

    #[test]
    fn a_member_gets_the_member_rbac() {
        let objects = member_objects().unwrap();
        assert!(objects.iter().any(|o| o["kind"] == "ClusterRole"));
        assert!(objects.iter().all(|o| o["kind"] != "Deployment"));
    }
}
