//! The core's host traits over the ABI: the clock, header reads and
//! writes, shared data and entropy as `decision` asks for them, and this
//! proxy's identity from Envoy's node properties.

use super::abi::{self, Level, Map};
use super::{log, now_or_zero};
use crate::config::PluginConfig;
use crate::decision::{HostFailure, LocalIdentity, RouteHost, StreamHost};
use crate::shared_stats::{SharedStore, StoreError};
use crate::trace;

/// Fill `buf` from the host's entropy (WASI `random_get`).
pub(super) fn host_random(buf: &mut [u8]) {
    if buf.is_empty() || abi::random(buf) {
        return;
    }
    // No entropy from the host: fall back to the clock so ids still differ;
    // never stop serving over it.
    let t = now_or_zero().to_le_bytes();
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= t[i % 8].wrapping_add(i as u8);
    }
}

/// Host entropy drawn 4 KiB per `random_get` call: trace and span ids stay
/// unpredictable (fresh host randomness, never a seeded generator) while a
/// request no longer pays a host call for its 8 or 16 bytes.
pub(super) struct EntropyPool {
    pub(super) buf: [u8; 4096],
    pub(super) used: usize,
}

impl EntropyPool {
    pub(super) const fn new() -> Self {
        // Starts exhausted: the first draw fills it.
        Self {
            buf: [0; 4096],
            used: 4096,
        }
    }
}

impl trace::TraceRng for EntropyPool {
    fn fill(&mut self, out: &mut [u8]) {
        let mut written = 0;
        while written < out.len() {
            if self.used == self.buf.len() {
                host_random(&mut self.buf);
                self.used = 0;
            }
            let n = (out.len() - written).min(self.buf.len() - self.used);
            out[written..written + n].copy_from_slice(&self.buf[self.used..self.used + n]);
            // Bytes handed out are never handed out again.
            self.buf[self.used..self.used + n].fill(0);
            self.used += n;
            written += n;
        }
    }
}

/// This proxy's cluster and locality: config first, else Envoy's node
/// properties as Istio sets them.
pub(super) fn local_identity(config: &PluginConfig) -> LocalIdentity {
    // Envoy 1.40 serves the node as `xds.node`; older releases as `node`.
    let property = |path: &[&str]| -> Option<String> {
        let read = |prefix: &[&str]| -> Option<String> {
            let full: Vec<&str> = prefix.iter().chain(path).copied().collect();
            match abi::property(&full) {
                Ok(Some(bytes)) => String::from_utf8(bytes).ok().filter(|s| !s.is_empty()),
                Ok(None) => None,
                Err(e) => {
                    log(
                        Level::Warn,
                        &format!("tideway: reading property node.{}: {e}", path.join(".")),
                    );
                    None
                }
            }
        };
        read(&["xds", "node"]).or_else(|| read(&["node"]))
    };
    let cluster = config
        .local
        .cluster
        .clone()
        .or_else(|| property(&["metadata", "CLUSTER_ID"]))
        .unwrap_or_default();
    let locality = config.local.locality.clone().or_else(|| {
        let region = property(&["locality", "region"])?;
        let mut out = region;
        if let Some(zone) = property(&["locality", "zone"]) {
            out.push('/');
            out.push_str(&zone);
            if let Some(sub) = property(&["locality", "sub_zone"]) {
                out.push('/');
                out.push_str(&sub);
            }
        }
        Some(out)
    });
    let namespace = config
        .local
        .namespace
        .clone()
        .or_else(|| property(&["metadata", "NAMESPACE"]));
    LocalIdentity {
        cluster,
        locality,
        namespace,
    }
}

/// Shared data through the host, for the merge on the tick and after a failure.
pub(super) struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        abi::shared_data(key).map_err(|_| StoreError::Unavailable)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match abi::set_shared_data(key, value, cas.unwrap_or(0)) {
            Ok(()) => Ok(()),
            Err(abi::HostError(abi::CAS_MISMATCH)) => Err(StoreError::CasMismatch),
            Err(e) => {
                log(
                    Level::Warn,
                    &format!("tideway: shared data write {key} failed: {e}"),
                );
                Err(StoreError::Unavailable)
            }
        }
    }
}

/// What the core asks of the host while routing a request.
pub(super) struct RouteCalls<'w> {
    pub(super) entropy: &'w mut EntropyPool,
}

impl RouteHost for RouteCalls<'_> {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        abi::now_ns().map_err(|_| HostFailure)
    }

    fn peer_principal(&mut self) -> Option<Vec<u8>> {
        abi::property(&["connection", "uri_san_peer_certificate"])
            .ok()
            .flatten()
    }

    fn set_request_header(
        &mut self,
        name: &str,
        value: Option<&[u8]>,
        present: bool,
    ) -> Result<(), HostFailure> {
        let map = Map::RequestHeaders;
        match (value, present) {
            (Some(value), false) => abi::add_header(map, name, value),
            (Some(value), true) => abi::replace_header(map, name, value),
            (None, true) => abi::remove_header(map, name),
            (None, false) => Ok(()),
        }
        .map_err(|_| HostFailure)
    }

    fn trace_rng(&mut self) -> &mut dyn trace::TraceRng {
        self.entropy
    }
}

/// What the core asks of the host while completing a request.
pub(super) struct StreamCalls {
    pub(super) shared: HostSharedData,
    /// The clock, read at most once per step.
    pub(super) now: Option<u64>,
}

impl StreamHost for StreamCalls {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        if let Some(now) = self.now {
            return Ok(now);
        }
        let now = abi::now_ns().map_err(|_| HostFailure)?;
        self.now = Some(now);
        Ok(now)
    }

    fn response_header(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        abi::header(Map::ResponseHeaders, name).map_err(|_| HostFailure)
    }

    fn response_trailer(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        abi::header(Map::ResponseTrailers, name).map_err(|_| HostFailure)
    }

    fn response_flags(&mut self) -> Result<u64, HostFailure> {
        // An integer property: 8 bytes, little-endian.
        match abi::property(&["response", "flags"]) {
            Ok(Some(bytes)) => bytes
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .ok_or(HostFailure),
            Ok(None) => Ok(0),
            Err(_) => Err(HostFailure),
        }
    }

    fn shared_store(&mut self) -> &mut dyn SharedStore {
        &mut self.shared
    }
}
