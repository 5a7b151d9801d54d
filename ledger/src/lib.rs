//! The ledger: every rule of SPEC.md, as a deterministic state machine.
//!
//! No I/O, no async, no clock, no openraft types. Time comes in with each command (the
//! leader's timestamp from the log), so replicas fed the same commands reach the same state
//! and the same audit chain head, bit for bit. It must never read a clock, a random number
//! or a hash map's iteration order into its state, answers, snapshots or audit trail.
//!
//! Decisions where SPEC.md is silent (see also ARCHITECTURE.md, "Ledger data model"):
//! - Tenants are created by `PutTenant`; any other command on an unknown tenant is
//!   `UnknownTenant` (NOT_FOUND). Agents are created on their first reserve, record or
//!   freeze, and removed once idle with nothing that could matter (`gc.rs`).
//! - Scopes: `Agent(name)` replaces, for that agent, the `EachAgent` limits of the same
//!   dimension and class (budget, rate, concurrency). A reserve is checked against every
//!   limit that applies and held against all of them, or none.
//! - Time: `apply` uses `max(at_ms, now_ms())`, so time never runs backwards. Before the
//!   command, reservations whose `expires_at_ms <= at` expire in (expires_at, tenant, id)
//!   order (tenants in creation order), each at its own expiry time (its charge lands in
//!   the window of that time).
//! - Reservation ids count per tenant (1, 2, 3, ...): a tenant learns nothing of another's
//!   traffic from them, and naming another tenant's reservation answers as an id never
//!   issued (or ended) does, from the naming tenant's own counter.
//! - Rejections change nothing but time: an invalid command (INVALID_ARGUMENT) changes
//!   nothing at all; a command rejected by state still lets time advance (expiries, the
//!   forgetting of old answers), which is the log's doing, not the command's.
//! - Idempotency: the first answer to (tenant, request_id) is remembered for
//!   `DEDUP_WINDOW_MS`, never less: at the tenant's quota of answers its reserves and
//!   records are refused, at `DEDUP_ENTRIES_MAX` every new request is; a retry with
//!   the same payload gets it back and changes nothing, with another payload it is
//!   `RequestIdReused`. Rejections are not remembered: they changed nothing, a retry
//!   re-evaluates. Denials are remembered: they are decisions.
//! - Expiry: a tenant's policy charges (default) or releases the estimate; a commit within
//!   `EXPIRED_RETENTION_MS` after expiry trues the charge to the actual (flagged late), a
//!   release after expiry is `ReleaseAfterExpiry` (FAILED_PRECONDITION), later either is
//!   `ReservationEnded` (NOT_FOUND).
//! - A commit charges the limits its reservation holds (those still in force); limits added
//!   while it was in flight are not charged by it.
//! - Changing a limit keeps its counters if only its cap changes (budget amount, rate burst,
//!   concurrency max); any other change starts it afresh, and holds on the old one lapse.
//! - Leases (`leases.rs`) are held like reservations, with ids from the same per-tenant
//!   counter, count toward the bounds on reservations in flight, and expire in the same
//!   sweep, in one (expires_at, tenant, id) order with them. An expired lease is charged its
//!   whole slice whatever the expiry policy, and remembered `EXPIRED_RETENTION_MS` for a
//!   late settle, which charges nothing again. Lease refusals are not audited: they hold
//!   nothing, and the client then reserves per call, which is.
#![forbid(unsafe_code)]

mod alerts;
mod audit;
mod audit_batch;
mod commands;
mod dedup;
mod encode;
mod gc;
mod invariants;
mod keys;
mod leases;
mod limits;
mod names;
mod prefetch;
mod prices;
mod quotas;
mod rate;
mod runaway;
mod sessions;
mod snapshot;
mod state;
mod types;
mod validate;
mod window;

#[cfg(test)]
mod alert_tests;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod price_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod quota_tests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tests;

pub use alerts::{
    ThresholdCrossing, Thresholds, THRESHOLDS_DEFAULT_PERCENT, THRESHOLDS_PER_LIMIT_MAX,
};
pub use audit::{
    verify_chain, AuditError, AuditEvent, AuditRecord, AUDIT_QUERY_RECORDS_MAX,
    AUDIT_RECORDS_RETAINED_MAX, GENESIS_PREV_HASH,
};
pub use audit_batch::{AuditBatch, EncodedRecord};
pub use commands::{
    AGENTS_MAX, AGENTS_PER_TENANT_MAX, EXPIRED_RETENTION_MS, EXPIRED_TOMBSTONES_MAX,
    RESERVATIONS_IN_FLIGHT_MAX, RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX, TENANTS_MAX,
};
pub use dedup::{payload_hash, DEDUP_ENTRIES_MAX, DEDUP_ENTRIES_RESERVED, DEDUP_WINDOW_MS};
pub use gc::{AGENT_GC_VISITS_PER_TICK, AGENT_IDLE_MS};
pub use keys::{
    ApiKey, KeyCreated, KeyId, KeySpec, Keys, Role, KEYS_MAX, KEYS_PER_TENANT_MAX, KEY_AGENTS_MAX,
    KEY_ID_HEX_LEN, KEY_NAME_BYTES_MAX, REVOKED_KEYS_PER_TENANT_MAX,
};
pub use limits::LIMITS_PER_TENANT_MAX;
pub use prefetch::PREFETCH_DEPTH;
pub use prices::{
    Price, PriceEntry, PriceRef, Usage, FALLBACK_MODEL, PER_TOKENS_DEFAULT, PER_TOKENS_MAX,
    PRICES_PER_TENANT_MAX,
};
pub use quotas::{
    TenantQuotas, AGENTS_QUOTA_DEFAULT, ANSWERS_PER_TENANT_MAX, ANSWERS_QUOTA_DEFAULT,
    KEYS_QUOTA_DEFAULT, LIMITS_QUOTA_DEFAULT, PROPOSALS_QUEUED_PER_TENANT_MAX,
    PROPOSALS_QUEUED_QUOTA_DEFAULT, RESERVATIONS_IN_FLIGHT_QUOTA_DEFAULT, TOOLS_PER_TENANT_MAX,
    TOOLS_QUOTA_DEFAULT,
};
pub use runaway::{
    FINGERPRINTS_PER_AGENT_MAX, REPEAT_BUCKETS, SHAPES_PER_AGENT_MAX, VELOCITY_DECAY_WINDOWS_MAX,
    VELOCITY_EWMA_SHIFT,
};
pub use sessions::{
    SESSIONS_MAX, SESSIONS_PER_TENANT_MAX, SESSIONS_QUOTA_DEFAULT, SESSION_GC_VISITS_PER_TICK,
    SESSION_IDLE_MS,
};
pub use snapshot::{SnapshotError, SNAPSHOT_FORMAT_VERSION, SNAPSHOT_MAGIC};
pub use types::*;
pub use validate::{
    RUNAWAY_WINDOW_MS_MAX, SESSION_DURATION_MS_MAX, SHAPE_FLOOR_MAX, TRIP_COOLDOWN_MS_MAX,
    VELOCITY_FACTOR_MAX, VELOCITY_WINDOW_MS_MIN,
};

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use audit::AuditLog;
use names::Interned;
use state::{
    sorted_map, FastMap, Lease, LeaseTombstone, Reservation, ReservationKey, Scratch, Tenant,
    Tombstone,
};

/// Most reservations one `reservations` query returns.
pub const RESERVATIONS_QUERY_MAX: usize = 10_000;

/// Usage of one limit for one subject (the agent, for per-agent scopes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitUsage {
    pub limit: LimitSpec,
    /// The agent whose counter this is, for per-agent scopes; None for tenant-wide ones.
    pub agent: Option<AgentId>,
    /// Committed spend in the current window (budgets); the level of the bucket (rates);
    /// reservations in flight (concurrency).
    pub used: u64,
    /// Held by reservations in flight (budgets); 0 otherwise.
    pub held: u64,
    /// What a new reservation could still take; negative after overruns.
    pub remaining: i64,
    /// Start of the current calendar window, for windowed budgets.
    pub window_start_ms: Option<u64>,
    /// The highest soft threshold (percent) committed spend has crossed in the current
    /// window; 0: none (and always 0 for rates and concurrency).
    pub alerted_percent: u8,
}

impl LimitUsage {
    /// The usage of `entry` by the subject whose counter is `counter` (None: fresh).
    fn of(
        entry: &limits::LimitEntry,
        agent: Option<&AgentId>,
        counter: Option<&limits::Counter>,
        now_ms: u64,
    ) -> Self {
        let (used, held, remaining, window_start_ms) = limits::usage(&entry.spec, counter, now_ms);
        LimitUsage {
            limit: entry.spec.clone(),
            agent: agent.cloned(),
            used,
            held,
            remaining,
            window_start_ms,
            alerted_percent: counter.map_or(0, |c| limits::alerted(&entry.spec, c, now_ms)),
        }
    }
}

/// A live lease, as `Ledger::leases` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub lease_id: ReservationId,
    pub tenant: TenantId,
    pub agent: AgentId,
    pub tool: ToolId,
    /// What it still holds of each dimension.
    pub slice: Amounts,
    pub units: u32,
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
    /// The ledger asked for it back; its next settle ends it.
    pub recalled: bool,
}

/// A reservation in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationView {
    pub reservation_id: ReservationId,
    pub tenant: TenantId,
    pub agent: AgentId,
    pub tool: ToolId,
    pub estimate: Amounts,
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub frozen: bool,
    /// Set while the agent is tripped: the cause and when its cool-down ends (None: reset only).
    pub tripped: Option<(TripCause, Option<u64>)>,
}

/// The head of the audit hash chain: the sequence number and hash of the newest record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub tenant: Option<TenantId>,
    pub agent: Option<AgentId>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// Only records with a larger sequence number (for paging).
    pub after_seq: Option<u64>,
    /// Only records with a sequence number at most this (bounds the records looked at).
    pub to_seq: Option<u64>,
    /// Only records of this event, named as in the export (`AuditEvent::name`).
    pub event: Option<String>,
    /// Only records of this tool.
    pub tool: Option<ToolId>,
    pub limit: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerStats {
    pub tenants: u64,
    pub agents: u64,
    pub reservations_in_flight: u64,
    /// Live leases (each also counts toward the bounds on reservations in flight).
    #[serde(default)]
    pub leases: u64,
    pub dedup_entries: u64,
    pub audit_records_retained: u64,
}

/// The state machine. `Clone` and `PartialEq` compare whole states (tests, snapshots).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The time of the last applied command; never decreases.
    now_ms: u64,
    /// In creation order; reservations and answers refer to them by index.
    tenants: Interned<Tenant>,
    #[serde(with = "sorted_map")]
    reservations: FastMap<ReservationKey, Reservation>,
    /// Expired reservations remembered for late commits.
    #[serde(with = "sorted_map")]
    tombstones: FastMap<ReservationKey, Tombstone>,
    /// Remembered answers, oldest first, with their index (see `dedup.rs`).
    answers: dedup::Answers,
    audit: AuditLog,
    /// Where agent GC's next sweep starts (`gc.rs`).
    gc_cursor: gc::GcCursor,
    /// API keys (see `keys.rs`).
    keys: Keys,
    /// The audit sequence up to which every `ThresholdCrossed` record was delivered to the
    /// alert webhook (`alerts.rs`).
    alerts_delivered_seq: u64,
    /// Where the next sweep of idle sessions starts (`sessions.rs`).
    session_cursor: sessions::SessionCursor,
    /// Live leases (`leases.rs`), keyed like reservations: their ids come from the same
    /// per-tenant counter.
    #[serde(with = "sorted_map")]
    leases: FastMap<ReservationKey, Lease>,
    /// Expired leases remembered for late settles.
    #[serde(with = "sorted_map")]
    lease_tombstones: FastMap<ReservationKey, LeaseTombstone>,
    /// Derived indexes and counts, rebuilt on restore.
    #[serde(skip)]
    by_expiry: BTreeSet<(u64, ReservationKey)>,
    #[serde(skip)]
    tombstones_by_time: BTreeSet<(u64, ReservationKey)>,
    /// (tenant, id) of every reservation in flight: each tenant's, oldest first, in one
    /// set that stays small and warm (a set per tenant was a cache miss per grant).
    #[serde(skip)]
    in_flight: BTreeSet<ReservationKey>,
    #[serde(skip)]
    leases_by_expiry: BTreeSet<(u64, ReservationKey)>,
    #[serde(skip)]
    lease_tombstones_by_time: BTreeSet<(u64, ReservationKey)>,
    /// (tenant, id) of every live lease, for the tenant's leases in id order.
    #[serde(skip)]
    leases_of: BTreeSet<ReservationKey>,
    #[serde(skip)]
    agents_total: usize,
    /// Sessions over all tenants; derived, rebuilt on restore.
    #[serde(skip)]
    sessions_total: usize,
    /// Encoding buffer for the payload hashes of commands postcard encodes.
    #[serde(skip)]
    scratch: Scratch,
    /// Threshold crossings applied since the node last took them (for its metrics).
    #[serde(skip)]
    crossings_applied: alerts::CrossingCounts,
    /// Tests only: bounds and switches a test may change.
    #[cfg(test)]
    #[serde(skip)]
    test_knobs: TestKnobs,
}

/// What a test may change in a ledger.
#[cfg(test)]
#[derive(Clone, Debug, Default, PartialEq)]
struct TestKnobs {
    /// A lower `DEDUP_ENTRIES_MAX`, to reach it without millions of commands.
    answers_max: Option<usize>,
    /// No agent GC: the ledger to compare a collecting one with.
    agent_gc_off: bool,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one command at the leader's time. Before the command, expires every
    /// reservation whose `expires_at_ms <= at_ms` (in (expires_at, tenant, id) order), and uses
    /// `at = max(at_ms, now_ms())` so time never runs backwards.
    pub fn apply(&mut self, at_ms: u64, cmd: &Command) -> Outcome {
        self.apply_at(at_ms, 0, cmd).0
    }

    /// `apply` for a command at `position` in the log (its Raft log index). Returns the
    /// outcome and the position where it first took effect: `position` itself, or for a
    /// retry the position of the first answer, so that every answer to one request names
    /// the same place in the history.
    pub fn apply_at(&mut self, at_ms: u64, position: u64, cmd: &Command) -> (Outcome, u64) {
        if let Err(invalid) = cmd.validate() {
            return (Outcome::Rejected(Rejection::Invalid(invalid)), position);
        }
        let now_ms = at_ms.max(self.now_ms);
        self.advance(now_ms);
        let answer = match (cmd.tenant(), cmd.request_id()) {
            (Some(tenant_id), Some(request_id)) => {
                let tenant = self.tenants.find(tenant_id.as_bytes());
                let payload = dedup::payload_hash(&mut self.scratch.0, cmd);
                let key = tenant.map(|t| self.answers.key(t, request_id.as_bytes()));
                match key.and_then(|key| self.remembered(&key, request_id, payload)) {
                    Some(answer) => answer,
                    None => {
                        let outcome = match self.answer_room(cmd, tenant) {
                            Some(refused) => refused,
                            None => self.execute(now_ms, cmd, tenant),
                        };
                        if !matches!(outcome, Outcome::Rejected(_)) {
                            // PutTenant may just have created the tenant.
                            let key = key.or_else(|| {
                                let tenant = self.tenants.find(tenant_id.as_bytes())?;
                                Some(self.answers.key(tenant, request_id.as_bytes()))
                            });
                            if let Some(key) = key {
                                self.remember(&key, payload, &outcome, now_ms, position);
                            }
                        }
                        (outcome, position)
                    }
                }
            }
            _ => (self.execute(now_ms, cmd, None), position),
        };
        self.debug_check_invariants();
        answer
    }

    /// Moves time to `now_ms`: expiries first, then forgetting tombstones and answers that
    /// have outlived their retention.
    fn advance(&mut self, now_ms: u64) {
        // Reservations and leases expire in one (expires_at, tenant, id) order: their ids
        // come from one counter per tenant, so no two share a key.
        loop {
            let reservation = self.by_expiry.first().copied();
            let lease = self.leases_by_expiry.first().copied();
            let (next, is_lease) = match (reservation, lease) {
                (Some(r), Some(l)) if l < r => (l, true),
                (Some(r), _) => (r, false),
                (None, Some(l)) => (l, true),
                (None, None) => break,
            };
            let (expires_at_ms, key) = next;
            if expires_at_ms > now_ms {
                break;
            }
            if is_lease {
                self.expire_lease(key, expires_at_ms);
            } else {
                self.expire(key, expires_at_ms);
            }
        }
        while let Some(&(expired_at_ms, _)) = self.tombstones_by_time.first() {
            if expired_at_ms.saturating_add(EXPIRED_RETENTION_MS) > now_ms {
                break;
            }
            self.forget_oldest_tombstone();
        }
        while let Some(&(expired_at_ms, _)) = self.lease_tombstones_by_time.first() {
            if expired_at_ms.saturating_add(EXPIRED_RETENTION_MS) > now_ms {
                break;
            }
            self.forget_oldest_lease_tombstone();
        }
        self.forget_requests_before(now_ms);
        self.now_ms = now_ms;
    }

    /// The time of the last applied command.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn tenant(&self, tenant: &TenantId) -> Result<&Tenant, Rejection> {
        let index = self.tenants.find(tenant.as_bytes());
        index
            .and_then(|i| self.tenants.get(i))
            .ok_or_else(|| Rejection::UnknownTenant {
                tenant: tenant.clone(),
            })
    }

    /// Usage of the limits in force. With an agent: every limit that applies to it (and to
    /// `tool` if given; without a tool, every tool limit too), with that agent's counters,
    /// even if the agent has never called (its counters are then fresh). Without an agent:
    /// the tenant-wide limits (`Tenant`, `ToolTenant`) and each `Agent(name)` override with
    /// its agent's counter; `EachAgent` and `ToolPerAgent` limits are listed by `limits`
    /// and reported per agent only, since a tenant may have a million agents.
    pub fn usage(
        &self,
        tenant: &TenantId,
        agent: Option<&AgentId>,
        tool: Option<&ToolId>,
    ) -> Result<Vec<LimitUsage>, Rejection> {
        let t = self.tenant(tenant)?;
        let row = |entry: &limits::LimitEntry, agent_id: Option<&AgentId>| {
            let counter = match agent_id {
                Some(agent_id) => t.agent(agent_id).and_then(|a| {
                    a.counter_index(entry.generation)
                        .map(|i| &a.counters[i].counter)
                }),
                None => Some(&entry.counter),
            };
            LimitUsage::of(entry, agent_id, counter, self.now_ms)
        };
        let rows = match agent {
            Some(agent_id) => limits::applicable(&t.limits, agent_id, tool, false)
                .iter()
                .map(|index| {
                    let entry = &t.limits[index];
                    let per_agent = limits::is_per_agent(&entry.spec.scope);
                    row(entry, per_agent.then_some(agent_id))
                })
                .collect(),
            None => t
                .limits
                .iter()
                .filter_map(|entry| match &entry.spec.scope {
                    Scope::Tenant => Some(row(entry, None)),
                    Scope::ToolTenant(t) if tool.is_none_or(|tool| tool == t) => {
                        Some(row(entry, None))
                    }
                    Scope::Agent(agent_id) => Some(row(entry, Some(agent_id))),
                    _ => None,
                })
                .collect(),
        };
        Ok(rows)
    }

    /// Usage of the tenant's `EachSession` limits by `session`: fresh counters for a
    /// session that has not called (or was forgotten).
    pub fn session_usage(
        &self,
        tenant: &TenantId,
        session: &SessionId,
    ) -> Result<Vec<LimitUsage>, Rejection> {
        let t = self.tenant(tenant)?;
        let state = t.sessions.get(session);
        let rows = t
            .limits
            .iter()
            .filter(|entry| entry.spec.scope == Scope::EachSession)
            .map(|entry| {
                let counter = state.and_then(|s| s.counter(entry.generation));
                LimitUsage::of(entry, None, counter, self.now_ms)
            })
            .collect();
        Ok(rows)
    }

    /// Reservations in flight of the tenant (and agent), oldest first, at most `limit`
    /// (0 or above `RESERVATIONS_QUERY_MAX` means `RESERVATIONS_QUERY_MAX`).
    pub fn reservations(
        &self,
        tenant: &TenantId,
        agent: Option<&AgentId>,
        limit: usize,
    ) -> Result<Vec<ReservationView>, Rejection> {
        let t = self.tenant(tenant)?;
        let limit = if limit == 0 {
            RESERVATIONS_QUERY_MAX
        } else {
            limit.min(RESERVATIONS_QUERY_MAX)
        };
        let t_index = self.tenants.find(tenant.as_bytes()).unwrap_or(u32::MAX);
        let agent = match agent {
            Some(agent) => match t.agents.find(agent.as_bytes()) {
                Some(index) => Some(index),
                // An agent that never called has no reservations.
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        Ok(self
            .in_flight_of(t_index)
            .filter_map(|id| self.reservations.get(&(t_index, id)).map(|r| (id, r)))
            .filter(|(_, r)| agent.is_none_or(|a| a == r.agent))
            .take(limit)
            .filter_map(|(id, r)| Some((id, r, t.agents.get(r.agent)?)))
            .map(|(id, r, a)| ReservationView {
                reservation_id: ReservationId(id),
                tenant: t.id.clone(),
                agent: a.id.clone(),
                tool: r.tool.clone(),
                estimate: r.estimate,
                granted_at_ms: r.granted_at_ms,
                expires_at_ms: r.expires_at_ms,
            })
            .collect())
    }

    /// Ids of the tenant's reservations in flight, oldest first.
    fn in_flight_of(&self, tenant: u32) -> impl Iterator<Item = u64> + '_ {
        self.in_flight
            .range((tenant, 0)..=(tenant, u64::MAX))
            .map(|&(_, id)| id)
    }

    /// The limits in force, sorted by id.
    pub fn limits(&self, tenant: &TenantId) -> Result<Vec<LimitSpec>, Rejection> {
        Ok(self
            .tenant(tenant)?
            .limits
            .iter()
            .map(|l| l.spec.clone())
            .collect())
    }

    /// The tenant's quotas, if it exists.
    pub fn quotas(&self, tenant: &TenantId) -> Option<TenantQuotas> {
        let index = self.tenants.find(tenant.as_bytes())?;
        self.tenants.get(index).map(|t| t.policy.quotas)
    }

    pub fn policy(&self, tenant: &TenantId) -> Result<TenantPolicy, Rejection> {
        Ok(self.tenant(tenant)?.policy.clone())
    }

    /// Every tenant, sorted.
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut tenants: Vec<TenantId> = self.tenants.iter().map(|t| t.id.clone()).collect();
        tenants.sort_unstable();
        tenants
    }

    /// Whether the agent is frozen and whether it is tripped (as of `now_ms()`).
    pub fn agent_status(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<AgentStatus, Rejection> {
        let t = self.tenant(tenant)?;
        let a = t.agent(agent).ok_or_else(|| Rejection::UnknownAgent {
            tenant: tenant.clone(),
            agent: agent.clone(),
        })?;
        let tripped = a
            .runaway
            .as_deref()
            .and_then(|r| r.trip_at(self.now_ms))
            .map(|trip| (trip.cause.clone(), trip.until_ms));
        Ok(AgentStatus {
            frozen: a.frozen,
            tripped,
        })
    }

    /// Retained audit records matching the filter, oldest first, at most `filter.limit`
    /// (0 or above `AUDIT_QUERY_RECORDS_MAX` means `AUDIT_QUERY_RECORDS_MAX`).
    pub fn audit(&self, filter: &AuditFilter) -> Vec<AuditRecord> {
        self.audit.query(filter)
    }

    pub fn chain_head(&self) -> ChainHead {
        self.audit.head()
    }

    /// The seq of the oldest audit record still in memory (None: none).
    pub fn audit_oldest_seq(&self) -> Option<u64> {
        self.audit.oldest_seq()
    }

    /// Appends the retained records after `after_seq` to `out`, in their binary form
    /// (`AuditBatch`): what the apply path hands to the trail on disk.
    pub fn audit_encoded_after(&self, after_seq: u64, out: &mut AuditBatch) {
        self.audit.encode_after(after_seq, out)
    }

    /// Re-hashes the retained records, starting from the oldest one's `prev_hash`.
    pub fn verify_audit(&self) -> Result<ChainHead, AuditError> {
        self.audit.verify()
    }

    pub fn stats(&self) -> LedgerStats {
        LedgerStats {
            tenants: self.tenants.len() as u64,
            agents: self.agents_total as u64,
            reservations_in_flight: self.reservations.len() as u64,
            leases: self.leases.len() as u64,
            dedup_entries: self.answers.len() as u64,
            audit_records_retained: self.audit.len() as u64,
        }
    }
}
