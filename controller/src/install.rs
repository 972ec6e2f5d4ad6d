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
    let mut objects: Vec<Value> = api::crds()
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    for (origin, text) in CONTROLLER_MANIFESTS {
        objects.extend(documents(text).with_context(|| origin.to_string())?);
    }
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
