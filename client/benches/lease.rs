//! Time of one reserve+commit pair decided locally inside a lease: what `Client::reserve`
//! and `Reservation::commit` cost when the slot of (tenant, agent, tool) holds a slice. A
//! fake node in the same process grants one large lease and renews it on every settle, so
//! the time includes the settles the client makes (the report's bound is reached every
//! `LEASE_SETTLE_CALLS_MAX` calls) but no ledger work.
//!
//! Prints, per round, ns per pair (wall, and CPU of the calling thread, which a loaded host
//! does not inflate; the background settles run on other threads), heap allocations per pair (all threads: the request's
//! three strings, the request id, and the settles' share, in the client and in the fake
//! node) and how many pairs went per call, then the median. The last
//! line is the result: `lease reserve+commit: <W> ns/pair wall, <C> ns/pair CPU (<A>
//! allocations/pair)`.
//!
//! Run: `cargo bench -p tollgate-client --bench lease` (`PAIRS=n` to change the round size).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use tollgate_client::v1;
use tollgate_client::v1::tollgate_server::{Tollgate, TollgateServer};
use tollgate_client::{Amounts, Client, ClientConfig, ReserveRequest};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const PAIRS_DEFAULT: u64 = 200_000;
const ROUNDS: usize = 7;
/// A slice no bench run can spend: the pairs never wait for a refill.
const SLICE: u64 = 1_000_000_000_000;

/// Counts allocations (all threads: the background settle's count too, which is the point).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Grants every lease ask a huge slice and renews it on every settle.
struct Node;

fn terms(lease_id: u64, units: u32) -> v1::LeaseTerms {
    v1::LeaseTerms {
        lease_id,
        slice: Some(Amounts::new(SLICE, SLICE, SLICE).into()),
        units,
        expires_at_ms: 0,
        ttl_ms: 2_000,
        repeat_max: 0,
        repeat_window_ms: 0,
    }
}

fn absent<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this bench"))
}

#[tonic::async_trait]
impl Tollgate for Node {
    async fn lease(
        &self,
        request: Request<v1::LeaseRequest>,
    ) -> Result<Response<v1::LeaseResponse>, Status> {
        let units = request.into_inner().units;
        Ok(Response::new(v1::LeaseResponse {
            decision: Some(v1::lease_response::Decision::Granted(terms(1, units))),
            applied: None,
        }))
    }
    async fn settle(
        &self,
        request: Request<v1::SettleRequest>,
    ) -> Result<Response<v1::SettleResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(v1::SettleResponse {
            lease: Some(terms(request.lease_id, request.units)),
            charged_calls: u32::try_from(request.calls.len()).unwrap_or(u32::MAX),
            ..Default::default()
        }))
    }
    /// A call the lease could not decide (it waited too long for a settle) goes per call.
    async fn reserve(
        &self,
        _: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        Ok(Response::new(v1::ReserveResponse {
            decision: Some(v1::reserve_response::Decision::Granted(v1::Granted {
                reservation_id: 1,
                expires_at_ms: 0,
                tightest: None,
            })),
            applied: None,
        }))
    }
    async fn commit(
        &self,
        _: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        Ok(Response::new(v1::CommitResponse::default()))
    }
    async fn release(
        &self,
        _: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        absent()
    }
    async fn record(
        &self,
        _: Request<v1::RecordRequest>,
    ) -> Result<Response<v1::RecordResponse>, Status> {
        absent()
    }
    async fn batch(
        &self,
        _: Request<v1::BatchRequest>,
    ) -> Result<Response<v1::BatchResponse>, Status> {
        absent()
    }
    async fn get_usage(
        &self,
        _: Request<v1::UsageRequest>,
    ) -> Result<Response<v1::UsageResponse>, Status> {
        absent()
    }
    async fn list_reservations(
        &self,
        _: Request<v1::ListReservationsRequest>,
    ) -> Result<Response<v1::ListReservationsResponse>, Status> {
        absent()
    }
}

/// CPU time this thread has run, ns (Linux: `/proc/thread-self/schedstat`); `None`
/// elsewhere. On a shared host wall time counts other processes' turns; this does not.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// What one round measured, per pair.
struct Round {
    wall_ns: f64,
    cpu_ns: Option<f64>,
    allocations: f64,
    per_call: u64,
}

/// `pairs` reserve+commit pairs, timed.
async fn round(client: &Client, pairs: u64) -> Round {
    let mut per_call = 0;
    let allocations = ALLOCATIONS.load(Relaxed);
    let cpu = thread_cpu_ns();
    let start = Instant::now();
    for _ in 0..pairs {
        let request = ReserveRequest::new("acme", "bot", "search").tokens(10);
        let reservation = client.reserve(request).await.expect("granted");
        per_call += u64::from(reservation.lease_id().is_none());
        reservation
            .commit(Amounts::new(7, 0, 1))
            .await
            .expect("committed");
    }
    let elapsed = start.elapsed().as_nanos() as f64;
    let cpu = cpu
        .zip(thread_cpu_ns())
        .map(|(from, to)| (to - from) as f64);
    let allocated = (ALLOCATIONS.load(Relaxed) - allocations) as f64;
    let pairs = pairs as f64;
    Round {
        wall_ns: elapsed / pairs,
        cpu_ns: cpu.map(|cpu| cpu / pairs),
        allocations: allocated / pairs,
        per_call,
    }
}

fn main() {
    let pairs = std::env::var("PAIRS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(PAIRS_DEFAULT);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TollgateServer::new(Node))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        let client = Client::new(ClientConfig::new([addr])).expect("client");
        let request = || ReserveRequest::new("acme", "bot", "search");
        println!(
            "sizes: reserve future {} B, Reservation {} B, ReserveRequest {} B",
            std::mem::size_of_val(&client.reserve(request())),
            std::mem::size_of::<tollgate_client::Reservation>(),
            std::mem::size_of::<ReserveRequest>(),
        );
        // Warm-up: the lease ask, the connection, the slot's buffers.
        round(&client, pairs / 10 + 1).await;
        let (mut walls, mut cpus) = (Vec::new(), Vec::new());
        let mut allocations = 0.0;
        for r in 0..ROUNDS {
            let round = round(&client, pairs).await;
            let cpu = round.cpu_ns.map_or("-".into(), |ns| format!("{ns:.0}"));
            println!(
                "round {r}: {:.0} ns/pair wall, {cpu} ns/pair on the calling thread's CPU, \
                 {:.2} allocations/pair, {} of {pairs} per call",
                round.wall_ns, round.allocations, round.per_call
            );
            walls.push(round.wall_ns);
            cpus.extend(round.cpu_ns);
            allocations = round.allocations;
        }
        client.return_leases().await;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let wall = median(walls).unwrap_or_default();
        let cpu = median(cpus).map_or("-".into(), |ns| format!("{ns:.0}"));
        println!(
            "lease reserve+commit: {wall:.0} ns/pair wall, {cpu} ns/pair CPU ({allocations:.2} allocations/pair)"
        );
    });
}
