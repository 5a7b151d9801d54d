//! The cluster keeps its promises with real nodes over loopback gRPC: bootstrap, no
//! overspend under concurrency, failover without lost or doubled spend, restart, membership.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_chain_heads_agree, converged_statuses, tenant_with_budget, used_tokens, TestCluster,
    LEADER_WAIT,
};
use tollgate_client::{new_request_id, Amounts, Error, ReserveRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_and_elect_one_leader() {
    let test = TestCluster::start(3).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let statuses = converged_statuses(&test.cluster, &test.client).await;
    assert_eq!(statuses.len(), 3);
    let leaders: Vec<_> = statuses.iter().filter(|s| s.role == "leader").collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {statuses:?}");
    assert_eq!(leaders[0].node_id, leader);
    for status in &statuses {
        assert_eq!(status.leader_id, Some(leader));
        assert_eq!(status.members.len(), 3);
        assert!(status.members.iter().all(|m| m.voter));
    }
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_never_overspend_a_budget() {
    const BUDGET_TOKENS: u64 = 10_000;
    const CLIENTS: u64 = 200;
    let test = TestCluster::start(3).await;
    tenant_with_budget(&test.client, "acme", BUDGET_TOKENS).await;
    assert!(
        test.client.config().coalesce,
        "the default: concurrent reserves and commits leave in shared Batch calls"
    );

    let committed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..CLIENTS {
        let client = test.client.clone();
        let committed = committed.clone();
        workers.push(tokio::spawn(async move {
            // Sizes differ per worker so that the last grants must fit exactly.
            let tokens = 7 + worker % 50;
            let mut log_indexes = Vec::new();
            loop {
                let request = ReserveRequest::new("acme", format!("agent-{}", worker % 20), "llm")
                    .tokens(tokens);
                match client.reserve(request).await {
                    Ok(reservation) => {
                        log_indexes.extend(reservation.applied().map(|a| a.log_index));
                        let info = reservation
                            .commit(Amounts::new(tokens, 0, 1))
                            .await
                            .expect("commit is acknowledged");
                        log_indexes.extend(info.applied.map(|a| a.log_index));
                        committed.fetch_add(tokens, Ordering::SeqCst);
                    }
                    Err(Error::Denied { .. }) => return log_indexes,
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
        }));
    }
    let mut log_indexes = Vec::new();
    for worker in workers {
        log_indexes.extend(worker.await.unwrap());
    }
    let commands = log_indexes.len();
    log_indexes.sort_unstable();
    log_indexes.dedup();
    println!(
        "batching: {commands} reserves and commits in {} Raft entries ({:.1} per entry)",
        log_indexes.len(),
        commands as f64 / log_indexes.len() as f64
    );
    assert!(
        log_indexes.len() < commands,
        "concurrent requests share entries"
    );
    let acknowledged = committed.load(Ordering::SeqCst);
    let (used, held) = used_tokens(&test.client, "acme").await;
    println!("budget {BUDGET_TOKENS}, committed {acknowledged}, reported used {used}");
    assert!(
        acknowledged <= BUDGET_TOKENS,
        "grants overspent: {acknowledged}"
    );
    assert_eq!(
        used, acknowledged,
        "usage is the sum of acknowledged commits"
    );
    assert_eq!(held, 0);
    // Every worker stopped only when denied, so the budget is nearly used up.
    assert!(
        acknowledged > BUDGET_TOKENS - 60,
        "budget left unused: {acknowledged}"
    );
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_load_loses_no_acknowledged_operation() {
    const WORKERS: u64 = 16;
    const OPS_BEFORE_KILL: u64 = 200;
    const OPS_AFTER_KILL: u64 = 200;
    let mut test = TestCluster::start(3).await;
    tenant_with_budget(&test.client, "acme", 1_000_000_000).await;

    // An acknowledged record, to be retried after the failover.
    let record_id = new_request_id();
    let first = test
        .client
        .record_with_id(
            record_id.clone(),
            "acme",
            "auditor",
            "llm",
            Amounts::new(5, 0, 1),
        )
        .await
        .unwrap();

    let committed = Arc::new(AtomicU64::new(5));
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let last_success_ms = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (client, committed, ops, stop, last_success_ms) = (
            test.client.clone(),
            committed.clone(),
            ops.clone(),
            stop.clone(),
            last_success_ms.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut gap_max = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let before = Instant::now();
                let request =
                    ReserveRequest::new("acme", format!("agent-{worker}"), "llm").tokens(10);
                let reservation = client
                    .reserve(request)
                    .await
                    .expect("reserve survives failover");
                reservation
                    .commit(Amounts::new(10, 0, 1))
                    .await
                    .expect("commit survives failover");
                gap_max = gap_max.max(before.elapsed());
                committed.fetch_add(10, Ordering::SeqCst);
                ops.fetch_add(1, Ordering::SeqCst);
                let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
                last_success_ms.fetch_max(now_ms, Ordering::SeqCst);
            }
            gap_max
        }));
    }
    wait_for_ops(&ops, OPS_BEFORE_KILL).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let killed_at = Instant::now();
    test.cluster.stop(leader).await;
    let ops_at_kill = ops.load(Ordering::SeqCst);
    wait_for_ops(&ops, ops_at_kill + 1).await;
    let first_success_after_kill = killed_at.elapsed();
    wait_for_ops(&ops, ops_at_kill + OPS_AFTER_KILL).await;
    stop.store(true, Ordering::SeqCst);
    let mut gap_max = Duration::ZERO;
    for worker in workers {
        gap_max = gap_max.max(worker.await.unwrap());
    }
    println!(
        "leader {leader} killed: first operation after the kill in {first_success_after_kill:?}, \
         slowest reserve+commit {gap_max:?} (goal < 2 s)"
    );
    assert!(
        first_success_after_kill < Duration::from_secs(10),
        "service did not resume within 10 s"
    );

    let again = test
        .client
        .record_with_id(record_id, "acme", "auditor", "llm", Amounts::new(5, 0, 1))
        .await
        .unwrap();
    assert_eq!(
        again.log_index, first.log_index,
        "a retry returns the first answer"
    );
    let (used, held) = used_tokens(&test.client, "acme").await;
    assert_eq!(
        used,
        committed.load(Ordering::SeqCst),
        "every acknowledged commit, once"
    );
    assert_eq!(held, 0);

    test.cluster.restart(leader).await.unwrap();
    let statuses = converged_statuses(&test.cluster, &test.client).await;
    assert_chain_heads_agree(&statuses);
    test.cluster.shutdown().await;
}

async fn wait_for_ops(ops: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ops.load(Ordering::SeqCst) < target {
        assert!(
            Instant::now() < deadline,
            "load stalled at {} ops",
            ops.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reserve and commit `n` calls of `tokens` each; returns the tokens committed.
async fn spend(client: &tollgate_client::Client, tenant: &str, n: u64, tokens: u64) -> u64 {
    for i in 0..n {
        let request = ReserveRequest::new(tenant, format!("agent-{}", i % 7), "llm").tokens(tokens);
        client
            .reserve(request)
            .await
            .unwrap()
            .commit(Amounts::new(tokens, 0, 1))
            .await
            .unwrap();
    }
    n * tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_restarted_keep_usage_and_audit_chain_head() {
    let mut test = TestCluster::start(3).await;
    tenant_with_budget(&test.client, "acme", 1_000_000).await;
    let spent = spend(&test.client, "acme", 50, 3).await;
    let before = converged_statuses(&test.cluster, &test.client).await;
    let head_before = (before[0].chain_head_seq, before[0].chain_head_hash.clone());

    for id in test.cluster.ids() {
        test.cluster.stop(id).await;
    }
    for id in test.cluster.ids() {
        test.cluster.restart(id).await.unwrap();
    }
    test.cluster.leader(LEADER_WAIT).await.unwrap();

    let (used, _) = used_tokens(&test.client, "acme").await;
    assert_eq!(used, spent);
    let after = converged_statuses(&test.cluster, &test.client).await;
    for status in &after {
        assert_eq!(
            (status.chain_head_seq, status.chain_head_hash.clone()),
            head_before,
            "node {} lost or changed audit records",
            status.node_id
        );
    }
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_node_joins_as_learner_then_voter_and_catches_up_by_snapshot() {
    let mut test = TestCluster::start_with(3, |options| {
        options.snapshot_after_entries = 20;
        options.log_entries_kept_after_snapshot = 0;
    })
    .await;
    tenant_with_budget(&test.client, "acme", 1_000_000).await;
    let spent = spend(&test.client, "acme", 60, 2).await;

    let new = test.cluster.add_node(4).await.unwrap();
    let added = test
        .client
        .add_learner(4, &new.addr, &new.peer_addr)
        .await
        .unwrap();
    // A retried add (the operator's call timed out) changes nothing; another address is refused.
    let again = test
        .client
        .add_learner(4, &new.addr, &new.peer_addr)
        .await
        .unwrap();
    assert_eq!(
        again.applied, added.applied,
        "a retry appends no membership entry"
    );
    assert_eq!(again.members, added.members);
    let moved = test
        .client
        .add_learner(4, &new.addr, "127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(moved.to_string().contains("already a member"), "{moved}");
    let membership = test
        .client
        .change_membership(vec![1, 2, 3, 4])
        .await
        .unwrap();
    assert_eq!(membership.members.iter().filter(|m| m.voter).count(), 4);

    let statuses = converged_statuses(&test.cluster, &test.client).await;
    let joined = statuses
        .iter()
        .find(|s| s.node_id == 4)
        .expect("node 4 answers");
    assert!(
        joined.snapshot_index > 0,
        "node 4 caught up by snapshot: {joined:?}"
    );
    assert_chain_heads_agree(&statuses);

    // The new voter counts: with node 4 in, losing two of the original three loses quorum
    // only if node 4 did not vote. Stop one original node and the cluster still serves.
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    test.cluster.stop(follower).await;
    let more = spend(&test.client, "acme", 5, 2).await;
    assert_eq!(used_tokens(&test.client, "acme").await.0, spent + more);
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_cut_off_and_brought_back_converges() {
    let mut test = TestCluster::start_with(3, |options| {
        options.snapshot_after_entries = 20;
        options.log_entries_kept_after_snapshot = 0;
    })
    .await;
    tenant_with_budget(&test.client, "acme", 1_000_000).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let follower = test.cluster.other_than(leader).unwrap();
    test.cluster.isolate(follower);
    let spent = spend(&test.client, "acme", 60, 4).await;
    test.cluster.heal(follower);

    let statuses = converged_statuses(&test.cluster, &test.client).await;
    assert_chain_heads_agree(&statuses);
    // Once the follower has caught up, losing the leader still leaves a majority that has it all.
    test.cluster.stop(leader).await;
    assert_eq!(used_tokens(&test.client, "acme").await.0, spent);
    test.cluster.shutdown().await;
}
