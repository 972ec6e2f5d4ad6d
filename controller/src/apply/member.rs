//! One member cluster's part of a rollout: server-side apply of its
//! objects in order (the member's half of its wave's health gate), then,
//! once the wave passed the gate, prune and the revision record
//! ([`finish`]).
//!
//! An object is sent only when the member's copy differs from the render:
//! the watch cache ([`super::live`]) says it is unchanged since Tideway
//! last saw it equal, or a read compares it with the render
//! ([`super::drift`]) — so a rollout of what a member already has writes
//! nothing.
//!
//! Every failure becomes a [`MemberStatus`]; nothing here panics on what a
//! server answers. The first object the member refuses stops that member
//! (the objects after it are reported as not attempted), so a member is
//! never left half-applied without its outcome saying exactly which half,
//! and [`super::rollback`] knows exactly what this rollout wrote.

use super::conflicts::field_conflicts;
use super::live::Seen;
use super::object::ObjectKey;
use super::outcome::{MemberOutcome, MemberStatus, ObjectAction, ObjectOutcome, Runs};
use super::prune::{namespaces_of, prune, PRUNABLE_KINDS};
use super::server::{classify, gv_text, Failure, Resources};
use super::{diff, revisions, Options, PolicyRef, Target, FIELD_MANAGER};
use super::{REVISION_ANNOTATION, STATUS_FIELD_MANAGER};
use crate::compile::{MANAGED_BY, MANAGED_BY_LABEL};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::Value;
use std::collections::BTreeSet;

/// A member's part of the rollout so far: its outcome, and what the later
/// steps (finish, or rollback) need.
pub(super) struct MemberRun {
    pub outcome: MemberOutcome,
    pub resources: Option<Resources>,
    /// The objects this rollout wrote, in order, with what it did.
    pub written: Vec<(ObjectKey, ObjectAction)>,
    /// The objects the member accepted (prune keeps these).
    pub accepted: BTreeSet<ObjectKey>,
}

/// The member's half of the wave: read what it has (its record), apply
/// each object the member does not already have as rendered. Nothing is
/// deleted and the record is not moved until the wave passed its gate.
pub(super) async fn apply_objects(
    target: &Target,
    policy: &PolicyRef,
    options: &Options,
) -> MemberRun {
    let started = std::time::Instant::now();
    let mut run = MemberRun {
        outcome: MemberOutcome::new(&target.member, target.wave, MemberStatus::Applied),
        resources: None,
        written: Vec::new(),
        accepted: BTreeSet::new(),
    };
    let client = match &target.client {
        Ok(client) => client.clone(),
        Err(message) => {
            run.outcome.status = MemberStatus::Unreachable {
                message: message.clone(),
            };
            return run;
        }
    };
    let mut resources = Resources::new(client.clone(), target.live.clone());
    if let Some(live) = &target.live {
        live.start_watches(watched_kinds(target));
    }
    if !options.dry_run {
        let cached = target.live.as_ref().and_then(|l| l.record(policy));
        let current = match cached {
            Some(current) => Ok(current),
            None => revisions::read(&client, policy)
                .await
                .map(|r| r.current.map(|c| c.revision)),
        };
        match current {
            Ok(current) => run.outcome.before = Some(Runs::from_record(current)),
            Err(e) => {
                run.outcome.status = match classify(e) {
                    Failure::Unreachable(message) => MemberStatus::Unreachable { message },
                    Failure::Api(s) => MemberStatus::Failed {
                        message: revisions::read_error(policy, &s.message),
                    },
                    Failure::NoKind(detail) | Failure::Failed(detail) => MemberStatus::Failed {
                        message: revisions::read_error(policy, &detail),
                    },
                };
                run.outcome.elapsed = started.elapsed();
                return run;
            }
        }
    }
    for (index, object) in target.objects.iter().enumerate() {
        let Some(key) = ObjectKey::of(object) else {
            run.outcome.status = MemberStatus::Failed {
                message: format!(
                    "object {} of the render has no apiVersion, kind or metadata.name",
                    index + 1
                ),
            };
            break;
        };
        match apply_object(
            &mut resources,
            &key,
            object,
            &target.revision,
            policy,
            options,
        )
        .await
        {
            Ok(action) => {
                if matches!(action, ObjectAction::Created | ObjectAction::Configured) {
                    run.written.push((key.clone(), action.clone()));
                }
                run.outcome.objects.push(ObjectOutcome {
                    object: key.display(),
                    action,
                });
                run.accepted.insert(key);
            }
            Err(failure) => {
                run.outcome.objects.push(ObjectOutcome {
                    object: key.display(),
                    action: ObjectAction::Failed,
                });
                run.outcome.status = status_of(failure, &key);
                break;
            }
        }
    }
    if matches!(run.outcome.status, MemberStatus::Applied) {
        if !options.dry_run {
            run.outcome.runs = Runs::Revision(target.revision.clone());
        }
    } else {
        for object in target.objects.iter().skip(run.outcome.objects.len()) {
            if let Some(key) = ObjectKey::of(object) {
                run.outcome.objects.push(ObjectOutcome {
                    object: key.display(),
                    action: ObjectAction::NotAttempted,
                });
            }
        }
    }
    run.resources = Some(resources);
    run.outcome.elapsed = started.elapsed();
    run
}

/// The kinds (and namespaces, for a kind watched per namespace) this
/// render's objects, its prune and its record live in.
fn watched_kinds(target: &Target) -> Vec<(GroupVersionKind, BTreeSet<String>)> {
    let keys: BTreeSet<ObjectKey> = target.objects.iter().filter_map(ObjectKey::of).collect();
    let mut kinds: Vec<GroupVersionKind> = PRUNABLE_KINDS
        .iter()
        .map(|(g, v, k)| GroupVersionKind::gvk(g, v, k))
        .collect();
    for key in &keys {
        if !kinds
            .iter()
            .any(|g| g.group == key.group && g.kind == key.kind)
        {
            kinds.push(key.gvk());
        }
    }
    kinds
        .into_iter()
        .map(|gvk| {
            let mut namespaces = namespaces_of(&keys, &gvk);
            if gvk.group.is_empty() && gvk.kind == "ConfigMap" {
                namespaces.insert(revisions::REVISIONS_NAMESPACE.to_string());
            }
            (gvk, namespaces)
        })
        .collect()
}

/// After the wave passed its gate: delete what the render no longer has,
/// then record the revision in the member (when it is a new one).
pub(super) async fn finish(
    target: &Target,
    policy: &PolicyRef,
    options: &Options,
    run: &mut MemberRun,
) {
    let started = std::time::Instant::now();
    let Some(resources) = run.resources.as_mut() else {
        return;
    };
    if options.prune {
        let keep = run.accepted.clone();
        if let Err(status) = prune(
            resources,
            policy,
            &keep,
            &keep,
            options.dry_run,
            &mut run.outcome.pruned,
        )
        .await
        {
            run.outcome.status = status;
        }
    }
    let recorded = run.outcome.before == Some(Runs::Revision(target.revision.clone()));
    if matches!(run.outcome.status, MemberStatus::Applied) && !options.dry_run && !recorded {
        if let Err(message) = record(&resources.client, target, policy).await {
            run.outcome.status = MemberStatus::Failed { message };
        }
    }
    run.outcome.elapsed += started.elapsed();
}

/// The member now has `target`'s revision: say so in its record (the
/// revision it had becomes the previous one).
async fn record(client: &kube::Client, target: &Target, policy: &PolicyRef) -> Result<(), String> {
    let record = revisions::read(client, policy)
        .await
        .map_err(|e| revisions::read_error(policy, &tideway_oci::error_chain(&e)))?;
    // Already recorded (the watch cache had not seen the record yet).
    if record
        .current
        .as_ref()
        .is_some_and(|c| c.revision == target.revision)
    {
        return Ok(());
    }
    let record = revisions::advanced(
        record,
        revisions::Revision {
            revision: target.revision.clone(),
            objects: target.objects.clone(),
        },
    );
    revisions::write(client, policy, &record).await
}

pub(super) fn status_of(failure: Failure, key: &ObjectKey) -> MemberStatus {
    match failure {
        Failure::Unreachable(message) => MemberStatus::Unreachable { message },
        Failure::Failed(message) => MemberStatus::Failed { message },
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

/// Whether the member's copy is the render as Tideway last applied it:
/// every field the render sets has its value, the revision annotation
/// names the render's, and no other manager wrote it since.
fn same_as_rendered(rendered: &Value, live: &DynamicObject) -> bool {
    let Ok(live) = serde_json::to_value(live) else {
        return false;
    };
    let revision = |o: &Value| o["metadata"]["annotations"][REVISION_ANNOTATION].clone();
    revision(rendered) == revision(&live)
        && super::drift::drift(rendered, &live, FIELD_MANAGER, &[STATUS_FIELD_MANAGER]).is_empty()
}

/// Server-side apply of one object (rendered at `revision`) when the
/// member's copy differs from the render (dry run: `dryRun=All` and the
/// diff, always).
async fn apply_object(
    resources: &mut Resources,
    key: &ObjectKey,
    object: &Value,
    revision: &str,
    policy: &PolicyRef,
    options: &Options,
) -> Result<ObjectAction, Failure> {
    let seen = match (&resources.live, options.dry_run) {
        (Some(live), false) => live.seen(key, revision),
        _ => Seen::Unknown,
    };
    if seen == (Seen::Present { verified: true }) {
        return Ok(ObjectAction::Unchanged);
    }
    let api = resources.api_for(key).await?;
    let live = match seen {
        Seen::Absent => None,
        _ => api.get_opt(&key.name).await.map_err(classify)?,
    };
    if let (Some(found), false) = (&live, options.dry_run) {
        if same_as_rendered(object, found) {
            note_verified(resources, key, found, revision, policy);
            return Ok(ObjectAction::Unchanged);
        }
    }
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.dry_run = options.dry_run;
    let result = api
        .patch(&key.name, &params, &Patch::Apply(object))
        .await
        .map_err(classify)?;
    if options.dry_run {
        let before = live.as_ref().map(diff::comparable).unwrap_or(Value::Null);
        let after = diff::comparable(&result);
        let text = diff::unified(&key.display(), &before, &after);
        return Ok(match (&live, text.is_empty()) {
            (None, _) => ObjectAction::WouldCreate { diff: text },
            (Some(_), true) => ObjectAction::Unchanged,
            (Some(_), false) => ObjectAction::WouldChange { diff: text },
        });
    }
    // The apply's answer is the object as stored: the member's half of the
    // health gate reads it there rather than with another request.
    let labelled = result
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY);
    if !labelled {
        return Err(Failure::Failed(format!(
            "{} was applied but is stored without {MANAGED_BY_LABEL}={MANAGED_BY}",
            key.display()
        )));
    }
    note_verified(resources, key, &result, revision, policy);
    Ok(match live {
        None => ObjectAction::Created,
        Some(live) if live.metadata.resource_version == result.metadata.resource_version => {
            ObjectAction::Unchanged
        }
        Some(_) => ObjectAction::Configured,
    })
}

fn note_verified(
    resources: &Resources,
    key: &ObjectKey,
    object: &DynamicObject,
    revision: &str,
    policy: &PolicyRef,
) {
    if let (Some(live), Some(version)) = (&resources.live, &object.metadata.resource_version) {
        live.verified(key, version, revision, policy);
    }
}
