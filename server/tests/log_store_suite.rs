//! The log store against openraft's storage suite, and across a restart.
//!
//! The suite also needs a state machine; the real one lives in `raft::state_machine`. The one
//! here only records what the suite checks (last applied, membership, snapshot), in memory.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogState, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use tempfile::TempDir;
use tollgate_server::raft::log_store::LogStore;
use tollgate_server::raft::{Batch, BatchOutcome, Member, NodeId, TypeConfig};

#[test]
fn log_store_passes_openraft_storage_suite() {
    // `test_all` runs each case on its own runtime, so this is a plain #[test].
    Suite::test_all(TempStoreBuilder).expect("a storage call failed during the suite");
}

#[tokio::test]
async fn entries_vote_committed_and_purge_point_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-log");
    let entries: Vec<Entry<TypeConfig>> = vec![
        entry(1, 1, EntryPayload::Blank),
        entry(
            1,
            2,
            EntryPayload::Membership(Membership::new(vec![[1, 2, 3].into()], None)),
        ),
        entry(
            1,
            3,
            EntryPayload::Normal(Batch {
                at_ms: 1_700_000_000_000,
                commands: Vec::new(),
            }),
        ),
        entry(2, 4, EntryPayload::Blank),
    ];
    let vote = Vote::new_committed(2, 1);
    let committed = Some(log_id(1, 3));

    {
        let mut store = LogStore::open(&path).unwrap();
        store.blocking_append(entries.clone()).await.unwrap();
        store.save_vote(&vote).await.unwrap();
        store.save_committed(committed).await.unwrap();
        store.purge(log_id(1, 1)).await.unwrap();
    }

    let mut store = LogStore::open(&path).unwrap();
    assert_eq!(
        store.try_get_log_entries(..).await.unwrap(),
        entries[1..].to_vec()
    );
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    assert_eq!(store.read_committed().await.unwrap(), committed);
    assert_eq!(
        store.get_log_state().await.unwrap(),
        LogState {
            last_purged_log_id: Some(log_id(1, 1)),
            last_log_id: Some(log_id(2, 4)),
        }
    );
}

#[tokio::test]
async fn reader_clone_sees_entries_once_append_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(&dir.path().join("raft-log")).unwrap();
    let mut reader = store.get_log_reader().await;

    store
        .blocking_append([entry(1, 1, EntryPayload::Blank)])
        .await
        .unwrap();

    let read = reader.try_get_log_entries(1..2).await.unwrap();
    assert_eq!(read, vec![entry(1, 1, EntryPayload::Blank)]);
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

/// A fresh log store in its own temporary directory for each suite case; the directory is
/// the guard the suite drops when the case ends.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, MemStateMachine, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, MemStateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let store =
            LogStore::open(&dir.path().join("raft-log")).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, store, MemStateMachine::default()))
    }
}

/// Just enough of a state machine for the suite: no ledger, no durability.
#[derive(Clone, Default)]
struct MemStateMachine {
    state: Arc<Mutex<MemState>>,
}

#[derive(Default)]
struct MemState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    snapshot: Option<(SnapshotMeta<NodeId, Member>, Vec<u8>)>,
    snapshots_built: u64,
}

type Applied = (Option<LogId<NodeId>>, StoredMembership<NodeId, Member>);

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut state = self.state.lock().unwrap();
        let applied: Applied = (state.last_applied, state.membership.clone());
        let bytes = postcard::to_stdvec(&applied).map_err(|e| StorageIOError::write(&e))?;
        state.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("snapshot-{}", state.snapshots_built),
        };
        state.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = MemStateMachine;

    async fn applied_state(&mut self) -> Result<Applied, StorageError<NodeId>> {
        let state = self.state.lock().unwrap();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.state.lock().unwrap();
        let mut outcomes = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            if let EntryPayload::Membership(membership) = entry.payload {
                state.membership = StoredMembership::new(Some(entry.log_id), membership);
            }
            outcomes.push(BatchOutcome::default());
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let (last_applied, membership): Applied =
            postcard::from_bytes(&bytes).map_err(|e| StorageIOError::read(&e))?;
        let mut state = self.state.lock().unwrap();
        state.last_applied = last_applied;
        state.membership = membership;
        state.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let state = self.state.lock().unwrap();
        Ok(state.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}
