//! Fuzz targets: every decoder of bytes that come from the network or the disk, fed valid
//! messages with random damage (and plain random bytes). No input may panic a node, and
//! none may get INTERNAL or UNKNOWN where a clear refusal is due.
//!
//! Each target runs `FUZZ_CASES` cases (default 256; CI sets more), so its time is bounded.
//! Damage to a checksummed file is followed by a reseal, so that the decoder behind the
//! checksum is reached too, not only the checksum's refusal. A failure prints the smallest
//! damage proptest found; `PROPTEST_RNG_SEED` replays a run.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_ledger::{
    AgentId, Amounts, Command, Dimension, Ledger, LimitId, LimitKind, LimitSpec, RequestId,
    ReservationId, Scope, TenantId, TenantPolicy, ToolId, Window, SNAPSHOT_MAGIC,
};
use tollgate_proto::v1 as pb;
use tollgate_server::raft::guard::{self, Local};
use tollgate_server::raft::{Batch, NodeId, TypeConfig};

use common::raw::call_on;
use common::TestCluster;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

/// Panics anywhere in the process, the node's tasks included: a panicking handler answers
/// like a dropped connection, so the answer alone would not show it.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            report(info);
        }));
    });
}

/// What is done to a valid message: a few bytes overwritten, inserted or removed, maybe a
/// cut; or, now and then, the message replaced by random bytes.
#[derive(Clone, Debug)]
struct Damage {
    seed: Index,
    edits: Vec<(Index, u8, u8)>,
    cut: Option<Index>,
    noise: Option<Vec<u8>>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        any::<Index>(),
        prop::collection::vec((any::<Index>(), any::<u8>(), 0..3u8), 0..6),
        prop::option::weighted(0.2, any::<Index>()),
        prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 0..256)),
    )
        .prop_map(|(seed, edits, cut, noise)| Damage {
            seed,
            edits,
            cut,
            noise,
        })
}

impl Damage {
    fn apply(&self, seeds: &[Vec<u8>]) -> Vec<u8> {
        if let Some(noise) = &self.noise {
            return noise.clone();
        }
        let mut bytes = self.seed.get(seeds).clone();
        self.damage(&mut bytes, 0);
        bytes
    }

    /// Damages `bytes` from offset `from` on (what lies before is left whole).
    fn damage(&self, bytes: &mut Vec<u8>, from: usize) {
        for (at, byte, kind) in &self.edits {
            let len = bytes.len().saturating_sub(from);
            let at = from + if len == 0 { 0 } else { at.index(len) };
            match kind {
                0 if at < bytes.len() => bytes[at] = *byte,
                1 => bytes.insert(at.min(bytes.len()), *byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.push(*byte),
            }
        }
        if let Some(cut) = &self.cut {
            let len = bytes.len().saturating_sub(from);
            bytes.truncate(from + cut.index(len + 1));
        }
    }
}

/// Runs `target` on `cases` values of `strategy`; a failure panics with the smallest one
/// proptest found.
fn fuzz<S: Strategy>(
    cases: u32,
    strategy: &S,
    target: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if let Err(failure) = TestRunner::new(config).run(strategy, target) {
        panic!("{failure}");
    }
}

/// Runs `target` on damaged `seeds`.
fn run(seeds: &[Vec<u8>], target: impl Fn(Vec<u8>) -> Result<(), TestCaseError>) {
    fuzz(cases(), &damage(), |damage| target(damage.apply(seeds)));
}

// ---- Client requests, over the wire to a real node ----

fn amounts(tokens: u64) -> Option<pb::Amounts> {
    Some(pb::Amounts {
        tokens,
        cost_micros: 10,
        calls: Some(1),
    })
}

fn tenant_scope() -> Option<pb::Scope> {
    Some(pb::Scope {
        scope: Some(pb::scope::Scope::Tenant(pb::Empty {})),
    })
}

/// A valid request for each method a client may call, by path.
fn client_requests() -> Vec<(&'static str, Vec<u8>)> {
    let reserve = pb::ReserveRequest {
        request_id: "r-1".into(),
        tenant: "acme".into(),
        agent: "agent".into(),
        tool: "llm".into(),
        estimate: amounts(10),
        ttl_ms: 60_000,
        fingerprint: "f".into(),
        usage: None,
        session: "task-1".into(),
        shape: String::new(),
    };
    let commit = pb::CommitRequest {
        request_id: "c-1".into(),
        tenant: "acme".into(),
        reservation_id: 1,
        actual: None,
        abandoned: false,
        usage: Some(pb::Usage {
            model: "gpt-4o-2024-08-06".into(),
            input_tokens: 1_000,
            output_tokens: 500,
            cached_input_tokens: 2_000,
        }),
    };
    let limit = pb::Limit {
        id: "tokens".into(),
        scope: tenant_scope(),
        dimension: pb::Dimension::Tokens.into(),
        kind: Some(pb::limit::Kind::Rate(pb::Rate {
            amount: 100,
            period_ms: 1_000,
            burst: 10,
        })),
        thresholds: Some(pb::AlertThresholds {
            percent: vec![50, 80],
        }),
    };
    let audit = pb::AuditQueryRequest {
        tenant: "acme".into(),
        agent: "agent".into(),
        from_ms: Some(0),
        to_ms: Some(u64::MAX),
        after_seq: Some(1),
        limit: 10,
        event: "threshold_crossed".into(),
        tool: "llm".into(),
    };
    let freeze = pb::FreezeRequest {
        request_id: "f-1".into(),
        tenant: "acme".into(),
        agent: "agent".into(),
    };
    let batch = pb::BatchRequest {
        ops: vec![
            pb::BatchOp {
                op: Some(pb::batch_op::Op::Reserve(reserve.clone())),
            },
            pb::BatchOp {
                op: Some(pb::batch_op::Op::Commit(commit.clone())),
            },
        ],
    };
    vec![
        ("/tollgate.v1.Tollgate/Reserve", reserve.encode_to_vec()),
        ("/tollgate.v1.Tollgate/Commit", commit.encode_to_vec()),
        (
            "/tollgate.v1.Tollgate/Release",
            pb::ReleaseRequest {
                request_id: "l-1".into(),
                tenant: "acme".into(),
                reservation_id: 2,
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Tollgate/Record",
            pb::RecordRequest {
                request_id: "d-1".into(),
                tenant: "acme".into(),
                agent: "agent".into(),
                tool: "llm".into(),
                actual: None,
                usage: commit.usage.clone(),
                offline: false,
                session: "task-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Tollgate/GetUsage",
            pb::UsageRequest {
                tenant: "acme".into(),
                agent: "agent".into(),
                tool: "llm".into(),
                session: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Tollgate/ListReservations",
            pb::ListReservationsRequest {
                tenant: "acme".into(),
                agent: "agent".into(),
                limit: 5,
            }
            .encode_to_vec(),
        ),
        ("/tollgate.v1.Tollgate/Batch", batch.encode_to_vec()),
        (
            "/tollgate.v1.Tollgate/Lease",
            pb::LeaseRequest {
                request_id: "e-1".into(),
                tenant: "acme".into(),
                agent: "agent".into(),
                tool: "llm".into(),
                want: reserve.estimate,
                units: 4,
                floor: reserve.estimate,
                ttl_ms: 2_000,
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Tollgate/Settle",
            pb::SettleRequest {
                request_id: "s-1".into(),
                tenant: "acme".into(),
                lease_id: 2,
                calls: vec![pb::LeaseCall {
                    request_id: "c-1".into(),
                    estimate: reserve.estimate,
                    actual: reserve.estimate,
                    fingerprint: "fp".into(),
                    shape: "sh".into(),
                }],
                want: reserve.estimate,
                units: 1,
                ttl_ms: 0,
                keep: reserve.estimate,
                keep_units: 1,
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Admin/PutTenant",
            pb::PutTenantRequest {
                request_id: "t-1".into(),
                tenant: "acme".into(),
                policy: Some(pb::TenantPolicy {
                    repeat_max: 5,
                    repeat_window_ms: 60_000,
                    velocity_factor: 4,
                    velocity_window_ms: 60_000,
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Admin/GetTenant",
            pb::GetTenantRequest {
                tenant: "acme".into(),
            }
            .encode_to_vec(),
        ),
        ("/tollgate.v1.Admin/ListTenants", Vec::new()),
        (
            "/tollgate.v1.Admin/PutLimit",
            pb::PutLimitRequest {
                request_id: "p-1".into(),
                tenant: "acme".into(),
                limit: Some(limit),
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Admin/DeleteLimit",
            pb::DeleteLimitRequest {
                request_id: "x-1".into(),
                tenant: "acme".into(),
                limit_id: "tokens".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Admin/ListLimits",
            pb::ListLimitsRequest {
                tenant: "acme".into(),
            }
            .encode_to_vec(),
        ),
        ("/tollgate.v1.Admin/Freeze", freeze.encode_to_vec()),
        ("/tollgate.v1.Admin/Unfreeze", freeze.encode_to_vec()),
        (
            "/tollgate.v1.Admin/ResetTrip",
            pb::ResetTripRequest {
                request_id: "s-1".into(),
                tenant: "acme".into(),
                agent: "agent".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Admin/PutPrice",
            pb::PutPriceRequest {
                request_id: "pp-1".into(),
                tenant: "acme".into(),
                price: Some(pb::Price {
                    model: "gpt-4o".into(),
                    input_micros: 2_500_000,
                    output_micros: 10_000_000,
                    cached_input_micros: Some(1_250_000),
                    per_tokens: 1_000_000,
                    version: 0,
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/tollgate.v1.Admin/ListPrices",
            pb::ListPricesRequest {
                tenant: "acme".into(),
            }
            .encode_to_vec(),
        ),
        ("/tollgate.v1.Admin/QueryAudit", audit.encode_to_vec()),
        ("/tollgate.v1.Admin/VerifyAudit", Vec::new()),
        ("/tollgate.v1.Cluster/Status", Vec::new()),
    ]
}

/// Every client request, damaged, sent to a real node: answered with a status a client can
/// act on, never a panic, and the node serves on. Membership changes are left out: a
/// damaged but valid one would really change the cluster under the fuzzer.
#[test]
fn client_requests_never_panic_a_node() {
    count_panics();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let test = runtime.block_on(TestCluster::start(1));
    let addr = test.cluster.endpoints()[0].clone();
    let channel = runtime.block_on(async {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connects")
    });
    let requests = client_requests();
    let paths: Vec<&str> = requests.iter().map(|(path, _)| *path).collect();
    let seeds: Vec<Vec<u8>> = requests.into_iter().map(|(_, body)| body).collect();
    fuzz(cases(), &damage(), |damage| {
        let path = *damage.seed.get(&paths);
        let bytes = damage.apply(&seeds);
        let answer = runtime.block_on(call_on(channel.clone(), path, bytes));
        if let Err(status) = &answer {
            let code = status.code();
            prop_assert!(
                !matches!(code, tonic::Code::Internal | tonic::Code::Unknown),
                "{path}: {status:?}"
            );
        }
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "{} panicked", path);
        Ok(())
    });
    let status = runtime.block_on(test.client.status(&addr));
    assert!(status.is_ok(), "the node no longer answers: {status:?}");
}

// ---- Raft messages and answers, decoded and checked as the Raft service does ----

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encodes")
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn raft_requests() -> Vec<Vec<u8>> {
    let entry = |index, payload| Entry::<TypeConfig> {
        log_id: log_id(3, index),
        payload,
    };
    let batch = Batch {
        at_ms: 1_000,
        commands: vec![],
    };
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(2, 4)),
        entries: vec![
            entry(5, EntryPayload::Blank),
            entry(6, EntryPayload::Normal(batch)),
        ],
        leader_commit: Some(log_id(2, 4)),
    };
    let vote = VoteRequest::<NodeId>::new(Vote::new(4, 2), Some(log_id(3, 6)));
    vec![encode(&append), encode(&vote), snapshot_request()]
}

fn snapshot_request() -> Vec<u8> {
    let nodes: BTreeSet<NodeId> = [1, 2, 3].into();
    let request = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        meta: openraft::SnapshotMeta {
            last_log_id: Some(log_id(3, 6)),
            last_membership: openraft::StoredMembership::new(
                Some(log_id(1, 0)),
                openraft::Membership::new(vec![nodes], None),
            ),
            snapshot_id: "3-1-6".into(),
        },
        offset: 0,
        data: vec![1, 2, 3],
        done: true,
    };
    encode(&request)
}

/// Decodes as `T` and, where that works, runs `check`: neither may panic. Says whether the
/// bytes decoded.
fn decoded<T: DeserializeOwned>(bytes: &[u8], check: impl FnOnce(&T)) -> bool {
    let message = postcard::from_bytes::<T>(bytes);
    if let Ok(message) = &message {
        check(message);
    }
    message.is_ok()
}

#[test]
fn raft_messages_decode_and_are_checked_without_panic() {
    let locals = [
        Local {
            term: 3,
            members: Some([1, 2, 3].into()),
        },
        Local {
            term: 0,
            members: None,
        },
    ];
    let checked = std::cell::Cell::new(0);
    run(&raft_requests(), |bytes| {
        for local in &locals {
            if decoded(&bytes, |m: &AppendEntriesRequest<TypeConfig>| {
                let _ = guard::check_append(m, local, Some(1));
            }) {
                checked.set(checked.get() + 1);
            }
            decoded(&bytes, |m: &VoteRequest<NodeId>| {
                let _ = guard::check_vote(m, local, None);
            });
            decoded(&bytes, |m: &InstallSnapshotRequest<TypeConfig>| {
                let _ = guard::check_snapshot(m, local, Some(2));
            });
        }
        Ok(())
    });
    assert!(
        checked.get() > 0,
        "no damaged append decoded: the target tests nothing"
    );
}

#[test]
fn raft_answers_decode_and_are_checked_without_panic() {
    type Answer<T, E = openraft::error::Infallible> = Result<T, RaftError<NodeId, E>>;
    let seeds = vec![
        encode(&Answer::<AppendEntriesResponse<NodeId>>::Ok(
            AppendEntriesResponse::HigherVote(Vote::new(9, 2)),
        )),
        encode(&Answer::<VoteResponse<NodeId>>::Ok(VoteResponse::new(
            Vote::new(4, 2),
            Some(log_id(3, 6)),
            true,
        ))),
        encode(&Answer::<_, InstallSnapshotError>::Ok(
            InstallSnapshotResponse::<NodeId> {
                vote: Vote::new_committed(3, 1),
            },
        )),
    ];
    run(&seeds, |bytes| {
        decoded(&bytes, |a: &Answer<AppendEntriesResponse<NodeId>>| {
            if let Ok(AppendEntriesResponse::HigherVote(vote)) = a {
                let _ = guard::check_answer(vote, None);
            }
        });
        decoded(&bytes, |a: &Answer<VoteResponse<NodeId>>| {
            if let Ok(answer) = a {
                let _ = guard::check_answer(&answer.vote, answer.last_log_id.as_ref());
            }
        });
        decoded(
            &bytes,
            |_: &Answer<InstallSnapshotResponse<NodeId>, InstallSnapshotError>| {},
        );
        Ok(())
    });
}

// ---- The ledger: snapshots and commands as the log and snapshot files carry them ----

fn limit(id: &str, scope: Scope, dimension: Dimension, kind: LimitKind) -> LimitSpec {
    LimitSpec {
        id: LimitId::new(id).unwrap(),
        scope,
        dimension,
        kind,
        thresholds: Default::default(),
    }
}

/// One of each kind of command, on one tenant: limits of each kind, reservations committed,
/// released and left to expire, spend recorded, an agent frozen and tripped.
fn seed_commands() -> Vec<Command> {
    let id = |n: &str| RequestId::new(n).unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let agent = AgentId::new("agent").unwrap();
    let tool = ToolId::new("llm").unwrap();
    let spend = Amounts {
        tokens: 10,
        cost_micros: 100,
        calls: 1,
    };
    let policy = TenantPolicy {
        repeat_max: 3,
        repeat_window_ms: 60_000,
        ..TenantPolicy::default()
    };
    let limits = [
        limit(
            "budget",
            Scope::Tenant,
            Dimension::Tokens,
            LimitKind::Budget {
                window: Window::Day,
                amount: 1_000_000,
            },
        ),
        limit(
            "rate",
            Scope::EachAgent,
            Dimension::Calls,
            LimitKind::Rate {
                amount: 100,
                period_ms: 1_000,
                burst: 50,
            },
        ),
        limit(
            "flight",
            Scope::Agent(agent.clone()),
            Dimension::Calls,
            LimitKind::Concurrency { max: 8 },
        ),
    ];
    let mut commands = vec![Command::PutTenant {
        request_id: id("t"),
        tenant: tenant.clone(),
        policy,
    }];
    for (n, limit) in limits.into_iter().enumerate() {
        commands.push(Command::PutLimit {
            request_id: id(&format!("l{n}")),
            tenant: tenant.clone(),
            limit,
        });
    }
    for n in 0..4 {
        commands.push(Command::Reserve {
            request_id: id(&format!("r{n}")),
            tenant: tenant.clone(),
            agent: agent.clone(),
            tool: tool.clone(),
            estimate: spend,
            ttl_ms: 1_000,
            fingerprint: Some("same".into()),
            shape: None,
            usage: None,
            session: None,
        });
    }
    commands.extend([
        Command::Commit {
            request_id: id("c"),
            tenant: tenant.clone(),
            reservation_id: ReservationId(1),
            actual: spend,
            abandoned: false,
            usage: None,
        },
        Command::Release {
            request_id: id("x"),
            tenant: tenant.clone(),
            reservation_id: ReservationId(2),
        },
        Command::Record {
            request_id: id("d"),
            tenant: tenant.clone(),
            agent: agent.clone(),
            tool,
            actual: spend,
            usage: None,
            offline: false,
            session: None,
        },
        Command::Freeze {
            request_id: id("f"),
            tenant: tenant.clone(),
            agent: Some(agent.clone()),
        },
        Command::Unfreeze {
            request_id: id("u"),
            tenant: tenant.clone(),
            agent: Some(agent.clone()),
        },
        Command::ResetTrip {
            request_id: id("s"),
            tenant: tenant.clone(),
            agent,
        },
        Command::DeleteLimit {
            request_id: id("e"),
            tenant,
            limit_id: LimitId::new("rate").unwrap(),
        },
        Command::Tick,
    ]);
    commands
}

/// A ledger with something of everything a snapshot holds.
fn busy_ledger() -> Ledger {
    let mut ledger = Ledger::new();
    let commands = seed_commands();
    for (at, command) in commands.iter().enumerate() {
        ledger.apply(1_000 + at as u64, command);
    }
    ledger
}

/// Byte layout of a ledger snapshot's header (ledger/src/snapshot.rs): magic, version, the
/// body's length, its xxh3 checksum.
const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 8 + 8;

/// Makes a damaged body pass the length and checksum checks again.
fn reseal(snapshot: &mut [u8]) {
    if snapshot.len() < SNAPSHOT_HEADER_BYTES || snapshot[..8] != SNAPSHOT_MAGIC {
        return;
    }
    let body_len = (snapshot.len() - SNAPSHOT_HEADER_BYTES) as u64;
    let checksum = xxhash_rust::xxh3::xxh3_64(&snapshot[SNAPSHOT_HEADER_BYTES..]);
    snapshot[12..20].copy_from_slice(&body_len.to_le_bytes());
    snapshot[20..28].copy_from_slice(&checksum.to_le_bytes());
}

#[test]
fn ledger_snapshots_restore_or_are_refused_never_panic() {
    let snapshot = busy_ledger().snapshot_into(Vec::new());
    assert!(Ledger::restore(&snapshot).is_ok(), "the seed restores");
    fuzz(cases(), &(damage(), any::<bool>()), |(damage, seal)| {
        let mut bytes = snapshot.clone();
        damage.damage(&mut bytes, if seal { SNAPSHOT_HEADER_BYTES } else { 0 });
        if seal {
            reseal(&mut bytes);
        }
        if let Ok(mut ledger) = Ledger::restore(&bytes) {
            // A snapshot that passed every check is one the ledger can go on from.
            for (at, command) in seed_commands().iter().enumerate() {
                ledger.apply(u64::MAX / 2 + at as u64, command);
            }
        }
        Ok(())
    });
}

#[test]
fn commands_from_the_log_apply_or_are_refused_never_panic() {
    let seeds: Vec<Vec<u8>> = seed_commands().iter().map(encode).collect();
    let ledger = std::cell::RefCell::new(busy_ledger());
    let at = std::cell::Cell::new(1_000_000);
    run(&seeds, |bytes| {
        if let Ok(command) = postcard::from_bytes::<Command>(&bytes) {
            at.set(at.get() + 1);
            ledger.borrow_mut().apply(at.get(), &command);
        }
        Ok(())
    });
    assert!(
        at.get() > 1_000_000,
        "no damaged command decoded: the target tests nothing"
    );
}

// ---- A node's files, read back at start ----

/// A node's data directory after real traffic: a snapshot and a log behind it.
fn node_files() -> (tempfile::TempDir, std::path::PathBuf) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let holder = tempfile::tempdir().expect("temp dir");
    let data = runtime.block_on(async {
        let test = TestCluster::start_with(1, |options| {
            options.snapshot_after_entries = 20;
            options.data_dir = holder.path().to_path_buf();
        })
        .await;
        common::tenant_with_budget(&test.client, "acme", 1_000_000).await;
        for n in 0..40 {
            let request = tollgate_client::ReserveRequest::new("acme", format!("agent-{n}"), "llm");
            let reservation = test
                .client
                .reserve(request.tokens(10))
                .await
                .expect("reserve");
            reservation
                .commit(tollgate_client::Amounts::new(7, 0, 1))
                .await
                .expect("commit");
        }
        let data = holder.path().join("node-1");
        let snapshot = data.join("snapshot.bin");
        let deadline = tokio::time::Instant::now() + common::LEADER_WAIT;
        while !snapshot.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no snapshot was written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        test.cluster.shutdown().await;
        data
    });
    (holder, data)
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("readable dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// A damaged snapshot file or log makes the node refuse to start with an error, or start
/// on what it could check; it never panics.
#[test]
fn damaged_snapshot_and_log_files_never_panic_a_starting_node() {
    let (_holder, data) = node_files();
    let snapshot = std::fs::read(data.join("snapshot.bin")).expect("snapshot");
    let log_dir = data.join("raft-log");
    let logs: Vec<(String, Vec<u8>)> = files_under(&log_dir)
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("log file"))
        })
        .collect();
    assert!(!logs.is_empty(), "the log has files");
    let strategy = (damage(), any::<Index>(), any::<bool>());
    fuzz(cases() / 4, &strategy, |(damage, file, seal)| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = snapshot.clone();
        damage.damage(&mut bytes, 0);
        if seal {
            reseal(&mut bytes);
        }
        std::fs::write(dir.path().join("snapshot.bin"), &bytes).expect("write");
        let trail = tollgate_server::trail::Trail::open(tollgate_store::StoreConfig {
            dir: dir.path().join("trail"),
            ..Default::default()
        })
        .expect("an empty trail opens");
        let _ = tollgate_server::raft::state_machine::StateMachine::open(dir.path(), trail);
        let copy = dir.path().join("raft-log");
        std::fs::create_dir(&copy).expect("dir");
        let damaged = file.index(logs.len());
        for (n, (name, bytes)) in logs.iter().enumerate() {
            let mut bytes = bytes.clone();
            if n == damaged {
                damage.damage(&mut bytes, 0);
            }
            std::fs::write(copy.join(name), &bytes).expect("write");
        }
        let _ = tollgate_server::raft::log_store::LogStore::open(&copy);
        Ok(())
    });
}
