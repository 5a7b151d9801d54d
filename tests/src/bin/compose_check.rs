//! Checker of the compose fault test (tests/compose/run.sh).
//!
//! `leader` prints the id of the node that leads now (the fault schedule aims at it).
//! `snapshot` waits until every node holds the same audit chain head with nothing in flight,
//! then appends what the leader reports (usage of every test tenant) and each node's head to
//! a file; run.sh takes one per leader as it moves leadership around, so every node gets to
//! report usage. `check` reads every client's history, the faults, the snapshots and the
//! leader's full audit export, and holds them to the contract's five properties with
//! `tollgate_sim::history::check` (the one checker) plus node agreement. Its last line is
//! `compose faults: <N> violations, <M> ops, max unavailable <S> s`; it exits non-zero on
//! any violation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tollgate_client::{v1, Client, ClientConfig};
use tollgate_ledger::{AuditRecord, GENESIS_PREV_HASH};
use tollgate_sim::history::{self, BudgetSpec, Event, FinalUsage, Op, OpResult};

/// Time one status or usage question to one node may take, retries included: a paused or
/// cut-off node must not stall the poll.
const NODE_QUESTION_DEADLINE: Duration = Duration::from_secs(2);
/// Pause between two polls for a leader or for convergence.
const POLL_PAUSE: Duration = Duration::from_millis(250);
/// Most audit records the export reads: the ledger retains at most a million.
const AUDIT_RECORDS_READ_MAX: usize = 1_000_000;

#[derive(Parser)]
#[command(about = "Checker of the compose fault test")]
struct Cli {
    /// The cluster's published ports, comma separated, node 1 first.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the id of the current leader, waiting up to --wait-s for one.
    Leader {
        #[arg(long, default_value_t = 30)]
        wait_s: u64,
    },
    /// Waits for every node to agree with nothing in flight, then appends a snapshot.
    Snapshot {
        /// The snapshots file (JSON lines).
        #[arg(long)]
        out: PathBuf,
        /// The budgets written by `compose_load setup` (names the tenants).
        #[arg(long)]
        budgets: PathBuf,
        #[arg(long, default_value_t = 120)]
        wait_s: u64,
    },
    /// Checks the run in --dir (history-*.jsonl, faults.jsonl, budgets.json, snapshots.jsonl).
    Check {
        #[arg(long)]
        dir: PathBuf,
        /// Check again a finished run whose cluster is gone: read the audit trail saved in
        /// --dir/audit.jsonl instead of exporting it from the leader.
        #[arg(long)]
        offline: bool,
    },
}

/// One fault of the schedule, as run.sh logs it.
#[derive(Clone, Debug, Deserialize)]
struct Fault {
    fault: String,
    target: String,
    phase: String,
    injected_at_ms: u64,
    healed_at_ms: u64,
    /// `injected`: unavailability counts from the injection (one fault, the cluster should
    /// ride through it); `healed`: from the heal (a majority was lost on purpose, so the
    /// cluster must be unavailable until then, and recover quickly after).
    measure: String,
}

/// One node's view in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NodeHead {
    node: u64,
    applied_index: u64,
    chain_head_seq: u64,
    chain_head_hash: String,
    reservations_in_flight: u64,
}

/// One limit's usage as a leader reported it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct UsageRow {
    tenant: String,
    limit_id: String,
    agent: String,
    used: u64,
    held: u64,
    remaining: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Snapshot {
    taken_at_ms: u64,
    leader: u64,
    nodes: Vec<NodeHead>,
    usage: Vec<UsageRow>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Leader { wait_s } => leader(&cli, Duration::from_secs(*wait_s)).await,
        Command::Snapshot {
            out,
            budgets,
            wait_s,
        } => snapshot(&cli, out, budgets, Duration::from_secs(*wait_s)).await,
        Command::Check { dir, offline } => check(&cli, dir, *offline).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("compose_check: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn admin_client(cli: &Cli) -> anyhow::Result<Client> {
    let config = ClientConfig {
        // The admin key: TOLLGATE_API_KEY or TOLLGATE_API_KEY_FILE.
        token: Some(
            tollgate_client::api_key_from_env()?
                .context("no admin key: set TOLLGATE_API_KEY or TOLLGATE_API_KEY_FILE")?,
        ),
        tls: tollgate_tests::tls_from_env()?,
        deadline: NODE_QUESTION_DEADLINE,
        ..ClientConfig::new(cli.endpoints.iter().cloned())
    };
    Client::new(config).context("client config")
}

/// The status of every node that answers, by endpoint.
async fn statuses(client: &Client, endpoints: &[String]) -> Vec<Option<v1::StatusResponse>> {
    let mut answers = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        answers.push(client.status(endpoint).await.ok());
    }
    answers
}

/// The leader every answering node agrees on, if a node that says it leads is among them.
fn agreed_leader(answers: &[Option<v1::StatusResponse>]) -> Option<u64> {
    let leader = answers
        .iter()
        .flatten()
        .find(|s| s.role == "leader" && s.leader_id == Some(s.node_id))?
        .node_id;
    answers
        .iter()
        .flatten()
        .all(|s| s.leader_id == Some(leader))
        .then_some(leader)
}

async fn leader(cli: &Cli, wait: Duration) -> anyhow::Result<ExitCode> {
    let client = admin_client(cli)?;
    let started = Instant::now();
    loop {
        let answers = statuses(&client, &cli.endpoints).await;
        if let Some(leader) = agreed_leader(&answers) {
            println!("{leader}");
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() > wait {
            bail!("no leader that every answering node agrees on within {wait:?}");
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

fn heads(answers: &[Option<v1::StatusResponse>]) -> Option<Vec<NodeHead>> {
    answers
        .iter()
        .map(|answer| {
            answer.as_ref().map(|s| NodeHead {
                node: s.node_id,
                applied_index: s.applied_index,
                chain_head_seq: s.chain_head_seq,
                chain_head_hash: hex(&s.chain_head_hash),
                reservations_in_flight: s.reservations_in_flight,
            })
        })
        .collect()
}

/// Every node answered, holds the same chain head, and has nothing in flight (so no expiry
/// can still change usage).
fn converged(heads: &[NodeHead]) -> bool {
    let Some(first) = heads.first() else {
        return false;
    };
    heads.iter().all(|h| {
        h.chain_head_seq == first.chain_head_seq
            && h.chain_head_hash == first.chain_head_hash
            && h.reservations_in_flight == 0
    })
}

fn read_budgets(path: &Path) -> anyhow::Result<Vec<BudgetSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

async fn usage_rows(client: &Client, tenants: &BTreeSet<String>) -> anyhow::Result<Vec<UsageRow>> {
    let mut rows = Vec::new();
    for tenant in tenants {
        let usage = client
            .usage(tenant, None, None)
            .await
            .with_context(|| format!("usage of tenant {tenant}"))?;
        for limit in usage.usage {
            rows.push(UsageRow {
                tenant: tenant.clone(),
                limit_id: limit.limit.map(|l| l.id).unwrap_or_default(),
                agent: limit.agent,
                used: limit.used,
                held: limit.held,
                remaining: limit.remaining,
            });
        }
    }
    rows.sort();
    Ok(rows)
}

async fn snapshot(
    cli: &Cli,
    out: &Path,
    budgets: &Path,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let tenants: BTreeSet<String> = read_budgets(budgets)?
        .into_iter()
        .map(|b| b.tenant)
        .collect();
    let client = admin_client(cli)?;
    let started = Instant::now();
    let mut last_seen = String::from("no node answered yet");
    loop {
        if started.elapsed() > wait {
            bail!("the nodes did not converge within {wait:?}; last seen: {last_seen}");
        }
        let before = statuses(&client, &cli.endpoints).await;
        let leader = agreed_leader(&before);
        let heads_before = heads(&before);
        last_seen = format!("leader {leader:?}, heads {heads_before:?}");
        let (Some(leader), Some(heads_before)) = (leader, heads_before) else {
            tokio::time::sleep(POLL_PAUSE).await;
            continue;
        };
        if !converged(&heads_before) {
            tokio::time::sleep(POLL_PAUSE).await;
            continue;
        }
        let usage = match usage_rows(&client, &tenants).await {
            Ok(usage) => usage,
            Err(error) => {
                last_seen = format!("usage: {error:#}");
                tokio::time::sleep(POLL_PAUSE).await;
                continue;
            }
        };
        // The usage belongs to these heads only if nothing moved while it was read.
        let after = statuses(&client, &cli.endpoints).await;
        let unchanged = agreed_leader(&after) == Some(leader)
            && heads(&after).is_some_and(|h| {
                converged(&h) && h[0].chain_head_hash == heads_before[0].chain_head_hash
            });
        if !unchanged {
            continue;
        }
        let snapshot = Snapshot {
            taken_at_ms: now_ms(),
            leader,
            nodes: heads_before,
            usage,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("opening {}", out.display()))?;
        writeln!(file, "{}", serde_json::to_string(&snapshot)?)?;
        println!(
            "snapshot: leader node {leader}, chain head seq {} on every node, {} usage rows",
            snapshot.nodes[0].chain_head_seq,
            snapshot.usage.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
}

/// Reads JSON lines; a last line cut short by SIGKILL is dropped, any other bad line fails.
fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<(Vec<T>, bool)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    let mut items = Vec::with_capacity(lines.len());
    let mut torn = false;
    for (number, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(item) => items.push(item),
            Err(_) if number + 1 == lines.len() => torn = true,
            Err(error) => bail!("{}:{}: {error}", path.display(), number + 1),
        }
    }
    Ok((items, torn))
}

/// Every record of the leader's audit trail, oldest first.
async fn export_audit(client: &Client) -> anyhow::Result<Vec<AuditRecord>> {
    let mut export = client
        .export_audit(v1::AuditQueryRequest::default())
        .await
        .context("audit export")?;
    let mut records = Vec::new();
    while let Some(record) = export.next().await.context("audit export")? {
        if records.len() >= AUDIT_RECORDS_READ_MAX {
            bail!("the audit export holds more than {AUDIT_RECORDS_READ_MAX} records (AUDIT_RECORDS_READ_MAX)");
        }
        let parsed: AuditRecord = serde_json::from_str(&record.json)
            .with_context(|| format!("audit record seq {} is not a ledger record", record.seq))?;
        records.push(parsed);
    }
    Ok(records)
}

/// Longest time without an acknowledged answer, from `from_ms` to the first answer after it
/// and between answers up to `to_ms`.
fn longest_gap_ms(acks_ms: &[u64], from_ms: u64, to_ms: u64) -> u64 {
    let start = acks_ms.partition_point(|&t| t < from_ms);
    let Some(&first) = acks_ms.get(start) else {
        return to_ms.saturating_sub(from_ms);
    };
    let mut gap_ms = first - from_ms;
    let mut previous = first;
    for &t in &acks_ms[start + 1..] {
        if t > to_ms {
            break;
        }
        gap_ms = gap_ms.max(t - previous);
        previous = t;
    }
    gap_ms
}

/// Which of the contract's properties a violation of `history::check` breaks.
fn property_of(violation: &str) -> usize {
    if violation.contains("OVERSPEND") {
        1
    } else if violation.contains("applied twice") || violation.contains("granted twice") {
        3
    } else if violation.contains("has no audit record")
        || violation.contains("used but its audit trail")
        || violation.contains("held but its audit trail")
    {
        2
    } else {
        5
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Reserve { .. } => "reserve",
        Op::Commit { .. } => "commit",
        Op::Release { .. } => "release",
        Op::Record { .. } => "record",
    }
}

/// Gives every answer the invocation time of its request's first attempt.
///
/// A worker that lost an answer sends the same request id again later; the operation may
/// have taken effect during the first attempt, so as one logical operation it spans from the
/// first invocation to the acknowledgement. `history::check` merges only the attempts that
/// carry a log index, which would date the operation from the retry alone and report a
/// real-time order the cluster never promised.
fn date_from_first_attempt(events: &mut [Event]) {
    let mut first_invoked_ms: HashMap<(String, String, &'static str), u64> = HashMap::new();
    for event in events.iter() {
        let key = (
            event.op.tenant().to_owned(),
            event.request_id.clone(),
            op_kind(&event.op),
        );
        let first = first_invoked_ms.entry(key).or_insert(event.invoked_ms);
        *first = (*first).min(event.invoked_ms);
    }
    for event in events.iter_mut() {
        let key = (
            event.op.tenant().to_owned(),
            event.request_id.clone(),
            op_kind(&event.op),
        );
        if let Some(&first) = first_invoked_ms.get(&key) {
            event.invoked_ms = first;
        }
    }
}

async fn check(cli: &Cli, dir: &Path, offline: bool) -> anyhow::Result<ExitCode> {
    let RunFiles {
        histories,
        mut events,
        torn_lines,
        faults,
        snapshots,
        budgets,
        clients_killed,
    } = read_run(dir)?;
    let Some(first_snapshot) = snapshots.first() else {
        bail!(
            "no snapshot of the cluster's final state in {}",
            dir.display()
        );
    };

    // What the cluster holds: the leader's whole trail, checked against the heads.
    let mut node_violations: Vec<String> = Vec::new();
    let audit = if offline {
        read_jsonl::<AuditRecord>(&dir.join("audit.jsonl"))?.0
    } else {
        export_and_verify_audit(cli, dir, &mut node_violations).await?
    };
    let expected_head = &first_snapshot.nodes[0];
    node_violations.extend(nodes_disagree(&snapshots));
    node_violations.extend(audit_chain_breaks(&audit, expected_head));

    // 1, 2, 3, 5: the history against the trail, the budgets and the final usage.
    let final_usage = final_usage(first_snapshot);
    node_violations.extend(budgets_unreported(&budgets, &final_usage));
    date_from_first_attempt(&mut events);
    let report = history::check(&events, &audit, &budgets, &final_usage);
    let outages = unavailability(&events, faults);

    // The summary.
    println!();
    println!("compose fault test: summary");
    print_outages(&outages);
    let failed = report.rejected + report.ambiguous;
    println!(
        "  load: {} s, {histories} client processes ({clients_killed} killed with SIGKILL mid-run, {torn_lines} torn last lines dropped)",
        seconds(outages.load_end_ms.saturating_sub(outages.load_start_ms)),
    );
    println!(
        "  operations: {} ({} acknowledged, {failed} failed: {} rejected, {} ambiguous)",
        report.ops, report.acknowledged, report.rejected, report.ambiguous
    );
    print_decisions(&events, &audit, expected_head, &snapshots);
    print_properties(&report.violations, &node_violations);
    let violations: Vec<&String> = report.violations.iter().chain(&node_violations).collect();
    for violation in &violations {
        println!("  VIOLATION: {violation}");
    }
    let max_unavailable_ms = outages.gaps_ms.iter().copied().max().unwrap_or(0);
    println!(
        "compose faults: {} violations, {} ops, max unavailable {} s",
        violations.len(),
        report.ops,
        seconds(max_unavailable_ms)
    );
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Everything a run leaves in its directory.
struct RunFiles {
    /// Client history files read.
    histories: usize,
    /// What the clients saw, every history's events in one list.
    events: Vec<Event>,
    /// Last lines cut short by SIGKILL, dropped.
    torn_lines: usize,
    faults: Vec<Fault>,
    snapshots: Vec<Snapshot>,
    budgets: Vec<BudgetSpec>,
    clients_killed: usize,
}

fn read_run(dir: &Path) -> anyhow::Result<RunFiles> {
    let mut histories: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("history-") && n.ends_with(".jsonl"))
        })
        .collect();
    histories.sort();
    if histories.is_empty() {
        bail!("no client history (history-*.jsonl) in {}", dir.display());
    }
    let mut events: Vec<Event> = Vec::new();
    let mut torn_lines = 0;
    for path in &histories {
        let (mut more, torn) = read_jsonl::<Event>(path)?;
        events.append(&mut more);
        torn_lines += usize::from(torn);
    }
    let clients_killed = std::fs::read_to_string(dir.join("clients-killed.txt"))
        .map(|text| text.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);
    Ok(RunFiles {
        histories: histories.len(),
        events,
        torn_lines,
        faults: read_jsonl::<Fault>(&dir.join("faults.jsonl"))?.0,
        snapshots: read_jsonl::<Snapshot>(&dir.join("snapshots.jsonl"))?.0,
        budgets: read_budgets(&dir.join("budgets.json"))?,
        clients_killed,
    })
}

/// The leader's whole audit trail, saved beside the histories for whoever reads a
/// violation (and for `--offline`); a failed verification on the leader is a violation.
async fn export_and_verify_audit(
    cli: &Cli,
    dir: &Path,
    violations: &mut Vec<String>,
) -> anyhow::Result<Vec<AuditRecord>> {
    let client = admin_client(cli)?;
    let audit = export_audit(&client).await?;
    let mut audit_file = std::io::BufWriter::new(
        std::fs::File::create(dir.join("audit.jsonl")).context("creating audit.jsonl")?,
    );
    for record in &audit {
        serde_json::to_writer(&mut audit_file, record)?;
        audit_file.write_all(b"\n")?;
    }
    audit_file.flush().context("writing audit.jsonl")?;
    let verify = client.verify_audit().await.context("audit verify")?;
    if !verify.ok {
        violations.push(format!(
            "audit verify failed on the leader: {}",
            verify.error
        ));
    }
    Ok(audit)
}

/// Property 4, every node: the same chain head (in every snapshot) and the same usage
/// (each snapshot is one leader's report), and every node reported usage once.
fn nodes_disagree(snapshots: &[Snapshot]) -> Vec<String> {
    let mut violations = Vec::new();
    let Some(first_snapshot) = snapshots.first() else {
        return violations;
    };
    let expected_head = &first_snapshot.nodes[0];
    for snapshot in snapshots {
        for head in &snapshot.nodes {
            if (head.chain_head_seq, &head.chain_head_hash)
                != (expected_head.chain_head_seq, &expected_head.chain_head_hash)
            {
                violations.push(format!(
                    "node {} holds audit chain head seq {} {} while node {} held seq {} {}: replicas diverged",
                    head.node,
                    head.chain_head_seq,
                    head.chain_head_hash,
                    expected_head.node,
                    expected_head.chain_head_seq,
                    expected_head.chain_head_hash
                ));
            }
        }
        if snapshot.usage != first_snapshot.usage {
            violations.push(format!(
                "node {} reports usage {:?} but node {} reported {:?}",
                snapshot.leader, snapshot.usage, first_snapshot.leader, first_snapshot.usage
            ));
        }
    }
    let reported = usage_reported_by(snapshots);
    for head in &first_snapshot.nodes {
        if !reported.contains(&head.node) {
            violations.push(format!(
                "node {} never led while snapshots were taken, so its usage was never compared",
                head.node
            ));
        }
    }
    violations
}

/// The nodes whose usage a snapshot holds (each snapshot is its leader's report).
fn usage_reported_by(snapshots: &[Snapshot]) -> BTreeSet<u64> {
    snapshots.iter().map(|s| s.leader).collect()
}

/// The export is the whole, intact trail that ends at the agreed head.
fn audit_chain_breaks(audit: &[AuditRecord], expected_head: &NodeHead) -> Vec<String> {
    let mut violations = Vec::new();
    match audit.last() {
        Some(last)
            if last.seq == expected_head.chain_head_seq
                && hex(&last.hash) == expected_head.chain_head_hash => {}
        last => violations.push(format!(
            "the leader's audit export ends at {:?}, not at the chain head every node agreed on (seq {} {})",
            last.map(|r| (r.seq, hex(&r.hash))),
            expected_head.chain_head_seq,
            expected_head.chain_head_hash
        )),
    }
    if audit
        .first()
        .is_some_and(|r| r.prev_hash != GENESIS_PREV_HASH)
    {
        violations.push("the audit export does not start at the genesis record".into());
    }
    if let Some(pair) = audit.windows(2).find(|p| p[1].prev_hash != p[0].hash) {
        violations.push(format!(
            "audit record seq {} does not chain to seq {}",
            pair[1].seq, pair[0].seq
        ));
    }
    violations
}

/// The usage of every limit that is not per agent, as the first snapshot's leader reported.
fn final_usage(snapshot: &Snapshot) -> Vec<FinalUsage> {
    snapshot
        .usage
        .iter()
        .filter(|row| row.agent.is_empty())
        .map(|row| FinalUsage {
            tenant: row.tenant.clone(),
            limit_id: row.limit_id.clone(),
            used: row.used,
            held: row.held,
        })
        .collect()
}

/// A budget the leader reports no usage for cannot be checked: that is a violation too.
fn budgets_unreported(budgets: &[BudgetSpec], final_usage: &[FinalUsage]) -> Vec<String> {
    budgets
        .iter()
        .filter(|budget| {
            !final_usage
                .iter()
                .any(|u| u.tenant == budget.tenant && u.limit_id == budget.limit_id)
        })
        .map(|budget| {
            format!(
                "the leader reports no usage for budget {}/{}",
                budget.tenant, budget.limit_id
            )
        })
        .collect()
}

/// The faults by injection time, each with the longest time without any acknowledged
/// answer that it caused, and the span of the load.
struct Outages {
    faults: Vec<Fault>,
    /// One per fault, in the same order.
    gaps_ms: Vec<u64>,
    load_start_ms: u64,
    load_end_ms: u64,
}

fn unavailability(events: &[Event], mut faults: Vec<Fault>) -> Outages {
    let mut acks_ms: Vec<u64> = events
        .iter()
        .filter(|e| e.result.is_acknowledged())
        .map(|e| e.completed_ms)
        .collect();
    acks_ms.sort_unstable();
    let load_end_ms = events.iter().map(|e| e.completed_ms).max().unwrap_or(0);
    let load_start_ms = events.iter().map(|e| e.invoked_ms).min().unwrap_or(0);
    faults.sort_by_key(|f| f.injected_at_ms);
    let injections: Vec<u64> = faults.iter().map(|f| f.injected_at_ms).collect();
    let gaps_ms: Vec<u64> = faults
        .iter()
        .map(|fault| {
            let from_ms = if fault.measure == "healed" {
                fault.healed_at_ms
            } else {
                fault.injected_at_ms
            };
            let to_ms = injections
                .iter()
                .copied()
                .find(|&t| t > from_ms)
                .unwrap_or(load_end_ms);
            longest_gap_ms(&acks_ms, from_ms, to_ms)
        })
        .collect();
    Outages {
        faults,
        gaps_ms,
        load_start_ms,
        load_end_ms,
    }
}

/// One line per fault, then the worst unavailability per kind of fault.
fn print_outages(outages: &Outages) {
    println!(
        "  {:>2}  {:<20} {:<11} {:<7} {:>9} {:>9}  {:>16}",
        "#", "fault", "phase", "target", "injected", "healed", "max unavailable"
    );
    let offset = |t: u64| format!("+{} s", seconds(t.saturating_sub(outages.load_start_ms)));
    for (number, (fault, gap_ms)) in outages.faults.iter().zip(&outages.gaps_ms).enumerate() {
        let measured = if fault.measure == "healed" {
            " (after heal)"
        } else {
            ""
        };
        println!(
            "  {:>2}  {:<20} {:<11} {:<7} {:>9} {:>9}  {:>7} s{measured}",
            number + 1,
            fault.fault,
            fault.phase,
            fault.target,
            offset(fault.injected_at_ms),
            offset(fault.healed_at_ms),
            seconds(*gap_ms)
        );
    }
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for (fault, gap_ms) in outages.faults.iter().zip(&outages.gaps_ms) {
        let worst = by_kind.entry(fault.fault.as_str()).or_default();
        *worst = (*worst).max(*gap_ms);
    }
    println!("  max unavailable per kind of fault:");
    for (kind, gap_ms) in &by_kind {
        println!("    {kind:<20} {} s", seconds(*gap_ms));
    }
}

fn print_decisions(
    events: &[Event],
    audit: &[AuditRecord],
    expected_head: &NodeHead,
    snapshots: &[Snapshot],
) {
    let granted = events
        .iter()
        .filter(|e| matches!(e.result, OpResult::Granted { .. }))
        .count();
    let denied = events
        .iter()
        .filter(|e| matches!(e.result, OpResult::Denied { .. }))
        .count();
    println!(
        "  decisions: {granted} granted, {denied} denied; audit trail: {} records, head seq {}; usage read from nodes {:?}",
        audit.len(),
        expected_head.chain_head_seq,
        usage_reported_by(snapshots)
    );
}

/// One verdict line per property of the contract.
fn print_properties(history_violations: &[String], node_violations: &[String]) {
    let mut by_property = [0usize; 6];
    for violation in history_violations {
        by_property[property_of(violation)] += 1;
    }
    by_property[4] += node_violations.len();
    let properties = [
        (1, "no budget exceeded by grants"),
        (2, "every acknowledged commit counted once (exact totals)"),
        (3, "no request id applied twice"),
        (4, "every node: same usage, same audit chain head"),
        (
            5,
            "linearizable against the reference model (log-index order)",
        ),
    ];
    for (number, words) in properties {
        let count = by_property[number];
        let verdict = if count == 0 {
            "ok".to_owned()
        } else {
            format!("{count} VIOLATIONS")
        };
        println!("  {number}. {words:<58} {verdict}");
    }
}

#[cfg(test)]
mod tests {
    use super::longest_gap_ms;

    #[test]
    fn gap_counts_from_the_fault_to_the_first_answer_and_between_answers() {
        let acks = [100, 200, 1_500, 1_600, 5_000];
        assert_eq!(longest_gap_ms(&acks, 150, 4_000), 1_300);
        assert_eq!(longest_gap_ms(&acks, 1_550, 4_000), 50);
        // No answer before the next fault: the whole outage until the first answer.
        assert_eq!(longest_gap_ms(&acks, 1_700, 2_000), 3_300);
        assert_eq!(longest_gap_ms(&acks, 6_000, 9_000), 3_000);
    }
}
