//! Whether a node is in touch with a quorum: what its health and its status report. A leader
//! in openraft 0.9 never steps down on its own when its followers vanish, so "leader" alone
//! says nothing about whether a write can commit; this module says it from the node's clocks.

use std::time::Duration;

use openraft::{RaftMetrics, ServerState};

use crate::raft::{Member, NodeId, Raft};

/// How many of the longest election timeouts a node may go without hearing from a quorum
/// (a leader) or from its leader (a follower or learner) and still claim one: a follower
/// hears the leader's heartbeat many times per election timeout, so a few timeouts of
/// silence mean the quorum is gone, not that a heartbeat was late.
pub const QUORUM_CONTACT_ELECTION_TIMEOUTS: u32 = 3;

/// A node's view of its quorum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quorum {
    /// A leader that a quorum acknowledged within the bound.
    Leading,
    /// A follower or learner that heard from its leader within the bound.
    Following(NodeId),
    /// Neither: writes cannot commit through this node now.
    Lost,
}

impl Quorum {
    pub fn reachable(self) -> bool {
        self != Quorum::Lost
    }
}

/// The longest silence `raft` tolerates before it reports the quorum lost.
pub fn contact_bound(raft: &Raft) -> Duration {
    let timeout_ms = raft.config().election_timeout_max;
    Duration::from_millis(timeout_ms).saturating_mul(QUORUM_CONTACT_ELECTION_TIMEOUTS)
}

/// The quorum as `metrics` and the time since this node last heard from its leader show it.
/// `leader_silence` is `None` when the node never heard from one.
pub fn quorum_of(
    metrics: &RaftMetrics<NodeId, Member>,
    leader_silence: Option<Duration>,
    bound: Duration,
) -> Quorum {
    if metrics.running_state.is_err() {
        return Quorum::Lost;
    }
    let Some(leader) = metrics.current_leader else {
        return Quorum::Lost;
    };
    let within = |silence: Duration| silence <= bound;
    match metrics.state {
        ServerState::Leader if leader == metrics.id => {
            let acked = metrics.millis_since_quorum_ack.map(Duration::from_millis);
            if acked.is_some_and(within) {
                Quorum::Leading
            } else {
                Quorum::Lost
            }
        }
        ServerState::Follower | ServerState::Learner if leader != metrics.id => {
            if leader_silence.is_some_and(within) {
                Quorum::Following(leader)
            } else {
                Quorum::Lost
            }
        }
        _ => Quorum::Lost,
    }
}

/// This node's quorum now. A follower's vote is touched by every message of its leader
/// (heartbeats included), so the vote's age is the time since it last heard from the leader.
/// A Raft core that does not answer within the bound has no quorum to report.
pub async fn quorum(raft: &Raft) -> Quorum {
    let bound = contact_bound(raft);
    let metrics = raft.metrics().borrow().clone();
    let touched = raft.with_raft_state(|state| state.vote_last_modified());
    let Ok(Ok(touched)) = tokio::time::timeout(bound, touched).await else {
        return Quorum::Lost;
    };
    let silence = touched.map(|at| tokio::time::Instant::now().saturating_duration_since(at));
    quorum_of(&metrics, silence, bound)
}

#[cfg(test)]
mod tests {
    use openraft::error::Fatal;

    use super::*;

    const BOUND: Duration = Duration::from_millis(1_800);

    fn metrics(
        id: NodeId,
        state: ServerState,
        leader: Option<NodeId>,
        acked_ms: Option<u64>,
    ) -> RaftMetrics<NodeId, Member> {
        let mut metrics = RaftMetrics::new_initial(id);
        metrics.state = state;
        metrics.current_leader = leader;
        metrics.millis_since_quorum_ack = acked_ms;
        metrics
    }

    #[test]
    fn only_recent_contact_with_a_quorum_counts() {
        use ServerState::{Candidate, Follower, Leader, Learner};
        let ms = Duration::from_millis;
        let cases = [
            (metrics(1, Leader, Some(1), Some(40)), None, Quorum::Leading),
            (
                metrics(1, Leader, Some(1), Some(1_800)),
                None,
                Quorum::Leading,
            ),
            (metrics(1, Leader, Some(1), Some(1_801)), None, Quorum::Lost),
            (metrics(1, Leader, Some(1), None), None, Quorum::Lost),
            (
                metrics(2, Follower, Some(1), None),
                Some(ms(60)),
                Quorum::Following(1),
            ),
            (
                metrics(4, Learner, Some(1), None),
                Some(ms(60)),
                Quorum::Following(1),
            ),
            (
                metrics(2, Follower, Some(1), None),
                Some(ms(5_000)),
                Quorum::Lost,
            ),
            (metrics(2, Follower, Some(1), None), None, Quorum::Lost),
            (metrics(2, Follower, None, None), Some(ms(10)), Quorum::Lost),
            (
                metrics(2, Candidate, None, None),
                Some(ms(10)),
                Quorum::Lost,
            ),
        ];
        for (metrics, silence, expected) in cases {
            let summary = format!(
                "{:?} {:?} {silence:?}",
                metrics.state, metrics.current_leader
            );
            assert_eq!(quorum_of(&metrics, silence, BOUND), expected, "{summary}");
        }
    }

    #[test]
    fn a_failed_core_has_no_quorum() {
        let mut failed = metrics(1, ServerState::Leader, Some(1), Some(0));
        failed.running_state = Err(Fatal::Panicked);
        assert_eq!(quorum_of(&failed, None, BOUND), Quorum::Lost);
    }
}
