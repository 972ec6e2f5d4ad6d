//! The shared-data records of the weights channel, and their keys.
//!
//! Istio leaves `vm_id` empty, so every plugin on the proxy shares one
//! shared-data namespace: the keys carry the plugin's name
//! (`tideway/<plugin>/weights…`), so two Tideway plugins on one proxy (two
//! WasmPlugins with different weights sources) neither read each other's
//! weights nor fight over one lease.
//!
//! - the lease: which worker polls, until when;
//! - the document: the last validated answer, its version, and when the
//!   controller last confirmed it (a `200` or `304`) — the TTL counts from
//!   there, on every worker alike.

/// The two keys of one plugin's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub lease: String,
    pub document: String,
}

impl Keys {
    pub fn for_plugin(plugin_name: &str) -> Self {
        let base = format!("{}{plugin_name}/weights", crate::shared_stats::KEY_PREFIX);
        Self {
            lease: format!("{base}/lease"),
            document: format!("{base}/document"),
        }
    }
}

const LEASE_FORMAT: u8 = 1;
const LEASE_LEN: usize = 1 + 8 + 8;
const DOCUMENT_FORMAT: u8 = 1;
const DOCUMENT_HEADER: usize = 1 + 8 + 8;

/// Who polls for the proxy, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The holder's id: random per VM instance, so a restarted VM is a new
    /// holder and waits for its predecessor's lease to lapse.
    pub holder: u64,
    pub expires_at_ns: u64,
}

impl LeaseRecord {
    pub fn encode(&self) -> [u8; LEASE_LEN] {
        let mut out = [0u8; LEASE_LEN];
        out[0] = LEASE_FORMAT;
        out[1..9].copy_from_slice(&self.holder.to_le_bytes());
        out[9..17].copy_from_slice(&self.expires_at_ns.to_le_bytes());
        out
    }

    /// `None`: not a lease record of this format (it is then taken over).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; LEASE_LEN] = bytes.try_into().ok()?;
        if bytes[0] != LEASE_FORMAT {
            return None;
        }
        Some(Self {
            holder: u64_at(bytes, 1)?,
            expires_at_ns: u64_at(bytes, 9)?,
        })
    }
}

/// The last validated document, as every worker adopts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRecord {
    pub version: u64,
    /// When the controller last confirmed this version (Unix ns).
    pub confirmed_at_ns: u64,
    /// The document as the server sent it (validated by the writer; every
    /// reader validates again against its own config).
    pub body: Vec<u8>,
}

impl DocumentRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOCUMENT_HEADER + self.body.len());
        out.push(DOCUMENT_FORMAT);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.confirmed_at_ns.to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// The header alone: a reader compares the version before it parses.
    pub fn decode_header(bytes: &[u8]) -> Option<(u64, u64)> {
        if bytes.len() < DOCUMENT_HEADER || bytes[0] != DOCUMENT_FORMAT {
            return None;
        }
        Some((u64_at(bytes, 1)?, u64_at(bytes, 9)?))
    }

    /// The body of an encoded record whose header decoded.
    pub fn body_of(bytes: &[u8]) -> &[u8] {
        bytes.get(DOCUMENT_HEADER..).unwrap_or_default()
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let lease = LeaseRecord {
            holder: 42,
            expires_at_ns: 7,
        };
        assert_eq!(LeaseRecord::decode(&lease.encode()), Some(lease));
        assert_eq!(LeaseRecord::decode(b"short"), None);
        let mut other = lease.encode();
        other[0] = 9;
        assert_eq!(LeaseRecord::decode(&other), None);

        let doc = DocumentRecord {
            version: 3,
            confirmed_at_ns: 99,
            body: b"{}".to_vec(),
        };
        let bytes = doc.encode();
        assert_eq!(DocumentRecord::decode_header(&bytes), Some((3, 99)));
        assert_eq!(DocumentRecord::body_of(&bytes), b"{}");
        assert_eq!(DocumentRecord::decode_header(&bytes[..10]), None);
    }

    #[test]
    fn keys_are_namespaced_by_plugin() {
        let a = Keys::for_plugin("prod.tideway");
        let b = Keys::for_plugin("prod.tideway-canary");
        assert_eq!(a.lease, "tideway/prod.tideway/weights/lease");
        assert_ne!(a.document, b.document);
        assert_ne!(a.lease, b.lease);
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = LeaseRecord::decode(&bytes);
            let _ = DocumentRecord::decode_header(&bytes);
            let _ = DocumentRecord::body_of(&bytes);
        }
    }
}
