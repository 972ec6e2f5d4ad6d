//! The closed-loop simulator's core: virtual time, and proxy workers that
//! run the filter's engine on the in-memory host.
//!
//! The what-if predictor (`whatif`) and the steering simulator
//! (`tests/sim`) both model clients that send a request, wait for its
//! answer and send again, with the real `Engine::route` and
//! `Engine::complete` choosing the destinations. What they share is here,
//! so that a prediction and a simulated test run the engine the same way:
//! the same event order, the same ticks, the same request lifecycle, the
//! same jitter and quantiles. What each models on top (queues, pauses,
//! errors, other load balancers) stays with it.

use crate::decision::memory::{MemoryHost, SplitMix};
use crate::decision::{Engine, InFlight, StreamEvent};
use crate::header_map::{serialize_pairs, HeaderMap};
use crate::shared_stats::SharedStore;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A millisecond of virtual time, in nanoseconds.
pub const MS: u64 = 1_000_000;

/// Events in time order; events at the same time in the order they were
/// pushed, so a run is the same on every target.
#[derive(Debug)]
pub struct Timeline<E> {
    events: BinaryHeap<Reverse<(u64, u64, E)>>,
    pushed: u64,
}

impl<E: Ord> Default for Timeline<E> {
    fn default() -> Self {
        Self {
            events: BinaryHeap::new(),
            pushed: 0,
        }
    }
}

impl<E: Ord> Timeline<E> {
    pub fn push(&mut self, at: u64, event: E) {
        self.pushed += 1;
        self.events.push(Reverse((at, self.pushed, event)));
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        self.events.pop().map(|Reverse((at, _, event))| (at, event))
    }
}

/// One proxy worker: its engine and its tick.
#[derive(Debug)]
pub struct Worker {
    pub engine: Engine,
    next_tick: u64,
    tick: u64,
}

impl Worker {
    /// A worker whose first tick is at `first_tick`, then every `tick` ns.
    pub fn new(engine: Engine, first_tick: u64, tick: u64) -> Self {
        Self {
            engine,
            next_tick: first_tick,
            tick: tick.max(1),
        }
    }

    /// Runs the ticks due by `now`: each merges the shared statistics and
    /// retunes the timing, as the proxy's tick does. `runs_at(t)`: when
    /// the worker gets to a tick due at `t` (later than `t` while it is
    /// paused); a tick it cannot run by `now` waits, and so do the later.
    pub fn run_ticks(
        &mut self,
        now: u64,
        store: &mut dyn SharedStore,
        runs_at: impl Fn(u64) -> u64,
    ) {
        while self.next_tick <= now {
            let at = runs_at(self.next_tick);
            if at > now {
                break;
            }
            let _ = self.engine.sync_shared(store, at);
            self.engine.retune_timing(at);
            self.next_tick += self.tick;
        }
    }

    /// A request with these headers, routed at the host's clock.
    pub fn send(&mut self, headers: &[u8], host: &mut MemoryHost) -> Option<InFlight> {
        self.engine.route(&HeaderMap::parse(headers), host)
    }

    /// A routed request's answer arrives with the host's response, and its
    /// stream ends.
    pub fn answer(&mut self, flight: &mut InFlight, host: &mut MemoryHost) {
        let _ = self
            .engine
            .complete(flight, StreamEvent::ResponseHeaders, host);
        let _ = self.engine.complete(flight, StreamEvent::End, host);
    }
}

/// The request every simulated client sends: a GET of `/` on `authority`
/// (anonymous: no session key, no trace context).
pub fn request_headers(authority: &str) -> Vec<u8> {
    serialize_pairs(&[
        (":authority", authority),
        (":path", "/"),
        (":method", "GET"),
    ])
}

/// A log-normal factor (σ = 0.25) around 1: equal destinations are not
/// identical, and the engine has to tell them apart by measuring.
pub fn jitter(rng: &mut SplitMix) -> f64 {
    (0.25 * rng.normal()).exp()
}

/// The `q` quantile (nearest rank) of nanosecond samples, in ms; 0 when
/// there are none.
pub fn quantile_ms(samples: &mut [u64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[rank] as f64 / MS as f64
}
