//! `tideway apply`: a render, rolled out to every member cluster of a Fleet.
//!
//! Wave by wave (the Fleet's `wave`, lowest first; canary clusters go in the
//! first wave). The members of one wave are applied concurrently, each on its
//! own (one member's failure never touches another's objects), by
//! server-side apply with field manager `tideway`, never forced. Between
//! waves a health gate: every reachable member of the wave must have had
//! every object accepted and read back. A wave that fails the gate stops the
//! rollout: later waves are reported as skipped, not attempted.
//!
//! An unreachable member is reported and does not stop the rollout (unless
//! [`Options::require_all`]): the rest of the fleet should not wait on one
//! cluster's outage. A conflict with another field manager is reported with
//! the field and the manager (HTTP 409), and the object is left as the other
//! manager has it. After a member's objects are applied, the objects Tideway
//! applied there for this policy earlier and the render no longer has are
//! deleted (found by the managed-by and policy labels; nothing relies on
//! owner-reference garbage collection, which needs a controller-manager).
//!
//! A wave that fails its gate is rolled back: each of its reachable members
//! gets the revision it had before ([`revisions`]: kept in the member), so
//! the fleet is left at most one wave ahead of the previous revision and
//! the failing wave is whole again.
//!
//! Modules: [`member`] applies to one cluster, [`revisions`] records what
//! each member has, [`connect`] makes a client per member, [`diff`] is what
//! `--dry-run` shows.

pub mod connect;
pub mod diff;
pub mod member;
pub mod revisions;

use serde_json::Value;
use std::collections::BTreeMap;

pub use member::{MemberOutcome, MemberStatus, ObjectAction, ObjectOutcome};

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

/// The policy a render came from: its objects carry these in
/// `traffic.tideway.dev/policy` and `…/policy-namespace`, which is how
/// prune finds what an earlier apply of the same policy left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub name: String,
    pub namespace: String,
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
    /// Objects whose live copy already carries this revision (annotation)
    /// are not sent again. A rollback sets it to the revision it restores:
    /// an object the member refused is still at that revision, and sending
    /// it again would only be refused again.
    pub unchanged_at_revision: Option<String>,
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
    },
    /// After a failed gate: a member of that wave put back to the revision
    /// it had (`Ok(revision)`), or why it could not be.
    RolledBack {
        member: String,
        result: Result<String, String>,
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
        let runs = members
            .iter()
            .map(|target| member::apply_member(target, policy, options));
        let mut outcomes = futures::future::join_all(runs).await;
        let mut failed = Vec::new();
        for outcome in &outcomes {
            let blocks = match &outcome.status {
                MemberStatus::Applied => false,
                MemberStatus::Unreachable { .. } => options.require_all,
                _ => true,
            };
            if blocks {
                failed.push(outcome.member.clone());
            }
            progress(&Progress::MemberDone(outcome.clone()));
        }
        // A dry run stores nothing, so there is nothing to gate on: it shows
        // every wave.
        let passed = failed.is_empty() || options.dry_run;
        progress(&Progress::WaveGate {
            wave,
            passed,
            failed: failed.clone(),
        });
        if !passed {
            report.stopped_at_wave = Some(wave);
            // The whole wave goes back to what its members had, so that it
            // is one revision again; later waves never saw the new one.
            let why = format!(
                "wave {wave} failed its health gate at {}",
                failed.join(", ")
            );
            let rollbacks = members.iter().zip(&outcomes).map(|(target, outcome)| {
                let reachable = !matches!(outcome.status, MemberStatus::Unreachable { .. });
                async move {
                    if reachable {
                        Some(member::rollback(target, policy).await)
                    } else {
                        None
                    }
                }
            });
            let results = futures::future::join_all(rollbacks).await;
            for (outcome, result) in outcomes.iter_mut().zip(results) {
                let Some(result) = result else { continue };
                if let (Ok(to), MemberStatus::Applied) = (&result, &outcome.status) {
                    outcome.status = MemberStatus::RolledBack {
                        revision: to.clone(),
                        reason: why.clone(),
                    };
                }
                outcome.rollback = Some(result);
                progress(&Progress::RolledBack {
                    member: outcome.member.clone(),
                    result: outcome.rollback.clone().unwrap_or(Err(String::new())),
                });
            }
        }
        report.members.extend(outcomes);
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
                connect::member_client(member, kubeconfig, hub).await,
            );
        }
    }
    targets_with(compiled, fleet, &clients)
}

/// [`targets`] with clients already made (member name → client).
pub fn targets_with(
    compiled: &crate::Compiled,
    fleet: &crate::api::Fleet,
    clients: &BTreeMap<String, Result<kube::Client, String>>,
) -> Vec<Target> {
    let revision = revision(compiled);
    let mut out = Vec::new();
    for name in &compiled.order {
        let Some(member) = fleet.spec.clusters.iter().find(|c| &c.name == name) else {
            continue;
        };
        out.push(Target {
            member: name.clone(),
            wave: member.wave,
            revision: revision.clone(),
            objects: compiled
                .member(name)
                .into_iter()
                .map(|mut o| {
                    stamp_revision(&mut o, &revision);
                    o
                })
                .collect(),
            client: clients
                .get(name)
                .cloned()
                .unwrap_or_else(|| Err(format!("member {name}: no client"))),
        });
    }
    out
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
        Progress::WaveGate { wave, failed, .. } => format!(
            "wave {wave}: FAILED at {}; rolling the wave back, later waves are not rolled out",
            failed.join(", ")
        ),
        Progress::RolledBack {
            member,
            result: Ok(revision),
        } => format!("  {member}: rolled back to {revision}"),
        Progress::RolledBack {
            member,
            result: Err(why),
        } => format!("  {member}: NOT rolled back: {why}"),
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
        MemberStatus::RolledBack { revision, reason } => {
            format!("  {m}: rolled back to {revision}: {reason}")
        }
    }
}
