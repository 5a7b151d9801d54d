//! Orders, replicates and persists ledger commands with openraft.
//!
//! The ledger decides; this module never does. It carries batches of commands through the
//! Raft log, stamps them with the leader's time, and applies them to the ledger in log order.

pub mod failure;
mod fair_queue;
pub mod guard;
pub mod log_store;
pub mod network;
pub mod proposer;
pub mod state_machine;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use tollgate_ledger::{Command, Outcome};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Tollgate's Raft types: a log entry carries a `Batch`, applying it gives a `BatchOutcome`.
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A member of the cluster as the membership records it: where clients reach it (`addr`, the
/// address leader hints name) and where its peers send Raft messages (`peer_addr`, its peer
/// listener). Stored in the log and in snapshots: a change of fields is a change of format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub addr: String,
    pub peer_addr: String,
}

impl Member {
    pub fn new(addr: impl Into<String>, peer_addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            peer_addr: peer_addr.into(),
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.peer_addr)
    }
}

/// One Raft entry: commands proposed together share one entry and one fsync. `at_ms` is the
/// leader's clock when it proposed them; replicas never read their own clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub at_ms: u64,
    pub commands: Vec<Command>,
}

/// The outcome of each command of a batch, in order, with the log index where each first
/// took effect (an earlier entry's for a retried request).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub outcomes: Vec<(Outcome, u64)>,
}

pub type Raft = openraft::Raft<TypeConfig>;
