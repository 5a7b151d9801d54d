//! The Rust client's guards against real nodes: a dropped guard is charged its estimate and
//! audited `abandoned`, `Client::guarded` commits, releases or settles as its closure says,
//! usage is priced by the tenant's price table, and a stopped cluster fails fast.

mod common;

use std::time::{Duration, Instant};

use common::TestCluster;
use tollgate_client::{
    v1, Amounts, CallError, Client, ClientConfig, Error, FailMode, GuardError, ReserveRequest,
    Usage,
};

/// How long a background settlement may take to show; only reached if something is broken.
const SETTLE_WAIT: Duration = Duration::from_secs(20);

/// A tenant with lifetime token and cost budgets far above what the tests spend.
async fn tenant(client: &Client, name: &str) {
    client.put_tenant(name, None).await.unwrap();
    for limit in [
        common::budget("tokens", v1::Dimension::Tokens, 1_000_000),
        common::budget("cost", v1::Dimension::Cost, 1_000_000_000),
    ] {
        client.put_limit(name, limit).await.unwrap();
    }
}

/// (used, held) of the tenant's budget `limit_id`.
async fn used_held(client: &Client, tenant: &str, limit_id: &str) -> (u64, u64) {
    let usage = client.usage(tenant, None, None).await.unwrap();
    usage
        .usage
        .iter()
        .find(|u| u.limit.as_ref().is_some_and(|l| l.id == limit_id))
        .map(|u| (u.used, u.held))
        .unwrap_or_else(|| panic!("no limit {limit_id} in {usage:?}"))
}

/// The commit events of reservation `id` in the tenant's audit trail.
async fn settlements(client: &Client, tenant: &str, id: u64) -> Vec<String> {
    let records = client
        .query_audit(v1::AuditQueryRequest {
            tenant: tenant.into(),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    records
        .into_iter()
        .filter(|r| r.reservation_id == Some(id) && r.event_json.contains("\"commit\""))
        .map(|r| r.event_json)
        .collect()
}

fn estimate() -> ReserveRequest {
    ReserveRequest::new("acme", "bot", "llm").estimate(Amounts::new(100, 1_000, 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_is_charged_its_estimate_and_audited_abandoned() {
    let test = TestCluster::start(3).await;
    tenant(&test.client, "acme").await;
    let reservation = test.client.reserve(estimate()).await.unwrap();
    let id = reservation.reservation_id().unwrap();
    // A `?` after the LLM call: the guard goes out of scope without commit or release.
    drop(reservation);
    let deadline = Instant::now() + SETTLE_WAIT;
    while used_held(&test.client, "acme", "tokens").await != (100, 0) {
        assert!(
            Instant::now() < deadline,
            "the dropped guard was not settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(used_held(&test.client, "acme", "cost").await, (1_000, 0));
    let events = settlements(&test.client, "acme", id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains("\"abandoned\":true"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_commits_releases_or_settles_as_the_call_says() {
    let test = TestCluster::start(1).await;
    tenant(&test.client, "acme").await;
    let client = &test.client;

    let (answer, committed) = client
        .guarded(estimate(), |_| async {
            Ok::<_, CallError<String>>(("done", Amounts::new(60, 700, 1)))
        })
        .await
        .unwrap();
    assert_eq!((answer, committed.cost_micros), ("done", 700));
    assert_eq!(used_held(client, "acme", "tokens").await, (60, 0));

    let not_called = client
        .guarded(estimate(), |_| async {
            Err::<((), Amounts), _>(CallError::NotCalled("bad prompt".to_string()))
        })
        .await;
    assert!(matches!(not_called, Err(GuardError::NotCalled(_))));
    assert_eq!(
        used_held(client, "acme", "tokens").await,
        (60, 0),
        "released"
    );

    // `?` on the call's own error: it may have happened, so the estimate is charged.
    let failed = client
        .guarded(estimate(), |_| async {
            let reply: Result<u64, String> = Err("connection reset mid-answer".into());
            let tokens = reply?;
            Ok(((), Amounts::new(tokens, 0, 1)))
        })
        .await;
    assert!(matches!(failed, Err(GuardError::Failed(_))));
    assert_eq!(used_held(client, "acme", "tokens").await, (160, 0));
    assert_eq!(used_held(client, "acme", "cost").await, (1_700, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_priced_by_the_tenants_price_table() {
    let test = TestCluster::start(1).await;
    let client = &test.client;
    tenant(client, "acme").await;
    // $2.50, $10 and $1.25 per million input, output and cached input tokens.
    let price = v1::Price {
        model: "gpt-test".into(),
        input_micros: 2_500_000,
        output_micros: 10_000_000,
        cached_input_micros: Some(1_250_000),
        per_tokens: 1_000_000,
        version: 0,
    };
    client.put_price("acme", price).await.unwrap();
    // 1001 × 2.5 + 333 × 10 + 7 × 1.25 = 5841.25 micros, rounded up: 5842.
    let used = Usage::new("gpt-test", 1_001, 333).cached_input_tokens(7);
    let cost_micros = 5_842;
    let reservation = client
        .reserve(
            ReserveRequest::new("acme", "bot", "llm:gpt-test")
                .usage(Usage::new("gpt-test", 1_001, 1_000)),
        )
        .await
        .unwrap();
    let committed = reservation.commit_usage(used.clone()).await.unwrap();
    assert_eq!(committed.cost_micros, cost_micros);
    assert_eq!(used_held(client, "acme", "cost").await, (cost_micros, 0));
    assert_eq!(used_held(client, "acme", "tokens").await, (1_341, 0));
    let recorded = client
        .record_usage("acme", "bot", "llm:gpt-test", used)
        .await
        .unwrap();
    assert_eq!(recorded.cost_micros, cost_micros);
    assert_eq!(
        used_held(client, "acme", "cost").await,
        (2 * cost_micros, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_cluster_fails_fast_and_stays_fast() {
    let test = TestCluster::start(3).await;
    tenant(&test.client, "acme").await;
    let client = test.client.clone();
    test.cluster.shutdown().await;
    // Well under the five-second deadline a reserve used to wait out; a second is a bound
    // a loaded machine cannot miss by accident, not the figure (docs/performance.md).
    for n in 0..20 {
        let started = Instant::now();
        let outcome = client.reserve(estimate()).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(outcome, Err(Error::Unavailable { .. })),
            "reserve {n}: {outcome:?}"
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "reserve {n} took {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_granted_while_failing_open_is_reported_once_the_cluster_is_back() {
    let mut test = TestCluster::start(3).await;
    tenant(&test.client, "acme").await;
    let mut config = ClientConfig::new(test.cluster.endpoints());
    config.fail_mode = FailMode::Open {
        local_cap: Amounts::new(1_000, 10_000, 10),
    };
    let client = Client::new(config).unwrap();
    let ids = test.cluster.ids();
    for id in &ids {
        test.cluster.stop(*id).await;
    }
    let granted = client.reserve(estimate()).await.unwrap();
    assert!(granted.is_local());
    granted.commit(Amounts::new(70, 800, 1)).await.unwrap();
    // A local guard dropped is spent at its estimate, like a cluster one.
    drop(client.reserve(estimate()).await.unwrap());

    for id in &ids {
        test.cluster.restart(*id).await.unwrap();
    }
    test.cluster.leader(common::LEADER_WAIT).await.unwrap();
    // Any answer of the cluster sends what waits; the admin's client reads it.
    let deadline = Instant::now() + SETTLE_WAIT;
    while used_held(&test.client, "acme", "tokens").await != (170, 0) {
        let _ = client.usage("acme", None, None).await;
        assert!(Instant::now() < deadline, "offline spend was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(used_held(&test.client, "acme", "cost").await, (1_800, 0));
    let records = test
        .client
        .query_audit(v1::AuditQueryRequest {
            tenant: "acme".into(),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let offline = records
        .iter()
        .filter(|r| r.event_json.contains("\"offline\":true"))
        .count();
    assert_eq!(offline, 2);
}
