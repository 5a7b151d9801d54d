//! `tollgate.v1.Cluster`: the Raft group's state and membership, for operators.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::raft::Member;
use tollgate_proto::v1 as pb;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use super::call::not_leader;
use super::quorum::{quorum, Quorum};
use crate::auth::Caller;
use crate::node::Node;
use crate::raft::state_machine::read_applied;
use crate::raft::NodeId;

/// Most voters a cluster may be changed to: Raft groups beyond seven only get slower.
pub const VOTERS_MAX: usize = 7;

pub struct ClusterService {
    pub node: Arc<Node>,
}

fn membership_error(
    node: &Node,
    error: openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, Member>>,
) -> Status {
    use openraft::error::{ClientWriteError, RaftError};
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => not_leader(node),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(e.to_string())
        }
        other => Status::unavailable(other.to_string()),
    }
}

fn members_to_pb(membership: &openraft::Membership<NodeId, Member>) -> Vec<pb::Member> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| pb::Member {
            node_id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
            peer_addr: node.peer_addr.clone(),
        })
        .collect()
}

/// The answer to a membership change: the members after it, and the log entry that made it.
fn membership_response(
    membership: Option<&openraft::Membership<NodeId, Member>>,
    log_id: openraft::LogId<NodeId>,
) -> Response<pb::MembershipResponse> {
    Response::new(pb::MembershipResponse {
        members: membership.map(members_to_pb).unwrap_or_default(),
        applied: Some(pb::Applied {
            log_index: log_id.index,
            term: log_id.leader_id.term,
            at_ms: 0,
        }),
    })
}

/// The role a status shows: openraft's state, except that a leader out of touch with its
/// quorum is not shown as `leader` (openraft keeps it leader until another one is elected,
/// but nothing it proposes can commit).
fn role_of(state: openraft::ServerState, quorum: Quorum) -> String {
    match (state, quorum) {
        (openraft::ServerState::Leader, Quorum::Leading) => "leader".to_owned(),
        (openraft::ServerState::Leader, _) => ROLE_LEADER_WITHOUT_QUORUM.to_owned(),
        (other, _) => format!("{other:?}").to_lowercase(),
    }
}

/// The role of a leader that no quorum acknowledged lately.
pub const ROLE_LEADER_WITHOUT_QUORUM: &str = "leader-without-quorum";

/// How long the leader waits for a node it is told about (a new learner, the voters that
/// remain after a removal) to accept a connection before calling it unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether something accepts TCP connections at `addr` within `PROBE_TIMEOUT`.
async fn answers(addr: &str) -> bool {
    let connect = tokio::net::TcpStream::connect(addr);
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, connect).await,
        Ok(Ok(_))
    )
}

/// Whether a node answers a gRPC health check at its client address `addr` within
/// `PROBE_TIMEOUT`, over TLS when `tls` is set. Any answer counts: a node not yet added
/// knows no leader, so it answers NOT_SERVING.
async fn health_answers(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let check = async {
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(PROBE_TIMEOUT)
            .timeout(PROBE_TIMEOUT);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
        }
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        let request = HealthCheckRequest {
            service: String::new(),
        };
        HealthClient::new(channel)
            .check(request)
            .await
            .map_err(|status| status.message().to_owned())?;
        Ok(())
    };
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

/// Refuses a learner that does not answer a health check at its client address, or whose
/// peer address accepts no connection: adding it would start replication to a node that
/// is not there, and a wrong address found only later is a membership entry to undo.
async fn check_learner_answers(node: &Node, learner: &Member) -> Result<(), Status> {
    let refuse = |field: &str, addr: &str, why: &str| {
        Status::failed_precondition(format!(
            "the learner does not answer at its {field} {addr} ({why}); start the node \
             first, or check the address (membership unchanged)"
        ))
    };
    if let Err(why) = health_answers(&learner.addr, node.dialer.clone()).await {
        return Err(refuse("addr", &learner.addr, &why));
    }
    if !answers(&learner.peer_addr).await {
        let why = format!("no connection within {} ms", PROBE_TIMEOUT.as_millis());
        return Err(refuse("peer_addr", &learner.peer_addr, &why));
    }
    Ok(())
}

/// The change that takes node `id` out of `membership`: the voters without it (openraft then
/// drops it from the members too), or, for a learner, its removal. Refuses a node that is
/// not a member and the last voter.
fn removal(
    membership: &openraft::Membership<NodeId, Member>,
    id: NodeId,
) -> Result<openraft::ChangeMembers<NodeId, Member>, Status> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if membership.get_node(&id).is_none() {
        let members: Vec<String> = membership.nodes().map(|(id, _)| id.to_string()).collect();
        return Err(Status::not_found(format!(
            "node {id} is not a member (members: {})",
            members.join(",")
        )));
    }
    if !voters.contains(&id) {
        return Ok(openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id])));
    }
    let remaining: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
    if remaining.is_empty() {
        return Err(Status::failed_precondition(format!(
            "node {id} is the last voter: a cluster needs at least one (add and promote \
             another node first)"
        )));
    }
    Ok(openraft::ChangeMembers::ReplaceAllVoters(remaining))
}

/// Refuses a membership change unless a majority of `voters` answers: the change commits
/// only with a majority of the old voters and of the new ones, and one that cannot
/// commit leaves the cluster stuck in between.
async fn check_quorum_answers(
    node: &Node,
    membership: &openraft::Membership<NodeId, Member>,
    voters: &BTreeSet<NodeId>,
    when: &str,
) -> Result<(), Status> {
    let mut silent = Vec::new();
    for id in voters.iter().filter(|id| **id != node.id) {
        let answered = match membership.get_node(id) {
            Some(member) => answers(&member.peer_addr).await,
            None => false,
        };
        if !answered {
            silent.push(id.to_string());
        }
    }
    let answering = voters.len() - silent.len();
    let majority = voters.len() / 2 + 1;
    if answering < majority {
        let ids: Vec<String> = voters.iter().map(NodeId::to_string).collect();
        return Err(Status::failed_precondition(format!(
            "no quorum of the voters {} {when}: {answering} answer, {majority} needed \
             (not answering: {}); bring nodes back first (membership unchanged)",
            ids.join(","),
            silent.join(",")
        )));
    }
    Ok(())
}

/// Longest peer address accepted: a DNS name (253) and a port.
pub const PEER_ADDR_BYTES_MAX: usize = 260;

/// Checks that `addr` (the field `field`) is `host:port`: a host of DNS-name or IP
/// characters, a port 1-65535.
fn check_peer_addr(field: &str, addr: &str) -> Result<(), Status> {
    let invalid = |why: &str| {
        let shown: String = addr.chars().take(64).collect();
        Err(Status::invalid_argument(format!(
            "{field} {shown:?} is not host:port ({why})"
        )))
    };
    if addr.len() > PEER_ADDR_BYTES_MAX {
        return invalid(&format!("longer than {PEER_ADDR_BYTES_MAX} bytes"));
    }
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return invalid("no port");
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return invalid("the port is not 1-65535");
    }
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !host_ok {
        return invalid("the host is not a name or an address");
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Caller::of(&request)?.for_admin()?;
        let committed = self
            .node
            .raft
            .with_raft_state(|state| state.committed)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        // One read of the state machine gives the applied index and the chain head together:
        // openraft's metrics would pair a later index with this head on a node catching up.
        let (applied_index, chain_head, stats) = {
            let applied = read_applied(&self.node.applied);
            let index = applied.last_applied.map_or(0, |id| id.index);
            (index, applied.ledger.chain_head(), applied.ledger.stats())
        };
        let quorum = quorum(&self.node.raft).await;
        let metrics = self.node.raft.metrics().borrow().clone();
        let role = role_of(metrics.state, quorum);
        Ok(Response::new(pb::StatusResponse {
            node_id: self.node.id,
            addr: self.node.addr.clone(),
            role,
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            leader_addr: self.node.leader_addr().unwrap_or_default(),
            commit_index: committed.map_or(0, |id| id.index),
            applied_index,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            members: members_to_pb(metrics.membership_config.membership()),
            chain_head_seq: chain_head.seq,
            chain_head_hash: chain_head.hash.to_vec(),
            reservations_in_flight: stats.reservations_in_flight,
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            quorum: quorum.reachable(),
            // The trail's fields stay zero until the node keeps a trail on disk.
            ..Default::default()
        }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Caller::of(&request)?.for_admin()?;
        let request = request.into_inner();
        check_peer_addr("addr", &request.addr)?;
        check_peer_addr("peer_addr", &request.peer_addr)?;
        let learner = Member::new(request.addr, request.peer_addr);
        // A retry (the client's attempt timed out while the learner caught up) must not
        // append another membership entry: that restarts replication to the learner, and
        // with it a snapshot transfer, so a large snapshot would never arrive.
        let metrics = self.node.raft.metrics().borrow().clone();
        let current = metrics.membership_config.membership();
        if let Some(member) = current.get_node(&request.node_id) {
            if *member != learner {
                return Err(Status::failed_precondition(format!(
                    "node {} is already a member, at {member} (client/peer)",
                    request.node_id
                )));
            }
            let log_id = metrics.membership_config.log_id().unwrap_or_default();
            return Ok(membership_response(Some(current), log_id));
        }
        // The leader probes: it is the node that will replicate to the learner.
        if !self.node.is_leader() {
            return Err(not_leader(&self.node));
        }
        check_learner_answers(&self.node, &learner).await?;
        // Blocking: returns once the learner has caught up, by log or by snapshot.
        let response = self
            .node
            .raft
            .add_learner(request.node_id, learner, true)
            .await
            .map_err(|e| membership_error(&self.node, e))?;
        Ok(membership_response(
            response.membership.as_ref(),
            response.log_id,
        ))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Caller::of(&request)?.for_admin()?;
        let voters: BTreeSet<NodeId> = request.into_inner().voters.into_iter().collect();
        if voters.is_empty() || voters.len() > VOTERS_MAX {
            return Err(Status::invalid_argument(format!(
                "a cluster needs 1 to {VOTERS_MAX} voters, not {}",
                voters.len()
            )));
        }
        let response = self
            .node
            .raft
            .change_membership(voters, false)
            .await
            .map_err(|e| membership_error(&self.node, e))?;
        Ok(membership_response(
            response.membership.as_ref(),
            response.log_id,
        ))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Caller::of(&request)?.for_admin()?;
        let id = request.into_inner().node_id;
        if !self.node.is_leader() {
            return Err(not_leader(&self.node));
        }
        let membership = self
            .node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let change = removal(&membership, id)?;
        if let openraft::ChangeMembers::ReplaceAllVoters(remaining) = &change {
            let old: BTreeSet<NodeId> = membership.voter_ids().collect();
            check_quorum_answers(&self.node, &membership, &old, "now").await?;
            check_quorum_answers(&self.node, &membership, remaining, "after the removal").await?;
        }
        let response = self
            .node
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| membership_error(&self.node, e))?;
        Ok(membership_response(
            response.membership.as_ref(),
            response.log_id,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(voters: &[NodeId], learners: &[NodeId]) -> openraft::Membership<NodeId, Member> {
        let nodes = voters
            .iter()
            .chain(learners)
            .map(|id| {
                (
                    *id,
                    Member::new(format!("n{id}:7001"), format!("n{id}:7101")),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
        openraft::Membership::new(vec![voters], nodes)
    }

    #[test]
    fn removal_takes_out_a_voter_or_a_learner_but_never_the_last_voter() {
        use openraft::ChangeMembers::{RemoveNodes, ReplaceAllVoters};
        let three_and_a_learner = membership(&[1, 2, 3], &[4]);
        let voter = removal(&three_and_a_learner, 2).expect("a voter goes");
        assert_eq!(voter, ReplaceAllVoters(BTreeSet::from([1, 3])));
        let learner = removal(&three_and_a_learner, 4).expect("a learner goes");
        assert_eq!(learner, RemoveNodes(BTreeSet::from([4])));

        let unknown = removal(&three_and_a_learner, 9).unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert!(
            unknown.message().contains("members: 1,2,3,4"),
            "{unknown:?}"
        );
        let last = removal(&membership(&[1], &[2]), 1).unwrap_err();
        assert_eq!(last.code(), tonic::Code::FailedPrecondition);
        assert!(
            last.message().contains("node 1 is the last voter"),
            "{last:?}"
        );
    }

    #[test]
    fn a_leader_without_quorum_is_not_shown_as_leader() {
        use openraft::ServerState::{Candidate, Follower, Leader};
        let cases = [
            (Leader, Quorum::Leading, "leader"),
            (Leader, Quorum::Lost, ROLE_LEADER_WITHOUT_QUORUM),
            (Follower, Quorum::Following(1), "follower"),
            (Follower, Quorum::Lost, "follower"),
            (Candidate, Quorum::Lost, "candidate"),
        ];
        for (state, quorum, role) in cases {
            assert_eq!(role_of(state, quorum), role, "{state:?} {quorum:?}");
        }
    }

    #[test]
    fn peer_addresses_must_be_host_and_port() {
        for good in [
            "127.0.0.1:7001",
            "[::1]:7001",
            "node2:7002",
            "tg-3.example.com:443",
        ] {
            assert!(check_peer_addr("addr", good).is_ok(), "{good}");
        }
        let long = format!("{}:1", "a".repeat(PEER_ADDR_BYTES_MAX));
        for bad in [
            "",
            "node2",
            "node2:",
            "node2:0",
            "node2:70000",
            ":7001",
            "a b:1",
            "x:y",
            &long,
        ] {
            let error = check_peer_addr("peer_addr", bad).expect_err(bad);
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(error.message().contains("peer_addr"), "{bad}");
            assert!(error.message().contains("is not host:port"), "{bad}");
        }
    }
}
