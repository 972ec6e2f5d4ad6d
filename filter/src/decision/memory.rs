//! The host in memory: [`RouteHost`], [`StreamHost`], [`SharedStore`] and
//! [`TraceRng`] without Envoy, for everything that runs the core off the
//! proxy — the what-if predictor, the steering simulator, the unit tests
//! and the cost example.
//!
//! One implementation next to the traits, as Kuadrant's wasm-shim keeps
//! its host trait and its one mock side by side: a change to a trait is
//! made once, and every user sees the same host rules (Envoy's CAS rules
//! for shared data above all). It is product code, not `cfg(test)`: the
//! what-if predictor runs the engine on it in the browser and the CLI.

use super::request::{HostFailure, RouteHost, StreamHost};
use crate::shared_stats::{SharedStore, StoreError};
use crate::trace::TraceRng;
use std::collections::HashMap;
use std::io::Write as _;

/// A proxy worker's host calls, answered from memory.
///
/// What a request sees is set in the fields (the clock, the peer, the
/// response); what the core did is counted, and recorded one by one unless
/// `quiet` (a long simulation would otherwise keep every write).
#[derive(Debug, Default)]
pub struct MemoryHost {
    /// The clock, Unix nanoseconds.
    pub now: u64,
    /// Every clock read fails, as a host in trouble answers.
    pub failing_clock: bool,
    /// The downstream peer's identity.
    pub principal: Option<Vec<u8>>,
    /// Response headers, by name.
    pub response: Vec<(String, Vec<u8>)>,
    /// Response trailers, by name.
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Envoy's `response.flags`.
    pub flags: u64,
    /// Writes of this header fail, as a host in trouble answers.
    pub failing_header: Option<&'static str>,
    /// The workers' shared data.
    pub store: MemoryStore,
    /// Randomness for trace and span ids.
    pub rng: SplitMix,
    /// Count calls without recording each write and read.
    pub quiet: bool,
    /// Request-header writes: (name, value, present), in order.
    pub writes: Vec<(String, Option<Vec<u8>>, bool)>,
    /// Response headers (`name`) and trailers (`trailer name`) read.
    pub reads: Vec<String>,
    pub header_writes: usize,
    pub principal_asked: usize,
    pub flags_read: usize,
    /// Clock reads, route and stream alike.
    pub clock_reads: usize,
}

impl MemoryHost {
    /// A host whose clock reads `now`, recording every call.
    pub fn at(now: u64) -> Self {
        Self {
            now,
            ..Self::default()
        }
    }

    /// A simulation's host: calls counted, not recorded; trace ids from
    /// `seed`; every response a 200 until [`MemoryHost::set_status`].
    pub fn simulated(seed: u64) -> Self {
        let mut host = Self {
            quiet: true,
            rng: SplitMix(seed),
            ..Self::default()
        };
        host.set_status(200);
        host
    }

    /// The response's `:status`.
    pub fn set_status(&mut self, status: u16) {
        let value = match self.response.iter_mut().find(|(n, _)| n == ":status") {
            Some((_, value)) => value,
            None => {
                self.response.push((":status".to_string(), Vec::new()));
                let last = self.response.len() - 1;
                &mut self.response[last].1
            }
        };
        value.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(value, "{status}");
    }

    /// The last value written to request header `name`: `Some(None)` for
    /// a removal, `None` when it was not written.
    pub fn written(&self, name: &str) -> Option<Option<&[u8]>> {
        self.writes
            .iter()
            .rev()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.as_deref())
    }

    fn clock(&mut self) -> Result<u64, HostFailure> {
        self.clock_reads += 1;
        if self.failing_clock {
            return Err(HostFailure);
        }
        Ok(self.now)
    }

    fn read(&mut self, what: impl FnOnce() -> String) {
        if !self.quiet {
            self.reads.push(what());
        }
    }
}

fn lookup(pairs: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

impl RouteHost for MemoryHost {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        self.clock()
    }
    fn peer_principal(&mut self) -> Option<Vec<u8>> {
        self.principal_asked += 1;
        self.principal.clone()
    }
    fn set_request_header(
        &mut self,
        name: &str,
        value: Option<&[u8]>,
        present: bool,
    ) -> Result<(), HostFailure> {
        if self.failing_header == Some(name) && value.is_some() {
            return Err(HostFailure);
        }
        self.header_writes += 1;
        if !self.quiet {
            self.writes
                .push((name.to_string(), value.map(<[u8]>::to_vec), present));
        }
        Ok(())
    }
    fn trace_rng(&mut self) -> &mut dyn TraceRng {
        &mut self.rng
    }
}

impl StreamHost for MemoryHost {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        self.clock()
    }
    fn response_header(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        self.read(|| name.to_string());
        Ok(lookup(&self.response, name))
    }
    fn response_trailer(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        self.read(|| format!("trailer {name}"));
        Ok(lookup(&self.trailers, name))
    }
    fn response_flags(&mut self) -> Result<u64, HostFailure> {
        self.flags_read += 1;
        Ok(self.flags)
    }
    fn shared_store(&mut self) -> &mut dyn SharedStore {
        &mut self.store
    }
}

/// Shared data with Envoy's rules: a write with a CAS token succeeds only
/// if the key is absent or still at that token, and every write takes the
/// next token of one counter for the whole store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Key → (value, CAS token).
    pub entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    /// Host calls made (gets and sets).
    pub calls: usize,
    /// Every call fails, as a host in trouble answers.
    pub failing: bool,
}

impl MemoryStore {
    /// A store whose every call fails.
    pub fn failing() -> Self {
        Self {
            failing: true,
            ..Self::default()
        }
    }
}

impl SharedStore for MemoryStore {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.calls += 1;
        if self.failing {
            return Err(StoreError::Unavailable);
        }
        Ok(self.entries.get(key).cloned())
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.calls += 1;
        if self.failing {
            return Err(StoreError::Unavailable);
        }
        if let (Some(cas), Some((_, current))) = (cas, self.entries.get(key)) {
            if cas != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        // Token 0 would read as "no token" to a host.
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.entries
            .insert(key.to_string(), (value.to_vec(), self.next_cas));
        Ok(())
    }
}

/// splitmix64: small, seedable, and the same sequence on every target, so
/// a simulation's result depends on its seed alone.
#[derive(Debug, Default, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1): never 0, so its logarithm is finite.
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        self.next_u64().checked_rem(n as u64).unwrap_or(0) as usize
    }
}

impl TraceRng for SplitMix {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
