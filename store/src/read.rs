//! Reading: remembered answers, audit queries (from the seq, tenant and agent indexes),
//! verification of the kept chain, pages of answers for a peer, and the trail's state.
//! Readers work on the catalog as it was when they started; a bucket purged meanwhile
//! stays readable until they let go of it.

use std::ops::Bound;

use tollgate_ledger::{
    AuditError, AuditFilter, AuditRecord, ChainHead, RequestId, TenantId, AUDIT_QUERY_RECORDS_MAX,
    GENESIS_PREV_HASH,
};

use crate::layout::{
    agent_prefix, answer_key, decode_answer, decode_answer_row, decode_record, index_key,
    index_seq, record_key, tenant_prefix, BucketMeta, TAG_RECORD,
};
use crate::{Answer, AnswerRow, Catalog, Inner, StoreError, TrailState, ANSWERS_PAGE_MAX};

/// What a query asks for, with its open ends closed.
#[derive(Clone, Copy)]
struct Bounds {
    lo_seq: u64,
    hi_seq: u64,
    from_ms: u64,
    to_ms: u64,
    limit: usize,
}

impl Bounds {
    fn of(f: &AuditFilter) -> Bounds {
        Bounds {
            lo_seq: f.after_seq.map_or(1, |s| s.saturating_add(1)),
            hi_seq: f.to_seq.unwrap_or(u64::MAX),
            from_ms: f.from_ms.unwrap_or(0),
            to_ms: f.to_ms.unwrap_or(u64::MAX),
            limit: match f.limit {
                0 => AUDIT_QUERY_RECORDS_MAX,
                n => n.min(AUDIT_QUERY_RECORDS_MAX),
            },
        }
    }

    fn admits(&self, f: &AuditFilter, r: &AuditRecord) -> bool {
        (self.lo_seq..=self.hi_seq).contains(&r.seq)
            && (self.from_ms..=self.to_ms).contains(&r.at_ms)
            && (f.tenant.is_none() || r.tenant == f.tenant)
            && (f.agent.is_none() || r.agent == f.agent)
            && (f.tool.is_none() || r.tool == f.tool)
            && f.event.as_ref().is_none_or(|e| e == r.event.name())
    }

    fn overlaps(&self, b: &BucketMeta) -> bool {
        b.last_seq >= self.lo_seq
            && b.first_seq <= self.hi_seq
            && b.last_at_ms >= self.from_ms
            && b.first_at_ms <= self.to_ms
    }
}

/// A bucket's size on disk: its tables once flushed, its raw bytes until then.
pub(crate) fn bucket_bytes(meta: &BucketMeta, ks: &fjall::Keyspace) -> u64 {
    let on_disk = ks.disk_space();
    if meta.sealed && on_disk > 0 {
        on_disk
    } else {
        on_disk.max(meta.raw_bytes)
    }
}

/// The first seq in `lo..=hi` of this bucket whose record is at or after `from_ms`, by
/// binary search (time never runs backwards along the chain), so a query from a time does
/// not read the whole bucket up to it.
fn seek_time(ks: &fjall::Keyspace, lo: u64, hi: u64, from_ms: u64) -> Result<u64, StoreError> {
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // The first stored record at or after `mid` (a bucket may hold a gap).
        let Some(item) = ks.range(record_key(mid)..=record_key(hi)).next() else {
            hi = mid;
            continue;
        };
        let (key, value) = item.into_inner()?;
        let seq = index_seq(&key)?;
        if decode_record(seq, &value)?.at_ms < from_ms {
            lo = seq.saturating_add(1);
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

impl Catalog {
    pub(crate) fn record(&self, seq: u64) -> Result<Option<AuditRecord>, StoreError> {
        let Some(index) = self.bucket_index(seq) else {
            return Ok(None);
        };
        match self.records[index].get(record_key(seq))? {
            Some(bytes) => Ok(Some(decode_record(seq, &bytes)?)),
            None => Ok(None),
        }
    }

    fn scan_seq(
        &self,
        ks: &fjall::Keyspace,
        f: &AuditFilter,
        b: Bounds,
        out: &mut Vec<AuditRecord>,
    ) -> Result<(), StoreError> {
        let start = match b.from_ms {
            0 => b.lo_seq,
            from_ms => seek_time(ks, b.lo_seq, b.hi_seq, from_ms)?,
        };
        if start > b.hi_seq {
            return Ok(());
        }
        for item in ks.range(record_key(start)..=record_key(b.hi_seq)) {
            let (key, value) = item.into_inner()?;
            let record = decode_record(index_seq(&key)?, &value)?;
            if record.at_ms > b.to_ms {
                break;
            }
            if b.admits(f, &record) {
                out.push(record);
                if out.len() >= b.limit {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Scans a (tenant) or (tenant, agent) index from `from_ms`: keys sort by time then
    /// seq, and time never runs backwards along the chain, so seqs ascend too.
    fn scan_index(
        &self,
        ks: &fjall::Keyspace,
        prefix: &[u8],
        f: &AuditFilter,
        b: Bounds,
        out: &mut Vec<AuditRecord>,
    ) -> Result<(), StoreError> {
        let start = index_key(prefix, b.from_ms, 0);
        let end = index_key(prefix, b.to_ms, u64::MAX);
        for item in ks.range(start..=end) {
            let seq = index_seq(&item.key()?)?;
            if seq < b.lo_seq {
                continue;
            }
            if seq > b.hi_seq {
                break;
            }
            let Some(bytes) = ks.get(record_key(seq))? else {
                return Err(StoreError::Corrupt(format!(
                    "an index names audit record seq {seq}, which is not stored"
                )));
            };
            let record = decode_record(seq, &bytes)?;
            if b.admits(f, &record) {
                out.push(record);
                if out.len() >= b.limit {
                    break;
                }
            }
        }
        Ok(())
    }

    /// A missing range the query's records could cross (in seq up to where it stopped,
    /// and in time between the range's stored neighbours) is an error, never a silence.
    fn check_missing(&self, b: Bounds, stopped_at: Option<u64>) -> Result<(), StoreError> {
        let hi_seq = stopped_at.map_or(b.hi_seq, |s| s.min(b.hi_seq));
        for &(from, to) in &self.meta.missing {
            if to < b.lo_seq || from > hi_seq {
                continue;
            }
            let before = match from.checked_sub(1).filter(|s| *s > 0) {
                Some(seq) => self.record(seq)?.map_or(0, |r| r.at_ms),
                None => 0,
            };
            let after = self
                .record(to.saturating_add(1))?
                .map_or(u64::MAX, |r| r.at_ms);
            if after >= b.from_ms && before <= b.to_ms {
                return Err(StoreError::Missing { from, to });
            }
        }
        Ok(())
    }
}

impl Inner {
    pub(crate) fn answer(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        now_ms: u64,
        given_by_ms: u64,
    ) -> Result<Option<Answer>, StoreError> {
        let cat = self.catalog();
        let horizon_ms = cat.meta.horizon_in_force_ms;
        let key = answer_key(tenant, request_id);
        let young = |answer: &Answer| now_ms.saturating_sub(answer.at_ms) < horizon_ms;
        if let Some(answer) = self.pending_answer(&key, given_by_ms)? {
            return Ok(young(&answer).then_some(answer));
        }
        for (meta, ks) in cat.meta.answers.iter().zip(&cat.answers).rev() {
            if now_ms.saturating_sub(meta.last_at_ms) >= horizon_ms {
                break; // this bucket and every older one are past the horizon
            }
            if meta.first_at_ms > given_by_ms {
                continue;
            }
            if let Some(bytes) = ks.get(&key)? {
                let answer = decode_answer(&bytes)?;
                return Ok(young(&answer).then_some(answer));
            }
        }
        Ok(None)
    }

    /// Ingests the held records if a reader of records up to `hi_seq` would need them, so
    /// that it finds every record in the tables. Held records follow every ingested one.
    fn ingest_records_for_readers(&self, hi_seq: u64) -> Result<(), StoreError> {
        if (self.records_held().first_seq()).is_none_or(|first| first > hi_seq) {
            return Ok(());
        }
        self.ingest_held()
    }

    pub(crate) fn query(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        self.ingest_records_for_readers(Bounds::of(f).hi_seq)?;
        let cat = self.catalog();
        let mut b = Bounds::of(f);
        let mut out = Vec::new();
        if b.lo_seq > b.hi_seq || b.from_ms > b.to_ms {
            return Ok(out);
        }
        let prefix = match (&f.tenant, &f.agent) {
            (Some(tenant), Some(agent)) => Some(agent_prefix(tenant.as_bytes(), agent.as_bytes())),
            (Some(tenant), None) => Some(tenant_prefix(tenant.as_bytes())),
            _ => None,
        };
        if let (Some(_), Some(after)) = (&prefix, f.after_seq) {
            // Seek the index to the time of the record paged after, not its beginning.
            if let Some(record) = cat.record(after)? {
                b.from_ms = b.from_ms.max(record.at_ms);
            }
        }
        for (meta, ks) in cat.meta.records.iter().zip(&cat.records) {
            if !b.overlaps(meta) {
                continue;
            }
            match &prefix {
                Some(prefix) => cat.scan_index(ks, prefix, f, b, &mut out)?,
                None => cat.scan_seq(ks, f, b, &mut out)?,
            }
            if out.len() >= b.limit {
                break;
            }
        }
        let stopped_at = (out.len() >= b.limit)
            .then(|| out.last().map(|r| r.seq))
            .flatten();
        cat.check_missing(Bounds::of(f), stopped_at)?;
        Ok(out)
    }

    pub(crate) fn verify(&self) -> Result<ChainHead, StoreError> {
        self.ingest_records_for_readers(u64::MAX)?;
        let cat = self.catalog();
        let meta = &cat.meta;
        let gap = |from: u64, to: u64| match meta.missing.iter().find(|m| m.0 <= to && m.1 >= from)
        {
            Some(&(from, to)) => StoreError::Missing { from, to },
            None => StoreError::Chain(AuditError::SeqGap {
                seq: to.saturating_add(1),
                prev_seq: from.saturating_sub(1),
                expected: from,
            }),
        };
        let mut head = ChainHead {
            seq: meta.purged_to,
            hash: meta.anchor,
        };
        for ks in &cat.records {
            for item in ks.prefix([TAG_RECORD]) {
                let (key, value) = item.into_inner()?;
                let r = decode_record(index_seq(&key)?, &value)?;
                let expected = head.seq.saturating_add(1);
                if r.seq != expected {
                    return Err(gap(expected, r.seq.saturating_sub(1)));
                }
                if r.seq == 1 && r.prev_hash != GENESIS_PREV_HASH {
                    return Err(StoreError::Chain(AuditError::BadGenesis));
                }
                if r.prev_hash != head.hash {
                    let e = AuditError::BrokenLink {
                        seq: r.seq,
                        prev_seq: head.seq,
                    };
                    return Err(StoreError::Chain(e));
                }
                if r.compute_hash() != r.hash {
                    return Err(StoreError::Chain(AuditError::HashMismatch { seq: r.seq }));
                }
                head = ChainHead {
                    seq: r.seq,
                    hash: r.hash,
                };
            }
        }
        match meta.missing.first() {
            Some(&(from, to)) => Err(StoreError::Missing { from, to }),
            None => Ok(head),
        }
    }

    pub(crate) fn answers_page(
        &self,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<(Vec<AnswerRow>, Option<Vec<u8>>), StoreError> {
        let max = max.min(ANSWERS_PAGE_MAX);
        if !self.answers_held().is_empty() {
            self.ingest_held()?;
        }
        let (after_id, after_key) = match after {
            None => (0, None),
            Some(cursor) => {
                let (id, key) = cursor
                    .split_first_chunk::<8>()
                    .ok_or_else(|| StoreError::Refused("an answers cursor is too short".into()))?;
                (u64::from_be_bytes(*id), Some(key))
            }
        };
        let cat = self.catalog();
        let mut rows = Vec::new();
        let mut last: Option<(u64, fjall::Slice)> = None;
        for (meta, ks) in cat.meta.answers.iter().zip(&cat.answers) {
            if meta.id < after_id || rows.len() >= max {
                continue;
            }
            let start = match after_key.filter(|_| meta.id == after_id) {
                Some(key) => Bound::Excluded(key.to_vec()),
                None => Bound::Unbounded,
            };
            for item in ks
                .range::<Vec<u8>, _>((start, Bound::Unbounded))
                .take(max - rows.len())
            {
                let (key, value) = item.into_inner()?;
                rows.push(decode_answer_row(&key, &value)?);
                last = Some((meta.id, key));
            }
        }
        let next = last.filter(|_| rows.len() >= max).map(|(id, key)| {
            let mut cursor = id.to_be_bytes().to_vec();
            cursor.extend_from_slice(&key);
            cursor
        });
        Ok((rows, next))
    }

    pub(crate) fn state(&self) -> TrailState {
        let cat = self.catalog();
        let meta = &cat.meta;
        let bytes = |metas: &[BucketMeta], handles: &[fjall::Keyspace]| -> u64 {
            metas
                .iter()
                .zip(handles)
                .map(|(m, ks)| bucket_bytes(m, ks))
                .sum()
        };
        TrailState {
            first_seq: meta.records.first().map(|b| b.first_seq),
            last_seq: (meta.last_seq > 0).then_some(meta.last_seq),
            anchor: meta.anchor,
            missing: meta.missing.clone(),
            audit_bytes: bytes(&meta.records, &cat.records),
            answers_bytes: bytes(&meta.answers, &cat.answers),
            oldest_record_at_ms: meta.records.first().map(|b| b.first_at_ms),
            oldest_answer_at_ms: meta.answers.first().map(|b| b.first_at_ms),
            answer_horizon_in_force_ms: meta.horizon_in_force_ms,
            audit_retention_in_force_ms: meta.retention_in_force_ms,
        }
    }
}
