//! One reconcile of one TrafficPolicy: read its Fleet, compile, roll the
//! render out to the members ([`crate::apply`], prune on), and write what
//! happened to the policy's status, per member and for the whole policy.
//!
//! Idempotent: server-side apply of an unchanged render changes nothing in
//! the members, and the status is written only when it differs from what
//! is there (a transition time changes only with its condition's status).
//! An invalid policy is reported with the field path and nothing is
//! applied: the members keep the last good render.
//!
//! [`reconcile`] hands the policy to kube-runtime's `finalizer()`: it adds
//! [`FINALIZER`] before the first rollout, runs [`apply()`] while the
//! policy lives and [`cleanup()`] once it is deleted, and removes the
//! finalizer when the cleanup succeeded. A cleanup that could not reach
//! every member is an error ([`ReconcileError::CleanupPending`]): the
//! finalizer stays and the error policy retries it every 10 s, not with
//! the backoff of a failing hub (a member is waited for, not the hub).

use super::events::PolicyEvent;
use super::metrics::Metrics;
use crate::api::{Condition, Fleet, MemberRolloutStatus, TrafficPolicy, TrafficPolicyStatus};
use crate::apply::live::{LiveCache, Verdict};
use crate::apply::object::ObjectKey;
use crate::apply::{self, MemberOutcome, MemberStatus, ObjectAction, Options, PolicyRef};
use crate::apply::{Rollback, Runs};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer, Event};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::api::{DEGRADED, PROGRESSING, READY};
pub use crate::apply::STATUS_FIELD_MANAGER;
/// The finalizer `tideway run` puts on every policy: a deleted policy's
/// objects are pruned from every member before the policy goes (nothing
/// would garbage-collect them: they live in other clusters).
pub const FINALIZER: &str = "traffic.tideway.dev/cleanup";

/// What every reconcile shares.
pub struct Context {
    pub hub: Client,
    /// Member contexts for Fleet members with `api.kubeconfigContext` (a
    /// pod has none; its members use `secretRef`).
    pub kubeconfig: Option<kube::config::Kubeconfig>,
    pub metrics: Arc<Metrics>,
    /// Member clients, shared by the reconciles and the endpoint watches.
    pub clients: apply::connect::ClientCache,
    /// How often a policy is reconciled again with no change (drift repair,
    /// an unreachable member coming back).
    pub resync: Duration,
    /// Consecutive hub failures per policy (`namespace/name`): the error
    /// policy's exponential backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Per policy, what the last rollout was made of and when: a trigger
    /// with the same inputs before it is due again changes nothing in the
    /// members and is skipped (status writes, watch relists).
    pub applied: Mutex<HashMap<String, Applied>>,
    /// Per policy, the generation whose reconcile finished (rolled out,
    /// invalid, Fleet missing): a policy in the store with another
    /// generation, or none, has a change waiting — see [`resync_yields`].
    pub handled: Mutex<HashMap<String, Option<i64>>>,
    /// Ready endpoints per member and service.
    pub discovery: Arc<super::discovery::Discovery>,
    /// The weights API's state, when served: its services follow the
    /// policies.
    pub weights: Option<Arc<crate::weights::WeightsState>>,
    pub policies: kube::runtime::reflector::Store<TrafficPolicy>,
    /// The hub's Fleets, as the controller's watch has them.
    pub fleets: kube::runtime::reflector::Store<Fleet>,
    /// Events on the policies (events.k8s.io/v1): rollouts, rollbacks,
    /// degraded members, cleanup.
    pub events: super::events::EventRecorder,
    /// The dashboard served with the weights API (`--ui`): it shows each
    /// policy's rollout status and runs its what-if on the policy's config.
    pub dashboard: Option<Arc<crate::ui::Dashboard>>,
}

/// What a render is made of: the same inputs always compile to the same
/// render (and revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub policy_generation: Option<i64>,
    pub fleet_generation: Option<i64>,
    /// Destinations taken out for want of ready endpoints.
    pub drained: Vec<String>,
}

/// Per member of a rollout: its watch cache, and the render's objects
/// there.
pub type WatchedMembers = BTreeMap<String, (Arc<LiveCache>, Arc<[ObjectKey]>)>;

/// The last rollout of a policy.
#[derive(Clone)]
pub struct Applied {
    pub inputs: Inputs,
    pub revision: String,
    pub at: std::time::Instant,
    /// When the same inputs are worth a rollout again (the resync after a
    /// complete one, sooner after a failure).
    pub again_in: Duration,
    /// Every member took the render.
    pub complete: bool,
    /// Per member, its watch cache and the render's objects there: what
    /// tells, between rollouts and without compiling, whether the member
    /// still has the render (`None`: a member had no cache).
    pub members: Option<WatchedMembers>,
}

/// A reconcile that could not finish: the hub failed (reading the Fleet,
/// writing status, the finalizer), or a deleted policy's objects could not
/// be pruned from every member yet. A live policy's member failures are
/// not errors: they are status.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("hub API: {0}")]
    Hub(#[from] kube::Error),
    /// The policy is deleted and some members still have its objects.
    #[error("{0}")]
    CleanupPending(String),
    /// The finalizer helper refused the policy (no name).
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl From<finalizer::Error<ReconcileError>> for ReconcileError {
    fn from(e: finalizer::Error<ReconcileError>) -> Self {
        match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => {
                Self::Hub(e)
            }
            other => Self::Finalizer(other.to_string()),
        }
    }
}

/// How long a deleted policy waits before its cleanup is tried again.
const CLEANUP_RETRY: Duration = Duration::from_secs(10);

fn key(policy: &TrafficPolicy) -> String {
    format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

/// The error policy: back off exponentially per policy (1 s, 2 s, … 5 min).
pub fn error_policy(
    policy: Arc<TrafficPolicy>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    if let ReconcileError::CleanupPending(_) = error {
        // Not a failure of the hub: an unreachable member, which the
        // cleanup reported (log, Event) and which is retried at a steady
        // pace until it is back.
        return Action::requeue(CLEANUP_RETRY);
    }
    ctx.metrics.reconcile_errors.inc();
    ctx.metrics.count_reconcile("error");
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(key(&policy)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300));
    tracing::warn!(policy = %key(&policy), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: None,
    }
}

/// Carry each condition's transition time over from `old` when its status
/// did not change; stamp `now` otherwise.
fn keep_transition_times(new: &mut [Condition], old: &[Condition], now: &str) {
    for c in new {
        let before = old.iter().find(|o| o.type_ == c.type_);
        c.last_transition_time = match before {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => Some(now.to_string()),
        };
    }
}

/// A member's outcome as its three conditions and a short outcome name
/// (the metrics label).
pub fn member_conditions(
    outcome: &MemberOutcome,
    generation: Option<i64>,
) -> (Vec<Condition>, &'static str) {
    let status = &outcome.status;
    let (reason, degraded, progressing, name) = match status {
        MemberStatus::Applied => ("Applied", false, "rollout finished", "applied"),
        MemberStatus::Unreachable { .. } => (
            "Unreachable",
            true,
            "waiting for the member's API server",
            "unreachable",
        ),
        MemberStatus::Conflict { .. } => {
            ("FieldConflict", true, "stopped at the conflict", "conflict")
        }
        MemberStatus::Rejected { .. } => (
            "Rejected",
            true,
            "stopped at the rejected object",
            "rejected",
        ),
        MemberStatus::Failed { .. } => ("ApplyFailed", true, "stopped at the failure", "failed"),
        MemberStatus::RolledBack { .. } => ("RolledBack", false, "rollout stopped", "rolled_back"),
        MemberStatus::Skipped { reason } => ("WaveBlocked", false, reason.as_str(), "skipped"),
    };
    let message = match status {
        MemberStatus::Applied => applied_text(outcome),
        MemberStatus::Unreachable { .. }
        | MemberStatus::RolledBack { .. }
        | MemberStatus::Skipped { .. } => status_text(status),
        _ => format!("{}{}", status_text(status), what_else_happened(outcome)),
    };
    let degraded_message = match status {
        MemberStatus::Applied => "every object accepted".to_string(),
        MemberStatus::Skipped { .. } => "not attempted".to_string(),
        _ => message.clone(),
    };
    let ready = matches!(status, MemberStatus::Applied);
    let g = generation;
    (
        vec![
            condition(READY, ready, reason, message, g),
            condition(PROGRESSING, false, reason, progressing.to_string(), g),
            condition(DEGRADED, degraded, reason, degraded_message, g),
        ],
        name,
    )
}

/// `N objects applied (… created, … configured, … unchanged, … pruned)`.
fn applied_text(outcome: &MemberOutcome) -> String {
    let pruned = if outcome.pruned.is_empty() {
        String::new()
    } else {
        format!(", {} pruned", outcome.pruned.len())
    };
    format!(
        "{} objects applied ({} created, {} configured, {} unchanged{pruned})",
        outcome.objects.len(),
        outcome.count(&ObjectAction::Created),
        outcome.count(&ObjectAction::Configured),
        outcome.count(&ObjectAction::Unchanged),
    )
}

/// After a member's failure: how far it got, and what its rollback did.
fn what_else_happened(outcome: &MemberOutcome) -> String {
    let total = outcome.objects.len();
    let applied = outcome
        .objects
        .iter()
        .filter(|o| {
            matches!(
                o.action,
                ObjectAction::Created | ObjectAction::Configured | ObjectAction::Unchanged
            )
        })
        .count();
    let mut text = if applied > 0 && applied < total {
        format!(" ({applied} of {total} objects applied before it; the rest not attempted)")
    } else {
        String::new()
    };
    match &outcome.rollback {
        Some(Rollback::NothingToUndo) => {
            if let Runs::Revision(r) = &outcome.runs {
                text.push_str(&format!("; nothing of this rollout to undo: it keeps {r}"));
            }
        }
        Some(undone) => text.push_str(&format!("; {undone}")),
        None => {}
    }
    text
}

/// A member's status in words: what the API server said, the fields and
/// their managers, where the rollout stopped.
fn status_text(status: &MemberStatus) -> String {
    match status {
        MemberStatus::Applied => "applied".to_string(),
        MemberStatus::Unreachable { message } => message.clone(),
        MemberStatus::Failed { message } => message.clone(),
        MemberStatus::Conflict {
            object, conflicts, ..
        } => format!(
            "{object}: fields owned by another manager, not forced: {}",
            conflicts
                .iter()
                .map(|f| format!("{} (owned by {:?})", f.field, f.manager))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        MemberStatus::Rejected {
            object,
            code,
            reason,
            message,
        } => format!("{object} rejected ({code} {reason}): {message}"),
        MemberStatus::Skipped { reason } => reason.clone(),
        MemberStatus::RolledBack { to, reason } => format!("rolled back to {to}: {reason}"),
    }
}

/// The whole policy's status from the rollout's report.
///
/// A member's `revision` is what it has after the rollout: the render's
/// when it took it, what a rollback put back, none when it has nothing of
/// the policy or parts of two revisions; for a member the rollout could
/// not reach or did not try, what the status said before. The policy's
/// Degraded reason is its degraded members' (FieldConflict, Rejected, …)
/// when they share one, and its message carries each one's own message.
pub fn status_from_report(
    report: &apply::FleetReport,
    revision: &str,
    generation: Option<i64>,
    old: Option<&TrafficPolicyStatus>,
) -> TrafficPolicyStatus {
    let mut members = Vec::new();
    let mut degraded: Vec<(String, Condition)> = Vec::new();
    let mut waiting = Vec::new();
    for outcome in &report.members {
        let (conditions, _) = member_conditions(outcome, generation);
        let ready = matches!(outcome.status, MemberStatus::Applied);
        if let Some(why) = conditions
            .iter()
            .find(|c| c.type_ == DEGRADED && c.status == "True")
        {
            degraded.push((outcome.member.clone(), why.clone()));
        } else if !ready {
            waiting.push(outcome.member.clone());
        }
        let previous = old.and_then(|o| o.members.iter().find(|m| m.name == outcome.member));
        members.push(MemberRolloutStatus {
            name: outcome.member.clone(),
            wave: outcome.wave,
            revision: match &outcome.runs {
                Runs::Revision(r) => Some(r.clone()),
                Runs::Nothing | Runs::Mixed => None,
                Runs::Unknown => previous.and_then(|p| p.revision.clone()),
            },
            conditions,
        });
    }
    let total = report.members.len();
    let ready = degraded.is_empty() && waiting.is_empty();
    let g = generation;
    let conditions = if ready {
        vec![
            condition(
                READY,
                true,
                "Applied",
                format!("revision {revision} applied to all {total} members"),
                g,
            ),
            condition(PROGRESSING, false, "Applied", "rollout finished".into(), g),
            condition(
                DEGRADED,
                false,
                "Applied",
                "every member has the render".into(),
                g,
            ),
        ]
    } else {
        let mut parts = Vec::new();
        if !degraded.is_empty() {
            let each: Vec<String> = degraded
                .iter()
                .map(|(member, why)| format!("{member} ({}: {})", why.reason, why.message))
                .collect();
            parts.push(format!("degraded: {}", each.join("; ")));
        }
        if !waiting.is_empty() {
            parts.push(format!("not rolled out: {}", waiting.join(", ")));
        }
        let members_reason = match degraded.first() {
            Some((_, first)) if degraded.iter().all(|(_, c)| c.reason == first.reason) => {
                first.reason.clone()
            }
            Some(_) => "MembersDegraded".to_string(),
            None if report.stopped_at_wave.is_some() => "WaveFailed".to_string(),
            None => "NotRolledOut".to_string(),
        };
        let reason = match report.stopped_at_wave {
            Some(_) => "WaveFailed".to_string(),
            None => members_reason.clone(),
        };
        let msg = format!(
            "revision {revision} on {} of {total} members; {}{}",
            total - degraded.len() - waiting.len(),
            parts.join("; "),
            report
                .stopped_at_wave
                .map(|w| format!("; rollout stopped at wave {w}"))
                .unwrap_or_default()
        );
        vec![
            condition(READY, false, &reason, msg.clone(), g),
            condition(
                PROGRESSING,
                false,
                &reason,
                if report.stopped_at_wave.is_some() {
                    "rollout stopped".into()
                } else {
                    "rollout finished".into()
                },
                g,
            ),
            condition(DEGRADED, !degraded.is_empty(), &members_reason, msg, g),
        ]
    };
    TrafficPolicyStatus {
        observed_generation: generation,
        revision: Some(revision.to_string()),
        conditions,
        members,
        drained: Vec::new(),
    }
}

/// The status of a policy that did not compile (or whose Fleet is missing):
/// members untouched, their entries kept as they were.
fn invalid_status(
    reason: &str,
    message: String,
    generation: Option<i64>,
    old: Option<&TrafficPolicyStatus>,
) -> TrafficPolicyStatus {
    TrafficPolicyStatus {
        observed_generation: generation,
        revision: old.and_then(|o| o.revision.clone()),
        conditions: vec![
            condition(READY, false, reason, message.clone(), generation),
            condition(
                PROGRESSING,
                false,
                reason,
                "nothing applied".into(),
                generation,
            ),
            condition(DEGRADED, true, reason, message, generation),
        ],
        members: old.map(|o| o.members.clone()).unwrap_or_default(),
        drained: old.map(|o| o.drained.clone()).unwrap_or_default(),
    }
}

fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    // Whole seconds, as metav1.Time serialises.
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Write `status` unless it equals what the policy has (transition times
/// carried over first).
async fn write_status(
    ctx: &Context,
    api: &Api<TrafficPolicy>,
    policy: &TrafficPolicy,
    mut status: TrafficPolicyStatus,
) -> Result<(), kube::Error> {
    if let Some(ui) = &ctx.dashboard {
        ui.set_rollout(
            &key(policy),
            serde_json::to_value(&status).unwrap_or_default(),
        );
    }
    let old = policy.status.clone().unwrap_or_default();
    let now = now_rfc3339();
    keep_transition_times(&mut status.conditions, &old.conditions, &now);
    for member in &mut status.members {
        let before = old
            .members
            .iter()
            .find(|m| m.name == member.name)
            .map(|m| m.conditions.clone())
            .unwrap_or_default();
        keep_transition_times(&mut member.conditions, &before, &now);
    }
    if policy.status.as_ref() == Some(&status) {
        return Ok(());
    }
    // Server-side apply of the whole status by the controller's own field
    // manager: a field the new status leaves out (`drained` once nothing is
    // drained, a member's revision) is removed, which a merge patch would
    // keep.
    let patch = json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": "TrafficPolicy",
        "status": status,
    });
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// Publish an Event on `policy`; a failure is logged, never fatal (the
/// status says the same).
async fn event(ctx: &Context, policy: &TrafficPolicy, event: PolicyEvent) {
    use kube::Resource;
    let reason = event.reason;
    if let Err(e) = ctx.events.publish(&policy.object_ref(&()), event).await {
        tracing::warn!(policy = %key(policy), error = %e, reason, "could not record an Event");
    }
}

fn warning(reason: &'static str, action: &'static str, note: String) -> PolicyEvent {
    PolicyEvent {
        warning: true,
        reason,
        action,
        note,
    }
}

/// The policy is being deleted: prune its objects from every member of its
/// Fleet, then let it go. A member that cannot be cleaned keeps the
/// finalizer (retried); without a Fleet there are no members to reach.
async fn cleanup(policy: &TrafficPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let reference = PolicyRef::of(policy);
    let fleets: Api<Fleet> = Api::all(ctx.hub.clone());
    let mut failed = Vec::new();
    let mut deleted = 0;
    let mut members = 0;
    match fleets.get_opt(&policy.spec.fleet).await? {
        None => {
            event(
                ctx,
                policy,
                warning(
                    "CleanupSkipped",
                    "Cleanup",
                    format!(
                        "Fleet {:?} not found: the members' objects of this policy were not pruned",
                        policy.spec.fleet
                    ),
                ),
            )
            .await;
        }
        Some(fleet) => {
            for member in &fleet.spec.clusters {
                members += 1;
                let client = match ctx
                    .clients
                    .member_client(member, ctx.kubeconfig.as_ref(), Some(&ctx.hub))
                    .await
                {
                    Ok(c) => c,
                    Err(why) => {
                        failed.push(format!("{}: {why}", member.name));
                        continue;
                    }
                };
                match apply::remove_all(&client, &reference).await {
                    Ok(objects) => {
                        deleted += objects.len();
                        tracing::info!(policy = %key(policy), member = %member.name, deleted = objects.len(), "pruned the deleted policy's objects");
                    }
                    Err(status) => {
                        failed.push(format!("{}: {}", member.name, status_line(&status)))
                    }
                }
            }
        }
    }
    if !failed.is_empty() {
        let msg = format!(
            "the policy is deleted; its objects are still in: {} (retried)",
            failed.join("; ")
        );
        tracing::warn!(policy = %key(policy), "{msg}");
        event(
            ctx,
            policy,
            warning("CleanupPending", "Cleanup", msg.clone()),
        )
        .await;
        return Err(ReconcileError::CleanupPending(msg));
    }
    event(
        ctx,
        policy,
        PolicyEvent {
            warning: false,
            reason: "CleanedUp",
            action: "Cleanup",
            note: format!("deleted {deleted} objects of this policy from {members} members"),
        },
    )
    .await;
    let memo = key(policy);
    ctx.applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&memo);
    ctx.handled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&memo);
    Ok(Action::await_change())
}

/// The Events of one rollout: `WaveFailed` when a wave failed its gate,
/// `RolledBack` for each member a rollback put back (or could not),
/// `Applied` when it changed something in a member, `Degraded` when a
/// member does not have the render.
async fn report_events(
    ctx: &Context,
    policy: &TrafficPolicy,
    report: &apply::FleetReport,
    revision: &str,
    status: &TrafficPolicyStatus,
) {
    if let Some(wave) = report.stopped_at_wave {
        let failed: Vec<String> = report
            .members
            .iter()
            .filter(|m| m.wave == wave)
            .filter(|m| {
                !matches!(
                    m.status,
                    MemberStatus::Applied | MemberStatus::RolledBack { .. }
                )
            })
            .map(|m| format!("{} ({})", m.member, status_line(&m.status)))
            .collect();
        let note = format!(
            "revision {revision}: wave {wave} failed its health gate at {}; later waves not rolled out",
            failed.join("; ")
        );
        event(ctx, policy, warning("WaveFailed", "Rollout", note)).await;
    }
    for member in &report.members {
        let Some(undone) = &member.rollback else {
            continue;
        };
        if *undone == Rollback::NothingToUndo {
            continue;
        }
        let note = format!(
            "{}: {undone}; wave {} failed its health gate for revision {revision}",
            member.member, member.wave
        );
        event(ctx, policy, warning("RolledBack", "Rollback", note)).await;
    }
    if report.all_applied() {
        let changed = report.members.iter().any(|m| {
            m.count(&ObjectAction::Created) + m.count(&ObjectAction::Configured) > 0
                || !m.pruned.is_empty()
        });
        if changed {
            let note = format!(
                "revision {revision} applied to all {} members",
                report.members.len()
            );
            let applied = PolicyEvent {
                warning: false,
                reason: "Applied",
                action: "Rollout",
                note,
            };
            event(ctx, policy, applied).await;
        }
    } else if let Some(ready) = status.conditions.iter().find(|c| c.type_ == READY) {
        event(
            ctx,
            policy,
            warning("Degraded", "Rollout", ready.message.clone()),
        )
        .await;
    }
}

/// A member status in one line, its kind said when the text alone would
/// not (events, cleanup).
fn status_line(status: &MemberStatus) -> String {
    match status {
        MemberStatus::Unreachable { message } => format!("unreachable: {message}"),
        other => status_text(other),
    }
}

/// `policy`'s current generation has been reconciled.
fn mark_handled(ctx: &Context, policy: &TrafficPolicy) {
    ctx.handled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key(policy), policy.metadata.generation);
}

/// `policy` has no resync due (invalid, Fleet missing, being deleted): no
/// other resync waits for it.
fn forget_rollout(ctx: &Context, policy: &TrafficPolicy) {
    ctx.applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key(policy));
}

/// How long a resync that yields waits before it asks again.
fn yield_delay(resync: Duration) -> Duration {
    // Long enough that yielding costs little (each ask reads the Fleet and
    // compiles), short against the resync it delays.
    (resync / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Whether the resync of `key` (same inputs as its last rollout, `overdue`
/// past its due time) should wait: changes first, then the longest-waiting
/// resync.
///
/// kube-rs' scheduler hands a freed slot to the due policies in hash order,
/// not in the order they came due. When resyncs need more than the
/// `--concurrency` slots can give (1,000 policies, a resync shorter than a
/// pass over them), the policies early in that order were resynced again
/// and again while the rest — new policies among them — never got a slot:
/// the fleet benchmark saw 200 of 1,000 policies rolled out every resync
/// and 800 never. So a resync gives way:
/// - to a policy that changed or was never reconciled (a new generation in
///   the store), until it is itself a whole resync late (a change that
///   keeps failing, e.g. a cleanup whose member is down, must not stop
///   drift repair for good);
/// - to a resync that has waited a second or more longer than this one
///   (`others_waited`: how long each other policy's due resync has waited;
///   only policies in the store and not in the error policy's backoff).
///
/// The resync is cheap to ask again: it yields before touching a member.
/// With fewer policies than slots can serve nothing ever waits.
pub fn resync_yields(
    overdue: Duration,
    resync: Duration,
    change_waiting: bool,
    mut others_waited: impl Iterator<Item = Duration>,
) -> bool {
    if change_waiting && overdue < resync {
        return true;
    }
    let slack = Duration::from_secs(1);
    others_waited.any(|waited| waited > overdue + slack)
}

/// The policy's Fleet: from the controller's watch of Fleets, else (not
/// listed yet, or just created) read from the hub.
async fn fleet_of(ctx: &Context, policy: &TrafficPolicy) -> Result<Option<Fleet>, kube::Error> {
    let name = kube::runtime::reflector::ObjectRef::<Fleet>::new(&policy.spec.fleet);
    if let Some(fleet) = ctx.fleets.get(&name) {
        return Ok(Some(fleet.as_ref().clone()));
    }
    let fleets: Api<Fleet> = Api::all(ctx.hub.clone());
    fleets.get_opt(&policy.spec.fleet).await
}

/// Reconcile one policy; see the module doc.
pub async fn reconcile(
    policy: Arc<TrafficPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = policy.namespace().unwrap_or_default();
    let api: Api<TrafficPolicy> = Api::namespaced(ctx.hub.clone(), &namespace);
    if policy.metadata.deletion_timestamp.is_some() {
        // Deleted, whether ours to clean or not: no resync is due.
        forget_rollout(&ctx, &policy);
    }
    let (api, ctx) = (&api, ctx.as_ref());
    // Adding the finalizer is a change of its own: the reconcile it
    // triggers rolls out.
    let outcome = finalizer(api, FINALIZER, policy, |event| async move {
        match event {
            Event::Apply(policy) => apply(&policy, api, ctx).await,
            Event::Cleanup(policy) => cleanup(&policy, ctx).await,
        }
    })
    .await;
    match outcome {
        // Gone already (another finalizer was last).
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => {
            Ok(Action::await_change())
        }
        other => other.map_err(ReconcileError::from),
    }
}

/// Roll the live policy out: compile it against its Fleet (destinations
/// without ready endpoints drained), unless nothing changed since the last
/// rollout, and apply it to the members.
async fn apply(
    policy: &TrafficPolicy,
    api: &Api<TrafficPolicy>,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let Some(fleet) = fleet_of(ctx, policy).await? else {
        let msg = format!(
            "spec.fleet: Fleet {:?} not found in the hub",
            policy.spec.fleet
        );
        return not_applied(ctx, api, policy, "FleetNotFound", msg).await;
    };
    let (drained_policy, drained) = super::discovery::drain(policy, |member| {
        ctx.discovery.ready(&service_key(policy, member))
    });
    let inputs = Inputs {
        policy_generation: policy.metadata.generation,
        fleet_generation: fleet.metadata.generation,
        drained,
    };
    if let Some(action) = nothing_to_do(ctx, policy, &inputs) {
        return Ok(action);
    }
    let compiled = match crate::compile(policy, &fleet, None) {
        Ok(c) if inputs.drained.is_empty() => c,
        Ok(undrained) => match crate::compile(&drained_policy, &fleet, None) {
            Ok(c) => {
                tracing::info!(policy = %key(policy), drained = ?inputs.drained, "destinations without ready endpoints taken out");
                c
            }
            Err(e) => {
                tracing::warn!(policy = %key(policy), error = %e, "draining would make the policy invalid; not drained");
                undrained
            }
        },
        Err(errors) => {
            return not_applied(ctx, api, policy, "InvalidPolicy", errors.to_string()).await
        }
    };
    publish_config(ctx, policy, &fleet);
    roll_out(ctx, api, policy, &fleet, &compiled, inputs).await
}

/// (member, namespace, name) of the policy's service, for discovery.
fn service_key(policy: &TrafficPolicy, member: &str) -> super::discovery::ServiceKey {
    let namespace = policy
        .spec
        .service
        .namespace
        .clone()
        .or_else(|| policy.namespace())
        .unwrap_or_default();
    (
        member.to_string(),
        namespace,
        policy.spec.service.name.clone(),
    )
}

/// The policy cannot be rendered (`reason`: its Fleet is missing, it is
/// invalid): say so, apply nothing (the members keep the last good render).
async fn not_applied(
    ctx: &Context,
    api: &Api<TrafficPolicy>,
    policy: &TrafficPolicy,
    reason: &'static str,
    msg: String,
) -> Result<Action, ReconcileError> {
    tracing::warn!(policy = %key(policy), "{msg}; nothing applied");
    let old = policy.status.as_ref();
    let said = old
        .and_then(|o| o.conditions.iter().find(|c| c.type_ == READY))
        .is_some_and(|c| c.reason == reason && c.message == msg);
    if !said && reason == "InvalidPolicy" {
        let note = format!("nothing applied: {msg}");
        event(ctx, policy, warning(reason, "Validate", note)).await;
    }
    let generation = policy.metadata.generation;
    write_status(
        ctx,
        api,
        policy,
        invalid_status(reason, msg, generation, old),
    )
    .await?;
    ctx.metrics.count_reconcile("invalid");
    mark_handled(ctx, policy);
    forget_rollout(ctx, policy);
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key(policy));
    Ok(Action::await_change())
}

/// The weights API and the dashboard follow the policies' configuration.
fn publish_config(ctx: &Context, policy: &TrafficPolicy, fleet: &Fleet) {
    if let Some(weights) = &ctx.weights {
        let services: Vec<_> = ctx
            .policies
            .state()
            .iter()
            .map(|p| crate::weights::ServiceBase::from_policy(p))
            .collect();
        if let Err(e) = weights.replace_services(services) {
            tracing::warn!(error = %e, "weights API: policies not taken");
        }
    }
    if let Some(ui) = &ctx.dashboard {
        // The what-if runs on the config this policy's filters run.
        match crate::compile::what_if_config(policy, fleet) {
            Ok(Some(config)) => ui.set_config(&policy.spec.service.name, config),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(policy = %key(policy), error = %e, "dashboard: no plugin config")
            }
        }
    }
}

/// When the last rollout had these inputs: `Some(when to look again)` if
/// there is nothing to do now, decided from memory and the members' watch
/// caches alone (no compile, no request). `None`: roll out.
fn nothing_to_do(ctx: &Context, policy: &TrafficPolicy, inputs: &Inputs) -> Option<Action> {
    let memo_key = key(policy);
    let done = ctx
        .applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&memo_key)
        .cloned()?;
    if done.inputs != *inputs {
        return None;
    }
    let age = done.at.elapsed();
    let members_say = || members_need_rollout(&done, &PolicyRef::of(policy));
    if age < done.again_in {
        // Not due: only a drift from a complete rollout is acted on now
        // (after a failed one the same render would only fail again, and
        // flap the wave it rolled back) — or a trigger the watches cannot
        // yet judge (one has not listed): the rollout then reads.
        if done.complete {
            match members_say() {
                Some(false) => {}
                Some(true) => {
                    tracing::info!(policy = %memo_key, "a member's objects changed under Tideway: repairing");
                    return None;
                }
                None => {
                    tracing::debug!(policy = %memo_key, "the members' watches cannot tell yet: reading the members");
                    return None;
                }
            }
        }
        ctx.metrics.count_reconcile("unchanged");
        return Some(Action::requeue(done.again_in - age));
    }
    if done.complete && members_say() == Some(false) {
        // Due, and every member's watch says it has the render as Tideway
        // left it: nothing to send anywhere.
        let again_in = done.again_in;
        remember(
            ctx,
            memo_key,
            Applied {
                at: std::time::Instant::now(),
                ..done
            },
        );
        ctx.metrics.count_reconcile("unchanged");
        return Some(Action::requeue(again_in));
    }
    let overdue = age - done.again_in;
    let store = ctx.policies.state();
    let live: Vec<(&TrafficPolicy, String)> = store
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.as_ref(), key(p)))
        .filter(|(_, k)| *k != memo_key)
        .collect();
    let change_waiting = {
        let handled = ctx.handled.lock().unwrap_or_else(|p| p.into_inner());
        live.iter()
            .any(|(p, k)| handled.get(k) != Some(&p.metadata.generation))
    };
    let now = std::time::Instant::now();
    let yields = {
        // No await below: the locks are held for the scan only.
        let failing = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let applied = ctx.applied.lock().unwrap_or_else(|p| p.into_inner());
        let others_waited = live
            .iter()
            .filter(|(_, k)| !failing.contains_key(k))
            .filter_map(|(_, k)| applied.get(k))
            .map(|d| now.saturating_duration_since(d.at + d.again_in));
        resync_yields(overdue, ctx.resync, change_waiting, others_waited)
    };
    if yields {
        ctx.metrics.count_reconcile("yielded");
        return Some(Action::requeue(yield_delay(ctx.resync)));
    }
    None
}

/// Roll `compiled` out to the Fleet's members, write the status and the
/// events, and remember the rollout.
async fn roll_out(
    ctx: &Context,
    api: &Api<TrafficPolicy>,
    policy: &TrafficPolicy,
    fleet: &Fleet,
    compiled: &crate::Compiled,
    inputs: Inputs,
) -> Result<Action, ReconcileError> {
    // One client (and watch cache) per member, for the rollout and the
    // endpoint watches.
    let mut clients = BTreeMap::new();
    for member in &fleet.spec.clusters {
        let client = ctx
            .clients
            .member(member, ctx.kubeconfig.as_ref(), Some(&ctx.hub))
            .await;
        clients.insert(member.name.clone(), client);
    }
    for destination in &policy.spec.destinations {
        if let Some(Ok(member)) = clients.get(&destination.cluster) {
            ctx.discovery.watch(
                service_key(policy, &destination.cluster),
                &member.watch_client,
                kube::runtime::reflector::ObjectRef::from(policy),
            );
        }
    }
    let targets = apply::targets_with(compiled, fleet, &clients);
    let revision = apply::revision(compiled);
    let members = watched_members(&targets);
    let options = Options {
        prune: true,
        ..Options::default()
    };
    let policy_key = key(policy);
    let report = apply::apply(targets, &PolicyRef::of(policy), &options, &mut |step| {
        log_progress(&policy_key, step)
    })
    .await;
    let generation = policy.metadata.generation;
    let mut unreachable = false;
    for outcome in &report.members {
        let (_, name) = member_conditions(outcome, generation);
        unreachable |= name == "unreachable";
        if name != "skipped" {
            ctx.metrics
                .observe_member(&outcome.member, name, outcome.elapsed.as_secs_f64());
        }
    }
    let mut status = status_from_report(&report, &revision, generation, policy.status.as_ref());
    status.drained = inputs.drained.clone();
    report_events(ctx, policy, &report, &revision, &status).await;
    let complete = report.all_applied();
    write_status(ctx, api, policy, status).await?;
    ctx.metrics
        .count_reconcile(if complete { "applied" } else { "degraded" });
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&policy_key);
    // A member that is down, or refused something, is retried sooner than
    // the resync (it may come back, or be fixed, without any hub change) —
    // but not on every trigger: a failed wave is rolled back, and trying
    // the same render again at once (the status write is a trigger) would
    // only flap that wave between the two revisions.
    let again_in = if complete {
        ctx.resync
    } else if unreachable {
        Duration::from_secs(15).min(ctx.resync)
    } else {
        Duration::from_secs(60).min(ctx.resync)
    };
    mark_handled(ctx, policy);
    remember(
        ctx,
        policy_key,
        Applied {
            inputs,
            revision,
            at: std::time::Instant::now(),
            again_in,
            complete,
            members,
        },
    );
    Ok(Action::requeue(again_in))
}

/// Each target's watch cache and object keys (members with the same
/// objects share one list); `None` when a target has no cache.
fn watched_members(targets: &[apply::Target]) -> Option<WatchedMembers> {
    let mut out = BTreeMap::new();
    let mut last: Option<Arc<[ObjectKey]>> = None;
    for target in targets {
        let live = target.live.as_ref()?;
        let keys: Vec<ObjectKey> = target.objects.iter().filter_map(ObjectKey::of).collect();
        let keys = match &last {
            Some(previous) if previous[..] == keys[..] => previous.clone(),
            _ => Arc::from(keys),
        };
        last = Some(keys.clone());
        out.insert(target.member.clone(), (live.clone(), keys));
    }
    Some(out)
}

fn remember(ctx: &Context, policy: String, applied: Applied) {
    ctx.applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(policy, applied);
}

/// Whether any member of the last rollout needs its render again, from
/// the members' watch caches alone: `Some(true)` when one does,
/// `Some(false)` when every member has it as Tideway left it, `None` when
/// a cache cannot tell (or a member has none: it was unreachable).
fn members_need_rollout(done: &Applied, policy: &PolicyRef) -> Option<bool> {
    let mut unknown = false;
    for (member, (live, keys)) in done.members.as_ref()? {
        match live.needs_rollout(policy, &done.revision, keys) {
            Verdict::InSync => {}
            Verdict::Needed(why) => {
                tracing::debug!(%policy, %member, "needs a rollout: {why}");
                return Some(true);
            }
            Verdict::Unknown(why) => {
                tracing::debug!(%policy, %member, "cannot tell from the watches: {why}");
                unknown = true;
            }
        }
    }
    (!unknown).then_some(false)
}

/// The rollout's steps that a user of `tideway run` must be able to find
/// in its log: a wave failing its gate and each rollback (at warn), every
/// member's outcome (at info).
fn log_progress(policy: &str, step: &apply::Progress) {
    use apply::Progress;
    let line = apply::progress_line(step);
    match step {
        Progress::WaveStarted { .. } => {}
        Progress::WaveGate { passed: true, .. } => tracing::debug!(%policy, "{line}"),
        Progress::WaveGate { .. } => tracing::warn!(%policy, "{line}"),
        Progress::RolledBack {
            rollback: Rollback::NothingToUndo,
            ..
        } => tracing::info!(%policy, "{}", line.trim()),
        Progress::RolledBack { .. } => tracing::warn!(%policy, "{}", line.trim()),
        Progress::MemberDone(_) => tracing::info!(%policy, "{}", line.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(member: &str, status: MemberStatus) -> MemberOutcome {
        MemberOutcome::new(member, 0, status)
    }

    #[test]
    fn status_json_has_no_nulls_and_names_the_degraded_member() {
        let report = apply::FleetReport {
            members: vec![
                outcome("a", MemberStatus::Applied),
                outcome(
                    "b",
                    MemberStatus::Rejected {
                        object: "WasmPlugin p/x".into(),
                        code: 422,
                        reason: "Invalid".into(),
                        message: "spec.priority: too big".into(),
                    },
                ),
            ],
            stopped_at_wave: None,
        };
        let status = status_from_report(&report, "sha256:00", Some(3), None);
        let text = serde_json::to_string(&status).expect("json");
        eprintln!("{text}");
        assert!(!text.contains("null"), "{text}");
        assert!(!text.contains("\"message\":\"\""), "{text}");
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains("degraded: b"), "{}", ready.message);
    }

    #[test]
    fn a_resync_yields_to_changes_and_to_longer_waiting_resyncs_only() {
        let resync = Duration::from_secs(60);
        let secs = Duration::from_secs;
        let none = || std::iter::empty::<Duration>();
        // Alone and nothing changed: it runs.
        assert!(!resync_yields(secs(5), resync, false, none()));
        // A policy with a new generation waits for a slot: the resync gives
        // way — until it is itself a whole resync late.
        assert!(resync_yields(secs(5), resync, true, none()));
        assert!(!resync_yields(secs(61), resync, true, none()));
        // Another resync that has waited 20 s more goes first; one that came
        // due about when this one did (within a second) does not, nor one
        // not yet due.
        assert!(resync_yields(
            secs(5),
            resync,
            false,
            [secs(25)].into_iter()
        ));
        assert!(!resync_yields(
            secs(5),
            resync,
            false,
            [Duration::from_millis(5900), Duration::ZERO].into_iter()
        ));
    }
}
