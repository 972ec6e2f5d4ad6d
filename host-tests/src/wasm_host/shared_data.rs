//! Shared data and shared queues with Envoy's semantics.
//!
//! Envoy keeps one shared-data store per process, partitioned by `vm_id`
//! (proxy-wasm-cpp-host `src/shared_data.cc`): every VM of every worker with
//! the same `vm_id` sees the same keys. Each write stamps the entry with the
//! next value of a single CAS counter that starts at 1, increases by one per
//! write and skips 0 on wrap-around (`SharedData::nextCas`). A write with
//! `cas == 0` is unconditional; a non-zero `cas` must equal the entry's
//! current one or the write fails with `CasMismatch` (a non-zero `cas` on a
//! key that does not exist yet succeeds, as in cpp-host). A missing key is
//! `NotFound`.
//!
//! Queues follow `src/shared_queue.cc`: `register` creates (or re-registers)
//! the queue `(vm_id, name)` and returns a non-zero token owned by the
//! registering VM's root context, `resolve` finds it from any VM, `enqueue`
//! appends and schedules `proxy_on_queue_ready` on the owner, `dequeue` pops
//! or answers `Empty`; an unknown token is `NotFound`.
//!
//! The `proxy-wasm/test-framework` stubs these calls; here they are real, and
//! shared by all the workers of a [`Host`](super::Host).

use super::abi::Status;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// One value and its CAS stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    pub value: Vec<u8>,
    pub cas: u32,
}

/// The process-wide store: `vm_id` → key → entry.
#[derive(Debug)]
pub struct SharedData {
    data: HashMap<String, BTreeMap<String, SharedEntry>>,
    next_cas: u32,
}

impl Default for SharedData {
    fn default() -> Self {
        Self {
            data: HashMap::new(),
            next_cas: 1,
        }
    }
}

impl SharedData {
    /// Starts the CAS counter elsewhere (to test wrap-around).
    pub fn with_next_cas(next_cas: u32) -> Self {
        Self {
            data: HashMap::new(),
            next_cas: next_cas.max(1),
        }
    }

    fn take_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    pub fn get(&self, vm_id: &str, key: &str) -> Result<SharedEntry, Status> {
        self.data
            .get(vm_id)
            .and_then(|m| m.get(key))
            .cloned()
            .ok_or(Status::NotFound)
    }

    pub fn set(&mut self, vm_id: &str, key: &str, value: &[u8], cas: u32) -> Result<u32, Status> {
        if let Some(entry) = self.data.get(vm_id).and_then(|m| m.get(key)) {
            if cas != 0 && cas != entry.cas {
                return Err(Status::CasMismatch);
            }
        }
        let stamp = self.take_cas();
        self.data.entry(vm_id.to_string()).or_default().insert(
            key.to_string(),
            SharedEntry {
                value: value.to_vec(),
                cas: stamp,
            },
        );
        Ok(stamp)
    }

    /// All keys of one `vm_id`, sorted.
    pub fn keys(&self, vm_id: &str) -> Vec<String> {
        self.data
            .get(vm_id)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A snapshot of one `vm_id`'s entries.
    pub fn snapshot(&self, vm_id: &str) -> BTreeMap<String, SharedEntry> {
        self.data.get(vm_id).cloned().unwrap_or_default()
    }
}

/// Where `proxy_on_queue_ready` must be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOwner {
    pub worker: usize,
    pub context_id: u32,
}

#[derive(Debug)]
struct Queue {
    owner: QueueOwner,
    items: VecDeque<Vec<u8>>,
}

/// The process-wide shared queues.
#[derive(Debug, Default)]
pub struct SharedQueues {
    tokens: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next_token: u32,
    /// Notifications not yet delivered: (owner, token).
    pub ready: VecDeque<(QueueOwner, u32)>,
}

impl SharedQueues {
    pub fn register(&mut self, vm_id: &str, name: &str, owner: QueueOwner) -> u32 {
        let key = (vm_id.to_string(), name.to_string());
        let token = match self.tokens.get(&key) {
            Some(t) => *t,
            None => {
                let mut t;
                loop {
                    self.next_token = self.next_token.wrapping_add(1);
                    t = self.next_token;
                    if t != 0 && !self.queues.contains_key(&t) {
                        break;
                    }
                }
                self.tokens.insert(key, t);
                t
            }
        };
        let queue = self.queues.entry(token).or_insert_with(|| Queue {
            owner,
            items: VecDeque::new(),
        });
        queue.owner = owner;
        token
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Result<u32, Status> {
        self.tokens
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
            .ok_or(Status::NotFound)
    }

    pub fn enqueue(&mut self, token: u32, value: &[u8]) -> Result<(), Status> {
        let queue = self.queues.get_mut(&token).ok_or(Status::NotFound)?;
        queue.items.push_back(value.to_vec());
        let owner = queue.owner;
        self.ready.push_back((owner, token));
        Ok(())
    }

    pub fn dequeue(&mut self, token: u32) -> Result<Vec<u8>, Status> {
        let queue = self.queues.get_mut(&token).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_starts_at_one_increases_and_skips_zero() {
        let mut s = SharedData::default();
        assert_eq!(s.get("vm", "k"), Err(Status::NotFound));
        assert_eq!(s.set("vm", "k", b"a", 0), Ok(1));
        assert_eq!(s.set("vm", "j", b"b", 0), Ok(2));
        assert_eq!(s.set("vm", "k", b"c", 5), Err(Status::CasMismatch));
        assert_eq!(s.set("vm", "k", b"c", 1), Ok(3));
        assert_eq!(s.get("other", "k"), Err(Status::NotFound));
        let mut w = SharedData::with_next_cas(u32::MAX);
        assert_eq!(w.set("vm", "k", b"a", 0), Ok(u32::MAX));
        assert_eq!(w.set("vm", "k", b"b", u32::MAX), Ok(1));
    }
}
