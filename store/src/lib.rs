//! The audit trail and the remembered answers of a node, on disk (fjall, an LSM tree).
//!
//! Every node writes the same records in log order from its state machine's apply path, so
//! every node can answer audit queries and retries far beyond what the ledger keeps in
//! memory. This crate knows nothing of Raft or gRPC; it never decides anything: it keeps
//! what it is given, refuses what contradicts what it holds, and never hides a gap.
//!
//! Layout: one `meta` keyspace (the catalog), and buckets: keyspaces of consecutive records
//! with their indexes (`r…`), or of answers (`a…`). Retention drops whole buckets, which
//! frees their files at once (an LSM tree frees deleted keys only after compaction).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tollgate_ledger::{AuditError, RequestId, TenantId};

mod answers;
mod layout;
mod pending;
mod purge;
mod read;
mod write;

#[cfg(test)]
mod tests;

pub use answers::AnswerBatch;
pub use layout::{AnswerRef, MISSING_RANGES_MAX};
pub use tollgate_ledger::{AuditBatch, AuditFilter, AuditRecord, ChainHead};

use layout::{bucket_name, Meta, FORMAT, META_KEY};

/// Most answers one `answers_page` returns.
pub const ANSWERS_PAGE_MAX: usize = 10_000;
/// Record buckets per retention period: a record is purged at most 1/16 of the retention
/// late, and size-forced purging removes about 1/16 of the bound at a time.
pub const RECORD_BUCKETS_PER_RETENTION: u64 = 16;
/// Answer buckets per horizon: a lookup that misses (a new request id, the common case)
/// checks one bloom filter per bucket, so few buckets keep misses cheap.
pub const ANSWER_BUCKETS_PER_HORIZON: u64 = 8;

/// Most journal fjall keeps before it flushes memtables to tables: what a restart replays.
/// fjall's default (512 MiB) made a node restarting on a full store replay for seconds.
const JOURNAL_BYTES_MAX: u64 = 128 << 20;
const DAY_MS: u64 = 86_400_000;
const GIB: u64 = 1 << 30;

/// Where the trail lives and how long it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// `<data-dir>/trail`.
    pub dir: PathBuf,
    /// Records older than this (against the `now_ms` given to `purge`) are purged: 7 days.
    pub audit_retention_ms: u64,
    /// Beyond this many bytes on disk the oldest records are purged: 16 GiB.
    pub audit_max_bytes: u64,
    /// Answers older than this are purged and never returned: 24 hours.
    pub answer_horizon_ms: u64,
    /// Beyond this many bytes on disk the oldest answers are purged (and the horizon in
    /// force shortens). An answer (a 16-36 byte request id, a ~60 byte value) takes about
    /// 95 bytes on disk (`cargo bench -p tollgate-store --bench engines`), so 2,000 answers
    /// a second for 24 hours is about 15 GiB; the default, 24 GiB, leaves half again as much
    /// for longer ids and outcomes.
    pub answers_max_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: PathBuf::from("trail"),
            audit_retention_ms: 7 * DAY_MS,
            audit_max_bytes: 16 * GIB,
            answer_horizon_ms: DAY_MS,
            answers_max_bytes: 24 * GIB,
        }
    }
}

/// A remembered answer: the first outcome of a request, for its retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The hash of the request's payload: a retry must carry the same.
    pub payload: u128,
    pub at_ms: u64,
    /// Where in the log it was decided.
    pub position: u64,
    /// The encoded outcome, opaque here.
    pub outcome: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerRow {
    pub tenant: TenantId,
    pub request_id: RequestId,
    pub answer: Answer,
}

/// What the trail holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrailState {
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// prev_hash of the oldest kept record (genesis if seq 1 is kept).
    pub anchor: [u8; 32],
    /// Inclusive seq ranges never written here (a peer can backfill them with `fill`).
    pub missing: Vec<(u64, u64)>,
    pub audit_bytes: u64,
    pub answers_bytes: u64,
    pub oldest_record_at_ms: Option<u64>,
    pub oldest_answer_at_ms: Option<u64>,
    /// The horizon actually in force: the configured one, or shorter if answers_max_bytes
    /// forced purging younger answers.
    pub answer_horizon_in_force_ms: u64,
    /// Likewise for records and audit_max_bytes.
    pub audit_retention_in_force_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub records_purged: u64,
    pub answers_purged: u64,
    pub size_forced_records: bool,
    pub size_forced_answers: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit store engine: {0}")]
    Engine(String),
    #[error("audit record seq {seq} differs from the one already stored (diverged trail)")]
    Diverged { seq: u64 },
    #[error("audit records seq {from}..={to} are missing from this node's trail (backfill them from a peer)")]
    Missing { from: u64, to: u64 },
    #[error("audit chain: {0}")]
    Chain(AuditError),
    #[error("audit store data is corrupt: {0}")]
    Corrupt(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error(
        "more than MISSING_RANGES_MAX ({MISSING_RANGES_MAX}) missing ranges in the audit trail"
    )]
    TooManyGaps,
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

/// The catalog with a handle on each bucket's keyspace (`records[i]` is `meta.records[i]`'s).
#[derive(Clone)]
pub(crate) struct Catalog {
    meta: Meta,
    records: Vec<fjall::Keyspace>,
    answers: Vec<fjall::Keyspace>,
}

pub(crate) struct Inner {
    db: fjall::Database,
    meta: fjall::Keyspace,
    config: StoreConfig,
    /// Serializes `write`, `fill` and `purge`: one writer at a time builds the next catalog.
    writer: Mutex<()>,
    /// The catalog readers see; swapped whole after each commit.
    catalog: RwLock<Arc<Catalog>>,
    /// Answers, and records with their index keys, counted in the catalog but not yet in
    /// their bucket's tables (`pending`).
    answers_held: Mutex<pending::Pending>,
    records_held: Mutex<pending::Pending>,
    /// When the oldest of them was given (u64::MAX: none), readable without the lock, which
    /// an ingestion holds for a while: the leader's look-ups skip them without waiting.
    pending_oldest_ms: std::sync::atomic::AtomicU64,
    /// Last, so it is dropped after every handle on the engine's files.
    closed: SignalOnDrop,
}

/// Tells [`StoreClosed`] waiters, when dropped, that the store's files are closed.
struct SignalOnDrop(Arc<(Mutex<bool>, Condvar)>);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        let (closed, changed) = &*self.0;
        *closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
    }
}

/// Waits for a store to close: the engine locks its directory until the last clone of the
/// [`Store`] is dropped, so a restart in the same process must wait for that.
pub struct StoreClosed(Arc<(Mutex<bool>, Condvar)>);

impl StoreClosed {
    /// Whether the store closed within `timeout`. Blocking.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (closed, changed) = &*self.0;
        let guard = closed.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = changed
            .wait_timeout_while(guard, timeout, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }
}

/// The trail on disk; cheap to clone, usable from many threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| StoreError::Engine(format!("creating {}: {e}", config.dir.display())))?;
        let db = fjall::Database::builder(&config.dir)
            .max_journaling_size(JOURNAL_BYTES_MAX)
            .open()?;
        let meta_ks = db.keyspace("meta", fjall::KeyspaceCreateOptions::default)?;
        let mut meta = match meta_ks.get(META_KEY)? {
            Some(bytes) => Meta::decode(&bytes)?,
            None => Meta {
                format: FORMAT,
                horizon_in_force_ms: config.answer_horizon_ms,
                retention_in_force_ms: config.audit_retention_ms,
                ..Meta::default()
            },
        };
        meta.horizon_in_force_ms = meta.horizon_in_force_ms.min(config.answer_horizon_ms);
        meta.retention_in_force_ms = meta.retention_in_force_ms.min(config.audit_retention_ms);
        let records = open_buckets(&db, true, &meta.records)?;
        let answers = open_buckets(&db, false, &meta.answers)?;
        drop_orphans(&db, &meta)?;
        let inner = Inner {
            db,
            meta: meta_ks,
            config,
            writer: Mutex::new(()),
            catalog: RwLock::new(Arc::new(Catalog {
                meta,
                records,
                answers,
            })),
            answers_held: Mutex::default(),
            records_held: Mutex::default(),
            pending_oldest_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            closed: SignalOnDrop(Arc::default()),
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// One atomic batch: records (ascending seq) and answers of applied log entries. Not
    /// fsynced: the Raft log is the durability; `persist` is called before a snapshot lets
    /// the log go. A record whose seq is already stored is rewritten only if identical (a
    /// replay after a restart recomputes the same records); another is `Diverged`. A record
    /// beyond last+1 leaves a missing range, recorded in the catalog and reported by `state`.
    pub fn write(&self, records: &[AuditRecord], answers: &[AnswerRow]) -> Result<(), StoreError> {
        let mut batch = AuditBatch::default();
        for record in records {
            batch.push(record);
        }
        let mut answer_batch = AnswerBatch::default();
        for row in answers {
            answer_batch.push_row(row);
        }
        self.inner.write(
            std::slice::from_ref(&batch),
            std::slice::from_ref(&answer_batch),
        )
    }

    /// [`Store::write`] of records in their binary form, as the ledger hands them over
    /// (batches in order): nothing is decoded or encoded again.
    pub fn write_batches(
        &self,
        records: &[AuditBatch],
        answers: &[AnswerBatch],
    ) -> Result<(), StoreError> {
        self.inner.write(records, answers)
    }

    /// What it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// What tells when this store (every clone of it) is closed.
    pub fn closed(&self) -> StoreClosed {
        StoreClosed(self.inner.closed.0.clone())
    }

    /// Writes the records and answers still held in memory to their tables, and fsyncs
    /// everything written so far.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.inner.ingest_held()?;
        Ok(self.inner.db.persist(fjall::PersistMode::SyncAll)?)
    }

    /// The remembered answer, if any and younger than the horizon in force at `now_ms`.
    pub fn answer(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        now_ms: u64,
    ) -> Result<Option<Answer>, StoreError> {
        self.inner.answer(tenant, request_id, now_ms, u64::MAX)
    }

    /// Like [`Store::answer`], but looks only at answers given at or before `given_by_ms`:
    /// the caller remembers younger ones itself (the ledger's memory), so answers held in
    /// memory and buckets wholly younger are not searched, and a new request id (the
    /// common case) costs no search of the newest answers.
    pub fn answer_given_by(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        now_ms: u64,
        given_by_ms: u64,
    ) -> Result<Option<Answer>, StoreError> {
        self.inner.answer(tenant, request_id, now_ms, given_by_ms)
    }

    /// Records matching the filter, oldest first, with the semantics of the ledger's
    /// `AuditLog::query` (limit 0: `AUDIT_QUERY_RECORDS_MAX`, and capped at it). If the
    /// records asked for cross a missing range: `Missing` (a gap is never silent).
    pub fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.query(filter)
    }

    pub fn state(&self) -> TrailState {
        self.inner.state()
    }

    /// Retention: age then size, for records and for answers. The anchor becomes the
    /// prev_hash of the oldest kept record, so the kept chain still verifies.
    pub fn purge(&self, now_ms: u64) -> Result<PurgeReport, StoreError> {
        self.inner.purge(now_ms)
    }

    /// Re-hashes every kept record from the anchor: the head, or the first error.
    pub fn verify(&self) -> Result<ChainHead, StoreError> {
        self.inner.verify()
    }

    /// Backfills (part of) a missing range with a peer's records, which must hash right
    /// and chain to their stored neighbours; otherwise nothing is written.
    pub fn fill(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        self.inner.fill(records)
    }

    /// Gives up the missing records before `seq`, which no peer keeps any longer (their
    /// retention purged them): as if purged here. The trail then starts at the oldest
    /// record stored, whose prev_hash is the anchor.
    pub fn purged_by_peers(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.purged_by_peers(seq)
    }

    /// Up to `max` (at most `ANSWERS_PAGE_MAX`) answers in key order after the cursor
    /// `after`, and the cursor of the next page (None: no more).
    pub fn answers_page(
        &self,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<(Vec<AnswerRow>, Option<Vec<u8>>), StoreError> {
        self.inner.answers_page(after, max)
    }
}

impl Inner {
    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub(crate) fn set_catalog(&self, catalog: Catalog) {
        let catalog = Arc::new(catalog);
        match self.catalog.write() {
            Ok(mut guard) => *guard = catalog,
            Err(poisoned) => *poisoned.into_inner() = catalog,
        }
    }

    /// The writer's turn; a panic of an earlier writer left nothing half-applied (the
    /// catalog is swapped only after a commit), so a poisoned lock is taken as it is.
    pub(crate) fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn open_bucket(
        &self,
        records: bool,
        id: u64,
    ) -> Result<fjall::Keyspace, StoreError> {
        Ok(self.db.keyspace(
            &bucket_name(records, id),
            fjall::KeyspaceCreateOptions::default,
        )?)
    }
}

fn open_buckets(
    db: &fjall::Database,
    records: bool,
    buckets: &[layout::BucketMeta],
) -> Result<Vec<fjall::Keyspace>, StoreError> {
    buckets
        .iter()
        .map(|b| {
            let name = bucket_name(records, b.id);
            if !db.keyspace_exists(&name) {
                return Err(StoreError::Corrupt(format!("bucket {name} is gone")));
            }
            Ok(db.keyspace(&name, fjall::KeyspaceCreateOptions::default)?)
        })
        .collect()
}

/// Deletes buckets the catalog does not name: created by a batch that never committed, or
/// dropped by a purge whose deletion a crash interrupted.
fn drop_orphans(db: &fjall::Database, meta: &Meta) -> Result<(), StoreError> {
    let known: std::collections::HashSet<String> = meta
        .records
        .iter()
        .map(|b| bucket_name(true, b.id))
        .chain(meta.answers.iter().map(|b| bucket_name(false, b.id)))
        .collect();
    for name in db.list_keyspace_names() {
        let name: &str = &name;
        if name != "meta" && !known.contains(name) {
            let ks = db.keyspace(name, fjall::KeyspaceCreateOptions::default)?;
            db.delete_keyspace(ks)?;
        }
    }
    Ok(())
}
