//! The audit trail and the remembered answers on every node's disk, with a real cluster: a
//! node that joins by snapshot copies the answers it never applied, a retry older than the
//! ledger's memory is answered from disk, and records purged by age leave an anchor that
//! `status` shows and `audit verify` checks.

mod common;

use std::time::Duration;

use common::{tenant_with_budget, used_tokens, TestCluster, LEADER_WAIT};
use tollgate_client::{v1, Amounts};
use tollgate_ledger::{RequestId, TenantId, DEDUP_WINDOW_MS};
use tollgate_server::clock::Clock;
use tollgate_server::local_cluster::LocalCluster;
use tollgate_server::raft::state_machine::read_applied;

const HOUR_MS: u64 = 3_600_000;

/// Polls `done` until it holds, failing after `LEADER_WAIT` with `what`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT * 4;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every running node's ledger has reached `at_ms` (the leader's ticks carry
/// time forward).
async fn ledgers_reach(cluster: &LocalCluster, at_ms: u64) {
    for id in cluster.running_ids() {
        let node = cluster.node(id).expect("running").clone();
        until("the ledgers' time moves on", || {
            read_applied(&node.applied).ledger.now_ms() >= at_ms
        })
        .await;
    }
}

/// Every record of the trail, through the client (the leader's disk), oldest first.
async fn export_all(test: &TestCluster) -> Vec<v1::AuditRecord> {
    let mut export = test
        .client
        .export_audit(v1::AuditQueryRequest::default())
        .await
        .expect("export opens");
    let mut records = Vec::new();
    while let Some(record) = export.next().await.expect("export streams") {
        records.push(record);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joined_by_snapshot_copies_the_answers_and_a_late_retry_is_answered_from_disk() {
    let clock = Clock::shifted();
    let test = TestCluster::start_with(3, |options| {
        options.clock = clock.clone();
        options.snapshot_after_entries = 40;
        options.log_entries_kept_after_snapshot = 4;
    })
    .await;
    tenant_with_budget(&test.client, "acme", 1_000_000).await;
    let spend = Amounts::new(100, 0, 1);
    let first = (test.client)
        .record_with_id("first-record".into(), "acme", "bot", "search", spend)
        .await
        .expect("recorded");
    for _ in 0..150 {
        (test.client)
            .record("acme", "bot", "search", Amounts::new(1, 0, 1))
            .await
            .expect("recorded");
    }
    let used = used_tokens(&test.client, "acme").await;

    // A fourth node joins; the log before the snapshot is gone, so it joins by snapshot.
    let mut cluster = test.cluster;
    let new = cluster.add_node(4).await.expect("node 4 starts");
    (test.client)
        .add_learner(4, &new.addr, &new.peer_addr)
        .await
        .expect("learner added");
    let fourth = cluster.node(4).expect("node 4").clone();
    let leader_id = cluster.leader(LEADER_WAIT).await.expect("leader");
    let leader = cluster.node(leader_id).expect("leader node").clone();
    until("node 4 catches up and copies the answers", || {
        let caught_up = read_applied(&fourth.applied).last_applied
            == read_applied(&leader.applied).last_applied;
        caught_up && !fourth.trail.answers_copying()
    })
    .await;
    let status = test.client.status(&new.addr).await.expect("status");
    assert!(status.snapshot_index > 0, "node 4 joined by snapshot");
    let (tenant, request) = (
        TenantId::new("acme").unwrap(),
        RequestId::new("first-record").unwrap(),
    );
    let now_ms = clock.now_ms();
    let copied = fourth.trail.store().answer(&tenant, &request, now_ms);
    let copied = copied
        .expect("store reads")
        .expect("node 4 remembers the first answer");
    assert_eq!(copied.position, first.log_index);
    assert_eq!(
        fourth
            .trail
            .store()
            .verify()
            .expect("node 4's trail verifies"),
        read_applied(&leader.applied).ledger.chain_head()
    );

    // Past the ledger's memory: the retry is answered from disk, and charges nothing.
    clock.advance_ms(DEDUP_WINDOW_MS + 60_000);
    ledgers_reach(&cluster, now_ms + DEDUP_WINDOW_MS + 1).await;
    assert_eq!(
        read_applied(&leader.applied).ledger.stats().dedup_entries,
        0
    );
    let retry = (test.client)
        .record_with_id("first-record".into(), "acme", "bot", "search", spend)
        .await
        .expect("the retry is answered");
    assert_eq!(
        retry.log_index, first.log_index,
        "the first answer, not a new one"
    );
    assert_eq!(used_tokens(&test.client, "acme").await, used);
    let reused = (test.client)
        .record_with_id(
            "first-record".into(),
            "acme",
            "bot",
            "search",
            Amounts::new(7, 0, 1),
        )
        .await
        .expect_err("another payload under the same id is refused");
    assert!(reused.to_string().contains("first-record"), "{reused}");
    assert_eq!(used_tokens(&test.client, "acme").await, used);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_purged_by_age_leave_an_anchor_that_status_shows_and_verify_checks() {
    let clock = Clock::shifted();
    let test = TestCluster::start_with(3, |options| {
        options.clock = clock.clone();
        options.trail.audit_retention_ms = HOUR_MS;
    })
    .await;
    tenant_with_budget(&test.client, "acme", 1_000_000).await;
    for _ in 0..20 {
        (test.client)
            .record("acme", "bot", "search", Amounts::new(1, 0, 1))
            .await
            .expect("recorded");
    }
    let old = export_all(&test).await;
    clock.advance_ms(2 * HOUR_MS);
    ledgers_reach(&test.cluster, clock.now_ms()).await;
    for _ in 0..5 {
        (test.client)
            .record("acme", "bot", "search", Amounts::new(1, 0, 1))
            .await
            .expect("recorded");
    }
    for id in test.cluster.running_ids() {
        let node = test.cluster.node(id).expect("running").clone();
        let now_ms = read_applied(&node.applied).ledger.now_ms();
        tollgate_server::trail::purge_once(&node.trail, now_ms).expect("purged");
    }

    let kept = export_all(&test).await;
    let first_kept = kept.first().expect("the young records are kept");
    let anchor = &old.last().expect("old records").hash;
    assert_eq!(
        first_kept.seq,
        old.len() as u64 + 1,
        "every old record went"
    );
    assert_eq!(&first_kept.prev_hash, anchor);
    let leader = test.cluster.leader(LEADER_WAIT).await.expect("leader");
    let addr = test.cluster.addr(leader).expect("address");
    let status = test.client.status(&addr).await.expect("status");
    assert_eq!(status.trail_first_seq, first_kept.seq);
    assert_eq!(&status.trail_anchor, anchor);
    assert_eq!(status.trail_last_seq, status.chain_head_seq);
    assert!(status.trail_missing.is_empty());
    let verified = test.client.verify_audit().await.expect("verify");
    assert!(verified.ok, "{}", verified.error);
    assert_eq!(
        (verified.first_seq, &verified.anchor),
        (first_kept.seq, anchor)
    );
    assert_eq!(verified.head_hash, status.chain_head_hash);
    test.cluster.shutdown().await;
}
