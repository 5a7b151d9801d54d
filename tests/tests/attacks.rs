//! Attacks on the internal Raft service, replayed against real nodes: each is refused with
//! a clear status, changes nothing, and the cluster keeps serving.
//!
//! The attacker here has a connection to a node's Raft service; what the transport itself
//! refuses (no certificate, a certificate that is not a member's) is `tls.rs`'s part. This
//! file covers what a connection that got through must still not be able to do.

mod common;

use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, StoredMembership, Vote,
};
use serde::Serialize;
use tollgate_client::ReserveRequest;
use tollgate_ledger::{AgentId, Amounts, Command, RequestId, TenantId, ToolId};
use tollgate_proto::v1::raft_client::RaftClient;
use tollgate_proto::v1::RaftPayload;
use tollgate_server::raft::{Batch, NodeId, TypeConfig};

use common::{tenant_with_budget, used_tokens, TestCluster};

/// A term a forger picks to outrank every real one without looking absurd.
const FORGED_TERM_AHEAD: u64 = 1_000;

async fn raft_client(cluster: &TestCluster, node: NodeId) -> RaftClient<tonic::transport::Channel> {
    let addr = cluster.cluster.peer_addr(node).expect("node address");
    RaftClient::connect(format!("http://{addr}"))
        .await
        .expect("connects")
}

fn payload<T: Serialize>(message: &T) -> RaftPayload {
    RaftPayload {
        data: postcard::to_allocvec(message).expect("encodes"),
    }
}

fn terms(cluster: &TestCluster) -> Vec<u64> {
    cluster
        .cluster
        .running_ids()
        .into_iter()
        .map(|id| {
            cluster
                .cluster
                .node(id)
                .expect("running")
                .raft
                .metrics()
                .borrow()
                .current_term
        })
        .collect()
}

/// A term ahead of every node's by `FORGED_TERM_AHEAD`.
fn forged_term(cluster: &TestCluster) -> u64 {
    terms(cluster).into_iter().max().expect("running nodes") + FORGED_TERM_AHEAD
}

/// What a forger would write into the log: a charge to another tenant.
fn charge(victim: &str, tokens: u64) -> Batch {
    Batch {
        at_ms: 1,
        commands: vec![Command::Record {
            request_id: RequestId::new("forged-1").unwrap(),
            tenant: TenantId::new(victim).unwrap(),
            agent: AgentId::new("agent").unwrap(),
            tool: ToolId::new("llm").unwrap(),
            actual: Amounts {
                tokens,
                cost_micros: 999_000_000,
                calls: 1,
            },
            usage: None,
            offline: false,
            session: None,
        }],
    }
}

fn forged_append(
    term: u64,
    leader: NodeId,
    after: Option<LogId<NodeId>>,
) -> AppendEntriesRequest<TypeConfig> {
    let index = after.map_or(0, |id| id.index + 1);
    AppendEntriesRequest {
        vote: Vote::new_committed(term, leader),
        prev_log_id: after,
        entries: vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
            payload: EntryPayload::Normal(charge("victim", 12_345)),
        }],
        leader_commit: Some(LogId::new(CommittedLeaderId::new(term, leader), index)),
    }
}

/// A cluster with a victim tenant, and its usage before any attack.
async fn victim_cluster() -> (TestCluster, (u64, u64)) {
    let cluster = TestCluster::start(3).await;
    tenant_with_budget(&cluster.client, "victim", 1_000_000).await;
    let before = used_tokens(&cluster.client, "victim").await;
    (cluster, before)
}

/// The cluster still decides, and the victim's usage is what it was.
async fn assert_unharmed(cluster: &TestCluster, before: (u64, u64), forged_term: u64) {
    assert_eq!(
        used_tokens(&cluster.client, "victim").await,
        before,
        "the victim was charged"
    );
    let terms = terms(cluster);
    assert!(
        terms.iter().all(|term| *term < forged_term),
        "a node took the forged term {forged_term}: {terms:?}"
    );
    let reservation = cluster
        .client
        .reserve(ReserveRequest::new("victim", "agent", "llm").tokens(1))
        .await
        .expect("the cluster still serves");
    reservation.release().await.expect("release");
}

fn last_log_id(cluster: &TestCluster, node: NodeId) -> Option<LogId<NodeId>> {
    cluster
        .cluster
        .node(node)
        .expect("running")
        .raft
        .metrics()
        .borrow()
        .last_applied
}

#[tokio::test]
async fn forged_append_entries_from_a_made_up_leader_is_refused() {
    let (cluster, before) = victim_cluster().await;
    let forged_term = forged_term(&cluster);
    for node in cluster.cluster.ids() {
        let request = forged_append(forged_term, 99, last_log_id(&cluster, node));
        let status = raft_client(&cluster, node)
            .await
            .append_entries(payload(&request))
            .await
            .expect_err("a made-up leader is refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }
    assert_unharmed(&cluster, before, forged_term).await;
}

#[tokio::test]
async fn a_heartbeat_with_the_largest_term_is_refused_and_no_node_crashes() {
    let (mut cluster, before) = victim_cluster().await;
    for node in cluster.cluster.ids() {
        let heartbeat = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(u64::MAX, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let status = raft_client(&cluster, node)
            .await
            .append_entries(payload(&heartbeat))
            .await
            .expect_err("term 2^64-1 is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let vote = VoteRequest::new(Vote::new(u64::MAX, 1), None);
        let status = raft_client(&cluster, node)
            .await
            .vote(payload(&vote))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    assert_unharmed(&cluster, before, u64::MAX).await;
    // The vote a node stores survives restarts: a node that took the absurd one would
    // fail again at every start.
    let node = cluster.cluster.ids()[0];
    cluster.cluster.stop(node).await;
    // The stopped node's log lock is let go by a thread of its own, a moment after stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(error) = cluster.cluster.restart(node).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {node} does not restart: {error:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted = cluster
        .cluster
        .node(node)
        .expect("running")
        .raft
        .metrics()
        .borrow()
        .current_term;
    assert!(
        restarted < u64::MAX / 2,
        "node {node} restarted with term {restarted}"
    );
    assert_unharmed(&cluster, before, u64::MAX).await;
}

#[tokio::test]
async fn install_snapshot_from_a_stranger_or_out_of_bounds_is_refused() {
    let (cluster, before) = victim_cluster().await;
    let forged_term = forged_term(&cluster);
    let members = cluster
        .cluster
        .node(1)
        .expect("running")
        .raft
        .metrics()
        .borrow()
        .membership_config
        .clone();
    let snapshot = |leader: NodeId, offset: u64| InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(forged_term, leader),
        meta: SnapshotMeta {
            last_log_id: Some(LogId::new(
                CommittedLeaderId::new(forged_term, leader),
                1 << 40,
            )),
            last_membership: StoredMembership::clone(&members),
            snapshot_id: "forged".into(),
        },
        offset,
        data: b"a whole new state".to_vec(),
        done: true,
    };
    for node in cluster.cluster.ids() {
        let mut raft = raft_client(&cluster, node).await;
        let status = raft
            .install_snapshot(payload(&snapshot(99, 0)))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        // A member's chunk at an offset that would make the receiver allocate without bound.
        let status = raft
            .install_snapshot(payload(&snapshot(1, u64::MAX - 8)))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    assert_unharmed(&cluster, before, forged_term).await;
}

#[tokio::test]
async fn a_strangers_vote_request_learns_nothing() {
    let (cluster, before) = victim_cluster().await;
    let forged_term = forged_term(&cluster);
    for node in cluster.cluster.ids() {
        let vote = VoteRequest::new(Vote::new(forged_term, 99), None);
        let status = raft_client(&cluster, node)
            .await
            .vote(payload(&vote))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            !status.message().contains("log"),
            "the refusal names a log position: {status:?}"
        );
    }
    assert_unharmed(&cluster, before, forged_term).await;
}

#[tokio::test]
async fn garbage_to_the_raft_service_is_invalid_argument() {
    let (cluster, before) = victim_cluster().await;
    let mut raft = raft_client(&cluster, 1).await;
    let garbage = RaftPayload {
        data: vec![0xff; 4_096],
    };
    let status = raft
        .append_entries(garbage.clone())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = raft.install_snapshot(garbage).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    tokio::time::timeout(
        Duration::from_secs(30),
        assert_unharmed(&cluster, before, u64::MAX),
    )
    .await
    .expect("the cluster answers");
}
