//! What a member cluster has of Tideway's objects, kept from watches
//! (`tideway run`), so that a rollout asks the member only about what
//! changed and a resync of an unchanged fleet sends nothing at all.
//!
//! One kube-runtime watcher per member and kind, filtered by the managed-by
//! label: not one per policy. A kind the member's identity may not list
//! cluster-wide (the member RBAC grants ConfigMaps and PrometheusRules per
//! namespace) is watched in each namespace a render puts it in, and the
//! revision records in `tideway-system`. The cache keeps, per object, only
//! what the rollout decides on: its resourceVersion, whose render it is,
//! whether Tideway applied it, and for a revision record the revision it
//! names. Never the object's body: an object costs a few hundred bytes.
//!
//! An object is *verified* when Tideway last saw it, at this
//! resourceVersion, equal to its render at a revision: the apply's own
//! answer, or a read that compared it with the render. A revision is a
//! digest of every object of the render, so (object, revision) names one
//! content. Any write by anyone else changes the resourceVersion, so an
//! object whose resourceVersion is still the verified one has not
//! drifted; one whose resourceVersion moved is read and compared again
//! ([`super::drift`]).
//!
//! A watch event that Tideway did not cause (another resourceVersion than
//! the verified one, a deletion Tideway did not make) calls `on_change`
//! with the object's policy: the controller reconciles it at once, which
//! is how a hand edit is repaired (or reported as a conflict) within
//! moments rather than at the next resync.
//!
//! Until a watch has listed its objects, and after any error of it until it
//! has listed them again, the cache answers "unknown" for that kind and the
//! rollout asks the member directly, as `tideway apply` always does.

use super::object::ObjectKey;
use super::revisions::{REVISIONS_NAMESPACE, REVISIONS_OF_LABEL};
use super::PolicyRef;
use crate::compile::{MANAGED_BY, MANAGED_BY_LABEL, POLICY_LABEL, POLICY_NAMESPACE_LABEL};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use kube::runtime::watcher;
use kube::Client;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Called with the policy whose object changed under Tideway.
pub type OnChange = Arc<dyn Fn(PolicyRef) + Send + Sync>;

/// The longest wait before a failed watch lists again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long "this member does not serve that kind" is believed.
const NO_KIND_FOR: Duration = Duration::from_secs(60);

/// An object's identity whatever version it is served at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LiveKey {
    group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl LiveKey {
    fn of(key: &ObjectKey) -> Self {
        Self {
            group: key.group.clone(),
            kind: key.kind.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
    }
}

/// What the cache keeps of one live object.
#[derive(Debug, Clone)]
struct Live {
    resource_version: String,
    /// Whose render it is (the policy labels).
    policy: Option<PolicyRef>,
    /// Tideway is one of its field managers (prune deletes only those).
    by_tideway: bool,
    /// A revision record: the policy and the revision it says the member
    /// has.
    record: Option<(PolicyRef, Option<String>)>,
}

/// A watch's reach: a kind, cluster-wide or in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WatchScope {
    group: String,
    kind: String,
    namespace: Option<String>,
}

impl WatchScope {
    fn covers(&self, key: &LiveKey) -> bool {
        self.group == key.group
            && self.kind == key.kind
            && (self.namespace.is_none() || self.namespace == key.namespace)
    }
}

/// How a kind is watched in this member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// One watch over all namespaces.
    Cluster,
    /// The identity may not list it cluster-wide: one watch per namespace.
    PerNamespace,
}

#[derive(Debug, Clone)]
enum KindEntry {
    Served {
        resource: ApiResource,
        capabilities: ApiCapabilities,
        reach: Option<Reach>,
    },
    /// Discovery said the member has no such kind (its CRD is not
    /// installed), at this time.
    NotServed(Instant),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Verified {
    resource_version: String,
    revision: String,
    /// Whose render it is: told when a list finds it changed.
    policy: PolicyRef,
}

/// How far a watch has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Listing {
    /// It has listed its objects and follows them now.
    synced: bool,
    /// It has listed them at least once: a later list can tell what
    /// changed while it was down.
    ever: bool,
}

#[derive(Default)]
struct State {
    kinds: HashMap<(String, String), KindEntry>,
    /// Watches started, and how far each has come.
    watches: HashMap<WatchScope, Listing>,
    tasks: Vec<tokio::task::AbortHandle>,
    objects: HashMap<LiveKey, Live>,
    by_policy: HashMap<PolicyRef, HashSet<LiveKey>>,
    records: HashMap<PolicyRef, LiveKey>,
    /// The resourceVersion Tideway last saw each object at, equal to its
    /// render at a revision.
    verified: HashMap<LiveKey, Verified>,
    /// Deletions Tideway made whose watch event has not come yet.
    deleting: HashSet<LiveKey>,
}

impl State {
    fn insert(&mut self, key: LiveKey, live: Live) {
        self.remove(&key);
        if let Some(policy) = &live.policy {
            self.by_policy
                .entry(policy.clone())
                .or_default()
                .insert(key.clone());
        }
        if let Some((policy, _)) = &live.record {
            self.records.insert(policy.clone(), key.clone());
        }
        self.objects.insert(key, live);
    }

    fn remove(&mut self, key: &LiveKey) -> Option<Live> {
        let old = self.objects.remove(key)?;
        if let Some(policy) = &old.policy {
            if let Some(set) = self.by_policy.get_mut(policy) {
                set.remove(key);
                if set.is_empty() {
                    self.by_policy.remove(policy);
                }
            }
        }
        if let Some((policy, _)) = &old.record {
            if self.records.get(policy) == Some(key) {
                self.records.remove(policy);
            }
        }
        Some(old)
    }

    /// The watch that would hold `key` has listed its objects.
    fn covers(&self, group: &str, kind: &str, namespace: Option<&str>) -> bool {
        let reach = match self.kinds.get(&(group.to_string(), kind.to_string())) {
            Some(KindEntry::Served { reach, .. }) => *reach,
            _ => None,
        };
        let scope = WatchScope {
            group: group.to_string(),
            kind: kind.to_string(),
            namespace: match reach {
                Some(Reach::Cluster) => None,
                Some(Reach::PerNamespace) => namespace.map(str::to_string),
                None => return false,
            },
        };
        self.watches.get(&scope).is_some_and(|l| l.synced)
    }

    fn is_verified(&self, key: &LiveKey, live: &Live) -> bool {
        self.verified
            .get(key)
            .is_some_and(|v| v.resource_version == live.resource_version)
    }
}

/// What the cache knows of one rendered object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Its kind's watch has not listed (yet, or again): ask the member.
    Unknown,
    /// The member does not have it.
    Absent,
    /// The member has it; `verified`: unchanged since Tideway last saw it
    /// equal to this rendering.
    Present { verified: bool },
}

/// Whether a member needs a policy's render again, from its cache alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It has every object as Tideway left it, and nothing more.
    InSync,
    /// It does not (why).
    Needed(String),
    /// The cache cannot tell (why).
    Unknown(String),
}

/// One member's watched objects; see the module doc.
pub struct LiveCache {
    /// For logs: which member (the first Fleet member that used it).
    member: String,
    client: Client,
    /// Watches need a client without a read timeout.
    watch_client: Client,
    on_change: Option<OnChange>,
    state: Mutex<State>,
    /// A [`LiveCache::start_watches`] is in flight.
    starting: std::sync::atomic::AtomicBool,
}

impl Drop for LiveCache {
    fn drop(&mut self) {
        for task in &self.lock().tasks {
            task.abort();
        }
    }
}

/// The label selector of every watch: objects Tideway applies.
fn selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

fn policy_of(object: &DynamicObject) -> Option<PolicyRef> {
    let labels = object.metadata.labels.as_ref()?;
    Some(PolicyRef {
        name: labels.get(POLICY_LABEL)?.clone(),
        namespace: labels.get(POLICY_NAMESPACE_LABEL)?.clone(),
    })
}

fn record_of(object: &DynamicObject) -> Option<(PolicyRef, Option<String>)> {
    if object.metadata.namespace.as_deref() != Some(REVISIONS_NAMESPACE) {
        return None;
    }
    let of = object.metadata.labels.as_ref()?.get(REVISIONS_OF_LABEL)?;
    // `namespace.name`: a namespace has no dots.
    let (namespace, name) = of.split_once('.')?;
    let current = object.data["data"]["current"].as_str().map(str::to_string);
    Some((
        PolicyRef {
            name: name.to_string(),
            namespace: namespace.to_string(),
        },
        current,
    ))
}

fn live_of(scope: &WatchScope, object: &DynamicObject) -> Option<(LiveKey, Live)> {
    let key = LiveKey {
        group: scope.group.clone(),
        kind: scope.kind.clone(),
        namespace: object.metadata.namespace.clone(),
        name: object.metadata.name.clone()?,
    };
    let record = if scope.group.is_empty() && scope.kind == "ConfigMap" {
        record_of(object)
    } else {
        None
    };
    let live = Live {
        resource_version: object.metadata.resource_version.clone()?,
        policy: if record.is_some() {
            None
        } else {
            policy_of(object)
        },
        by_tideway: super::object::applied_by_tideway(object),
        record,
    };
    Some((key, live))
}

impl LiveCache {
    pub fn new(
        member: &str,
        client: Client,
        watch_client: Client,
        on_change: Option<OnChange>,
    ) -> Arc<Self> {
        Arc::new(Self {
            member: member.to_string(),
            client,
            watch_client,
            on_change,
            state: Mutex::new(State::default()),
            starting: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The member's resource type for `gvk`, from the memo when known.
    /// `Ok(None)`: the member does not serve it (memoised for a minute).
    pub async fn resolve(
        &self,
        gvk: &GroupVersionKind,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, kube::Error> {
        let memo = (gvk.group.clone(), gvk.kind.clone());
        match self.lock().kinds.get(&memo) {
            Some(KindEntry::Served {
                resource,
                capabilities,
                ..
            }) if resource.version == gvk.version => {
                return Ok(Some((resource.clone(), capabilities.clone())))
            }
            Some(KindEntry::NotServed(at)) if at.elapsed() < NO_KIND_FOR => return Ok(None),
            _ => {}
        }
        let found = match kube::discovery::pinned_kind(&self.client, gvk).await {
            Ok(found) => Some(found),
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(kube::Error::Discovery(_)) => None,
            Err(e) => return Err(e),
        };
        let entry = match &found {
            Some((resource, capabilities)) => KindEntry::Served {
                resource: resource.clone(),
                capabilities: capabilities.clone(),
                reach: None,
            },
            None => KindEntry::NotServed(Instant::now()),
        };
        self.lock().kinds.insert(memo, entry);
        Ok(found)
    }

    /// Start, in the background, the watches that hold these kinds' objects
    /// (in the namespaces given, for a kind watched per namespace; a
    /// cluster-wide watch covers them all). Looking the kinds up may take a
    /// member that is down its connect timeout per kind: the rollout does
    /// not wait for it, and one start at a time is in flight.
    pub fn start_watches(self: &Arc<Self>, kinds: Vec<(GroupVersionKind, BTreeSet<String>)>) {
        if self
            .starting
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            for (gvk, namespaces) in &kinds {
                this.watch(gvk, namespaces).await;
            }
            this.starting
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// Start the watches that hold `kind`'s objects in `namespaces`.
    async fn watch(self: &Arc<Self>, gvk: &GroupVersionKind, namespaces: &BTreeSet<String>) {
        let Ok(Some((resource, capabilities))) = self.resolve(gvk).await else {
            return;
        };
        let memo = (gvk.group.clone(), gvk.kind.clone());
        let reach = match self.lock().kinds.get(&memo) {
            Some(KindEntry::Served { reach, .. }) => *reach,
            _ => return,
        };
        let reach = match reach {
            Some(r) => r,
            None => {
                let Some(r) = self.probe(&resource, &capabilities).await else {
                    return;
                };
                if let Some(KindEntry::Served { reach, .. }) = self.lock().kinds.get_mut(&memo) {
                    *reach = Some(r);
                }
                r
            }
        };
        let scopes: Vec<WatchScope> = match reach {
            Reach::Cluster => vec![WatchScope {
                group: gvk.group.clone(),
                kind: gvk.kind.clone(),
                namespace: None,
            }],
            Reach::PerNamespace => namespaces
                .iter()
                .map(|ns| WatchScope {
                    group: gvk.group.clone(),
                    kind: gvk.kind.clone(),
                    namespace: Some(ns.clone()),
                })
                .collect(),
        };
        for scope in scopes {
            let mut state = self.lock();
            if state.watches.contains_key(&scope) {
                continue;
            }
            state.watches.insert(scope.clone(), Listing::default());
            let task = tokio::spawn(watch_loop(
                Arc::downgrade(self),
                self.watch_client.clone(),
                resource.clone(),
                scope,
            ));
            state.tasks.push(task.abort_handle());
        }
    }

    /// May the member's identity list the kind across namespaces? A
    /// namespaced kind that it may not is watched per namespace.
    async fn probe(&self, resource: &ApiResource, capabilities: &ApiCapabilities) -> Option<Reach> {
        if capabilities.scope == Scope::Cluster {
            return Some(Reach::Cluster);
        }
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), resource);
        let params = ListParams::default()
            .labels(&selector())
            .limit(1)
            .match_any();
        match api.list_metadata(&params).await {
            Ok(_) => Some(Reach::Cluster),
            Err(kube::Error::Api(s)) if s.code == 403 => Some(Reach::PerNamespace),
            Err(e) => {
                tracing::debug!(member = %self.member, kind = %resource.kind, error = %e, "cannot tell how to watch");
                None
            }
        }
    }

    /// What the cache knows of `key` as rendered at `revision`.
    pub fn seen(&self, key: &ObjectKey, revision: &str) -> Seen {
        let state = self.lock();
        if !state.covers(&key.group, &key.kind, key.namespace.as_deref()) {
            return Seen::Unknown;
        }
        let live_key = LiveKey::of(key);
        match state.objects.get(&live_key) {
            None => Seen::Absent,
            Some(live) => Seen::Present {
                verified: state.verified.get(&live_key).is_some_and(|v| {
                    v.resource_version == live.resource_version && v.revision == revision
                }),
            },
        }
    }

    /// Tideway saw `key` at `resource_version` equal to `policy`'s render
    /// at `revision` (its apply answered so, or a read compared equal).
    pub fn verified(
        &self,
        key: &ObjectKey,
        resource_version: &str,
        revision: &str,
        policy: &PolicyRef,
    ) {
        self.lock().verified.insert(
            LiveKey::of(key),
            Verified {
                resource_version: resource_version.to_string(),
                revision: revision.to_string(),
                policy: policy.clone(),
            },
        );
    }

    /// Tideway is deleting `key`: its deletion event is not a change to
    /// report.
    pub fn deleting(&self, key: &ObjectKey) {
        let live_key = LiveKey::of(key);
        let mut state = self.lock();
        state.verified.remove(&live_key);
        state.deleting.insert(live_key);
    }

    /// The revision `policy`'s record in this member names as current
    /// (`Some(None)`: no record), or `None` when the cache cannot tell.
    pub fn record(&self, policy: &PolicyRef) -> Option<Option<String>> {
        let state = self.lock();
        if !state.covers("", "ConfigMap", Some(REVISIONS_NAMESPACE)) {
            return None;
        }
        Some(
            state
                .records
                .get(policy)
                .and_then(|key| state.objects.get(key))
                .and_then(|live| live.record.as_ref())
                .and_then(|(_, current)| current.clone()),
        )
    }

    /// The objects of `policy` of the given kind Tideway applied here,
    /// or `None` when a watch that would hold them has not listed.
    /// `namespaces`: where to look for a kind watched per namespace.
    pub fn policy_objects(
        &self,
        policy: &PolicyRef,
        gvk: &GroupVersionKind,
        namespaces: &BTreeSet<String>,
    ) -> Option<Vec<ObjectKey>> {
        let state = self.lock();
        match state.kinds.get(&(gvk.group.clone(), gvk.kind.clone())) {
            Some(KindEntry::NotServed(_)) => return Some(Vec::new()),
            Some(KindEntry::Served {
                reach: Some(Reach::Cluster),
                ..
            }) => {
                if !state.covers(&gvk.group, &gvk.kind, None) {
                    return None;
                }
            }
            Some(KindEntry::Served {
                reach: Some(Reach::PerNamespace),
                ..
            }) => {
                if !namespaces
                    .iter()
                    .all(|ns| state.covers(&gvk.group, &gvk.kind, Some(ns)))
                {
                    return None;
                }
            }
            _ => return None,
        }
        let Some(keys) = state.by_policy.get(policy) else {
            return Some(Vec::new());
        };
        Some(
            keys.iter()
                .filter(|k| k.group == gvk.group && k.kind == gvk.kind)
                .filter(|k| state.objects.get(*k).is_some_and(|l| l.by_tideway))
                .map(|k| ObjectKey {
                    group: k.group.clone(),
                    version: gvk.version.clone(),
                    kind: k.kind.clone(),
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                })
                .collect(),
        )
    }

    /// Whether `policy`'s render at `revision` (its objects here: `keys`)
    /// needs a rollout here: an object missing or not verified at that
    /// revision, an object of the policy the render no longer has, a
    /// record that names another revision.
    pub fn needs_rollout(&self, policy: &PolicyRef, revision: &str, keys: &[ObjectKey]) -> Verdict {
        match self.record(policy) {
            None => return Verdict::Unknown("the revision records are not listed".into()),
            Some(current) if current.as_deref() != Some(revision) => {
                return Verdict::Needed(format!(
                    "its record names {}",
                    current.as_deref().unwrap_or("no revision")
                ))
            }
            Some(_) => {}
        }
        for key in keys {
            match self.seen(key, revision) {
                Seen::Unknown => {
                    return Verdict::Unknown(format!("{}: its kind is not listed", key.display()))
                }
                Seen::Absent => return Verdict::Needed(format!("{} is missing", key.display())),
                Seen::Present { verified: false } => {
                    return Verdict::Needed(format!(
                        "{} changed since Tideway saw it",
                        key.display()
                    ))
                }
                Seen::Present { verified: true } => {}
            }
        }
        let state = self.lock();
        let rendered: HashSet<LiveKey> = keys.iter().map(LiveKey::of).collect();
        let extra = state.by_policy.get(policy).and_then(|held| {
            held.iter().find(|k| {
                !rendered.contains(*k) && state.objects.get(*k).is_some_and(|l| l.by_tideway)
            })
        });
        match extra {
            Some(k) => Verdict::Needed(format!("{} {} is no longer rendered", k.kind, k.name)),
            None => Verdict::InSync,
        }
    }

    fn changed(&self, policy: Option<PolicyRef>) {
        if let (Some(policy), Some(on_change)) = (policy, &self.on_change) {
            on_change(policy);
        }
    }

    fn applied(&self, scope: &WatchScope, object: &DynamicObject) {
        let Some((key, live)) = live_of(scope, object) else {
            return;
        };
        let (ours, policy) = {
            let mut state = self.lock();
            let ours = state.is_verified(&key, &live);
            let policy = live.policy.clone();
            tracing::trace!(member = %self.member, kind = %key.kind, name = %key.name, ours, "changed");
            state.insert(key, live);
            (ours, policy)
        };
        if !ours {
            self.changed(policy);
        }
    }

    fn deleted(&self, scope: &WatchScope, object: &DynamicObject) {
        let Some((key, _)) = live_of(scope, object) else {
            return;
        };
        let (ours, old) = {
            let mut state = self.lock();
            let ours = state.deleting.remove(&key);
            tracing::trace!(member = %self.member, kind = %key.kind, name = %key.name, ours, "deleted");
            state.verified.remove(&key);
            (ours, state.remove(&key))
        };
        if !ours {
            self.changed(old.and_then(|l| l.policy));
        }
    }

    /// A (re)list finished: `fresh` is everything the scope holds now.
    /// What changed since Tideway saw it — an object it verified that is
    /// gone or at another resourceVersion, and after an earlier list any
    /// object that vanished or moved while the watch was down — is
    /// reported. The first list of a watch counts too: a rollout may have
    /// verified an object before its watch had listed, and a change in
    /// between would otherwise wait for the resync.
    fn listed(&self, scope: &WatchScope, fresh: HashMap<LiveKey, Live>) {
        let mut changed: HashSet<PolicyRef> = HashSet::new();
        {
            let mut state = self.lock();
            let listed_before = state.watches.get(scope).is_some_and(|l| l.ever);
            for (key, seen) in state.verified.iter().filter(|(k, _)| scope.covers(k)) {
                let moved = match fresh.get(key) {
                    None => !state.deleting.contains(key),
                    Some(live) => live.resource_version != seen.resource_version,
                };
                if moved {
                    changed.insert(seen.policy.clone());
                }
            }
            let before: Vec<LiveKey> = state
                .objects
                .keys()
                .filter(|k| scope.covers(k))
                .cloned()
                .collect();
            for key in before {
                if !fresh.contains_key(&key) {
                    let old = state.remove(&key);
                    let ours = state.deleting.remove(&key);
                    state.verified.remove(&key);
                    if let (true, false, Some(policy)) =
                        (listed_before, ours, old.and_then(|l| l.policy))
                    {
                        changed.insert(policy);
                    }
                }
            }
            // Deletions of Tideway's whose event never came (the watch
            // was down): the list settles them.
            state
                .deleting
                .retain(|k| !scope.covers(k) || fresh.contains_key(k));
            for (key, live) in fresh {
                let moved = state
                    .objects
                    .get(&key)
                    .is_none_or(|old| old.resource_version != live.resource_version);
                if listed_before && moved && !state.is_verified(&key, &live) {
                    if let Some(policy) = &live.policy {
                        changed.insert(policy.clone());
                    }
                }
                state.insert(key, live);
            }
            state.watches.insert(
                scope.clone(),
                Listing {
                    synced: true,
                    ever: true,
                },
            );
        }
        for policy in changed {
            self.changed(Some(policy));
        }
    }

    fn unsynced(&self, scope: &WatchScope) {
        if let Some(listing) = self.lock().watches.get_mut(scope) {
            listing.synced = false;
        }
    }
}

/// One watch, for as long as its cache lives: list, then follow; after
/// any error, list again after a backoff (1 s doubling to 30 s) — a relist
/// is how the cache knows it is whole again.
async fn watch_loop(
    cache: Weak<LiveCache>,
    client: Client,
    resource: ApiResource,
    scope: WatchScope,
) {
    let api: Api<DynamicObject> = match &scope.namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    // From the API server's watch cache, not a quorum read of etcd.
    let config = watcher::Config::default()
        .labels(&selector())
        .any_semantic();
    let mut backoff = Duration::from_secs(1);
    let mut warned = false;
    loop {
        let mut events = watcher(api.clone(), config.clone()).boxed();
        let mut relist: HashMap<LiveKey, Live> = HashMap::new();
        while let Some(event) = events.next().await {
            let Some(cache) = cache.upgrade() else { return };
            match event {
                Ok(watcher::Event::Init) => relist.clear(),
                Ok(watcher::Event::InitApply(object)) => {
                    if let Some((key, live)) = live_of(&scope, &object) {
                        relist.insert(key, live);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    cache.listed(&scope, std::mem::take(&mut relist));
                    backoff = Duration::from_secs(1);
                    if warned {
                        tracing::info!(member = %cache.member, kind = %scope.kind, "watch listed again");
                        warned = false;
                    }
                }
                Ok(watcher::Event::Apply(object)) => cache.applied(&scope, &object),
                Ok(watcher::Event::Delete(object)) => cache.deleted(&scope, &object),
                Err(e) => {
                    cache.unsynced(&scope);
                    if !warned {
                        tracing::warn!(
                            member = %cache.member,
                            kind = %scope.kind,
                            namespace = scope.namespace.as_deref().unwrap_or("(all)"),
                            error = %e,
                            "watch failed: this kind is read from the member until it lists again"
                        );
                        warned = true;
                    }
                    break;
                }
            }
        }
        if cache.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("object")
    }

    #[test]
    fn a_record_names_its_policy_and_current_revision() {
        let o = object(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "tideway-revisions-prod-api", "namespace": "tideway-system",
                         "resourceVersion": "7",
                         "labels": {REVISIONS_OF_LABEL: "prod.api.v2", MANAGED_BY_LABEL: MANAGED_BY}},
            "data": {"current": "sha256:aa", "previous": "sha256:bb"},
        }));
        let scope = WatchScope {
            group: String::new(),
            kind: "ConfigMap".into(),
            namespace: None,
        };
        let (_, live) = live_of(&scope, &o).expect("live");
        let (policy, current) = live.record.expect("a record");
        assert_eq!(
            (policy.namespace.as_str(), policy.name.as_str()),
            ("prod", "api.v2")
        );
        assert_eq!(current.as_deref(), Some("sha256:aa"));
        assert!(live.policy.is_none());
    }

    fn plugin(name: &str, version: &str) -> DynamicObject {
        object(json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": name, "namespace": "prod", "resourceVersion": version,
                         "labels": {MANAGED_BY_LABEL: MANAGED_BY, POLICY_LABEL: "api",
                                    POLICY_NAMESPACE_LABEL: "prod"},
                         "managedFields": [{"manager": "tideway", "operation": "Apply"}]},
            "spec": {},
        }))
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            group: "extensions.istio.io".into(),
            version: "v1alpha1".into(),
            kind: "WasmPlugin".into(),
            namespace: Some("prod".into()),
            name: name.into(),
        }
    }

    /// A cache that never talks to a server, and the policies it reports.
    fn cache() -> (Arc<LiveCache>, Arc<Mutex<Vec<PolicyRef>>>) {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        let told = Arc::new(Mutex::new(Vec::new()));
        let sink = told.clone();
        let on_change: OnChange = Arc::new(move |p| sink.lock().expect("lock").push(p));
        (
            LiveCache::new("m", client.clone(), client, Some(on_change)),
            told,
        )
    }

    fn scope() -> WatchScope {
        WatchScope {
            group: "extensions.istio.io".into(),
            kind: "WasmPlugin".into(),
            namespace: None,
        }
    }

    fn listed(cache: &LiveCache, objects: &[DynamicObject]) {
        let fresh = objects
            .iter()
            .filter_map(|o| live_of(&scope(), o))
            .collect();
        cache.listed(&scope(), fresh);
    }

    #[tokio::test]
    async fn only_changes_tideway_did_not_make_are_reported() {
        let (cache, told) = cache();
        let policy = PolicyRef {
            name: "api".into(),
            namespace: "prod".into(),
        };
        let taken = |told: &Mutex<Vec<PolicyRef>>| std::mem::take(&mut *told.lock().expect("lock"));
        // Verified before the watch first listed, then deleted before that
        // list: the first list reports it.
        cache.verified(&key("a"), "5", "sha256:r1", &policy);
        cache.verified(&key("b"), "6", "sha256:r1", &policy);
        listed(&cache, &[plugin("b", "6")]);
        assert_eq!(taken(&told), std::slice::from_ref(&policy), "a is gone");
        // Tideway's own write (the verified resourceVersion): nothing.
        cache.verified(&key("b"), "7", "sha256:r1", &policy);
        cache.applied(&scope(), &plugin("b", "7"));
        assert!(taken(&told).is_empty());
        // Someone else's write: reported, and b is no longer verified.
        cache.applied(&scope(), &plugin("b", "8"));
        assert_eq!(taken(&told), std::slice::from_ref(&policy));
        assert_eq!(
            cache
                .lock()
                .objects
                .get(&LiveKey::of(&key("b")))
                .map(|l| l.resource_version.as_str()),
            Some("8")
        );
        // Tideway's own deletion: nothing; someone else's: reported.
        cache.applied(&scope(), &plugin("c", "9"));
        taken(&told);
        cache.deleting(&key("c"));
        cache.deleted(&scope(), &plugin("c", "10"));
        assert!(taken(&told).is_empty());
        cache.deleted(&scope(), &plugin("b", "11"));
        assert_eq!(taken(&told), std::slice::from_ref(&policy));
        // A relist after the watch was down: what moved is reported once.
        cache.verified(&key("d"), "12", "sha256:r1", &policy);
        cache.applied(&scope(), &plugin("d", "12"));
        listed(&cache, &[plugin("d", "13")]);
        assert_eq!(taken(&told), [policy]);
    }

    #[tokio::test]
    async fn a_render_is_in_sync_only_when_every_object_is_verified_at_its_revision() {
        let (cache, _) = cache();
        let policy = PolicyRef {
            name: "api".into(),
            namespace: "prod".into(),
        };
        let keys = [key("a")];
        // Nothing listed yet: it cannot tell.
        assert!(matches!(
            cache.needs_rollout(&policy, "sha256:r1", &keys),
            Verdict::Unknown(_)
        ));
        {
            let mut state = cache.lock();
            for (group, kind) in [("extensions.istio.io", "WasmPlugin"), ("", "ConfigMap")] {
                state.kinds.insert(
                    (group.into(), kind.into()),
                    KindEntry::Served {
                        resource: ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1", kind)),
                        capabilities: ApiCapabilities {
                            scope: Scope::Namespaced,
                            subresources: vec![],
                            operations: vec![],
                        },
                        reach: Some(Reach::Cluster),
                    },
                );
            }
        }
        let records = WatchScope {
            group: String::new(),
            kind: "ConfigMap".into(),
            namespace: None,
        };
        let record = object(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "tideway-revisions-prod-api", "namespace": REVISIONS_NAMESPACE,
                         "resourceVersion": "1",
                         "labels": {REVISIONS_OF_LABEL: "prod.api", MANAGED_BY_LABEL: MANAGED_BY}},
            "data": {"current": "sha256:r1"},
        }));
        cache.listed(&records, [live_of(&records, &record).expect("live")].into());
        listed(&cache, &[plugin("a", "5")]);
        // Listed, not verified (a restarted controller): a rollout reads it.
        assert!(matches!(
            cache.needs_rollout(&policy, "sha256:r1", &keys),
            Verdict::Needed(_)
        ));
        cache.verified(&key("a"), "5", "sha256:r1", &policy);
        assert_eq!(
            cache.needs_rollout(&policy, "sha256:r1", &keys),
            Verdict::InSync
        );
        // Another revision, or an object the render no longer has: needed.
        assert!(matches!(
            cache.needs_rollout(&policy, "sha256:r2", &keys),
            Verdict::Needed(_)
        ));
        cache.applied(&scope(), &plugin("old", "6"));
        assert!(matches!(
            cache.needs_rollout(&policy, "sha256:r1", &keys),
            Verdict::Needed(why) if why.contains("no longer rendered")
        ));
    }

    #[test]
    fn a_scope_covers_its_namespace_or_all() {
        let key = LiveKey {
            group: "g".into(),
            kind: "K".into(),
            namespace: Some("a".into()),
            name: "n".into(),
        };
        let all = WatchScope {
            group: "g".into(),
            kind: "K".into(),
            namespace: None,
        };
        let a = WatchScope {
            namespace: Some("a".into()),
            ..all.clone()
        };
        let b = WatchScope {
            namespace: Some("b".into()),
            ..all.clone()
        };
        assert!(all.covers(&key) && a.covers(&key) && !b.covers(&key));
    }
}
