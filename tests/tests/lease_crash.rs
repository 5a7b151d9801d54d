//! Leases under crashes: a worker killed with SIGKILL while it holds a slice, and a leader
//! killed while workers decide calls inside theirs. Whatever dies, every call a worker was
//! told it could make is charged, the budget is never overspent, and the audit trail
//! accounts for every unit charged: per call at a settle, or whole slices at expiry.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tollgate_client::{v1, Amounts, Client, Error, ReserveRequest};
use tollgate_ledger::{AuditEvent, AuditRecord};

const TENANT: &str = "acme";
/// Longer than a lease's TTL + grace + a tick: a dead holder's slice is back by then.
const RECLAIM_WAIT: Duration = Duration::from_secs(20);

async fn leased_tenant(client: &Client, tokens: u64) {
    client
        .put_tenant(TENANT, Some(tollgate_tests::leased_policy()))
        .await
        .unwrap();
    client
        .put_limit(TENANT, tokens_budget("tokens", tokens))
        .await
        .unwrap();
}

/// Tokens charged, by what charged them, as the audit trail says.
#[derive(Debug, Default)]
struct Charged {
    /// Calls decided inside leases, charged at a settle.
    lease_calls: u64,
    /// Whole slices of leases nobody settled in time.
    lease_expiries: u64,
    /// Per-call commits and expiries that charged.
    per_call: u64,
}

impl Charged {
    fn total(&self) -> u64 {
        self.lease_calls + self.lease_expiries + self.per_call
    }
}

async fn charged_by_audit(client: &Client) -> Charged {
    let query = v1::AuditQueryRequest {
        tenant: TENANT.into(),
        ..Default::default()
    };
    let mut export = client.export_audit(query).await.unwrap();
    let mut charged = Charged::default();
    while let Some(record) = export.next().await.unwrap() {
        let record: AuditRecord = serde_json::from_str(&record.json).unwrap();
        let tokens = record.amounts.tokens;
        match record.event {
            AuditEvent::LeaseCall { charged: true, .. } => charged.lease_calls += tokens,
            AuditEvent::LeaseExpire => charged.lease_expiries += tokens,
            AuditEvent::Commit { .. } | AuditEvent::Expire { charged: true } => {
                charged.per_call += tokens
            }
            _ => {}
        }
    }
    charged
}

/// Waits until no lease nor reservation holds anything: returned, settled or expired.
async fn wait_until_nothing_held(client: &Client) -> u64 {
    let deadline = Instant::now() + RECLAIM_WAIT;
    loop {
        let (used, held) = used_tokens(client, TENANT).await;
        if held == 0 {
            return used;
        }
        assert!(
            Instant::now() < deadline,
            "{held} tokens still held {RECLAIM_WAIT:?} after the last holder stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_holding_a_slice_has_every_call_charged_and_no_more_than_its_slice() {
    const BUDGET: u64 = 10_000_000;
    const LOCAL_CALLS_BEFORE_KILL: u64 = 500;
    let test = TestCluster::start(3).await;
    leased_tenant(&test.client, BUDGET).await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_lease_worker"))
        .args(["--endpoints", &test.cluster.endpoints().join(",")])
        .args(["--tenant", TENANT, "--agent", "looper", "--tokens", "100"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker starts");
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let (mut acknowledged, mut local) = (0, 0);
    while local < LOCAL_CALLS_BEFORE_KILL {
        let line = lines.next_line().await.unwrap().expect("the worker runs");
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.first(), Some(&"committed"), "{line}");
        acknowledged += fields[1].parse::<u64>().unwrap();
        local += u64::from(fields[2] != "-");
    }
    worker.kill().await.expect("SIGKILL");

    let used = wait_until_nothing_held(&test.client).await;
    let charged = charged_by_audit(&test.client).await;
    println!("acknowledged {acknowledged} tokens, charged {used}: {charged:?}");
    assert!(
        used >= acknowledged,
        "the worker was told {acknowledged} tokens of calls went through; only {used} are charged"
    );
    assert!(used <= BUDGET, "overspent: {used} of {BUDGET}");
    assert!(
        charged.lease_expiries > 0,
        "the killed worker's unsettled slice is charged at expiry: {charged:?}"
    );
    assert_eq!(
        used,
        charged.total(),
        "the audit trail accounts for every token charged: {charged:?}"
    );
    test.cluster.shutdown().await;
}

/// Reserve and commit 100 tokens a call until denied; returns the tokens acknowledged.
async fn spend_until_denied(client: Client, worker: u64, ops: Arc<AtomicU64>) -> u64 {
    let mut acknowledged = 0;
    loop {
        let request =
            ReserveRequest::new(TENANT, format!("agent-{}", worker % 4), "llm").tokens(100);
        let reservation = match client.reserve(request).await {
            Ok(reservation) => reservation,
            Err(Error::Denied { .. }) => return acknowledged,
            Err(error) => panic!("reserve survives failover: {error}"),
        };
        reservation
            .commit(Amounts::new(100, 0, 1))
            .await
            .expect("commit survives failover");
        acknowledged += 100;
        ops.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_workers_hold_slices_loses_no_call_and_overspends_nothing() {
    const BUDGET: u64 = 400_000;
    const WORKERS: u64 = 8;
    let mut test = TestCluster::start(3).await;
    leased_tenant(&test.client, BUDGET).await;
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(spend_until_denied(test.client.clone(), w, ops.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ops.load(Ordering::SeqCst) < 300 {
        assert!(Instant::now() < deadline, "load stalled before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    test.cluster.stop(leader).await;
    let mut acknowledged = 0;
    for worker in workers {
        acknowledged += worker.await.unwrap();
    }
    test.client.return_leases().await;

    let used = wait_until_nothing_held(&test.client).await;
    let charged = charged_by_audit(&test.client).await;
    println!("acknowledged {acknowledged} tokens, charged {used}: {charged:?}");
    assert!(
        used >= acknowledged,
        "the workers were told {acknowledged} tokens of calls went through; only {used} are charged"
    );
    assert!(used <= BUDGET, "overspent: {used} of {BUDGET}");
    assert_eq!(
        used,
        charged.total(),
        "the audit trail accounts for every token charged: {charged:?}"
    );
    test.cluster.restart(leader).await.unwrap();
    let statuses = converged_statuses(&test.cluster, &test.client).await;
    assert_chain_heads_agree(&statuses);
    test.cluster.shutdown().await;
}
