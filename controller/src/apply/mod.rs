//! `tideway apply`: a render, rolled out to every member cluster of a Fleet.
//!
//! Wave by wave (the Fleet's `wave`, lowest first; canary clusters go in the
//! first wave). The members of one wave are applied concurrently, each on its
//! own (one member's failure never touches another's objects), by
//! server-side apply with field manager `tideway`, never forced; an object a
//! member already has as rendered is not sent. Between waves a health gate:
//! every reachable member of the wave must have accepted every object. A
//! wave that fails the gate stops the rollout: later waves are reported as
//! skipped, not attempted.
//!
//! An unreachable member is reported and does not stop the rollout (unless
//! [`Options::require_all`]): the rest of the fleet should not wait on one
//! cluster's outage. A conflict with another field manager is reported with
//! the field and the manager (HTTP 409), and the object is left as the other
//! manager has it.
//!
//! Only once its wave passed the gate does a member lose the objects of
//! this policy that the render no longer has ([`prune`]), and get the new
//! revision in its record ([`revisions`]). A wave that fails the gate is
//! rolled back ([`rollback`]): each reachable member gets back exactly what
//! it had before this rollout; a member that already had the revision is
//! left alone.
//!
//! Modules: [`member`] applies to one cluster, [`live`] is what `tideway
//! run` knows of each member from watches, [`drift`] compares a live object
//! with its render, [`connect`] makes a client per member, [`diff`] is what
//! `--dry-run` shows.

pub mod conflicts;
pub mod connect;
pub mod diff;
pub mod drift;
pub mod live;
pub mod member;
pub mod object;
pub mod outcome;
pub mod prune;
pub mod revisions;
pub mod rollback;
mod server;

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use conflicts::FieldConflict;
pub use outcome::Rollback;
pub use outcome::{MemberOutcome, MemberStatus, ObjectAction, ObjectOutcome, Runs};
pub use prune::remove_all;

/// The annotation on every applied object: the render's [`revision`].
pub const REVISION_ANNOTATION: &str = "traffic.tideway.dev/revision";

/// A short digest of everything a render sends to every member (`sha256:`
/// and 16 hex digits): the same render always has the same revision, any
/// change to any member's objects a new one. `tideway run` writes it to the
/// policy's status, every object carries it in [`REVISION_ANNOTATION`].
pub fn revision(compiled: &crate::Compiled) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (member, objects) in compiled.members() {
        hash.update(member.as_bytes());
        hash.update([0]);
        for object in objects {
            hash.update(serde_json::to_vec(&object).unwrap_or_default());
            hash.update([0]);
        }
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn stamp_revision(object: &mut Value, revision: &str) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(map) = annotations.as_object_mut() {
            map.insert(
                REVISION_ANNOTATION.to_string(),
                Value::String(revision.to_string()),
            );
        }
    }
}

/// The field manager of every apply (`kubectl get -o yaml
/// --show-managed-fields` shows it).
pub const FIELD_MANAGER: &str = "tideway";
/// The field manager of the policy status `tideway run` writes in the hub.
pub const STATUS_FIELD_MANAGER: &str = "tideway-controller";

/// The policy a render came from: its objects carry these in
/// `traffic.tideway.dev/policy` and `…/policy-namespace`, which is how
/// prune finds what an earlier apply of the same policy left.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    pub name: String,
    pub namespace: String,
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl PolicyRef {
    pub fn of(policy: &crate::api::TrafficPolicy) -> Self {
        Self {
            name: policy.metadata.name.clone().unwrap_or_default(),
            namespace: crate::validate::policy_namespace(policy).to_string(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Server-side dry run (`dryRun=All`): nothing is stored; each object's
    /// outcome carries the diff of the live object against what the server
    /// would make of the render, and prune lists what it would delete.
    pub dry_run: bool,
    /// Delete objects of this policy that the render no longer has.
    pub prune: bool,
    /// An unreachable member fails its wave's gate (default: reported, the
    /// rollout goes on).
    pub require_all: bool,
}

/// One member cluster to roll out to.
pub struct Target {
    pub member: String,
    pub wave: u32,
    /// The render's [`revision`] (recorded in the member once applied).
    pub revision: String,
    /// The member's objects in apply order (what `render` writes for it).
    pub objects: Vec<Value>,
    /// A client for the member's API server, or why there is none (bad
    /// kubeconfig context, missing Secret): reported as unreachable.
    pub client: Result<kube::Client, String>,
    /// What `tideway run` knows of the member from its watches (none for
    /// `tideway apply`, which asks the member).
    pub live: Option<Arc<live::LiveCache>>,
}

/// What the terminal shows while the rollout runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    WaveStarted {
        wave: u32,
        members: Vec<String>,
    },
    MemberDone(MemberOutcome),
    WaveGate {
        wave: u32,
        passed: bool,
        failed: Vec<String>,
        /// The wave is being rolled back (it failed before prune and the
        /// records; a failure after them leaves the new revision in place).
        rolling_back: bool,
    },
    /// After a failed gate: what was undone in a member of that wave.
    RolledBack {
        member: String,
        rollback: Rollback,
    },
}

/// Every member's outcome, in rollout order.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetReport {
    pub members: Vec<MemberOutcome>,
    /// The wave whose gate failed, if the rollout stopped.
    pub stopped_at_wave: Option<u32>,
}

impl FleetReport {
    pub fn member(&self, name: &str) -> Option<&MemberOutcome> {
        self.members.iter().find(|m| m.member == name)
    }

    /// Every member has the render (or, dry run, could take it).
    pub fn all_applied(&self) -> bool {
        self.members
            .iter()
            .all(|m| matches!(m.status, MemberStatus::Applied))
    }
}

/// Members that fail a wave's gate.
fn blocking(runs: &[member::MemberRun], options: &Options) -> Vec<String> {
    runs.iter()
        .filter(|run| match &run.outcome.status {
            MemberStatus::Applied => false,
            MemberStatus::Unreachable { .. } => options.require_all,
            _ => true,
        })
        .map(|run| run.outcome.member.clone())
        .collect()
}

/// Roll `targets` out wave by wave; see the module doc. Never panics on a
/// member's error: every failure ends up in that member's outcome.
pub async fn apply(
    targets: Vec<Target>,
    policy: &PolicyRef,
    options: &Options,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> FleetReport {
    let mut waves: BTreeMap<u32, Vec<Target>> = BTreeMap::new();
    for target in targets {
        waves.entry(target.wave).or_default().push(target);
    }
    let mut report = FleetReport {
        members: Vec::new(),
        stopped_at_wave: None,
    };
    for (wave, members) in waves {
        if let Some(failed_wave) = report.stopped_at_wave {
            for target in members {
                let outcome = MemberOutcome::skipped(
                    &target.member,
                    wave,
                    format!("not attempted: wave {failed_wave} failed its health gate"),
                );
                progress(&Progress::MemberDone(outcome.clone()));
                report.members.push(outcome);
            }
            continue;
        }
        progress(&Progress::WaveStarted {
            wave,
            members: members.iter().map(|t| t.member.clone()).collect(),
        });
        let mut runs = futures::future::join_all(
            members
                .iter()
                .map(|target| member::apply_objects(target, policy, options)),
        )
        .await;
        let failed = blocking(&runs, options);
        // A dry run stores nothing, so there is nothing to gate on: it shows
        // every wave.
        if failed.is_empty() || options.dry_run {
            futures::future::join_all(
                members
                    .iter()
                    .zip(runs.iter_mut())
                    .filter(|(_, run)| matches!(run.outcome.status, MemberStatus::Applied))
                    .map(|(target, run)| member::finish(target, policy, options, run)),
            )
            .await;
            let failed = if options.dry_run {
                Vec::new()
            } else {
                blocking(&runs, options)
            };
            for run in &runs {
                progress(&Progress::MemberDone(run.outcome.clone()));
            }
            if !failed.is_empty() {
                report.stopped_at_wave = Some(wave);
            }
            progress(&Progress::WaveGate {
                wave,
                passed: failed.is_empty(),
                failed,
                rolling_back: false,
            });
        } else {
            for run in &runs {
                progress(&Progress::MemberDone(run.outcome.clone()));
            }
            report.stopped_at_wave = Some(wave);
            progress(&Progress::WaveGate {
                wave,
                passed: false,
                failed: failed.clone(),
                rolling_back: true,
            });
            let why = format!(
                "wave {wave} failed its health gate at {}",
                failed.join(", ")
            );
            let rollbacks = members
                .iter()
                .zip(runs.iter_mut())
                .map(|(target, run)| async {
                    if matches!(run.outcome.status, MemberStatus::Unreachable { .. }) {
                        return;
                    }
                    let undone = rollback::rollback(target, policy, run).await;
                    if let (Rollback::Restored { to, .. }, MemberStatus::Applied) =
                        (&undone, &run.outcome.status)
                    {
                        run.outcome.status = MemberStatus::RolledBack {
                            to: to.clone(),
                            reason: why.clone(),
                        };
                    }
                    run.outcome.rollback = Some(undone);
                });
            futures::future::join_all(rollbacks).await;
            for run in &runs {
                if let Some(undone) = &run.outcome.rollback {
                    progress(&Progress::RolledBack {
                        member: run.outcome.member.clone(),
                        rollback: undone.clone(),
                    });
                }
            }
        }
        report
            .members
            .extend(runs.into_iter().map(|run| run.outcome));
    }
    report
}

/// One [`Target`] per member of `fleet`, in rollout order, each with the
/// render's objects for it (stamped with the render's [`revision`]) and a
/// client (see [`connect`]).
pub async fn targets(
    compiled: &crate::Compiled,
    fleet: &crate::api::Fleet,
    kubeconfig: Option<&kube::config::Kubeconfig>,
    hub: Option<&kube::Client>,
) -> Vec<Target> {
    let mut clients = BTreeMap::new();
    for member in &fleet.spec.clusters {
        if compiled.order.contains(&member.name) {
            clients.insert(
                member.name.clone(),
                connect::member_client(member, kubeconfig, hub)
                    .await
                    .map(connect::Member::uncached),
            );
        }
    }
    targets_with(compiled, fleet, &clients)
}

/// [`targets`] with clients already made (member name → client).
pub fn targets_with(
    compiled: &crate::Compiled,
    fleet: &crate::api::Fleet,
    clients: &BTreeMap<String, Result<connect::Member, String>>,
) -> Vec<Target> {
    let revision = revision(compiled);
    let mut out = Vec::new();
    for name in &compiled.order {
        let Some(member) = fleet.spec.clusters.iter().find(|c| &c.name == name) else {
            continue;
        };
        let connection = clients
            .get(name)
            .cloned()
            .unwrap_or_else(|| Err(format!("member {name}: no client")));
        out.push(Target {
            member: name.clone(),
            wave: member.wave,
            revision: revision.clone(),
            objects: rendered(compiled, name, &revision),
            live: connection.as_ref().ok().and_then(|m| m.live.clone()),
            client: connection.map(|m| m.client),
        });
    }
    out
}

/// `member`'s objects of `compiled`, in apply order, stamped with the
/// render's `revision`: exactly what a rollout sends.
pub fn rendered(compiled: &crate::Compiled, member: &str, revision: &str) -> Vec<Value> {
    compiled
        .member(member)
        .into_iter()
        .map(|mut o| {
            stamp_revision(&mut o, revision);
            o
        })
        .collect()
}

/// The terminal line for one progress event (`tideway apply` prints these
/// to stderr as they happen).
pub fn progress_line(event: &Progress) -> String {
    match event {
        Progress::WaveStarted { wave, members } => {
            format!("wave {wave}: {}", members.join(", "))
        }
        Progress::MemberDone(outcome) => member_line(outcome),
        Progress::WaveGate {
            wave, passed: true, ..
        } => format!("wave {wave}: healthy"),
        Progress::WaveGate {
            wave,
            failed,
            rolling_back: true,
            ..
        } => format!(
            "wave {wave}: FAILED at {}; rolling the wave back, later waves are not rolled out",
            failed.join(", ")
        ),
        Progress::WaveGate { wave, failed, .. } => format!(
            "wave {wave}: FAILED at {} after the new revision was applied (prune or revision record); later waves are not rolled out",
            failed.join(", ")
        ),
        Progress::RolledBack { member, rollback } => format!("  {member}: {rollback}"),
    }
}

fn member_line(outcome: &MemberOutcome) -> String {
    let m = &outcome.member;
    let pruned = outcome
        .pruned
        .iter()
        .map(|p| p.object.as_str())
        .collect::<Vec<_>>();
    let prune_text = if pruned.is_empty() {
        String::new()
    } else {
        let verb = if outcome
            .pruned
            .iter()
            .any(|p| p.action == ObjectAction::WouldDelete)
        {
            "would delete"
        } else {
            "deleted"
        };
        format!("; {verb} {}", pruned.join(", "))
    };
    match &outcome.status {
        MemberStatus::Applied => {
            let c = |a: ObjectAction| outcome.count(&a);
            let would = c(ObjectAction::WouldCreate {
                diff: String::new(),
            }) + c(ObjectAction::WouldChange {
                diff: String::new(),
            });
            if would > 0
                || outcome
                    .pruned
                    .iter()
                    .any(|p| p.action == ObjectAction::WouldDelete)
            {
                format!(
                    "  {m}: dry run: {} to create, {} to change, {} unchanged{prune_text}",
                    c(ObjectAction::WouldCreate {
                        diff: String::new()
                    }),
                    c(ObjectAction::WouldChange {
                        diff: String::new()
                    }),
                    c(ObjectAction::Unchanged)
                )
            } else {
                format!(
                    "  {m}: applied: {} created, {} configured, {} unchanged{prune_text}",
                    c(ObjectAction::Created),
                    c(ObjectAction::Configured),
                    c(ObjectAction::Unchanged)
                )
            }
        }
        MemberStatus::Unreachable { message } => format!("  {m}: UNREACHABLE: {message}"),
        MemberStatus::Conflict {
            object, conflicts, ..
        } => {
            let fields = conflicts
                .iter()
                .map(|c| format!("{} (owned by {:?})", c.field, c.manager))
                .collect::<Vec<_>>()
                .join(", ");
            format!("  {m}: CONFLICT on {object}: {fields}; not forced")
        }
        MemberStatus::Rejected {
            object,
            code,
            message,
            ..
        } => format!("  {m}: REJECTED {object} ({code}): {message}"),
        MemberStatus::Failed { message } => format!("  {m}: FAILED: {message}"),
        MemberStatus::Skipped { reason } => format!("  {m}: skipped: {reason}"),
        MemberStatus::RolledBack { to, reason } => {
            format!("  {m}: rolled back to {to}: {reason}")
        }
    }
}
