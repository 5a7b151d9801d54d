//! The ledger's records: tenants, agents, reservations in flight, expired tombstones and
//! remembered answers. Plain data; the rules that change them live in `commands.rs`.
//!
//! Hash maps are for lookups only: nothing iterates them into an output, a snapshot or the
//! audit trail without sorting first (`sorted_map`), so `RandomState` never leaks.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::limits::{AgentCounter, LimitEntry};
use super::runaway::Runaway;
use super::{AgentId, Amounts, Outcome, RequestId, TenantId, TenantPolicy, ToolId};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub policy: TenantPolicy,
    pub frozen: bool,
    /// Sorted by limit id, so decisions visit limits in one deterministic order.
    pub limits: Vec<LimitEntry>,
    /// The last limit generation issued in this tenant (see `LimitEntry::generation`).
    pub generation_last: u64,
    #[serde(with = "sorted_map")]
    pub agents: HashMap<AgentId, Agent>,
    /// Remembered answers by request id (see `dedup.rs`).
    #[serde(with = "sorted_map")]
    pub requests: HashMap<RequestId, DedupEntry>,
    /// Ids of this tenant's reservations in flight; derived, rebuilt on restore.
    #[serde(skip)]
    pub in_flight: BTreeSet<u64>,
}

impl Tenant {
    pub fn new(policy: TenantPolicy) -> Self {
        Tenant {
            policy,
            frozen: false,
            limits: Vec::new(),
            generation_last: 0,
            agents: HashMap::new(),
            requests: HashMap::new(),
            in_flight: BTreeSet::new(),
        }
    }
}

/// An agent: created on its first reserve or record (or freeze), never deleted. Kept small:
/// a million of them must fit in a few hundred MB.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// Counters of the per-agent limits this agent has used, keyed by limit generation.
    pub counters: Vec<AgentCounter>,
    pub runaway: Option<Box<Runaway>>,
    pub frozen: bool,
}

impl Agent {
    pub fn counter_index(&self, generation: u64) -> Option<usize> {
        self.counters
            .iter()
            .position(|c| c.generation == generation)
    }
}

/// A reservation in flight: what it holds and against which limit generations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub tenant: TenantId,
    pub agent: AgentId,
    pub tool: ToolId,
    pub estimate: Amounts,
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
    /// Generations of the limits held; a limit since deleted or reset is skipped.
    pub holds: Box<[u64]>,
}

/// An expired reservation, kept for a while so a late commit trues the expiry up or down
/// instead of being charged a second time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub reservation: Reservation,
    pub expired_at_ms: u64,
    /// The expiry charged the estimate (policy `Charge`); else it released the hold.
    pub charged: bool,
}

/// The first answer to a request, for retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// xxh3-128 of the command's postcard bytes: a retry must carry the same payload.
    pub payload: u128,
    pub at_ms: u64,
    /// Where the first answer was given (the Raft log index), returned with every retry.
    pub position: u64,
    pub outcome: Outcome,
}

/// Serializes a hash map as a list of pairs sorted by key: deterministic bytes.
pub mod sorted_map {
    use std::collections::HashMap;
    use std::hash::Hash;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K, V, S>(map: &HashMap<K, V>, s: S) -> Result<S::Ok, S::Error>
    where
        K: Serialize + Ord,
        V: Serialize,
        S: Serializer,
    {
        let mut entries: Vec<(&K, &V)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        s.collect_seq(entries)
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<HashMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let entries: Vec<(K, V)> = Vec::deserialize(d)?;
        let mut map = HashMap::with_capacity(entries.len());
        let mut previous: Option<&K> = None;
        for (key, _) in &entries {
            if previous.is_some_and(|p| p >= key) {
                return Err(D::Error::custom("map keys are not sorted and unique"));
            }
            previous = Some(key);
        }
        map.extend(entries);
        Ok(map)
    }
}
