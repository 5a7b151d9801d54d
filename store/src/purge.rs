//! Retention: whole buckets go, oldest first, by age and then by size, for records and
//! for answers. The catalog without them is made durable before their keyspaces are
//! deleted, so a crash in between leaves orphans (deleted at the next open), never a
//! catalog naming a bucket that is gone.

use crate::layout::{remove_range, BucketMeta};
use crate::read::bucket_bytes;
use crate::write::Txn;
use crate::{Inner, PurgeReport, StoreError};

/// Buckets chosen to go, and whether size (not age) chose some.
struct Dropped {
    metas: Vec<BucketMeta>,
    handles: Vec<fjall::Keyspace>,
    size_forced: bool,
}

/// Takes the oldest buckets out of `metas`/`handles`: those wholly older than
/// `now_ms - age_ms`, then, while the rest is above `bytes_max`, the oldest but the newest.
fn choose(
    metas: &mut Vec<BucketMeta>,
    handles: &mut Vec<fjall::Keyspace>,
    now_ms: u64,
    age_ms: u64,
    bytes_max: u64,
) -> Dropped {
    let cutoff_ms = now_ms.saturating_sub(age_ms);
    let mut aged = metas
        .iter()
        .take_while(|b| b.last_at_ms < cutoff_ms)
        .count();
    let sizes: Vec<u64> = metas
        .iter()
        .zip(handles.iter())
        .map(|(m, ks)| bucket_bytes(m, ks))
        .collect();
    let mut kept_bytes: u64 = sizes.iter().skip(aged).sum();
    let mut size_forced = false;
    while kept_bytes > bytes_max && aged + 1 < metas.len() {
        kept_bytes = kept_bytes.saturating_sub(sizes[aged]);
        aged += 1;
        size_forced = true;
    }
    Dropped {
        metas: metas.drain(..aged).collect(),
        handles: handles.drain(..aged).collect(),
        size_forced,
    }
}

impl Inner {
    pub(crate) fn purge(&self, now_ms: u64) -> Result<PurgeReport, StoreError> {
        let _writer = self.writer();
        // Held rows of a bucket about to go would go with it; others get their size on
        // disk known before it is weighed. And the catalog written below must name no
        // record that is not in the tables.
        self.ingest_all()?;
        let mut txn = Txn::new(self);
        let config = &self.config;
        let cat = &mut txn.cat;
        let records = choose(
            &mut cat.meta.records,
            &mut cat.records,
            now_ms,
            config.audit_retention_ms,
            config.audit_max_bytes,
        );
        let answers = choose(
            &mut cat.meta.answers,
            &mut cat.answers,
            now_ms,
            config.answer_horizon_ms,
            config.answers_max_bytes,
        );
        if let Some(newest) = records.metas.last() {
            self.move_anchor(&mut txn, newest, records.handles.last())?;
        }
        let meta = &mut txn.cat.meta;
        if let Some(newest) = answers.metas.last() {
            meta.answers_purged_to_ms = Some(newest.last_at_ms);
        }
        let in_force = |configured: u64, purged_to_ms: Option<u64>| {
            purged_to_ms.map_or(configured, |at| configured.min(now_ms.saturating_sub(at)))
        };
        meta.retention_in_force_ms = in_force(config.audit_retention_ms, meta.records_purged_to_ms);
        meta.horizon_in_force_ms = in_force(config.answer_horizon_ms, meta.answers_purged_to_ms);
        let report = PurgeReport {
            records_purged: records.metas.iter().map(|b| b.count).sum(),
            answers_purged: answers.metas.iter().map(|b| b.count).sum(),
            size_forced_records: records.size_forced,
            size_forced_answers: answers.size_forced,
        };
        txn.commit()?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        for ks in records.handles.into_iter().chain(answers.handles) {
            self.db.delete_keyspace(ks)?;
        }
        Ok(report)
    }

    /// Records before `seq` that this store misses and no peer keeps any longer (their
    /// retention purged them): they leave the missing ranges as if purged here, so the
    /// trail starts at the oldest record copied, whose prev_hash is the anchor.
    pub(crate) fn purged_by_peers(&self, seq: u64) -> Result<(), StoreError> {
        let _writer = self.writer();
        self.ingest_all()?;
        let mut txn = Txn::new(self);
        let before = seq.saturating_sub(1);
        let meta = &mut txn.cat.meta;
        if meta.missing.iter().all(|&(from, _)| from > before) {
            return Ok(());
        }
        remove_range(&mut meta.missing, 0, before);
        meta.purged_to = meta.purged_to.max(before);
        txn.commit()
    }

    /// After dropping record buckets up to `newest`: the anchor is the prev_hash of the
    /// oldest kept record, or the hash of the newest dropped one if none is kept.
    fn move_anchor(
        &self,
        txn: &mut Txn<'_>,
        newest: &BucketMeta,
        newest_handle: Option<&fjall::Keyspace>,
    ) -> Result<(), StoreError> {
        let meta = &mut txn.cat.meta;
        meta.records_purged_to_ms = Some(newest.last_at_ms);
        match meta.records.first().map(|b| b.first_seq) {
            Some(first) => {
                let record = txn.cat.record(first)?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "the oldest kept record, seq {first}, is not stored"
                    ))
                })?;
                txn.cat.meta.anchor = record.prev_hash;
                txn.cat.meta.purged_to = first - 1;
            }
            None => {
                let last = newest.last_seq;
                let bytes = match newest_handle {
                    Some(ks) => ks.get(crate::layout::record_key(last))?,
                    None => None,
                };
                let bytes = bytes.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "the newest purged record, seq {last}, is not stored"
                    ))
                })?;
                txn.cat.meta.anchor = crate::layout::decode_record(last, &bytes)?.hash;
                txn.cat.meta.purged_to = last;
            }
        }
        let purged_to = txn.cat.meta.purged_to;
        remove_range(&mut txn.cat.meta.missing, 0, purged_to);
        Ok(())
    }
}
