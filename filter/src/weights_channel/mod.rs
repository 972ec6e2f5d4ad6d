//! The weights channel, filter side: run-time weights from the
//! controller's weights API (`crate::weights` is the wire format), shared
//! by every worker of the proxy.
//!
//! One [`WeightsChannel`] lives in each worker. On the tick each one:
//! 1. runs the [`lease`]: one worker per proxy holds it and polls;
//! 2. adopts the document the holder wrote to shared data ([`record`]) if
//!    its version is newer than the one it runs on — checked against this
//!    worker's own config ([`adopt`]) — so every worker adopts a new version
//!    on its next tick, and no request reads shared data or waits on the
//!    channel;
//! 3. applies the TTL: when the controller has not confirmed the weights
//!    (a `200` or `304`) for `ttlMs`, the static weights of the plugin
//!    config apply again, until it does;
//! 4. if it holds the lease, sends the next poll when one is due ([`poll`]).
//!
//! The holder validates every answer before it writes it: a malformed,
//! stale (lower version) or unauthorised (unknown service or destination)
//! document, and a `401`/`403`, is rejected — an [`Event::Rejected`] the
//! host logs and counts — and the previous weights stay.

pub mod adopt;
pub mod lease;
pub mod poll;
pub mod record;

pub use crate::weights::{DestinationOverride, RuntimeWeights, ServiceOverride};
pub use adopt::{RejectReason, Rejection};
pub use lease::LeaseChange;
pub use poll::PollRequest;

use crate::config::{ConfigError, WeightsSourceConfig};
use crate::decision::Engine;
use crate::shared_stats::{SharedStore, StoreError};
use lease::Lease;
use poll::{Answer, Poller};
use record::{DocumentRecord, Keys};

/// What the channel did, for the host to log and count.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The engine now runs on this version's weights (a new version, or
    /// the same one confirmed again after it had expired).
    Adopted { version: u64 },
    /// The controller did not confirm the weights for `ttlMs`: the
    /// static weights apply again.
    Expired { version: u64 },
    /// A document or answer was not adopted; the previous weights stay.
    Rejected(Rejection),
    /// A poll failed.
    PollFailed(PollFailure),
    /// This worker took the lease, or lost it.
    Lease(LeaseChange),
}

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollFailure {
    /// The host refused the call (its status): the cluster is unknown, say.
    NotSent(String),
    /// An answer with an unexpected status.
    Status(u16),
    /// No status: a reset, or the cluster has no healthy endpoint.
    NoAnswer,
    /// No answer at all within the call's timeout.
    Overdue,
    /// A `304` to a poll that named no version (the server's error).
    UnaskedNotModified,
}

impl std::fmt::Display for PollFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollFailure::NotSent(why) => write!(f, "not sent: {why}"),
            PollFailure::Status(code) => write!(f, "answered {code}"),
            PollFailure::NoAnswer => f.write_str("no answer (reset or unreachable)"),
            PollFailure::Overdue => f.write_str("no answer in time"),
            PollFailure::UnaskedNotModified => f.write_str("304 to a poll that named no version"),
        }
    }
}

/// What a step asks of the host: log and count `events`, send `poll`.
#[derive(Debug, Default)]
pub struct Step {
    pub events: Vec<Event>,
    pub poll: Option<PollRequest>,
}

/// The document a worker holds: checked against its live config.
#[derive(Debug, Clone)]
struct Held {
    body: Vec<u8>,
    weights: RuntimeWeights,
}

/// One worker's side of the weights channel.
#[derive(Debug)]
pub struct WeightsChannel {
    source: WeightsSourceConfig,
    keys: Keys,
    lease: Lease,
    poller: Poller,
    held: Option<Held>,
    /// When the controller last confirmed `held` (Unix ns).
    confirmed_at_ns: u64,
    /// The engine runs on `held` (not the static weights).
    applied: bool,
    /// The newest version the server sent, adopted or not: what the next
    /// poll's `If-None-Match` names, so a rejected version is not sent
    /// again until it changes.
    seen_version: Option<u64>,
    /// A shared record this worker could not adopt (its version, or
    /// `u64::MAX` for an unreadable one): rejected once, not every tick.
    refused_record: Option<u64>,
}

const MS: u64 = 1_000_000;

impl WeightsChannel {
    /// `holder_id`: random per VM instance; `plugin_name`: the keys'
    /// namespace (see [`record`]).
    pub fn new(source: WeightsSourceConfig, plugin_name: &str, holder_id: u64) -> Self {
        Self {
            source,
            keys: Keys::for_plugin(plugin_name),
            lease: Lease::new(holder_id),
            poller: Poller::new(),
            held: None,
            confirmed_at_ns: 0,
            applied: false,
            seen_version: None,
            refused_record: None,
        }
    }

    pub fn source(&self) -> &WeightsSourceConfig {
        &self.source
    }

    /// The version the engine runs on (`None`: static weights).
    pub fn applied_version(&self) -> Option<u64> {
        self.held
            .as_ref()
            .filter(|_| self.applied)
            .map(|h| h.weights.version)
    }

    /// Whether call `token` is this channel's poll.
    pub fn owns(&self, token: u32) -> bool {
        self.poller.in_flight() == Some(token)
    }

    /// The engine was rebuilt for a new config (on static weights): forget
    /// the held document, so the next step ([`WeightsChannel::on_tick`],
    /// which the host runs at once) checks what the holder last wrote
    /// against the new config and applies it if it passes.
    pub fn reconfigured(&mut self, source: WeightsSourceConfig) {
        self.source = source;
        self.held = None;
        self.applied = false;
        self.refused_record = None;
        self.seen_version = None;
    }

    /// The tick: lease, adoption from shared data, TTL, next poll.
    pub fn on_tick(
        &mut self,
        engine: &mut Engine,
        store: &mut dyn SharedStore,
        now_ns: u64,
    ) -> Step {
        let mut step = Step::default();
        let change = self.lease.tick(
            store,
            &self.keys.lease,
            now_ns,
            self.source.lease_ms.saturating_mul(MS),
        );
        if change != LeaseChange::None {
            if matches!(change, LeaseChange::Acquired { .. }) {
                self.poller.restart(now_ns);
            }
            step.events.push(Event::Lease(change));
        }
        self.adopt_shared(engine, store, &mut step.events);
        self.settle(engine, now_ns, &mut step.events);
        step.poll = self.poll_due(engine, now_ns, &mut step.events);
        step
    }

    /// The poll went out as call `token`.
    pub fn sent(&mut self, token: u32, request: &PollRequest, now_ns: u64) {
        self.poller.sent(token, request, now_ns);
    }

    /// The poll could not be sent (`why`: the host's status).
    pub fn not_sent(&mut self, why: &str, now_ns: u64) -> Event {
        self.poller.failed(&self.source, now_ns);
        Event::PollFailed(PollFailure::NotSent(why.to_string()))
    }

    /// The answer to call `token`; `None` if it is not this channel's.
    /// `body(max)` reads the answer body, or says how large it is when it
    /// exceeds `max` bytes; it is called only for a `200`.
    pub fn on_answer(
        &mut self,
        token: u32,
        status: Option<u16>,
        body: impl FnOnce(u64) -> Result<Vec<u8>, u64>,
        engine: &mut Engine,
        store: &mut dyn SharedStore,
        now_ns: u64,
    ) -> Option<Step> {
        let answer = self.poller.answered(token, status)?;
        let mut step = Step::default();
        let outcome = match answer {
            Answer::Document => self.take_document(body(self.source.max_bytes), engine, now_ns),
            Answer::NotModified => match &self.held {
                Some(h) if Some(h.weights.version) == self.seen_version => {
                    self.confirmed_at_ns = now_ns;
                    Ok(())
                }
                // A 304 for a version this worker rejected confirms nothing
                // it runs on; a 304 to a poll that named no version is the
                // server's error.
                Some(_) => Ok(()),
                None if self.seen_version.is_some() => Ok(()),
                None => Err(Event::PollFailed(PollFailure::UnaskedNotModified)),
            },
            Answer::Denied(code) => Err(Event::Rejected(Rejection::new(
                RejectReason::Denied,
                ConfigError::new(
                    "weightsSource",
                    format!(
                        "the weights API at cluster {:?} answered {code}: this proxy is not \
                         allowed to read weights",
                        self.source.cluster
                    ),
                ),
            ))),
            Answer::Failed(code) => Err(Event::PollFailed(
                code.map_or(PollFailure::NoAnswer, PollFailure::Status),
            )),
        };
        match outcome {
            Ok(()) => {
                self.poller.succeeded(now_ns);
                self.publish(store);
            }
            Err(event) => {
                self.poller.failed(&self.source, now_ns);
                step.events.push(event);
            }
        }
        self.settle(engine, now_ns, &mut step.events);
        step.poll = self.poll_due(engine, now_ns, &mut step.events);
        Some(step)
    }

    /// A `200`'s body: validated, version-checked, held.
    fn take_document(
        &mut self,
        body: Result<Vec<u8>, u64>,
        engine: &Engine,
        now_ns: u64,
    ) -> Result<(), Event> {
        let body = body.map_err(|size| {
            Event::Rejected(Rejection::new(
                RejectReason::Malformed,
                ConfigError::new(
                    "weights",
                    format!(
                        "a body of {size} bytes (weightsSource.maxBytes is {})",
                        self.source.max_bytes
                    ),
                ),
            ))
        })?;
        let doc = adopt::parse(&body).map_err(Event::Rejected)?;
        // A version the server sent, even rejected, is not asked for again.
        let sent_version = doc.version;
        let weights = adopt::check(&doc, &engine.config).map_err(|r| {
            self.seen_version = self.seen_version.max(Some(sent_version));
            Event::Rejected(r)
        })?;
        let version = weights.version;
        let held_version = self.held.as_ref().map(|h| h.weights.version);
        if let Some(held) = held_version.filter(|&h| version < h) {
            return Err(Event::Rejected(Rejection::new(
                RejectReason::Stale,
                ConfigError::new(
                    "weights.version",
                    format!("{version} is lower than version {held}, adopted already"),
                ),
            )));
        }
        self.seen_version = self.seen_version.max(Some(version));
        self.confirmed_at_ns = now_ns;
        if held_version != Some(version) {
            self.held = Some(Held { body, weights });
            self.applied = false;
        }
        Ok(())
    }

    /// Adopt the holder's document from shared data if it is newer.
    fn adopt_shared(
        &mut self,
        engine: &Engine,
        store: &mut dyn SharedStore,
        events: &mut Vec<Event>,
    ) {
        let Ok(Some((bytes, _))) = store.get(&self.keys.document) else {
            return;
        };
        // An unreadable record counts as the newest version, refused once.
        let header = DocumentRecord::decode_header(&bytes);
        let (version, confirmed_at_ns) = header.unwrap_or((u64::MAX, 0));
        let held_version = self.held.as_ref().map(|h| h.weights.version);
        if held_version == Some(version) {
            self.confirmed_at_ns = self.confirmed_at_ns.max(confirmed_at_ns);
            return;
        }
        if held_version.is_some_and(|h| version < h) || self.refused_record == Some(version) {
            return;
        }
        let body = DocumentRecord::body_of(&bytes);
        let checked = match header {
            Some(_) => adopt::parse_and_check(body, &engine.config).map_err(Some),
            None => Err(None),
        };
        match checked {
            Ok(weights) if weights.version == version => {
                self.held = Some(Held {
                    body: body.to_vec(),
                    weights,
                });
                self.seen_version = self.seen_version.max(Some(version));
                self.confirmed_at_ns = confirmed_at_ns;
                self.applied = false;
            }
            Ok(_) | Err(None) => {
                self.refused_record = Some(version);
                events.push(Event::Rejected(Rejection::new(
                    RejectReason::Malformed,
                    ConfigError::new(
                        self.keys.document.clone(),
                        "a shared record this build cannot read (another version's format)",
                    ),
                )));
            }
            Err(Some(r)) => {
                self.refused_record = Some(version);
                events.push(Event::Rejected(r));
            }
        }
    }

    /// Apply the held weights if the controller confirmed them within
    /// `ttlMs`, else the static ones.
    fn settle(&mut self, engine: &mut Engine, now_ns: u64, events: &mut Vec<Event>) {
        let ttl_ns = self.source.ttl_ms.saturating_mul(MS);
        let fresh = now_ns < self.confirmed_at_ns.saturating_add(ttl_ns);
        match &self.held {
            Some(held) if fresh && !self.applied => {
                engine.apply_weights(Some(&held.weights));
                self.applied = true;
                events.push(Event::Adopted {
                    version: held.weights.version,
                });
            }
            Some(held) if !fresh && self.applied => {
                engine.apply_weights(None);
                self.applied = false;
                events.push(Event::Expired {
                    version: held.weights.version,
                });
            }
            _ => {}
        }
    }

    /// The poll to send now, if this worker holds the lease and one is due.
    fn poll_due(
        &mut self,
        engine: &Engine,
        now_ns: u64,
        events: &mut Vec<Event>,
    ) -> Option<PollRequest> {
        if !self.lease.is_held(now_ns) && self.poller.in_flight().is_none() {
            return None;
        }
        let services: Vec<&str> = engine
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let (request, overdue) =
            self.poller
                .due(&self.source, &services, self.seen_version, now_ns);
        if overdue {
            events.push(Event::PollFailed(PollFailure::Overdue));
        }
        request.filter(|_| self.lease.is_held(now_ns))
    }

    /// Write the held document, confirmed now, for the other workers —
    /// unless a newer one is there already.
    fn publish(&mut self, store: &mut dyn SharedStore) {
        let Some(held) = &self.held else {
            return;
        };
        let version = held.weights.version;
        for _ in 0..4 {
            let cas = match store.get(&self.keys.document) {
                Ok(Some((bytes, cas))) => {
                    let theirs = DocumentRecord::decode_header(&bytes);
                    if theirs.is_some_and(|(v, at)| {
                        v > version || (v == version && at >= self.confirmed_at_ns)
                    }) {
                        return;
                    }
                    Some(cas)
                }
                Ok(None) => None,
                Err(_) => return,
            };
            let record = DocumentRecord {
                version,
                confirmed_at_ns: self.confirmed_at_ns,
                body: held.body.clone(),
            };
            match store.set(&self.keys.document, &record.encode(), cas) {
                Err(StoreError::CasMismatch) => continue,
                Ok(()) | Err(StoreError::Unavailable) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
