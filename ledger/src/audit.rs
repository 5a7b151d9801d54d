//! The audit trail: every decision, hash-chained so any replica can prove it unaltered.
//!
//! `hash = SHA-256(postcard(record without its hash))`, whose last 32 bytes are
//! `prev_hash` (genesis: 32 zero bytes), so each hash covers the one before. Postcard is
//! endian-independent, so every replica computes the same chain head. (Audit chain format
//! 2, since ledger snapshot format 4: format 1 hashed `prev_hash` a second time in front of
//! the body, which made a typical record three SHA-256 blocks instead of two.) Memory keeps
//! the newest `AUDIT_RECORDS_RETAINED_MAX` records; older ones are dropped from memory (the
//! node's trail on disk keeps them) but the chain continues.

use serde::de::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_64;

use super::audit_batch::AuditBatch;
use super::encode;
use super::state::{RingBytes, Scratch};
use super::{
    AgentId, Amounts, AuditFilter, ChainHead, DenyReason, LimitId, LimitSpec, RequestId,
    ReservationId, TenantId, ToolId, TripCause,
};
use tollgate_cacheline::Ring;

/// Audit records kept in memory (a ring): at ~300 bytes each, about 30 MB at most, and as
/// much in every snapshot. Every node's trail on disk keeps them all; memory serves what an
/// apply hands to that trail, a node's catch-up after a snapshot, and the alert sender when
/// it keeps up (it reads the trail on disk when it fell behind).
pub const AUDIT_RECORDS_RETAINED_MAX: usize = 100_000;
/// Most records one audit query returns; page with `AuditFilter::after_seq`.
pub const AUDIT_QUERY_RECORDS_MAX: usize = 10_000;
/// The hash the first record of the trail links to.
pub const GENESIS_PREV_HASH: [u8; 32] = [0; 32];

/// What was decided.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    #[serde(alias = "Grant")]
    Grant,
    #[serde(alias = "Deny")]
    Deny(DenyReason),
    /// `overrun`: actual above the estimate in some dimension; `late`: after the expiry;
    /// `abandoned`: a client guard was left without commit or release, so the estimate is
    /// charged; `price`: the price entry the cost was derived from, if usage was given.
    #[serde(alias = "Commit")]
    Commit {
        overrun: bool,
        late: bool,
        abandoned: bool,
        price: Option<crate::PriceRef>,
    },
    #[serde(alias = "Release")]
    Release,
    /// `charged`: the estimate was charged (policy `Charge`), else released.
    #[serde(alias = "Expire")]
    Expire { charged: bool },
    /// `price`: the price entry the cost was derived from, if usage was given; `offline`:
    /// granted by a client failing open while the cluster was unreachable.
    #[serde(alias = "Record")]
    Record {
        price: Option<crate::PriceRef>,
        offline: bool,
    },
    #[serde(alias = "TenantPut")]
    TenantPut,
    #[serde(alias = "LimitPut")]
    LimitPut(LimitSpec),
    #[serde(alias = "LimitDelete")]
    LimitDelete(LimitId),
    #[serde(alias = "Freeze")]
    Freeze,
    #[serde(alias = "Unfreeze")]
    Unfreeze,
    #[serde(alias = "Trip")]
    Trip(TripCause),
    #[serde(alias = "TripReset")]
    TripReset,
    /// An API key was created (its id, role, agents and name; never its secret or digest).
    KeyCreate(crate::KeyCreated),
    /// An API key's secret was replaced.
    KeyRotate(crate::KeyId),
    /// An API key was revoked.
    KeyRevoke(crate::KeyId),
    /// A model's price was set (the whole entry, with its new version).
    PricePut(crate::PriceEntry),
    /// A model's price was removed.
    PriceDelete(crate::ModelId),
    /// Committed spend of a budget reached one of its soft thresholds (`alerts.rs`).
    ThresholdCrossed(crate::ThresholdCrossing),
    /// A lease was granted or renewed: the amounts are the slice it now holds.
    LeaseGrant,
    /// One call its holder decided inside a lease, reported by a settle: the amounts are
    /// the actual. `charged`: false when the lease had expired and its whole slice had
    /// already been charged.
    LeaseCall { overrun: bool, charged: bool },
    /// A lease's unused rest was given back and the lease ended; `recalled`: the ledger had
    /// asked for it (a denial it caused, a freeze, a trip, a limit change).
    LeaseReturn { recalled: bool },
    /// A lease was not settled in time: its whole slice (the amounts) was charged.
    LeaseExpire,
}

impl AuditEvent {
    /// Every event's name, as `name` gives it.
    pub const NAMES: [&'static str; 23] = [
        "grant",
        "deny",
        "commit",
        "release",
        "expire",
        "record",
        "tenant_put",
        "limit_put",
        "limit_delete",
        "freeze",
        "unfreeze",
        "trip",
        "trip_reset",
        "key_create",
        "key_rotate",
        "key_revoke",
        "price_put",
        "price_delete",
        "threshold_crossed",
        "lease_grant",
        "lease_call",
        "lease_return",
        "lease_expire",
    ];

    /// The event's name in the export (`"grant"`, `"threshold_crossed"`, ...), what an
    /// audit query filters on.
    pub fn name(&self) -> &'static str {
        let index = match self {
            AuditEvent::Grant => 0,
            AuditEvent::Deny(_) => 1,
            AuditEvent::Commit { .. } => 2,
            AuditEvent::Release => 3,
            AuditEvent::Expire { .. } => 4,
            AuditEvent::Record { .. } => 5,
            AuditEvent::TenantPut => 6,
            AuditEvent::LimitPut(_) => 7,
            AuditEvent::LimitDelete(_) => 8,
            AuditEvent::Freeze => 9,
            AuditEvent::Unfreeze => 10,
            AuditEvent::Trip(_) => 11,
            AuditEvent::TripReset => 12,
            AuditEvent::KeyCreate(_) => 13,
            AuditEvent::KeyRotate(_) => 14,
            AuditEvent::KeyRevoke(_) => 15,
            AuditEvent::PricePut(_) => 16,
            AuditEvent::PriceDelete(_) => 17,
            AuditEvent::ThresholdCrossed(_) => 18,
            AuditEvent::LeaseGrant => 19,
            AuditEvent::LeaseCall { .. } => 20,
            AuditEvent::LeaseReturn { .. } => 21,
            AuditEvent::LeaseExpire => 22,
        };
        Self::NAMES[index]
    }
}

/// A decision as written in the audit trail.
///
/// # JSON form (`tollgate audit export`, one record a line)
///
/// The stable schema of an export; `tollgate audit verify --file` reads it back.
/// Only the hashed fields count for the chain: `time` is derived from `at_ms` and is checked
/// against it on reading, so an edited `time` does not verify either.
///
/// - `seq` (integer): position in the chain, 1 for the first record ever, consecutive.
/// - `at_ms` (integer): when it was decided, unix milliseconds (the leader's time in the log).
/// - `time` (string): `at_ms` as RFC 3339 UTC with milliseconds, `2024-05-01T12:00:00.000Z`;
///   null beyond the year 9999. Optional on reading (exports before it had none).
/// - `tenant`, `agent`, `tool`, `request_id` (string or null): who and what, null where
///   the event has none (e.g. `agent` of a tenant freeze, `request_id` of an expiry).
/// - `reservation_id` (integer or null): the reservation granted, committed, released or
///   expired.
/// - `event` (string or object): what was decided, as `"name"` or `{"name": content}` with
///   snake_case names: `"grant"`, `{"deny": reason}`, `{"commit": {"overrun": bool,
///   "late": bool, "abandoned": bool, "price": price}}`, `"release"`, `{"expire":
///   {"charged": bool}}`, `{"record": {"price": price, "offline": bool}}`,
///   `"tenant_put"`, `{"limit_put": limit}`, `{"limit_delete": "limit id"}`, `"freeze"`,
///   `"unfreeze"`, `{"trip": cause}`, `"trip_reset"`, `{"key_create": {"key_id", "role", "agents",
///   "name"}}` (`role`: `"admin"`, `"tenant_admin"`, `"worker"`), `{"key_rotate": "key id"}`,
///   `{"key_revoke": "key id"}`, `{"price_put": {"model", "price": {"input_micros",
///   "output_micros", "cached_input_micros", "per_tokens"}, "version"}}`,
///   `{"price_delete": "model"}`, `{"threshold_crossed": {"limit_id", "scope",
///   "dimension", "threshold_percent", "used", "limit", "window_start_ms"}}` (a budget's
///   committed spend `used` reached `threshold_percent` % of `limit` in the window starting
///   at `window_start_ms`, null for a lifetime budget). A `price` is null or `{"model", "version"}`: the
///   price-table entry a cost was derived from. A `reason` is `{"limit":
///   {"limit_id", "scope", "dimension", "remaining", "retry_after_ms"}}`, `{"frozen":
///   {"agent"}}` or `{"tripped": {"cause", "until_ms"}}`; a `cause` is `{"repetition":
///   {"fingerprint", "count"}}`, `{"velocity": {"spent", "baseline"}}` or
///   `{"shape_velocity": {"shape", "calls", "baseline"}}`; a `limit` is
///   `{"id", "scope", "dimension", "kind", "thresholds"}` (`thresholds`: the soft
///   thresholds in ascending percent; absent in older exports), with `scope` one of `"tenant"`,
///   `"each_agent"`, `{"agent": name}`, `{"tool_per_agent": tool}`, `{"tool_tenant":
///   tool}`; `dimension` one of `"tokens"`, `"cost"`, `"calls"`, `"concurrency"`; `kind`
///   one of `{"budget": {"window", "amount"}}` (`window`: `"lifetime"`, `"hour"`, `"day"`,
///   `"week"`, `"month"`), `{"rate": {"amount", "period_ms", "burst"}}`,
///   `{"concurrency": {"max"}}`. Reading also accepts the CamelCase names of older exports.
/// - `amounts` (object): `{"tokens", "cost_micros", "calls"}`, integers: the estimate of a
///   grant, denial, release or expiry, the actual of a commit or record, zeros otherwise.
/// - `prev_hash`, `hash` (64 lowercase hex digits): the chain, see the module doc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub tenant: Option<TenantId>,
    pub agent: Option<AgentId>,
    pub tool: Option<ToolId>,
    pub request_id: Option<RequestId>,
    pub reservation_id: Option<ReservationId>,
    pub event: AuditEvent,
    pub amounts: Amounts,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// `at_ms` as RFC 3339 UTC with milliseconds; None past what the calendar holds (year 9999).
fn rfc3339_utc(at_ms: u64) -> Option<String> {
    let nanos = i128::from(at_ms).checked_mul(1_000_000)?;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    ))
}

/// `AuditRecord` as serialized: its fields in order, with `time` after `at_ms` (in
/// human-readable formats; None, one byte, in binary ones).
#[derive(Serialize)]
struct RecordOut<'a> {
    seq: u64,
    at_ms: u64,
    time: Option<String>,
    tenant: &'a Option<TenantId>,
    agent: &'a Option<AgentId>,
    tool: &'a Option<ToolId>,
    request_id: &'a Option<RequestId>,
    reservation_id: Option<ReservationId>,
    event: &'a AuditEvent,
    amounts: &'a Amounts,
    #[serde(with = "hash_hex")]
    prev_hash: &'a [u8; 32],
    #[serde(with = "hash_hex")]
    hash: &'a [u8; 32],
}

#[derive(Deserialize)]
struct RecordIn {
    seq: u64,
    at_ms: u64,
    #[serde(default)]
    time: Option<String>,
    tenant: Option<TenantId>,
    agent: Option<AgentId>,
    tool: Option<ToolId>,
    request_id: Option<RequestId>,
    reservation_id: Option<ReservationId>,
    event: AuditEvent,
    amounts: Amounts,
    #[serde(with = "hash_hex")]
    prev_hash: [u8; 32],
    #[serde(with = "hash_hex")]
    hash: [u8; 32],
}

impl Serialize for AuditRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let time = if s.is_human_readable() {
            rfc3339_utc(self.at_ms)
        } else {
            None
        };
        RecordOut {
            seq: self.seq,
            at_ms: self.at_ms,
            time,
            tenant: &self.tenant,
            agent: &self.agent,
            tool: &self.tool,
            request_id: &self.request_id,
            reservation_id: self.reservation_id,
            event: &self.event,
            amounts: &self.amounts,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
        .serialize(s)
    }
}

/// Reads what `Serialize` wrote; a `time` that is not `at_ms`'s is an error.
impl<'de> Deserialize<'de> for AuditRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RecordIn::deserialize(d)?;
        if let Some(time) = &r.time {
            if rfc3339_utc(r.at_ms).as_ref() != Some(time) {
                return Err(D::Error::custom(format!(
                    "audit record seq {}: time {time} is not at_ms {}",
                    r.seq, r.at_ms
                )));
            }
        }
        Ok(AuditRecord {
            seq: r.seq,
            at_ms: r.at_ms,
            tenant: r.tenant,
            agent: r.agent,
            tool: r.tool,
            request_id: r.request_id,
            reservation_id: r.reservation_id,
            event: r.event,
            amounts: r.amounts,
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
    }
}

/// The record without its hash, field for field in the order of `AuditRecord`: the
/// canonical bytes that are hashed. `prev_hash` comes last, so a record's link is the last
/// 32 bytes of its body.
#[derive(Serialize)]
struct HashedBody<'a> {
    seq: u64,
    at_ms: u64,
    tenant: Option<&'a TenantId>,
    agent: Option<&'a AgentId>,
    tool: Option<&'a ToolId>,
    request_id: Option<&'a RequestId>,
    reservation_id: Option<ReservationId>,
    event: &'a AuditEvent,
    amounts: &'a Amounts,
    prev_hash: &'a [u8; 32],
}

/// `HashedBody` decoded back (postcard encodes `Option<&T>` and `Option<T>` alike).
#[derive(Deserialize)]
struct DecodedBody {
    seq: u64,
    at_ms: u64,
    tenant: Option<TenantId>,
    agent: Option<AgentId>,
    tool: Option<ToolId>,
    request_id: Option<RequestId>,
    reservation_id: Option<ReservationId>,
    event: AuditEvent,
    amounts: Amounts,
    prev_hash: [u8; 32],
}

/// Postcard's bytes of `body`: written by hand for the events of the hot path
/// (`encode.rs`) into `stack`, by postcard for the others into `spill`.
fn body_bytes<'a>(
    stack: &'a mut [u8; encode::HOT_BYTES],
    spill: &'a mut Vec<u8>,
    body: &HashedBody<'_>,
) -> &'a [u8] {
    encode::bytes_of(stack, spill, &[], body, |w, body| {
        let event: &[u8] = match body.event {
            AuditEvent::Grant => &[0],
            AuditEvent::Commit {
                overrun,
                late,
                abandoned,
                price: None,
            } => &[2, *overrun as u8, *late as u8, *abandoned as u8, 0],
            AuditEvent::Release => &[3],
            AuditEvent::Expire { charged } => &[4, *charged as u8],
            AuditEvent::Record {
                price: None,
                offline,
            } => &[5, 0, *offline as u8],
            _ => return false,
        };
        w.varint(body.seq);
        w.varint(body.at_ms);
        w.opt_str(body.tenant.map(|t| t.as_bytes()));
        w.opt_str(body.agent.map(|a| a.as_bytes()));
        w.opt_str(body.tool.map(|t| t.as_bytes()));
        w.opt_str(body.request_id.map(|r| r.as_bytes()));
        match body.reservation_id {
            None => w.byte(0),
            Some(id) => {
                w.byte(1);
                w.varint(id.0);
            }
        }
        w.bytes(event);
        w.amounts(body.amounts);
        w.bytes(body.prev_hash);
        true
    })
}

/// SHA-256(body); the body ends with the previous record's hash.
fn chain_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

impl AuditRecord {
    /// Recomputes this record's hash from its contents and `prev_hash`.
    pub fn compute_hash(&self) -> [u8; 32] {
        let body = HashedBody {
            seq: self.seq,
            at_ms: self.at_ms,
            tenant: self.tenant.as_ref(),
            agent: self.agent.as_ref(),
            tool: self.tool.as_ref(),
            request_id: self.request_id.as_ref(),
            reservation_id: self.reservation_id,
            event: &self.event,
            amounts: &self.amounts,
            prev_hash: &self.prev_hash,
        };
        let mut sha = Sha256::new();
        // Serializing into a hasher cannot fail: it has no capacity to run out of.
        let _ = postcard::serialize_with_flavor(&body, Sha256Flavor(&mut sha));
        sha.finalize().into()
    }
}

/// Feeds postcard's output straight into SHA-256: no buffer, no allocation.
struct Sha256Flavor<'a>(&'a mut Sha256);

impl postcard::ser_flavors::Flavor for Sha256Flavor<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.update(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.update([data]);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Why a chain does not verify, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit record seq {seq}: stored hash does not match its contents (altered record)")]
    HashMismatch { seq: u64 },
    #[error("audit record seq {seq}: prev_hash does not match the hash of record seq {prev_seq} (broken link)")]
    BrokenLink { seq: u64, prev_seq: u64 },
    #[error("audit record seq {seq} follows seq {prev_seq}; expected seq {expected} (missing or reordered record)")]
    SeqGap {
        seq: u64,
        prev_seq: u64,
        expected: u64,
    },
    #[error("audit record seq 1 must link to the genesis hash (32 zero bytes)")]
    BadGenesis,
    #[error("the newest retained record (seq {seq}) does not match the ledger's chain head (seq {head_seq})")]
    HeadMismatch { seq: u64, head_seq: u64 },
}

/// Verifies an exported sequence of records (e.g. read back from JSON lines): sequence
/// numbers are consecutive, each hash recomputes, and each record links to the previous
/// one. The first record may link to anything (older records may have been dropped)
/// unless it is seq 1, which must link to genesis. Returns the head: the last record's seq
/// and hash (the default head for no records).
pub fn verify_chain(records: &[AuditRecord]) -> Result<ChainHead, AuditError> {
    verify_records(records.iter())
}

fn verify_records<'a>(
    records: impl Iterator<Item = &'a AuditRecord>,
) -> Result<ChainHead, AuditError> {
    let mut head: Option<ChainHead> = None;
    for record in records {
        match head {
            None if record.seq == 1 && record.prev_hash != GENESIS_PREV_HASH => {
                return Err(AuditError::BadGenesis);
            }
            None => {}
            Some(prev) => {
                let expected = prev.seq.saturating_add(1);
                if record.seq != expected {
                    return Err(AuditError::SeqGap {
                        seq: record.seq,
                        prev_seq: prev.seq,
                        expected,
                    });
                }
                if record.prev_hash != prev.hash {
                    return Err(AuditError::BrokenLink {
                        seq: record.seq,
                        prev_seq: prev.seq,
                    });
                }
            }
        }
        if record.compute_hash() != record.hash {
            return Err(AuditError::HashMismatch { seq: record.seq });
        }
        head = Some(ChainHead {
            seq: record.seq,
            hash: record.hash,
        });
    }
    Ok(head.unwrap_or_default())
}

/// The facts of one decision, borrowed (no clones); the log adds seq, time and the chain.
pub struct Fact<'a> {
    pub tenant: Option<&'a TenantId>,
    pub agent: Option<&'a AgentId>,
    pub tool: Option<&'a ToolId>,
    pub request_id: Option<&'a RequestId>,
    pub reservation_id: Option<ReservationId>,
    pub event: AuditEvent,
    pub amounts: Amounts,
}

impl<'a> Fact<'a> {
    /// A fact about a tenant only (admin decisions on the tenant).
    pub fn tenant(tenant: &'a TenantId, request_id: &'a RequestId, event: AuditEvent) -> Self {
        Self::admin(Some(tenant), request_id, event)
    }

    /// An admin decision on a tenant, or on none (an admin key has no tenant).
    pub fn admin(
        tenant: Option<&'a TenantId>,
        request_id: &'a RequestId,
        event: AuditEvent,
    ) -> Self {
        Fact {
            tenant,
            agent: None,
            tool: None,
            request_id: Some(request_id),
            reservation_id: None,
            event,
            amounts: Amounts::default(),
        }
    }
}

/// A retained record as kept in memory: its hash and keys to find it without decoding;
/// its canonical bytes (what is hashed) are in `AuditLog::bodies`, starting at `body_at`.
/// No allocation per record, and the bodies are written and dropped in sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StoredRecord {
    seq: u64,
    at_ms: u64,
    /// xxh3 of the tenant and agent ids (0: none), to skip records a query filters out;
    /// matches are confirmed on the decoded record.
    tenant_key: u64,
    agent_key: u64,
    hash: [u8; 32],
    /// Where its body starts, counted from the first byte this ring ever held.
    body_at: u64,
    body_len: u32,
}

fn decode(body: &[u8], hash: [u8; 32]) -> Option<AuditRecord> {
    let b: DecodedBody = postcard::from_bytes(body).ok()?;
    Some(AuditRecord {
        seq: b.seq,
        at_ms: b.at_ms,
        tenant: b.tenant,
        agent: b.agent,
        tool: b.tool,
        request_id: b.request_id,
        reservation_id: b.reservation_id,
        event: b.event,
        amounts: b.amounts,
        prev_hash: b.prev_hash,
        hash,
    })
}

/// The link of a body: its last 32 bytes.
fn prev_hash_of(body: &[u8]) -> [u8; 32] {
    let mut prev = [0u8; 32];
    if let Some(tail) = body.len().checked_sub(32).map(|at| &body[at..]) {
        prev.copy_from_slice(tail);
    }
    prev
}

fn id_key(id: Option<&[u8]>) -> u64 {
    id.map_or(0, xxh3_64)
}

/// The retained records and the chain head.
#[derive(Clone, Debug, Default)]
pub struct AuditLog {
    records: Ring<StoredRecord>,
    /// The bodies of `records`, back to back, in the same order.
    bodies: Ring<u8>,
    /// Bytes dropped from the front of `bodies` so far; local bookkeeping, not serialized.
    bodies_dropped: u64,
    head: ChainHead,
    /// Where a body that postcard encodes (events off the hot path) is encoded and hashed
    /// before it is copied into `bodies` (the others are encoded on the stack).
    scratch: Scratch,
}

impl AuditLog {
    pub fn head(&self) -> ChainHead {
        self.head
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The seq of the oldest record kept in memory (None: none).
    pub fn oldest_seq(&self) -> Option<u64> {
        self.records.front().map(|r| r.seq)
    }

    /// The range of the record's body in `bodies`.
    fn body_range(&self, record: &StoredRecord) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(record.body_at.checked_sub(self.bodies_dropped)?).ok()?;
        let end = start.checked_add(usize::try_from(record.body_len).ok()?)?;
        (end <= self.bodies.len()).then_some(start..end)
    }

    /// Copies the record's body into `out` (queries and verification only).
    fn body_into(&self, record: &StoredRecord, out: &mut Vec<u8>) {
        out.clear();
        if let Some(range) = self.body_range(record) {
            for slice in self.bodies.slices(range) {
                out.extend_from_slice(slice);
            }
        }
    }

    fn push(&mut self, record: StoredRecord, body: &[u8]) {
        if self.records.len() >= AUDIT_RECORDS_RETAINED_MAX {
            if let Some(oldest) = self.records.pop_front() {
                let len = usize::try_from(oldest.body_len)
                    .unwrap_or(usize::MAX)
                    .min(self.bodies.len());
                self.bodies.drop_front(len);
                self.bodies_dropped = self.bodies_dropped.saturating_add(len as u64);
            }
        }
        debug_assert_eq!(
            record.body_at,
            self.bodies_dropped + self.bodies.len() as u64
        );
        self.bodies.extend_from_slice(body);
        self.records.push_back(record);
    }

    /// Appends a record at `at_ms` and returns its seq. Drops the oldest retained record
    /// beyond `AUDIT_RECORDS_RETAINED_MAX`.
    pub fn append(&mut self, at_ms: u64, fact: Fact<'_>) -> u64 {
        debug_assert!(
            self.records.back().is_none_or(|last| last.at_ms <= at_ms),
            "audit time runs backwards"
        );
        let seq = self.head.seq.saturating_add(1);
        let body = HashedBody {
            seq,
            at_ms,
            tenant: fact.tenant,
            agent: fact.agent,
            tool: fact.tool,
            request_id: fact.request_id,
            reservation_id: fact.reservation_id,
            event: &fact.event,
            amounts: &fact.amounts,
            prev_hash: &self.head.hash,
        };
        let mut stack = [0u8; encode::HOT_BYTES];
        let mut spill = std::mem::take(&mut self.scratch.0);
        let bytes = body_bytes(&mut stack, &mut spill, &body);
        let hash = chain_hash(bytes);
        self.head = ChainHead { seq, hash };
        let record = StoredRecord {
            seq,
            at_ms,
            tenant_key: id_key(fact.tenant.map(|t| t.as_bytes())),
            agent_key: id_key(fact.agent.map(|a| a.as_bytes())),
            hash,
            body_at: self.bodies_dropped.saturating_add(self.bodies.len() as u64),
            // A body holds a few ids of at most ID_BYTES_MAX and integers: far below 4 GB.
            body_len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        };
        self.push(record, bytes);
        self.scratch.0 = spill;
        seq
    }

    /// Appends the retained records after `after_seq` to `out`, in their binary form,
    /// copied from their bodies.
    pub fn encode_after(&self, after_seq: u64, out: &mut AuditBatch) {
        let start = self.records.partition_point(|r| r.seq <= after_seq);
        for record in self.records.range(start..self.records.len()) {
            if let Some(range) = self.body_range(record) {
                let body = self.bodies.slices(range);
                out.push_body(record.seq, record.at_ms, body, &record.hash);
            }
        }
    }

    /// Re-hashes the retained records from the oldest one's `prev_hash` and checks that the
    /// result is the chain head.
    pub fn verify(&self) -> Result<ChainHead, AuditError> {
        let mut previous: Option<&StoredRecord> = None;
        let mut body = Vec::new();
        for record in self.records.iter() {
            self.body_into(record, &mut body);
            let prev_hash = prev_hash_of(&body);
            match previous {
                None if record.seq == 1 && prev_hash != GENESIS_PREV_HASH => {
                    return Err(AuditError::BadGenesis);
                }
                None => {}
                Some(prev) => {
                    let expected = prev.seq.saturating_add(1);
                    if record.seq != expected {
                        return Err(AuditError::SeqGap {
                            seq: record.seq,
                            prev_seq: prev.seq,
                            expected,
                        });
                    }
                    if prev_hash != prev.hash {
                        return Err(AuditError::BrokenLink {
                            seq: record.seq,
                            prev_seq: prev.seq,
                        });
                    }
                }
            }
            if chain_hash(&body) != record.hash {
                return Err(AuditError::HashMismatch { seq: record.seq });
            }
            previous = Some(record);
        }
        if let Some(last) = previous {
            if last.seq != self.head.seq || last.hash != self.head.hash {
                return Err(AuditError::HeadMismatch {
                    seq: last.seq,
                    head_seq: self.head.seq,
                });
            }
        }
        Ok(self.head)
    }

    /// Retained records matching the filter, oldest first. Sequence numbers and times are
    /// monotonic in the ring, so `after_seq` and `from_ms` start by binary search; the
    /// tenant and agent filters then scan forward, decoding only likely matches.
    pub fn query(&self, filter: &AuditFilter) -> Vec<AuditRecord> {
        let limit = if filter.limit == 0 {
            AUDIT_QUERY_RECORDS_MAX
        } else {
            filter.limit.min(AUDIT_QUERY_RECORDS_MAX)
        };
        let mut start = 0;
        if let Some(after) = filter.after_seq {
            start = start.max(self.records.partition_point(|r| r.seq <= after));
        }
        if let Some(from) = filter.from_ms {
            start = start.max(self.records.partition_point(|r| r.at_ms < from));
        }
        let tenant_key = filter.tenant.as_ref().map(|t| id_key(Some(t.as_bytes())));
        let agent_key = filter.agent.as_ref().map(|a| id_key(Some(a.as_bytes())));
        let mut body = Vec::new();
        self.records
            .range(start..self.records.len())
            .take_while(|r| filter.to_ms.is_none_or(|to| r.at_ms <= to))
            .take_while(|r| filter.to_seq.is_none_or(|to| r.seq <= to))
            .filter(|r| tenant_key.is_none_or(|k| k == r.tenant_key))
            .filter(|r| agent_key.is_none_or(|k| k == r.agent_key))
            .filter_map(|r| {
                self.body_into(r, &mut body);
                decode(&body, r.hash)
            })
            .filter(|r| filter.tenant.is_none() || r.tenant == filter.tenant)
            .filter(|r| filter.agent.is_none() || r.agent == filter.agent)
            .filter(|r| filter.event.as_ref().is_none_or(|e| e == r.event.name()))
            .filter(|r| filter.tool.is_none() || r.tool == filter.tool)
            .take(limit)
            .collect()
    }

    /// Structural checks for snapshots and debug builds (hashes are checked by `verify`).
    pub fn check(&self) -> Result<(), String> {
        if self.records.len() > AUDIT_RECORDS_RETAINED_MAX {
            return Err("more audit records than AUDIT_RECORDS_RETAINED_MAX".into());
        }
        if let Some(last) = self.records.back() {
            if last.seq != self.head.seq || last.hash != self.head.hash {
                return Err("audit chain head does not match the newest record".into());
            }
        }
        // The bodies are back to back, in order, and fill `bodies` exactly.
        let mut body_at = self.bodies_dropped;
        for record in self.records.iter() {
            if record.body_at != body_at {
                return Err(format!("audit record {}: body misplaced", record.seq));
            }
            body_at = body_at.saturating_add(u64::from(record.body_len));
        }
        if body_at != self.bodies_dropped.saturating_add(self.bodies.len() as u64) {
            return Err("audit bodies and records differ in size".into());
        }
        Ok(())
    }
}

/// Equal when they retain the same records (bookkeeping aside) and the same head.
impl PartialEq for AuditLog {
    fn eq(&self, other: &Self) -> bool {
        let same_record = |a: &StoredRecord, b: &StoredRecord| {
            (
                a.seq,
                a.at_ms,
                a.tenant_key,
                a.agent_key,
                a.hash,
                a.body_len,
            ) == (
                b.seq,
                b.at_ms,
                b.tenant_key,
                b.agent_key,
                b.hash,
                b.body_len,
            ) && match (self.body_range(a), other.body_range(b)) {
                (Some(ra), Some(rb)) => self.bodies.range(ra).eq(other.bodies.range(rb)),
                _ => false,
            }
        };
        self.head == other.head
            && self.records.len() == other.records.len()
            && self
                .records
                .iter()
                .zip(other.records.iter())
                .all(|(a, b)| same_record(a, b))
    }
}

impl Eq for AuditLog {}

/// A retained record as serialized: its fields and its body (no ring offsets).
#[derive(Serialize)]
struct StoredOut<'a> {
    seq: u64,
    at_ms: u64,
    tenant_key: u64,
    agent_key: u64,
    hash: &'a [u8; 32],
    body: RingBytes<'a>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredIn {
    seq: u64,
    at_ms: u64,
    tenant_key: u64,
    agent_key: u64,
    hash: [u8; 32],
    body: Vec<u8>,
}

struct RecordsOut<'a>(&'a AuditLog);

impl Serialize for RecordsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let log = self.0;
        s.collect_seq(log.records.iter().map(|r| StoredOut {
            seq: r.seq,
            at_ms: r.at_ms,
            tenant_key: r.tenant_key,
            agent_key: r.agent_key,
            hash: &r.hash,
            body: RingBytes(&log.bodies, log.body_range(r).unwrap_or_default()),
        }))
    }
}

/// Serialized as the retained records (each with its body) and then the head.
impl Serialize for AuditLog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (RecordsOut(self), self.head).serialize(s)
    }
}

impl<'de> Deserialize<'de> for AuditLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (records, head): (Vec<StoredIn>, ChainHead) = Deserialize::deserialize(d)?;
        // A snapshot may hold more records than this build keeps in memory (it was written
        // by a build that kept more): `push` drops the oldest, as it does on append.
        let mut log = AuditLog {
            head,
            ..AuditLog::default()
        };
        for r in records {
            let body_len = u32::try_from(r.body.len())
                .map_err(|_| D::Error::custom("an audit record body is too long"))?;
            let record = StoredRecord {
                seq: r.seq,
                at_ms: r.at_ms,
                tenant_key: r.tenant_key,
                agent_key: r.agent_key,
                hash: r.hash,
                body_at: log.bodies_dropped + log.bodies.len() as u64,
                body_len,
            };
            log.push(record, &r.body);
        }
        Ok(log)
    }
}

/// Hashes as lowercase hex in human-readable formats (JSON lines), raw bytes otherwise.
mod hash_hex {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(hash))
        } else {
            hash.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            let mut hash = [0u8; 32];
            hex::decode_to_slice(text.as_bytes(), &mut hash)
                .map_err(|e| D::Error::custom(format!("hash is not 64 hex digits: {e}")))?;
            Ok(hash)
        } else {
            <[u8; 32]>::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id() -> impl Strategy<Value = String> {
        "[!-~]{1,128}"
    }

    /// The records of a log as its snapshot carries them.
    fn wire(log: &AuditLog) -> (Vec<StoredIn>, ChainHead) {
        postcard::from_bytes(&postcard::to_allocvec(log).unwrap()).unwrap()
    }

    /// Bodies that a ring holds in two chunks are encoded whole.
    #[test]
    fn records_whose_bodies_span_chunks_are_encoded_whole() {
        let tenant = TenantId::new("t".repeat(100)).unwrap();
        let request_id = RequestId::new("r".repeat(100)).unwrap();
        let mut log = AuditLog::default();
        for at_ms in 0..5_000 {
            log.append(
                at_ms,
                Fact::tenant(&tenant, &request_id, AuditEvent::Freeze),
            );
        }
        let mut batch = AuditBatch::default();
        log.encode_after(0, &mut batch);
        let mut records = Vec::new();
        while records.len() < 5_000 {
            let filter = AuditFilter {
                after_seq: records.last().map(|r: &AuditRecord| r.seq),
                ..Default::default()
            };
            records.extend(log.query(&filter));
        }
        assert_eq!(batch.len(), records.len());
        for (encoded, record) in batch.iter().zip(&records) {
            assert_eq!(encoded.bytes, postcard::to_allocvec(record).unwrap());
        }
    }

    #[test]
    fn a_snapshot_holding_more_records_than_memory_keeps_the_newest() {
        let tenant = TenantId::new("t").unwrap();
        let request_id = RequestId::new("r").unwrap();
        let mut log = AuditLog::default();
        let extra = 3;
        let mut older = Vec::new();
        for at_ms in 0..(AUDIT_RECORDS_RETAINED_MAX + extra) as u64 {
            log.append(
                at_ms,
                Fact::tenant(&tenant, &request_id, AuditEvent::Freeze),
            );
            if at_ms + 1 == extra as u64 {
                older = wire(&log).0;
            }
        }
        // What a build that kept more records in memory wrote: the oldest ones too.
        let (newest, head) = wire(&log);
        older.extend(newest);
        let bytes = postcard::to_allocvec(&(older, head)).unwrap();

        let read: AuditLog = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(read.len(), AUDIT_RECORDS_RETAINED_MAX);
        assert_eq!(read.records.front().map(|r| r.seq), Some(extra as u64 + 1));
        assert_eq!(read.head(), log.head());
        assert_eq!(read.verify(), Ok(log.head()));
        assert!(read == log);
    }

    fn event() -> impl Strategy<Value = AuditEvent> {
        prop_oneof![
            Just(AuditEvent::Grant),
            (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(overrun, late, abandoned)| {
                AuditEvent::Commit {
                    overrun,
                    late,
                    abandoned,
                    price: None,
                }
            }),
            (id(), any::<u64>()).prop_map(|(m, version)| AuditEvent::Commit {
                overrun: false,
                late: false,
                abandoned: false,
                price: Some(crate::PriceRef {
                    model: crate::ModelId::new(m).unwrap(),
                    version,
                }),
            }),
            Just(AuditEvent::Release),
            any::<bool>().prop_map(|charged| AuditEvent::Expire { charged }),
            Just(AuditEvent::Record {
                price: None,
                offline: false
            }),
            Just(AuditEvent::TenantPut),
            id().prop_map(|l| AuditEvent::LimitDelete(LimitId::new(l).unwrap())),
            Just(AuditEvent::Freeze),
            Just(AuditEvent::TripReset),
        ]
    }

    fn sample(event: AuditEvent) -> AuditRecord {
        let mut record = AuditRecord {
            seq: 7,
            at_ms: 1_714_564_800_123,
            tenant: Some(TenantId::new("acme").unwrap()),
            agent: Some(AgentId::new("bot").unwrap()),
            tool: Some(ToolId::new("llm").unwrap()),
            request_id: Some(RequestId::new("q-1").unwrap()),
            reservation_id: Some(ReservationId(3)),
            event,
            amounts: Amounts {
                tokens: 10,
                cost_micros: 20,
                calls: 1,
            },
            prev_hash: [0xab; 32],
            hash: [0; 32],
        };
        record.hash = record.compute_hash();
        record
    }

    /// The export's schema, as documented on `AuditRecord`: field order, `time` beside
    /// `at_ms`, snake_case event names, hex hashes.
    #[test]
    fn a_record_exports_as_the_documented_json() {
        let record = sample(AuditEvent::Commit {
            overrun: true,
            late: false,
            abandoned: false,
            price: None,
        });
        let json = serde_json::to_string(&record).unwrap();
        let expected = format!(
            concat!(
                r#"{{"seq":7,"at_ms":1714564800123,"time":"2024-05-01T12:00:00.123Z","#,
                r#""tenant":"acme","agent":"bot","tool":"llm","request_id":"q-1","#,
                r#""reservation_id":3,"event":{{"commit":{{"overrun":true,"late":false,"#,
                r#""abandoned":false,"price":null}}}},"#,
                r#""amounts":{{"tokens":10,"cost_micros":20,"calls":1}},"#,
                r#""prev_hash":"{}","hash":"{}"}}"#
            ),
            "ab".repeat(32),
            hex::encode(record.hash)
        );
        assert_eq!(json, expected);
        let back: AuditRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn events_and_what_they_carry_are_snake_case() {
        let cases = [
            (AuditEvent::Grant, r#""grant""#),
            (AuditEvent::TripReset, r#""trip_reset""#),
            (
                AuditEvent::Deny(DenyReason::Frozen { agent: None }),
                r#"{"deny":{"frozen":{"agent":null}}}"#,
            ),
            (
                AuditEvent::LimitPut(LimitSpec {
                    id: LimitId::new("tpm").unwrap(),
                    scope: crate::Scope::ToolPerAgent(ToolId::new("llm").unwrap()),
                    dimension: crate::Dimension::Tokens,
                    kind: crate::LimitKind::Budget {
                        window: crate::Window::Day,
                        amount: 5,
                    },
                    thresholds: Default::default(),
                }),
                concat!(
                    r#"{"limit_put":{"id":"tpm","scope":{"tool_per_agent":"llm"},"#,
                    r#""dimension":"tokens","kind":{"budget":{"window":"day","amount":5}},"#,
                    r#""thresholds":[50,80,95]}}"#
                ),
            ),
            (
                AuditEvent::ThresholdCrossed(crate::ThresholdCrossing {
                    limit_id: LimitId::new("daily").unwrap(),
                    scope: crate::Scope::Tenant,
                    dimension: crate::Dimension::Cost,
                    threshold_percent: 80,
                    used: 800,
                    limit: 1_000,
                    window_start_ms: Some(86_400_000),
                }),
                concat!(
                    r#"{"threshold_crossed":{"limit_id":"daily","scope":"tenant","#,
                    r#""dimension":"cost","threshold_percent":80,"used":800,"limit":1000,"#,
                    r#""window_start_ms":86400000}}"#
                ),
            ),
            (
                AuditEvent::Trip(TripCause::Velocity {
                    spent: 9,
                    baseline: 1,
                }),
                r#"{"trip":{"velocity":{"spent":9,"baseline":1}}}"#,
            ),
            (
                AuditEvent::Trip(TripCause::ShapeVelocity {
                    shape: "5e1f".into(),
                    calls: 61,
                    baseline: 0,
                }),
                r#"{"trip":{"shape_velocity":{"shape":"5e1f","calls":61,"baseline":0}}}"#,
            ),
        ];
        for (event, json) in cases {
            assert_eq!(serde_json::to_string(&event).unwrap(), json);
            assert_eq!(serde_json::from_str::<AuditEvent>(json).unwrap(), event);
            let name = format!("\"{}\"", event.name());
            assert!(json.trim_start_matches('{').starts_with(&name), "{json}");
        }
        // A limit of an export from before thresholds reads with the default ones.
        let older = r#"{"limit_put":{"id":"tpm","scope":"tenant","dimension":"tokens","kind":{"concurrency":{"max":1}}}}"#;
        let Ok(AuditEvent::LimitPut(spec)) = serde_json::from_str::<AuditEvent>(older) else {
            panic!("an older limit_put does not read");
        };
        assert_eq!(spec.thresholds, crate::Thresholds::default());
    }

    /// Exports written before the schema was snake_case and had `time` still verify.
    #[test]
    fn an_older_export_line_still_reads() {
        let record = sample(AuditEvent::Deny(DenyReason::Frozen { agent: None }));
        let mut value = serde_json::to_value(&record).unwrap();
        let fields = value.as_object_mut().unwrap();
        fields.remove("time");
        fields.insert(
            "event".into(),
            serde_json::json!({"Deny": {"Frozen": {"agent": null}}}),
        );
        let back: AuditRecord = serde_json::from_value(value).unwrap();
        assert_eq!(back, record);
        assert_eq!(verify_chain(&[back]).unwrap().hash, record.hash);
    }

    #[test]
    fn an_edited_time_does_not_read() {
        let record = sample(AuditEvent::Grant);
        let json = serde_json::to_string(&record)
            .unwrap()
            .replace("12:00:00.123Z", "13:00:00.123Z");
        let error = serde_json::from_str::<AuditRecord>(&json).unwrap_err();
        assert!(error.to_string().contains("is not at_ms"), "{error}");
    }

    #[test]
    fn time_is_rfc3339_utc_up_to_the_year_9999() {
        assert_eq!(rfc3339_utc(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_utc(253_402_300_799_999).unwrap(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(rfc3339_utc(253_402_300_800_000), None);
        assert_eq!(rfc3339_utc(u64::MAX), None);
        // Null in JSON, and still read back.
        let mut record = sample(AuditEvent::Release);
        record.at_ms = u64::MAX;
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""time":null"#), "{json}");
        assert_eq!(serde_json::from_str::<AuditRecord>(&json).unwrap(), record);
    }

    /// Binary formats carry no `time` text and read back what they wrote.
    #[test]
    fn a_record_round_trips_through_postcard() {
        let record = sample(AuditEvent::Expire { charged: true });
        let bytes = postcard::to_allocvec(&record).unwrap();
        assert_eq!(postcard::from_bytes::<AuditRecord>(&bytes).unwrap(), record);
    }

    proptest! {
        /// The hand-written encoding of a hashed body is postcard's, byte for byte.
        #[test]
        fn bodies_are_postcards(
            seq in any::<u64>(),
            at_ms in any::<u64>(),
            ids in (
                proptest::option::of(id()),
                proptest::option::of(id()),
                proptest::option::of(id()),
                proptest::option::of(id()),
            ),
            reservation_id in proptest::option::of(any::<u64>()),
            event in event(),
            amounts in (any::<u64>(), any::<u64>(), any::<u64>()),
            prev_hash in any::<[u8; 32]>(),
        ) {
            let tenant = ids.0.map(|t| TenantId::new(t).unwrap());
            let agent = ids.1.map(|a| AgentId::new(a).unwrap());
            let tool = ids.2.map(|t| ToolId::new(t).unwrap());
            let request_id = ids.3.map(|r| RequestId::new(r).unwrap());
            let amounts = Amounts {
                tokens: amounts.0,
                cost_micros: amounts.1,
                calls: amounts.2,
            };
            let body = HashedBody {
                seq,
                at_ms,
                tenant: tenant.as_ref(),
                agent: agent.as_ref(),
                tool: tool.as_ref(),
                request_id: request_id.as_ref(),
                reservation_id: reservation_id.map(ReservationId),
                event: &event,
                amounts: &amounts,
                prev_hash: &prev_hash,
            };
            let mut stack = [0u8; encode::HOT_BYTES];
            let mut spill = vec![7];
            let bytes = body_bytes(&mut stack, &mut spill, &body);
            prop_assert_eq!(bytes, &postcard::to_allocvec(&body).unwrap()[..]);
        }

        /// The binary form handed to the store is postcard's encoding of the record, and
        /// its ids and link read back from it.
        #[test]
        fn encoded_records_are_postcards_of_records(
            facts in proptest::collection::vec(
                (proptest::option::of(id()), proptest::option::of(id()), event(), any::<u64>()),
                1..24,
            ),
            start_ms in any::<u64>(),
            after in 0u64..24,
        ) {
            let request_id = RequestId::new("r").unwrap();
            let mut log = AuditLog::default();
            for (i, (tenant, agent, event, tokens)) in facts.iter().enumerate() {
                let tenant = tenant.clone().map(|t| TenantId::new(t).unwrap());
                let agent = agent.clone().map(|a| AgentId::new(a).unwrap());
                let fact = Fact {
                    tenant: tenant.as_ref(),
                    agent: agent.as_ref(),
                    tool: None,
                    request_id: Some(&request_id),
                    reservation_id: Some(ReservationId(i as u64)),
                    event: event.clone(),
                    amounts: Amounts { tokens: *tokens, cost_micros: 1, calls: 1 },
                };
                log.append(start_ms.saturating_add(i as u64), fact);
            }
            let mut batch = AuditBatch::default();
            log.encode_after(after, &mut batch);
            let records = log.query(&AuditFilter { after_seq: Some(after), ..Default::default() });
            prop_assert_eq!(batch.len(), records.len());
            for (encoded, record) in batch.iter().zip(&records) {
                prop_assert_eq!(encoded.bytes, &postcard::to_allocvec(record).unwrap()[..]);
                prop_assert_eq!((encoded.seq, encoded.at_ms), (record.seq, record.at_ms));
                let ids = (record.tenant.as_ref().map(|t| t.as_str()), record.agent.as_ref().map(|a| a.as_str()));
                prop_assert_eq!(encoded.ids(), Some(ids));
                prop_assert_eq!(encoded.prev_hash(), Some(record.prev_hash));
                prop_assert_eq!(&encoded.decode().unwrap(), record);
            }
        }
    }
}
