//! The revisions a member has had, kept in the member itself: one
//! ConfigMap per policy in `tideway-system` (`tideway-revisions-<policy
//! namespace>-<policy>`) with the current and the previous render applied
//! there (revision and objects). It moves only once a rollout's wave passed
//! its health gate, so during a rollout it says what the member had before
//! it: what a failed wave is rolled back to ([`super::rollback`]). Keeping
//! it in the member means a rollback needs no hub and survives a
//! controller restart.
//!
//! The ConfigMap does not carry the policy's prune labels (prune must never
//! delete it); manifests/member/rbac.yaml grants ConfigMaps in
//! `tideway-system` for it.

use super::{PolicyRef, FIELD_MANAGER};
use crate::compile::{MANAGED_BY, MANAGED_BY_LABEL};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

pub const REVISIONS_NAMESPACE: &str = "tideway-system";
/// Which policy a revisions ConfigMap belongs to (`namespace.name`).
pub const REVISIONS_OF_LABEL: &str = "traffic.tideway.dev/revisions-of";

/// One render as a member had it.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub revision: String,
    pub objects: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    pub current: Option<Revision>,
    pub previous: Option<Revision>,
}

pub fn configmap_name(policy: &PolicyRef) -> String {
    let mut name = format!("tideway-revisions-{}-{}", policy.namespace, policy.name);
    name.truncate(253);
    name
}

fn api(client: &Client) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), REVISIONS_NAMESPACE)
}

fn text_of(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn revision_from(data: &std::collections::BTreeMap<String, String>, key: &str) -> Option<Revision> {
    let revision = data.get(key)?.clone();
    let objects = serde_json::from_str(data.get(&format!("{key}.json"))?).ok()?;
    Some(Revision { revision, objects })
}

/// What the member says it has (empty when it never had this policy).
pub async fn read(client: &Client, policy: &PolicyRef) -> Result<Record, kube::Error> {
    let found = api(client).get_opt(&configmap_name(policy)).await?;
    let data = found.and_then(|c| c.data).unwrap_or_default();
    Ok(Record {
        current: revision_from(&data, "current"),
        previous: revision_from(&data, "previous"),
    })
}

/// The message for a record that could not be read (`why`: the API
/// server's message or the error).
pub fn read_error(policy: &PolicyRef, why: &str) -> String {
    format!(
        "reading the revision record ConfigMap {REVISIONS_NAMESPACE}/{}: {why}",
        configmap_name(policy)
    )
}

pub async fn write(client: &Client, policy: &PolicyRef, record: &Record) -> Result<(), String> {
    let mut data = serde_json::Map::new();
    for (key, revision) in [("current", &record.current), ("previous", &record.previous)] {
        if let Some(r) = revision {
            data.insert(key.into(), Value::String(r.revision.clone()));
            data.insert(
                format!("{key}.json"),
                Value::String(serde_json::to_string(&r.objects).unwrap_or_default()),
            );
        }
    }
    let name = configmap_name(policy);
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": REVISIONS_NAMESPACE,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                REVISIONS_OF_LABEL: format!("{}.{}", policy.namespace, policy.name),
            },
        },
        "data": data,
    });
    api(client)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "writing ConfigMap {REVISIONS_NAMESPACE}/{name}: {}",
                text_of(&e)
            )
        })
}

/// Remove the record (the policy is gone); absent already is fine.
pub async fn delete(client: &Client, policy: &PolicyRef) -> Result<(), String> {
    let name = configmap_name(policy);
    match api(client).delete(&name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(format!(
            "deleting ConfigMap {REVISIONS_NAMESPACE}/{name}: {}",
            text_of(&e)
        )),
    }
}

/// The record after `revision` was applied: it becomes current, the old
/// current (if different) previous.
pub fn advanced(mut record: Record, revision: Revision) -> Record {
    match &record.current {
        Some(c) if c.revision == revision.revision => record.current = Some(revision),
        _ => {
            record.previous = record.current.take();
            record.current = Some(revision);
        }
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(r: &str) -> Revision {
        Revision {
            revision: r.into(),
            objects: vec![json!({"r": r})],
        }
    }

    #[test]
    fn a_new_revision_pushes_the_current_one_back() {
        let r = advanced(Record::default(), rev("a"));
        assert_eq!(r.current, Some(rev("a")));
        assert_eq!(r.previous, None);
        let r = advanced(r, rev("b"));
        assert_eq!(r.current, Some(rev("b")));
        assert_eq!(r.previous, Some(rev("a")));
        // The same revision again keeps the previous one.
        let r = advanced(r, rev("b"));
        assert_eq!(r.previous, Some(rev("a")));
    }
}
