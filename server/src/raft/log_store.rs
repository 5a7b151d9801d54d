//! The durable Raft log: entries, vote, committed and last purged log id, in one redb file.
//!
//! It must never acknowledge a write (return from `save_vote`, call the `append` callback)
//! before the redb transaction holding it has committed with an fsync: Raft's safety rests on it.
//!
//! `append` does not wait for that fsync (openraft's contract: return once the entries are
//! readable, call the callback once they are durable). The entries wait in `unflushed`,
//! where readers find them, while one writer thread commits every write in call order. So a
//! leader sends an entry to its followers while its own fsync runs, as Raft allows, and a
//! round costs about one fsync instead of the leader's and then a follower's.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Log entries by index, each a postcard-encoded `Entry`.
const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The few values that are not entries, each postcard-encoded under one of the keys below.
const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const META_KEY_VOTE: &str = "vote";
const META_KEY_COMMITTED: &str = "committed";
const META_KEY_LAST_PURGED: &str = "last_purged_log_id";
/// Writes queued for the writer thread; `append` waits for room beyond it (openraft keeps
/// few appends outstanding: the proposer bounds entries in flight).
const WRITES_QUEUED_MAX: usize = 256;

/// Why the log file could not be opened; the path tells the operator which file to look at.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("cannot open the Raft log file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot create the Raft log tables in {path}")]
    CreateTables {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("cannot start the writer thread of the Raft log {path}")]
    Writer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The Raft log store. Clones share one database, one writer and the unflushed entries:
/// openraft's replication tasks read through clones while the Raft core writes through the
/// original.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Appended entries whose transaction has not committed yet, by index. Readers look
    /// here first; the writer removes an entry once it is durable.
    unflushed: Arc<Mutex<BTreeMap<u64, Entry>>>,
    /// The newest committed log id openraft gave `save_committed`, not yet written; the
    /// next write transaction carries it.
    committed_unsaved: Arc<Mutex<Option<Option<LogId<NodeId>>>>>,
    writer: Arc<Writer>,
}

/// A write for the writer thread: runs on the database, in the order writes were queued.
type Write = Box<dyn FnOnce(&Database) + Send>;

/// The thread that runs every write, one after another. Dropping the last handle closes the
/// queue and joins the thread once the queued writes are done, so the database file is
/// closed when the store is (a node restarted in the same process reopens it at once).
struct Writer {
    queue: Option<mpsc::Sender<Write>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(db: Arc<Database>) -> io::Result<Writer> {
        let (queue, mut writes) = mpsc::channel::<Write>(WRITES_QUEUED_MAX);
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                while let Some(write) = writes.blocking_recv() {
                    write(&db);
                }
            })?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl LogStore {
    /// Opens the log at `path`, creating the file and its tables if they do not exist.
    pub fn open(path: &Path) -> Result<LogStore, LogStoreError> {
        let db = Database::create(path).map_err(|source| LogStoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // Creating the tables up front lets every later read transaction open them
        // unconditionally: a missing table then means a damaged file, not a fresh one.
        let create_tables = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(LOG_TABLE)?;
            txn.open_table(META_TABLE)?;
            txn.commit()?;
            Ok(())
        };
        create_tables().map_err(|source| LogStoreError::CreateTables {
            path: path.to_path_buf(),
            source,
        })?;
        let db = Arc::new(db);
        let writer = Writer::start(Arc::clone(&db)).map_err(|source| LogStoreError::Writer {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(LogStore {
            db,
            unflushed: Arc::default(),
            committed_unsaved: Arc::default(),
            writer: Arc::new(writer),
        })
    }

    /// Runs `op` on a blocking thread: redb reads block, and must not stall a runtime
    /// worker. `to_storage_error` says which Raft state the failure concerns.
    async fn blocking<T, F>(
        &self,
        to_storage_error: fn(AnyError) -> StorageIOError<NodeId>,
        op: F,
    ) -> Result<T, StorageError<NodeId>>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Fault> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let joined = tokio::task::spawn_blocking(move || op(&db)).await;
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(fault)) => Err(to_storage_error(AnyError::new(&fault)).into()),
            Err(join_error) => Err(to_storage_error(AnyError::new(&join_error)).into()),
        }
    }

    /// Queues `write` behind every earlier write; waits only for room in the queue.
    async fn queue(&self, write: Write) -> Result<(), Fault> {
        let queue = self.writer.queue.as_ref().ok_or(Fault::WriterGone)?;
        queue.send(write).await.map_err(|_| Fault::WriterGone)
    }

    /// Runs `op` on the writer thread, after every earlier write, and waits for it.
    async fn write<T, F>(
        &self,
        to_storage_error: fn(AnyError) -> StorageIOError<NodeId>,
        op: F,
    ) -> Result<T, StorageError<NodeId>>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Fault> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let queued = self
            .queue(Box::new(move |db| {
                let _ = done.send(op(db));
            }))
            .await;
        let result = match queued {
            Ok(()) => result.await.unwrap_or(Err(Fault::WriterGone)),
            Err(fault) => Err(fault),
        };
        result.map_err(|fault| to_storage_error(AnyError::new(&fault)).into())
    }

    fn unflushed(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        // The map holds plain data and no code panics while holding it; a poisoned lock
        // still guards a consistent map.
        self.unflushed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What went wrong below openraft; it only ever reaches openraft as an `AnyError` source.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error("cannot encode {record}")]
    Encode {
        record: String,
        #[source]
        source: postcard::Error,
    },
    #[error("{record} does not decode: the log file is damaged or was written by another version")]
    Decode {
        record: String,
        #[source]
        source: postcard::Error,
    },
    #[error("the entry stored under index {index_key} claims index {index_entry}: the log file is damaged")]
    IndexMismatch { index_key: u64, index_entry: u64 },
    #[error("the log's writer thread has stopped")]
    WriterGone,
}

/// redb returns one error type per operation; all of them fold into `redb::Error`.
macro_rules! fault_from_redb {
    ($($error:ty),+) => {
        $(impl From<$error> for Fault {
            fn from(error: $error) -> Self {
                Fault::Redb(error.into())
            }
        })+
    };
}
fault_from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn encode<T: Serialize>(value: &T, record: impl FnOnce() -> String) -> Result<Vec<u8>, Fault> {
    postcard::to_stdvec(value).map_err(|source| Fault::Encode {
        record: record(),
        source,
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8], record: impl FnOnce() -> String) -> Result<T, Fault> {
    postcard::from_bytes(bytes).map_err(|source| Fault::Decode {
        record: record(),
        source,
    })
}

/// Decodes the entry stored under `index`, and checks it is the entry that belongs there.
fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, Fault> {
    let entry: Entry = decode(bytes, || format!("the log entry at index {index}"))?;
    if entry.log_id.index != index {
        return Err(Fault::IndexMismatch {
            index_key: index,
            index_entry: entry.log_id.index,
        });
    }
    Ok(entry)
}

fn get_meta<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, Fault> {
    let Some(guard) = table.get(key)? else {
        return Ok(None);
    };
    decode(guard.value(), || format!("the stored {key}")).map(Some)
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &'static str) -> Result<Option<T>, Fault> {
    let txn = db.begin_read()?;
    get_meta(&txn.open_table(META_TABLE)?, key)
}

/// Writes one meta value (or removes it, for `None`) in its own durable transaction.
fn write_meta<T: Serialize>(
    db: &Database,
    key: &'static str,
    value: Option<&T>,
) -> Result<(), Fault> {
    let txn = begin_durable_write(db)?;
    put_meta(&txn, key, value)?;
    txn.commit()?;
    Ok(())
}

/// Puts one meta value (or removes it, for `None`) in `txn`.
fn put_meta<T: Serialize>(
    txn: &redb::WriteTransaction,
    key: &'static str,
    value: Option<&T>,
) -> Result<(), Fault> {
    let mut table = txn.open_table(META_TABLE)?;
    match value {
        Some(value) => {
            let bytes = encode(value, || format!("the {key}"))?;
            table.insert(key, bytes.as_slice())?;
        }
        None => {
            table.remove(key)?;
        }
    }
    Ok(())
}

/// Puts the committed log id saved since the last write, if any, in `txn`.
fn put_committed(
    txn: &redb::WriteTransaction,
    committed_unsaved: &Mutex<Option<Option<LogId<NodeId>>>>,
) -> Result<(), Fault> {
    let unsaved = committed_unsaved
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    match unsaved {
        Some(committed) => put_meta(txn, META_KEY_COMMITTED, committed.as_ref()),
        None => Ok(()),
    }
}

/// Encodes entries on the calling task, so the writer thread holds redb's write lock only
/// for the I/O.
fn encode_entries(entries: &[Entry]) -> Result<Vec<(u64, Vec<u8>)>, Fault> {
    let mut rows: Vec<(u64, Vec<u8>)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let index = entry.log_id.index;
        if let Some((index_previous, _)) = rows.last() {
            debug_assert_eq!(
                index_previous.checked_add(1),
                Some(index),
                "appended entries leave a hole"
            );
        }
        rows.push((
            index,
            encode(entry, || format!("the log entry at index {index}"))?,
        ));
    }
    Ok(rows)
}

/// A write transaction whose commit returns only once the data is on disk. redb's default is
/// already `Immediate`; saying it here keeps the promise from depending on a default.
fn begin_durable_write(db: &Database) -> Result<redb::WriteTransaction, Fault> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        // Unflushed entries first: the writer removes one only after its commit, so an entry
        // missed here is already in the file when the file is read below.
        let unflushed: Vec<Entry> = self
            .unflushed()
            .range(bounds)
            .map(|(_, e)| e.clone())
            .collect();
        let first_unflushed = unflushed.first().map(|e| e.log_id.index);
        let mut entries = self
            .blocking(StorageIOError::read_logs, move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(LOG_TABLE)?;
                let mut entries = Vec::new();
                for row in table.range(bounds)? {
                    let (key, value) = row?;
                    // The unflushed entries are the newer ones from their first index on.
                    if first_unflushed.is_some_and(|first| key.value() >= first) {
                        break;
                    }
                    entries.push(decode_entry(key.value(), value.value())?);
                }
                Ok(entries)
            })
            .await?;
        entries.extend(unflushed);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_unflushed = self.unflushed().values().next_back().map(|e| e.log_id);
        let state = self
            .blocking(StorageIOError::read_logs, |db| {
                let txn = db.begin_read()?;
                let meta = txn.open_table(META_TABLE)?;
                let last_purged_log_id: Option<LogId<NodeId>> =
                    get_meta(&meta, META_KEY_LAST_PURGED)?;
                let log = txn.open_table(LOG_TABLE)?;
                let last_log_id = match log.last()? {
                    Some((key, value)) => Some(decode_entry(key.value(), value.value())?.log_id),
                    // An empty log still has a last log id if it was purged: Raft must not
                    // forget how far the log reached.
                    None => last_purged_log_id,
                };
                Ok(LogState {
                    last_purged_log_id,
                    last_log_id,
                })
            })
            .await?;
        Ok(LogState {
            last_log_id: last_unflushed.or(state.last_log_id),
            ..state
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.write(StorageIOError::write_vote, move |db| {
            write_meta(db, META_KEY_VOTE, Some(&vote))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.blocking(StorageIOError::read_vote, |db| read_meta(db, META_KEY_VOTE))
            .await
    }

    /// Kept in memory until the next write transaction (an append, a truncate or a purge)
    /// carries it: openraft calls this before every apply, and a transaction of its own
    /// would cost every node a redb commit per Raft round. Losing it in a crash is safe
    /// (openraft's `save_committed` is optional): a restarted node then applies from the older
    /// committed id and learns the rest from the leader.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        *self
            .committed_unsaved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.blocking(StorageIOError::read, |db| read_meta(db, META_KEY_COMMITTED))
            .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let rows = encode_entries(&entries)
            .map_err(|fault| StorageIOError::write_logs(AnyError::new(&fault)))?;
        let written: Vec<LogId<NodeId>> = entries.iter().map(|e| e.log_id).collect();
        // Readable from now on, durable once the writer has committed them.
        self.unflushed()
            .extend(entries.into_iter().map(|e| (e.log_id.index, e)));
        let unflushed = Arc::clone(&self.unflushed);
        let committed_unsaved = Arc::clone(&self.committed_unsaved);
        let write: Write = Box::new(move |db| {
            // All entries of one call share one transaction, so one fsync: this is how
            // concurrent proposals batched by openraft share the cost of durability.
            let result = (|| -> Result<(), Fault> {
                let txn = begin_durable_write(db)?;
                {
                    let mut table = txn.open_table(LOG_TABLE)?;
                    for (index, bytes) in &rows {
                        table.insert(index, bytes.as_slice())?;
                    }
                }
                put_committed(&txn, &committed_unsaved)?;
                txn.commit()?;
                Ok(())
            })();
            if result.is_ok() {
                // Only entries still as written: a truncate and a new append may have
                // replaced some meanwhile, and those are not durable yet.
                let mut unflushed = unflushed.lock().unwrap_or_else(|p| p.into_inner());
                for log_id in &written {
                    if unflushed.get(&log_id.index).map(|e| e.log_id) == Some(*log_id) {
                        unflushed.remove(&log_id.index);
                    }
                }
            }
            // Only now, after the commit returned, may openraft count these as persisted.
            callback.log_io_completed(result.map_err(|fault| io::Error::other(fault.to_string())));
        });
        self.queue(write)
            .await
            .map_err(|fault| StorageIOError::write_logs(AnyError::new(&fault)).into())
    }

    /// Waits for every earlier write, so no queued append can write a truncated entry back.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.unflushed().retain(|&index, _| index < log_id.index);
        let committed_unsaved = Arc::clone(&self.committed_unsaved);
        self.write(StorageIOError::write_logs, move |db| {
            let txn = begin_durable_write(db)?;
            {
                let mut table = txn.open_table(LOG_TABLE)?;
                table.retain_in(log_id.index.., |_, _| false)?;
            }
            put_committed(&txn, &committed_unsaved)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let committed_unsaved = Arc::clone(&self.committed_unsaved);
        self.write(StorageIOError::write_logs, move |db| {
            let txn = begin_durable_write(db)?;
            {
                // The purge point and the deletion commit together: after a crash the log
                // never claims a purge point its entries disagree with.
                let mut meta = txn.open_table(META_TABLE)?;
                let previous: Option<LogId<NodeId>> = get_meta(&meta, META_KEY_LAST_PURGED)?;
                debug_assert!(previous <= Some(log_id), "purge moves backwards");
                let bytes = encode(&log_id, || "the last purged log id".to_owned())?;
                meta.insert(META_KEY_LAST_PURGED, bytes.as_slice())?;
                let mut log = txn.open_table(LOG_TABLE)?;
                log.retain_in(..=log_id.index, |_, _| false)?;
            }
            put_committed(&txn, &committed_unsaved)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn undecodable_entry_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut store = LogStore::open(&path).unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(LOG_TABLE).unwrap();
                table.insert(1, [0xff_u8; 3].as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }

        let error = store.try_get_log_entries(0..10).await.unwrap_err();
        assert!(error.to_string().contains("index 1"), "{error}");
        assert!(store.get_log_state().await.is_err());
    }

    #[tokio::test]
    async fn entry_under_the_wrong_index_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(&dir.path().join("raft.redb")).unwrap();
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), 7),
            payload: openraft::EntryPayload::Blank,
        };
        let bytes = postcard::to_stdvec(&entry).unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(LOG_TABLE).unwrap();
                table.insert(3, bytes.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }

        let error = store.try_get_log_entries(..).await.unwrap_err();
        assert!(error.to_string().contains("claims index 7"), "{error}");
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 0), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn entries_in_file(store: &LogStore) -> Vec<u64> {
        let txn = store.db.begin_read().unwrap();
        let table = txn.open_table(LOG_TABLE).unwrap();
        let keys = table.iter().unwrap().map(|row| row.unwrap().0.value());
        keys.collect()
    }

    /// Appended entries are readable before their fsync, and a truncate waits for the
    /// queued append, so the truncated entries never come back from the file.
    #[tokio::test]
    async fn appends_are_readable_before_durable_and_truncate_keeps_order() {
        use openraft::storage::RaftLogStorageExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut store = LogStore::open(&path).unwrap();
        // Hold the writer until the test lets it go.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        store
            .queue(Box::new(move |_| {
                let _ = gate.recv();
            }))
            .await
            .unwrap();

        let mut appender = store.clone();
        let first = tokio::spawn(async move {
            appender
                .blocking_append([entry(1, 1), entry(1, 2), entry(1, 3)])
                .await
        });
        while store
            .get_log_state()
            .await
            .unwrap()
            .last_log_id
            .map(|id| id.index)
            != Some(3)
        {
            tokio::task::yield_now().await;
        }
        let mut reader = store.get_log_reader().await;
        let read = reader.try_get_log_entries(1..4).await.unwrap();
        assert_eq!(read, vec![entry(1, 1), entry(1, 2), entry(1, 3)]);
        assert!(entries_in_file(&store).is_empty(), "nothing is durable yet");
        assert!(!first.is_finished(), "no callback before the commit");

        let mut truncater = store.clone();
        let truncate = tokio::spawn(async move { truncater.truncate(entry(1, 2).log_id).await });
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        truncate.await.unwrap().unwrap();
        assert_eq!(entries_in_file(&store), vec![1]);
        store
            .blocking_append([entry(2, 2), entry(2, 3)])
            .await
            .unwrap();
        drop((store, reader));

        let mut reopened = LogStore::open(&path).unwrap();
        let read = reopened.try_get_log_entries(..).await.unwrap();
        assert_eq!(read, vec![entry(1, 1), entry(2, 2), entry(2, 3)]);
        assert!(reopened.unflushed().is_empty());
    }

    #[test]
    fn open_names_the_path_it_could_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("raft.redb");
        let error = LogStore::open(&path).err().expect("open must fail");
        assert!(error.to_string().contains("missing-dir"), "{error}");
    }
}
