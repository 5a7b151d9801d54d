//! Operating a cluster safely, with real nodes: a node cut off from its quorum says so
//! (health, status), membership changes that cannot commit or point at nothing are refused,
//! and a node with data never founds a cluster again nor starts with peers that contradict it.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use common::{TestCluster, LEADER_WAIT};
use tollgate_client::{v1, Error};
use tollgate_server::cli::certs::Ca;
use tollgate_server::cli::{self, OpsCommand, Target};
use tollgate_server::node::NodeConfig;
use tollgate_server::raft::Member;
use tollgate_server::start::RunningNode;
use tollgate_server::tls::NodeTls;

/// How long a survivor may keep claiming a quorum after the others stopped: the bound of
/// `QUORUM_CONTACT_ELECTION_TIMEOUTS` (3 x 400 ms with fast elections) plus health polls,
/// with room for a loaded machine. A guard against hanging, not a wait for a race.
const QUORUM_LOSS_WAIT: Duration = Duration::from_secs(15);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    target: Target,
}

/// The operator's target for the node at `addr`, as `tollgate --cluster ADDR` makes it.
fn target(addr: &str) -> Target {
    Cli::try_parse_from(["tollgate", "--cluster", addr])
        .expect("flags parse")
        .target
}

/// Polls `tollgate health` on `addr` until it succeeds (`serving`) or fails (not), within
/// `QUORUM_LOSS_WAIT`; returns the last error when it fails.
async fn health_until(addr: &str, serving: bool) -> Option<anyhow::Error> {
    let deadline = tokio::time::Instant::now() + QUORUM_LOSS_WAIT;
    loop {
        let result = cli::health(&target(addr), addr).await;
        match result {
            Ok(()) if serving => return None,
            Err(error) if !serving => return Some(error),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {addr}: health did not turn {} within {QUORUM_LOSS_WAIT:?}",
            if serving { "serving" } else { "not serving" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three nodes, two stopped: the survivor (the leader when `keep_leader`, else a follower)
/// stops passing its health check, `status` shows it neither as leader nor with a quorum,
/// and `status --quorum` fails.
async fn survivor_of_two_stopped_nodes_is_not_healthy(keep_leader: bool) {
    let mut test = TestCluster::start(3).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let survivor = if keep_leader {
        leader
    } else {
        test.cluster.other_than(leader).unwrap()
    };
    let addr = test.cluster.addr(survivor).unwrap();
    health_until(&addr, true).await;
    cli::run(target(&addr), OpsCommand::Status { quorum: true })
        .await
        .expect("a healthy cluster has a quorum");

    for id in test.cluster.ids() {
        if id != survivor {
            test.cluster.stop(id).await;
        }
    }
    let error = health_until(&addr, false).await.expect("health fails");
    assert!(error.to_string().contains("NOT_SERVING"), "{error:#}");

    let status = test
        .client
        .status(&addr)
        .await
        .expect("the survivor answers");
    assert!(!status.quorum, "{status:?}");
    assert_ne!(status.role, "leader", "{status:?}");
    let error = cli::run(target(&addr), OpsCommand::Status { quorum: true })
        .await
        .expect_err("no quorum is reachable");
    assert!(error.to_string().contains("quorum"), "{error:#}");
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_left_alone_fails_its_health_check() {
    survivor_of_two_stopped_nodes_is_not_healthy(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_left_alone_fails_its_health_check() {
    survivor_of_two_stopped_nodes_is_not_healthy(false).await;
}

fn member_ids(members: &[v1::Member]) -> Vec<(u64, bool)> {
    members.iter().map(|m| (m.node_id, m.voter)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_takes_out_learners_and_voters_but_never_the_quorum() {
    let mut test = TestCluster::start(3).await;
    let new = test.cluster.add_node(4).await.unwrap();
    test.client
        .add_learner(4, &new.addr, &new.peer_addr)
        .await
        .unwrap();
    let removed = test.client.remove_node(4).await.expect("a learner goes");
    assert_eq!(
        member_ids(&removed.members),
        [(1, true), (2, true), (3, true)]
    );
    test.cluster.stop(4).await;

    let unknown = test.client.remove_node(6).await.unwrap_err();
    assert!(
        matches!(&unknown, Error::NotFound(m) if m.contains("node 6 is not a member")),
        "{unknown}"
    );

    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let gone = test.cluster.other_than(leader).unwrap();
    let removed = test.client.remove_node(gone).await.expect("a voter goes");
    assert_eq!(removed.members.len(), 2, "{removed:?}");
    assert!(removed.members.iter().all(|m| m.voter && m.node_id != gone));
    test.cluster.stop(gone).await;

    // Two voters left: with one of them down, no removal can commit.
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let down = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader && *id != gone)
        .unwrap();
    test.cluster.stop(down).await;
    let refused = test.client.remove_node(leader).await.unwrap_err();
    assert!(
        matches!(&refused, Error::FailedPrecondition(m) if m.contains("no quorum")),
        "{refused}"
    );
    let addr = test.cluster.addr(leader).unwrap();
    let status = test.client.status(&addr).await.unwrap();
    let mut expected = vec![(leader, true), (down, true)];
    expected.sort_unstable();
    assert_eq!(
        member_ids(&status.members),
        expected,
        "membership unchanged"
    );
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_voter_cannot_be_removed() {
    let test = TestCluster::start(1).await;
    let refused = test.client.remove_node(1).await.unwrap_err();
    assert!(
        matches!(&refused, Error::FailedPrecondition(m) if m.contains("last voter")),
        "{refused}"
    );
    test.cluster.shutdown().await;
}

/// A loopback address where nothing listens (bound, then released).
fn silent_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_does_not_answer_is_not_added() {
    let mut test = TestCluster::start(3).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let leader_addr = test.cluster.addr(leader).unwrap();
    let before = test.client.status(&leader_addr).await.unwrap();
    let new = test.cluster.add_node(4).await.unwrap();
    let silent = silent_addr();
    let cases = [
        (silent.clone(), silent_addr(), "addr"),
        (new.addr.clone(), silent.clone(), "peer_addr"),
        (silent.clone(), new.peer_addr.clone(), "addr"),
    ];
    for (addr, peer_addr, field) in cases {
        let refused = test
            .client
            .add_learner(4, &addr, &peer_addr)
            .await
            .unwrap_err();
        let named = format!("its {field} {silent}");
        assert!(
            matches!(&refused, Error::FailedPrecondition(m) if m.contains(&named)),
            "{addr} {peer_addr}: {refused}"
        );
        let after = test.client.status(&leader_addr).await.unwrap();
        assert_eq!(after.members, before.members, "membership unchanged");
    }
    let added = test
        .client
        .add_learner(4, &new.addr, &new.peer_addr)
        .await
        .expect("a node that answers is added");
    assert_eq!(added.members.len(), 4);
    test.cluster.shutdown().await;
}

/// A one-node cluster's configuration on `client`/`peer`, with fast elections.
fn node_config(dir: &Path, client: SocketAddr, peer: SocketAddr) -> NodeConfig {
    let mut config = NodeConfig::new(1, client, dir.to_path_buf());
    config.peer_listen = peer;
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout_min = Duration::from_millis(200);
    config.election_timeout_max = Duration::from_millis(400);
    config
}

/// Waits until `node` leads with a quorum: its cluster exists and serves.
async fn wait_leading(node: &RunningNode) {
    let addr = node.addr().to_string();
    health_until(&addr, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_data_refuses_peers_that_contradict_it() {
    let dir = tempfile::tempdir().unwrap();
    let client: SocketAddr = silent_addr().parse().unwrap();
    let peer: SocketAddr = silent_addr().parse().unwrap();
    let own = Member::new(client.to_string(), peer.to_string());
    let peers = BTreeMap::from([(1, own.clone())]);
    let mut config = node_config(dir.path(), client, peer);
    config.peers = peers.clone();
    let node = RunningNode::start(config.clone()).await.unwrap();
    wait_leading(&node).await;
    node.shutdown().await;

    let moved = Member::new(client.to_string(), silent_addr());
    let mut contradicting = config.clone();
    contradicting.peers = BTreeMap::from([(1, moved.clone())]);
    let error = RunningNode::start(contradicting)
        .await
        .err()
        .expect("peers that contradict the stored membership are refused");
    let message = format!("{error:#}");
    assert!(message.contains("--peers do not match"), "{message}");
    assert!(message.contains(&format!("1={moved}")), "{message}");
    assert!(message.contains(&format!("1={own}")), "{message}");

    for peers in [peers, BTreeMap::new()] {
        let mut same = config.clone();
        same.peers = peers;
        let node = RunningNode::start(same).await.expect("starts on its data");
        wait_leading(&node).await;
        let status = tollgate_client::Client::new(tollgate_client::ClientConfig::new(vec![node
            .addr()
            .to_string()]))
        .unwrap()
        .status(&node.addr().to_string())
        .await
        .unwrap();
        assert_eq!(member_ids(&status.members), [(1, true)]);
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_removes_a_node() {
    let test = TestCluster::with_auth(1).await;
    test.client.put_tenant("acme", None).await.unwrap();
    let (_, tenant_admin) =
        common::create_key(&test.client, Some("acme"), v1::KeyRole::TenantAdmin, &[]).await;
    let tenant_client = common::client_for(&test.cluster, Some(&tenant_admin));
    let refused = tenant_client.remove_node(1).await.unwrap_err();
    assert!(matches!(refused, Error::PermissionDenied(_)), "{refused}");
    let anonymous = common::client_for(&test.cluster, None);
    let refused = anonymous.remove_node(1).await.unwrap_err();
    assert!(matches!(refused, Error::PermissionDenied(_)), "{refused}");
    // The admin is let through to the rules: a single voter stays.
    let refused = test.client.remove_node(1).await.unwrap_err();
    assert!(matches!(refused, Error::FailedPrecondition(_)), "{refused}");
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_probed_over_tls_when_the_cluster_uses_it() {
    let ca = Ca::generate().expect("CA");
    let node_tls = |id: u64| {
        let issued = ca.node(id, "localhost").expect("node certificate");
        NodeTls::from_pem(
            id,
            ca.cert_pem.clone().into_bytes(),
            issued.cert_pem.into_bytes(),
            issued.key_pem.into_bytes(),
        )
        .expect("node TLS")
    };
    let mut test = TestCluster::start_with(3, |options| {
        for id in 1..=4 {
            options.tls.insert(id, node_tls(id));
        }
    })
    .await;
    let client = tollgate_client::Client::new(tollgate_client::ClientConfig {
        tls: Some(tollgate_client::TlsConfig::new(ca.cert_pem.clone())),
        deadline: Duration::from_secs(20),
        ..tollgate_client::ClientConfig::new(test.cluster.endpoints())
    })
    .expect("client");
    let new = test.cluster.add_node(4).await.unwrap();
    let added = client
        .add_learner(4, &new.addr, &new.peer_addr)
        .await
        .expect("a learner that answers over TLS is added");
    assert_eq!(added.members.len(), 4);
    test.cluster.shutdown().await;
}
