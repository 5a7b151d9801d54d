//! Records and answers on their way to disk. Inserting each key into the engine's memtable
//! (a concurrent skip list, behind the journal) was most of what the trail cost a busy
//! node: answers' keys (tenant, request id) arrive in random order, and a record brings
//! three keys (itself and two indexes). So both are held here as they come, and written to
//! their bucket sorted, as tables (fjall's ingestion), which bypasses the memtable and the
//! journal.
//!
//! Nothing here needs to be durable: the Raft log is, and a restart re-applies it from the
//! last snapshot, handing the same records and answers over again; `persist` (which a
//! snapshot waits for before the log may go) ingests first. The catalog on disk must never
//! name a record that is not in the tables (a restart hands over only what comes after its
//! last seq): it is written only while no record is held (`Txn::commit`, `ingest_held`).

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use crate::answers::EncodedAnswer;
use crate::layout::{decode_answer, META_KEY};
use crate::{Answer, Catalog, Inner, StoreError};

/// Bytes (keys and values) of answers, and of records, held before they are ingested: half
/// the engine's default memtable (64 MiB), so the tables ingested are about as large as
/// those a memtable flush writes, and compaction does no more work per key.
pub(crate) const PENDING_BYTES_MAX: usize = 32 << 20;
/// The most one answer takes: its key (two ids and a byte) and its value (an outcome of at
/// most 4 KiB, a hash, two integers and lengths). Records are smaller but for rare admin
/// events; one larger grows the buffer once.
pub(crate) const ROW_BYTES_MAX: usize = 8 << 10;

/// One held row: its key and then its value in `Pending::bytes`.
#[derive(Clone, Copy, Default)]
struct Row {
    bucket: u64,
    at: u32,
    key_len: u16,
    value_len: u32,
}

/// Keys and values counted in the catalog but not yet in their bucket's tables, in the
/// order they came: appending costs no search and no allocation once the buffers have grown
/// (they are kept across ingestions); the sort is done once, by the ingestion.
#[derive(Default)]
pub(crate) struct Pending {
    rows: Vec<Row>,
    bytes: Vec<u8>,
}

/// Rows reserved up front: the bound's worth of rows of 128 bytes (records with their
/// index keys, and answers, average about that); more grow the vector.
const ROWS_RESERVED: usize = PENDING_BYTES_MAX / 128;

impl Pending {
    /// Room for the bound and the one row that crosses it, reserved and written once, at
    /// the first row: the buffer is never copied to grow, never holds more, and its memory
    /// is committed then rather than page by page under load (each page's first touch
    /// costs a fault and a clearing, which was most of what holding cost a node's first
    /// minutes). A store that is never written to (a tool's, a test's) costs nothing.
    fn make_room(&mut self) {
        // Written with a byte that is not zero (an allocation asked for zeroed is mapped
        // lazily, page by page), by `vec!`, which fills bytes with one memset.
        self.bytes = vec![0xa5; PENDING_BYTES_MAX + ROW_BYTES_MAX];
        self.bytes.clear();
        self.rows = vec![Row::default(); ROWS_RESERVED];
        self.rows.clear();
    }

    pub(crate) fn push(&mut self, bucket: u64, key: &[u8], value: &[u8]) {
        if self.bytes.capacity() == 0 {
            self.make_room();
        }
        let at = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        let (key_len, value_len) = (key.len(), value.len());
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

    /// Whether the rows should go to disk now: at the byte bound, or once they span two
    /// buckets (the older was sealed, and its size on disk should become known). A row
    /// goes to the newest bucket or to a new one after it, so the first and the last held
    /// tell.
    pub(crate) fn full(&self) -> bool {
        let spans_buckets = (self.rows.first())
            .zip(self.rows.last())
            .is_some_and(|(first, last)| first.bucket != last.bucket);
        self.bytes.len() >= PENDING_BYTES_MAX || spans_buckets
    }

    /// Of held records: the seq of the first (its first row is its record key).
    pub(crate) fn first_seq(&self) -> Option<u64> {
        let key = self.key(self.rows.first()?);
        crate::layout::index_seq(key).ok()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.bytes.clear();
    }

    /// Where a writer started pushing: what `truncate` goes back to.
    pub(crate) fn mark(&self) -> (usize, usize) {
        (self.rows.len(), self.bytes.len())
    }

    pub(crate) fn truncate(&mut self, (rows, bytes): (usize, usize)) {
        self.rows.truncate(rows);
        self.bytes.truncate(bytes);
    }

    /// Bytes held, and the buffer's capacity.
    #[cfg(test)]
    pub(crate) fn bytes_held(&self) -> (usize, usize) {
        (self.bytes.len(), self.bytes.capacity())
    }
}

impl Inner {
    pub(crate) fn answers_held(&self) -> MutexGuard<'_, Pending> {
        self.answers_held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn records_held(&self) -> MutexGuard<'_, Pending> {
        self.records_held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the writer's turn and ingests what is held: for callers that do not hold it.
    pub(crate) fn ingest_held(&self) -> Result<(), StoreError> {
        let _writer = self.writer();
        self.ingest_all()
    }

    /// Ingests every held record and answer, then writes the catalog, which now names
    /// nothing that is not in the tables. The caller holds the writer's turn.
    pub(crate) fn ingest_all(&self) -> Result<(), StoreError> {
        let catalog = self.catalog();
        self.ingest(&mut self.records_held(), &catalog, true)?;
        self.ingest_answers()?;
        let mut batch = self.db.batch();
        batch.insert(&self.meta, META_KEY, catalog.meta.encode());
        batch.commit()?;
        Ok(())
    }

    /// Ingests the held answers (the caller holds the writer's turn).
    pub(crate) fn ingest_answers(&self) -> Result<(), StoreError> {
        let mut answers = self.answers_held();
        self.ingest(&mut answers, &self.catalog(), false)?;
        self.pending_oldest_ms.store(u64::MAX, Ordering::Release);
        Ok(())
    }

    /// Holds answers committed to their buckets, from `rows`, until they are ingested or it
    /// is time to ingest (`Pending::full`): then true, and the rest stays in `rows`.
    pub(crate) fn hold<'r>(
        &self,
        answers: &mut impl Iterator<Item = (EncodedAnswer<'r>, u64)>,
    ) -> bool {
        let mut pending = self.answers_held();
        let mut oldest_ms = u64::MAX;
        let mut full = pending.full();
        while !full {
            let Some((answer, bucket)) = answers.next() else {
                break;
            };
            pending.push(bucket, answer.key, answer.value);
            oldest_ms = oldest_ms.min(answer.at_ms);
            full = pending.full();
        }
        (self.pending_oldest_ms).fetch_min(oldest_ms, Ordering::AcqRel);
        full
    }

    /// `key`'s answer, if it is held, unless every held answer was given after
    /// `given_by_ms` (see `Store::answer_given_by`). A scan, newest first: the leader's
    /// look-ups skip what is held (the purge ingests it every 30 s, far more often than
    /// the ledger forgets), so only other readers come here.
    pub(crate) fn pending_answer(
        &self,
        key: &[u8],
        given_by_ms: u64,
    ) -> Result<Option<Answer>, StoreError> {
        if self.pending_oldest_ms.load(Ordering::Acquire) > given_by_ms {
            return Ok(None);
        }
        let pending = self.answers_held();
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

    /// Writes every held row into its bucket's tables (of `catalog`: records' or answers'
    /// buckets), sorted. The caller holds the writer's turn. The rows stay visible to
    /// readers that look at them until they are in the tables (the lock is held
    /// throughout); on a failure they stay held, for the next try. Rows of a bucket purged
    /// meanwhile are dropped with it.
    pub(crate) fn ingest(
        &self,
        pending: &mut Pending,
        catalog: &Catalog,
        records: bool,
    ) -> Result<(), StoreError> {
        if pending.is_empty() {
            return Ok(());
        }
        let (metas, handles) = if records {
            (&catalog.meta.records, &catalog.records)
        } else {
            (&catalog.meta.answers, &catalog.answers)
        };
        let mut order: Vec<u32> = (0..pending.rows.len() as u32).collect();
        // Stable: of a key handed twice (a replay), the last is written.
        order.sort_by(|&a, &b| {
            let (a, b) = (&pending.rows[a as usize], &pending.rows[b as usize]);
            (a.bucket, pending.key(a)).cmp(&(b.bucket, pending.key(b)))
        });
        let mut start = 0;
        while start < order.len() {
            let bucket = pending.rows[order[start] as usize].bucket;
            let end = start
                + order[start..].partition_point(|&i| pending.rows[i as usize].bucket == bucket);
            if let Some(at) = metas.iter().position(|b| b.id == bucket) {
                pending.ingest_run(&handles[at], &order[start..end])?;
            }
            start = end;
        }
        pending.clear();
        Ok(())
    }
}

impl Pending {
    /// Writes the rows of one bucket, in `order` (sorted by key), as tables; of equal keys
    /// the last.
    fn ingest_run(&self, ks: &fjall::Keyspace, order: &[u32]) -> Result<(), StoreError> {
        let mut ingestion = ks.start_ingestion()?;
        for (n, &i) in order.iter().enumerate() {
            let row = &self.rows[i as usize];
            let next = order.get(n + 1).map(|&j| &self.rows[j as usize]);
            if next.is_some_and(|next| self.key(next) == self.key(row)) {
                continue;
            }
            ingestion.write(self.key(row), self.value(row))?;
        }
        ingestion.finish()?;
        Ok(())
    }
}
