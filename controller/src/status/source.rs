//! Where `tideway status` reads the policy it checks: from files (the
//! `tideway apply` workflow) or from the hub, by name.

use super::{gather, with_drains, Input, MemberTarget, StatusReport};
use crate::api::{Fleet, TrafficPolicy};
use crate::apply::connect;
use anyhow::Context;
use std::path::PathBuf;

/// The policy to check.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A policy and its Fleet from files; the hub's copy, when there is a
    /// hub, only adds its status (drains, the controller's view).
    Files { policy: PathBuf, fleet: PathBuf },
    /// A policy in the hub, and its Fleet there.
    Hub { namespace: String, name: String },
}

/// What each member of the policy's Fleet has of it. `image` overrides
/// `spec.plugin.image`.
pub async fn report(
    hub: Option<kube::Client>,
    kubeconfig: Option<kube::config::Kubeconfig>,
    source: PolicySource,
    image: Option<&str>,
) -> anyhow::Result<StatusReport> {
    let (policy, fleet, hub_policy) = match source {
        PolicySource::Files { policy, fleet } => {
            from_files(hub.as_ref(), &policy, &fleet, image).await?
        }
        PolicySource::Hub { namespace, name } => {
            let hub = hub
                .as_ref()
                .context("the hub is needed to read a policy by name")?;
            from_hub(hub, &namespace, &name).await?
        }
    };
    let image = image
        .map(|r| crate::Image::parse("--image", r))
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let drained = with_drains(&policy, hub_policy.as_ref().and_then(|p| p.status.as_ref()));
    let compiled = crate::compile(&drained, &fleet, image.as_ref())
        .map_err(|e| anyhow::anyhow!("the policy does not compile: {e}"))?;
    let mut members = Vec::new();
    for name in &compiled.order {
        let Some(member) = fleet.spec.clusters.iter().find(|c| &c.name == name) else {
            continue;
        };
        members.push(MemberTarget {
            name: name.clone(),
            wave: member.wave,
            client: connect::member_client(member, kubeconfig.as_ref(), hub.as_ref()).await,
        });
    }
    Ok(gather(Input {
        policy,
        compiled,
        hub_policy,
        members,
    })
    .await)
}

type Found = (TrafficPolicy, Fleet, Option<TrafficPolicy>);

async fn from_files(
    hub: Option<&kube::Client>,
    policy_path: &std::path::Path,
    fleet_path: &std::path::Path,
    image: Option<&str>,
) -> anyhow::Result<Found> {
    let loaded = crate::load_and_compile(policy_path, fleet_path, image)?;
    let reference = loaded.policy_ref();
    let hub_policy = match hub {
        Some(hub) => {
            let api: kube::Api<TrafficPolicy> =
                kube::Api::namespaced(hub.clone(), &reference.namespace);
            api.get_opt(&reference.name).await.ok().flatten()
        }
        None => None,
    };
    Ok((loaded.policy, loaded.fleet, hub_policy))
}

async fn from_hub(hub: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Found> {
    let api: kube::Api<TrafficPolicy> = kube::Api::namespaced(hub.clone(), namespace);
    let policy = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading TrafficPolicy {namespace}/{name} from the hub"))?
        .with_context(|| format!("TrafficPolicy {namespace}/{name} is not in the hub"))?;
    let fleets: kube::Api<Fleet> = kube::Api::all(hub.clone());
    let fleet = fleets
        .get_opt(&policy.spec.fleet)
        .await
        .with_context(|| format!("reading Fleet {:?} from the hub", policy.spec.fleet))?
        .with_context(|| {
            format!(
                "spec.fleet: Fleet {:?} is not in the hub",
                policy.spec.fleet
            )
        })?;
    Ok((policy.clone(), fleet, Some(policy)))
}
