//! Leader election with a `coordination.k8s.io/v1` Lease, managed here
//! (kube-rs has none built in), the way client-go's leaderelection does it:
//!
//! - a candidate takes the Lease when it does not exist, has no holder, or
//!   its record has not changed for `lease_duration` as seen by the
//!   candidate's own clock (no comparison of clocks across machines);
//! - the holder renews it every `renew_interval`; every write carries the
//!   `resourceVersion` it read, so two candidates never both win (the
//!   loser gets 409 Conflict);
//! - a holder that cannot renew within `lease_duration`, or finds another
//!   holder in the record, has lost: it must stop acting at once;
//! - on shutdown the holder releases the Lease (no holder, duration 1 s) so
//!   the standby takes over without waiting a whole term.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    /// How often a standby looks at the Lease.
    pub retry_interval: Duration,
}

/// What one look at the Lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// We hold it (just created, taken over or renewed).
    Held,
    /// Someone else holds it and their record is fresh.
    HeldBy(String),
}

/// One candidate's view of the Lease over time.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The record last seen (`resourceVersion`) and when it was first seen.
    seen: Option<(String, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            seen: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Look at the Lease once: create, renew or take it over if we may.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Observed, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(seconds(self.config.lease_duration)),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Observed::Held),
                // Another candidate created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Observed::HeldBy(String::new())),
                Err(e) => Err(e),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.config.identity;
        if !mine {
            // Expired: the record has not changed for a whole term as this
            // candidate's clock measures it (or there is no holder).
            let first_seen = match &self.seen {
                Some((v, at)) if *v == version => *at,
                _ => {
                    let at = Instant::now();
                    self.seen = Some((version.clone(), at));
                    at
                }
            };
            let term = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(self.config.lease_duration);
            let free = holder.is_empty() || first_seen.elapsed() >= term;
            if !free {
                return Ok(Observed::HeldBy(holder));
            }
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(seconds(self.config.lease_duration));
        spec.renew_time = Some(now());
        // `replace` sends the resourceVersion read above: a concurrent
        // writer makes this a 409, never a second leader.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Observed::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Observed::HeldBy(holder)),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (shutdown): no holder, so a standby takes it on
    /// its next look.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}
