//! Multi-cluster service discovery: which destinations have ready
//! endpoints. One watch per (member, namespace) the policies' services are
//! in — the member's `Endpoints` objects of that namespace — keeps a count
//! of each service's ready addresses (`subsets[].addresses`;
//! `notReadyAddresses` do not count). Per namespace, not per service: a
//! watch holds an HTTP/1.1 connection to the member's API server for as
//! long as it runs, and 1,000 policies would otherwise hold 1,000 of them
//! to every member (istiod, too, watches a namespace's endpoints, not one
//! service's). A destination whose member has an Endpoints object with zero
//! ready addresses is taken out of the policy's destinations before it is
//! compiled, so the filter's configuration in every member stops sending
//! there; when addresses are ready again it is put back. Both go through
//! the same rollout (waves, gate, rollback) as any policy change: a change
//! of drained-ness triggers the policies that name the service.
//!
//! Unknown is not zero: a member whose Endpoints cannot be read (not there,
//! member unreachable, watch not started yet) keeps its destination, and
//! the last destination is never drained (the filter needs one; Istio's own
//! outlier detection still applies).

use crate::api::TrafficPolicy;
pub use crate::drain::{drain, ready_addresses};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Endpoints;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// (member, service namespace, service name).
pub type ServiceKey = (String, String, String);

#[derive(Default)]
struct State {
    /// Ready addresses, once the watch has seen the Endpoints object.
    ready: HashMap<ServiceKey, usize>,
    /// Watches started: (member, namespace).
    watching: BTreeSet<(String, String)>,
    /// Which policies name each service (to trigger on a change).
    policies: HashMap<ServiceKey, HashSet<ObjectRef<TrafficPolicy>>>,
}

/// Shared by the reconciles and the watch tasks.
pub struct Discovery {
    state: Mutex<State>,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<TrafficPolicy>>,
    /// The weights API's state, when `tideway run` serves it: told of every
    /// drain and restore, so proxies polling it stop sending at once (before
    /// the new WasmPlugins arrive).
    weights: Option<Arc<crate::weights::WeightsState>>,
}

impl Discovery {
    /// The discovery state and the stream of policies to reconcile because
    /// a destination was drained or came back (`Controller::reconcile_on`).
    pub fn new(
        weights: Option<Arc<crate::weights::WeightsState>>,
    ) -> (
        Arc<Self>,
        futures::channel::mpsc::UnboundedReceiver<ObjectRef<TrafficPolicy>>,
    ) {
        let (trigger, triggers) = futures::channel::mpsc::unbounded();
        (
            Arc::new(Self {
                state: Mutex::new(State::default()),
                trigger,
                weights,
            }),
            triggers,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watch `key` in `client`'s cluster for `policy` (one watch per
    /// member and namespace).
    pub fn watch(
        self: &Arc<Self>,
        key: ServiceKey,
        client: &kube::Client,
        policy: ObjectRef<TrafficPolicy>,
    ) {
        let mut state = self.lock();
        let named_before = state.policies.contains_key(&key);
        state
            .policies
            .entry(key.clone())
            .or_default()
            .insert(policy);
        // The namespace's watch may have seen this service drained before
        // any policy named it: the weights API learns of it now.
        if !named_before && state.ready.get(&key) == Some(&0) {
            if let Some(weights) = &self.weights {
                weights.set_no_ready_endpoints(&key.0, &key.2, true);
            }
        }
        let (member, namespace) = (key.0, key.1);
        if !state.watching.insert((member.clone(), namespace.clone())) {
            return;
        }
        drop(state);
        let api: Api<Endpoints> = Api::namespaced(client.clone(), &namespace);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            // The names a relist has shown so far: one it no longer shows
            // was deleted while the watch was down.
            let mut relisted: Option<HashSet<String>> = None;
            while let Some(event) = events.next().await {
                let key_of = |e: &Endpoints| {
                    (
                        member.clone(),
                        namespace.clone(),
                        e.metadata.name.clone().unwrap_or_default(),
                    )
                };
                match event {
                    Ok(watcher::Event::Apply(e)) => {
                        this.set(&key_of(&e), Some(ready_addresses(&e)))
                    }
                    Ok(watcher::Event::InitApply(e)) => {
                        if let Some(seen) = &mut relisted {
                            seen.insert(e.metadata.name.clone().unwrap_or_default());
                        }
                        this.set(&key_of(&e), Some(ready_addresses(&e)));
                    }
                    Ok(watcher::Event::Delete(e)) => this.set(&key_of(&e), None),
                    Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(seen) = relisted.take() {
                            this.forget_all_but(&member, &namespace, &seen);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(member = %member, namespace = %namespace, error = %e, "endpoints watch");
                    }
                }
            }
        });
    }

    /// A relist of `namespace` in `member` showed only `seen`: the others
    /// are gone (unknown again).
    fn forget_all_but(&self, member: &str, namespace: &str, seen: &HashSet<String>) {
        let gone: Vec<ServiceKey> = self
            .lock()
            .ready
            .keys()
            .filter(|k| k.0 == member && k.1 == namespace && !seen.contains(&k.2))
            .cloned()
            .collect();
        for key in gone {
            self.set(&key, None);
        }
    }

    fn set(&self, key: &ServiceKey, count: Option<usize>) {
        let mut state = self.lock();
        let before = state.ready.get(key).copied();
        match count {
            Some(n) => state.ready.insert(key.clone(), n),
            None => state.ready.remove(key),
        };
        let drained = |c: Option<usize>| c == Some(0);
        // The watch sees every service of the namespace; only those a
        // policy names are drained or restored.
        if drained(before) != drained(count) && state.policies.contains_key(key) {
            tracing::info!(
                member = %key.0,
                service = %format!("{}/{}", key.1, key.2),
                ready = ?count,
                "{}",
                if drained(count) { "no ready endpoints: draining the destination" } else { "ready endpoints again: restoring the destination" }
            );
            if let Some(weights) = &self.weights {
                weights.set_no_ready_endpoints(&key.0, &key.2, drained(count));
            }
            for policy in state.policies.get(key).into_iter().flatten() {
                let _ = self.trigger.unbounded_send(policy.clone());
            }
        }
    }

    /// Ready addresses of `key`, if known.
    pub fn ready(&self, key: &ServiceKey) -> Option<usize> {
        self.lock().ready.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(member: &str, service: &str) -> ServiceKey {
        (member.into(), "production".into(), service.into())
    }

    #[test]
    fn only_named_services_trigger_and_a_relist_forgets_the_deleted() {
        let (discovery, mut triggers) = Discovery::new(None);
        let named = ObjectRef::<TrafficPolicy>::new("reviews").within("production");
        discovery
            .lock()
            .policies
            .entry(key("a", "reviews"))
            .or_default()
            .insert(named.clone());
        // The namespace's watch sees services no policy names: their
        // counts are kept (a policy may name them later), nothing fires.
        discovery.set(&key("a", "ratings"), Some(0));
        assert_eq!(discovery.ready(&key("a", "ratings")), Some(0));
        assert!(
            triggers.try_recv().is_err(),
            "no trigger for an unnamed service"
        );
        discovery.set(&key("a", "reviews"), Some(2));
        assert!(triggers.try_recv().is_err(), "unknown → ready is no change");
        discovery.set(&key("a", "reviews"), Some(0));
        assert_eq!(triggers.try_recv().ok(), Some(named.clone()), "drained");
        // A relist that no longer shows `reviews` (deleted while the watch
        // was down) makes it unknown again — restored, not drained.
        let seen: HashSet<String> = ["ratings".to_string()].into();
        discovery.forget_all_but("a", "production", &seen);
        assert_eq!(discovery.ready(&key("a", "reviews")), None);
        assert_eq!(discovery.ready(&key("a", "ratings")), Some(0));
        assert_eq!(triggers.try_recv().ok(), Some(named), "restored");
        // Another member's or namespace's counts are not touched.
        discovery.set(&key("b", "reviews"), Some(1));
        discovery.forget_all_but("a", "production", &HashSet::new());
        assert_eq!(discovery.ready(&key("b", "reviews")), Some(1));
    }
}
