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
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

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
