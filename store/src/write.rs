//! Writing: applied batches (`write`) and a peer's backfill of a missing range (`fill`).
//! Each builds the next catalog beside the one readers see, commits it with the data in one
//! atomic batch (or, while records are held, the data alone: `pending`), and only then
//! swaps it in. Appended records are held; a backfill goes through the memtable.

use tollgate_ledger::{verify_chain, AuditBatch, AuditError, AuditRecord, EncodedRecord};

use crate::answers::EncodedAnswer;
use crate::layout::{
    add_range, decode_record, put_index_key, record_key, remove_range, BucketMeta, META_KEY,
    TAG_AGENT, TAG_TENANT,
};
use crate::pending::Pending;
use crate::{
    AnswerBatch, Catalog, Inner, StoreError, ANSWER_BUCKETS_PER_HORIZON, MISSING_RANGES_MAX,
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
    /// The held records (locked for the whole write), and where this write started
    /// holding: a write that fails lets go of what it held.
    held: std::sync::MutexGuard<'a, Pending>,
    mark: (usize, usize),
    /// An index key in the making.
    key: Vec<u8>,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(inner: &'a Inner) -> Txn<'a> {
        let held = inner.records_held();
        Txn {
            inner,
            cat: (*inner.catalog()).clone(),
            batch: inner.db.batch(),
            seal: Vec::new(),
            mark: held.mark(),
            held,
            key: Vec::new(),
        }
    }

    pub(crate) fn commit(mut self) -> Result<(), StoreError> {
        // The catalog on disk names no record that is not in the tables: while records are
        // held, it is written once they are ingested (`Inner::ingest_all`).
        if self.held.is_empty() {
            let meta = self.cat.meta.encode();
            self.batch.insert(&self.inner.meta, META_KEY, meta);
        }
        if !self.batch.is_empty() {
            self.batch.commit()?;
        }
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
    fn put_record(&mut self, record: EncodedRecord<'_>) -> Result<(), StoreError> {
        let seq = record.seq;
        if seq == 0 {
            return Err(StoreError::Refused("an audit record with seq 0".into()));
        }
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
            return self.insert_record(index, record, true);
        }
        if self.is_missing(seq) {
            return self.backfill_record(record);
        }
        if seq <= self.cat.meta.purged_to {
            // A replay of what retention already let go.
            return Ok(());
        }
        let stored = self.stored_bytes(seq)?;
        match stored {
            Some(stored) if *stored == *record.bytes => Ok(()),
            Some(_) => Err(StoreError::Diverged { seq }),
            None => Err(StoreError::Corrupt(format!(
                "audit record seq {seq} is neither stored, purged nor missing"
            ))),
        }
    }

    /// A record of a missing range, into the bucket its seq belongs to.
    pub(crate) fn backfill_record(&mut self, record: EncodedRecord<'_>) -> Result<(), StoreError> {
        remove_range(&mut self.cat.meta.missing, record.seq, record.seq);
        let index = match self.cat.bucket_index(record.seq) {
            Some(index) => index,
            None => self.new_bucket(true, record.at_ms)?,
        };
        self.insert_record(index, record, false)
    }

    pub(crate) fn stored_bytes(&self, seq: u64) -> Result<Option<fjall::Slice>, StoreError> {
        match self.cat.bucket_index(seq) {
            Some(index) => Ok(self.cat.records[index].get(record_key(seq))?),
            None => Ok(None),
        }
    }

    /// Puts a record and its index keys into bucket `index`: held (`hold`), or into the
    /// batch.
    fn insert_record(
        &mut self,
        index: usize,
        record: EncodedRecord<'_>,
        hold: bool,
    ) -> Result<(), StoreError> {
        let (seq, at_ms) = (record.seq, record.at_ms);
        let corrupt = || StoreError::Refused(format!("audit record seq {seq} does not parse"));
        let (tenant, agent) = record.ids().ok_or_else(corrupt)?;
        let prev_hash = record.prev_hash().ok_or_else(corrupt)?;
        let oldest = self.cat.meta.records.first().map(|b| b.first_seq);
        if oldest.is_none_or(|oldest| seq <= oldest) {
            self.cat.meta.anchor = prev_hash;
        }
        let mut raw = 9 + record.bytes.len();
        self.put(index, hold, &record_key(seq), record.bytes);
        if let Some(tenant) = tenant.map(str::as_bytes) {
            let mut key = std::mem::take(&mut self.key);
            put_index_key(&mut key, TAG_TENANT, &[tenant], at_ms, seq);
            self.put(index, hold, &key, &[]);
            raw += key.len();
            if let Some(agent) = agent.map(str::as_bytes) {
                put_index_key(&mut key, TAG_AGENT, &[tenant, agent], at_ms, seq);
                self.put(index, hold, &key, &[]);
                raw += key.len();
            }
            self.key = key;
        }
        if hold && self.held.full() {
            // Within a write: the catalog on disk is written once every record is ingested.
            self.inner.ingest(&mut self.held, &self.cat, true)?;
            self.mark = (0, 0);
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

    fn put(&mut self, index: usize, hold: bool, key: &[u8], value: &[u8]) {
        if hold {
            self.held.push(self.cat.meta.records[index].id, key, value);
        } else {
            self.batch.insert(&self.cat.records[index], key, value);
        }
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
    fn put_answer(&mut self, answer: EncodedAnswer<'_>) -> Result<u64, StoreError> {
        let at_ms = answer.at_ms;
        let index = self.append_answer_bucket(at_ms)?;
        let raw = (answer.key.len() + answer.value.len()) as u64;
        let b = &mut self.cat.meta.answers[index];
        let id = b.id;
        b.first_at_ms = b.first_at_ms.min(at_ms);
        b.last_at_ms = b.last_at_ms.max(at_ms);
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
        records: &[AuditBatch],
        answers: &[AnswerBatch],
    ) -> Result<(), StoreError> {
        let _writer = self.writer();
        let answers = || answers.iter().flat_map(AnswerBatch::iter);
        let records = || records.iter().flat_map(AuditBatch::iter);
        for (before, after) in records().zip(records().skip(1)) {
            if before.seq >= after.seq {
                return Err(StoreError::Refused(format!(
                    "audit records out of order: seq {} then {}",
                    before.seq, after.seq
                )));
            }
        }
        let last_seq = self.catalog().meta.last_seq;
        if records().next().is_some_and(|first| first.seq <= last_seq) {
            // A replay (checked against what is stored) or a backfill (beside it), which
            // also writes the catalog: what is held goes to the tables first.
            self.ingest_all()?;
        }
        let mut txn = Txn::new(self);
        let put = |txn: &mut Txn<'_>| -> Result<Vec<u64>, StoreError> {
            for record in records() {
                txn.put_record(record)?;
            }
            answers().map(|answer| txn.put_answer(answer)).collect()
        };
        let buckets = match put(&mut txn) {
            Ok(buckets) => buckets,
            Err(error) => {
                let mark = txn.mark;
                txn.held.truncate(mark);
                return Err(error);
            }
        };
        txn.commit()?;
        // Held up to their bound, then ingested. If ingesting fails (a failing disk), the
        // write fails with the answers not held yet, rather than memory growing.
        let mut held = answers().zip(buckets);
        while self.hold(&mut held) {
            self.ingest_answers()?;
        }
        Ok(())
    }

    pub(crate) fn fill(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let _writer = self.writer();
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(());
        };
        verify_chain(records).map_err(StoreError::Chain)?;
        // The neighbours are read from the tables, and the catalog is written.
        self.ingest_all()?;
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
        let mut batch = AuditBatch::default();
        for record in records {
            batch.push(record);
        }
        for record in batch.iter() {
            txn.backfill_record(record)?;
        }
        txn.commit()
    }
}
