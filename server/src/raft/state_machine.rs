//! The Raft state machine: applies committed batches to the ledger, in log order.
//!
//! The ledger lives in memory; durability comes from the log (redb) plus the newest snapshot,
//! written to `snapshot.bin` in the data directory (temporary file, fsync, rename) before
//! openraft is told it exists. On start the ledger is restored from that file and openraft
//! re-applies the log after it. This module never decides anything: it only feeds the ledger.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{BatchOutcome, NodeId, TypeConfig};
use crate::ledger::Ledger;

const SNAPSHOT_FILE: &str = "snapshot.bin";

/// What the state machine holds: the ledger and where in the log it stands.
#[derive(Debug)]
pub struct Applied {
    pub ledger: Ledger,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
}

impl Default for Applied {
    fn default() -> Self {
        Self {
            ledger: Ledger::new(),
            last_applied: None,
            membership: StoredMembership::default(),
        }
    }
}

/// Shared with the gRPC layer, which reads the ledger after a linearizable read barrier.
/// A std lock: it is never held across an `.await`.
pub type SharedApplied = Arc<RwLock<Applied>>;

/// The bytes of a snapshot: openraft's metadata and the ledger's own versioned snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    ledger: Vec<u8>,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    bytes: Arc<Vec<u8>>,
}

#[derive(Clone)]
pub struct StateMachine {
    applied: SharedApplied,
    dir: PathBuf,
    current: Arc<RwLock<Option<StoredSnapshot>>>,
}

impl StateMachine {
    /// Opens the state machine in `dir`, restoring the ledger from the newest snapshot there.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(SNAPSHOT_FILE);
        let mut applied = Applied::default();
        let mut current = None;
        if path.exists() {
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("reading snapshot {}: {e}", path.display()))?;
            let file: SnapshotFile = postcard::from_bytes(&bytes)
                .map_err(|e| anyhow::anyhow!("decoding snapshot {}: {e}", path.display()))?;
            applied.ledger = Ledger::restore(&file.ledger)
                .map_err(|e| anyhow::anyhow!("restoring snapshot {}: {e}", path.display()))?;
            applied.last_applied = file.meta.last_log_id;
            applied.membership = file.meta.last_membership.clone();
            current = Some(StoredSnapshot {
                meta: file.meta,
                bytes: Arc::new(bytes),
            });
        }
        Ok(Self {
            applied: Arc::new(RwLock::new(applied)),
            dir: dir.to_path_buf(),
            current: Arc::new(RwLock::new(current)),
        })
    }

    pub fn shared(&self) -> SharedApplied {
        self.applied.clone()
    }

    /// Writes the snapshot durably before anyone may rely on it.
    fn persist(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn store(&self, meta: SnapshotMeta<NodeId, BasicNode>, bytes: Vec<u8>) -> Snapshot<TypeConfig> {
        let bytes = Arc::new(bytes);
        let snapshot = Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.as_ref().clone())),
        };
        *write_lock(&self.current) = Some(StoredSnapshot { meta, bytes });
        snapshot
    }
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock would already have taken the node down; the data is
    // still consistent because every mutation of the ledger is applied whole.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

pub fn read_applied(applied: &SharedApplied) -> std::sync::RwLockReadGuard<'_, Applied> {
    read_lock(applied)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, ledger) = {
            let applied = read_lock(&self.applied);
            let last = applied.last_applied;
            let snapshot_id = match last {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.leader_id.node_id, id.index
                ),
                None => "empty".to_string(),
            };
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: applied.membership.clone(),
                snapshot_id,
            };
            (meta, applied.ledger.snapshot())
        };
        let bytes = postcard::to_allocvec(&SnapshotFile {
            meta: meta.clone(),
            ledger,
        })
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let this = self.clone();
        let signature = meta.signature();
        let bytes = tokio::task::spawn_blocking(move || this.persist(&bytes).map(|()| bytes))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?
            .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "snapshot built");
        Ok(self.store(meta, bytes))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let applied = read_lock(&self.applied);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut applied = write_lock(&self.applied);
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => BatchOutcome::default(),
                EntryPayload::Normal(batch) => {
                    let outcomes = batch
                        .commands
                        .iter()
                        .map(|command| {
                            applied
                                .ledger
                                .apply_at(batch.at_ms, entry.log_id.index, command)
                        })
                        .collect();
                    BatchOutcome { outcomes }
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    BatchOutcome::default()
                }
            };
            responses.push(outcome);
        }
        Ok(responses)
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
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let file: SnapshotFile = postcard::from_bytes(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let ledger = Ledger::restore(&file.ledger)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let this = self.clone();
        let signature = meta.signature();
        let bytes = tokio::task::spawn_blocking(move || this.persist(&bytes).map(|()| bytes))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?
            .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
        {
            let mut applied = write_lock(&self.applied);
            applied.ledger = ledger;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "snapshot installed");
        self.store(meta.clone(), bytes);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(read_lock(&self.current).as_ref().map(|stored| Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.bytes.as_ref().clone())),
        }))
    }
}
