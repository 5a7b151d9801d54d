//! Interning: tenants and agents live in lists in creation order and are referred to by
//! their index there, so reservations, remembered answers and their queues carry a `u32`
//! instead of a copy of a name. Neither tenants nor agents are ever deleted, so an index
//! stays valid for the life of the ledger.
//!
//! The name → index lookup is derived data: never serialized, rebuilt on restore, and its
//! random seed never reaches an output (snapshots serialize the list in creation order).

use std::hash::BuildHasher;

use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

use tollgate_cacheline::{self as slots, SlotTable};

/// Something with a unique name in its list.
pub trait Named {
    fn name(&self) -> &[u8];
}

/// A list of named items that only grows, with a lookup by name: a table of item indexes
/// under a seeded hash of the name (`SlotTable`, 8 bytes a slot, with 32 bits of the hash,
/// so the table grows without reading an item), so each name is stored once, in its item
/// (inline when short: ids are `CompactString`s); a lookup confirms the name there.
#[derive(Clone)]
pub struct Interned<T> {
    items: Vec<T>,
    by_name: SlotTable,
    seed: foldhash::fast::RandomState,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            items: Vec::new(),
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
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut()
    }

    pub fn get(&self, index: u32) -> Option<&T> {
        self.items.get(index as usize)
    }

    pub fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        self.items.get_mut(index as usize)
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
        {
            slots::prefetch(item);
        }
    }

    /// Appends an item whose name is not in the list yet; returns its index. The caller
    /// bounds the list (the ledger's limits are far below `u32::MAX`).
    pub fn push(&mut self, item: T) -> u32 {
        debug_assert!(self.find(item.name()).is_none(), "name interned twice");
        let index = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        let hash = self.hash(item.name());
        self.by_name.insert(hash, index);
        self.items.push(item);
        index
    }
}

impl<T: Named> std::ops::Index<u32> for Interned<T> {
    type Output = T;

    fn index(&self, index: u32) -> &T {
        &self.items[index as usize]
    }
}

/// Equal lists are equal; the lookup is derived from the list (and seeded at random).
impl<T: PartialEq> PartialEq for Interned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

/// Serialized as the list alone, in creation order: deterministic bytes.
impl<T: Serialize> Serialize for Interned<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(s)
    }
}

/// Rebuilds the lookup; a repeated name is a decoding error.
impl<'de, T: Named + Deserialize<'de>> Deserialize<'de> for Interned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items: Vec<T> = Vec::deserialize(d)?;
        if u32::try_from(items.len()).is_err() {
            return Err(D::Error::custom("more names than u32 indexes"));
        }
        let mut interned = Interned::default();
        interned.by_name.reserve(items.len());
        interned.items.reserve_exact(items.len());
        for item in items {
            if interned.find(item.name()).is_some() {
                return Err(D::Error::custom(format!(
                    "name {} appears twice",
                    String::from_utf8_lossy(item.name())
                )));
            }
            interned.push(item);
        }
        Ok(interned)
    }
}
