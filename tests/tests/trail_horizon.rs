//! The answer horizon: a retry (same tenant, request id and payload) gets its first answer
//! back for 24 hours, long after the ledger's 10-minute memory has forgotten it, because the
//! leader looks the request up in the trail on disk before proposing it. Past the horizon a
//! retry is a new request. The clock is shifted: a day passes in a second.

mod common;

use common::{tenant_with_budget, used_tokens, TestCluster};
use tollgate_client::{Amounts, Applied, Client, Error};
use tollgate_ledger::DEDUP_WINDOW_MS;

const TENANT: &str = "acme";
const AGENT: &str = "worker";
const TOOL: &str = "llm:gpt-x";
/// Another tenant, whose records only carry the ledger's time forward: they never touch
/// `TENANT`'s usage.
const PROBE_TENANT: &str = "clock-probe";
const HOUR_MS: u64 = 3_600_000;
/// The node's default `--answer-horizon`.
const ANSWER_HORIZON_MS: u64 = 24 * HOUR_MS;
const REQUEST_ID: &str = "req-horizon-0001";
const SPEND: Amounts = Amounts::new(100, 2_000, 1);

async fn started() -> TestCluster {
    let test = TestCluster::start_with(3, |options| {
        options.clock = tollgate_server::clock::Clock::shifted();
    })
    .await;
    tenant_with_budget(&test.client, TENANT, 1_000_000).await;
    test.client
        .put_tenant(PROBE_TENANT, None)
        .await
        .expect("probe tenant");
    test
}

async fn record(client: &Client, request_id: &str, actual: Amounts) -> Result<Applied, Error> {
    client
        .record_with_id(request_id.to_owned(), TENANT, AGENT, TOOL, actual)
        .await
}

/// Moves the shifted clock `ms` forward and returns once the ledger's own time (the stamp
/// of an applied entry) has reached `at_least_ms`: a probe record in another tenant is
/// applied at the leader's time, and applying it makes the ledger forget every answer older
/// than its 10-minute window.
async fn advance_ledger_to(test: &TestCluster, ms: u64, at_least_ms: u64) -> u64 {
    test.cluster.clock().advance_ms(ms);
    let probe = test
        .client
        .record(PROBE_TENANT, "probe", TOOL, Amounts::new(0, 0, 1))
        .await
        .expect("a probe record is applied");
    assert!(
        probe.at_ms >= at_least_ms,
        "the ledger's time did not move: the probe was stamped {} ms, wanted at least {at_least_ms} ms",
        probe.at_ms
    );
    probe.at_ms
}

/// A record is charged once; 23 hours later (the ledger's memory long past) its retry gets
/// the first answer, same position, and charges nothing; 25 hours after the first, the
/// retry is a new request, at a new position, charged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_its_first_answer_for_the_whole_horizon_and_is_new_after_it() {
    let test = started().await;
    let first = record(&test.client, REQUEST_ID, SPEND)
        .await
        .expect("first record");
    assert_eq!(used_tokens(&test.client, TENANT).await, (100, 0));

    let now_ms = advance_ledger_to(&test, 23 * HOUR_MS, first.at_ms + 23 * HOUR_MS).await;
    assert!(now_ms >= first.at_ms + DEDUP_WINDOW_MS, "past the memory");
    let retry = record(&test.client, REQUEST_ID, SPEND)
        .await
        .expect("a retry within the horizon is answered");
    assert_eq!(
        retry.log_index, first.log_index,
        "a retry 23 h later must get the first answer back (its position), not run again"
    );
    assert_eq!(
        used_tokens(&test.client, TENANT).await,
        (100, 0),
        "the retry charges nothing"
    );

    let after_ms = first.at_ms + ANSWER_HORIZON_MS + HOUR_MS;
    advance_ledger_to(&test, 2 * HOUR_MS, after_ms).await;
    let late = record(&test.client, REQUEST_ID, SPEND)
        .await
        .expect("a retry after the horizon is a new request");
    assert!(
        late.log_index > first.log_index && late.at_ms >= after_ms,
        "past the horizon the retry runs again, at a new position: {late:?} after {first:?}"
    );
    assert_eq!(
        used_tokens(&test.client, TENANT).await,
        (200, 0),
        "past the horizon the retry is charged again"
    );
    let leader = test
        .cluster
        .leader(common::LEADER_WAIT)
        .await
        .expect("leader");
    let addr = test.cluster.addr(leader).expect("leader address");
    let status = test.client.status(&addr).await.expect("status");
    assert_eq!(
        (
            status.answer_horizon_configured_ms,
            status.answer_horizon_ms
        ),
        (ANSWER_HORIZON_MS, ANSWER_HORIZON_MS),
        "the node reports the default horizon, not cut short by the size bound"
    );
    test.cluster.shutdown().await;
}

/// Within the horizon but past the ledger's memory, the same request id with another
/// payload is refused as reused (ALREADY_EXISTS) and changes nothing: no charge, no audit
/// record; the original payload still gets its first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_with_another_payload_is_refused_for_the_whole_horizon() {
    let test = started().await;
    let first = record(&test.client, REQUEST_ID, SPEND)
        .await
        .expect("first record");
    advance_ledger_to(&test, 23 * HOUR_MS, first.at_ms + 23 * HOUR_MS).await;
    let head_before = chain_head_seq(&test).await;

    let other = Amounts::new(SPEND.tokens + 1, SPEND.cost_micros, SPEND.calls);
    match record(&test.client, REQUEST_ID, other).await {
        Err(Error::RequestIdReused(_)) => {}
        other => {
            panic!("another payload under a remembered id must be refused as reused: {other:?}")
        }
    }
    assert_eq!(
        used_tokens(&test.client, TENANT).await,
        (100, 0),
        "the refused request charges nothing"
    );
    assert_eq!(
        chain_head_seq(&test).await,
        head_before,
        "the refused request writes no audit record"
    );
    let retry = record(&test.client, REQUEST_ID, SPEND)
        .await
        .expect("the original payload is still answered");
    assert_eq!(retry.log_index, first.log_index);
    test.cluster.shutdown().await;
}

/// The audit chain head on the leader, read after every node has applied the same index.
async fn chain_head_seq(test: &TestCluster) -> u64 {
    let statuses = common::converged_statuses(&test.cluster, &test.client).await;
    common::assert_chain_heads_agree(&statuses);
    statuses.first().map_or(0, |s| s.chain_head_seq)
}
