//! Answers on their way to disk. Their keys (tenant, request id) arrive in random order,
//! and inserting each into the engine's memtable (a concurrent skip list, behind the
//! journal) would be most of what the trail costs a busy node. So answers are held here as
//! they come, and written to their bucket sorted, as tables (fjall's ingestion), which
//! bypasses the memtable and the journal.
//!
//! Nothing here needs to be durable: the Raft log is, and a restart re-applies it from the
//! last snapshot, handing the same answers over again; `persist` (which a snapshot waits
//! for before the log may go) ingests first.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use crate::layout::{decode_answer, encode_answer_into, put_answer_key};
use crate::{Answer, AnswerRow, Inner, StoreError};

/// Answer bytes (keys and values) held before they are ingested: half the engine's default
/// memtable (64 MiB), so the tables ingested are about as large as those a memtable flush
/// writes, and compaction does no more work per answer.
pub(crate) const PENDING_BYTES_MAX: usize = 32 << 20;
/// The most one answer takes: its key (two ids and a byte) and its value (an outcome of at
/// most 4 KiB, a hash, two integers and lengths).
pub(crate) const ROW_BYTES_MAX: usize = 8 << 10;

/// One pending answer: its key and then its encoded value in `Pending::bytes`.
#[derive(Clone, Copy)]
struct Row {
    bucket: u64,
    at: u32,
    key_len: u16,
    value_len: u32,
}

/// Answers committed to the catalog but not yet in their bucket's tables, in the order
/// they came: appending costs no search and no allocation once the buffers have grown
/// (they are kept across ingestions); the sort is done once, by the ingestion.
#[derive(Default)]
pub(crate) struct Pending {
    rows: Vec<Row>,
    bytes: Vec<u8>,
}

impl Pending {
    pub(crate) fn push(&mut self, bucket: u64, row: &AnswerRow) {
        if self.bytes.capacity() == 0 {
            // Room for the bound and the one answer that crosses it, at once: the buffer is
            // never copied to grow, and never holds more.
            self.bytes.reserve_exact(PENDING_BYTES_MAX + ROW_BYTES_MAX);
        }
        let at = self.bytes.len();
        put_answer_key(&mut self.bytes, &row.tenant, &row.request_id);
        let key_len = self.bytes.len() - at;
        encode_answer_into(&mut self.bytes, &row.answer);
        let value_len = self.bytes.len() - at - key_len;
        let (Ok(at), Ok(key_len), Ok(value_len)) = (
            u32::try_from(at),
            u16::try_from(key_len),
            u32::try_from(value_len),
        ) else {
            // Beyond the bound, which the writer never lets the buffer pass.
            self.bytes.truncate(at);
            return;
        };
        self.rows.push(Row {
            bucket,
            at,
            key_len,
            value_len,
        });
    }

    fn key(&self, row: &Row) -> &[u8] {
        let at = row.at as usize;
        &self.bytes[at..at + usize::from(row.key_len)]
    }

    fn value(&self, row: &Row) -> &[u8] {
        let at = row.at as usize + usize::from(row.key_len);
        &self.bytes[at..at + row.value_len as usize]
    }

    /// Whether the answers should go to disk now: at the byte bound, or once they span
    /// two buckets (the older was sealed, and its size on disk should become known). An
    /// answer goes to the newest bucket or to a new one after it, so the first and the
    /// last held tell.
    pub(crate) fn full(&self) -> bool {
        let spans_buckets = (self.rows.first())
            .zip(self.rows.last())
            .is_some_and(|(first, last)| first.bucket != last.bucket);
        self.bytes.len() >= PENDING_BYTES_MAX || spans_buckets
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.bytes.clear();
    }

    /// Bytes held, and the buffer's capacity.
    #[cfg(test)]
    pub(crate) fn bytes_held(&self) -> (usize, usize) {
        (self.bytes.len(), self.bytes.capacity())
    }
}

impl Inner {
    pub(crate) fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the writer's turn and ingests what is held: for callers that do not hold it.
    pub(crate) fn ingest_held(&self) -> Result<(), StoreError> {
        let _writer = self.writer();
        self.ingest_pending()
    }

    /// Holds answers committed to their buckets, from `rows`, until they are ingested or it
    /// is time to ingest (`Pending::full`): then true, and the rest stays in `rows`.
    pub(crate) fn hold<'r>(&self, rows: &mut impl Iterator<Item = (&'r AnswerRow, u64)>) -> bool {
        let mut pending = self.pending();
        let mut oldest_ms = u64::MAX;
        let mut full = pending.full();
        while !full {
            let Some((row, bucket)) = rows.next() else {
                break;
            };
            pending.push(bucket, row);
            oldest_ms = oldest_ms.min(row.answer.at_ms);
            full = pending.full();
        }
        (self.pending_oldest_ms).fetch_min(oldest_ms, Ordering::AcqRel);
        full
    }

    /// `key`'s answer, if it is pending, unless every pending answer was given after
    /// `given_by_ms` (see `Store::answer_given_by`). A scan, newest first: the leader's
    /// look-ups skip what is pending (the purge ingests it every 30 s, far more often than
    /// the ledger forgets), so only other readers come here.
    pub(crate) fn pending_answer(
        &self,
        key: &[u8],
        given_by_ms: u64,
    ) -> Result<Option<Answer>, StoreError> {
        if self.pending_oldest_ms.load(Ordering::Acquire) > given_by_ms {
            return Ok(None);
        }
        let pending = self.pending();
        match pending
            .rows
            .iter()
            .rev()
            .find(|row| pending.key(row) == key)
        {
            Some(row) => Ok(Some(decode_answer(pending.value(row))?)),
            None => Ok(None),
        }
    }

    /// Writes every pending answer into its bucket's tables, sorted. The caller holds the
    /// writer's turn. The answers stay visible to readers until they are in the tables
    /// (the pending lock is held throughout); on a failure they stay pending, for the next
    /// try. Answers of a bucket purged meanwhile are dropped with it.
    pub(crate) fn ingest_pending(&self) -> Result<(), StoreError> {
        let mut pending = self.pending();
        if pending.is_empty() {
            return Ok(());
        }
        let mut order: Vec<u32> = (0..pending.rows.len() as u32).collect();
        // Stable: of a key handed twice (a replay), the last is written.
        order.sort_by(|&a, &b| {
            let (a, b) = (&pending.rows[a as usize], &pending.rows[b as usize]);
            (a.bucket, pending.key(a)).cmp(&(b.bucket, pending.key(b)))
        });
        let catalog = self.catalog();
        let mut start = 0;
        while start < order.len() {
            let bucket = pending.rows[order[start] as usize].bucket;
            let end = start
                + order[start..].partition_point(|&i| pending.rows[i as usize].bucket == bucket);
            if let Some(at) = catalog.meta.answers.iter().position(|b| b.id == bucket) {
                let mut ingestion = catalog.answers[at].start_ingestion()?;
                for (n, &i) in order[start..end].iter().enumerate() {
                    let row = &pending.rows[i as usize];
                    let next = order[start..end]
                        .get(n + 1)
                        .map(|&j| &pending.rows[j as usize]);
                    if next.is_some_and(|next| pending.key(next) == pending.key(row)) {
                        continue;
                    }
                    ingestion.write(pending.key(row), pending.value(row))?;
                }
                ingestion.finish()?;
            }
            start = end;
        }
        pending.clear();
        self.pending_oldest_ms.store(u64::MAX, Ordering::Release);
        Ok(())
    }
}
