//! Every bad-input class of docs/SPEC.md gets its gRPC status over the wire, and changes nothing;
//! in a `Batch`, each bad operation gets its own status and the others go through.

mod common;

use common::{client_for, create_key, tenant_with_budget, tokens_budget, TestCluster, LEADER_WAIT};
use tollgate_client::v1;
use tollgate_client::v1::admin_client::AdminClient;
use tollgate_client::v1::tollgate_client::TollgateClient;
use tonic::transport::Channel;
use tonic::Code;

async fn raw(addr: &str) -> TollgateClient<Channel> {
    TollgateClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn reserve(
    request_id: &str,
    tenant: &str,
    agent: &str,
    tokens: u64,
    ttl_ms: u64,
) -> v1::ReserveRequest {
    v1::ReserveRequest {
        request_id: request_id.into(),
        tenant: tenant.into(),
        agent: agent.into(),
        tool: "llm".into(),
        estimate: Some(v1::Amounts {
            tokens,
            cost_micros: 0,
            calls: Some(1),
        }),
        ttl_ms,
        fingerprint: String::new(),
        usage: None,
        session: String::new(),
        shape: String::new(),
    }
}

fn granted_id(response: v1::ReserveResponse) -> u64 {
    match response.decision {
        Some(v1::reserve_response::Decision::Granted(granted)) => granted.reservation_id,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// A status message with a reservation id masked, to compare answers about two ids.
fn masked(message: &str, reservation_id: u64) -> String {
    message.replace(&reservation_id.to_string(), "<id>")
}

/// What a bad request must not change: usage and the audit chain head.
async fn fingerprint_of_state(test: &TestCluster) -> (v1::UsageResponse, u64, Vec<u8>) {
    let usage = test.client.usage("acme", None, None).await.unwrap();
    let verified = test.client.verify_audit().await.unwrap();
    (usage, verified.head_seq, verified.head_hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_its_status_and_changes_nothing() {
    let test = TestCluster::start_with(3, |options| {
        options.clock = tollgate_server::clock::Clock::shifted();
    })
    .await;
    tenant_with_budget(&test.client, "acme", 1_000).await;
    tenant_with_budget(&test.client, "globex", 1_000).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let mut tollgate = raw(&test.cluster.addr(leader).unwrap()).await;

    // A reservation of another tenant, with an id acme was never given (ids count per
    // tenant), and one that will expire.
    let mut other_tenants = 0;
    for request_id in ["g-1", "g-2", "g-3"] {
        other_tenants = granted_id(
            tollgate
                .reserve(reserve(request_id, "globex", "bot", 10, 60_000))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let expiring = granted_id(
        tollgate
            .reserve(reserve("a-1", "acme", "bot", 10, 1_000))
            .await
            .unwrap()
            .into_inner(),
    );
    test.cluster.clock().advance_ms(5_000);
    // Any entry stamped after the advance expires it, in log order.
    test.client
        .record("acme", "bot", "llm", tollgate_client::Amounts::new(0, 0, 0))
        .await
        .unwrap();
    let before = fingerprint_of_state(&test).await;

    let long_id = "x".repeat(200);
    let cases: Vec<(&str, v1::ReserveRequest, Code)> = vec![
        (
            "empty request id",
            reserve("", "acme", "bot", 1, 1_000),
            Code::InvalidArgument,
        ),
        (
            "oversized agent id",
            reserve("r-1", "acme", &long_id, 1, 1_000),
            Code::InvalidArgument,
        ),
        (
            "control character in an id",
            reserve("r-2", "acme", "bo\nt", 1, 1_000),
            Code::InvalidArgument,
        ),
        (
            "overflowing amount",
            reserve("r-3", "acme", "bot", u64::MAX, 1_000),
            Code::InvalidArgument,
        ),
        (
            "ttl of zero",
            reserve("r-4", "acme", "bot", 1, 0),
            Code::InvalidArgument,
        ),
        (
            "ttl of days",
            reserve("r-5", "acme", "bot", 1, 2 * 86_400_000),
            Code::InvalidArgument,
        ),
        (
            "unknown tenant",
            reserve("r-6", "initech", "bot", 1, 1_000),
            Code::NotFound,
        ),
        (
            "oversized shape",
            v1::ReserveRequest {
                shape: long_id.clone(),
                ..reserve("r-7", "acme", "bot", 1, 1_000)
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, request, code) in cases {
        let status = tollgate.reserve(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}: the error says why");
        if what == "oversized shape" {
            assert!(status.message().contains("shape"), "{status:?}");
        }
    }

    let commit = |request_id: &str, tenant: &str, reservation_id: u64| v1::CommitRequest {
        request_id: request_id.into(),
        tenant: tenant.into(),
        reservation_id,
        actual: Some(v1::Amounts {
            tokens: 1,
            cost_micros: 0,
            calls: Some(1),
        }),
        abandoned: false,
        usage: None,
    };
    let never_issued = 987_654;
    let unknown = tollgate
        .commit(commit("c-1", "acme", never_issued))
        .await
        .unwrap_err();
    assert_eq!(
        unknown.code(),
        Code::NotFound,
        "unknown reservation: {unknown:?}"
    );
    // Guarantee 7: another tenant's reservation answers as one never issued.
    let status = tollgate
        .commit(commit("c-2", "acme", other_tenants))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "another tenant's: {status:?}"
    );
    assert_eq!(
        masked(status.message(), other_tenants),
        masked(unknown.message(), never_issued)
    );
    let status = tollgate
        .release(v1::ReleaseRequest {
            request_id: "rel-1".into(),
            tenant: "acme".into(),
            reservation_id: expiring,
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "release after expiry: {status:?}"
    );
    let status = tollgate
        .commit(v1::CommitRequest {
            actual: None,
            ..commit("c-3", "acme", other_tenants)
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "missing actual: {status:?}"
    );

    assert_eq!(
        fingerprint_of_state(&test).await,
        before,
        "bad input changed the state"
    );

    // The same request id with another payload is an error, not a second effect.
    tollgate
        .reserve(reserve("dup", "acme", "bot", 5, 60_000))
        .await
        .unwrap();
    let status = tollgate
        .reserve(reserve("dup", "acme", "bot", 6, 60_000))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::AlreadyExists,
        "reused request id: {status:?}"
    );

    // A follower does not answer: UNAVAILABLE, naming the leader.
    let follower = test.cluster.other_than(leader).unwrap();
    let mut at_follower = raw(&test.cluster.addr(follower).unwrap()).await;
    let status = at_follower
        .reserve(reserve("f-1", "acme", "bot", 1, 1_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let hint = status
        .metadata()
        .get(tollgate_proto::LEADER_METADATA_KEY)
        .unwrap();
    assert_eq!(hint.to_str().unwrap(), test.cluster.addr(leader).unwrap());
    let status = at_follower
        .get_usage(v1::UsageRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "no stale reads from a follower"
    );
    test.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_credentials_cannot_touch_another_tenant() {
    let test = TestCluster::with_auth(3).await;
    let admin = &test.client;
    tenant_with_budget(admin, "acme", 1_000).await;
    tenant_with_budget(admin, "globex", 1_000).await;
    let (_, acme_key) = create_key(admin, Some("acme"), v1::KeyRole::Worker, &[]).await;
    let (_, globex_key) = create_key(admin, Some("globex"), v1::KeyRole::Worker, &[]).await;
    let acme = client_for(&test.cluster, Some(&acme_key));

    let granted = acme
        .reserve(tollgate_client::ReserveRequest::new("acme", "bot", "llm").tokens(5))
        .await
        .expect("a tenant spends its own budget");
    granted.release().await.unwrap();
    let spend_other = acme
        .reserve(tollgate_client::ReserveRequest::new("globex", "bot", "llm").tokens(5))
        .await;
    assert!(
        matches!(
            spend_other,
            Err(tollgate_client::Error::PermissionDenied(_))
        ),
        "{spend_other:?}"
    );
    theirs_answers_as_never_issued(&test, &acme, &globex_key).await;
    let read_other = acme.usage("globex", None, None).await;
    assert!(
        matches!(read_other, Err(tollgate_client::Error::PermissionDenied(_))),
        "{read_other:?}"
    );
    let admin_op = acme
        .put_limit("acme", tokens_budget("tokens", 1_000_000))
        .await;
    assert!(
        matches!(admin_op, Err(tollgate_client::Error::PermissionDenied(_))),
        "{admin_op:?}"
    );

    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", test.cluster.addr(leader).unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = AdminClient::new(channel)
        .list_tenants(v1::ListTenantsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "no key, no answer");
    test.cluster.shutdown().await;
}

/// The masked message of a NOT_FOUND answer about reservation `id`.
fn not_found<T: std::fmt::Debug>(answer: Result<T, tollgate_client::Error>, id: u64) -> String {
    match answer {
        Err(tollgate_client::Error::NotFound(message)) => masked(&message, id),
        other => panic!("expected NOT_FOUND for reservation {id}, got {other:?}"),
    }
}

/// Guarantee 7 over the wire: globex's key committing or releasing acme's reservation
/// gets NOT_FOUND with the words of an id never issued, and acme's usage does not move.
async fn theirs_answers_as_never_issued(
    test: &TestCluster,
    acme: &tollgate_client::Client,
    globex_key: &str,
) {
    let globex = client_for(&test.cluster, Some(globex_key));
    let acmes = acme
        .reserve(tollgate_client::ReserveRequest::new("acme", "bot", "llm").tokens(7))
        .await
        .expect("a tenant spends its own budget");
    let theirs = acmes.reservation_id().expect("granted by the cluster");
    let usage_before = acme.usage("acme", None, None).await.unwrap();
    let never_issued = theirs + 1_000;
    let commit = |request_id: &str, reservation_id: u64| {
        let request = v1::CommitRequest {
            request_id: request_id.into(),
            tenant: "globex".into(),
            reservation_id,
            actual: Some(v1::Amounts {
                tokens: 1,
                cost_micros: 0,
                calls: Some(1),
            }),
            abandoned: false,
            usage: None,
        };
        let globex = globex.clone();
        async move {
            globex
                .call(|rpc| {
                    let request = request.clone();
                    async move { rpc.tollgate().commit(request).await }
                })
                .await
        }
    };
    let release = |request_id: &str, reservation_id: u64| {
        let request = v1::ReleaseRequest {
            request_id: request_id.into(),
            tenant: "globex".into(),
            reservation_id,
        };
        let globex = globex.clone();
        async move {
            globex
                .call(|rpc| {
                    let request = request.clone();
                    async move { rpc.tollgate().release(request).await }
                })
                .await
        }
    };
    let unknown_commit = not_found(commit("gc-1", never_issued).await, never_issued);
    let theirs_commit = not_found(commit("gc-2", theirs).await, theirs);
    assert_eq!(theirs_commit, unknown_commit);
    assert!(!theirs_commit.contains("tenant"), "{theirs_commit}");
    let unknown_release = not_found(release("gr-1", never_issued).await, never_issued);
    let theirs_release = not_found(release("gr-2", theirs).await, theirs);
    assert_eq!(theirs_release, unknown_release);
    assert_eq!(acme.usage("acme", None, None).await.unwrap(), usage_before);
    acmes.release().await.expect("still acme's to release");
}

fn batch_of(ops: Vec<v1::batch_op::Op>) -> v1::BatchRequest {
    v1::BatchRequest {
        ops: ops
            .into_iter()
            .map(|op| v1::BatchOp { op: Some(op) })
            .collect(),
    }
}

/// The error of one batch result, as (code, message, leader hint).
fn batch_error(result: &v1::BatchResult) -> (Code, &str, &str) {
    match &result.result {
        Some(v1::batch_result::Result::Error(error)) => (
            Code::from(error.code),
            error.message.as_str(),
            error.leader.as_str(),
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_operation_and_a_bad_one_fails_alone() {
    use v1::batch_op::Op;
    use v1::batch_result::Result as Answer;
    let test = TestCluster::start(3).await;
    tenant_with_budget(&test.client, "acme", 1_000).await;
    let leader = test.cluster.leader(LEADER_WAIT).await.unwrap();
    let mut tollgate = raw(&test.cluster.addr(leader).unwrap()).await;

    let record = |request_id: &str, tokens: u64| v1::RecordRequest {
        request_id: request_id.into(),
        tenant: "acme".into(),
        agent: "bot".into(),
        tool: "llm".into(),
        actual: Some(v1::Amounts {
            tokens,
            cost_micros: 0,
            calls: Some(1),
        }),
        usage: None,
        offline: false,
        session: String::new(),
    };
    let results = tollgate
        .batch(batch_of(vec![
            Op::Reserve(reserve("b-1", "acme", "bot", 10, 60_000)),
            Op::Reserve(reserve("b-2", "acme", "bot", 10, 0)),
            Op::Commit(v1::CommitRequest {
                request_id: "b-3".into(),
                tenant: "acme".into(),
                reservation_id: 987_654,
                actual: Some(v1::Amounts::default()),
                abandoned: false,
                usage: None,
            }),
            Op::Record(record("b-4", 5)),
            Op::Reserve(reserve("b-5", "initech", "bot", 1, 1_000)),
        ]))
        .await
        .expect("a batch with bad operations is answered")
        .into_inner()
        .results;
    assert_eq!(results.len(), 5, "one result per operation, in order");
    let granted = match &results[0].result {
        Some(Answer::Reserve(response)) => granted_id(response.clone()),
        other => panic!("b-1: {other:?}"),
    };
    assert_eq!(
        batch_error(&results[1]).0,
        Code::InvalidArgument,
        "ttl of zero"
    );
    assert_eq!(
        batch_error(&results[2]).0,
        Code::NotFound,
        "unknown reservation"
    );
    assert!(
        matches!(results[3].result, Some(Answer::Record(_))),
        "b-4: {:?}",
        results[3]
    );
    let (code, message, _) = batch_error(&results[4]);
    assert_eq!(code, Code::NotFound, "unknown tenant");
    assert!(message.contains("initech"), "{message}");

    // The reservation granted in the batch is the ledger's like any other: commit it in
    // another batch, beside an empty operation.
    let results = tollgate
        .batch(v1::BatchRequest {
            ops: vec![
                v1::BatchOp {
                    op: Some(Op::Commit(v1::CommitRequest {
                        request_id: "b-6".into(),
                        tenant: "acme".into(),
                        reservation_id: granted,
                        actual: Some(v1::Amounts {
                            tokens: 7,
                            cost_micros: 0,
                            calls: Some(1),
                        }),
                        abandoned: false,
                        usage: None,
                    })),
                },
                v1::BatchOp { op: None },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        matches!(results[0].result, Some(Answer::Commit(_))),
        "{results:?}"
    );
    assert_eq!(batch_error(&results[1]).0, Code::InvalidArgument);
    let usage = test.client.usage("acme", None, None).await.unwrap();
    let budget = &usage.usage[0];
    assert_eq!(
        (budget.used, budget.held),
        (5 + 7, 0),
        "the record and the commit, nothing of the bad operations"
    );

    // Too many operations, or none: refused as a whole, and nothing changes.
    let before = fingerprint_of_state(&test).await;
    let too_many = (0..=tollgate_proto::BATCH_OPS_MAX)
        .map(|i| Op::Record(record(&format!("many-{i}"), 1)))
        .collect();
    let status = tollgate.batch(batch_of(too_many)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("BATCH_OPS_MAX"), "{status:?}");
    let status = tollgate.batch(batch_of(Vec::new())).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        fingerprint_of_state(&test).await,
        before,
        "a refused batch changed the state"
    );

    // A follower answers every operation UNAVAILABLE, naming the leader.
    let follower = test.cluster.other_than(leader).unwrap();
    let mut at_follower = raw(&test.cluster.addr(follower).unwrap()).await;
    let results = at_follower
        .batch(batch_of(vec![
            Op::Record(record("f-1", 1)),
            Op::Record(record("f-2", 1)),
        ]))
        .await
        .unwrap()
        .into_inner()
        .results;
    let leader_addr = test.cluster.addr(leader).unwrap();
    for result in &results {
        let (code, _, hint) = batch_error(result);
        assert_eq!(code, Code::Unavailable);
        assert_eq!(hint, leader_addr);
    }
    test.cluster.shutdown().await;
}
