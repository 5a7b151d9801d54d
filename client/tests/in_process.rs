//! The client against tiny in-process gRPC nodes with canned behaviour: proves leader
//! following, same-id retries, the abandoned commit of dropped guards, per-node status and
//! failing closed, without a real cluster, through coalesced `Batch` calls (the default) and
//! through unary calls. Tests wait on notifications, never on sleeps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tollgate_client::v1;
use tollgate_client::v1::cluster_server::{Cluster, ClusterServer};
use tollgate_client::v1::tollgate_server::{Tollgate, TollgateServer};
use tollgate_client::{
    Amounts, Backoff, CallError, Client, ClientConfig, Error, FailMode, GuardError, ReserveRequest,
    Usage,
};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Upper bound on waiting for a notification; only reached if the behaviour is broken.
const NOTIFICATION_WAIT_MAX: Duration = Duration::from_secs(5);

/// What a fake node saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Reserve {
        request_id: String,
        authorization: Option<String>,
    },
    Commit {
        request_id: String,
        reservation_id: u64,
        actual: Option<v1::Amounts>,
        usage: Option<v1::Usage>,
        abandoned: bool,
    },
    Release {
        reservation_id: u64,
    },
    Record {
        actual: Option<v1::Amounts>,
        usage: Option<v1::Usage>,
    },
}

/// The fake's whole price table: one micro per token of any model, so a test can tell a
/// cost the node priced from one the client sent.
fn fake_price(usage: Option<&v1::Usage>, actual: Option<&v1::Amounts>) -> u64 {
    match (usage, actual) {
        (Some(u), _) => u.input_tokens + u.output_tokens + u.cached_input_tokens,
        (None, Some(a)) => a.cost_micros,
        (None, None) => 0,
    }
}

enum Role {
    /// Refuses everything, naming the leader.
    Follower { leader: String },
    /// Answers UNAVAILABLE without a hint `unavailable_first` times, then grants.
    Leader { unavailable_first: AtomicU32 },
}

struct FakeNode {
    addr: String,
    role: Role,
    seen: mpsc::UnboundedSender<Seen>,
    /// `Batch` calls received, and the operations they carried.
    batches: AtomicU32,
    batched_ops: AtomicU32,
}

impl FakeNode {
    fn refuse(&self) -> Result<(), Status> {
        match &self.role {
            Role::Follower { leader } => {
                let mut status = Status::unavailable("not the leader");
                status
                    .metadata_mut()
                    .insert(tollgate_proto::LEADER_METADATA_KEY, leader.parse().unwrap());
                Err(status)
            }
            Role::Leader { unavailable_first } => {
                let refused = unavailable_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if refused {
                    Err(Status::unavailable("election in progress"))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Shared by the two services of one fake node (the orphan rule forbids impls on `Arc`).
#[derive(Clone)]
struct Node(Arc<FakeNode>);

impl std::ops::Deref for Node {
    type Target = FakeNode;
    fn deref(&self) -> &FakeNode {
        &self.0
    }
}

fn applied() -> Option<v1::Applied> {
    Some(v1::Applied {
        log_index: 7,
        term: 2,
        at_ms: 1_000,
    })
}

#[tonic::async_trait]
impl Tollgate for Node {
    async fn lease(
        &self,
        _request: Request<v1::LeaseRequest>,
    ) -> Result<Response<v1::LeaseResponse>, Status> {
        Err(Status::unimplemented("this fake node grants no leases"))
    }

    async fn settle(
        &self,
        _request: Request<v1::SettleRequest>,
    ) -> Result<Response<v1::SettleResponse>, Status> {
        Err(Status::unimplemented("this fake node grants no leases"))
    }

    async fn reserve(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        let request = request.into_inner();
        let _ = self.seen.send(Seen::Reserve {
            request_id: request.request_id.clone(),
            authorization,
        });
        self.refuse()?;
        let estimate = request.estimate.unwrap_or_default();
        let decision = if estimate.tokens > 1_000 {
            v1::reserve_response::Decision::Denied(v1::DeniedByLimit {
                limit_id: "tpm".into(),
                scope: Some(v1::Scope {
                    scope: Some(v1::scope::Scope::Agent(request.agent)),
                }),
                dimension: v1::Dimension::Tokens as i32,
                remaining: 1_000,
                retry_after_ms: Some(1_500),
            })
        } else {
            v1::reserve_response::Decision::Granted(v1::Granted {
                reservation_id: 42,
                expires_at_ms: 61_000,
                tightest: Some(v1::LimitRemaining {
                    limit_id: "daily".into(),
                    dimension: v1::Dimension::Cost as i32,
                    remaining: 900,
                }),
            })
        };
        Ok(Response::new(v1::ReserveResponse {
            decision: Some(decision),
            applied: applied(),
        }))
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        let request = request.into_inner();
        let cost_micros = fake_price(request.usage.as_ref(), request.actual.as_ref());
        let _ = self.seen.send(Seen::Commit {
            request_id: request.request_id,
            reservation_id: request.reservation_id,
            actual: request.actual,
            usage: request.usage,
            abandoned: request.abandoned,
        });
        self.refuse()?;
        Ok(Response::new(v1::CommitResponse {
            overrun: true,
            late: false,
            applied: applied(),
            cost_micros,
        }))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let _ = self.seen.send(Seen::Release {
            reservation_id: request.into_inner().reservation_id,
        });
        self.refuse()?;
        Ok(Response::new(v1::ReleaseResponse { applied: applied() }))
    }

    async fn record(
        &self,
        request: Request<v1::RecordRequest>,
    ) -> Result<Response<v1::RecordResponse>, Status> {
        let request = request.into_inner();
        let cost_micros = fake_price(request.usage.as_ref(), request.actual.as_ref());
        let _ = self.seen.send(Seen::Record {
            actual: request.actual,
            usage: request.usage,
        });
        self.refuse()?;
        Ok(Response::new(v1::RecordResponse {
            cost_micros,
            applied: applied(),
        }))
    }

    /// Answers each operation as its unary call does, as the real server does.
    async fn batch(
        &self,
        request: Request<v1::BatchRequest>,
    ) -> Result<Response<v1::BatchResponse>, Status> {
        use v1::batch_op::Op;
        use v1::batch_result::Result as Answer;
        let (metadata, _, request) = request.into_parts();
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.batched_ops
            .fetch_add(request.ops.len() as u32, Ordering::SeqCst);
        fn unary<T>(metadata: &tonic::metadata::MetadataMap, message: T) -> Request<T> {
            Request::from_parts(metadata.clone(), Default::default(), message)
        }
        let mut results = Vec::with_capacity(request.ops.len());
        for op in request.ops {
            let answer = match op.op {
                Some(Op::Reserve(r)) => self
                    .reserve(unary(&metadata, r))
                    .await
                    .map(|r| Answer::Reserve(r.into_inner())),
                Some(Op::Commit(r)) => self
                    .commit(unary(&metadata, r))
                    .await
                    .map(|r| Answer::Commit(r.into_inner())),
                Some(Op::Release(r)) => self
                    .release(unary(&metadata, r))
                    .await
                    .map(|r| Answer::Release(r.into_inner())),
                Some(Op::Record(r)) => self
                    .record(unary(&metadata, r))
                    .await
                    .map(|r| Answer::Record(r.into_inner())),
                None => Err(Status::invalid_argument("empty op")),
            };
            let answer = answer.unwrap_or_else(|status| {
                Answer::Error(v1::BatchError {
                    code: status.code().into(),
                    message: status.message().to_owned(),
                    leader: status
                        .metadata()
                        .get(tollgate_proto::LEADER_METADATA_KEY)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default(),
                })
            });
            results.push(v1::BatchResult {
                result: Some(answer),
            });
        }
        Ok(Response::new(v1::BatchResponse { results }))
    }

    async fn get_usage(
        &self,
        _: Request<v1::UsageRequest>,
    ) -> Result<Response<v1::UsageResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn list_reservations(
        &self,
        _: Request<v1::ListReservationsRequest>,
    ) -> Result<Response<v1::ListReservationsResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

#[tonic::async_trait]
impl Cluster for Node {
    async fn status(
        &self,
        _: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let role = match self.role {
            Role::Follower { .. } => "follower",
            Role::Leader { .. } => "leader",
        };
        Ok(Response::new(v1::StatusResponse {
            addr: self.addr.clone(),
            role: role.into(),
            ..Default::default()
        }))
    }

    async fn remove_node(
        &self,
        _: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn add_learner(
        &self,
        _: Request<v1::AddLearnerRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn change_membership(
        &self,
        _: Request<v1::ChangeMembershipRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

/// Binds 127.0.0.1:0 first so the address is known before the role is chosen.
async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// Serves a fake node on `listener` until the test's runtime ends.
fn serve(
    listener: tokio::net::TcpListener,
    addr: String,
    role: Role,
) -> (Node, mpsc::UnboundedReceiver<Seen>) {
    let (seen, receiver) = mpsc::unbounded_channel();
    let node = Node(Arc::new(FakeNode {
        addr,
        role,
        seen,
        batches: AtomicU32::new(0),
        batched_ops: AtomicU32::new(0),
    }));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TollgateServer::new(node.clone()))
            .add_service(ClusterServer::new(node.clone()))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (node, receiver)
}

async fn leader(unavailable_first: u32) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let (addr, _node, seen) = leader_node(unavailable_first).await;
    (addr, seen)
}

async fn leader_node(unavailable_first: u32) -> (String, Node, mpsc::UnboundedReceiver<Seen>) {
    let (listener, addr) = bind().await;
    let (node, seen) = serve(
        listener,
        addr.clone(),
        Role::Leader {
            unavailable_first: AtomicU32::new(unavailable_first),
        },
    );
    (addr, node, seen)
}

async fn follower_of(leader: &str) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let (listener, addr) = bind().await;
    let (_node, seen) = serve(
        listener,
        addr.clone(),
        Role::Follower {
            leader: leader.to_owned(),
        },
    );
    (addr, seen)
}

fn fast_config(endpoints: &[&str]) -> ClientConfig {
    ClientConfig {
        deadline: Duration::from_secs(3),
        attempt_timeout: Duration::from_millis(500),
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(50),
        },
        ..ClientConfig::new(endpoints.iter().copied())
    }
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(NOTIFICATION_WAIT_MAX, seen.recv())
        .await
        .expect("node saw nothing in time")
        .expect("node stopped")
}

/// An address nothing listens on: bound, then closed.
fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn follower_hint_leads_the_client_to_the_leader_and_it_stays_there() {
    follower_hint_is_followed(true).await;
}

#[tokio::test]
async fn follower_hint_is_followed_without_coalescing_too() {
    follower_hint_is_followed(false).await;
}

async fn follower_hint_is_followed(coalesce: bool) {
    let (leader_addr, leader_node, mut leader_seen) = leader_node(0).await;
    let (follower_addr, mut follower_seen) = follower_of(&leader_addr).await;
    let client = Client::new(ClientConfig {
        token: Some("t0ken".into()),
        coalesce,
        ..fast_config(&[&follower_addr])
    })
    .unwrap();

    let reservation = client
        .reserve(ReserveRequest::new("acme", "bot", "llm:x").tokens(100))
        .await
        .unwrap();
    assert_eq!(reservation.reservation_id(), Some(42));
    assert!(!reservation.is_local());
    assert_eq!(reservation.expires_at_ms(), 61_000);
    assert_eq!(reservation.tightest().unwrap().remaining, 900);
    assert_eq!(reservation.applied().unwrap().log_index, 7);
    assert_eq!(client.leader(), Some(format!("http://{leader_addr}")));

    let Seen::Reserve {
        request_id: at_follower,
        ..
    } = next(&mut follower_seen).await
    else {
        panic!()
    };
    let Seen::Reserve {
        request_id: at_leader,
        authorization,
    } = next(&mut leader_seen).await
    else {
        panic!()
    };
    assert_eq!(
        at_follower, at_leader,
        "the hint is followed with the same request id"
    );
    assert_eq!(authorization.as_deref(), Some("Bearer t0ken"));

    let info = reservation.commit(Amounts::new(120, 5, 1)).await.unwrap();
    assert!(info.overrun);
    assert_eq!(info.applied.unwrap().term, 2);
    assert!(matches!(
        next(&mut leader_seen).await,
        Seen::Commit {
            reservation_id: 42,
            ..
        }
    ));
    assert!(
        follower_seen.try_recv().is_err(),
        "the remembered leader is asked directly"
    );
    let batched_ops = leader_node.batched_ops.load(Ordering::SeqCst);
    assert_eq!(
        batched_ops,
        if coalesce { 2 } else { 0 },
        "reserve and commit"
    );
}

#[tokio::test]
async fn concurrent_operations_each_get_their_own_answer_through_batches() {
    const CALLERS: u32 = 64;
    let (leader_addr, leader_node, _seen) = leader_node(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let client = client.clone();
        callers.push(tokio::spawn(async move {
            // Over 1,000 tokens the fake denies: half the callers are denied, half granted.
            let tokens = if caller % 2 == 0 { 10 } else { 5_000 };
            let outcome = client
                .reserve(ReserveRequest::new("acme", "bot", "llm:x").tokens(tokens))
                .await;
            (caller, outcome)
        }));
    }
    for caller in callers {
        let (caller, outcome) = caller.await.unwrap();
        match outcome {
            Ok(reservation) if caller % 2 == 0 => {
                reservation.abandon();
            }
            Err(Error::Denied { limit_id, .. }) if caller % 2 == 1 => assert_eq!(limit_id, "tpm"),
            other => panic!("caller {caller}: {other:?}"),
        }
    }
    assert_eq!(leader_node.batched_ops.load(Ordering::SeqCst), CALLERS);
    let batches = leader_node.batches.load(Ordering::SeqCst);
    assert!((1..=CALLERS).contains(&batches), "{batches} batches");
}

#[tokio::test]
async fn retries_after_unavailable_reuse_the_same_request_id() {
    let (leader_addr, mut seen) = leader(2).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();

    let reservation = client
        .reserve(ReserveRequest::new("acme", "bot", "search"))
        .await
        .unwrap();
    let ids: Vec<String> = (0..3)
        .map(|_| match seen.try_recv() {
            Ok(Seen::Reserve { request_id, .. }) => request_id,
            other => panic!("expected a reserve, got {other:?}"),
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
    assert_eq!(reservation.request_id(), ids[0]);
    reservation.abandon();
}

#[tokio::test]
async fn explicit_request_id_is_sent_as_given() {
    let (leader_addr, mut seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let reservation = client
        .reserve_with_id(
            "replay-1".into(),
            ReserveRequest::new("acme", "bot", "search"),
        )
        .await
        .unwrap();
    assert!(
        matches!(next(&mut seen).await, Seen::Reserve { request_id, .. } if request_id == "replay-1")
    );
    reservation
        .commit_with_id("replay-2".into(), Amounts::new(0, 0, 1))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut seen).await, Seen::Commit { request_id, .. } if request_id == "replay-2")
    );
}

#[tokio::test]
async fn a_dropped_guard_settles_at_the_estimate_flagged_abandoned() {
    let (leader_addr, node, mut seen) = leader_node(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let reservation = client
        .reserve(ReserveRequest::new("acme", "bot", "search"))
        .await
        .unwrap();
    assert!(matches!(next(&mut seen).await, Seen::Reserve { .. }));
    let Role::Leader { unavailable_first } = &node.role else {
        unreachable!("a leader node")
    };
    unavailable_first.store(2, Ordering::SeqCst);

    // As a `?` after the call would: the guard goes out of scope unsettled.
    drop(reservation);
    let mut request_ids = Vec::new();
    for _ in 0..3 {
        let Seen::Commit {
            request_id,
            reservation_id,
            actual,
            usage,
            abandoned,
        } = next(&mut seen).await
        else {
            panic!("a dropped guard sends a commit, never a release")
        };
        assert_eq!(reservation_id, 42);
        assert!(abandoned, "flagged abandoned");
        assert_eq!((actual, usage), (None, None), "the estimate is charged");
        request_ids.push(request_id);
    }
    assert!(
        request_ids.iter().all(|id| *id == request_ids[0]),
        "retries reuse one request id: {request_ids:?}"
    );
}

#[tokio::test]
async fn an_explicit_release_is_the_only_way_to_give_the_estimate_back() {
    let (leader_addr, mut seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let reservation = client
        .reserve(ReserveRequest::new("acme", "bot", "search"))
        .await
        .unwrap();
    assert!(matches!(next(&mut seen).await, Seen::Reserve { .. }));
    reservation.release().await.unwrap();
    assert_eq!(next(&mut seen).await, Seen::Release { reservation_id: 42 });
}

#[tokio::test]
async fn an_abandoned_guard_sends_nothing() {
    let (leader_addr, mut seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let reservation = client
        .reserve(ReserveRequest::new("acme", "bot", "search"))
        .await
        .unwrap();
    assert!(matches!(next(&mut seen).await, Seen::Reserve { .. }));
    assert_eq!(reservation.abandon(), Some(42));
    // A later operation is seen next: nothing was sent for the abandoned guard before it.
    let marker = client
        .reserve_with_id(
            "marker".into(),
            ReserveRequest::new("acme", "bot", "search"),
        )
        .await
        .unwrap();
    assert!(
        matches!(next(&mut seen).await, Seen::Reserve { request_id, .. } if request_id == "marker")
    );
    marker.abandon();
}

#[tokio::test]
async fn denial_names_the_limit_and_when_to_retry() {
    let (leader_addr, _seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let error = client
        .reserve(ReserveRequest::new("acme", "bot", "llm:x").tokens(5_000))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        Error::Denied {
            limit_id: "tpm".into(),
            scope: "agent:bot".into(),
            dimension: tollgate_client::Dimension::Tokens,
            remaining: 1_000,
            retry_after: Some(Duration::from_millis(1_500)),
        }
    );
}

#[tokio::test]
async fn status_goes_to_the_node_asked_not_the_leader() {
    let (leader_addr, _leader_seen) = leader(0).await;
    let (follower_addr, _follower_seen) = follower_of(&leader_addr).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();

    let status = client.status(&follower_addr).await.unwrap();
    assert_eq!(status.role, "follower");
    assert_eq!(status.addr, follower_addr);
}

#[tokio::test]
async fn fails_closed_within_the_deadline_when_nothing_listens() {
    let addr = dead_addr();
    let deadline = Duration::from_millis(300);
    let client = Client::new(ClientConfig {
        deadline,
        ..fast_config(&[&addr])
    })
    .unwrap();

    let started = Instant::now();
    let error = client
        .reserve(ReserveRequest::new("acme", "bot", "search"))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    let Error::Unavailable { reason } = &error else {
        panic!("expected Unavailable, got {error:?}")
    };
    assert!(
        reason.contains(&addr),
        "reason names the endpoint tried: {reason}"
    );
    assert!(reason.contains("last error"), "{reason}");
    // Generous slack for a loaded machine; the point is "bounded by the deadline", not precision.
    assert!(
        elapsed < deadline + Duration::from_secs(1),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn fails_open_up_to_the_local_cap_then_closed() {
    let addr = dead_addr();
    let client = Client::new(ClientConfig {
        deadline: Duration::from_millis(100),
        fail_mode: FailMode::Open {
            local_cap: Amounts::new(100, 1_000_000, 10),
        },
        ..fast_config(&[&addr])
    })
    .unwrap();
    let request = ReserveRequest::new("acme", "bot", "llm:x").tokens(60);

    let first = client.reserve(request.clone()).await.unwrap();
    assert!(first.is_local());
    assert_eq!(first.reservation_id(), None);
    let over_cap = client.reserve(request.clone()).await.unwrap_err();
    assert!(
        matches!(&over_cap, Error::Unavailable { reason } if reason.contains("fail-open local cap exhausted")),
        "{over_cap:?}"
    );

    assert_eq!(
        first.release().await.unwrap(),
        None,
        "a local release does no RPC"
    );
    let second = client.reserve(request.clone()).await.unwrap();
    let info = second.commit(Amounts::new(90, 0, 1)).await.unwrap();
    assert!(info.overrun && info.applied.is_none());
    // 90 of 100 tokens are spent: 60 more do not fit.
    assert!(matches!(
        client.reserve(request).await,
        Err(Error::Unavailable { .. })
    ));
}

/// Addresses of `n` ports nothing listens on.
fn dead_addrs(n: usize) -> Vec<String> {
    (0..n).map(|_| dead_addr()).collect()
}

/// The whole-operation bound the fail-fast tests hold a refused cluster to: far below the
/// 5 s default deadline the client would otherwise retry to, with slack for a loaded machine.
const FAIL_FAST_MAX: Duration = Duration::from_secs(1);

/// A client with the default deadline (5 s) and backoff: what fails fast is the breaker.
fn default_client(endpoints: &[String], fail_mode: FailMode) -> Client {
    Client::new(ClientConfig {
        fail_mode,
        ..ClientConfig::new(endpoints.iter().cloned())
    })
    .unwrap()
}

#[tokio::test]
async fn a_reserve_fails_fast_when_every_endpoint_refuses_the_connection() {
    let endpoints = dead_addrs(3);
    let client = default_client(&endpoints, FailMode::Closed);

    let started = Instant::now();
    let error = client
        .reserve(ReserveRequest::new("acme", "bot", "search"))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    assert!(elapsed < FAIL_FAST_MAX, "took {elapsed:?}");
    let Error::Unavailable { reason } = &error else {
        panic!("expected Unavailable, got {error:?}")
    };
    assert!(reason.contains("refused the connection"), "{reason}");
    for endpoint in &endpoints {
        assert!(reason.contains(endpoint), "names {endpoint}: {reason}");
    }
}

#[tokio::test]
async fn reserves_stay_fast_while_the_cluster_stays_down() {
    let client = default_client(&dead_addrs(3), FailMode::Closed);
    for n in 0..20 {
        let started = Instant::now();
        let outcome = client
            .reserve(ReserveRequest::new("acme", "bot", "search"))
            .await;
        let elapsed = started.elapsed();
        assert!(
            matches!(outcome, Err(Error::Unavailable { .. })),
            "reserve {n}: {outcome:?}"
        );
        assert!(elapsed < FAIL_FAST_MAX, "reserve {n} took {elapsed:?}");
    }
}

#[tokio::test]
async fn failing_open_grants_locally_at_once_when_every_endpoint_refuses() {
    let client = default_client(
        &dead_addrs(3),
        FailMode::Open {
            local_cap: Amounts::new(1_000, 1_000_000, 100),
        },
    );
    for n in 0..3 {
        let started = Instant::now();
        let reservation = client
            .reserve(ReserveRequest::new("acme", "bot", "llm:x").tokens(10))
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert!(reservation.is_local(), "reserve {n}");
        assert!(elapsed < FAIL_FAST_MAX, "reserve {n} took {elapsed:?}");
        reservation.commit(Amounts::new(10, 0, 1)).await.unwrap();
    }
}

#[tokio::test]
async fn the_client_recovers_once_a_node_listens_again() {
    let addr = dead_addr();
    let client = default_client(std::slice::from_ref(&addr), FailMode::Closed);
    assert!(matches!(
        client
            .reserve(ReserveRequest::new("acme", "bot", "search"))
            .await,
        Err(Error::Unavailable { .. })
    ));

    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let (_node, _seen) = serve(
        listener,
        addr.clone(),
        Role::Leader {
            unavailable_first: AtomicU32::new(0),
        },
    );
    // The breaker lets one operation through per probe interval (500 ms): poll until one
    // gets through, within a bound the probe interval fits in many times.
    let deadline = Instant::now() + NOTIFICATION_WAIT_MAX;
    let reservation = loop {
        match client
            .reserve(ReserveRequest::new("acme", "bot", "search"))
            .await
        {
            Ok(reservation) => break reservation,
            Err(Error::Unavailable { reason }) => {
                assert!(Instant::now() < deadline, "not recovered: {reason}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(reservation.reservation_id(), Some(42));
    reservation.abandon();
}

#[tokio::test]
async fn an_election_is_retried_to_the_deadline_not_failed_fast() {
    // Two nodes down, the third up but without a leader for longer than the deadline.
    let (electing, _seen) = leader(u32::MAX).await;
    let mut endpoints = dead_addrs(2);
    endpoints.push(electing);
    // The backoff of `fast_config` pauses at least 650 ms in all over its 32 attempts.
    let deadline = Duration::from_millis(500);
    let client = Client::new(ClientConfig {
        deadline,
        ..fast_config(&endpoints.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .unwrap();

    let started = Instant::now();
    let error = client
        .reserve(ReserveRequest::new("acme", "bot", "search"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() >= deadline,
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&error, Error::Unavailable { reason } if reason.contains("within the 500 ms deadline")),
        "{error:?}"
    );
}

#[tokio::test]
async fn refused_endpoints_are_skipped_until_the_electing_node_has_a_leader() {
    let (electing, _seen) = leader(5).await;
    let mut endpoints = dead_addrs(2);
    endpoints.push(electing);
    let client = Client::new(fast_config(
        &endpoints.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
    .unwrap();
    let reservation = client
        .reserve(ReserveRequest::new("acme", "bot", "search"))
        .await
        .unwrap();
    assert_eq!(reservation.reservation_id(), Some(42));
    reservation.abandon();
}

fn wire_usage(model: &str, input_tokens: u64, output_tokens: u64) -> Option<v1::Usage> {
    Some(v1::Usage {
        model: model.into(),
        input_tokens,
        output_tokens,
        cached_input_tokens: 0,
    })
}

#[tokio::test]
async fn guarded_commits_the_calls_usage_and_returns_its_value() {
    let (leader_addr, mut seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let request = ReserveRequest::new("acme", "bot", "llm:x").usage(Usage::new("gpt-x", 100, 50));

    let (answer, committed) = client
        .guarded(request, |reservation| async move {
            assert_eq!(reservation.reservation_id, Some(42));
            Ok::<_, CallError<String>>(("the answer", Usage::new("gpt-x", 90, 20)))
        })
        .await
        .unwrap();

    assert_eq!(answer, "the answer");
    assert_eq!(committed.cost_micros, 110, "the cost the node priced");
    let Seen::Reserve { .. } = next(&mut seen).await else {
        panic!("reserve first")
    };
    let Seen::Commit {
        actual,
        usage,
        abandoned,
        ..
    } = next(&mut seen).await
    else {
        panic!("then commit")
    };
    assert_eq!(
        (actual, usage, abandoned),
        (None, wire_usage("gpt-x", 90, 20), false)
    );
}

#[tokio::test]
async fn guarded_commits_amounts_as_given() {
    let (leader_addr, mut seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let ((), committed) = client
        .guarded(ReserveRequest::new("acme", "bot", "search"), |_| async {
            Ok::<_, CallError<String>>(((), Amounts::new(0, 3, 1)))
        })
        .await
        .unwrap();
    assert_eq!(committed.cost_micros, 3);
    assert!(matches!(next(&mut seen).await, Seen::Reserve { .. }));
    assert!(matches!(
        next(&mut seen).await,
        Seen::Commit {
            actual: Some(v1::Amounts { cost_micros: 3, .. }),
            usage: None,
            abandoned: false,
            ..
        }
    ));
}

#[tokio::test]
async fn guarded_releases_when_the_call_was_not_made() {
    let (leader_addr, mut seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let outcome = client
        .guarded(ReserveRequest::new("acme", "bot", "llm:x"), |_| async {
            Err::<((), Amounts), _>(CallError::NotCalled("prompt too long"))
        })
        .await;
    assert_eq!(outcome, Err(GuardError::NotCalled("prompt too long")));
    assert!(matches!(next(&mut seen).await, Seen::Reserve { .. }));
    assert_eq!(next(&mut seen).await, Seen::Release { reservation_id: 42 });
}

#[tokio::test]
async fn guarded_settles_at_the_estimate_when_the_call_failed() {
    let (leader_addr, mut seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let outcome = client
        .guarded(ReserveRequest::new("acme", "bot", "llm:x"), |_| async {
            let provider: Result<u64, &str> = Err("timed out mid-response");
            let tokens = provider?; // the call may have happened
            Ok(((), Amounts::new(tokens, 0, 1)))
        })
        .await;
    assert_eq!(outcome, Err(GuardError::Failed("timed out mid-response")));
    assert!(matches!(next(&mut seen).await, Seen::Reserve { .. }));
    assert!(matches!(
        next(&mut seen).await,
        Seen::Commit {
            abandoned: true,
            actual: None,
            usage: None,
            ..
        }
    ));
}

#[tokio::test]
async fn guarded_makes_no_call_when_the_reserve_is_denied() {
    let (leader_addr, _seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let called = std::sync::atomic::AtomicBool::new(false);
    let outcome = client
        .guarded(
            ReserveRequest::new("acme", "bot", "llm:x").tokens(5_000),
            |_| async {
                called.store(true, Ordering::SeqCst);
                Ok::<_, CallError<String>>(((), Amounts::ZERO))
            },
        )
        .await;
    assert!(
        matches!(&outcome, Err(GuardError::Reserve(Error::Denied { limit_id, .. })) if limit_id == "tpm"),
        "{outcome:?}"
    );
    assert!(!called.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_call_that_panics_inside_guarded_is_settled_as_abandoned() {
    let (leader_addr, mut seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let task = tokio::spawn(async move {
        client
            .guarded(ReserveRequest::new("acme", "bot", "llm:x"), |_| async {
                if true {
                    panic!("the worker's own bug");
                }
                Ok::<_, CallError<String>>(((), Amounts::ZERO))
            })
            .await
    });
    assert!(task.await.unwrap_err().is_panic());
    assert!(matches!(next(&mut seen).await, Seen::Reserve { .. }));
    assert!(matches!(
        next(&mut seen).await,
        Seen::Commit {
            abandoned: true,
            ..
        }
    ));
}

#[tokio::test]
async fn record_usage_sends_the_usage_and_returns_the_priced_cost() {
    let (leader_addr, mut seen) = leader(0).await;
    let client = Client::new(fast_config(&[&leader_addr])).unwrap();
    let recorded = client
        .record_usage("acme", "bot", "llm:x", Usage::new("gpt-x", 7, 3))
        .await
        .unwrap();
    assert_eq!(recorded.cost_micros, 10);
    assert_eq!(recorded.applied.log_index, 7);
    assert_eq!(
        next(&mut seen).await,
        Seen::Record {
            actual: None,
            usage: wire_usage("gpt-x", 7, 3)
        }
    );
}

#[tokio::test]
async fn failing_open_a_usage_estimate_holds_its_tokens_and_commits_them() {
    let client = Client::new(ClientConfig {
        fail_mode: FailMode::Open {
            local_cap: Amounts::new(1_000, 1_000, 10),
        },
        ..fast_config(&[&dead_addr()])
    })
    .unwrap();
    let request = ReserveRequest::new("acme", "bot", "llm:x").usage(Usage::new("gpt-x", 500, 400));
    let reservation = client.reserve(request.clone()).await.unwrap();
    assert!(reservation.is_local());
    assert_eq!(reservation.estimate(), Amounts::new(900, 0, 1));
    let committed = reservation
        .commit_usage(Usage::new("gpt-x", 500, 50))
        .await
        .unwrap();
    assert!(!committed.overrun);
    // 550 of 1,000 tokens are spent: another 900-token estimate does not fit, 450 does.
    assert!(client.reserve(request).await.is_err());
    let smaller = ReserveRequest::new("acme", "bot", "llm:x").usage(Usage::new("gpt-x", 400, 50));
    assert!(client.reserve(smaller).await.unwrap().is_local());
}
