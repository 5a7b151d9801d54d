//! The client's lease path against an in-process fake ledger that grants leases from one
//! tenant token budget: local grants and commits, settles that report every call once
//! (also when an answer is lost and the settle is resent), the end of a budget, the
//! repetition guard, and tenants without leases. The same against a real cluster:
//! `leases_cluster.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate_client::v1;
use tollgate_client::v1::tollgate_server::{Tollgate, TollgateServer};
use tollgate_client::{Amounts, Backoff, Client, ClientConfig, Error, ReserveRequest};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// What the fake ledger holds for its one tenant's token budget.
#[derive(Default)]
struct Book {
    budget: u64,
    committed: u64,
    /// Tokens held per live lease.
    leases: HashMap<u64, u64>,
    /// Tokens held per per-call reservation.
    reservations: HashMap<u64, u64>,
    next_id: u64,
    /// Settle answers by request id: a resent settle gets the first answer, applied once.
    settles: HashMap<String, v1::SettleResponse>,
    /// Request ids of the calls reported by settles, and how often each was charged.
    lease_calls: HashMap<String, u32>,
    /// Fingerprints of lease calls in the order they were reported, then of reserves.
    fingerprints: Vec<(String, &'static str)>,
    lease_asks: u32,
    reserves: u32,
    records: u32,
}

impl Book {
    fn room(&self) -> u64 {
        let held: u64 = self.leases.values().chain(self.reservations.values()).sum();
        self.budget.saturating_sub(self.committed + held)
    }
}

struct Fake {
    book: Mutex<Book>,
    leases_on: bool,
    repeat_max: u32,
    /// Settles to apply and then answer UNAVAILABLE, as if the answer were lost.
    lose_settle_answers: AtomicU32,
}

#[derive(Clone)]
struct Node(Arc<Fake>);

fn terms(lease_id: u64, tokens: u64, units: u32, repeat_max: u32) -> v1::LeaseTerms {
    v1::LeaseTerms {
        lease_id,
        slice: Some(Amounts::new(tokens, 1_000_000, 1_000_000).into()),
        units,
        expires_at_ms: 0,
        ttl_ms: 2_000,
        repeat_max,
        repeat_window_ms: 60_000,
    }
}

impl Node {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0.book.lock().unwrap()
    }

    fn settle_once(&self, request: v1::SettleRequest) -> v1::SettleResponse {
        let mut book = self.book();
        if let Some(answer) = book.settles.get(&request.request_id) {
            return *answer;
        }
        let Some(mut held) = book.leases.remove(&request.lease_id) else {
            return v1::SettleResponse::default();
        };
        for call in &request.calls {
            let actual = call.actual.unwrap_or_default().tokens;
            book.committed += actual;
            held = held.saturating_sub(actual);
            *book.lease_calls.entry(call.request_id.clone()).or_default() += 1;
            if !call.fingerprint.is_empty() {
                book.fingerprints.push((call.fingerprint.clone(), "lease"));
            }
        }
        let want = request.want.unwrap_or_default().tokens;
        let answer = if want == 0 && request.units == 0 {
            v1::SettleResponse::default()
        } else {
            let available = book.room() + held;
            let new = want.min(available);
            book.leases.insert(request.lease_id, new);
            v1::SettleResponse {
                lease: Some(terms(
                    request.lease_id,
                    new,
                    request.units,
                    self.0.repeat_max,
                )),
                ..Default::default()
            }
        };
        book.settles.insert(request.request_id, answer);
        answer
    }
}

#[tonic::async_trait]
impl Tollgate for Node {
    async fn lease(
        &self,
        request: Request<v1::LeaseRequest>,
    ) -> Result<Response<v1::LeaseResponse>, Status> {
        use v1::lease_response::Decision;
        let request = request.into_inner();
        let mut book = self.book();
        book.lease_asks += 1;
        let refused = |r: v1::LeaseRefusal| Decision::Refused(r.into());
        let decision = if !self.0.leases_on {
            refused(v1::LeaseRefusal::Off)
        } else {
            let share = book.room() / (book.leases.len() as u64 + 1);
            let grant = request.want.unwrap_or_default().tokens.min(share);
            if grant < request.floor.unwrap_or_default().tokens || grant == 0 {
                refused(v1::LeaseRefusal::Room)
            } else {
                book.next_id += 1;
                let id = book.next_id;
                book.leases.insert(id, grant);
                Decision::Granted(terms(id, grant, request.units, self.0.repeat_max))
            }
        };
        Ok(Response::new(v1::LeaseResponse {
            decision: Some(decision),
            applied: None,
        }))
    }

    async fn settle(
        &self,
        request: Request<v1::SettleRequest>,
    ) -> Result<Response<v1::SettleResponse>, Status> {
        let answer = self.settle_once(request.into_inner());
        let lost = self
            .0
            .lose_settle_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return Err(Status::unavailable("the answer was lost"));
        }
        Ok(Response::new(answer))
    }

    async fn reserve(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        use v1::reserve_response::Decision;
        let request = request.into_inner();
        let mut book = self.book();
        book.reserves += 1;
        if !request.fingerprint.is_empty() {
            book.fingerprints.push((request.fingerprint, "reserve"));
        }
        let tokens = request.estimate.unwrap_or_default().tokens;
        let room = book.room();
        let decision = if tokens > room {
            Decision::Denied(v1::DeniedByLimit {
                limit_id: "tokens".into(),
                scope: None,
                dimension: v1::Dimension::Tokens as i32,
                remaining: i64::try_from(room).unwrap(),
                retry_after_ms: None,
            })
        } else {
            book.next_id += 1;
            let id = book.next_id;
            book.reservations.insert(id, tokens);
            Decision::Granted(v1::Granted {
                reservation_id: id,
                expires_at_ms: 0,
                tightest: None,
            })
        };
        Ok(Response::new(v1::ReserveResponse {
            decision: Some(decision),
            applied: None,
        }))
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        let request = request.into_inner();
        let mut book = self.book();
        let Some(held) = book.reservations.remove(&request.reservation_id) else {
            return Err(Status::not_found("no such reservation"));
        };
        let actual = match request.actual {
            Some(actual) => actual.tokens,
            None => held,
        };
        book.committed += actual;
        Ok(Response::new(v1::CommitResponse::default()))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        self.book()
            .reservations
            .remove(&request.into_inner().reservation_id);
        Ok(Response::new(v1::ReleaseResponse::default()))
    }

    async fn record(
        &self,
        request: Request<v1::RecordRequest>,
    ) -> Result<Response<v1::RecordResponse>, Status> {
        let mut book = self.book();
        book.records += 1;
        book.committed += request.into_inner().actual.unwrap_or_default().tokens;
        Ok(Response::new(v1::RecordResponse::default()))
    }

    async fn batch(
        &self,
        _: Request<v1::BatchRequest>,
    ) -> Result<Response<v1::BatchResponse>, Status> {
        Err(Status::unimplemented("these tests do not coalesce"))
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

/// A fake ledger with a budget of `budget` tokens, and a client of it.
async fn start(budget: u64, leases_on: bool, repeat_max: u32) -> (Node, Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let node = Node(Arc::new(Fake {
        book: Mutex::new(Book {
            budget,
            ..Book::default()
        }),
        leases_on,
        repeat_max,
        lose_settle_answers: AtomicU32::new(0),
    }));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TollgateServer::new(node.clone()))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let client = Client::new(ClientConfig {
        coalesce: false,
        deadline: Duration::from_secs(3),
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(50),
        },
        ..ClientConfig::new([addr])
    })
    .unwrap();
    (node, client)
}

fn request(tokens: u64) -> ReserveRequest {
    ReserveRequest::new("acme", "bot", "search").tokens(tokens)
}

#[tokio::test]
async fn concurrent_calls_are_decided_locally_and_each_is_charged_once() {
    let (node, client) = start(1_000_000, true, 0).await;
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut spent, mut leased) = (0, 0);
            for i in 0..200u64 {
                let reservation = client.reserve(request(10)).await.unwrap();
                leased += u64::from(reservation.lease_id().is_some());
                let actual = (task + i) % 12; // some over the estimate
                reservation
                    .commit(Amounts::new(actual, 0, 1))
                    .await
                    .unwrap();
                spent += actual;
            }
            (spent, leased)
        }));
    }
    let (mut spent, mut leased) = (0, 0);
    for task in tasks {
        let (s, l) = task.await.unwrap();
        spent += s;
        leased += l;
    }
    client.return_leases().await;
    let book = node.book();
    assert_eq!(book.committed, spent, "every actual charged exactly once");
    assert!(book.leases.is_empty() && book.reservations.is_empty());
    assert_eq!(book.lease_calls.len() as u64, leased);
    assert!(book.lease_calls.values().all(|&n| n == 1));
    assert!(
        leased >= 1_500,
        "{leased} of 1,600 calls were decided locally"
    );
    assert_eq!(book.lease_asks, 1, "one lease, renewed by settles");
}

#[tokio::test]
async fn a_budget_that_runs_out_is_never_overspent_and_the_rest_is_denied_per_call() {
    let (node, client) = start(1_000, true, 0).await;
    let (mut spent, mut denied) = (0, 0);
    for _ in 0..200 {
        match client.reserve(request(10)).await {
            Ok(reservation) => {
                reservation.commit(Amounts::new(10, 0, 1)).await.unwrap();
                spent += 10;
            }
            Err(Error::Denied { limit_id, .. }) => {
                assert_eq!(limit_id, "tokens");
                denied += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    client.return_leases().await;
    let book = node.book();
    assert_eq!(book.committed, spent);
    assert!(spent <= 1_000, "spent {spent} of a budget of 1,000");
    assert!(
        denied > 0 && book.reserves > 0,
        "denials come from per-call reserves"
    );
    assert!(book.leases.is_empty());
}

#[tokio::test]
async fn a_settle_whose_answer_is_lost_is_resent_and_charged_once() {
    let (node, client) = start(1_000_000, true, 0).await;
    node.0.lose_settle_answers.store(2, Ordering::SeqCst);
    let mut spent = 0;
    for i in 0..300u64 {
        let reservation = client.reserve(request(10)).await.unwrap();
        reservation
            .commit(Amounts::new(i % 10, 0, 1))
            .await
            .unwrap();
        spent += i % 10;
    }
    client.return_leases().await;
    let book = node.book();
    assert_eq!(node.0.lose_settle_answers.load(Ordering::SeqCst), 0);
    assert_eq!(book.committed, spent);
    assert!(book.lease_calls.values().all(|&n| n == 1));
}

#[tokio::test]
async fn release_reports_nothing_and_a_dropped_grant_is_charged_its_estimate() {
    let (node, client) = start(1_000_000, true, 0).await;
    let released = client.reserve(request(10)).await.unwrap();
    assert!(released.lease_id().is_some());
    assert_eq!(released.info().lease_id, released.lease_id());
    assert_eq!(released.release().await.unwrap(), None);
    drop(client.reserve(request(7)).await.unwrap());
    client.return_leases().await;
    let book = node.book();
    assert_eq!(book.committed, 7);
    assert_eq!(book.lease_calls.len(), 1);
}

#[tokio::test]
async fn a_repeated_fingerprint_reaches_the_ledger_per_call_after_its_repeats() {
    let (node, client) = start(1_000_000, true, 3).await;
    let mut origins = Vec::new();
    for _ in 0..3 {
        let reservation = client.reserve(request(1).fingerprint("f1")).await.unwrap();
        origins.push(reservation.lease_id().is_some());
        reservation.commit(Amounts::new(1, 0, 1)).await.unwrap();
    }
    assert_eq!(origins, [true, true, false], "the third goes per call");
    let book = node.book();
    let seen: Vec<&str> = book.fingerprints.iter().map(|(_, via)| *via).collect();
    assert_eq!(
        seen,
        ["lease", "lease", "reserve"],
        "the ledger saw both earlier repeats before the third"
    );
}

#[tokio::test]
async fn a_tenant_without_leases_goes_per_call_and_is_not_asked_again_at_once() {
    let (node, client) = start(1_000_000, false, 0).await;
    for _ in 0..5 {
        let reservation = client.reserve(request(10)).await.unwrap();
        assert_eq!(reservation.lease_id(), None);
        reservation.commit(Amounts::new(5, 0, 1)).await.unwrap();
    }
    let book = node.book();
    assert_eq!((book.lease_asks, book.reserves, book.committed), (1, 5, 25));
}

#[tokio::test]
async fn a_session_or_priced_call_never_uses_a_lease() {
    let (node, client) = start(1_000_000, true, 0).await;
    let reservation = client
        .reserve(request(10).session("ticket-1"))
        .await
        .unwrap();
    assert_eq!(reservation.lease_id(), None);
    reservation.release().await.unwrap();
    assert_eq!(node.book().lease_asks, 0);
}
