//! Interning: tenants and agents live in lists in creation order and are referred to by
//! their index there, so reservations, remembered answers and their queues carry a `u32`
//! instead of a copy of a name. Tenants are never deleted; an idle agent may be (agent GC,
//! `gc.rs`), which leaves its slot vacant until the next new name takes the lowest vacant
//! slot. The ledger removes only agents that nothing refers to by index, so an index in use
//! stays valid.
//!
//! The name → index lookup is derived data: never serialized, rebuilt on restore, and its
//! random seed never reaches an output (snapshots serialize the list in creation order).

use std::collections::BTreeSet;
use std::hash::BuildHasher;

use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

use tollgate_cacheline::{self as slots, SlotTable};

/// Something with a unique name in its list.
pub trait Named {
    fn name(&self) -> &[u8];
}

/// A list of named items with a lookup by name: a table of item indexes under a seeded hash
/// of the name (`SlotTable`, 8 bytes a slot, with 32 bits of the hash, so the table grows
/// without reading an item), so each name is stored once, in its item (inline when short:
/// ids are `CompactString`s); a lookup confirms the name there. A removed item leaves its
/// slot vacant (reused lowest first, so every replica gives a new name the same index) and
/// a stale entry in the lookup, which never matches and is swept once stale entries
/// outnumber live ones.
#[derive(Clone)]
pub struct Interned<T> {
    items: Vec<Option<T>>,
    /// The vacant slots of `items`; derived, rebuilt on restore.
    vacant: BTreeSet<u32>,
    /// Lookup entries of removed items, not swept yet.
    stale: usize,
    by_name: SlotTable,
    seed: foldhash::fast::RandomState,
}

/// The lookup is swept once it holds this many stale entries and more than live ones.
const STALE_SWEEP_MIN: usize = 1_024;

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            items: Vec::new(),
            vacant: BTreeSet::new(),
            stale: 0,
            by_name: SlotTable::default(),
            seed: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Interned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.items.fmt(f)
    }
}

impl<T: Named> Interned<T> {
    /// Live items.
    pub fn len(&self) -> usize {
        self.items.len() - self.vacant.len()
    }

    /// Slots, live and vacant: every index is below it.
    pub fn slots(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().flatten()
    }

    /// Live items with their indexes.
    pub fn iter_indexed(&self) -> impl Iterator<Item = (u32, &T)> {
        (0u32..)
            .zip(self.items.iter())
            .filter_map(|(index, item)| Some((index, item.as_ref()?)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut().flatten()
    }

    pub fn get(&self, index: u32) -> Option<&T> {
        self.items.get(index as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        self.items.get_mut(index as usize)?.as_mut()
    }

    /// Removes the item at `index`, leaving its slot vacant. The caller makes sure nothing
    /// refers to the index any more.
    pub fn remove(&mut self, index: u32) -> Option<T> {
        let item = self.items.get_mut(index as usize)?.take()?;
        self.vacant.insert(index);
        self.stale += 1;
        if self.stale >= STALE_SWEEP_MIN && self.stale > self.len() {
            self.sweep();
        }
        Some(item)
    }

    /// Rebuilds the lookup from the live items, dropping every stale entry.
    fn sweep(&mut self) {
        let mut by_name = SlotTable::default();
        by_name.reserve(self.len());
        for (index, item) in (0u32..).zip(self.items.iter()) {
            if let Some(item) = item {
                by_name.insert(self.seed.hash_one(item.name()) as u32, index);
            }
        }
        self.by_name = by_name;
        self.stale = 0;
    }

    /// The seeded hash a name is filed under.
    pub fn hash(&self, name: &[u8]) -> u32 {
        self.seed.hash_one(name) as u32
    }

    /// The index of the item named `name`.
    pub fn find(&self, name: &[u8]) -> Option<u32> {
        self.by_name.find(self.hash(name), |index| {
            self.items
                .get(index as usize)
                .and_then(Option::as_ref)
                .is_some_and(|item| item.name() == name)
        })
    }

    /// Starts loading the index slot a lookup for `hash` reads first.
    pub fn prefetch_slot(&self, hash: u32) {
        self.by_name.prefetch(hash);
    }

    /// The index a lookup for `hash` most likely finds, read from the index alone (the name
    /// is not confirmed: for prefetching only).
    pub fn likely_index(&self, hash: u32) -> Option<u32> {
        self.by_name.first_match(hash)
    }

    /// Starts loading the item a lookup for `hash` most likely finds (its index slot should
    /// be in the cache already: see `prefetch_slot`).
    pub fn prefetch_likely(&self, hash: u32) {
        if let Some(item) = self
            .likely_index(hash)
            .and_then(|index| self.items.get(index as usize))
            .and_then(Option::as_ref)
        {
            slots::prefetch(item);
        }
    }

    /// Adds an item whose name is not in the list yet, in the lowest vacant slot or else at
    /// the end; returns its index. The caller bounds the list (the ledger's limits are far
    /// below `u32::MAX`).
    pub fn push(&mut self, item: T) -> u32 {
        debug_assert!(self.find(item.name()).is_none(), "name interned twice");
        let hash = self.hash(item.name());
        let index = match self.vacant.pop_first() {
            Some(index) => {
                self.items[index as usize] = Some(item);
                index
            }
            None => {
                self.items.push(Some(item));
                u32::try_from(self.items.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_name.insert(hash, index);
        index
    }
}

/// Equal lists are equal; the lookup is derived from the list (and seeded at random).
impl<T: PartialEq> PartialEq for Interned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

/// Serialized as the list of slots alone (vacant ones as None): deterministic bytes.
impl<T: Serialize> Serialize for Interned<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(s)
    }
}

/// Rebuilds the lookup; a repeated name is a decoding error.
impl<'de, T: Named + Deserialize<'de>> Deserialize<'de> for Interned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items: Vec<Option<T>> = Vec::deserialize(d)?;
        if u32::try_from(items.len()).is_err() {
            return Err(D::Error::custom("more names than u32 indexes"));
        }
        let mut interned = Interned::default();
        interned.by_name.reserve(items.len());
        interned.items.reserve_exact(items.len());
        for (index, item) in (0u32..).zip(items) {
            let Some(item) = item else {
                interned.items.push(None);
                interned.vacant.insert(index);
                continue;
            };
            if interned.find(item.name()).is_some() {
                return Err(D::Error::custom(format!(
                    "name {} appears twice",
                    String::from_utf8_lossy(item.name())
                )));
            }
            interned
                .by_name
                .insert(interned.seed.hash_one(item.name()) as u32, index);
            interned.items.push(Some(item));
        }
        Ok(interned)
    }
}
