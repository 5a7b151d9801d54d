//! Leases end to end: a real three-node cluster in process (as the workspace's integration
//! tests start one), a tenant with leases on, and many tasks reserving and committing
//! through one client. What a user relies on: every actual is charged once, the audit
//! trail has one `lease_call` per call decided locally, and a budget that runs out is
//! never overspent, the calls past its end being denied per call.

use std::collections::HashSet;
use std::time::Duration;

use tollgate_client::v1;
use tollgate_client::{Amounts, Client, ClientConfig, Error, ReserveRequest};
use tollgate_server::local_cluster::{LocalCluster, LocalClusterOptions};

const LEADER_WAIT: Duration = Duration::from_secs(15);

struct Cluster {
    cluster: LocalCluster,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalClusterOptions::new(3, dir.path().to_path_buf());
    options.fast_elections = true;
    let cluster = LocalCluster::start(options).await.expect("cluster starts");
    cluster.leader(LEADER_WAIT).await.expect("a leader");
    let client = Client::new(ClientConfig {
        deadline: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(3),
        ..ClientConfig::new(cluster.endpoints())
    })
    .unwrap();
    Cluster {
        cluster,
        client,
        _dir: dir,
    }
}

/// A tenant with leases on and a lifetime token budget of `tokens`.
async fn leased_tenant(client: &Client, tenant: &str, tokens: u64) {
    client.put_tenant(tenant, None).await.unwrap();
    let mut policy = client.get_tenant(tenant).await.unwrap().policy.unwrap();
    policy.leases = true;
    // Many calls in a burst are the point here, not runaway detection.
    policy.velocity_factor = 0;
    policy.shape_floor = 0;
    client.put_tenant(tenant, Some(policy)).await.unwrap();
    let limit = v1::Limit {
        id: "tokens".into(),
        scope: Some(v1::Scope {
            scope: Some(v1::scope::Scope::Tenant(v1::Empty {})),
        }),
        dimension: v1::Dimension::Tokens.into(),
        kind: Some(v1::limit::Kind::Budget(v1::Budget {
            window: v1::Window::Lifetime.into(),
            amount: tokens,
        })),
        thresholds: None,
    };
    client.put_limit(tenant, limit).await.unwrap();
}

/// (used, held) of the tenant's token budget.
async fn tokens(client: &Client, tenant: &str) -> (u64, u64) {
    let usage = client.usage(tenant, None, None).await.unwrap();
    let budget = usage
        .usage
        .iter()
        .find(|u| u.limit.as_ref().is_some_and(|l| l.id == "tokens"))
        .expect("the budget is reported");
    (budget.used, budget.held)
}

/// Request ids of the tenant's audit records of `event`.
async fn audited(client: &Client, tenant: &str, event: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after_seq = None;
    loop {
        let records = client
            .query_audit(v1::AuditQueryRequest {
                tenant: tenant.into(),
                event: event.into(),
                after_seq,
                limit: tollgate_client::AUDIT_QUERY_RECORDS_MAX,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = records.last() else {
            return ids;
        };
        after_seq = Some(last.seq);
        ids.extend(records.into_iter().map(|r| r.request_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_on_a_leased_tenant_are_charged_their_actuals_once_each() {
    let test = start().await;
    leased_tenant(&test.client, "acme", 100_000_000).await;
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let client = test.client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut spent, mut leased) = (0, Vec::new());
            for i in 0..150u64 {
                let request = ReserveRequest::new("acme", "bot", "search").tokens(100);
                let reservation = client.reserve(request).await.unwrap();
                if reservation.lease_id().is_some() {
                    leased.push(reservation.request_id().to_owned());
                }
                let actual = (task * 7 + i * 13) % 130; // some over the estimate
                reservation
                    .commit(Amounts::new(actual, 0, 1))
                    .await
                    .unwrap();
                spent += actual;
            }
            (spent, leased)
        }));
    }
    let (mut spent, mut leased) = (0, HashSet::new());
    for task in tasks {
        let (s, ids) = task.await.unwrap();
        spent += s;
        leased.extend(ids);
    }
    test.client.return_leases().await;
    assert_eq!(tokens(&test.client, "acme").await, (spent, 0));
    assert!(
        leased.len() > 600,
        "{} of 1,200 decided locally",
        leased.len()
    );
    let calls = audited(&test.client, "acme", "lease_call").await;
    let unique: HashSet<String> = calls.iter().cloned().collect();
    assert_eq!(calls.len(), unique.len(), "one lease_call per call");
    assert_eq!(unique, leased);
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_budget_that_runs_out_is_not_overspent_and_the_rest_is_denied() {
    let test = start().await;
    leased_tenant(&test.client, "acme", 5_000).await;
    let (mut spent, mut denied) = (0, 0);
    for _ in 0..120 {
        let request = ReserveRequest::new("acme", "bot", "search").tokens(100);
        match test.client.reserve(request).await {
            Ok(reservation) => {
                reservation.commit(Amounts::new(100, 0, 1)).await.unwrap();
                spent += 100;
            }
            Err(Error::Denied { limit_id, .. }) => {
                assert_eq!(limit_id, "tokens");
                denied += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    test.client.return_leases().await;
    let (used, held) = tokens(&test.client, "acme").await;
    assert_eq!((used, held), (spent, 0));
    assert!(used <= 5_000, "used {used} of 5,000");
    assert!(used >= 4_000, "the budget was mostly usable: {used}");
    assert!(denied >= 70, "{denied} calls past the end were denied");
    test.cluster.shutdown().await;
}
