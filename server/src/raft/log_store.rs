//! The durable Raft log: entries, vote, committed and purge point, in a write-ahead log of
//! chunk files (`raft-log`, the WAL that openraft's author wrote for it).
//!
//! Every write goes to the WAL's in-memory buffer on the caller's task and then to its flush
//! thread, which writes and `fdatasync`s in order. The log never acknowledges a write (returns
//! from `save_vote`, calls the `append` callback) before the flush thread has synced it:
//! Raft's safety rests on it. The committed log id is written without a sync of its own: it
//! reaches the file at once and becomes durable with the next synced write.
//!
//! Reads are served from the WAL's payload cache (every entry not yet in a closed, synced
//! chunk, and the newest closed ones up to `CACHE_BYTES_MAX`); older entries are read back
//! with `pread`, which only a follower far behind needs.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::codeq::{Decode, Encode};
use raft_log::RaftLog;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use super::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Largest chunk file. Only closed chunks can be deleted after a purge or evicted from the
/// payload cache, so this bounds both the disk kept beyond the purge point and the memory
/// held by entries of the open chunk.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Entry payloads of closed chunks kept in memory for replication, at most.
pub const CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Entries kept in the payload cache, at most (beyond those of the open chunk).
pub const CACHE_ENTRIES_MAX: usize = 65_536;
/// Bytes queued for the flush thread before a writer waits for it.
pub const FLUSH_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Buffer used to replay chunk files when the log is opened.
const REPLAY_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// The encoding of what a data directory holds (log entries, vote, snapshots), written in
/// `DATA_FORMAT_FILE` when the directory is first used. 2: members carry a peer address
/// (`raft::Member`); a log of format 1 would not decode, or decode wrongly, so it is refused.
/// 3: reserves and records carry a session. 4: the audit trail and the remembered answers
/// live in `trail/`; a directory without it would miss them silently, so it is refused.
pub const DATA_FORMAT_VERSION: u32 = 4;
/// The file in a node's data directory that names its format.
pub const DATA_FORMAT_FILE: &str = "FORMAT";

/// Refuses a data directory written in another format, and marks a new one as this build's.
/// A directory that holds a Raft log but no marker was written before markers existed
/// (format 1).
pub fn check_data_format(data_dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let marker = data_dir.join(DATA_FORMAT_FILE);
    let expected = format!("tollgate-data {DATA_FORMAT_VERSION}\n");
    match std::fs::read_to_string(&marker) {
        Ok(text) if text == expected => Ok(()),
        Ok(text) => anyhow::bail!(
            "{} says {:?}: this build reads `tollgate-data {DATA_FORMAT_VERSION}` only; \
             start this node on an empty data directory and add it back as a learner",
            marker.display(),
            text.chars().take(40).collect::<String>().trim_end()
        ),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let log_dir = data_dir.join("raft-log");
            let has_log = std::fs::read_dir(&log_dir).is_ok_and(|mut dir| dir.next().is_some());
            anyhow::ensure!(
                !has_log,
                "{} holds a Raft log of data format 1 (members without a peer address); this \
                 build reads format {DATA_FORMAT_VERSION} only: start this node on an empty \
                 data directory and add it back as a learner",
                data_dir.display()
            );
            std::fs::write(&marker, expected)
                .with_context(|| format!("writing {}", marker.display()))
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", marker.display())),
    }
}

/// Why the log could not be opened; the path tells the operator which directory to look at.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("cannot open the Raft log in {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The Raft log store. Clones share one log: openraft's replication tasks read through clones
/// while the Raft core writes through the original. The lock is held only to touch memory
/// (and, for entries no longer cached, to `pread` them), never across an fsync.
#[derive(Clone)]
pub struct LogStore {
    log: Arc<Mutex<RaftLog<WalTypes>>>,
}

/// The WAL's types: every value is stored as its postcard encoding.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalTypes;

impl raft_log::Types for WalTypes {
    type LogId = Stored<LogId<NodeId>>;
    /// The postcard encoding of the entry's payload: the cache then counts exact bytes.
    type LogPayload = Vec<u8>;
    type Vote = Stored<Vote<NodeId>>;
    type Callback = Flushed;
    type UserData = Stored<()>;

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.0.index
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        payload.len() as u64
    }
}

/// A value stored in the WAL as its length-prefixed postcard encoding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stored<T>(pub T);

impl<T: Serialize> Encode for Stored<T> {
    fn encode<W: io::Write>(&self, w: W) -> Result<usize, io::Error> {
        postcard::to_stdvec(&self.0)
            .map_err(io::Error::other)?
            .encode(w)
    }
}

impl<T: DeserializeOwned> Decode for Stored<T> {
    fn decode<R: io::Read>(r: R) -> Result<Self, io::Error> {
        let bytes = Vec::<u8>::decode(r)?;
        postcard::from_bytes(&bytes)
            .map(Stored)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Who is told when a write is on disk, and when the write was handed to the flush thread.
pub struct Flushed {
    notify: Notify,
    requested: Instant,
}

enum Notify {
    /// openraft, for appended entries.
    Raft(LogFlushed<TypeConfig>),
    /// A task of ours waiting for its write (vote, truncation, purge).
    Waiter(oneshot::Sender<io::Result<()>>),
}

impl Flushed {
    fn new(notify: Notify) -> Flushed {
        Flushed {
            notify,
            requested: Instant::now(),
        }
    }
}

impl raft_log::Callback for Flushed {
    /// Runs on the flush thread once the write is synced (or failed).
    fn send(self, result: Result<(), io::Error>) {
        metrics::histogram!("tollgate_raft_log_sync_seconds").record(self.requested.elapsed());
        match self.notify {
            Notify::Raft(callback) => callback.log_io_completed(result),
            Notify::Waiter(sender) => {
                let _ = sender.send(result);
            }
        }
    }
}

impl LogStore {
    /// Opens the log in directory `path`, creating it if it does not exist, and replays it.
    pub fn open(path: &Path) -> Result<LogStore, LogStoreError> {
        let error = |source| LogStoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(error)?;
        let dir = path
            .to_str()
            .ok_or_else(|| error(io::Error::other("the path is not UTF-8")))?;
        let mut config = raft_log::Config::new(dir);
        config.wal.chunk_max_size = Some(CHUNK_BYTES_MAX);
        config.wal.read_buffer_size = Some(REPLAY_BUFFER_BYTES);
        config.wal.flush_queue_max_bytes = Some(FLUSH_QUEUE_BYTES_MAX);
        // openraft waits for each append's sync before it sends the next, so waiting for more
        // writes to share a sync would only add latency.
        config.wal.flush_batch_wait = Some(Duration::ZERO);
        config.log_cache_capacity = Some(CACHE_BYTES_MAX);
        config.log_cache_max_items = Some(CACHE_ENTRIES_MAX);
        let log = RaftLog::open(Arc::new(config)).map_err(error)?;
        Ok(LogStore {
            log: Arc::new(Mutex::new(log)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RaftLog<WalTypes>> {
        // A panic aborts the node (see `main`), so a poisoned lock is never observed in
        // service; tests may still see one, and the log itself stays consistent.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes with `write`, then waits until the flush thread has synced it.
    async fn write_synced(
        &self,
        to_storage_error: fn(AnyError) -> StorageIOError<NodeId>,
        write: impl FnOnce(&mut RaftLog<WalTypes>) -> io::Result<()>,
    ) -> Result<(), StorageError<NodeId>> {
        let (sender, synced) = oneshot::channel();
        let sent = {
            let mut log = self.lock();
            write(&mut log)
                .and_then(|()| log.flush(true, Some(Flushed::new(Notify::Waiter(sender)))))
        };
        let result = match sent {
            Ok(()) => synced
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the log's flush thread stopped"))),
            Err(error) => Err(error),
        };
        result.map_err(|error| to_storage_error(AnyError::new(&error)).into())
    }
}

fn decode_entry(log_id: Stored<LogId<NodeId>>, payload: &[u8]) -> Result<Entry, io::Error> {
    let payload: EntryPayload<TypeConfig> = postcard::from_bytes(payload).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the log entry at index {} does not decode: {e}",
                log_id.0.index
            ),
        )
    })?;
    Ok(Entry {
        log_id: log_id.0,
        payload,
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        let log = self.lock();
        log.read(from, to)
            .map(|read| read.and_then(|(log_id, payload)| decode_entry(log_id, &payload)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let log = self.lock();
        let state = log.log_state();
        Ok(LogState {
            last_purged_log_id: state.purged().map(|id| id.0),
            // The WAL keeps `last` at the purge point once every entry is purged: Raft must
            // not forget how far the log reached.
            last_log_id: state.last().map(|id| id.0),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.write_synced(StorageIOError::write_vote, |log| {
            log.save_vote(Stored(vote)).map(drop)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().log_state().vote().map(|vote| vote.0))
    }

    /// Written without a sync of its own: openraft calls this before every apply, and a sync
    /// here would cost each Raft round a second fsync on every node. The record reaches the
    /// file at once (it survives the process), and the disk with the next synced write.
    /// Losing it in a crash of the machine is safe (openraft's `save_committed` is optional):
    /// a restarted node then applies from the older committed id and learns the rest from the
    /// leader.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let Some(committed) = committed.map(Stored) else {
            return Ok(());
        };
        let mut log = self.lock();
        // The WAL refuses a committed id beyond its last entry or behind the one it holds.
        // Neither happens in a running node, but saving it is optional: keep what is stored.
        let state = log.log_state();
        if Some(&committed) > state.last() || Some(&committed) <= state.committed() {
            return Ok(());
        }
        log.commit(committed)
            .and_then(|_| log.flush(false, None))
            .map_err(|e| StorageIOError::write(AnyError::new(&e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().log_state().committed().map(|id| id.0))
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
        // Encoded before the lock is taken, so readers wait only for the copy into the WAL.
        let rows = entries
            .into_iter()
            .map(|entry| {
                postcard::to_stdvec(&entry.payload)
                    .map(|payload| (Stored(entry.log_id), payload))
                    .map_err(io::Error::other)
            })
            .collect::<Result<Vec<_>, _>>();
        // All entries of one call share one sync: this is how concurrent proposals batched by
        // openraft share the cost of durability. The callback runs once they are on disk.
        let result = rows.and_then(|rows| {
            let mut log = self.lock();
            // Entries at or below the purge point are applied and gone; openraft never sends
            // one, but its storage suite does after purging a hole, and the WAL would refuse
            // it as a log id moving backwards. Storing it would change nothing readable.
            let purged = log.log_state().purged().map(|id| id.0.index);
            log.append(
                rows.into_iter()
                    .filter(|(log_id, _)| purged.is_none_or(|purged| log_id.0.index > purged)),
            )?;
            log.flush(true, Some(Flushed::new(Notify::Raft(callback))))
        });
        result.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_synced(StorageIOError::write_logs, |log| {
            log.truncate(log_id.index).map(drop)
        })
        .await
    }

    /// The purge record is synced before any chunk file it empties is deleted (the WAL
    /// orders the deletion behind the sync), so after a crash the log never claims a purge
    /// point its entries disagree with.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_synced(StorageIOError::write_logs, |log| {
            log.purge(Stored(log_id)).map(drop)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_data_format(dir.path()).unwrap();
        check_data_format(dir.path()).expect("this build's marker is accepted");
        let marker = dir.path().join(DATA_FORMAT_FILE);
        std::fs::write(&marker, "tollgate-data 1\n").unwrap();
        let error = check_data_format(dir.path()).unwrap_err().to_string();
        assert!(error.contains("tollgate-data 1"), "{error}");

        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join("raft-log")).unwrap();
        std::fs::write(old.path().join("raft-log/chunk"), b"x").unwrap();
        let error = check_data_format(old.path()).unwrap_err().to_string();
        assert!(error.contains("data format 1"), "{error}");
        assert!(!old.path().join(DATA_FORMAT_FILE).exists());
    }

    #[test]
    fn open_names_the_path_it_could_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let path = blocker.join("raft-log");
        let error = LogStore::open(&path).err().expect("open must fail");
        assert!(error.to_string().contains("a-file"), "{error}");
    }

    #[test]
    fn a_damaged_payload_is_an_error_not_a_panic() {
        let log_id = Stored(LogId::new(openraft::CommittedLeaderId::new(1, 0), 7));
        let error = decode_entry(log_id, &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(error.to_string().contains("index 7"), "{error}");
    }
}
