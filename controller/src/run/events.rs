//! Events on TrafficPolicies (events.k8s.io/v1) that stay true for their
//! latest occurrence.
//!
//! The same event again — same policy, type, reason and note — within a
//! few minutes is counted on the first one (its `series`: count and last
//! time seen), as `kubectl describe` and `kubectl get events` expect. An
//! event with another note is a new Event, never a repeat of an older one.
//! kube-runtime's recorder keys its series on type, reason and action only
//! and keeps the first note (and an Event's note cannot be changed), so a
//! policy's `Applied` event went on naming the first of several revisions;
//! that is why this small recorder exists.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use std::collections::HashMap;

/// How long a repeat is counted on the earlier Event rather than made a
/// new one (kube-runtime's recorder uses the same).
const SERIES_FOR: SignedDuration = SignedDuration::from_secs(6 * 60);
/// Notes longer than this are cut (the API server refuses over 1 kB).
const MAX_NOTE: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    name: String,
    uid: String,
    warning: bool,
    reason: String,
    note: String,
}

#[derive(Debug, Clone)]
struct Published {
    event: String,
    count: i32,
    last: Timestamp,
}

/// One thing that happened to a policy.
#[derive(Debug, Clone)]
pub struct PolicyEvent {
    pub warning: bool,
    /// Why, in CamelCase (`Applied`, `RolledBack`, `FieldConflict`).
    pub reason: &'static str,
    /// What Tideway was doing (`Rollout`, `Rollback`, `Cleanup`).
    pub action: &'static str,
    pub note: String,
}

/// Publishes [`PolicyEvent`]s; see the module doc.
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    published: tokio::sync::Mutex<HashMap<Key, Published>>,
}

fn cut(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut at = MAX_NOTE;
        while !note.is_char_boundary(at) {
            at -= 1;
        }
        note.truncate(at);
        note.push('…');
    }
    note
}

impl EventRecorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            published: Default::default(),
        }
    }

    /// Publish `event` on the object `regarding` (in its namespace).
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        event: PolicyEvent,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let note = cut(event.note);
        let key = Key {
            namespace: namespace.clone(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone().unwrap_or_default(),
            warning: event.warning,
            reason: event.reason.to_string(),
            note: note.clone(),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Timestamp::now();
        // Held across the request: two reconciles of one policy do not run
        // at once, and the few that publish together wait milliseconds.
        let mut published = self.published.lock().await;
        published.retain(|_, p| p.last + SERIES_FOR > now);
        if let Some(earlier) = published.get_mut(&key) {
            let count = earlier.count + 1;
            let series = json!({"series": EventSeries {
                count,
                last_observed_time: MicroTime(now),
            }});
            match api
                .patch(
                    &earlier.event,
                    &PatchParams::default(),
                    &Patch::Merge(&series),
                )
                .await
            {
                Ok(_) => {
                    earlier.count = count;
                    earlier.last = now;
                    return Ok(());
                }
                // The API server dropped it (events live an hour): a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let created = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..Default::default()
            },
            action: Some(event.action.to_string()),
            reason: Some(event.reason.to_string()),
            note: Some(note),
            type_: Some(if event.warning { "Warning" } else { "Normal" }.to_string()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &created).await?;
        published.insert(
            key,
            Published {
                event: name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_note_is_cut_at_a_character_boundary() {
        let note = cut("é".repeat(600));
        assert!(note.len() <= MAX_NOTE + '…'.len_utf8());
        assert!(note.ends_with('…'));
        assert_eq!(cut("short".into()), "short");
    }
}
