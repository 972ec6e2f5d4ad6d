//! One root context's state, and its (re)configuration: a new engine from
//! the plugin configuration, its metrics, its weights channel and this
//! proxy's identity.

use super::abi::{self, Level};
use super::host::{host_random, local_identity, EntropyPool, HostSharedData};
use super::metrics::{add, record, Metrics};
use super::weights::weights_step;
use super::{log, now_or_zero};
use crate::config::PluginConfig;
use crate::decision::Engine;
use crate::metrics;
use crate::weights_channel::WeightsChannel;

/// One root context's state: its engine, metric ids, entropy and the
/// probes it sent. A VM is single-threaded; its contexts live in `exports`.
pub(super) struct Worker {
    pub(super) engine: Option<Engine>,
    pub(super) metrics: Metrics,
    pub(super) entropy: EntropyPool,
    /// This proxy's cluster or locality still has to be read from Envoy's
    /// node properties (possible only in a stream context).
    pub(super) identity_pending: bool,
    /// Re-admission probes awaiting their answer.
    pub(super) probes: Vec<PendingProbe>,
    /// The unknown-locality warning was logged (it is logged once).
    pub(super) locality_warned: bool,
    /// The weights channel, when the config has a `weightsSource`.
    pub(super) weights: Option<WeightsChannel>,
    /// This VM instance's lease-holder id (random at VM start).
    pub(super) holder_id: u64,
}

/// A probe sent with `proxy_http_call`, by its token.
pub(super) struct PendingProbe {
    pub(super) token: u32,
    pub(super) epoch: u64,
    pub(super) service: usize,
    pub(super) destination: usize,
}

impl Worker {
    pub(super) fn new() -> Self {
        Self {
            engine: None,
            metrics: Metrics::default(),
            entropy: EntropyPool::new(),
            identity_pending: false,
            probes: Vec::new(),
            locality_warned: false,
            weights: None,
            holder_id: 0,
        }
    }

    pub(super) fn on_vm_start(&mut self) -> bool {
        self.metrics.define_fixed();
        let mut id = [0u8; 8];
        host_random(&mut id);
        self.holder_id = u64::from_le_bytes(id);
        true
    }

    pub(super) fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match abi::plugin_configuration(size) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Unreadable is not empty: keep serving the previous one.
                log(
                    Level::Error,
                    &format!("tideway: plugin configuration unreadable: {e}"),
                );
                return false;
            }
        };
        let config = match PluginConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log(Level::Error, &format!("tideway: {e}"));
                add(self.metrics.rejected, 1);
                // Envoy rejects the update; the previous engine (if any)
                // keeps serving.
                return false;
            }
        };
        // If Envoy does not expose the node to the root context yet, what
        // is missing is read again on the first request.
        let local = local_identity(&config);
        let identity_pending =
            local.cluster.is_empty() || local.locality.is_none() || local.namespace.is_none();
        let tick_ms = u32::try_from(config.scheduler.tick_ms).unwrap_or(u32::MAX);
        let mut seed = [0u8; 8];
        host_random(&mut seed);
        // What was gathered under the old configuration goes to its
        // counters and its collector, every span now.
        self.flush(None);
        let mut engine = Engine::new(
            config,
            local,
            u64::from_le_bytes(seed),
            self.engine.as_ref(),
        );
        self.configure_weights(&mut engine);
        self.metrics.define_for(&engine);
        record(self.metrics.generation, engine.epoch());
        record(self.metrics.hash, metrics::config_hash(&bytes));
        log(
            Level::Info,
            &format!(
                "tideway: configuration accepted: {} service(s), local cluster {:?}, locality {:?}",
                engine.services.len(),
                engine.local.cluster,
                engine.local.locality
            ),
        );
        let locality_known = engine.local.locality.is_some();
        self.engine = Some(engine);
        self.identity_pending = identity_pending;
        if !identity_pending || locality_known {
            Self::locality_resolved(&self.metrics, &mut self.locality_warned, locality_known);
        }
        if let Err(e) = abi::set_tick_period_ms(tick_ms) {
            // No tick: no cross-worker merge and no probes, but requests
            // are still routed on this worker's own view.
            log(Level::Error, &format!("tideway: no tick period: {e}"));
        }
        true
    }

    /// Start, keep or end the weights channel for a new engine: a kept
    /// channel checks its document against the new config.
    pub(super) fn configure_weights(&mut self, engine: &mut Engine) {
        let Some(source) = engine.config.weights_source.clone() else {
            self.weights = None;
            return;
        };
        let now = now_or_zero();
        let channel = match self.weights.take() {
            Some(mut channel) => {
                channel.reconfigured(source);
                channel
            }
            None => {
                // Istio leaves vm_id empty, so the keys carry the plugin's name.
                let plugin = abi::property(&["plugin_name"])
                    .ok()
                    .flatten()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                WeightsChannel::new(source, &plugin, self.holder_id)
            }
        };
        // Adopt what the holder wrote now, not on the first tick. The poll
        // waits for the tick: at start-up Envoy may not have the cluster yet.
        let channel = self.weights.insert(channel);
        let mut step = channel.on_tick(engine, &mut HostSharedData, now);
        step.poll = None;
        weights_step(channel, &self.metrics, step, now);
    }

    /// This proxy's locality is settled: known, or not at all — then say
    /// so once, since locality scoring and locality-ordered failover are
    /// silently off without it.
    pub(super) fn locality_resolved(metrics: &Metrics, warned: &mut bool, known: bool) {
        record(metrics.locality_known, u64::from(known));
        if !known && !*warned {
            *warned = true;
            log(
                Level::Warn,
                "tideway: this proxy's locality is unknown (no local.locality in the plugin \
                 configuration, and Envoy's node.locality is empty): locality scoring and \
                 locality-ordered failover are off. Istio sets node.locality from the pod \
                 label topology.istio.io/locality (region/zone/subzone) or the cloud's \
                 metadata; set one of those, or local.locality.",
            );
        }
    }
}
