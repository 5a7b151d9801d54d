//! Shared set-up of the integration tests: a real cluster on loopback and a client for it.

#![allow(dead_code)] // each test binary uses part of this module

pub mod raw;

use std::time::Duration;

use tempfile::TempDir;
use tollgate_client::v1;
use tollgate_client::{Client, ClientConfig};
use tollgate_server::local_cluster::{LocalCluster, LocalClusterOptions};

/// How long any test waits for an election before it calls the cluster broken.
pub const LEADER_WAIT: Duration = Duration::from_secs(15);

pub struct TestCluster {
    pub cluster: LocalCluster,
    pub client: Client,
    _dir: TempDir,
}

impl TestCluster {
    pub async fn start(nodes: u64) -> Self {
        Self::start_with(nodes, |_| {}).await
    }

    pub async fn start_with(nodes: u64, adjust: impl FnOnce(&mut LocalClusterOptions)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = LocalClusterOptions::new(nodes, dir.path().to_path_buf());
        options.fast_elections = true;
        adjust(&mut options);
        let cluster = LocalCluster::start(options).await.expect("cluster starts");
        cluster
            .leader(LEADER_WAIT)
            .await
            .expect("a leader is elected");
        let client = client_for(&cluster, None);
        Self {
            cluster,
            client,
            _dir: dir,
        }
    }
}

pub fn client_for(cluster: &LocalCluster, token: Option<&str>) -> Client {
    let mut config = ClientConfig::new(cluster.endpoints());
    config.token = token.map(str::to_string);
    // Longer than any election here, so that a failover is retried through, not reported.
    config.deadline = Duration::from_secs(20);
    // Two hundred clients on two shared cores can wait more than the default second for one
    // Raft round; an attempt cut short only burns one of the call's bounded attempts.
    config.attempt_timeout = Duration::from_secs(3);
    Client::new(config).expect("client")
}

/// The bootstrap admin key of clusters started by [`TestCluster::with_auth`].
pub const ADMIN_KEY: &str = "tg_bootstrap_test-admin-key-0123456789abcdef0123456789";

impl TestCluster {
    /// A cluster with authentication on, its bootstrap admin key [`ADMIN_KEY`]; `client`
    /// is the admin's.
    pub async fn with_auth(nodes: u64) -> Self {
        let mut test = Self::start_with(nodes, |options| {
            options.auth = tollgate_server::auth::Auth::with_bootstrap_key(ADMIN_KEY)
                .expect("a valid bootstrap key");
        })
        .await;
        test.client = client_for(&test.cluster, Some(ADMIN_KEY));
        test
    }
}

/// Creates an API key through `client` and returns its secret string.
pub async fn create_key(
    client: &Client,
    tenant: Option<&str>,
    role: v1::KeyRole,
    agents: &[&str],
) -> (String, String) {
    let agents: Vec<String> = agents.iter().map(|a| a.to_string()).collect();
    let created = client
        .create_key(tenant, role, &agents, "test")
        .await
        .expect("create key");
    (created.key.expect("the key").key_id, created.api_key)
}

pub fn tokens_budget(id: &str, amount: u64) -> v1::Limit {
    v1::Limit {
        id: id.into(),
        scope: Some(v1::Scope {
            scope: Some(v1::scope::Scope::Tenant(v1::Empty {})),
        }),
        dimension: v1::Dimension::Tokens.into(),
        kind: Some(v1::limit::Kind::Budget(v1::Budget {
            window: v1::Window::Lifetime.into(),
            amount,
        })),
        thresholds: None,
    }
}

/// A lifetime budget of `amount` on `dimension`, scoped to the tenant.
pub fn budget(id: &str, dimension: v1::Dimension, amount: u64) -> v1::Limit {
    v1::Limit {
        dimension: dimension.into(),
        ..tokens_budget(id, amount)
    }
}

/// A tenant with one lifetime token budget over the whole tenant.
pub async fn tenant_with_budget(client: &Client, tenant: &str, tokens: u64) {
    client.put_tenant(tenant, None).await.expect("put tenant");
    client
        .put_limit(tenant, tokens_budget("tokens", tokens))
        .await
        .expect("put limit");
}

/// Committed tokens of the tenant's `tokens` budget, read linearizably.
pub async fn used_tokens(client: &Client, tenant: &str) -> (u64, u64) {
    let usage = client.usage(tenant, None, None).await.expect("usage");
    let budget = usage
        .usage
        .iter()
        .find(|u| u.limit.as_ref().is_some_and(|l| l.id == "tokens"))
        .expect("the tokens budget is reported");
    (budget.used, budget.held)
}

/// Waits until every running node has applied the same index, then returns each node's
/// status. Polls: replication has no event a test could wait on from outside.
pub async fn converged_statuses(
    cluster: &LocalCluster,
    client: &Client,
) -> Vec<v1::StatusResponse> {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        let mut statuses = Vec::new();
        for id in cluster.running_ids() {
            let addr = cluster.addr(id).expect("address");
            if let Ok(status) = client.status(&addr).await {
                statuses.push(status);
            }
        }
        let complete = statuses.len() == cluster.running_ids().len();
        let applied: Vec<u64> = statuses.iter().map(|s| s.applied_index).collect();
        if complete && applied.windows(2).all(|w| w[0] == w[1]) {
            return statuses;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes did not converge: applied indexes {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that every node reports the same audit chain head: same seq, same hash.
pub fn assert_chain_heads_agree(statuses: &[v1::StatusResponse]) {
    let heads: Vec<_> = statuses
        .iter()
        .map(|s| {
            (
                s.node_id,
                s.chain_head_seq,
                s.chain_head_hash
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            )
        })
        .collect();
    assert!(
        heads
            .windows(2)
            .all(|w| (w[0].1, &w[0].2) == (w[1].1, &w[1].2)),
        "chain heads differ (node, seq, hash): {heads:?}"
    );
}
