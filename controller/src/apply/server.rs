//! Talking to one member's API server: its resource types, and what a
//! failed request means for the rollout.

use super::live::LiveCache;
use super::object::ObjectKey;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind, Status};
use kube::discovery::{ApiCapabilities, Scope};
use kube::Client;
use std::collections::BTreeMap;
use std::sync::Arc;
use tideway_oci::error_chain;

/// Why a request failed, as far as the rollout cares.
pub(super) enum Failure {
    /// No answer from the API server (connection, TLS, timeout).
    Unreachable(String),
    /// The API server answered with an error status.
    Api(Box<Status>),
    /// The server has no such kind (its CRD is not installed).
    NoKind(String),
    /// The server took the request but what it stored is not what
    /// Tideway can stand behind (says why).
    Failed(String),
}

pub(super) fn classify(e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(status) => Failure::Api(status),
        kube::Error::Discovery(d) => Failure::NoKind(error_chain(&d)),
        other => Failure::Unreachable(error_chain(&other)),
    }
}

pub(super) fn gv_text(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        gvk.version.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.version)
    }
}

pub(super) type Resource = (ApiResource, ApiCapabilities);

/// The member's resource types, looked up once per kind (for the whole
/// life of the member's [`LiveCache`] when there is one, else per
/// rollout).
pub(super) struct Resources {
    pub client: Client,
    pub live: Option<Arc<LiveCache>>,
    known: BTreeMap<(String, String, String), Resource>,
}

impl Resources {
    pub fn new(client: Client, live: Option<Arc<LiveCache>>) -> Self {
        Self {
            client,
            live,
            known: BTreeMap::new(),
        }
    }

    pub async fn resolve(&mut self, gvk: &GroupVersionKind) -> Result<Resource, Failure> {
        let key = (gvk.group.clone(), gvk.version.clone(), gvk.kind.clone());
        if let Some(found) = self.known.get(&key) {
            return Ok(found.clone());
        }
        let found = match &self.live {
            Some(live) => match live.resolve(gvk).await {
                Ok(Some(found)) => found,
                Ok(None) => {
                    return Err(Failure::NoKind(format!(
                        "no {} in API group {}",
                        gvk.kind,
                        gv_text(gvk)
                    )))
                }
                Err(e) => return Err(classify(e)),
            },
            None => match kube::discovery::pinned_kind(&self.client, gvk).await {
                Ok(found) => found,
                // A group the server does not serve at all answers 404.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(Failure::NoKind(format!("no API group {}", gv_text(gvk))))
                }
                Err(e) => return Err(classify(e)),
            },
        };
        self.known.insert(key, found.clone());
        Ok(found)
    }

    pub fn api(&self, resource: &Resource, namespace: Option<&str>) -> Api<DynamicObject> {
        match (&resource.1.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => {
                Api::namespaced_with(self.client.clone(), ns, &resource.0)
            }
            _ => Api::all_with(self.client.clone(), &resource.0),
        }
    }

    /// The API for `key`'s kind and namespace.
    pub async fn api_for(&mut self, key: &ObjectKey) -> Result<Api<DynamicObject>, Failure> {
        let resource = self.resolve(&key.gvk()).await?;
        Ok(self.api(&resource, key.namespace.as_deref()))
    }
}
