//! Budget leases through a real three-node cluster, over the raw wire: a lease holds a fair
//! share of the budget, settles charge the calls reported (one `lease_call` audit record
//! each) and renew or return it, an unsettled lease is charged whole soon after its expiry,
//! a Freeze answers only once no lease on the tenant is out, a retried settle charges
//! nothing twice, and bad input changes nothing.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{create_key, tokens_budget, used_tokens, TestCluster, LEADER_WAIT};
use tollgate_client::v1;
use tollgate_client::v1::admin_client::AdminClient;
use tollgate_client::v1::lease_response::Decision;
use tollgate_client::v1::tollgate_client::TollgateClient;
use tollgate_ledger::{
    LEASE_GRACE_MS, LEASE_SETTLE_CALLS_MAX, LEASE_TTL_MS_DEFAULT, LEASE_UNITS_MAX,
};
use tollgate_server::node::LEASE_TICK_INTERVAL;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

const TENANT: &str = "acme";
const BUDGET: u64 = 10_000;

fn tokens(tokens: u64) -> Option<v1::Amounts> {
    Some(v1::Amounts {
        tokens,
        cost_micros: 0,
        calls: None,
    })
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_millis()).expect("ms fit u64")
}

/// A tenant with leases on and a lifetime budget of [`BUDGET`] tokens.
async fn leasing_tenant(test: &TestCluster, tenant: &str) {
    let policy = v1::TenantPolicy {
        leases: true,
        ..tollgate_server::grpc::convert::policy_to_pb(&Default::default())
    };
    test.client
        .put_tenant(tenant, Some(policy))
        .await
        .expect("put tenant");
    test.client
        .put_limit(tenant, tokens_budget("tokens", BUDGET))
        .await
        .expect("put limit");
}

/// One call on the current leader, with `key` as the bearer token; retried (same message,
/// so the same request id) while the cluster answers UNAVAILABLE (an election).
async fn on_leader<T, R, F, Fut>(
    test: &TestCluster,
    key: Option<&str>,
    message: T,
    call: F,
) -> Result<R, Status>
where
    T: Clone,
    F: Fn(Channel, Request<T>) -> Fut,
    Fut: Future<Output = Result<Response<R>, Status>>,
{
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        let leader = test.cluster.leader(LEADER_WAIT).await.expect("a leader");
        let addr = test.cluster.addr(leader).expect("its address");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut request = Request::new(message.clone());
        if let Some(key) = key {
            let value = format!("Bearer {key}").parse().expect("ASCII");
            request.metadata_mut().insert("authorization", value);
        }
        match call(channel, request).await {
            Err(status) if status.code() == Code::Unavailable => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still unavailable: {status:?}"
                );
                // An election has no event to wait on from outside: look again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answer => return answer.map(Response::into_inner),
        }
    }
}

fn lease_request(agent: &str, want: u64, request_id: &str) -> v1::LeaseRequest {
    v1::LeaseRequest {
        request_id: request_id.into(),
        tenant: TENANT.into(),
        agent: agent.into(),
        tool: "llm".into(),
        want: tokens(want),
        units: 1,
        floor: tokens(100),
        ttl_ms: 0,
    }
}

async fn lease_as(
    test: &TestCluster,
    key: Option<&str>,
    request: v1::LeaseRequest,
) -> Result<v1::LeaseResponse, Status> {
    on_leader(test, key, request, |channel, request| async move {
        TollgateClient::new(channel).lease(request).await
    })
    .await
}

async fn lease(test: &TestCluster, request: v1::LeaseRequest) -> Result<v1::LeaseResponse, Status> {
    lease_as(test, None, request).await
}

/// The terms of a granted lease; panics on a refusal.
async fn granted(test: &TestCluster, request: v1::LeaseRequest) -> v1::LeaseTerms {
    match lease(test, request).await.expect("lease").decision {
        Some(Decision::Granted(terms)) => terms,
        other => panic!("expected a grant: {other:?}"),
    }
}

fn settle_request(lease_id: u64, request_id: &str, want: u64) -> v1::SettleRequest {
    v1::SettleRequest {
        request_id: request_id.into(),
        tenant: TENANT.into(),
        lease_id,
        calls: Vec::new(),
        want: tokens(want),
        units: u32::from(want > 0),
        ttl_ms: 0,
        keep: None,
        keep_units: 0,
    }
}

async fn settle_as(
    test: &TestCluster,
    key: Option<&str>,
    request: v1::SettleRequest,
) -> Result<v1::SettleResponse, Status> {
    on_leader(test, key, request, |channel, request| async move {
        TollgateClient::new(channel).settle(request).await
    })
    .await
}

async fn settle(
    test: &TestCluster,
    request: v1::SettleRequest,
) -> Result<v1::SettleResponse, Status> {
    settle_as(test, None, request).await
}

fn call(request_id: &str, actual: u64) -> v1::LeaseCall {
    v1::LeaseCall {
        request_id: request_id.into(),
        estimate: tokens(100),
        actual: tokens(actual),
        fingerprint: String::new(),
        shape: String::new(),
    }
}

async fn freeze(test: &TestCluster, agent: Option<&str>, request_id: &str) -> v1::AdminResponse {
    let request = v1::FreezeRequest {
        request_id: request_id.into(),
        tenant: TENANT.into(),
        agent: agent.unwrap_or_default().into(),
    };
    on_leader(test, None, request, |channel, request| async move {
        AdminClient::new(channel).freeze(request).await
    })
    .await
    .expect("freeze")
}

/// The tenant's audit records of one event, oldest first.
async fn audit(test: &TestCluster, event: &str) -> Vec<v1::AuditRecord> {
    test.client
        .query_audit(v1::AuditQueryRequest {
            tenant: TENANT.into(),
            event: event.into(),
            ..Default::default()
        })
        .await
        .expect("audit")
}

/// Polls the tenant's usage until `done` holds, at most `within`; returns the wall-clock
/// time it was first seen to hold. Expiry has no event a test can wait on from outside.
async fn usage_until(
    test: &TestCluster,
    within: Duration,
    done: impl Fn((u64, u64)) -> bool,
) -> (u64, (u64, u64)) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let usage = used_tokens(&test.client, TENANT).await;
        if done(usage) {
            return (now_ms(), usage);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "usage (used, held) still {usage:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lease is granted a fair share of what is left; a settle charges the calls it reports
/// (one `lease_call` record each) and renews; its retry returns the first answer and
/// charges nothing; a settle asking for nothing returns the rest. A tenant without leases
/// is refused OFF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holds_a_fair_share_and_settles_charge_renew_and_return() {
    let test = TestCluster::start(3).await;
    leasing_tenant(&test, TENANT).await;

    let first = granted(&test, lease_request("bot", 6_000, "lease-1")).await;
    assert_eq!(first.slice.as_ref().map(|s| s.tokens), Some(6_000));
    assert_eq!(first.ttl_ms, LEASE_TTL_MS_DEFAULT);
    // 4,000 left, shared with the one lease already holding the budget.
    let second = granted(&test, lease_request("bot-2", 6_000, "lease-2")).await;
    assert_eq!(second.slice.as_ref().map(|s| s.tokens), Some(2_000));
    assert_eq!(used_tokens(&test.client, TENANT).await, (0, 8_000));

    let mut report = settle_request(first.lease_id, "settle-1", 6_000);
    report.calls = vec![call("c-1", 50), call("c-2", 60), call("c-3", 70)];
    let settled = settle(&test, report.clone()).await.expect("settle");
    assert_eq!(settled.charged_calls, 3);
    assert!(!settled.recalled && !settled.expired, "{settled:?}");
    let renewed = settled.lease.expect("the lease goes on");
    assert_eq!(renewed.lease_id, first.lease_id);
    assert!(renewed.expires_at_ms >= first.expires_at_ms);
    let held_now = renewed.slice.as_ref().map_or(0, |s| s.tokens);
    assert!(held_now <= 6_000, "{renewed:?}");
    assert_eq!(
        used_tokens(&test.client, TENANT).await,
        (180, held_now + 2_000)
    );

    let calls = audit(&test, "lease_call").await;
    let seen: Vec<_> = calls
        .iter()
        .map(|r| {
            let tokens = r.amounts.as_ref().map_or(0, |a| a.tokens);
            (r.request_id.as_str(), r.reservation_id, tokens)
        })
        .collect();
    let id = Some(first.lease_id);
    assert_eq!(seen, [("c-1", id, 50), ("c-2", id, 60), ("c-3", id, 70)]);
    assert!(calls
        .iter()
        .all(|r| r.event_json.contains("\"charged\":true")));

    // The same settle again: the first answer (applied where the first took effect),
    // nothing charged or audited twice.
    let mut again = settle(&test, report).await.expect("retried settle");
    let (mut first_answer, applied_first) = (settled, settled.applied);
    let applied_again = again.applied.take();
    first_answer.applied = None;
    assert_eq!(again, first_answer);
    assert_eq!(
        applied_again.map(|a| a.log_index),
        applied_first.map(|a| a.log_index)
    );
    assert_eq!(
        used_tokens(&test.client, TENANT).await,
        (180, held_now + 2_000)
    );
    assert_eq!(audit(&test, "lease_call").await.len(), 3);

    for (lease_id, request_id) in [(first.lease_id, "return-1"), (second.lease_id, "return-2")] {
        let returned = settle(&test, settle_request(lease_id, request_id, 0))
            .await
            .expect("return");
        assert_eq!(
            (returned.lease, returned.recalled, returned.expired),
            (None, false, false)
        );
    }
    assert_eq!(used_tokens(&test.client, TENANT).await, (180, 0));
    assert_eq!(audit(&test, "lease_return").await.len(), 2);

    test.client.put_tenant("plain", None).await.expect("tenant");
    let mut off = lease_request("bot", 1_000, "lease-off");
    off.tenant = "plain".into();
    let answer = lease(&test, off).await.expect("an answer, not an error");
    assert_eq!(
        answer.decision,
        Some(Decision::Refused(v1::LeaseRefusal::Off.into()))
    );
    test.cluster.shutdown().await;
}

/// A lease nobody settles is charged its whole slice once it expires, and soon after: the
/// leader ticks every LEASE_TICK_INTERVAL while leases are live, even with a 5 s tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_lease_is_charged_whole_soon_after_it_expires() {
    let test = TestCluster::start_with(3, |options| {
        options.tick_interval = Duration::from_secs(5);
    })
    .await;
    leasing_tenant(&test, TENANT).await;
    let terms = granted(&test, lease_request("bot", 1_000, "lease-1")).await;
    assert_eq!(used_tokens(&test.client, TENANT).await, (0, 1_000));
    let grace = Duration::from_millis(LEASE_TTL_MS_DEFAULT + LEASE_GRACE_MS);
    // Generous for a loaded machine; the tick rule is asserted on the time seen below.
    let within = grace + LEASE_TICK_INTERVAL + Duration::from_secs(3);
    let (seen_ms, usage) = usage_until(&test, within, |(_, held)| held == 0).await;
    assert_eq!(usage, (1_000, 0), "the whole slice is charged");
    // Polled every 20 ms; a 5 s tick alone would be up to 5 s late.
    let late_ms = seen_ms.saturating_sub(terms.expires_at_ms);
    let tick_ms = u64::try_from(LEASE_TICK_INTERVAL.as_millis()).expect("ms");
    assert!(
        late_ms <= tick_ms + 750,
        "reclaimed {late_ms} ms after its expiry"
    );
    let expired = audit(&test, "lease_expire").await;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].reservation_id, Some(terms.lease_id));
    assert_eq!(expired[0].amounts.as_ref().map(|a| a.tokens), Some(1_000));
    // A late settle of the expired lease is answered, charging nothing twice.
    let mut late = settle_request(terms.lease_id, "late-settle", 0);
    late.calls = vec![call("c-late", 400)];
    let answer = settle(&test, late).await.expect("late settle");
    assert!(answer.expired && answer.lease.is_none(), "{answer:?}");
    assert_eq!(answer.charged_calls, 0);
    assert_eq!(used_tokens(&test.client, TENANT).await, (1_000, 0));
    test.cluster.shutdown().await;
}

/// Settles the lease every 200 ms, as a client holding it would, until the cluster ends
/// it; returns whether it was recalled.
async fn hold_and_settle(test: &TestCluster, lease_id: u64) -> bool {
    for round in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let request = settle_request(lease_id, &format!("hold-{round}"), 1_000);
        let answer = settle(test, request).await.expect("settle");
        if answer.lease.is_none() {
            return answer.recalled;
        }
    }
    panic!("the lease was still on after 100 settles");
}

/// Freeze answers once no lease on its scope is out: after the expiry of a lease nobody
/// settles, and, when the holder settles every 200 ms, right after its recall. An agent's
/// freeze waits for that agent's leases only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_answers_once_no_lease_on_the_tenant_is_out() {
    let test = TestCluster::start(3).await;
    leasing_tenant(&test, TENANT).await;

    let abandoned = granted(&test, lease_request("bot", 1_000, "lease-1")).await;
    freeze(&test, None, "freeze-1").await;
    let answered_ms = now_ms();
    assert_eq!(
        used_tokens(&test.client, TENANT).await,
        (1_000, 0),
        "the lease expired (charged whole) before the freeze answered"
    );
    let expired = audit(&test, "lease_expire").await;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].reservation_id, Some(abandoned.lease_id));
    assert!(
        expired[0].at_ms <= answered_ms,
        "{expired:?} vs {answered_ms}"
    );
    test.client.unfreeze(TENANT, None).await.expect("unfreeze");

    let held = granted(&test, lease_request("bot", 1_000, "lease-2")).await;
    let holder = {
        let test = &test;
        async move { hold_and_settle(test, held.lease_id).await }
    };
    let frozen = async {
        let started = tokio::time::Instant::now();
        freeze(&test, None, "freeze-2").await;
        started.elapsed()
    };
    let (recalled, took) = tokio::join!(holder, frozen);
    assert!(recalled, "the freeze recalled the lease");
    assert!(
        took < Duration::from_millis(LEASE_TTL_MS_DEFAULT),
        "the freeze waited {took:?}: for the expiry, not the recall"
    );
    assert_eq!(used_tokens(&test.client, TENANT).await, (1_000, 0));
    let returned = audit(&test, "lease_return").await;
    assert!(returned
        .iter()
        .any(|r| r.reservation_id == Some(held.lease_id)
            && r.event_json.contains("\"recalled\":true")));
    assert_eq!(
        audit(&test, "lease_expire").await.len(),
        1,
        "no second expiry"
    );
    test.client.unfreeze(TENANT, None).await.expect("unfreeze");

    // Freezing one agent waits for its lease only: another agent's, kept alive by its
    // holder, stays out.
    let other = granted(&test, lease_request("bot-3", 1_000, "lease-3")).await;
    let frozen = granted(&test, lease_request("bot-2", 1_000, "lease-4")).await;
    let stop = AtomicBool::new(false);
    let kept = keep_alive(&test, other.lease_id, &stop);
    let agent_frozen = async {
        freeze(&test, Some("bot-2"), "freeze-3").await;
        let answered_ms = now_ms();
        let usage = used_tokens(&test.client, TENANT).await;
        stop.store(true, Ordering::Relaxed);
        (answered_ms, usage)
    };
    let (still_on, (answered_ms, usage)) = tokio::join!(kept, agent_frozen);
    assert!(still_on, "the other agent's lease was not recalled");
    assert!(
        frozen.expires_at_ms <= answered_ms,
        "answered before the expiry"
    );
    assert_eq!(usage, (2_000, 1_000), "bot-2's slice charged, bot-3's held");
    test.cluster.shutdown().await;
}

/// Settles the lease every 200 ms, keeping it as it is, until `stop`; returns whether it
/// was still on then.
async fn keep_alive(test: &TestCluster, lease_id: u64, stop: &AtomicBool) -> bool {
    for round in 0..100 {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let request = settle_request(lease_id, &format!("keep-{round}"), 1_000);
        if settle(test, request).await.expect("settle").lease.is_none() {
            return false;
        }
    }
    panic!("never told to stop");
}

/// Bad input is refused and changes nothing: too many units, too many calls, a settle
/// over the decoder's bound, another tenant's lease, a key limited to other agents (which
/// may lease and settle for its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lease_input_is_refused_and_changes_nothing() {
    let test = TestCluster::with_auth(3).await;
    leasing_tenant(&test, TENANT).await;
    leasing_tenant(&test, "globex").await;
    let (_, acme) = create_key(&test.client, Some(TENANT), v1::KeyRole::Worker, &[]).await;
    let (_, globex) = create_key(&test.client, Some("globex"), v1::KeyRole::Worker, &[]).await;
    let (_, bot_only) = create_key(&test.client, Some(TENANT), v1::KeyRole::Worker, &["bot"]).await;
    let acme = Some(acme.as_str());

    let mut wide = lease_request("bot", 1_000, "lease-wide");
    wide.units = LEASE_UNITS_MAX + 1;
    let status = lease_as(&test, acme, wide)
        .await
        .expect_err("too many units");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("LEASE_UNITS_MAX"), "{status:?}");
    assert_eq!(used_tokens(&test.client, TENANT).await, (0, 0));

    let terms = match lease_as(&test, acme, lease_request("bot", 1_000, "lease-1")).await {
        Ok(v1::LeaseResponse {
            decision: Some(Decision::Granted(terms)),
            ..
        }) => terms,
        other => panic!("expected a grant: {other:?}"),
    };
    let unchanged = (0, 1_000);
    assert_eq!(used_tokens(&test.client, TENANT).await, unchanged);

    let mut many = settle_request(terms.lease_id, "settle-many", 1_000);
    many.calls = (0..=LEASE_SETTLE_CALLS_MAX)
        .map(|n| call(&format!("c-{n}"), 1))
        .collect();
    let status = settle_as(&test, acme, many)
        .await
        .expect_err("too many calls");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("LEASE_SETTLE_CALLS_MAX"),
        "{status:?}"
    );

    let mut huge = settle_request(terms.lease_id, "settle-huge", 1_000);
    huge.calls = (0..5_000)
        .map(|n| v1::LeaseCall {
            fingerprint: "f".repeat(120),
            shape: "s".repeat(120),
            ..call(&format!("c-{n:0>100}"), 1)
        })
        .collect();
    let status = settle_as(&test, acme, huge).await.expect_err("over 1 MiB");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );

    let theirs = settle_request(terms.lease_id, "settle-theirs", 0);
    let status = settle_as(&test, Some(&globex), theirs.clone())
        .await
        .expect_err("another tenant's");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let as_globex = v1::SettleRequest {
        tenant: "globex".into(),
        ..theirs
    };
    let status = settle_as(&test, Some(&globex), as_globex)
        .await
        .expect_err("not globex's lease");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // A key limited to agents leases and settles only for its agents.
    let (_, eve_only) = create_key(&test.client, Some(TENANT), v1::KeyRole::Worker, &["eve"]).await;
    let status = lease_as(
        &test,
        Some(&bot_only),
        lease_request("eve", 1_000, "lease-eve"),
    )
    .await
    .expect_err("not its agent");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = settle_as(
        &test,
        Some(&eve_only),
        settle_request(terms.lease_id, "settle-eve", 0),
    )
    .await
    .expect_err("bot's lease, not eve's");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    assert_eq!(used_tokens(&test.client, TENANT).await, unchanged);
    assert!(audit(&test, "lease_call").await.is_empty());
    let returned = settle_as(
        &test,
        Some(&bot_only),
        settle_request(terms.lease_id, "return", 0),
    )
    .await
    .expect("a key of bot returns bot's lease");
    assert!(returned.lease.is_none());
    assert_eq!(used_tokens(&test.client, TENANT).await, (0, 0));
    let granted = lease_as(
        &test,
        Some(&bot_only),
        lease_request("bot", 1_000, "lease-bot"),
    )
    .await
    .expect("an answer");
    assert!(
        matches!(granted.decision, Some(Decision::Granted(_))),
        "a key of bot leases for bot: {granted:?}"
    );
    test.cluster.shutdown().await;
}
