//! Writing: applied batches (`write`) and a peer's backfill of a missing range (`fill`).
//! Each builds the next catalog beside the one readers see, commits it with the data in one
//! atomic batch, and only then swaps it in.

use tollgate_ledger::{verify_chain, AuditError, AuditRecord};

use crate::layout::{
    add_range, agent_prefix, decode_record, encode_record, index_key, record_key, remove_range,
    tenant_prefix, BucketMeta, META_KEY,
};
use crate::{
    AnswerRow, Catalog, Inner, StoreError, ANSWER_BUCKETS_PER_HORIZON, MISSING_RANGES_MAX,
    RECORD_BUCKETS_PER_RETENTION,
};

/// One write in the making.
pub(crate) struct Txn<'a> {
    inner: &'a Inner,
    pub(crate) cat: Catalog,
    batch: fjall::OwnedWriteBatch,
    /// Buckets that stopped being written to: flushed after the commit, so their size on
    /// disk is known and the journal can let their data go.
    seal: Vec<fjall::Keyspace>,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(inner: &'a Inner) -> Txn<'a> {
        Txn {
            inner,
            cat: (*inner.catalog()).clone(),
            batch: inner.db.batch(),
            seal: Vec::new(),
        }
    }

    pub(crate) fn commit(mut self) -> Result<(), StoreError> {
        self.batch
            .insert(&self.inner.meta, META_KEY, self.cat.meta.encode());
        self.batch.commit()?;
        self.inner.set_catalog(self.cat);
        for ks in self.seal {
            ks.rotate_memtable()?;
        }
        Ok(())
    }

    fn is_missing(&self, seq: u64) -> bool {
        self.cat
            .meta
            .missing
            .iter()
            .any(|&(a, b)| a <= seq && seq <= b)
    }

    /// A record from the log: appended, or checked against what is stored.
    fn put_record(&mut self, record: &AuditRecord) -> Result<(), StoreError> {
        let seq = record.seq;
        if seq == 0 {
            return Err(StoreError::Refused("an audit record with seq 0".into()));
        }
        let bytes = encode_record(record);
        let last = self.cat.meta.last_seq;
        if seq > last {
            if seq > last.saturating_add(1) {
                add_range(&mut self.cat.meta.missing, last.saturating_add(1), seq - 1);
                if self.cat.meta.missing.len() > MISSING_RANGES_MAX {
                    return Err(StoreError::TooManyGaps);
                }
            }
            let index = self.append_bucket(record.at_ms)?;
            self.cat.meta.last_seq = seq;
            return self.insert_record(index, record, &bytes);
        }
        if self.is_missing(seq) {
            return self.backfill_record(record, &bytes);
        }
        if seq <= self.cat.meta.purged_to {
            // A replay of what retention already let go.
            return Ok(());
        }
        let stored = self.stored_bytes(seq)?;
        match stored {
            Some(stored) if stored == bytes => Ok(()),
            Some(_) => Err(StoreError::Diverged { seq }),
            None => Err(StoreError::Corrupt(format!(
                "audit record seq {seq} is neither stored, purged nor missing"
            ))),
        }
    }

    /// A record of a missing range, into the bucket its seq belongs to.
    pub(crate) fn backfill_record(
        &mut self,
        record: &AuditRecord,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        remove_range(&mut self.cat.meta.missing, record.seq, record.seq);
        let index = match self.cat.bucket_index(record.seq) {
            Some(index) => index,
            None => self.new_bucket(true, record.at_ms)?,
        };
        self.insert_record(index, record, bytes)
    }

    pub(crate) fn stored_bytes(&self, seq: u64) -> Result<Option<fjall::Slice>, StoreError> {
        match self.cat.bucket_index(seq) {
            Some(index) => Ok(self.cat.records[index].get(record_key(seq))?),
            None => Ok(None),
        }
    }

    fn insert_record(
        &mut self,
        index: usize,
        record: &AuditRecord,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let oldest = self.cat.meta.records.first().map(|b| b.first_seq);
        if oldest.is_none_or(|oldest| record.seq <= oldest) {
            self.cat.meta.anchor = record.prev_hash;
        }
        let ks = &self.cat.records[index];
        let mut raw = 9 + bytes.len();
        self.batch.insert(ks, record_key(record.seq), bytes);
        if let Some(tenant) = &record.tenant {
            let key = index_key(&tenant_prefix(tenant), record.at_ms, record.seq);
            raw += key.len();
            self.batch.insert(ks, key, []);
            if let Some(agent) = &record.agent {
                let key = index_key(&agent_prefix(tenant, agent), record.at_ms, record.seq);
                raw += key.len();
                self.batch.insert(ks, key, []);
            }
        }
        let b = &mut self.cat.meta.records[index];
        b.first_seq = b.first_seq.min(record.seq);
        b.last_seq = b.last_seq.max(record.seq);
        b.first_at_ms = b.first_at_ms.min(record.at_ms);
        b.last_at_ms = b.last_at_ms.max(record.at_ms);
        b.raw_bytes = b.raw_bytes.saturating_add(raw as u64);
        b.count = b.count.saturating_add(1);
        Ok(())
    }

    /// The newest record bucket, or a new one once it spans its share of the retention
    /// (in time or in bytes).
    fn append_bucket(&mut self, at_ms: u64) -> Result<usize, StoreError> {
        let config = &self.inner.config;
        let span_ms = (config.audit_retention_ms / RECORD_BUCKETS_PER_RETENTION).max(1);
        let bytes_max = (config.audit_max_bytes / RECORD_BUCKETS_PER_RETENTION).max(1);
        if let Some(newest) = self.cat.meta.records.last() {
            if at_ms.saturating_sub(newest.first_at_ms) < span_ms && newest.raw_bytes < bytes_max {
                return Ok(self.cat.meta.records.len() - 1);
            }
        }
        self.new_bucket(true, at_ms)
    }

    fn append_answer_bucket(&mut self, at_ms: u64) -> Result<usize, StoreError> {
        let config = &self.inner.config;
        let span_ms = (config.answer_horizon_ms / ANSWER_BUCKETS_PER_HORIZON).max(1);
        let bytes_max = (config.answers_max_bytes / ANSWER_BUCKETS_PER_HORIZON).max(1);
        if let Some(newest) = self.cat.meta.answers.last() {
            if at_ms.saturating_sub(newest.first_at_ms) < span_ms && newest.raw_bytes < bytes_max {
                return Ok(self.cat.meta.answers.len() - 1);
            }
        }
        self.new_bucket(false, at_ms)
    }

    /// Opens a new bucket after the others (or, for a backfill older than every bucket,
    /// before them) and seals the one it follows.
    fn new_bucket(&mut self, records: bool, at_ms: u64) -> Result<usize, StoreError> {
        let id = self.cat.meta.next_bucket_id;
        self.cat.meta.next_bucket_id = id.saturating_add(1);
        let ks = self.inner.open_bucket(records, id)?;
        let meta = BucketMeta {
            id,
            // Lowered by the first record; answers have none.
            first_seq: if records { u64::MAX } else { 0 },
            first_at_ms: at_ms,
            last_at_ms: at_ms,
            ..BucketMeta::default()
        };
        let (metas, handles) = if records {
            (&mut self.cat.meta.records, &mut self.cat.records)
        } else {
            (&mut self.cat.meta.answers, &mut self.cat.answers)
        };
        if let (Some(last), Some(handle)) = (metas.last_mut(), handles.last()) {
            if !last.sealed {
                last.sealed = true;
                self.seal.push(handle.clone());
            }
        }
        metas.push(meta);
        handles.push(ks);
        Ok(metas.len() - 1)
    }

    /// Counts an answer in its bucket, whose id it returns: the answer itself is held in
    /// memory once the batch is committed (`pending`).
    fn put_answer(&mut self, row: &AnswerRow) -> Result<u64, StoreError> {
        let index = self.append_answer_bucket(row.answer.at_ms)?;
        let key = 1 + row.tenant.as_bytes().len() + row.request_id.as_bytes().len();
        // The answer's encoding but for its outcome's length prefix (a byte or two).
        let value = 16 + 10 + 10 + 2 + row.answer.outcome.len();
        let raw = (key + value) as u64;
        let b = &mut self.cat.meta.answers[index];
        let id = b.id;
        b.first_at_ms = b.first_at_ms.min(row.answer.at_ms);
        b.last_at_ms = b.last_at_ms.max(row.answer.at_ms);
        b.raw_bytes = b.raw_bytes.saturating_add(raw);
        b.count = b.count.saturating_add(1);
        Ok(id)
    }
}

impl Catalog {
    /// The record bucket a seq belongs to: the last one starting at or before it (or the
    /// first, for a seq older than all).
    pub(crate) fn bucket_index(&self, seq: u64) -> Option<usize> {
        if self.meta.records.is_empty() {
            return None;
        }
        let after = self.meta.records.partition_point(|b| b.first_seq <= seq);
        Some(after.saturating_sub(1))
    }
}

impl Inner {
    pub(crate) fn write(
        &self,
        records: &[AuditRecord],
        answers: &[AnswerRow],
    ) -> Result<(), StoreError> {
        let _writer = self.writer();
        let mut txn = Txn::new(self);
        for pair in records.windows(2) {
            if pair[0].seq >= pair[1].seq {
                return Err(StoreError::Refused(format!(
                    "audit records out of order: seq {} then {}",
                    pair[0].seq, pair[1].seq
                )));
            }
        }
        for record in records {
            txn.put_record(record)?;
        }
        let buckets = answers
            .iter()
            .map(|row| txn.put_answer(row))
            .collect::<Result<Vec<u64>, StoreError>>()?;
        txn.commit()?;
        // Held up to their bound, then ingested. If ingesting fails (a failing disk), the
        // write fails with the answers not held yet, rather than memory growing.
        let mut rows = answers.iter().zip(buckets);
        while self.hold(&mut rows) {
            self.ingest_pending()?;
        }
        Ok(())
    }

    pub(crate) fn fill(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let _writer = self.writer();
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(());
        };
        verify_chain(records).map_err(StoreError::Chain)?;
        let mut txn = Txn::new(self);
        if let Some(r) = records.iter().find(|r| !txn.is_missing(r.seq)) {
            return Err(StoreError::Refused(format!(
                "audit record seq {} is not missing here",
                r.seq
            )));
        }
        if let Some(before) = first.seq.checked_sub(1).filter(|s| *s > 0) {
            if let Some(bytes) = txn.stored_bytes(before)? {
                if decode_record(before, &bytes)?.hash != first.prev_hash {
                    return Err(StoreError::Chain(AuditError::BrokenLink {
                        seq: first.seq,
                        prev_seq: before,
                    }));
                }
            }
        }
        let after = last.seq.saturating_add(1);
        if let Some(bytes) = txn.stored_bytes(after)? {
            if decode_record(after, &bytes)?.prev_hash != last.hash {
                return Err(StoreError::Chain(AuditError::BrokenLink {
                    seq: after,
                    prev_seq: last.seq,
                }));
            }
        }
        for record in records {
            txn.backfill_record(record, &encode_record(record))?;
        }
        txn.commit()
    }
}
