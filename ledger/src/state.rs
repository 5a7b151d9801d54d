//! The ledger's records: tenants, agents, reservations in flight, expired tombstones and
//! remembered answers. Plain data; the rules that change them live in `commands.rs`.
//!
//! Hash maps are for lookups only: nothing iterates them into an output, a snapshot or the
//! audit trail without sorting first (`sorted_map`), so their random seeds never leak.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::limits::{AgentCounter, LimitEntry};
use super::names::{Interned, Named};
use super::runaway::Runaway;
use super::{AgentId, Amounts, TenantId, TenantPolicy, ToolId};
use tollgate_cacheline::Ring;

/// The ledger's hash maps: foldhash is several times faster than SipHash on short ids, and
/// its per-process random seeds keep flooding a map with colliding ids impractical.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub policy: TenantPolicy,
    pub frozen: bool,
    /// Sorted by limit id, so decisions visit limits in one deterministic order.
    pub limits: Vec<LimitEntry>,
    /// The last limit generation issued in this tenant (see `LimitEntry::generation`).
    pub generation_last: u64,
    /// The last reservation id issued in this tenant: its ids are 1, 2, 3, ... in log
    /// order, counted apart from every other tenant's.
    pub reservations_issued: u64,
    /// In creation order; reservations and answers refer to them by index.
    pub agents: Interned<Agent>,
    /// The price table, sorted by model.
    pub prices: Vec<crate::PriceEntry>,
    /// The last price-table version issued in this tenant (see `PriceEntry::version`).
    pub price_version: u64,
    /// Sessions remembered, by name (`sessions.rs`); sorted, so every replica sweeps them
    /// in the same order.
    pub sessions: std::collections::BTreeMap<crate::SessionId, crate::sessions::Session>,
    /// How many of the ledger's reservations in flight are this tenant's (they are listed
    /// in `Ledger::in_flight`); derived, rebuilt on restore.
    #[serde(skip)]
    pub in_flight: u32,
    /// How many of the ledger's live leases are this tenant's; derived, rebuilt on restore.
    #[serde(skip)]
    pub leases: u32,
}

impl Tenant {
    pub fn new(id: TenantId, policy: TenantPolicy) -> Self {
        Tenant {
            id,
            policy,
            frozen: false,
            limits: Vec::new(),
            generation_last: 0,
            reservations_issued: 0,
            agents: Interned::default(),
            prices: Vec::new(),
            price_version: 0,
            sessions: std::collections::BTreeMap::new(),
            in_flight: 0,
            leases: 0,
        }
    }

    /// The agent named `agent`, if it has called (or been frozen).
    pub fn agent(&self, agent: &AgentId) -> Option<&Agent> {
        self.agents
            .find(agent.as_bytes())
            .and_then(|index| self.agents.get(index))
    }
}

impl Named for Tenant {
    fn name(&self) -> &[u8] {
        self.id.as_bytes()
    }
}

/// Per-agent counters kept inside the agent before they spill to the heap: a tenant
/// typically has a per-agent rate and a per-agent concurrency limit.
pub const AGENT_COUNTERS_INLINE: usize = 2;
/// Held limit generations kept inside a reservation before they spill to the heap.
pub const HOLDS_INLINE: usize = 4;

/// An agent: created on its first reserve or record (or freeze), removed once idle with
/// nothing that could matter (`gc.rs`). Kept small: a million of them must fit in a few
/// hundred MB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    /// Counters of the per-agent limits this agent has used, keyed by limit generation.
    /// The first `AGENT_COUNTERS_INLINE` live inside the agent: no allocation, and no
    /// second cache miss after the one that reached the agent.
    #[serde(with = "inline_seq")]
    pub counters: SmallVec<[AgentCounter; AGENT_COUNTERS_INLINE]>,
    pub runaway: Option<Box<Runaway>>,
    pub frozen: bool,
    /// When it last reserved, recorded or was frozen: agent GC waits `AGENT_IDLE_MS` after.
    pub last_used_ms: u64,
    /// Reservations in flight and tombstones that refer to this agent by index; derived,
    /// rebuilt on restore. Agent GC removes only agents with none.
    #[serde(skip)]
    pub refs: u32,
    /// Live leases of this agent; derived, rebuilt on restore.
    #[serde(skip)]
    pub leases: u32,
}

impl Agent {
    pub fn new(id: AgentId, now_ms: u64) -> Self {
        Agent {
            id,
            counters: SmallVec::new(),
            runaway: None,
            frozen: false,
            last_used_ms: now_ms,
            refs: 0,
            leases: 0,
        }
    }

    pub fn counter_index(&self, generation: u64) -> Option<usize> {
        self.counters
            .iter()
            .position(|c| c.generation == generation)
    }
}

impl Named for Agent {
    fn name(&self) -> &[u8] {
        self.id.as_bytes()
    }
}

/// Where the ledger keeps a reservation: its tenant's index in `Ledger::tenants` and the
/// id that tenant was given. Ids count per tenant, so the ids a tenant gets say nothing of
/// other tenants' traffic, and a tenant naming an id finds only its own reservation.
pub type ReservationKey = (u32, u64);

/// A reservation in flight: what it holds and against which limit generations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Index of the tenant in `Ledger::tenants`.
    pub tenant: u32,
    /// Index of the agent in its tenant's `agents`.
    pub agent: u32,
    pub tool: ToolId,
    pub estimate: Amounts,
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
    /// Generations of the limits held; a limit since deleted or reset is skipped. The
    /// first `HOLDS_INLINE` live inside the reservation (no allocation per grant).
    #[serde(with = "inline_seq")]
    pub holds: SmallVec<[u64; HOLDS_INLINE]>,
    /// The session it was reserved in, whose `EachSession` limits it holds.
    pub session: Option<crate::SessionId>,
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

/// A live lease: a slice of every limit that applies to (agent, tool), held for one client
/// process like a reservation's estimate (same counters, same generations), so committed +
/// held stays within every budget whatever the client does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Index of the tenant in `Ledger::tenants`.
    pub tenant: u32,
    /// Index of the agent in its tenant's `agents`.
    pub agent: u32,
    pub tool: ToolId,
    /// What the lease still holds of each dimension: held on every budget of that dimension
    /// in `holds`, taken from every rate's bucket. A dimension no limit holds is the
    /// holder's to spend as asked.
    pub slice: Amounts,
    /// Concurrency slots held on every concurrency limit in `holds`.
    pub units: u32,
    /// Generations of the limits held; a limit since deleted or reset is skipped.
    #[serde(with = "inline_seq")]
    pub holds: SmallVec<[u64; HOLDS_INLINE]>,
    pub granted_at_ms: u64,
    /// The last settle that renewed it (the grant before any).
    pub renewed_at_ms: u64,
    /// Unsettled by then, its whole slice is charged (`LEASE_GRACE_MS` after its TTL).
    pub expires_at_ms: u64,
    /// The ledger wants the slice back: the next settle returns the rest and ends it.
    pub recalled: bool,
}

/// An expired lease, kept for `EXPIRED_RETENTION_MS` so that a late settle is told its
/// calls were already paid for (the whole slice was charged) instead of "never issued".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTombstone {
    pub lease: Lease,
    pub expired_at_ms: u64,
}

/// A run of bytes in a `Ring<u8>`, serialized as a sequence of bytes without copying them
/// out first (postcard writes it exactly as a `Vec<u8>` or `Box<[u8]>`). An out-of-bounds
/// range is empty.
pub struct RingBytes<'a>(pub &'a Ring<u8>, pub std::ops::Range<usize>);

impl Serialize for RingBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.range(self.1.clone()))
    }
}

/// A reusable encoding buffer. Not state: every `Scratch` equals every other, a clone
/// starts empty, and snapshots skip it.
#[derive(Default)]
pub struct Scratch(pub Vec<u8>);

impl Clone for Scratch {
    fn clone(&self) -> Self {
        Scratch::default()
    }
}

impl PartialEq for Scratch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Scratch {}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// Serializes a `SmallVec` as a plain sequence: the same bytes as a `Vec` or a boxed slice.
pub mod inline_seq {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use smallvec::{Array, SmallVec};

    pub fn serialize<A, S>(items: &SmallVec<A>, s: S) -> Result<S::Ok, S::Error>
    where
        A: Array,
        A::Item: Serialize,
        S: Serializer,
    {
        s.collect_seq(items.iter())
    }

    pub fn deserialize<'de, A, D>(d: D) -> Result<SmallVec<A>, D::Error>
    where
        A: Array,
        A::Item: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Vec::<A::Item>::deserialize(d).map(SmallVec::from_vec)
    }
}

/// Serializes a hash map as a list of pairs sorted by key: deterministic bytes.
pub mod sorted_map {
    use std::collections::HashMap;
    use std::hash::{BuildHasher, Hash};

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K, V, H, S>(map: &HashMap<K, V, H>, s: S) -> Result<S::Ok, S::Error>
    where
        K: Serialize + Ord,
        V: Serialize,
        S: Serializer,
    {
        let mut entries: Vec<(&K, &V)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        s.collect_seq(entries)
    }

    pub fn deserialize<'de, K, V, H, D>(d: D) -> Result<HashMap<K, V, H>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash + Ord,
        V: Deserialize<'de>,
        H: BuildHasher + Default,
        D: Deserializer<'de>,
    {
        let entries: Vec<(K, V)> = Vec::deserialize(d)?;
        let mut map = HashMap::with_capacity_and_hasher(entries.len(), H::default());
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
