//! One member cluster: server-side apply of its objects in order, the
//! read-back that is its half of the wave's health gate, then prune.
//!
//! Every failure becomes a [`MemberStatus`]; nothing here panics on what a
//! server answers. The first object the member refuses stops that member
//! (the objects after it are reported as not attempted), so a member is never
//! left half-applied without its outcome saying exactly which half.

use super::{diff, revisions, Options, PolicyRef, Target, FIELD_MANAGER};
use crate::compile::{MANAGED_BY, MANAGED_BY_LABEL, POLICY_LABEL, POLICY_NAMESPACE_LABEL};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind, Status};
use kube::discovery::{ApiCapabilities, Scope};
use kube::Client;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

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

/// How one member's rollout ended.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberOutcome {
    pub member: String,
    pub wave: u32,
    pub status: MemberStatus,
    /// The render's objects, in apply order, each with what happened to it.
    pub objects: Vec<ObjectOutcome>,
    /// Objects of this policy the render no longer has.
    pub pruned: Vec<ObjectOutcome>,
    /// How long this member's apply (objects, read-back, prune) took.
    pub elapsed: std::time::Duration,
    /// Its wave failed the gate: the revision it was put back to, or why not.
    pub rollback: Option<Result<String, String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MemberStatus {
    /// Every object accepted and read back (dry run: every object would be).
    Applied,
    /// The API server could not be reached (or no client could be made).
    Unreachable { message: String },
    /// Another field manager owns fields the render sets (HTTP 409). The
    /// object is left as it is; `tideway` never forces.
    Conflict {
        object: String,
        conflicts: Vec<FieldConflict>,
        message: String,
    },
    /// The member refused an object: schema, admission, missing namespace or
    /// kind, permissions. `message` is the API server's own.
    Rejected {
        object: String,
        code: u16,
        reason: String,
        message: String,
    },
    /// An object was accepted but is not there when read back, or prune
    /// could not delete something.
    Failed { message: String },
    /// Not attempted (an earlier wave failed its gate).
    Skipped { reason: String },
    /// Applied, then put back to `revision` because its wave failed the
    /// gate (`reason` says where).
    RolledBack { revision: String, reason: String },
}

/// One field another manager owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldConflict {
    pub manager: String,
    pub field: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectOutcome {
    /// `Kind namespace/name` (or `Kind name`).
    pub object: String,
    pub action: ObjectAction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ObjectAction {
    Created,
    Configured,
    Unchanged,
    Deleted,
    /// Dry run: the object does not exist yet; the diff is all additions.
    WouldCreate {
        diff: String,
    },
    WouldChange {
        diff: String,
    },
    WouldDelete,
    /// Refused by the member (its status says why).
    Failed,
    /// After a refused object: not sent.
    NotAttempted,
}

impl MemberOutcome {
    pub fn skipped(member: &str, wave: u32, reason: String) -> Self {
        Self {
            member: member.to_string(),
            wave,
            status: MemberStatus::Skipped { reason },
            objects: Vec::new(),
            pruned: Vec::new(),
            elapsed: std::time::Duration::ZERO,
            rollback: None,
        }
    }

    /// How many objects ended with `action` (compared by variant).
    pub fn count(&self, action: &ObjectAction) -> usize {
        self.objects
            .iter()
            .filter(|o| std::mem::discriminant(&o.action) == std::mem::discriminant(action))
            .count()
    }
}

/// Why a request failed, as far as the rollout cares.
enum Failure {
    /// No answer from the API server (connection, TLS, timeout).
    Unreachable(String),
    /// The API server answered with an error status.
    Api(Box<Status>),
    /// The server has no such kind (its CRD is not installed).
    NoKind(String),
}

/// An error and its sources, each said once.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn classify(e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(status) => Failure::Api(status),
        kube::Error::Discovery(d) => Failure::NoKind(error_chain(&d)),
        other => Failure::Unreachable(error_chain(&other)),
    }
}

/// The identity of a rendered object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    group: String,
    version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl ObjectKey {
    fn of(object: &Value) -> Option<Self> {
        let api_version = object["apiVersion"].as_str()?;
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        Some(Self {
            group,
            version,
            kind: object["kind"].as_str()?.to_string(),
            namespace: object["metadata"]["namespace"].as_str().map(str::to_string),
            name: object["metadata"]["name"].as_str()?.to_string(),
        })
    }

    fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk(&self.group, &self.version, &self.kind)
    }

    fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// The member's resource types, looked up once per kind.
struct Resources {
    client: Client,
    known: BTreeMap<(String, String, String), (ApiResource, ApiCapabilities)>,
}

impl Resources {
    async fn resolve(
        &mut self,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, ApiCapabilities), Failure> {
        let key = (gvk.group.clone(), gvk.version.clone(), gvk.kind.clone());
        if let Some(found) = self.known.get(&key) {
            return Ok(found.clone());
        }
        let found = match kube::discovery::pinned_kind(&self.client, gvk).await {
            Ok(found) => found,
            // A group the server does not serve at all answers 404.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(Failure::NoKind(format!("no API group {}", gv_text(gvk))))
            }
            Err(e) => return Err(classify(e)),
        };
        self.known.insert(key, found.clone());
        Ok(found)
    }

    fn api(
        &self,
        resource: &(ApiResource, ApiCapabilities),
        namespace: Option<&str>,
    ) -> Api<DynamicObject> {
        match (&resource.1.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => {
                Api::namespaced_with(self.client.clone(), ns, &resource.0)
            }
            _ => Api::all_with(self.client.clone(), &resource.0),
        }
    }
}

fn gv_text(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        gvk.version.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.version)
    }
}

/// The label selector of every object this policy's renders produce.
pub fn policy_selector(policy: &PolicyRef) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{POLICY_LABEL}={},{POLICY_NAMESPACE_LABEL}={}",
        policy.name, policy.namespace
    )
}

/// Apply one member's objects; see the module doc.
pub async fn apply_member(target: &Target, policy: &PolicyRef, options: &Options) -> MemberOutcome {
    let started = std::time::Instant::now();
    let mut outcome = apply_member_untimed(target, policy, options).await;
    if matches!(outcome.status, MemberStatus::Applied) && !options.dry_run {
        if let Err(message) = record(target, policy).await {
            outcome.status = MemberStatus::Failed { message };
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// The member now has `target`'s revision: say so in its record.
async fn record(target: &Target, policy: &PolicyRef) -> Result<(), String> {
    let Ok(client) = &target.client else {
        return Ok(());
    };
    let record = revisions::read(client, policy).await?;
    let record = revisions::advanced(
        record,
        revisions::Revision {
            revision: target.revision.clone(),
            objects: target.objects.clone(),
        },
    );
    revisions::write(client, policy, &record).await
}

/// Put the member back to the revision it had before `target`'s: the
/// record's current one if the member never took `target`'s, else the
/// previous one. Objects of the failed revision the old one does not have
/// are pruned. `Ok(revision restored)`.
pub async fn rollback(target: &Target, policy: &PolicyRef) -> Result<String, String> {
    let client = target.client.clone()?;
    let record = revisions::read(&client, policy).await?;
    let to = match record.current {
        Some(c) if c.revision == target.revision => record.previous,
        other => other,
    }
    .ok_or_else(|| "no earlier revision is recorded in this member".to_string())?;
    let old = Target {
        member: target.member.clone(),
        wave: target.wave,
        revision: to.revision.clone(),
        objects: to.objects.clone(),
        client: Ok(client.clone()),
    };
    let options = Options {
        prune: true,
        unchanged_at_revision: Some(to.revision.clone()),
        ..Options::default()
    };
    let outcome = apply_member_untimed(&old, policy, &options).await;
    if !matches!(outcome.status, MemberStatus::Applied) {
        return Err(format!("re-applying {}: {:?}", to.revision, outcome.status));
    }
    let record = revisions::Record {
        current: Some(to.clone()),
        previous: None,
    };
    revisions::write(&client, policy, &record).await?;
    Ok(to.revision)
}

/// Delete every object Tideway applied in this member for `policy` (the
/// policy was deleted), then its revision record. `applied` are the
/// objects the record says the member had, so that kinds listed per
/// namespace are found. `Ok(what was deleted)`.
pub async fn remove_all(
    client: &Client,
    policy: &PolicyRef,
) -> Result<Vec<ObjectOutcome>, MemberStatus> {
    let record = revisions::read(client, policy)
        .await
        .map_err(|message| MemberStatus::Failed { message })?;
    let look_in: BTreeSet<ObjectKey> = [&record.current, &record.previous]
        .into_iter()
        .flatten()
        .flat_map(|r| r.objects.iter())
        .filter_map(ObjectKey::of)
        .collect();
    let mut resources = Resources {
        client: client.clone(),
        known: BTreeMap::new(),
    };
    let mut deleted = Vec::new();
    prune(
        &mut resources,
        policy,
        &BTreeSet::new(),
        &look_in,
        &Options::default(),
        &mut deleted,
    )
    .await?;
    revisions::delete(client, policy)
        .await
        .map_err(|message| MemberStatus::Failed { message })?;
    Ok(deleted)
}

async fn apply_member_untimed(
    target: &Target,
    policy: &PolicyRef,
    options: &Options,
) -> MemberOutcome {
    let mut outcome = MemberOutcome {
        member: target.member.clone(),
        wave: target.wave,
        status: MemberStatus::Applied,
        objects: Vec::new(),
        pruned: Vec::new(),
        elapsed: std::time::Duration::ZERO,
        rollback: None,
    };
    let client = match &target.client {
        Ok(client) => client.clone(),
        Err(message) => {
            outcome.status = MemberStatus::Unreachable {
                message: message.clone(),
            };
            return outcome;
        }
    };
    let mut resources = Resources {
        client,
        known: BTreeMap::new(),
    };
    let mut applied: Vec<(ObjectKey, (ApiResource, ApiCapabilities))> = Vec::new();
    for (index, object) in target.objects.iter().enumerate() {
        let Some(key) = ObjectKey::of(object) else {
            outcome.status = MemberStatus::Failed {
                message: format!(
                    "object {} of the render has no apiVersion, kind or metadata.name",
                    index + 1
                ),
            };
            break;
        };
        match apply_object(&mut resources, &key, object, options).await {
            Ok((action, resource)) => {
                outcome.objects.push(ObjectOutcome {
                    object: key.display(),
                    action,
                });
                applied.push((key, resource));
            }
            Err(failure) => {
                outcome.objects.push(ObjectOutcome {
                    object: key.display(),
                    action: ObjectAction::Failed,
                });
                outcome.status = status_of(failure, &key);
                break;
            }
        }
    }
    if !matches!(outcome.status, MemberStatus::Applied) {
        for object in target.objects.iter().skip(outcome.objects.len()) {
            if let Some(key) = ObjectKey::of(object) {
                outcome.objects.push(ObjectOutcome {
                    object: key.display(),
                    action: ObjectAction::NotAttempted,
                });
            }
        }
        return outcome;
    }
    if !options.dry_run {
        if let Err(status) = read_back(&resources, &applied).await {
            outcome.status = status;
            return outcome;
        }
    }
    if options.prune {
        let keep: BTreeSet<ObjectKey> = applied.iter().map(|(k, _)| k.clone()).collect();
        if let Err(status) = prune(
            &mut resources,
            policy,
            &keep,
            &keep,
            options,
            &mut outcome.pruned,
        )
        .await
        {
            outcome.status = status;
        }
    }
    outcome
}

fn status_of(failure: Failure, key: &ObjectKey) -> MemberStatus {
    match failure {
        Failure::Unreachable(message) => MemberStatus::Unreachable { message },
        Failure::NoKind(detail) => MemberStatus::Rejected {
            object: key.display(),
            code: 404,
            reason: "NotFound".to_string(),
            message: format!(
                "the server has no resource type {} ({}): {detail}; install its CRD in this member",
                key.kind,
                gv_text(&key.gvk())
            ),
        },
        Failure::Api(status) if status.code == 409 => MemberStatus::Conflict {
            object: key.display(),
            conflicts: field_conflicts(&status),
            message: status.message.clone(),
        },
        Failure::Api(status) => MemberStatus::Rejected {
            object: key.display(),
            code: status.code,
            reason: status.reason.clone(),
            message: status.message.clone(),
        },
    }
}

/// Server-side apply of one object (dry run: `dryRun=All` and the diff).
async fn apply_object(
    resources: &mut Resources,
    key: &ObjectKey,
    object: &Value,
    options: &Options,
) -> Result<(ObjectAction, (ApiResource, ApiCapabilities)), Failure> {
    let resource = resources.resolve(&key.gvk()).await?;
    let api = resources.api(&resource, key.namespace.as_deref());
    let live = api.get_opt(&key.name).await.map_err(classify)?;
    if let (Some(revision), Some(live)) = (&options.unchanged_at_revision, &live) {
        let at = live
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::REVISION_ANNOTATION));
        if at == Some(revision) {
            return Ok((ObjectAction::Unchanged, resource));
        }
    }
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.dry_run = options.dry_run;
    let result = api
        .patch(&key.name, &params, &Patch::Apply(object))
        .await
        .map_err(classify)?;
    let action = if options.dry_run {
        let before = live.as_ref().map(diff::comparable).unwrap_or(Value::Null);
        let after = diff::comparable(&result);
        let text = diff::unified(&key.display(), &before, &after);
        match (&live, text.is_empty()) {
            (None, _) => ObjectAction::WouldCreate { diff: text },
            (Some(_), true) => ObjectAction::Unchanged,
            (Some(_), false) => ObjectAction::WouldChange { diff: text },
        }
    } else {
        match live {
            None => ObjectAction::Created,
            Some(live) if live.metadata.resource_version == result.metadata.resource_version => {
                ObjectAction::Unchanged
            }
            Some(_) => ObjectAction::Configured,
        }
    };
    Ok((action, resource))
}

/// The member's half of the health gate: every object it accepted is there,
/// with Tideway's labels, when read back.
async fn read_back(
    resources: &Resources,
    applied: &[(ObjectKey, (ApiResource, ApiCapabilities))],
) -> Result<(), MemberStatus> {
    for (key, resource) in applied {
        let api = resources.api(resource, key.namespace.as_deref());
        match api.get_opt(&key.name).await {
            Ok(Some(found)) => {
                let labelled = found
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(MANAGED_BY_LABEL))
                    .is_some_and(|v| v == MANAGED_BY);
                if !labelled {
                    return Err(MemberStatus::Failed {
                        message: format!(
                            "{} was applied but reads back without {MANAGED_BY_LABEL}={MANAGED_BY}",
                            key.display()
                        ),
                    });
                }
            }
            Ok(None) => {
                return Err(MemberStatus::Failed {
                    message: format!(
                        "{} was applied but is not there on read-back",
                        key.display()
                    ),
                })
            }
            Err(e) => return Err(status_of(classify(e), key)),
        }
    }
    Ok(())
}

/// Did `manager` ever apply this object? Prune deletes only what Tideway
/// itself applied, not an object someone else labelled like ours.
fn applied_by_tideway(object: &DynamicObject) -> bool {
    object
        .metadata
        .managed_fields
        .as_ref()
        .is_some_and(|fields| {
            fields
                .iter()
                .any(|f| f.manager.as_deref() == Some(FIELD_MANAGER))
        })
}

/// Delete what Tideway applied for `policy` and `keep` does not have.
/// `look_in` says where the render puts kinds the member's identity may
/// only list per namespace (ConfigMaps, PrometheusRules).
async fn prune(
    resources: &mut Resources,
    policy: &PolicyRef,
    keep: &BTreeSet<ObjectKey>,
    look_in: &BTreeSet<ObjectKey>,
    options: &Options,
    pruned: &mut Vec<ObjectOutcome>,
) -> Result<(), MemberStatus> {
    let selector = policy_selector(policy);
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
        };
        // From the API server's watch cache (resourceVersion 0), not a
        // quorum read of etcd: a label-selected list from etcd reads and
        // decodes every object of the kind, which made each member apply
        // O(all policies) — seconds per apply with 1,000 policies. A
        // slightly stale answer is safe: what the render keeps is never
        // deleted, and an object the cache has not seen yet is pruned on
        // the next reconcile.
        let params = ListParams::default().labels(&selector).match_any();
        let found = match resources.api(&resource, None).list(&params).await {
            Ok(list) => list.items,
            // May not list this kind cluster-wide (the member RBAC grants
            // ConfigMaps and PrometheusRules per namespace): look in the
            // namespaces where the render puts this kind.
            Err(kube::Error::Api(s)) if s.code == 403 => {
                let namespaces: BTreeSet<&str> = look_in
                    .iter()
                    .filter(|k| k.kind == *kind && k.group == *group)
                    .filter_map(|k| k.namespace.as_deref())
                    .collect();
                let mut items = Vec::new();
                for ns in namespaces {
                    match resources.api(&resource, Some(ns)).list(&params).await {
                        Ok(list) => items.extend(list.items),
                        Err(e) => return Err(prune_error(kind, e)),
                    }
                }
                items
            }
            Err(e) => return Err(prune_error(kind, e)),
        };
        for object in found {
            let key = ObjectKey {
                group: group.to_string(),
                version: version.to_string(),
                kind: kind.to_string(),
                namespace: object.metadata.namespace.clone(),
                name: object.metadata.name.clone().unwrap_or_default(),
            };
            // Compare without the version: the render may move a kind to a
            // newer version of the same group.
            let kept = keep.iter().any(|k| {
                k.group == key.group
                    && k.kind == key.kind
                    && k.namespace == key.namespace
                    && k.name == key.name
            });
            if kept || !applied_by_tideway(&object) {
                continue;
            }
            let api = resources.api(&resource, key.namespace.as_deref());
            let action = if options.dry_run {
                ObjectAction::WouldDelete
            } else {
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

fn prune_error(kind: &str, e: kube::Error) -> MemberStatus {
    match classify(e) {
        Failure::Unreachable(message) => MemberStatus::Unreachable { message },
        Failure::Api(status) => MemberStatus::Failed {
            message: format!("prune {kind}: {}", status.message),
        },
        Failure::NoKind(detail) => MemberStatus::Failed {
            message: format!("prune {kind}: {detail}"),
        },
    }
}

/// The fields and managers of a 409 from server-side apply: from the
/// status causes (`FieldManagerConflict`, `conflict with "kubectl"` at
/// `.spec.hosts`), else parsed from the message (`Apply failed with 1
/// conflict: conflict with "kubectl" using networking.istio.io/v1:
/// .spec.hosts`).
pub fn field_conflicts(status: &Status) -> Vec<FieldConflict> {
    let from_causes: Vec<FieldConflict> = status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .filter(|c| c.reason == "FieldManagerConflict")
        .filter_map(|c| {
            Some(FieldConflict {
                manager: quoted(&c.message)?.to_string(),
                field: c.field.clone(),
            })
        })
        .collect();
    if !from_causes.is_empty() {
        return from_causes;
    }
    conflicts_from_message(&status.message)
}

fn quoted(text: &str) -> Option<&str> {
    let start = text.find('"')? + 1;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// `… conflict(s) with "M" [using V]: .f` or `…:\n- .f\n- .g`, per manager.
pub fn conflicts_from_message(message: &str) -> Vec<FieldConflict> {
    let mut out = Vec::new();
    for part in message.split(" with \"").skip(1) {
        let Some(end) = part.find('"') else { continue };
        let manager = &part[..end];
        let rest = &part[end + 1..];
        let Some(colon) = rest.find(':') else {
            continue;
        };
        let fields = &rest[colon + 1..];
        // The fields run to the next manager's "conflict(s) with".
        let fields = fields.split("conflict").next().unwrap_or(fields);
        for field in fields
            .split('\n')
            .map(|l| {
                l.trim()
                    .trim_start_matches("- ")
                    .trim()
                    .trim_end_matches(',')
            })
            .filter(|l| l.starts_with('.'))
        {
            out.push(FieldConflict {
                manager: manager.to_string(),
                field: field.to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_conflict_from_the_message() {
        let found = conflicts_from_message(
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using networking.istio.io/v1: .spec.hosts",
        );
        assert_eq!(
            found,
            vec![FieldConflict {
                manager: "kubectl-edit".into(),
                field: ".spec.hosts".into()
            }]
        );
    }

    #[test]
    fn several_managers_and_fields_from_the_message() {
        let found = conflicts_from_message(
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.x\n- .spec.y\nconflict with \"b\" using v1: .spec.z",
        );
        let pairs: Vec<(&str, &str)> = found
            .iter()
            .map(|c| (c.manager.as_str(), c.field.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![("a", ".spec.x"), ("a", ".spec.y"), ("b", ".spec.z")]
        );
    }

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
