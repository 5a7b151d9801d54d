//! TLS end to end, on loopback: a cluster with mutual TLS between nodes serves clients over
//! TLS; clear text, the Raft service on the client port, and every certificate that is not a
//! member node's on the peer port are refused, and none of them changes the state.

mod common;

use std::time::Duration;

use openraft::raft::AppendEntriesRequest;
use openraft::Vote;
use tempfile::TempDir;
use tollgate_client::v1::raft_client::RaftClient;
use tollgate_client::v1::RaftPayload;
use tollgate_client::{Amounts, Client, ClientConfig, Error, ReserveRequest, TlsConfig};
use tollgate_server::cli::certs::{Ca, Issued};
use tollgate_server::local_cluster::{LocalCluster, LocalClusterOptions};
use tollgate_server::raft::TypeConfig;
use tollgate_server::tls::NodeTls;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use common::{converged_statuses, tenant_with_budget, used_tokens, LEADER_WAIT};

struct TlsCluster {
    cluster: LocalCluster,
    ca: Ca,
    client: Client,
    _dir: TempDir,
}

fn node_tls(ca: &Ca, id: u64) -> NodeTls {
    let issued = ca.node(id, "localhost").expect("node certificate");
    NodeTls::from_pem(
        id,
        ca.cert_pem.clone().into_bytes(),
        issued.cert_pem.into_bytes(),
        issued.key_pem.into_bytes(),
    )
    .expect("node TLS")
}

fn client_config(endpoints: Vec<String>, tls: Option<TlsConfig>) -> ClientConfig {
    ClientConfig {
        deadline: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(3),
        tls,
        ..ClientConfig::new(endpoints)
    }
}

impl TlsCluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::generate().expect("CA");
        let mut options = LocalClusterOptions::new(3, dir.path().to_path_buf());
        options.fast_elections = true;
        for id in 1..=3 {
            options.tls.insert(id, node_tls(&ca, id));
        }
        let cluster = LocalCluster::start(options).await.expect("cluster starts");
        cluster
            .leader(LEADER_WAIT)
            .await
            .expect("a leader is elected");
        let tls = TlsConfig::new(ca.cert_pem.clone());
        let client = Client::new(client_config(cluster.endpoints(), Some(tls))).expect("client");
        Self {
            cluster,
            ca,
            client,
            _dir: dir,
        }
    }
}

async fn spend(client: &Client, n: u64) {
    for i in 0..n {
        let request = ReserveRequest::new("acme", format!("agent-{i}"), "llm").tokens(10);
        let reservation = client.reserve(request).await.expect("reserve over TLS");
        reservation
            .commit(Amounts::new(7, 0, 1))
            .await
            .expect("commit over TLS");
    }
}

/// A Raft client over TLS to `addr`, trusting `ca`, presenting `identity` if any.
fn raft_client(
    addr: &str,
    ca: &str,
    identity: Option<&Issued>,
) -> RaftClient<tonic::transport::Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(issued) = identity {
        tls = tls.identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("address")
        .tls_config(tls)
        .expect("TLS settings")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    RaftClient::new(channel)
}

/// A forged heartbeat from `leader` at a term far ahead: a node that took it would step
/// down and adopt the term.
fn forged_append(term: u64, leader: u64) -> RaftPayload {
    let request = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    RaftPayload {
        data: postcard::to_allocvec(&request).expect("encodes"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_clients_over_tls_and_refuses_clear_text() {
    let test = TlsCluster::start().await;
    tenant_with_budget(&test.client, "acme", 1_000).await;
    spend(&test.client, 5).await;
    assert_eq!(used_tokens(&test.client, "acme").await, (35, 0));

    let plain = Client::new(ClientConfig {
        deadline: Duration::from_secs(2),
        ..ClientConfig::new(test.cluster.endpoints())
    })
    .expect("client");
    let error = plain
        .list_tenants()
        .await
        .expect_err("clear text is refused");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");

    // The client port does not serve Raft, whatever certificate the caller holds.
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let addr = test.cluster.addr(leader).unwrap();
    let node = test.ca.node(leader, "localhost").unwrap();
    let status = raft_client(&addr, &test.ca.cert_pem, Some(&node))
        .append_entries(forged_append(1_000, 9))
        .await
        .expect_err("no Raft service on the client port");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_admits_only_member_node_certificates() {
    let test = TlsCluster::start().await;
    tenant_with_budget(&test.client, "acme", 1_000).await;
    spend(&test.client, 3).await;
    let before = converged_statuses(&test.cluster, &test.client).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let peer = test.cluster.peer_addr(leader).unwrap();
    let forged_term = before[0].term + 1_000;
    let ca = &test.ca.cert_pem;

    let other_ca = Ca::generate().unwrap();
    let cases = [
        ("no client certificate", None, None),
        (
            "a client certificate",
            Some(test.ca.client("x").unwrap()),
            Some(tonic::Code::PermissionDenied),
        ),
        (
            "a certificate of another CA",
            Some(other_ca.node(1, "localhost").unwrap()),
            None,
        ),
        (
            "the certificate of a non-member node",
            Some(test.ca.node(9, "localhost").unwrap()),
            Some(tonic::Code::PermissionDenied),
        ),
    ];
    for (what, identity, code) in &cases {
        let result = raft_client(&peer, ca, identity.as_ref())
            .append_entries(forged_append(forged_term, 9))
            .await;
        let status = result.expect_err(what);
        match code {
            Some(code) => assert_eq!(status.code(), *code, "{what}: {status:?}"),
            // Refused in the handshake: the call never reaches the service.
            None => assert!(
                !matches!(
                    status.code(),
                    tonic::Code::Ok | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                ),
                "{what}: {status:?}"
            ),
        }
    }

    // A member's certificate (a compromised node) speaks only for its own node, and only
    // with a plausible term.
    let member = test.cluster.other_than(leader).unwrap();
    let member_cert = test.ca.node(member, "localhost").unwrap();
    let attempts = [
        (
            "another member's name",
            forged_append(forged_term, leader),
            tonic::Code::PermissionDenied,
        ),
        (
            "the largest term",
            forged_append(u64::MAX, member),
            tonic::Code::InvalidArgument,
        ),
    ];
    for (what, forged, code) in attempts {
        let status = raft_client(&peer, ca, Some(&member_cert))
            .append_entries(forged)
            .await
            .expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }

    let after = converged_statuses(&test.cluster, &test.client).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (a.node_id, a.chain_head_seq, &a.chain_head_hash),
            (b.node_id, b.chain_head_seq, &b.chain_head_hash),
            "the audit chain is unchanged"
        );
        assert!(
            a.term < forged_term,
            "node {} took the forged term",
            a.node_id
        );
    }
    assert_eq!(used_tokens(&test.client, "acme").await, (21, 0));
    spend(&test.client, 1).await;
    assert_eq!(
        used_tokens(&test.client, "acme").await,
        (28, 0),
        "the cluster keeps serving"
    );
    test.cluster.shutdown().await;
}
