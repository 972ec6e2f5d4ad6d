//! Deleting what Tideway applied for a policy that its render no longer
//! has (found by the managed-by and policy labels; nothing relies on
//! owner-reference garbage collection, which needs a controller-manager),
//! and everything of a deleted policy.

use super::object::applied_by_tideway;
use super::object::ObjectKey;
use super::outcome::{MemberStatus, ObjectAction, ObjectOutcome};
use super::server::{classify, Failure, Resources};
use super::{revisions, PolicyRef};
use crate::compile::{MANAGED_BY, MANAGED_BY_LABEL, POLICY_LABEL, POLICY_NAMESPACE_LABEL};
use kube::api::{DeleteParams, ListParams};
use kube::core::GroupVersionKind;
use kube::Client;
use std::collections::BTreeSet;

/// The kinds `tideway render` can emit: where prune looks for objects an
/// earlier render had (a later render may not have the kind at all).
pub const PRUNABLE_KINDS: &[(&str, &str, &str)] = &[
    ("extensions.istio.io", "v1alpha1", "WasmPlugin"),
    ("networking.istio.io", "v1", "DestinationRule"),
    ("networking.istio.io", "v1", "VirtualService"),
    ("networking.istio.io", "v1", "ServiceEntry"),
    ("security.istio.io", "v1", "PeerAuthentication"),
    ("security.istio.io", "v1", "AuthorizationPolicy"),
    ("monitoring.coreos.com", "v1", "PrometheusRule"),
    ("", "v1", "ConfigMap"),
];

/// The label selector of every object this policy's renders produce.
pub fn policy_selector(policy: &PolicyRef) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{POLICY_LABEL}={},{POLICY_NAMESPACE_LABEL}={}",
        policy.name, policy.namespace
    )
}

/// The namespaces `look_in` puts `kind` in: where to look for a kind the
/// member's identity may only list per namespace.
pub(super) fn namespaces_of(
    look_in: &BTreeSet<ObjectKey>,
    gvk: &GroupVersionKind,
) -> BTreeSet<String> {
    look_in
        .iter()
        .filter(|k| k.kind == gvk.kind && k.group == gvk.group)
        .filter_map(|k| k.namespace.clone())
        .collect()
}

/// Delete what Tideway applied for `policy` and `keep` does not have.
/// `look_in` says where the render puts kinds the member's identity may
/// only list per namespace (ConfigMaps, PrometheusRules). `dry_run`: say
/// what would go, delete nothing.
pub(super) async fn prune(
    resources: &mut Resources,
    policy: &PolicyRef,
    keep: &BTreeSet<ObjectKey>,
    look_in: &BTreeSet<ObjectKey>,
    dry_run: bool,
    pruned: &mut Vec<ObjectOutcome>,
) -> Result<(), MemberStatus> {
    for (group, version, kind) in PRUNABLE_KINDS {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let resource = match resources.resolve(&gvk).await {
            Ok(r) => r,
            // The kind is not installed here: nothing of it to prune.
            Err(Failure::NoKind(_)) => continue,
            Err(Failure::Unreachable(message)) => {
                return Err(MemberStatus::Unreachable { message })
            }
            Err(Failure::Api(status)) => {
                return Err(MemberStatus::Failed {
                    message: format!("prune: looking up {kind}: {}", status.message),
                })
            }
            Err(Failure::Failed(message)) => {
                return Err(MemberStatus::Failed {
                    message: format!("prune: looking up {kind}: {message}"),
                })
            }
        };
        let namespaces = namespaces_of(look_in, &gvk);
        let cached = resources
            .live
            .as_ref()
            .and_then(|live| live.policy_objects(policy, &gvk, &namespaces));
        let found: Vec<ObjectKey> = match cached {
            Some(found) => found,
            None => listed(resources, &resource, policy, &gvk, &namespaces).await?,
        };
        for key in found {
            if keep.iter().any(|k| k.same_object(&key)) {
                continue;
            }
            let action = if dry_run {
                ObjectAction::WouldDelete
            } else {
                if let Some(live) = &resources.live {
                    live.deleting(&key);
                }
                let api = resources.api(&resource, key.namespace.as_deref());
                match api.delete(&key.name, &DeleteParams::default()).await {
                    Ok(_) => ObjectAction::Deleted,
                    Err(kube::Error::Api(s)) if s.code == 404 => ObjectAction::Deleted,
                    Err(e) => return Err(prune_error(kind, e)),
                }
            };
            pruned.push(ObjectOutcome {
                object: key.display(),
                action,
            });
        }
    }
    Ok(())
}

/// The objects of `policy` of one kind that Tideway applied, listed from
/// the member (no watch cache to ask).
async fn listed(
    resources: &Resources,
    resource: &super::server::Resource,
    policy: &PolicyRef,
    gvk: &GroupVersionKind,
    namespaces: &BTreeSet<String>,
) -> Result<Vec<ObjectKey>, MemberStatus> {
    // From the API server's watch cache (resourceVersion 0), not a quorum
    // read of etcd: a label-selected list from etcd reads and decodes every
    // object of the kind, which made each member apply O(all policies). A
    // slightly stale answer is safe: what the render keeps is never
    // deleted, and an object the cache has not seen yet is pruned on the
    // next reconcile.
    let params = ListParams::default()
        .labels(&policy_selector(policy))
        .match_any();
    let items = match resources.api(resource, None).list(&params).await {
        Ok(list) => list.items,
        // May not list this kind cluster-wide (the member RBAC grants
        // ConfigMaps and PrometheusRules per namespace): look in the
        // namespaces where the render puts this kind.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            let mut items = Vec::new();
            for ns in namespaces {
                match resources.api(resource, Some(ns)).list(&params).await {
                    Ok(list) => items.extend(list.items),
                    Err(e) => return Err(prune_error(&gvk.kind, e)),
                }
            }
            items
        }
        Err(e) => return Err(prune_error(&gvk.kind, e)),
    };
    Ok(items
        .iter()
        // Only what Tideway itself applied, not an object someone else
        // labelled like ours.
        .filter(|o| applied_by_tideway(o))
        .map(|o| ObjectKey {
            group: gvk.group.clone(),
            version: gvk.version.clone(),
            kind: gvk.kind.clone(),
            namespace: o.metadata.namespace.clone(),
            name: o.metadata.name.clone().unwrap_or_default(),
        })
        .collect())
}

fn prune_error(kind: &str, e: kube::Error) -> MemberStatus {
    match classify(e) {
        Failure::Unreachable(message) => MemberStatus::Unreachable { message },
        Failure::Api(status) => MemberStatus::Failed {
            message: format!("prune {kind}: {}", status.message),
        },
        Failure::NoKind(detail) | Failure::Failed(detail) => MemberStatus::Failed {
            message: format!("prune {kind}: {detail}"),
        },
    }
}

/// Delete every object Tideway applied in this member for `policy` (the
/// policy was deleted), then its revision record. The record's objects say
/// where kinds listed per namespace are. `Ok(what was deleted)`.
pub async fn remove_all(
    client: &Client,
    policy: &PolicyRef,
) -> Result<Vec<ObjectOutcome>, MemberStatus> {
    let record = revisions::read(client, policy)
        .await
        .map_err(|e| match classify(e) {
            Failure::Unreachable(message) => MemberStatus::Unreachable { message },
            Failure::Api(s) => MemberStatus::Failed {
                message: revisions::read_error(policy, &s.message),
            },
            Failure::NoKind(m) | Failure::Failed(m) => MemberStatus::Failed {
                message: revisions::read_error(policy, &m),
            },
        })?;
    let look_in: BTreeSet<ObjectKey> = [&record.current, &record.previous]
        .into_iter()
        .flatten()
        .flat_map(|r| r.objects.iter())
        .filter_map(ObjectKey::of)
        .collect();
    let mut resources = Resources::new(client.clone(), None);
    let mut deleted = Vec::new();
    prune(
        &mut resources,
        policy,
        &BTreeSet::new(),
        &look_in,
        false,
        &mut deleted,
    )
    .await?;
    revisions::delete(client, policy)
        .await
        .map_err(|message| MemberStatus::Failed { message })?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_names_the_policy() {
        let s = policy_selector(&PolicyRef {
            name: "reviews".into(),
            namespace: "prod".into(),
        });
        assert_eq!(
            s,
            "app.kubernetes.io/managed-by=tideway,traffic.tideway.dev/policy=reviews,traffic.tideway.dev/policy-namespace=prod"
        );
    }
}
