//! More than three million decisions through a real three-node cluster, and what a user
//! relies on afterwards: the whole audit trail exports without a gap and verifies from
//! genesis, the very first request's retry still gets its first answer once the ledger's
//! 10-minute memory has forgotten it, both survive a full restart, and a node that joins by
//! snapshot ends up holding the whole trail too.
//!
//! The clock is shifted and moved forward as the decisions go, so answers age out of the
//! ledger's memory as they would over an hour of traffic. Each phase prints its elapsed time
//! (what this test costs CI). Checks accumulate: one run reports every broken promise.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{tenant_with_budget, used_tokens, LEADER_WAIT};
use tollgate_client::{v1, Amounts, Applied, Client, ClientConfig};
use tollgate_ledger::{verify_chain, AuditRecord, DEDUP_WINDOW_MS};
use tollgate_proto::BATCH_OPS_MAX;
use tollgate_server::clock::Clock;
use tollgate_server::local_cluster::{LocalCluster, LocalClusterOptions};

/// Decisions the drive makes at least (the first record and the probes come on top).
const DECISIONS_MIN: u64 = 3_000_001;
/// Concurrent drivers, each with its own tenant (so no tenant's quota of queued proposals
/// or remembered answers is what limits the run) and one full `Batch` in flight.
const DRIVERS: u64 = 4;
/// Agents each driver spreads its records over: the ledger stops checking every invariant
/// after each command (O(state), debug builds) beyond 512 agents, which a real cluster of
/// this size has too.
const AGENTS_PER_DRIVER: u64 = 1_024;
/// Ledger time each decision moves the shifted clock: 3,000,000 decisions span 50 minutes,
/// so at most 600,000 answers are ever inside the ledger's 10-minute memory (below its
/// bound of 2,000,000, and each driver's 150,000 below the default tenant quota of 200,000).
const LEDGER_MS_PER_DECISION: u64 = 1;
/// Low enough that the drive takes snapshots and purges the log behind them (and before the
/// fourth node joins, the leader is made to take one and purge up to it, so it can only
/// join by snapshot). The log kept behind one is long enough that a follower a few seconds
/// behind on a loaded machine catches up from the log, not by reinstalling a snapshot.
const SNAPSHOT_AFTER_ENTRIES: u64 = 1_000;
const LOG_ENTRIES_KEPT_AFTER_SNAPSHOT: u64 = 1_000;
/// Longest any convergence may take (a learner copying millions of records included).
const CATCH_UP_WAIT: Duration = Duration::from_secs(180);

/// A tenant of its own, so that its usage moves only with the first record and its retries.
const FIRST_TENANT: &str = "first";
const FIRST_ID: &str = "first-record";
const FIRST_SPEND: Amounts = Amounts::new(7, 0, 1);
const TOOL: &str = "llm:gpt-x";
/// What each driven record spends. No cost: the default runaway detection watches cost
/// velocity, and a flood of records is what it is there to stop.
const DRIVE_SPEND: Amounts = Amounts::new(1, 0, 1);

/// What went wrong so far; the test fails at the end if anything did.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("FAILED: {what}");
            self.0.push(what);
        }
    }
}

/// The first record's answer and the usage it left, to compare retries against.
struct First {
    applied: Applied,
    used: (u64, u64),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 17 minutes on two cores; run it with: \
            cargo test -p tollgate-tests --test trail_3m -- --ignored --nocapture"]
async fn three_million_decisions_keep_their_trail_and_first_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut findings = Findings::default();
    let mut phase = Instant::now();
    let mut cluster = start(dir.path()).await;
    let client = client_for(&cluster);
    let first = first_record(&client).await;
    drive(&cluster).await;
    let drive_s = phase.elapsed().as_secs_f64();
    let head = leader_status(&cluster, &client).await;
    eprintln!(
        "phase drive: {drive_s:.1} s, chain head {}, {:.0} decisions/s",
        head.chain_head_seq,
        head.chain_head_seq as f64 / drive_s
    );
    assert!(head.chain_head_seq >= DECISIONS_MIN, "the drive fell short");

    phase = Instant::now();
    export_verifies(&cluster, &client, &mut findings, true).await;
    eprintln!(
        "phase (a) export and verify: {:.1} s",
        phase.elapsed().as_secs_f64()
    );

    phase = Instant::now();
    forget_in_memory(&cluster, &client).await;
    retry_gets_first_answer(&client, &first, "(b) past the memory", &mut findings).await;
    eprintln!(
        "phase (b) retry past memory: {:.1} s",
        phase.elapsed().as_secs_f64()
    );

    phase = Instant::now();
    restart_all(&mut cluster).await;
    eprintln!("phase (c) restart: {:.1} s", phase.elapsed().as_secs_f64());
    phase = Instant::now();
    retry_gets_first_answer(&client, &first, "(c) after restart", &mut findings).await;
    export_verifies(&cluster, &client, &mut findings, false).await;
    eprintln!("phase (c) checks: {:.1} s", phase.elapsed().as_secs_f64());

    phase = Instant::now();
    join_by_snapshot(&mut cluster, &client, &first, &mut findings).await;
    eprintln!("phase (d) learner: {:.1} s", phase.elapsed().as_secs_f64());

    cluster.shutdown().await;
    assert!(findings.0.is_empty(), "broken: {:#?}", findings.0);
}

async fn start(dir: &Path) -> LocalCluster {
    let mut options = LocalClusterOptions::new(3, dir.to_path_buf());
    options.clock = Clock::shifted();
    options.snapshot_after_entries = SNAPSHOT_AFTER_ENTRIES;
    options.log_entries_kept_after_snapshot = LOG_ENTRIES_KEPT_AFTER_SNAPSHOT;
    // Default elections: a debug build under full load must not mistake a slow heartbeat
    // for a dead leader.
    let cluster = LocalCluster::start(options).await.expect("cluster starts");
    cluster.leader(LEADER_WAIT).await.expect("a leader");
    cluster
}

fn client_for(cluster: &LocalCluster) -> Client {
    let mut config = ClientConfig::new(cluster.endpoints());
    // A full batch on a loaded debug cluster, and elections after a full restart.
    config.deadline = Duration::from_secs(120);
    // Longer than a full proposal queue takes to drain there: an attempt cut short is
    // sent again while the first still waits, and the queue only grows.
    config.attempt_timeout = Duration::from_secs(60);
    Client::new(config).expect("client")
}

async fn first_record(client: &Client) -> First {
    for driver in 0..DRIVERS {
        tenant_with_budget(client, &format!("t{driver}"), tollgate_ledger::AMOUNT_MAX).await;
    }
    tenant_with_budget(client, FIRST_TENANT, tollgate_ledger::AMOUNT_MAX).await;
    let applied = client
        .record_with_id(FIRST_ID.into(), FIRST_TENANT, "a0", TOOL, FIRST_SPEND)
        .await
        .expect("the first record");
    let used = used_tokens(client, FIRST_TENANT).await;
    First { applied, used }
}

/// `DRIVERS` tasks send full `Batch` calls of records until the cluster has applied
/// `DECISIONS_MIN` of them, moving the shifted clock `LEDGER_MS_PER_DECISION` per record.
async fn drive(cluster: &LocalCluster) {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for driver in 0..DRIVERS {
        // A client each: retries go through a client's coalescer, whose queue is bounded.
        let (client, clock, done) = (client_for(cluster), cluster.clock().clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            drive_one(driver, &client, &clock, &done).await
        }));
    }
    let progress = tokio::spawn(report_progress(done.clone()));
    for task in tasks {
        task.await.expect("a driver panicked");
    }
    progress.abort();
}

/// Decisions applied so far, every `PROGRESS_EVERY`: what the drive costs, as it goes.
async fn report_progress(done: Arc<AtomicU64>) {
    const PROGRESS_EVERY: Duration = Duration::from_secs(15);
    let start = Instant::now();
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let done = done.load(Ordering::Relaxed);
        let elapsed_s = start.elapsed().as_secs_f64();
        eprintln!(
            "drive: {done} decisions in {elapsed_s:.0} s ({:.0}/s)",
            done as f64 / elapsed_s
        );
    }
}

/// One driver: full batches of its tenant's records until the cluster has applied enough.
async fn drive_one(driver: u64, client: &Client, clock: &Clock, done: &AtomicU64) {
    let tenant = format!("t{driver}");
    let mut leader = client.config().endpoints[0].clone();
    let mut sent = 0u64;
    while done.load(Ordering::Relaxed) < DECISIONS_MIN {
        let ns: Vec<u64> = (sent..sent + BATCH_OPS_MAX as u64).collect();
        sent += BATCH_OPS_MAX as u64;
        clock.advance_ms(BATCH_OPS_MAX as u64 * LEDGER_MS_PER_DECISION);
        sent_until_applied(client, &mut leader, &tenant, ns).await;
        done.fetch_add(BATCH_OPS_MAX as u64, Ordering::Relaxed);
    }
}

/// Longest the cluster may apply none of one batch's records before the test calls it
/// stuck (an election or a drained proposal queue on a loaded debug build take seconds).
const BATCH_STALL_MAX: Duration = Duration::from_secs(600);

/// Sends the records numbered `ns` in one `Batch` to `leader`, then those that failed again
/// (same ids and payloads: exactly once), with backoff, finding the leader anew after
/// UNAVAILABLE: a `Batch` answered with per-operation errors does not move the client's
/// own leader, so the driver follows the leader itself.
async fn sent_until_applied(client: &Client, leader: &mut String, tenant: &str, mut ns: Vec<u64>) {
    let mut deadline = tokio::time::Instant::now() + BATCH_STALL_MAX;
    let mut backoff = Duration::from_millis(50);
    loop {
        let request = v1::BatchRequest {
            ops: ns.iter().map(|&n| record_op(tenant, n)).collect(),
        };
        let answer = client
            .call_node(leader, |rpc| {
                let request = request.clone();
                async move { rpc.tollgate().batch(request).await }
            })
            .await;
        let (failed, error) = match answer {
            Ok(response) => failed_of(&ns, &response.results),
            Err(error) => (ns.clone(), Some(format!("{error}"))),
        };
        if failed.is_empty() {
            return;
        }
        if failed.len() < ns.len() {
            deadline = tokio::time::Instant::now() + BATCH_STALL_MAX;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster applied none of {} records of {tenant} in {BATCH_STALL_MAX:?}: {error:?}",
            failed.len()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if let Some(found) = find_leader(client).await {
            *leader = found;
        }
        ns = failed;
    }
}

/// The records that were not applied, and the first error.
fn failed_of(ns: &[u64], results: &[v1::BatchResult]) -> (Vec<u64>, Option<String>) {
    let failed = ns
        .iter()
        .zip(results)
        .filter(|(_, r)| !matches!(r.result, Some(v1::batch_result::Result::Record(_))))
        .map(|(n, _)| *n)
        .collect();
    let error = results.iter().find_map(|r| match &r.result {
        Some(v1::batch_result::Result::Error(e)) => Some(format!("{} {}", e.code, e.message)),
        _ => None,
    });
    (failed, error)
}

/// The address of the node that says it leads, if one does now.
async fn find_leader(client: &Client) -> Option<String> {
    for addr in &client.config().endpoints {
        if let Ok(status) = client.status(addr).await {
            if status.role == "leader" {
                return Some(addr.clone());
            }
            if !status.leader_addr.is_empty() {
                return Some(status.leader_addr);
            }
        }
    }
    None
}

fn record_op(tenant: &str, n: u64) -> v1::BatchOp {
    v1::BatchOp {
        op: Some(v1::batch_op::Op::Record(v1::RecordRequest {
            request_id: format!("{tenant}-{n}"),
            tenant: tenant.to_owned(),
            agent: format!("a{}", n % AGENTS_PER_DRIVER),
            tool: TOOL.to_owned(),
            actual: Some(v1::Amounts {
                tokens: DRIVE_SPEND.tokens,
                cost_micros: DRIVE_SPEND.cost_micros,
                calls: Some(DRIVE_SPEND.calls),
            }),
            ..Default::default()
        })),
    }
}

/// The leader's status, once every node has applied the same index.
async fn leader_status(cluster: &LocalCluster, client: &Client) -> v1::StatusResponse {
    let leader = cluster.leader(LEADER_WAIT).await.expect("a leader");
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        let status = client
            .status(&cluster.addr(leader).expect("address"))
            .await
            .expect("leader status");
        let mut applied = Vec::new();
        for id in cluster.running_ids() {
            let addr = cluster.addr(id).expect("address");
            applied.push(client.status(&addr).await.map_or(0, |s| s.applied_index));
        }
        if applied.iter().all(|a| *a >= status.applied_index) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes did not converge: {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The whole trail, streamed by the admin: seq 1 to the status's head without a gap, and
/// (with `verify`) the chain recomputed from genesis to that head.
async fn export_verifies(
    cluster: &LocalCluster,
    client: &Client,
    findings: &mut Findings,
    verify: bool,
) {
    let trail = exported(client, verify).await;
    let status = leader_status(cluster, client).await;
    findings.check(trail.first_seq == 1, || {
        format!(
            "the export starts at seq {} (the whole trail starts at 1)",
            trail.first_seq
        )
    });
    findings.check(trail.gaps == 0, || {
        format!("the export skips seqs {} times", trail.gaps)
    });
    findings.check(
        (trail.last_seq, trail.last_hash.as_slice())
            == (status.chain_head_seq, status.chain_head_hash.as_slice()),
        || {
            format!(
                "the export ends at seq {}, the chain head is {}",
                trail.last_seq, status.chain_head_seq
            )
        },
    );
    findings.check(trail.records == status.chain_head_seq, || {
        format!(
            "the export holds {} records of {}",
            trail.records, status.chain_head_seq
        )
    });
    if let Some(error) = trail.chain_error {
        findings.check(false, || {
            format!("the exported chain does not verify: {error}")
        });
    }
}

/// What an export held.
#[derive(Default)]
struct Exported {
    records: u64,
    first_seq: u64,
    last_seq: u64,
    last_hash: Vec<u8>,
    gaps: u64,
    chain_error: Option<String>,
}

/// Records verified together; the last of each chunk starts the next, so links between
/// chunks are checked too (as `tollgate audit verify` does).
const VERIFY_CHUNK_RECORDS: usize = 65_536;

async fn exported(client: &Client, verify: bool) -> Exported {
    let mut stream = client
        .export_audit(v1::AuditQueryRequest::default())
        .await
        .expect("the export opens");
    let mut trail = Exported::default();
    let mut chunk: Vec<AuditRecord> = Vec::with_capacity(VERIFY_CHUNK_RECORDS);
    while let Some(record) = stream.next().await.expect("the export streams") {
        if trail.records == 0 {
            trail.first_seq = record.seq;
        } else if record.seq != trail.last_seq + 1 {
            trail.gaps += 1;
        }
        trail.records += 1;
        trail.last_seq = record.seq;
        if verify && trail.chain_error.is_none() {
            chunk.push(serde_json::from_str(&record.json).expect("an exported record parses"));
            if chunk.len() == VERIFY_CHUNK_RECORDS {
                trail.chain_error = verify_chain(&chunk).err().map(|e| e.to_string());
                chunk.drain(..chunk.len() - 1);
            }
        }
        trail.last_hash = record.hash;
    }
    if verify && trail.chain_error.is_none() && !chunk.is_empty() {
        trail.chain_error = verify_chain(&chunk).err().map(|e| e.to_string());
    }
    trail
}

/// Moves the clock past the ledger's memory and applies an entry at that time, so the
/// first record's answer is no longer in memory on any node.
async fn forget_in_memory(cluster: &LocalCluster, client: &Client) {
    let before = leader_status(cluster, client).await.applied_index;
    cluster.clock().advance_ms(DEDUP_WINDOW_MS + 60_000);
    let probe = client
        .record("t1", "probe", TOOL, Amounts::new(0, 0, 1))
        .await
        .expect("a probe record");
    assert!(probe.log_index > before);
}

/// The first record again, same id and payload: its first answer and no charge.
async fn retry_gets_first_answer(
    client: &Client,
    first: &First,
    when: &str,
    findings: &mut Findings,
) {
    let retry = client
        .record_with_id(FIRST_ID.into(), FIRST_TENANT, "a0", TOOL, FIRST_SPEND)
        .await;
    match retry {
        Ok(retry) => findings.check(retry.log_index == first.applied.log_index, || {
            format!(
                "{when}: the retry of the first record answered at position {}, first at {}",
                retry.log_index, first.applied.log_index
            )
        }),
        Err(error) => findings.check(false, || format!("{when}: the retry failed: {error}")),
    }
    let used = used_tokens(client, FIRST_TENANT).await;
    findings.check(used == first.used, || {
        format!(
            "{when}: usage {used:?} after the retry, {:?} before",
            first.used
        )
    });
}

/// Stops every node, then starts every node again on its data.
async fn restart_all(cluster: &mut LocalCluster) {
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
    for id in cluster.ids() {
        cluster.restart(id).await.expect("a node restarts");
    }
    cluster
        .leader(CATCH_UP_WAIT)
        .await
        .expect("a leader after restart");
}

/// A fourth node joins as a learner; the leader's log was purged behind its snapshots, so
/// it can only catch up by installing one. Once it has, its own trail holds every record.
async fn join_by_snapshot(
    cluster: &mut LocalCluster,
    client: &Client,
    first: &First,
    findings: &mut Findings,
) {
    snapshot_and_purge(cluster).await;
    let leader = leader_status(cluster, client).await;
    let member = cluster.add_node(4).await.expect("node 4 starts");
    client
        .add_learner(4, &member.addr, &member.peer_addr)
        .await
        .expect("node 4 joins as a learner");
    let status = learner_caught_up(client, &member.addr, leader.applied_index).await;
    findings.check(status.snapshot_index > 0, || {
        "the learner caught up without installing a snapshot".into()
    });
    findings.check(status.chain_head_seq == leader.chain_head_seq, || {
        format!(
            "the learner's chain head is {}, the leader's {}",
            status.chain_head_seq, leader.chain_head_seq
        )
    });
    learner_trail_is_whole(client, &member.addr, &leader, findings).await;
    learner_remembers_the_first_answer(cluster, first, &leader, findings).await;
}

/// In the learner's own store: once it has copied the answers from a peer, the first
/// record's answer is there, at its first position, and the trail verifies to the head.
async fn learner_remembers_the_first_answer(
    cluster: &LocalCluster,
    first: &First,
    leader: &v1::StatusResponse,
    findings: &mut Findings,
) {
    let learner = cluster.node(4).expect("node 4 runs").clone();
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    while learner.trail.answers_copying() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    findings.check(!learner.trail.answers_copying(), || {
        "the learner is still copying answers".into()
    });
    let tenant = tollgate_ledger::TenantId::new(FIRST_TENANT).expect("tenant id");
    let request = tollgate_ledger::RequestId::new(FIRST_ID).expect("request id");
    let store = learner.trail.store().clone();
    let now_ms = cluster.clock().now_ms();
    let answer = store.answer(&tenant, &request, now_ms);
    findings.check(
        matches!(&answer, Ok(Some(a)) if a.position == first.applied.log_index),
        || format!("the learner's answer to the first record: {answer:?}"),
    );
    let verified = tokio::task::spawn_blocking(move || store.verify())
        .await
        .expect("verify runs");
    findings.check(
        verified
            .as_ref()
            .is_ok_and(|head| head.seq == leader.chain_head_seq),
        || {
            format!(
                "the learner's trail verifies to {verified:?}, the head is {}",
                leader.chain_head_seq
            )
        },
    );
}

/// The leader takes a snapshot of all it applied and purges its log up to it.
async fn snapshot_and_purge(cluster: &LocalCluster) {
    let leader = cluster.leader(LEADER_WAIT).await.expect("a leader");
    let raft = &cluster.node(leader).expect("the leader runs").raft;
    let applied = raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |id| id.index);
    raft.trigger()
        .snapshot()
        .await
        .expect("a snapshot is triggered");
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    let snapshot = loop {
        let snapshot = raft.metrics().borrow().snapshot.map_or(0, |id| id.index);
        if snapshot >= applied {
            break snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot at {applied}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    raft.trigger()
        .purge_log(snapshot)
        .await
        .expect("the log is purged");
}

async fn learner_caught_up(client: &Client, addr: &str, index: u64) -> v1::StatusResponse {
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        if let Ok(status) = client.status(addr).await {
            if status.applied_index >= index {
                return status;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the learner did not reach index {index}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The learner's own trail on disk holds seq 1 to the head with nothing missing (it copies
/// what the snapshot did not carry from a peer, so this is polled), and its remembered
/// answers on disk are not empty. Read from the node's status: in-process,
/// `Node::trail().state()` and `Node::trail().answer(first tenant, FIRST_ID, now)` would say
/// it directly, the latter that the answer to the first record is exactly the first one.
async fn learner_trail_is_whole(
    client: &Client,
    addr: &str,
    leader: &v1::StatusResponse,
    findings: &mut Findings,
) {
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    let status = loop {
        let status = client.status(addr).await.expect("learner status");
        let whole = status.trail_first_seq == 1
            && status.trail_last_seq >= leader.chain_head_seq
            && status.trail_missing.is_empty();
        if whole || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    findings.check(
        status.trail_first_seq == 1 && status.trail_last_seq >= leader.chain_head_seq,
        || {
            format!(
                "the learner's trail holds seqs {}..={}, the chain head is {}",
                status.trail_first_seq, status.trail_last_seq, leader.chain_head_seq
            )
        },
    );
    findings.check(status.trail_missing.is_empty(), || {
        format!("the learner's trail misses {:?}", status.trail_missing)
    });
    findings.check(status.answers_bytes > 0, || {
        "the learner remembers no answers on disk".into()
    });
}
