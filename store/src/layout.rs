//! What is where on disk: the keys of records, indexes and answers, and the catalog of
//! buckets kept in the `meta` keyspace. Decoding never trusts the bytes: anything that does
//! not parse is `StoreError::Corrupt`.

use serde::{Deserialize, Serialize};
use tollgate_ledger::{AuditRecord, RequestId, TenantId};

use crate::{Answer, AnswerRow, StoreError};

/// Key tags inside a record bucket.
pub(crate) const TAG_RECORD: u8 = 0;
pub(crate) const TAG_TENANT: u8 = 1;
pub(crate) const TAG_AGENT: u8 = 2;

/// The one key of the `meta` keyspace: the whole catalog, rewritten in every batch.
pub(crate) const META_KEY: &[u8] = b"catalog";
/// Bumped when the layout changes; a store of another format is refused at open.
pub(crate) const FORMAT: u32 = 1;

/// Most missing ranges remembered: each is a hole left by a restart or a lost write, and
/// a trail with this many holes needs an operator, not more bookkeeping.
pub const MISSING_RANGES_MAX: usize = 1_024;

/// One bucket: a keyspace holding a contiguous run of records (with their indexes) or of
/// answers, dropped whole when retention lets it go, so purging frees its files at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BucketMeta {
    pub id: u64,
    /// Records only (answers: 0).
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
    /// Key and value bytes written, before compression: the bucket's size until its
    /// tables are on disk.
    pub raw_bytes: u64,
    /// Records (or answers) stored.
    pub count: u64,
    /// No longer written to (except by a backfill); its memtable was flushed.
    pub sealed: bool,
}

/// Everything the store must remember besides the buckets' contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub format: u32,
    pub next_bucket_id: u64,
    /// Record buckets, ascending seq.
    pub records: Vec<BucketMeta>,
    /// Answer buckets, oldest first.
    pub answers: Vec<BucketMeta>,
    /// Inclusive seq ranges never written, ascending and disjoint.
    pub missing: Vec<(u64, u64)>,
    /// Highest seq ever written (0: none).
    pub last_seq: u64,
    /// Records up to this seq were purged on purpose (0: none).
    pub purged_to: u64,
    /// prev_hash of the oldest kept record (the hash of the last purged one when none is kept).
    pub anchor: [u8; 32],
    pub horizon_in_force_ms: u64,
    pub retention_in_force_ms: u64,
    /// The newest `last_at_ms` of a purged bucket, of records and of answers (None: none purged).
    pub records_purged_to_ms: Option<u64>,
    pub answers_purged_to_ms: Option<u64>,
}

impl Meta {
    pub fn decode(bytes: &[u8]) -> Result<Meta, StoreError> {
        let meta: Meta = postcard::from_bytes(bytes)
            .map_err(|e| StoreError::Corrupt(format!("store catalog: {e}")))?;
        if meta.format != FORMAT {
            return Err(StoreError::Corrupt(format!(
                "store format {} (this build reads {FORMAT})",
                meta.format
            )));
        }
        Ok(meta)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain integers and vectors into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

pub(crate) fn bucket_name(records: bool, id: u64) -> String {
    format!("{}{id:016x}", if records { "r" } else { "a" })
}

pub(crate) fn record_key(seq: u64) -> [u8; 9] {
    let mut key = [TAG_RECORD; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `tag | len | id` for each id: a prefix no other id's can extend.
fn push_ids(key: &mut Vec<u8>, tag: u8, ids: &[&[u8]]) {
    key.push(tag);
    for id in ids {
        // Ids are at most ID_BYTES_MAX (128) bytes: the length fits a byte.
        key.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        key.extend_from_slice(id);
    }
}

pub(crate) fn tenant_prefix(tenant: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + tenant.len() + 16);
    push_ids(&mut key, TAG_TENANT, &[tenant]);
    key
}

pub(crate) fn agent_prefix(tenant: &[u8], agent: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + tenant.len() + agent.len() + 16);
    push_ids(&mut key, TAG_AGENT, &[tenant, agent]);
    key
}

/// `prefix | at_ms | seq`, big-endian so keys sort by time then seq.
pub(crate) fn index_key(prefix: &[u8], at_ms: u64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 16);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `index_key` of the ids' prefix, into `out` (cleared first).
pub(crate) fn put_index_key(out: &mut Vec<u8>, tag: u8, ids: &[&[u8]], at_ms: u64, seq: u64) {
    out.clear();
    push_ids(out, tag, ids);
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

/// The seq at the end of an index key.
pub(crate) fn index_seq(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("an index key is too short".into()))
}

pub(crate) fn decode_record(seq: u64, bytes: &[u8]) -> Result<AuditRecord, StoreError> {
    let record: AuditRecord = postcard::from_bytes(bytes)
        .map_err(|e| StoreError::Corrupt(format!("audit record seq {seq}: {e}")))?;
    if record.seq != seq {
        return Err(StoreError::Corrupt(format!(
            "audit record stored under seq {seq} says seq {}",
            record.seq
        )));
    }
    Ok(record)
}

pub(crate) fn answer_key(tenant: &TenantId, request_id: &RequestId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + tenant.as_bytes().len() + request_id.as_bytes().len());
    put_answer_key(&mut key, tenant, request_id);
    key
}

/// Appends the answer key of (tenant, request id) to `out`.
pub(crate) fn put_answer_key(out: &mut Vec<u8>, tenant: &TenantId, request_id: &RequestId) {
    out.push(u8::try_from(tenant.as_bytes().len()).unwrap_or(u8::MAX));
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(request_id.as_bytes());
}

/// An answer with its outcome borrowed (already encoded), as it is stored.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AnswerRef<'a> {
    pub payload: u128,
    pub at_ms: u64,
    pub position: u64,
    pub outcome: &'a [u8],
}

/// Appends the encoded answer to `out`.
pub(crate) fn encode_answer_into(out: &mut Vec<u8>, answer: &AnswerRef<'_>) {
    // Serializing plain data into a Vec has no failure mode but allocation.
    let _ = postcard::to_io(answer, out);
}

pub(crate) fn decode_answer(bytes: &[u8]) -> Result<Answer, StoreError> {
    let v: AnswerRef<'_> = postcard::from_bytes(bytes)
        .map_err(|e| StoreError::Corrupt(format!("remembered answer: {e}")))?;
    Ok(Answer {
        payload: v.payload,
        at_ms: v.at_ms,
        position: v.position,
        outcome: v.outcome.to_vec(),
    })
}

pub(crate) fn decode_answer_row(key: &[u8], value: &[u8]) -> Result<AnswerRow, StoreError> {
    let corrupt = || StoreError::Corrupt("a remembered answer's key does not parse".into());
    let (&len, rest) = key.split_first().ok_or_else(corrupt)?;
    let (tenant, request_id) = rest
        .split_at_checked(usize::from(len))
        .ok_or_else(corrupt)?;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt());
    Ok(AnswerRow {
        tenant: TenantId::new(text(tenant)?).map_err(|_| corrupt())?,
        request_id: RequestId::new(text(request_id)?).map_err(|_| corrupt())?,
        answer: decode_answer(value)?,
    })
}

/// Adds `from..=to` to ascending disjoint ranges, merging neighbours.
pub(crate) fn add_range(ranges: &mut Vec<(u64, u64)>, from: u64, to: u64) {
    ranges.push((from, to));
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    *ranges = merged;
}

/// Removes `from..=to` from ascending disjoint ranges, splitting one if needed.
pub(crate) fn remove_range(ranges: &mut Vec<(u64, u64)>, from: u64, to: u64) {
    let mut kept = Vec::with_capacity(ranges.len() + 1);
    for &(a, b) in ranges.iter() {
        if b < from || a > to {
            kept.push((a, b));
            continue;
        }
        if a < from {
            kept.push((a, from - 1));
        }
        if b > to {
            kept.push((to + 1, b));
        }
    }
    *ranges = kept;
}
