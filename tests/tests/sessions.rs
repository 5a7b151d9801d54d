//! Sessions over gRPC: a task fanned out over workers with separate clients stays inside
//! one session budget, and the session's usage is readable.

mod common;

use common::{client_for, TestCluster};
use tollgate_client::{v1, Amounts, Client, Error, ReserveRequest};

const TENANT: &str = "acme";

fn each_session(id: &str, dimension: v1::Dimension, kind: v1::limit::Kind) -> v1::Limit {
    v1::Limit {
        id: id.into(),
        scope: Some(v1::Scope {
            scope: Some(v1::scope::Scope::EachSession(v1::Empty {})),
        }),
        dimension: dimension.into(),
        kind: Some(kind),
        thresholds: None,
    }
}

fn task_budget(amount: u64) -> v1::Limit {
    let budget = v1::Budget {
        window: v1::Window::Lifetime.into(),
        amount,
    };
    each_session(
        "task-cost",
        v1::Dimension::Cost,
        v1::limit::Kind::Budget(budget),
    )
}

fn call(agent: &str, session: &str, cost_micros: u64) -> ReserveRequest {
    ReserveRequest::new(TENANT, agent, "llm:gpt-x")
        .cost_micros(cost_micros)
        .session(session)
}

async fn session_used(client: &Client, session: &str, limit: &str) -> u64 {
    let usage = client.session_usage(TENANT, session).await.expect("usage");
    usage
        .usage
        .iter()
        .find(|row| row.limit.as_ref().is_some_and(|l| l.id == limit))
        .map(|row| row.used)
        .expect("the session limit is reported")
}

/// Three workers, each with its own client, serve one task: their commits and a record
/// share the session's budget, the call past it is denied naming the session limit, and
/// another session of the same tenant is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_over_workers_stays_inside_one_session_budget() {
    let test = TestCluster::start(3).await;
    test.client.put_tenant(TENANT, None).await.expect("tenant");
    test.client
        .put_limit(TENANT, task_budget(100_000))
        .await
        .expect("session limit");
    let workers: Vec<Client> = (0..3).map(|_| client_for(&test.cluster, None)).collect();
    for (i, worker) in workers.iter().enumerate() {
        let agent = format!("worker-{i}");
        let reservation = worker
            .reserve(call(&agent, "ticket-7", 30_000))
            .await
            .expect("granted");
        reservation
            .commit(Amounts::new(0, 30_000, 1))
            .await
            .expect("commit");
    }
    workers[0]
        .record_in_session(
            "ticket-7",
            (TENANT, "planner", "llm:gpt-x"),
            Amounts::new(0, 5_000, 1),
        )
        .await
        .expect("record");
    assert_eq!(
        session_used(&test.client, "ticket-7", "task-cost").await,
        95_000
    );

    match workers[1]
        .reserve(call("worker-1", "ticket-7", 10_000))
        .await
    {
        Err(Error::Denied {
            limit_id, scope, ..
        }) => {
            assert_eq!(
                (limit_id.as_str(), scope.as_str()),
                ("task-cost", "each-session")
            );
        }
        other => panic!("expected the session budget to deny: {other:?}"),
    }
    let other = workers[2]
        .reserve(call("worker-2", "ticket-8", 100_000))
        .await;
    other
        .expect("another session has its own budget")
        .release()
        .await
        .expect("release");
    assert_eq!(session_used(&test.client, "ticket-8", "task-cost").await, 0);
    test.cluster.shutdown().await;
}

/// A duration limit ends the session once its time is up; a bad session name is
/// INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_duration_and_a_bad_session_name_are_enforced() {
    let test = TestCluster::start_with(3, |options| {
        options.clock = tollgate_server::clock::Clock::shifted();
    })
    .await;
    test.client.put_tenant(TENANT, None).await.expect("tenant");
    let duration = v1::limit::Kind::Duration(v1::Duration { ms: 60_000 });
    let limit = each_session("task-time", v1::Dimension::Calls, duration);
    test.client
        .put_limit(TENANT, limit)
        .await
        .expect("duration limit");
    let first = test
        .client
        .reserve(call("bot", "run-1", 1))
        .await
        .expect("first call");
    first.release().await.expect("release");
    test.cluster.clock().advance_ms(60_000);
    match test.client.reserve(call("bot", "run-1", 1)).await {
        Err(Error::Denied { limit_id, .. }) => assert_eq!(limit_id, "task-time"),
        other => panic!("expected the duration to deny: {other:?}"),
    }
    match test.client.reserve(call("bot", "bad session", 1)).await {
        Err(Error::Invalid(reason)) => assert!(reason.contains("session"), "{reason}"),
        other => panic!("expected INVALID_ARGUMENT: {other:?}"),
    }
    test.cluster.shutdown().await;
}
