//! Undoing a member's part of a wave that failed its health gate: exactly
//! what this rollout wrote there, and nothing else.
//!
//! What the member had before the rollout is its revision record, which a
//! rollout moves only after its wave passed the gate. So:
//! - a member that already had the rollout's revision (a re-run, a retry,
//!   every resync) has nothing to undo and is left alone, whatever the
//!   rollout repaired there;
//! - otherwise each object this rollout created is deleted, and each it
//!   changed is applied again as the record's render has it. Objects the
//!   rollout did not write are not touched, prune has not run, and the
//!   record is not written: the member is back where it was, record
//!   included.

use super::member::MemberRun;
use super::object::ObjectKey;
use super::outcome::Rollback;
use super::outcome::{ObjectAction, Runs};
use super::server::{classify, Failure};
use super::{revisions, PolicyRef, Target, FIELD_MANAGER};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::Value;
use tideway_oci::error_chain;

/// Undo `run` (this rollout's part in the member); see the module doc.
/// Sets what the member then has in `run.outcome.runs`.
pub(super) async fn rollback(target: &Target, policy: &PolicyRef, run: &mut MemberRun) -> Rollback {
    let before = run.outcome.before.clone();
    if before == Some(Runs::Revision(target.revision.clone())) || run.written.is_empty() {
        run.outcome.runs = before.unwrap_or(Runs::Unknown);
        return Rollback::NothingToUndo;
    }
    let (Some(resources), Some(before)) = (run.resources.as_mut(), before) else {
        run.outcome.runs = Runs::Mixed;
        return Rollback::Failed {
            message: "what the member had before is not known".to_string(),
        };
    };
    let record = match revisions::read(&resources.client, policy).await {
        Ok(record) => record,
        Err(e) => {
            run.outcome.runs = Runs::Mixed;
            return Rollback::Failed {
                message: revisions::read_error(policy, &error_chain(&e)),
            };
        }
    };
    let had: Vec<Value> = record.current.map(|c| c.objects).unwrap_or_default();
    let (mut deleted, mut restored) = (Vec::new(), Vec::new());
    for (key, action) in run.written.iter().rev() {
        let result = match action {
            ObjectAction::Created => delete(resources, key).await.map(|()| &mut deleted),
            _ => match had
                .iter()
                .find(|o| ObjectKey::of(o).is_some_and(|k| k.same_object(key)))
            {
                Some(old) => reapply(resources, key, old, before.revision(), policy)
                    .await
                    .map(|()| &mut restored),
                None => Err(format!(
                    "{} existed before this rollout, and the member's revision record has no render of it to restore",
                    key.display()
                )),
            },
        };
        match result {
            Ok(list) => list.push(key.display()),
            Err(why) => {
                run.outcome.runs = Runs::Mixed;
                let done: Vec<String> = restored.iter().chain(&deleted).cloned().collect();
                let done = if done.is_empty() {
                    String::new()
                } else {
                    format!(" (undone before it: {})", done.join(", "))
                };
                return Rollback::Failed {
                    message: format!("{why}{done}"),
                };
            }
        }
    }
    run.outcome.runs = before.clone();
    Rollback::Restored {
        to: before,
        deleted,
        restored,
    }
}

fn failure_text(key: &ObjectKey, failure: Failure) -> String {
    let why = match failure {
        Failure::Unreachable(m) => format!("unreachable: {m}"),
        Failure::Api(s) => format!("{} ({}): {}", s.reason, s.code, s.message),
        Failure::NoKind(m) | Failure::Failed(m) => m,
    };
    format!("{}: {why}", key.display())
}

async fn delete(resources: &mut super::server::Resources, key: &ObjectKey) -> Result<(), String> {
    let api = resources
        .api_for(key)
        .await
        .map_err(|f| failure_text(key, f))?;
    if let Some(live) = &resources.live {
        live.deleting(key);
    }
    match api.delete(&key.name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(failure_text(key, classify(e))),
    }
}

async fn reapply(
    resources: &mut super::server::Resources,
    key: &ObjectKey,
    object: &Value,
    revision: Option<&str>,
    policy: &PolicyRef,
) -> Result<(), String> {
    let api = resources
        .api_for(key)
        .await
        .map_err(|f| failure_text(key, f))?;
    let stored = api
        .patch(
            &key.name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(object),
        )
        .await
        .map_err(|e| failure_text(key, classify(e)))?;
    if let (Some(live), Some(version), Some(revision)) =
        (&resources.live, &stored.metadata.resource_version, revision)
    {
        live.verified(key, version, revision, policy);
    }
    Ok(())
}
