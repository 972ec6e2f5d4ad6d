//! What a rollout did, per member and per object: the report `tideway
//! apply` prints and `tideway run` turns into status. Plain data, shared by
//! the steps that produce it (apply, prune, rollback).

use super::conflicts::FieldConflict;

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
    /// How long this member's part took.
    pub elapsed: std::time::Duration,
    /// What the member had of this policy before the rollout (its revision
    /// record), when that was read.
    pub before: Option<Runs>,
    /// Its wave failed the gate: what was undone here.
    pub rollback: Option<Rollback>,
    /// What the member has of this policy after the rollout.
    pub runs: Runs,
}

/// Which revision of a policy a member has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runs {
    /// Every object of this revision.
    Revision(String),
    /// Nothing of this policy.
    Nothing,
    /// Not known from this rollout (unreachable, not attempted, dry run).
    Unknown,
    /// Parts of two revisions: a rollback that could not finish.
    Mixed,
}

impl Runs {
    pub(super) fn from_record(current: Option<String>) -> Self {
        current.map_or(Runs::Nothing, Runs::Revision)
    }

    /// The revision, when the member has exactly one.
    pub fn revision(&self) -> Option<&str> {
        match self {
            Runs::Revision(r) => Some(r),
            _ => None,
        }
    }
}

impl std::fmt::Display for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Runs::Revision(r) => f.write_str(r),
            Runs::Nothing => f.write_str("nothing of this policy"),
            Runs::Unknown => f.write_str("unknown"),
            Runs::Mixed => f.write_str("parts of two revisions"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum MemberStatus {
    /// Every object accepted (dry run: every object would be).
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
    /// An object was accepted but does not carry Tideway's labels as
    /// stored, its revision record could not be read or written, or prune
    /// could not delete something.
    Failed { message: String },
    /// Not attempted (an earlier wave failed its gate).
    Skipped { reason: String },
    /// Applied, then put back to what it had because its wave failed the
    /// gate (`reason` says where).
    RolledBack { to: Runs, reason: String },
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
    pub fn new(member: &str, wave: u32, status: MemberStatus) -> Self {
        Self {
            member: member.to_string(),
            wave,
            status,
            objects: Vec::new(),
            pruned: Vec::new(),
            elapsed: std::time::Duration::ZERO,
            before: None,
            rollback: None,
            runs: Runs::Unknown,
        }
    }

    pub fn skipped(member: &str, wave: u32, reason: String) -> Self {
        Self::new(member, wave, MemberStatus::Skipped { reason })
    }

    /// How many objects ended with `action` (compared by variant).
    pub fn count(&self, action: &ObjectAction) -> usize {
        self.objects
            .iter()
            .filter(|o| std::mem::discriminant(&o.action) == std::mem::discriminant(action))
            .count()
    }
}

/// What a rollback did in one member.
#[derive(Debug, Clone, PartialEq)]
pub enum Rollback {
    /// The member had the rollout's revision before it began, or the
    /// rollout wrote nothing there: it is left as it is.
    NothingToUndo,
    /// The member has what it had before the rollout again (`to`): the
    /// objects the rollout created are `deleted`, the ones it changed
    /// `restored`.
    Restored {
        to: Runs,
        deleted: Vec<String>,
        restored: Vec<String>,
    },
    /// It could not be put back: it has parts of both revisions.
    Failed { message: String },
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rollback::NothingToUndo => f.write_str("nothing to undo"),
            Rollback::Restored {
                to,
                deleted,
                restored,
            } => {
                write!(f, "rolled back to {to}")?;
                let mut parts = Vec::new();
                if !restored.is_empty() {
                    parts.push(format!("restored {}", restored.join(", ")));
                }
                if !deleted.is_empty() {
                    parts.push(format!("deleted {}", deleted.join(", ")));
                }
                if !parts.is_empty() {
                    write!(f, " ({})", parts.join("; "))?;
                }
                Ok(())
            }
            Rollback::Failed { message } => write!(f, "NOT rolled back: {message}"),
        }
    }
}
