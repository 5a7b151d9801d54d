//! The durable Raft log: entries, vote, committed and last purged log id, in one redb file.
//!
//! It must never acknowledge a write (return from `save_vote`, call the `append` callback)
//! before the redb transaction holding it has committed with an fsync: Raft's safety rests on it.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Log entries by index, each a postcard-encoded `Entry`.
const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The few values that are not entries, each postcard-encoded under one of the keys below.
const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const META_KEY_VOTE: &str = "vote";
const META_KEY_COMMITTED: &str = "committed";
const META_KEY_LAST_PURGED: &str = "last_purged_log_id";

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
}

/// The Raft log store. Clones share one database: openraft's replication tasks read through
/// clones while the Raft core writes through the original.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
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
        Ok(LogStore { db: Arc::new(db) })
    }

    /// Runs `op` on a blocking thread: redb reads and fsyncs block, and must not stall a
    /// runtime worker. `to_storage_error` says which Raft state the failure concerns.
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
    write_meta_with(db, key, value, Durability::Immediate)
}

/// Writes one meta value (or removes it) in its own transaction of the given durability.
fn write_meta_with<T: Serialize>(
    db: &Database,
    key: &'static str,
    value: Option<&T>,
    durability: Durability,
) -> Result<(), Fault> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    {
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
    }
    txn.commit()?;
    Ok(())
}

/// Encodes entries on the calling task, so the blocking thread holds redb's write lock only
/// for the I/O.
fn encode_entries(entries: impl IntoIterator<Item = Entry>) -> Result<Vec<(u64, Vec<u8>)>, Fault> {
    let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
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
            encode(&entry, || format!("the log entry at index {index}"))?,
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
        self.blocking(StorageIOError::read_logs, move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOG_TABLE)?;
            let mut entries = Vec::new();
            for row in table.range(bounds)? {
                let (key, value) = row?;
                entries.push(decode_entry(key.value(), value.value())?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.blocking(StorageIOError::read_logs, |db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META_TABLE)?;
            let last_purged_log_id: Option<LogId<NodeId>> = get_meta(&meta, META_KEY_LAST_PURGED)?;
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
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.blocking(StorageIOError::write_vote, move |db| {
            write_meta(db, META_KEY_VOTE, Some(&vote))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.blocking(StorageIOError::read_vote, |db| read_meta(db, META_KEY_VOTE))
            .await
    }

    /// Saved without an fsync of its own: openraft calls this before every apply, and a
    /// durable write here would cost each Raft round a second fsync on every node. Losing it
    /// in a crash is safe (openraft's `save_committed` is optional): a restarted node then
    /// applies from the older committed id and learns the rest from the leader. It becomes
    /// durable with the next appended entry's transaction anyway.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.blocking(StorageIOError::write, move |db| {
            write_meta_with(db, META_KEY_COMMITTED, committed.as_ref(), Durability::None)
        })
        .await
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
        let result = match encode_entries(entries) {
            // All entries of one call share one transaction, so one fsync: this is how
            // concurrent proposals batched by openraft share the cost of durability.
            Ok(rows) => {
                self.blocking(StorageIOError::write_logs, move |db| {
                    let txn = begin_durable_write(db)?;
                    {
                        let mut table = txn.open_table(LOG_TABLE)?;
                        for (index, bytes) in &rows {
                            table.insert(index, bytes.as_slice())?;
                        }
                    }
                    txn.commit()?;
                    Ok(())
                })
                .await
            }
            Err(fault) => Err(StorageIOError::write_logs(AnyError::new(&fault)).into()),
        };
        // Only now, after the commit returned, may openraft count these entries as persisted.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(error) => callback.log_io_completed(Err(io::Error::other(error.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(StorageIOError::write_logs, move |db| {
            let txn = begin_durable_write(db)?;
            {
                let mut table = txn.open_table(LOG_TABLE)?;
                table.retain_in(log_id.index.., |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(StorageIOError::write_logs, move |db| {
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

    #[test]
    fn open_names_the_path_it_could_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("raft.redb");
        let error = LogStore::open(&path).err().expect("open must fail");
        assert!(error.to_string().contains("missing-dir"), "{error}");
    }
}
