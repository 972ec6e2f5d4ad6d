//! A rendered object's identity.

use super::FIELD_MANAGER;
use kube::api::DynamicObject;
use kube::core::GroupVersionKind;
use serde_json::Value;

/// The identity of a rendered object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn of(object: &Value) -> Option<Self> {
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

    pub fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk(&self.group, &self.version, &self.kind)
    }

    /// The same object whatever the version it is served at (a render may
    /// move a kind to a newer version of its group).
    pub fn same_object(&self, other: &Self) -> bool {
        self.group == other.group
            && self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
    }

    /// `Kind namespace/name` (or `Kind name`), as outcomes and messages say it.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// Did Tideway ever apply this object? Prune deletes only what Tideway
/// itself applied, not an object someone else labelled like ours.
pub(crate) fn applied_by_tideway(object: &DynamicObject) -> bool {
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
