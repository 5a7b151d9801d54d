//! Batches concurrent commands into shared Raft entries, stamped with the leader's time.
//!
//! Every command waits in one bounded queue; a single task drains whatever is waiting (up to
//! `BATCH_COMMANDS_MAX`) into one entry, so concurrent requests share an entry, a replication
//! round and an fsync. A few entries may be in flight at once (pipelining), at most
//! `BATCHES_IN_FLIGHT_MAX`.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Batch, NodeId, Raft};
use crate::clock::Clock;
use tollgate_ledger::{Command, Outcome};

/// Commands waiting to be proposed; a full queue answers "overloaded" at once rather than
/// letting latency grow without bound.
pub const QUEUE_COMMANDS_MAX: usize = 16_384;
/// Commands in one Raft entry.
pub const BATCH_COMMANDS_MAX: usize = 1_024;
// A client's full `Tollgate.Batch` fits one entry.
const _: () = assert!(tollgate_proto::BATCH_OPS_MAX <= BATCH_COMMANDS_MAX);
/// Entries proposed and not yet applied. Few on purpose: openraft 0.9 gives each entry its
/// own fsync and round, so commands that arrive while entries are out should pile up into
/// the next, larger entry; two (not one) let the leader's fsync of the next entry overlap the
/// followers' work on this one. Retune with `tollgate-sim bench --clients 64,256`.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;

/// What the ledger answered, and where: `log_index` is the entry where the request first
/// took effect (for a retry, the first attempt's); `term` and `at_ms` are those of the entry
/// that carried this attempt.
#[derive(Clone, Debug)]
pub struct AppliedOutcome {
    pub outcome: Outcome,
    pub log_index: u64,
    pub term: u64,
    pub at_ms: u64,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader` names it when known.
    #[error("not the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("overloaded: {QUEUE_COMMANDS_MAX} commands already wait to be proposed")]
    Overloaded,
    #[error("raft: {0}")]
    Raft(String),
}

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<AppliedOutcome, ProposeError>>,
}

#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the batching task; it ends when every `Proposer` clone is dropped.
    pub fn start(raft: Raft, clock: Clock) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_COMMANDS_MAX);
        tokio::spawn(run(raft, clock, receiver));
        Self { queue }
    }

    pub async fn propose(&self, command: Command) -> Result<AppliedOutcome, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Proposal { command, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => {
                    ProposeError::Raft("node is shutting down".into())
                }
            })?;
        answer
            .await
            .unwrap_or_else(|_| Err(ProposeError::Raft("node is shutting down".into())))
    }
}

async fn run(raft: Raft, clock: Clock, mut receiver: mpsc::Receiver<Proposal>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    let mut at_ms_last = 0;
    let mut batch = Vec::with_capacity(BATCH_COMMANDS_MAX);
    loop {
        // Waiting for a free slot first lets commands pile up in the queue meanwhile: that is
        // what makes batches grow under load.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        if receiver.recv_many(&mut batch, BATCH_COMMANDS_MAX).await == 0 {
            return;
        }
        // The leader's clock, never running backwards even if the wall clock does.
        let at_ms = clock.now_ms().max(at_ms_last);
        at_ms_last = at_ms;
        let (commands, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|proposal| (proposal.command, proposal.reply))
            .unzip();
        let raft = raft.clone();
        tokio::spawn(async move {
            let result = raft.client_write(Batch { at_ms, commands }).await;
            drop(permit);
            match result {
                Ok(response) => {
                    let term = response.log_id.leader_id.term;
                    let outcomes = response.data.outcomes;
                    debug_assert_eq!(outcomes.len(), replies.len());
                    for (reply, (outcome, log_index)) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(AppliedOutcome {
                            outcome,
                            log_index,
                            term,
                            at_ms,
                        }));
                    }
                }
                Err(error) => {
                    let error = propose_error(error);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

fn propose_error(
    error: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
) -> ProposeError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ProposeError::NotLeader {
                leader: forward.leader_id,
            }
        }
        other => ProposeError::Raft(other.to_string()),
    }
}
