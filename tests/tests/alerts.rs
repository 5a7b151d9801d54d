//! Soft thresholds and alerts on a real 3-node cluster: a budget charged past 50 % and
//! 80 % is alerted to a webhook served by this test, signed, retried after a failure, and
//! the crossings are in the audit trail.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tollgate_client::{v1, Amounts};
use tollgate_server::alerts::{AlertWebhook, SIGNATURE_HEADER};

use common::{tokens_budget, TestCluster};

const SECRET: &[u8] = b"alerts-test-secret-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(30);

/// What the receiver saw: every attempt, and the bodies it acknowledged.
#[derive(Default)]
struct Received {
    attempts: u32,
    /// Answer 500 to this many attempts first.
    fail_first: u32,
    /// Answer 500 to every attempt while set.
    refusing: bool,
    acknowledged: Vec<(String, serde_json::Value)>,
}

type Receiver = Arc<Mutex<Received>>;

async fn hook(State(received): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut received = received.lock().unwrap();
    received.attempts += 1;
    if received.attempts <= received.fail_first || received.refusing {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let Some(value) = verified(&signature, &body) else {
        return StatusCode::UNAUTHORIZED;
    };
    received.acknowledged.push((signature, value));
    StatusCode::NO_CONTENT
}

/// The body, if `signature` is `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`: what a
/// receiver checks (docs/operations.md).
fn verified(signature: &str, body: &[u8]) -> Option<serde_json::Value> {
    let (t, v1) = signature.split_once(',')?;
    let t = t.strip_prefix("t=")?;
    let v1 = hex::decode(v1.strip_prefix("v1=")?).ok()?;
    let mut mac = <Hmac<Sha256>>::new_from_slice(SECRET).ok()?;
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).ok()?;
    serde_json::from_slice(body).ok()
}

async fn start_receiver(fail_first: u32) -> (SocketAddr, Receiver) {
    let received = Arc::new(Mutex::new(Received {
        fail_first,
        ..Received::default()
    }));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

async fn record_tokens(test: &TestCluster, tokens: u64) {
    let actual = Amounts {
        tokens,
        ..Amounts::default()
    };
    test.client
        .record("acme", "bot", "llm", actual)
        .await
        .expect("record");
}

/// The thresholds and sequence numbers acknowledged so far, once each.
fn acknowledged(received: &Receiver) -> BTreeSet<(u64, u64)> {
    let received = received.lock().unwrap();
    received
        .acknowledged
        .iter()
        .map(|(_, body)| {
            let crossing = &body["event"]["threshold_crossed"];
            (
                crossing["threshold_percent"].as_u64().unwrap(),
                body["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossings_reach_the_webhook_signed_and_retried_and_stay_in_the_audit_trail() {
    let (addr, received) = start_receiver(1).await;
    let webhook = AlertWebhook::new(&format!("http://{addr}/hook"), SECRET, None, false)
        .expect("a loopback webhook");
    let test = TestCluster::start_with(3, |options| options.alerts = Some(webhook)).await;
    test.client.put_tenant("acme", None).await.expect("tenant");
    test.client
        .put_limit("acme", tokens_budget("tokens", 1_000))
        .await
        .expect("limit");

    record_tokens(&test, 499).await; // 49.9 %: nothing
    record_tokens(&test, 1).await; // 50 %
    record_tokens(&test, 350).await; // 85 %: 80 crossed, 95 not
                                     // A worker sees it too, before any denial: usage names the highest threshold crossed.
    let usage = test.client.usage("acme", None, None).await.expect("usage");
    let alerted: Vec<u32> = usage.usage.iter().map(|row| row.alerted_percent).collect();
    assert_eq!(alerted, [80]);

    let deadline = tokio::time::Instant::now() + DEADLINE;
    while acknowledged(&received).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alerts not delivered within {DEADLINE:?}: {:?}",
            acknowledged(&received)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = acknowledged(&received);
    let percents: Vec<u64> = delivered.iter().map(|(percent, _)| *percent).collect();
    assert_eq!(percents, [50, 80], "exactly the thresholds crossed");
    let (attempts, acknowledgements) = {
        let received = received.lock().unwrap();
        (received.attempts, received.acknowledged.len())
    };
    assert!(
        attempts as usize > acknowledgements,
        "the first attempt failed (500) and was retried: {attempts} attempts"
    );

    let audit = test
        .client
        .query_audit(v1::AuditQueryRequest {
            tenant: "acme".into(),
            event: "threshold_crossed".into(),
            ..Default::default()
        })
        .await
        .expect("audit query");
    let in_audit: BTreeSet<(u64, u64)> = audit
        .iter()
        .map(|record| {
            let event: serde_json::Value = serde_json::from_str(&record.event_json).unwrap();
            let percent = event["threshold_crossed"]["threshold_percent"].as_u64();
            (percent.unwrap(), record.seq)
        })
        .collect();
    assert_eq!(in_audit, delivered, "what was alerted is what was audited");

    // The cursor is replicated: every node knows both were delivered, so a new leader
    // would not send them again.
    let last_seq = delivered.iter().map(|(_, seq)| *seq).max().unwrap();
    for id in test.cluster.ids() {
        let node = test.cluster.node(id).expect("node").clone();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let cursor = tollgate_server::raft::state_machine::read_applied(&node.applied)
                .ledger
                .alerts_delivered_seq();
            if cursor >= last_seq {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id}'s alert cursor {cursor} < {last_seq}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_delivers_what_the_old_one_could_not() {
    let (addr, received) = start_receiver(0).await;
    received.lock().unwrap().refusing = true;
    let webhook = AlertWebhook::new(&format!("http://{addr}/hook"), SECRET, None, false)
        .expect("a loopback webhook");
    let mut test = TestCluster::start_with(3, |options| options.alerts = Some(webhook)).await;
    test.client.put_tenant("acme", None).await.expect("tenant");
    test.client
        .put_limit("acme", tokens_budget("tokens", 1_000))
        .await
        .expect("limit");
    record_tokens(&test, 600).await; // 60 %: 50 crossed

    let deadline = tokio::time::Instant::now() + DEADLINE;
    while received.lock().unwrap().attempts == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt to deliver"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old_leader = test
        .cluster
        .leader(common::LEADER_WAIT)
        .await
        .expect("leader");
    test.cluster.stop(old_leader).await;
    received.lock().unwrap().refusing = false;

    let deadline = tokio::time::Instant::now() + DEADLINE;
    while acknowledged(&received).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new leader did not deliver within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let percents: Vec<u64> = acknowledged(&received).iter().map(|(p, _)| *p).collect();
    assert_eq!(percents, [50]);
    let new_leader = test
        .cluster
        .leader(common::LEADER_WAIT)
        .await
        .expect("leader");
    assert_ne!(new_leader, old_leader);
}

/// Records enough to push everything before them out of the ledger's memory, in full
/// `Batch` calls of one tenant to the leader; what a call did not apply is sent again (same
/// ids: exactly once).
async fn flood(test: &TestCluster, records: usize) {
    test.client.put_tenant("flood", None).await.expect("tenant");
    let batch = tollgate_proto::BATCH_OPS_MAX;
    for first in (0..records).step_by(batch) {
        let mut ops: Vec<v1::BatchOp> = (first..first + batch).map(flood_op).collect();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !ops.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "records not applied"
            );
            let leader = test
                .cluster
                .leader(common::LEADER_WAIT)
                .await
                .expect("leader");
            let addr = test.cluster.addr(leader).expect("leader's address");
            let request = v1::BatchRequest { ops: ops.clone() };
            let answer = test
                .client
                .call_node(&addr, |rpc| {
                    let request = request.clone();
                    async move { rpc.tollgate().batch(request).await }
                })
                .await;
            ops = match answer {
                Ok(response) => (ops.into_iter().zip(response.results))
                    .filter(|(_, r)| !matches!(r.result, Some(v1::batch_result::Result::Record(_))))
                    .map(|(op, _)| op)
                    .collect(),
                Err(_) => ops,
            };
            if !ops.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn flood_op(n: usize) -> v1::BatchOp {
    v1::BatchOp {
        op: Some(v1::batch_op::Op::Record(v1::RecordRequest {
            request_id: format!("flood-{n}"),
            tenant: "flood".into(),
            // Over 512 agents, as in a real cluster of this size: below that, a debug
            // build's ledger checks every invariant (O(state)) after each command.
            agent: format!("a{}", n % 1_024),
            tool: "llm".into(),
            actual: Some(v1::Amounts {
                tokens: 1,
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossings_that_left_the_ledgers_memory_are_delivered_from_the_trail_on_disk() {
    let (addr, received) = start_receiver(0).await;
    received.lock().unwrap().refusing = true;
    let webhook = AlertWebhook::new(&format!("http://{addr}/hook"), SECRET, None, false)
        .expect("a loopback webhook");
    // Elections at their default pace: full batches on a debug build outlast the fast ones.
    let test = TestCluster::start_with(3, |options| {
        options.alerts = Some(webhook);
        options.fast_elections = false;
    })
    .await;
    test.client.put_tenant("acme", None).await.expect("tenant");
    test.client
        .put_limit("acme", tokens_budget("tokens", 1_000))
        .await
        .expect("limit");
    record_tokens(&test, 600).await; // 50 % crossed: retried while the webhook refuses
    record_tokens(&test, 300).await; // 90 %: 80 crossed, not looked at meanwhile
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while received.lock().unwrap().attempts == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let retained = tollgate_ledger::AUDIT_RECORDS_RETAINED_MAX;
    flood(&test, retained + tollgate_proto::BATCH_OPS_MAX).await;
    received.lock().unwrap().refusing = false;

    // The sender's retries back off while refused: up to a minute between two.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acknowledged(&received).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {:?}",
            acknowledged(&received)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = acknowledged(&received);
    let percents: Vec<u64> = delivered.iter().map(|(percent, _)| *percent).collect();
    assert_eq!(percents, [50, 80], "every crossing, once");
    let leader = test
        .cluster
        .leader(common::LEADER_WAIT)
        .await
        .expect("leader");
    let node = test.cluster.node(leader).expect("leader node").clone();
    let oldest = tollgate_server::raft::state_machine::read_applied(&node.applied)
        .ledger
        .audit_oldest_seq()
        .expect("records in memory");
    let (_, seq_80) = delivered.last().copied().unwrap();
    assert!(
        seq_80 < oldest,
        "the 80 % crossing ({seq_80}) had left memory ({oldest})"
    );
}
