//! The ledger's hash indexes: open addressing over 8-byte slots, so that the cache line a
//! lookup will read is known from the key's hash alone and can be prefetched.
//!
//! A decision is a chain of dependent lookups (the tenant, its agent, the answer index), and
//! with a million agents each link is a cache miss. hashbrown keeps its control bytes apart
//! from its slots and does not say where either lies, so a lookup costs two misses and none
//! can be started early. Here a slot holds an item's index and 32 bits of its key's hash;
//! linear probing starts at the slot the hash names and, at a load of at most one half,
//! seldom leaves its cache line. `Ledger::prefetch_upcoming` uses `prefetch` and
//! `first_match` to start the misses of the next commands while the current one is applied.
//!
//! The items themselves live elsewhere (a list, a ring): a lookup confirms a slot whose
//! hash matches by asking the caller about its index. Iteration order is never exposed.

use crate::prefetch;

/// An index and 32 bits of its key's hash. A hash of 0 is stored as 1, so that 0 can mark
/// an empty slot; lookups apply the same mapping.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    index: u32,
    hash: u32,
}

const EMPTY: u32 = 0;

/// The smallest table that is allocated.
const CAPACITY_MIN: usize = 8;

fn stored(hash: u32) -> u32 {
    hash.max(1)
}

/// A set of (hash, index) slots with at most `capacity / 2` of them filled.
#[derive(Clone, Default)]
pub struct SlotTable {
    /// A power of two in length (or empty).
    slots: Box<[Slot]>,
    len: usize,
}

impl SlotTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots allocated; at most half of them are ever filled.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Where the probe for `hash` starts.
    fn home(&self, hash: u32) -> usize {
        hash as usize & self.slots.len().wrapping_sub(1)
    }

    /// The index of the first slot under `hash` that `is` accepts.
    pub fn find(&self, hash: u32, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let hash = stored(hash);
        let mask = self.slots.len().wrapping_sub(1);
        let mut at = self.home(hash);
        // Ends at an empty slot: the table is never more than half full.
        loop {
            let slot = self.slots.get(at)?;
            if slot.hash == EMPTY {
                return None;
            }
            if slot.hash == hash && is(slot.index) {
                return Some(slot.index);
            }
            at = (at + 1) & mask;
        }
    }

    /// The index of the first slot under `hash`, unconfirmed: the likely answer of `find`,
    /// for prefetching what it names.
    pub fn first_match(&self, hash: u32) -> Option<u32> {
        self.find(hash, |_| true)
    }

    /// Starts loading the cache line where a lookup for `hash` begins.
    pub fn prefetch(&self, hash: u32) {
        if let Some(slot) = self.slots.get(self.home(hash)) {
            prefetch(slot);
        }
    }

    /// Adds a slot. The caller makes sure no other slot of the same key is in the table.
    pub fn insert(&mut self, hash: u32, index: u32) {
        self.reserve(1);
        self.place(Slot {
            index,
            hash: stored(hash),
        });
        self.len += 1;
    }

    /// Puts a slot in the first empty place of its probe; there is always one, since the
    /// table is at most half full.
    fn place(&mut self, slot: Slot) {
        let mask = self.slots.len().wrapping_sub(1);
        let mut at = self.home(slot.hash);
        while let Some(place) = self.slots.get_mut(at) {
            if place.hash == EMPTY {
                *place = slot;
                return;
            }
            at = (at + 1) & mask;
        }
    }

    /// Makes room for `additional` more slots without growing on insert.
    pub fn reserve(&mut self, additional: usize) {
        let needed = self.len.saturating_add(additional);
        if needed.saturating_mul(2) > self.slots.len() {
            let capacity = needed
                .saturating_mul(2)
                .max(self.slots.len().saturating_mul(2));
            self.rebuild(capacity, |_| true);
        }
    }

    /// Keeps the slots whose index `keep` accepts, in a table of at least `capacity` slots
    /// (rounded up to a power of two, and to twice what is kept). `keep` must give the same
    /// answer each time it is asked about an index.
    pub fn rebuild(&mut self, capacity: usize, mut keep: impl FnMut(u32) -> bool) {
        let kept = self
            .slots
            .iter()
            .filter(|slot| slot.hash != EMPTY && keep(slot.index))
            .count();
        let capacity = capacity
            .max(kept.saturating_mul(2))
            .max(CAPACITY_MIN)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX / 2 + 1);
        if capacity == self.slots.len() {
            self.retain_in_place(keep);
            return;
        }
        let kept: Vec<Slot> = self
            .slots
            .iter()
            .filter(|slot| slot.hash != EMPTY && keep(slot.index))
            .copied()
            .collect();
        self.slots = vec![Slot::default(); capacity].into_boxed_slice();
        self.len = kept.len();
        for slot in kept {
            self.place(slot);
        }
    }

    /// Drops the slots `keep` rejects, in place: no allocation and one pass over a table
    /// of many MB (the answer index's sweep of stale slots). The pass starts after an empty
    /// slot (the table is at most half full), which no probe crosses, so each probe is met
    /// from its home on: every slot visited is taken out and, if kept, put back in the first
    /// empty place of its probe, at or before where it was, among slots already settled.
    fn retain_in_place(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let Some(start) = self.slots.iter().position(|slot| slot.hash == EMPTY) else {
            return;
        };
        let mask = self.slots.len().wrapping_sub(1);
        let mut len = 0;
        for step in 1..self.slots.len() {
            let Some(place) = self.slots.get_mut((start + step) & mask) else {
                continue;
            };
            let slot = std::mem::take(place);
            if slot.hash != EMPTY && keep(slot.index) {
                self.place(slot);
                len += 1;
            }
        }
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_empty_table_finds_nothing_and_allocates_nothing() {
        let table = SlotTable::default();
        assert_eq!(table.capacity(), 0);
        assert_eq!(table.find(7, |_| true), None);
        table.prefetch(7);
    }

    #[test]
    fn colliding_hashes_are_told_apart_by_the_caller() {
        let mut table = SlotTable::default();
        for index in 0..100 {
            table.insert(42, index);
        }
        for index in 0..100 {
            assert_eq!(table.find(42, |i| i == index), Some(index));
        }
        assert_eq!(table.find(42, |i| i == 100), None);
        assert_eq!(table.find(0, |_| true), None);
        assert!(table.len() * 2 <= table.capacity());
    }

    #[test]
    fn hash_zero_is_stored_and_found() {
        let mut table = SlotTable::default();
        table.insert(0, 5);
        assert_eq!(table.find(0, |_| true), Some(5));
        // 0 and 1 share a stored hash; the caller's check tells them apart.
        assert_eq!(table.find(1, |i| i == 5), Some(5));
    }

    #[test]
    fn a_sweep_in_place_keeps_probes_whole_across_the_end_of_the_table() {
        let mut table = SlotTable::default();
        table.reserve(32);
        let capacity = table.capacity();
        // Three clusters: one at the end of the table that wraps to its start, one that
        // starts there, and one in the middle; every other slot of each is dropped.
        let hashes = [capacity - 2, 0, capacity / 2];
        for index in 0..30u32 {
            table.insert(hashes[index as usize % 3] as u32, index);
        }
        table.rebuild(capacity, |index| index % 2 == 0);
        assert_eq!(table.capacity(), capacity, "swept in place");
        assert_eq!(table.len(), 15);
        for index in 0..30u32 {
            let found = table.find(hashes[index as usize % 3] as u32, |i| i == index);
            assert_eq!(found, (index % 2 == 0).then_some(index), "index {index}");
        }
    }

    proptest! {
        /// Against a map from index to hash: every live index is found under its hash, no
        /// dropped one is, and the table stays at most half full.
        #[test]
        fn agrees_with_a_map(
            ops in prop::collection::vec((0u8..4, 0u32..64, 0u32..200), 1..400),
        ) {
            let mut table = SlotTable::default();
            let mut model: HashMap<u32, u32> = HashMap::new();
            for (op, hash, index) in ops {
                match op {
                    0 | 1 if !model.contains_key(&index) => {
                        table.insert(hash, index);
                        model.insert(index, hash);
                    }
                    2 => {
                        table.rebuild(table.capacity(), |i| i % 3 != hash % 3);
                        model.retain(|i, _| i % 3 != hash % 3);
                    }
                    3 => {
                        table.rebuild(hash as usize, |_| true);
                    }
                    _ => {}
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert!(table.len() * 2 <= table.capacity().max(1));
            }
            for (&index, &hash) in &model {
                prop_assert_eq!(table.find(hash, |i| i == index), Some(index));
            }
            for index in 200..210 {
                prop_assert_eq!(table.find(index, |i| i == index), None);
            }
        }
    }
}
