//! Exactly once: the first answer to each (tenant, request id), for retries.
//!
//! A retry with the same payload gets the first answer back and changes nothing (no audit
//! record either); the same id with another payload is `RequestIdReused`. Answers live in
//! one ring in the order they were given (fixed-size entries, with their request ids and
//! encoded outcomes back to back in one byte ring) and one hash index over all tenants, so
//! remembering is sequential pushes plus one index insert, and forgetting is a sequential
//! pop: no allocation per answer, and forgetting the oldest never touches a cold tenant or
//! a random slot of the index. The index keeps the slots of forgotten answers until it is
//! full (they can never match: see `Answers::index`) and then drops them all in one
//! sequential sweep.
//!
//! Nothing is forgotten before its window ends: a tenant whose answers reach its quota
//! (`TenantQuotas::answers`) has its reserves and records refused until its oldest answers
//! age out, and at the ledger-wide bound new requests are refused rather than another
//! tenant's answers evicted. A retry of a remembered request is answered either way.

use std::hash::BuildHasher;

use serde::de::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use xxhash_rust::xxh3::xxh3_128;

use super::encode;
use super::state::RingBytes;
use super::{Bound, Command, Ledger, Outcome, Rejection, RequestId, ID_BYTES_MAX};
use tollgate_cacheline::Ring;
use tollgate_cacheline::SlotTable;

/// How long an answer is remembered: 10 minutes. It must cover a client's retries across a
/// leader change (election timeouts are seconds) with a wide margin; a retry after that is
/// a new request.
pub const DEDUP_WINDOW_MS: u64 = 600_000;
/// Most answers remembered over all tenants (~150 bytes each with their index: ~300 MB at
/// most). At it every new request is refused (`Bound::Answers`); no answer is forgotten
/// before its window ends.
pub const DEDUP_ENTRIES_MAX: usize = 2_000_000;
/// Answers kept for commits, releases and admin commands: reserves and records are refused
/// once `DEDUP_ENTRIES_MAX - DEDUP_ENTRIES_RESERVED` are remembered, so that work already
/// admitted can still end and an operator can still freeze a tenant.
pub const DEDUP_ENTRIES_RESERVED: usize = 100_000;
/// Longest encoded outcome remembered. Outcomes hold a few ids (each at most
/// `ID_BYTES_MAX`) and integers, so real ones are far below it; a longer one is not
/// remembered (a retry would then be executed again, which a bound violation must not
/// silently turn into a wrong answer).
const OUTCOME_BYTES_MAX: usize = 4_096;

/// The index is never shrunk below room for this many answers.
const INDEX_ENTRIES_MIN: usize = 1_024;

/// xxh3-128 of the command's postcard encoding (deterministic and endian-independent),
/// encoded on the stack (or, for the commands postcard encodes, into `spill`, reused so no
/// allocation once it has grown) and hashed at once.
pub fn payload_hash(spill: &mut Vec<u8>, cmd: &Command) -> u128 {
    let mut stack = [0u8; encode::HOT_BYTES];
    xxh3_128(encode::bytes_of(
        &mut stack,
        spill,
        &[],
        cmd,
        encode::command,
    ))
}

/// (tenant, request id) with its seeded hash in the index: hashed once per command, for
/// the lookup and then the insert.
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    tenant: u32,
    request_id: &'a [u8],
    hash: u32,
}

/// One remembered answer. Its request id and then its encoded outcome are in
/// `Answers::bytes`, starting at `bytes_at`.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    /// xxh3-128 of the command's postcard bytes: a retry must carry the same payload.
    pub payload: u128,
    pub at_ms: u64,
    /// Where the first answer was given (the Raft log index), returned with every retry.
    pub position: u64,
    /// Where its bytes start, counted from the first byte this ring ever held.
    bytes_at: u64,
    /// Index of the tenant in `Ledger::tenants`.
    pub tenant: u32,
    request_id_len: u16,
    outcome_len: u16,
}

/// The remembered answers, oldest first, with an index by (tenant, request id).
#[derive(Clone, Default)]
pub struct Answers {
    entries: Ring<Answer>,
    /// Request ids and encoded outcomes of `entries`, in the same order.
    bytes: Ring<u8>,
    /// Answers and bytes forgotten from the front so far: the first entry's sequence
    /// number and the first byte's offset. Local bookkeeping, never serialized.
    entries_forgotten: u64,
    bytes_forgotten: u64,
    /// The sequence number of every entry, truncated to 32 bits, under a seeded hash of
    /// (tenant, request id) (`key_hash`), kept in the slot: 8 bytes a slot, so the index
    /// of a full window stays small in the cache and grows without reading an entry. Its
    /// iteration order is never used. It may also hold the numbers of forgotten entries
    /// (stale slots): `get_short` finds no entry for them, since they lie below
    /// `entries_forgotten` by less than the index's capacity, far less than 2^32.
    /// `make_room` drops them once the table is half full.
    index: SlotTable,
    seed: foldhash::fast::RandomState,
    /// Where a request id and an outcome that postcard encodes (a denial) are put together
    /// before they are copied into `bytes` (the others are encoded on the stack).
    scratch: Vec<u8>,
    /// How many answers each tenant has, by tenant index: dense and small (4 bytes a
    /// tenant), so counting a forgotten answer does not touch its cold tenant. Derived.
    counts: Vec<u32>,
}

impl Answers {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// When the oldest answer was given.
    pub fn oldest_at_ms(&self) -> Option<u64> {
        self.entries.front().map(|a| a.at_ms)
    }

    fn key_hash(&self, tenant: u32, request_id: &[u8]) -> u32 {
        self.seed.hash_one((tenant, request_id)) as u32
    }

    /// The key `find` and `push` take.
    pub fn key<'a>(&self, tenant: u32, request_id: &'a [u8]) -> Key<'a> {
        Key {
            tenant,
            request_id,
            hash: self.key_hash(tenant, request_id),
        }
    }

    /// The byte range of the answer's request id and of its outcome in `bytes`.
    fn ranges(&self, answer: &Answer) -> Option<(usize, usize, usize)> {
        let start = usize::try_from(answer.bytes_at.checked_sub(self.bytes_forgotten)?).ok()?;
        let middle = start.checked_add(usize::from(answer.request_id_len))?;
        let end = middle.checked_add(usize::from(answer.outcome_len))?;
        (end <= self.bytes.len()).then_some((start, middle, end))
    }

    fn request_id_is(&self, answer: &Answer, request_id: &[u8]) -> bool {
        self.ranges(answer).is_some_and(|(start, middle, _)| {
            middle - start == request_id.len()
                && self.bytes.range(start..middle).eq(request_id.iter())
        })
    }

    /// The answer remembered for (tenant, request id).
    pub fn find(&self, key: &Key<'_>) -> Option<&Answer> {
        let short = self.index.find(key.hash, |short| {
            self.get_short(short)
                .is_some_and(|a| a.tenant == key.tenant && self.request_id_is(a, key.request_id))
        })?;
        self.get_short(short)
    }

    /// Starts loading the index slot that `find` and `push` for (tenant, request id) read.
    pub fn prefetch(&self, tenant: u32, request_id: &[u8]) {
        self.index.prefetch(self.key_hash(tenant, request_id));
    }

    /// The entry whose sequence number truncates to `short`.
    fn get_short(&self, short: u32) -> Option<&Answer> {
        self.entries
            .get(short.wrapping_sub(self.entries_forgotten as u32) as usize)
    }

    /// The outcome of a remembered answer, decoded (retries only).
    pub fn outcome(&self, answer: &Answer) -> Option<Outcome> {
        let (_, middle, end) = self.ranges(answer)?;
        let bytes: Vec<u8> = self.bytes.range(middle..end).copied().collect();
        postcard::from_bytes(&bytes).ok()
    }

    fn request_id(&self, answer: &Answer) -> Option<Vec<u8>> {
        let (start, middle, _) = self.ranges(answer)?;
        Some(self.bytes.range(start..middle).copied().collect())
    }

    /// How many answers tenant `tenant` has.
    pub fn count_of(&self, tenant: u32) -> u32 {
        self.counts.get(tenant as usize).copied().unwrap_or(0)
    }

    /// Remembers an answer not remembered yet. The caller checked for room
    /// (`Ledger::answer_room`); at `DEDUP_ENTRIES_MAX` nothing is remembered.
    pub fn push(
        &mut self,
        key: &Key<'_>,
        payload: u128,
        outcome: &Outcome,
        at_ms: u64,
        position: u64,
    ) {
        if self.entries.len() >= DEDUP_ENTRIES_MAX || key.tenant as usize >= crate::TENANTS_MAX {
            debug_assert!(false, "an answer beyond DEDUP_ENTRIES_MAX or TENANTS_MAX");
            return;
        }
        debug_assert!(self.find(key).is_none(), "remembered twice");
        let Key {
            tenant,
            request_id,
            hash: key_hash,
        } = *key;
        debug_assert!(self.entries.back().is_none_or(|a| a.at_ms <= at_ms));
        // The request id and the encoded outcome, as they go into `bytes`.
        let mut stack = [0u8; encode::HOT_BYTES];
        let mut spill = std::mem::take(&mut self.scratch);
        let bytes = encode::bytes_of(&mut stack, &mut spill, request_id, outcome, encode::outcome);
        let lengths = (
            u16::try_from(request_id.len()).ok(),
            bytes
                .len()
                .checked_sub(request_id.len())
                .and_then(|len| u16::try_from(len).ok()),
        );
        let (Some(request_id_len), Some(outcome_len)) = lengths else {
            debug_assert!(false, "request id or outcome too long to remember");
            self.scratch = spill;
            return;
        };
        if usize::from(request_id_len) > ID_BYTES_MAX
            || usize::from(outcome_len) > OUTCOME_BYTES_MAX
        {
            debug_assert!(false, "request id or outcome too long to remember");
            self.scratch = spill;
            return;
        }
        self.make_room();
        let bytes_at = self.bytes_forgotten.saturating_add(self.bytes.len() as u64);
        self.bytes.extend_from_slice(bytes);
        self.scratch = spill;
        let seq = self
            .entries_forgotten
            .saturating_add(self.entries.len() as u64);
        self.index.insert(key_hash, seq as u32);
        let t = tenant as usize;
        if self.counts.len() <= t {
            self.counts.resize(t + 1, 0);
        }
        self.counts[t] = self.counts[t].saturating_add(1);
        self.entries.push_back(Answer {
            payload,
            at_ms,
            position,
            bytes_at,
            tenant,
            request_id_len,
            outcome_len,
        });
    }

    /// Forgets the oldest answer. Its slot in the index goes stale and is dropped by the
    /// next sweep (`make_room`): probing for it here would cost a cache miss per answer.
    pub fn pop_front(&mut self) {
        let Some(oldest) = self.entries.pop_front() else {
            return;
        };
        if let Some(count) = self.counts.get_mut(oldest.tenant as usize) {
            *count = count.saturating_sub(1);
        }
        self.entries_forgotten = self.entries_forgotten.saturating_add(1);
        let len = usize::from(oldest.request_id_len) + usize::from(oldest.outcome_len);
        let len = len.min(self.bytes.len());
        self.bytes.drop_front(len);
        self.bytes_forgotten = self.bytes_forgotten.saturating_add(len as u64);
    }

    /// Before an insert: once the index is half full (as full as it may be), drops its
    /// stale slots in one sweep over the table, into a table with room for at least four
    /// times the live answers. Amortized O(1) per answer: the next sweep follows at least
    /// a quarter of the table's size in inserts.
    fn make_room(&mut self) {
        if self.index.len().saturating_add(1).saturating_mul(2) > self.index.capacity() {
            let room = self.entries.len().saturating_add(1).saturating_mul(4);
            self.rebuild_index(room.max(self.index.capacity()));
        }
    }

    /// Rebuilds the index with the slots of live entries only, in at least `capacity`.
    fn rebuild_index(&mut self, capacity: usize) {
        let forgotten = self.entries_forgotten as u32;
        let live = self.entries.len();
        self.index.rebuild(capacity, |short| {
            (short.wrapping_sub(forgotten) as usize) < live
        });
    }

    /// Shrinks the index once it is mostly empty (after a burst of answers has been
    /// forgotten), so the index of the answers in the window stays small and warm in the
    /// cache. Amortized O(1): it shrinks only once the entries fell below an eighth of its
    /// size, and leaves room for four times the entries.
    fn shrink_if_sparse(&mut self) {
        let len = self.entries.len().max(INDEX_ENTRIES_MIN);
        if self.index.capacity() / 8 > len {
            self.rebuild_index(len.saturating_mul(4));
        }
    }

    /// Structural checks (invariant 4): the index and the ring agree, every answer names
    /// an existing tenant, decodes, and answers are in time order.
    pub fn check(&self, tenants: usize) -> Result<(), String> {
        if self.entries.len() > DEDUP_ENTRIES_MAX {
            return Err("more than DEDUP_ENTRIES_MAX answers".into());
        }
        // Every entry is found through the index below; the rest of it is stale slots.
        if self.index.len() < self.entries.len() {
            return Err("the answer index holds fewer slots than there are answers".into());
        }
        let mut bytes_at = self.bytes_forgotten;
        let mut previous_at_ms = 0;
        for (seq, answer) in (self.entries_forgotten..).zip(self.entries.iter()) {
            if answer.bytes_at != bytes_at {
                return Err(format!("answer #{seq}: its bytes are not where expected"));
            }
            bytes_at = bytes_at
                .saturating_add(u64::from(answer.request_id_len))
                .saturating_add(u64::from(answer.outcome_len));
            if answer.tenant as usize >= tenants {
                return Err(format!(
                    "answer #{seq} of unknown tenant #{}",
                    answer.tenant
                ));
            }
            if answer.at_ms < previous_at_ms {
                return Err("answers out of time order".into());
            }
            previous_at_ms = answer.at_ms;
            let request_id = self
                .request_id(answer)
                .and_then(|id| String::from_utf8(id).ok())
                .ok_or_else(|| format!("answer #{seq}: its request id is not readable"))?;
            if self
                .find(&self.key(answer.tenant, request_id.as_bytes()))
                .map(|a| a.bytes_at)
                != Some(answer.bytes_at)
            {
                return Err(format!(
                    "answer to request {request_id} missing from the index"
                ));
            }
            if self.outcome(answer).is_none() {
                return Err(format!("answer to request {request_id} does not decode"));
            }
        }
        if bytes_at != self.bytes_forgotten.saturating_add(self.bytes.len() as u64) {
            return Err("answer bytes and answers differ in size".into());
        }
        let mut counts = vec![0u32; self.counts.len()];
        for answer in self.entries.iter() {
            if let Some(count) = counts.get_mut(answer.tenant as usize) {
                *count += 1;
            }
        }
        if counts != self.counts {
            return Err("answers counted per tenant differ from the answers".into());
        }
        Ok(())
    }
}

/// Equal when they remember the same answers in the same order (bookkeeping aside).
impl PartialEq for Answers {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(other.entries.iter()).all(|(a, b)| {
                a.payload == b.payload
                    && a.at_ms == b.at_ms
                    && a.position == b.position
                    && a.tenant == b.tenant
                    && a.request_id_len == b.request_id_len
                    && a.outcome_len == b.outcome_len
                    && match (self.ranges(a), other.ranges(b)) {
                        (Some((sa, _, ea)), Some((sb, _, eb))) => {
                            self.bytes.range(sa..ea).eq(other.bytes.range(sb..eb))
                        }
                        _ => false,
                    }
            })
    }
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("len", &self.entries.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// One answer as serialized: no offsets, hashes or sequence numbers, which are local.
#[derive(Serialize)]
struct AnswerOut<'a> {
    at_ms: u64,
    tenant: u32,
    request_id: RingBytes<'a>,
    payload: u128,
    position: u64,
    outcome: RingBytes<'a>,
}

#[derive(Deserialize)]
struct AnswerIn {
    at_ms: u64,
    tenant: u32,
    request_id: Vec<u8>,
    payload: u128,
    position: u64,
    outcome: Vec<u8>,
}

/// Serialized as the answers in the order given: deterministic bytes.
impl Serialize for Answers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.entries.iter().map(|a| {
            let (start, middle, end) = self.ranges(a).unwrap_or_default();
            AnswerOut {
                at_ms: a.at_ms,
                tenant: a.tenant,
                request_id: RingBytes(&self.bytes, start..middle),
                payload: a.payload,
                position: a.position,
                outcome: RingBytes(&self.bytes, middle..end),
            }
        }))
    }
}

/// Rebuilds the index; a repeated request id, a bad id or an outcome that does not decode
/// is a decoding error.
impl<'de> Deserialize<'de> for Answers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire: Vec<AnswerIn> = Vec::deserialize(d)?;
        if wire.len() > DEDUP_ENTRIES_MAX {
            return Err(D::Error::custom("more than DEDUP_ENTRIES_MAX answers"));
        }
        let mut answers = Answers::default();
        answers.index.reserve(wire.len());
        for a in wire {
            if a.tenant as usize >= crate::TENANTS_MAX {
                return Err(D::Error::custom("an answer of a tenant beyond TENANTS_MAX"));
            }
            let request_id = String::from_utf8(a.request_id)
                .map_err(|_| D::Error::custom("a request id is not UTF-8"))
                .and_then(|id| RequestId::new(id).map_err(D::Error::custom))?;
            let outcome: Outcome = postcard::from_bytes(&a.outcome)
                .map_err(|e| D::Error::custom(format!("a remembered outcome: {e}")))?;
            let key = answers.key(a.tenant, request_id.as_bytes());
            if answers.find(&key).is_some() {
                return Err(D::Error::custom(format!(
                    "request {request_id} remembered twice"
                )));
            }
            if answers.entries.back().is_some_and(|b| b.at_ms > a.at_ms) {
                return Err(D::Error::custom("answers out of time order"));
            }
            answers.push(&key, a.payload, &outcome, a.at_ms, a.position);
        }
        Ok(answers)
    }
}

impl Ledger {
    /// The remembered answer for a retry, `RequestIdReused` for another payload, or None
    /// for a new request.
    pub(super) fn remembered(
        &self,
        key: &Key<'_>,
        request_id: &RequestId,
        payload: u128,
    ) -> Option<(Outcome, u64)> {
        let t = self.tenants.get(key.tenant)?;
        let entry = self.answers.find(key)?;
        let outcome = if entry.payload != payload {
            Outcome::Rejected(Rejection::RequestIdReused {
                tenant: t.id.clone(),
                request_id: request_id.clone(),
                first_at_ms: entry.at_ms,
            })
        } else {
            // Outcomes are checked to decode on restore and were encoded by this code, so
            // the fallback is unreachable; it still answers the same on every replica.
            self.answers.outcome(entry).unwrap_or_else(|| {
                Outcome::Rejected(Rejection::AnswerUnreadable {
                    request_id: request_id.clone(),
                })
            })
        };
        Some((outcome, entry.position))
    }

    /// Whether a new request (not a retry) may have its answer remembered: None if so, else
    /// the refusal. Reserves, records and lease asks start new work: they are refused at the tenant's
    /// quota and once all but `DEDUP_ENTRIES_RESERVED` answers are taken. Every other
    /// command is refused only at `DEDUP_ENTRIES_MAX`. Nothing is evicted for room.
    pub(super) fn answer_room(&self, cmd: &Command, tenant: Option<u32>) -> Option<Outcome> {
        let tenant_id = cmd.tenant()?;
        let starts_work = matches!(
            cmd,
            Command::Reserve { .. } | Command::Record { .. } | Command::Lease { .. }
        );
        let total = self.answers.len();
        let entries_max = self.answers_max();
        let global_max = if starts_work {
            entries_max.saturating_sub(entries_max / (DEDUP_ENTRIES_MAX / DEDUP_ENTRIES_RESERVED))
        } else {
            entries_max
        };
        if total >= global_max {
            return Some(Outcome::Rejected(Rejection::quota_reached(
                Bound::Answers,
                global_max as u64,
                tenant_id,
            )));
        }
        let t = tenant?;
        let quota = self.tenants.get(t)?.policy.quotas.answers;
        if starts_work && u64::from(self.answers.count_of(t)) >= quota {
            return Some(Outcome::Rejected(Rejection::quota_reached(
                Bound::AnswersPerTenant,
                quota,
                tenant_id,
            )));
        }
        None
    }

    /// `DEDUP_ENTRIES_MAX`, or in tests the lower bound a test set.
    fn answers_max(&self) -> usize {
        #[cfg(test)]
        if let Some(max) = self.test_knobs.answers_max {
            return max.min(DEDUP_ENTRIES_MAX);
        }
        DEDUP_ENTRIES_MAX
    }

    /// Tests only: lowers `DEDUP_ENTRIES_MAX` for this ledger.
    #[cfg(test)]
    pub(super) fn set_answers_max(&mut self, max: usize) {
        self.test_knobs.answers_max = Some(max);
    }

    pub(super) fn remember(
        &mut self,
        key: &Key<'_>,
        payload: u128,
        outcome: &Outcome,
        now_ms: u64,
        position: u64,
    ) {
        self.answers.push(key, payload, outcome, now_ms, position);
    }

    /// Forgets answers given `DEDUP_WINDOW_MS` or more before `now_ms`.
    pub(super) fn forget_requests_before(&mut self, now_ms: u64) {
        let mut forgotten = false;
        while let Some(at_ms) = self.answers.oldest_at_ms() {
            if at_ms.saturating_add(DEDUP_WINDOW_MS) > now_ms {
                break;
            }
            self.answers.pop_front();
            forgotten = true;
        }
        if forgotten {
            self.answers.shrink_if_sparse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_for(seq: u64) -> Outcome {
        Outcome::Granted {
            reservation_id: super::super::ReservationId(seq),
            expires_at_ms: seq,
            tightest: None,
        }
    }

    /// A window of answers sliding over many times its length: the index sweeps its stale
    /// slots many times over, yet every live answer is found with its outcome, no forgotten
    /// one is, and the index stays within a few times the window.
    #[test]
    fn a_sliding_window_finds_every_live_answer_and_no_forgotten_one() {
        const WINDOW: u64 = 1_000;
        let mut answers = Answers::default();
        let id = |seq: u64| format!("req-{seq}");
        for seq in 0..20 * WINDOW {
            let request_id = id(seq);
            let key = answers.key(0, request_id.as_bytes());
            answers.push(&key, 0, &answer_for(seq), seq, seq);
            while answers.oldest_at_ms().is_some_and(|at| at + WINDOW <= seq) {
                answers.pop_front();
            }
            assert!(answers.index.len() <= 4 * answers.len() + INDEX_ENTRIES_MIN);
            if seq % 997 == 0 {
                answers.check(1).unwrap();
                let oldest = seq + 1 - WINDOW.min(seq + 1);
                for live in oldest..=seq {
                    let found = answers.find(&answers.key(0, id(live).as_bytes())).unwrap();
                    assert_eq!(answers.outcome(found), Some(answer_for(live)));
                }
                for forgotten in oldest.saturating_sub(WINDOW)..oldest {
                    assert!(answers
                        .find(&answers.key(0, id(forgotten).as_bytes()))
                        .is_none());
                }
            }
        }
    }

    /// Answers too long for the stack buffer (ids of `ID_BYTES_MAX` bytes) and answers
    /// postcard encodes (denials) are remembered and read back like the short ones.
    #[test]
    fn long_and_denied_answers_are_read_back_whole() {
        use crate::{DenyReason, LimitId, Remaining, ReservationId};
        let long_id = "r".repeat(ID_BYTES_MAX);
        let long = Outcome::Granted {
            reservation_id: ReservationId(u64::MAX),
            expires_at_ms: u64::MAX,
            tightest: Some(Remaining {
                limit_id: LimitId::new("l".repeat(ID_BYTES_MAX)).unwrap(),
                dimension: crate::Dimension::Tokens,
                remaining: i64::MIN,
            }),
        };
        let long_len = long_id.len() + postcard::to_allocvec(&long).unwrap().len();
        assert!(long_len > encode::HOT_BYTES, "the long answer must not fit");
        let denied = Outcome::Denied(DenyReason::Frozen { agent: None });
        let mut answers = Answers::default();
        for (at, (request_id, outcome)) in [
            (long_id.as_str(), &long),
            ("short", &denied),
            ("short-granted", &answer_for(7)),
        ]
        .into_iter()
        .enumerate()
        {
            let key = answers.key(3, request_id.as_bytes());
            answers.push(&key, 9, outcome, at as u64, at as u64);
        }
        answers.check(4).unwrap();
        for (request_id, outcome) in [
            (long_id.as_str(), long),
            ("short", denied),
            ("short-granted", answer_for(7)),
        ] {
            let found = answers
                .find(&answers.key(3, request_id.as_bytes()))
                .unwrap();
            assert_eq!(answers.outcome(found), Some(outcome), "{request_id}");
        }
    }
}
