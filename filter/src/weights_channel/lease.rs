//! The poll lease: one worker per proxy polls the weights API, the others
//! read what it wrote.
//!
//! A lease record in shared data names the holder and when its hold ends.
//! On every tick each worker runs [`Lease::tick`]: the holder renews
//! (compare-and-swap on the record it read), a worker that finds the lease
//! lapsed — its holder's VM stopped ticking, was restarted, or its worker is
//! gone — takes it over with the same compare-and-swap, so of two workers
//! that see it lapse at once exactly one wins. Nothing is released on
//! purpose: a VM that ends cannot be relied on to say so, so expiry is the
//! one hand-over path, and it is the one tested.
//!
//! ABI 0.2.1 cannot create a key only if it is absent (a `cas` on a missing
//! key writes unconditionally), so the first holder of a never-written
//! lease reads it back after writing: of two workers racing to create it,
//! the one whose write was overwritten sees the other's id and stands down.

use super::record::LeaseRecord;
use crate::shared_stats::{SharedStore, StoreError};

/// One worker's side of the lease.
#[derive(Debug, Clone)]
pub struct Lease {
    /// This VM instance's id (random at VM start).
    holder: u64,
    /// Until when this worker knows it holds the lease.
    held_until_ns: Option<u64>,
}

/// What a tick did to the lease, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    None,
    /// This worker now polls (first hold, or taken over from a lapsed holder).
    Acquired {
        from_lapsed: Option<u64>,
    },
    /// Another worker holds it now.
    Lost,
}

impl Lease {
    pub fn new(holder: u64) -> Self {
        Self {
            holder,
            held_until_ns: None,
        }
    }

    pub fn holder_id(&self) -> u64 {
        self.holder
    }

    /// Whether this worker holds the lease at `now_ns` (as of its last tick).
    pub fn is_held(&self, now_ns: u64) -> bool {
        self.held_until_ns.is_some_and(|until| now_ns < until)
    }

    /// Renew the lease if held, take it if free or lapsed; see the module doc.
    pub fn tick(
        &mut self,
        store: &mut dyn SharedStore,
        key: &str,
        now_ns: u64,
        lease_ns: u64,
    ) -> LeaseChange {
        let was_held = self.is_held(now_ns);
        let (current, cas) = match store.get(key) {
            Ok(Some((bytes, cas))) => (LeaseRecord::decode(&bytes), Some(cas)),
            Ok(None) => (None, None),
            // Unreadable: keep what this worker knew; it lapses on its own.
            Err(_) => return LeaseChange::None,
        };
        let free = match current {
            Some(r) if r.holder == self.holder => true,
            Some(r) => r.expires_at_ns <= now_ns,
            None => true,
        };
        if !free {
            self.held_until_ns = None;
            return if was_held {
                LeaseChange::Lost
            } else {
                LeaseChange::None
            };
        }
        let mine = LeaseRecord {
            holder: self.holder,
            expires_at_ns: now_ns.saturating_add(lease_ns),
        };
        let written = match store.set(key, &mine.encode(), cas) {
            Ok(()) => cas.is_some() || self.reads_back_as_mine(store, key),
            Err(StoreError::CasMismatch) | Err(StoreError::Unavailable) => false,
        };
        if written {
            self.held_until_ns = Some(mine.expires_at_ns);
            if was_held {
                return LeaseChange::None;
            }
            let from_lapsed = current
                .filter(|r| r.holder != self.holder)
                .map(|r| r.holder);
            return LeaseChange::Acquired { from_lapsed };
        }
        self.held_until_ns = None;
        if was_held {
            LeaseChange::Lost
        } else {
            LeaseChange::None
        }
    }

    fn reads_back_as_mine(&self, store: &mut dyn SharedStore, key: &str) -> bool {
        matches!(store.get(key), Ok(Some((bytes, _)))
            if LeaseRecord::decode(&bytes).is_some_and(|r| r.holder == self.holder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::memory::MemoryStore;

    const KEY: &str = "tideway/p/weights/lease";
    const LEASE: u64 = 1_000;

    #[test]
    fn one_holder_renews_the_other_waits_then_takes_over_after_expiry() {
        let mut store = MemoryStore::default();
        let (mut a, mut b) = (Lease::new(1), Lease::new(2));
        assert_eq!(
            a.tick(&mut store, KEY, 0, LEASE),
            LeaseChange::Acquired { from_lapsed: None }
        );
        assert_eq!(b.tick(&mut store, KEY, 0, LEASE), LeaseChange::None);
        assert!(a.is_held(0) && !b.is_held(0));
        // a keeps renewing: b never gets it, however long.
        for t in (200..5_000).step_by(200) {
            a.tick(&mut store, KEY, t, LEASE);
            b.tick(&mut store, KEY, t, LEASE);
            assert!(a.is_held(t) && !b.is_held(t), "at {t}");
        }
        // a stops ticking at 4800: until 5800 the lease is still a's.
        assert_eq!(b.tick(&mut store, KEY, 5_799, LEASE), LeaseChange::None);
        assert_eq!(
            b.tick(&mut store, KEY, 5_800, LEASE),
            LeaseChange::Acquired {
                from_lapsed: Some(1)
            }
        );
        // a comes back: it learns it lost the lease and does not take it back.
        assert!(a.is_held(5_799));
        assert_eq!(a.tick(&mut store, KEY, 5_900, LEASE), LeaseChange::None);
        assert!(!a.is_held(5_900) && b.is_held(5_900));
    }

    #[test]
    fn of_two_workers_seeing_a_lapsed_lease_one_wins() {
        let mut store = MemoryStore::default();
        let mut old = Lease::new(9);
        old.tick(&mut store, KEY, 0, LEASE);
        // Both read the lapsed record before either writes: the CAS lets one through.
        let (bytes, cas) = store.get(KEY).unwrap().unwrap();
        let mut a = Lease::new(1);
        assert!(matches!(
            a.tick(&mut store, KEY, 2_000, LEASE),
            LeaseChange::Acquired { .. }
        ));
        let late = LeaseRecord {
            holder: 2,
            expires_at_ns: 3_000,
        };
        assert_eq!(LeaseRecord::decode(&bytes).unwrap().holder, 9);
        assert_eq!(
            store.set(KEY, &late.encode(), Some(cas)),
            Err(StoreError::CasMismatch),
            "the second taker's swap fails"
        );
        let mut b = Lease::new(2);
        assert_eq!(b.tick(&mut store, KEY, 2_000, LEASE), LeaseChange::None);
    }

    #[test]
    fn a_garbage_record_is_taken_over_and_an_unreadable_store_changes_nothing() {
        let mut store = MemoryStore::default();
        store.set(KEY, b"garbage", None).unwrap();
        let mut a = Lease::new(1);
        assert!(matches!(
            a.tick(&mut store, KEY, 0, LEASE),
            LeaseChange::Acquired { .. }
        ));
        store.failing = true;
        assert_eq!(a.tick(&mut store, KEY, 500, LEASE), LeaseChange::None);
        assert!(a.is_held(999), "held until its own expiry");
        assert!(!a.is_held(1_000), "and not beyond, unrenewed");
    }
}
