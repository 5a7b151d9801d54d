//! Batches concurrent commands into shared Raft entries, stamped with the leader's time.
//!
//! Every command waits in one bounded queue, fair across tenants (`fair_queue.rs`: a lane
//! per tenant, at most its `proposals_queued` quota in it); a single task drains whatever is
//! waiting (up to `BATCH_COMMANDS_MAX`, one command from each lane in turn) into one entry,
//! so concurrent requests share an entry, a replication round and an fsync. A few entries
//! may be in flight at once (pipelining), at most `BATCHES_IN_FLIGHT_MAX`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{oneshot, Notify, Semaphore};

use super::fair_queue::{lane_of, FairQueue, Refused};
use super::state_machine::SharedApplied;
use super::{Batch, NodeId, Raft};
use crate::clock::Clock;
use tollgate_ledger::{
    Command, Outcome, Rejection, TenantId, PROPOSALS_QUEUED_PER_TENANT_MAX,
    PROPOSALS_QUEUED_QUOTA_DEFAULT,
};

/// Commands waiting to be proposed; a full queue answers "overloaded" at once rather than
/// letting latency grow without bound.
pub const QUEUE_COMMANDS_MAX: usize = 16_384;
/// Longest a look-up of a remembered answer waits for the trail's writer.
const TRAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Commands in one Raft entry.
pub const BATCH_COMMANDS_MAX: usize = 1_024;
// A client's full `Tollgate.Batch` fits one entry, and a tenant's default quota of queued
// commands; a tenant's largest quota is the whole queue.
const _: () = assert!(tollgate_proto::BATCH_OPS_MAX <= BATCH_COMMANDS_MAX);
const _: () = assert!(tollgate_proto::BATCH_OPS_MAX as u64 <= PROPOSALS_QUEUED_QUOTA_DEFAULT);
const _: () = assert!(PROPOSALS_QUEUED_PER_TENANT_MAX == QUEUE_COMMANDS_MAX);
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
    /// The tenant's quota of queued commands is reached (`Bound::ProposalsQueuedPerTenant`).
    #[error("{0}")]
    QuotaReached(Rejection),
    #[error("raft: {0}")]
    Raft(String),
}

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<AppliedOutcome, ProposeError>>,
}

/// What the proposer's handles and its task share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the task when a command was queued or the last handle dropped.
    ready: Notify,
    closed: AtomicBool,
    /// The applied ledger, read (never waited for) for each tenant's quota.
    applied: SharedApplied,
}

struct Queue {
    proposals: FairQueue<Proposal>,
    /// The quotas of queued commands of tenants whose quota is not the default, as last
    /// read from the ledger: used while the ledger is busy applying. At most one entry per
    /// tenant of the ledger.
    quotas: HashMap<TenantId, u64>,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes the queue when the last `Proposer` clone is dropped.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.ready.notify_one();
    }
}

#[derive(Clone)]
pub struct Proposer {
    handle: Arc<Handle>,
    raft: Raft,
    clock: Clock,
    /// Answers remembered on disk, beyond the ledger's memory (`crate::trail::remembered`).
    trail: crate::trail::Trail,
}

impl Proposer {
    /// Starts the batching task; it ends when every `Proposer` clone is dropped. `applied`
    /// is read for each tenant's quota of queued commands.
    pub fn start(
        raft: Raft,
        clock: Clock,
        applied: SharedApplied,
        trail: crate::trail::Trail,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                proposals: FairQueue::new(QUEUE_COMMANDS_MAX),
                quotas: HashMap::new(),
            }),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            applied,
        });
        tokio::spawn(run(raft.clone(), clock.clone(), shared.clone()));
        Self {
            handle: Arc::new(Handle(shared)),
            raft,
            clock,
            trail,
        }
    }

    pub async fn propose(&self, command: Command) -> Result<AppliedOutcome, ProposeError> {
        if let Some(answered) = self.remembered(&command).await? {
            return Ok(answered);
        }
        let answer = enqueue(&self.handle.0, command)?;
        answer
            .await
            .unwrap_or_else(|_| Err(ProposeError::Raft("node is shutting down".into())))
    }
}

impl Proposer {
    /// The first answer to a retry the store remembers beyond the ledger's memory, found
    /// without proposing. Only once this leader has applied every entry committed before its
    /// term (its own first entry, blank): before that, a miss could be an answer not yet
    /// applied here, so it first waits for the read index. A miss is then safe to propose:
    /// an answer newer than what was applied is within the ledger's memory, which dedups it.
    async fn remembered(&self, command: &Command) -> Result<Option<AppliedOutcome>, ProposeError> {
        if command.request_id().is_none() || command.tenant().is_none() {
            return Ok(None);
        }
        let (term, leader, id) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.current_term, metrics.current_leader, metrics.id)
        };
        if leader != Some(id) {
            return Err(ProposeError::NotLeader { leader });
        }
        if !self.trail.applied_before(term) {
            self.raft.ensure_linearizable().await.map_err(|e| match e {
                RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)) => {
                    ProposeError::NotLeader {
                        leader: f.leader_id,
                    }
                }
                other => ProposeError::Raft(other.to_string()),
            })?;
        }
        let now_ms = self.clock.now_ms();
        // Answers applied but not yet on disk must still be in the ledger's memory.
        if !self.trail.caught_up(now_ms, TRAIL_WAIT).await {
            return Err(ProposeError::Raft(
                "the trail on disk is behind what was applied; retry".into(),
            ));
        }
        let found = crate::trail::remembered(&self.trail, command, now_ms);
        if found.is_none() && self.trail.answers_copying() {
            // Not found may mean not copied yet: executing it could charge a retry twice.
            return Err(ProposeError::Raft(
                "this node is still copying remembered answers from its peers; retry".into(),
            ));
        }
        Ok(found.map(|(outcome, log_index)| AppliedOutcome {
            outcome,
            log_index,
            term,
            at_ms: now_ms,
        }))
    }
}

/// Queues `command` in its lane, within the tenant's quota; the receiver gets its outcome.
fn enqueue(shared: &Shared, command: Command) -> Result<Answer, ProposeError> {
    let (reply, answer) = oneshot::channel();
    let lane = lane_of(&command).cloned();
    let read = lane
        .as_ref()
        .map(|tenant| read_quota(&shared.applied, tenant));
    {
        let mut queue = shared.queue();
        let quota = lane
            .as_ref()
            .map(|tenant| queue.quota(tenant, read.flatten()));
        queue
            .proposals
            .push(Proposal { command, reply }, lane.as_ref(), quota)
            .map_err(|refused| match refused {
                Refused::Full => ProposeError::Overloaded,
                Refused::Quota(rejection) => ProposeError::QuotaReached(rejection),
            })?;
    }
    shared.ready.notify_one();
    Ok(answer)
}

type Answer = oneshot::Receiver<Result<AppliedOutcome, ProposeError>>;

/// The tenant's quota of queued commands as the applied ledger has it, if the ledger is not
/// busy (an apply holds it) and has the tenant.
fn read_quota(applied: &SharedApplied, tenant: &TenantId) -> Option<u64> {
    let applied = applied.try_read().ok()?;
    applied
        .ledger
        .quotas(tenant)
        .map(|quotas| quotas.proposals_queued)
}

impl Queue {
    /// The tenant's quota: as just `read`, else as last read, else the default.
    fn quota(&mut self, tenant: &TenantId, read: Option<u64>) -> u64 {
        match read {
            Some(quota) if quota == PROPOSALS_QUEUED_QUOTA_DEFAULT => {
                self.quotas.remove(tenant);
                quota
            }
            Some(quota) => {
                if self.quotas.get(tenant) != Some(&quota) {
                    self.quotas.insert(tenant.clone(), quota);
                }
                quota
            }
            None => self
                .quotas
                .get(tenant)
                .copied()
                .unwrap_or(PROPOSALS_QUEUED_QUOTA_DEFAULT),
        }
    }
}

/// Takes the next batch: waits until a command is queued; None once the queue is closed and
/// empty.
async fn next_batch(shared: &Shared, batch: &mut Vec<Proposal>) -> Option<()> {
    loop {
        shared
            .queue()
            .proposals
            .drain_into(batch, BATCH_COMMANDS_MAX);
        if !batch.is_empty() {
            return Some(());
        }
        if shared.closed.load(Ordering::Acquire) {
            return None;
        }
        shared.ready.notified().await;
    }
}

async fn run(raft: Raft, clock: Clock, shared: Arc<Shared>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    let mut stamp_last = Stamp::default();
    let mut batch = Vec::with_capacity(BATCH_COMMANDS_MAX);
    loop {
        // Waiting for a free slot first lets commands pile up in the queue meanwhile: that is
        // what makes batches grow under load.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        if next_batch(&shared, &mut batch).await.is_none() {
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

    fn shared_with(ledger: tollgate_ledger::Ledger) -> Shared {
        let applied = super::super::state_machine::Applied {
            ledger,
            ..Default::default()
        };
        Shared {
            queue: Mutex::new(Queue {
                proposals: FairQueue::new(QUEUE_COMMANDS_MAX),
                quotas: HashMap::new(),
            }),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            applied: Arc::new(std::sync::RwLock::new(applied)),
        }
    }

    fn reserve(tenant: &str, n: usize) -> Command {
        Command::Reserve {
            request_id: tollgate_ledger::RequestId::new(format!("{tenant}-{n}")).unwrap(),
            tenant: TenantId::new(tenant).unwrap(),
            agent: tollgate_ledger::AgentId::new("bot").unwrap(),
            tool: tollgate_ledger::ToolId::new("llm").unwrap(),
            estimate: tollgate_ledger::Amounts::default(),
            ttl_ms: 60_000,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        }
    }

    /// A tenant flooding the queue past the quota its policy sets is refused, naming the
    /// bound and itself (RESOURCE_EXHAUSTED), while a second tenant's reserves are still admitted
    /// and taken in the very next batch.
    #[tokio::test]
    async fn a_flooding_tenant_is_refused_while_another_tenants_reserves_are_served() {
        let mut ledger = tollgate_ledger::Ledger::new();
        let policy = tollgate_ledger::TenantPolicy {
            quotas: tollgate_ledger::TenantQuotas {
                proposals_queued: 50,
                ..Default::default()
            },
            ..Default::default()
        };
        let put = Command::PutTenant {
            request_id: tollgate_ledger::RequestId::new("put").unwrap(),
            tenant: TenantId::new("noisy").unwrap(),
            policy,
        };
        assert_eq!(ledger.apply(1, &put), Outcome::Done);
        let shared = shared_with(ledger);
        let mut waiting = Vec::new();
        let mut refused = Vec::new();
        for n in 0..500 {
            match enqueue(&shared, reserve("noisy", n)) {
                Ok(answer) => waiting.push(answer),
                Err(error) => refused.push(error),
            }
        }
        assert_eq!((waiting.len(), refused.len()), (50, 450));
        let ProposeError::QuotaReached(rejection) = &refused[0] else {
            panic!("{:?}", refused[0]);
        };
        // `rejection_status` answers every BoundReached RESOURCE_EXHAUSTED.
        let noisy = TenantId::new("noisy").unwrap();
        assert_eq!(
            *rejection,
            Rejection::quota_reached(tollgate_ledger::Bound::ProposalsQueuedPerTenant, 50, &noisy)
        );
        let text = rejection.to_string();
        assert!(text.contains("PROPOSALS_QUEUED_PER_TENANT_MAX") && text.contains("noisy"));

        // The victim (the default quota) is admitted, and served in the next batch.
        for n in 0..3 {
            waiting.push(enqueue(&shared, reserve("victim", n)).unwrap());
        }
        let mut batch = Vec::new();
        next_batch(&shared, &mut batch).await.unwrap();
        let victims = batch
            .iter()
            .filter(|p| lane_of(&p.command).is_some_and(|t| t.as_str() == "victim"))
            .count();
        assert_eq!(victims, 3);
        assert_eq!(batch.len(), 53);
    }

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
