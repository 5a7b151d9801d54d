//! Interning: tenants and agents live in lists in creation order and are referred to by
//! their index there, so reservations, remembered answers and their queues carry a `u32`
//! instead of a copy of a name. Neither tenants nor agents are ever deleted, so an index
//! stays valid for the life of the ledger.
//!
//! The name → index lookup is derived data: never serialized, rebuilt on restore, and its
//! random seed never reaches an output (snapshots serialize the list in creation order).

use std::hash::BuildHasher;

use hashbrown::HashTable;
use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

/// Something with a unique name in its list.
pub trait Named {
    fn name(&self) -> &[u8];
}

/// A slot of a hash table of indexes: the index and 32 bits of its key's seeded hash. With
/// the hash in the slot, the table grows and rehashes without reading any item (for a
/// million items, a million cache misses that stalled the state machine), and a lookup
/// rejects a slot whose tag matched by chance without reading its item either.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub index: u32,
    pub hash: u32,
}

impl Slot {
    /// The hash a table files a slot under, made of its 32 stored bits: hashbrown takes the
    /// bucket from the low bits and the 7-bit tag from the top ones.
    pub fn table_hash(hash: u32) -> u64 {
        (u64::from(hash) << 32) | u64::from(hash)
    }

    pub fn rehash(&self) -> u64 {
        Self::table_hash(self.hash)
    }
}

/// A list of named items that only grows, with a lookup by name: a hash table of item
/// indexes under a seeded hash of the name (`Slot`s, 8 bytes each), so each name is stored
/// once, in its item (inline when short: ids are `CompactString`s); a lookup confirms the
/// name there.
#[derive(Clone)]
pub struct Interned<T> {
    items: Vec<T>,
    by_name: HashTable<Slot>,
    seed: foldhash::fast::RandomState,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            items: Vec::new(),
            by_name: HashTable::new(),
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

    /// The index of the item named `name`.
    pub fn find(&self, name: &[u8]) -> Option<u32> {
        let hash = self.seed.hash_one(name) as u32;
        self.by_name
            .find(Slot::table_hash(hash), |slot| {
                slot.hash == hash
                    && self
                        .items
                        .get(slot.index as usize)
                        .is_some_and(|item| item.name() == name)
            })
            .map(|slot| slot.index)
    }

    /// Appends an item whose name is not in the list yet; returns its index. The caller
    /// bounds the list (the ledger's limits are far below `u32::MAX`).
    pub fn push(&mut self, item: T) -> u32 {
        debug_assert!(self.find(item.name()).is_none(), "name interned twice");
        let index = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        let hash = self.seed.hash_one(item.name()) as u32;
        self.by_name
            .insert_unique(Slot::table_hash(hash), Slot { index, hash }, Slot::rehash);
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
        // Empty: nothing is rehashed.
        interned.by_name.reserve(items.len(), |_| 0);
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
