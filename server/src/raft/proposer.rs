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

/// Most the leader's clock may move ledger time forward from one entry to the next. A wall
/// clock that jumps (a bad NTP step, a VM resumed with a stale clock corrected at once)
/// would otherwise expire every reservation and reset every window in one entry, and, as
/// ledger time never runs backwards, keep it there for good after the clock is corrected.
/// Beyond it the entry is stamped this much later than the last, with a WARN and
/// `tollgate_clock_jumps_clamped_total`; time catches up entry by entry (ticks keep coming)
/// if the clock was right. Five minutes: far above any gap between two entries of a live
/// leader (the tick proposes one every `tick_interval`), and a twelfth of the longest TTL.
pub const CLOCK_STEP_MS_MAX: u64 = 5 * 60 * 1_000;

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
    let mut stamp_last = Stamp::default();
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
        let now_ms = clock.now_ms();
        // Read after `now_ms`, so an advance between the two reads only widens the bound.
        let stamp = stamp_last.next(now_ms, clock.advanced_ms());
        if stamp.clamped_ms > 0 {
            tracing::warn!(
                jump_ms = stamp.clamped_ms + CLOCK_STEP_MS_MAX,
                step_ms_max = CLOCK_STEP_MS_MAX,
                "the clock jumped forward: ledger time moves by the bound only"
            );
            metrics::counter!("tollgate_clock_jumps_clamped_total").increment(1);
        }
        let at_ms = stamp.at_ms;
        stamp_last = stamp;
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

/// The time stamped on an entry, and how much of the clock's jump was held back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stamp {
    at_ms: u64,
    /// The clock's `advanced_ms` when this stamp was taken.
    advanced_ms: u64,
    clamped_ms: u64,
}

impl Stamp {
    /// The stamp of the next entry: the clock's time, never earlier than this one, and at
    /// most `CLOCK_STEP_MS_MAX` later (plus any advance announced since). The first entry a
    /// proposer stamps has nothing to be bounded by.
    fn next(&self, now_ms: u64, advanced_ms: u64) -> Stamp {
        let mut stamp = Stamp {
            at_ms: now_ms.max(self.at_ms),
            advanced_ms,
            clamped_ms: 0,
        };
        if self.at_ms == 0 {
            return stamp;
        }
        let announced_ms = advanced_ms.saturating_sub(self.advanced_ms);
        let at_ms_max = self
            .at_ms
            .saturating_add(CLOCK_STEP_MS_MAX)
            .saturating_add(announced_ms);
        if stamp.at_ms > at_ms_max {
            stamp.clamped_ms = stamp.at_ms - at_ms_max;
            stamp.at_ms = at_ms_max;
        }
        debug_assert!(stamp.at_ms >= self.at_ms);
        stamp
    }
}

fn propose_error(
    error: RaftError<NodeId, ClientWriteError<NodeId, crate::raft::Member>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;
    const HOUR_MS: u64 = 3_600_000;

    fn check(last: (u64, u64), now_ms: u64, advanced_ms: u64, expect: (u64, u64)) {
        let last = Stamp {
            at_ms: last.0,
            advanced_ms: last.1,
            clamped_ms: 0,
        };
        let stamp = last.next(now_ms, advanced_ms);
        assert_eq!(
            (stamp.at_ms, stamp.clamped_ms),
            expect,
            "from {last:?} at {now_ms}"
        );
        assert_eq!(stamp.advanced_ms, advanced_ms);
    }

    #[test]
    fn a_clock_jump_moves_ledger_time_by_the_bound_only() {
        // (last stamp, advanced then), now, advanced now -> (stamped, held back)
        check((T0, 0), T0 + 10, 0, (T0 + 10, 0));
        check(
            (T0, 0),
            T0 + CLOCK_STEP_MS_MAX,
            0,
            (T0 + CLOCK_STEP_MS_MAX, 0),
        );
        check(
            (T0, 0),
            T0 + HOUR_MS,
            0,
            (T0 + CLOCK_STEP_MS_MAX, HOUR_MS - CLOCK_STEP_MS_MAX),
        );
        check(
            (T0, 0),
            u64::MAX,
            0,
            (T0 + CLOCK_STEP_MS_MAX, u64::MAX - T0 - CLOCK_STEP_MS_MAX),
        );
        // A clock that runs backwards never moves ledger time back.
        check((T0, 0), T0 - HOUR_MS, 0, (T0, 0));
        // The first stamp of a proposer has nothing to be bounded by.
        check((0, 0), T0, 0, (T0, 0));
    }

    #[test]
    fn an_announced_advance_of_the_shifted_clock_is_not_a_jump() {
        let clock = Clock::shifted();
        let first = Stamp::default().next(clock.now_ms(), clock.advanced_ms());
        clock.advance_ms(24 * HOUR_MS);
        let second = first.next(clock.now_ms(), clock.advanced_ms());
        assert_eq!(second.clamped_ms, 0);
        assert!(second.at_ms >= first.at_ms + 24 * HOUR_MS);

        // The same day seen without an announcement (a wall clock stepping) is held back.
        let unannounced = first.next(second.at_ms, first.advanced_ms);
        assert_eq!(unannounced.at_ms, first.at_ms + CLOCK_STEP_MS_MAX);
        assert!(unannounced.clamped_ms > 0);
    }
}
