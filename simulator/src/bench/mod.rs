//! `tollgate-sim bench`: reserve-then-commit pairs from C concurrent clients for a fixed
//! time, against Tollgate (an embedded three-node durable cluster, or `--cluster`), etcd or
//! Redis, closed loop or open loop, on a hot or a spread workload; and the snapshot scenario
//! (memory per agent, snapshot build and install, restart with a million agents).
//!
//! With `--processes N` the clients run in N child processes of this binary (`procs.rs`),
//! started together; with `--budget` or `--budget-runs-out` the hot budget is sized to run
//! out mid-run and the run reports what happened at the edge (`budget.rs`): throughput
//! before exhaustion, overspend, false denials.
//!
//! Open loop sends at fixed intended times and measures each reserve from its intended send
//! time, not from when it was actually sent: a stalled system is charged for the requests
//! it delayed (no coordinated omission). The intended times are released by a pacer thread
//! (`pacer.rs`), not tokio's millisecond timer, so the harness's own lateness is not charged.

pub mod alloc;
pub mod budget;
mod pacer;
pub mod procs;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod systems;

/// The generated client of the etcd KV API subset in `bench/etcd/kv.proto`.
pub mod etcd_pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("etcdserverpb");
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;
use tollgate_server::local_cluster::{LocalCluster, LocalClusterOptions};

use budget::BudgetFigures;
use stats::{CpuSample, LatencySummary, Timeline, WorkerStats};
use systems::{Account, Driver, Key, OpError, System, WorkerState, Workload};

/// Most concurrent clients one run drives (each is a task; bounds memory and sockets).
pub const CLIENTS_MAX: usize = 4_096;
/// Most connections one run opens per node.
pub const CONNECTIONS_MAX: usize = 64;
/// Longest measured run, and longest warm-up, in seconds.
pub const DURATION_S_MAX: f64 = 3_600.0;
/// Highest open-loop rate, in pairs per second: far above what any system here answers, and
/// low enough that the pacer's schedule of a longest run stays finite.
pub const RATE_MAX: f64 = 1_000_000.0;
/// Most client processes one run spawns.
pub const PROCESSES_MAX: usize = 64;
/// Nodes of the embedded cluster.
pub const EMBEDDED_NODES: u64 = 3;
/// How long to wait for the embedded cluster to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each client sends its next pair as soon as the last one is done.
    Closed,
    /// Pairs are due at a fixed total rate (`--rate`), spread over the clients.
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Memory per agent, snapshot build + install on a new node, and restart, with
    /// `--agents` agents (default 1,000,000 for this scenario).
    Snapshot,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The system to drive.
    #[arg(long, value_enum, default_value = "tollgate")]
    pub system: System,
    /// Its nodes (host:port, comma-separated); without it, an embedded three-node durable
    /// Tollgate cluster in this process.
    #[arg(long, value_delimiter = ',')]
    pub cluster: Option<Vec<String>>,
    /// Concurrent clients; a comma-separated list runs once per value.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub clients: Vec<usize>,
    /// Tollgate: send each reserve and commit as its own unary RPC instead of coalescing
    /// concurrent ones into shared `Batch` calls (the client's default), to compare the two.
    #[arg(long)]
    pub no_coalesce: bool,
    /// Connections (per node) the clients share; at most one per client.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds run before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, value_enum, default_value = "closed")]
    pub mode: Mode,
    /// Open loop: offered pairs per second, over all clients.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, value_enum, default_value = "hot")]
    pub workload: Workload,
    /// Spread workload: agents drawn from (each with its own budget). Snapshot scenario:
    /// agents loaded (default 1,000,000).
    #[arg(long)]
    pub agents: Option<u64>,
    /// Server processes whose CPU to count (pids, comma-separated); without it an external
    /// run reports this client's CPU only.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// A label for this run in the table and JSON (default: the system's name, and
    /// `tollgate-unary` with `--no-coalesce`).
    #[arg(long)]
    pub label: Option<String>,
    /// Writes the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Runs a scenario instead of the pair benchmark.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Tollgate: turns budget leases on in the bench tenant's policy (the client then
    /// decides reserves locally inside a slice and settles in the background).
    #[arg(long)]
    pub leases: bool,
    /// Client processes: this many children of this binary, each running clients/N clients
    /// with its own connections, started together against the same cluster.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Hot workload: the budget's cap in cost µ (each pair holds 1,000 and commits 900), in a
    /// fresh tenant; the run reports what happens when it runs out.
    #[arg(long)]
    pub budget: Option<u64>,
    /// Hot workload: sizes the budget (fresh tenant) to run out half-way through the
    /// measured window, at the rate of a short calibration run (or `--budget-rate`).
    #[arg(long, conflicts_with = "budget")]
    pub budget_runs_out: bool,
    /// With --budget-runs-out: size from this many pairs per second instead of calibrating.
    #[arg(long, requires = "budget_runs_out")]
    pub budget_rate: Option<f64>,
    /// Internal: runs as one client process of a `--processes` run (JSON from the parent).
    #[arg(long, hide = true)]
    pub worker_spec: Option<String>,
}

/// One run's figures; the JSON of a run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub label: String,
    pub system: System,
    pub workload: Workload,
    pub mode: Mode,
    pub clients: usize,
    pub connections: usize,
    /// Tollgate: whether the client coalesced operations into `Batch` calls.
    pub coalesce: bool,
    pub duration_s: f64,
    pub offered_rate: Option<f64>,
    pub pairs: u64,
    pub throughput_pairs_s: f64,
    pub denied: u64,
    pub errors: u64,
    pub missed: u64,
    pub conflicts: u64,
    pub error_last: Option<String>,
    pub reserve: LatencySummary,
    pub commit: LatencySummary,
    /// CPU microseconds per pair: this process (client, plus the servers when embedded).
    pub cpu_client_us_per_pair: f64,
    /// CPU microseconds per pair of the named server processes, if any were named.
    pub cpu_servers_us_per_pair: Option<f64>,
    /// What the CPU figures cover, in words.
    pub cpu_scope: String,
    /// Client processes the clients ran in.
    pub processes: usize,
    /// Tollgate: the tenant's policy had leases on.
    pub leases: bool,
    /// CPU cores the named server processes used on average over the window.
    pub cpu_servers_cores: Option<f64>,
    /// Tollgate: Raft log entries applied per second over the window (leader's index).
    pub raft_entries_s: Option<f64>,
    /// Runs with a budget that runs out: what happened at the edge.
    pub budget: Option<BudgetFigures>,
}

/// Refuses flags out of their bounds before anything starts.
fn check_args(args: &BenchArgs) -> anyhow::Result<()> {
    systems::check_target(args.system, args.cluster.as_deref())?;
    // A range check refuses NaN too; an unbounded warm-up would overflow `Instant`.
    let seconds = 0.0..=DURATION_S_MAX;
    if !seconds.contains(&args.duration) || !seconds.contains(&args.warmup) {
        bail!("--duration and --warmup must each be within 0..={DURATION_S_MAX} s");
    }
    if args.mode == Mode::Open && args.rate.is_none_or(|r| !(r > 0.0 && r <= RATE_MAX)) {
        bail!("--mode open needs --rate PAIRS_PER_SECOND above 0 and at most {RATE_MAX}");
    }
    if args.processes == 0 || args.processes > PROCESSES_MAX {
        bail!("--processes must be within 1..={PROCESSES_MAX}");
    }
    for &clients in &args.clients {
        if clients == 0 || clients > CLIENTS_MAX {
            bail!("--clients must be within 1..={CLIENTS_MAX}, not {clients}");
        }
        if clients < args.processes {
            bail!(
                "--clients {clients} is fewer than --processes {}",
                args.processes
            );
        }
    }
    if args.connections == 0 || args.connections > CONNECTIONS_MAX {
        bail!("--connections must be within 1..={CONNECTIONS_MAX}");
    }
    if args.processes > 1 && args.mode == Mode::Open {
        bail!("--mode open runs in one process: drop --processes");
    }
    if args.leases && args.system != System::Tollgate {
        bail!("--leases is a Tollgate policy: use it with --system tollgate");
    }
    budget::check_args(args)
}

pub async fn main(args: BenchArgs) -> anyhow::Result<bool> {
    if let Some(spec) = &args.worker_spec {
        return procs::child_main(spec).await;
    }
    if let Some(Scenario::Snapshot) = args.scenario {
        return scenario::snapshot(&args).await;
    }
    check_args(&args)?;

    // The embedded cluster lives as long as every run of this call.
    let mut embedded: Option<(LocalCluster, tempfile::TempDir)> = None;
    let endpoints = match &args.cluster {
        Some(endpoints) => endpoints.clone(),
        None => {
            let (cluster, dir) = start_embedded().await?;
            let endpoints = cluster.endpoints();
            embedded = Some((cluster, dir));
            endpoints
        }
    };
    let cpu_scope = match (&embedded, args.server_pids.is_empty(), args.processes) {
        (Some(_), _, 1) => "this process: client and the three embedded nodes".to_owned(),
        (Some(_), _, n) => format!("{n} client processes (the embedded nodes run in the parent)"),
        (None, true, _) => "client only (no --server-pids given)".to_owned(),
        (None, false, _) => format!(
            "client process(es), and server pids {:?} separately",
            args.server_pids
        ),
    };

    let mut results = Vec::new();
    for &clients in &args.clients {
        let result = run_clients(&args, &endpoints, clients, &cpu_scope).await?;
        eprintln!("{}", report::line(&result));
        results.push(result);
    }
    println!("{}", report::table(&results));
    if results.iter().any(|r| r.budget.is_some()) {
        println!("{}", report::budget_table(&results));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some((cluster, _dir)) = embedded {
        cluster.shutdown().await;
    }
    Ok(results.iter().all(|r| r.pairs > 0))
}

/// One run at `clients` clients: set up the tenant (sizing the budget when asked), run,
/// and with a budget read what the cluster says happened.
async fn run_clients(
    args: &BenchArgs,
    endpoints: &[String],
    clients: usize,
    cpu_scope: &str,
) -> anyhow::Result<RunResult> {
    let admin = systems::connect(
        args.system,
        endpoints,
        // An admin key for a --cluster with authentication on: TOLLGATE_API_KEY or
        // TOLLGATE_API_KEY_FILE.
        tollgate_client::api_key_from_env()?.as_deref(),
        1,
        !args.no_coalesce,
    )
    .await?
    .remove(0);
    let account = budget::account(args, endpoints, &admin, clients).await?;
    systems::setup(&admin, args.workload, &account).await?;
    let spec = part_spec(args, endpoints, clients, account.clone(), args.duration);
    let probe = budget::Probe::new(&admin, endpoints);
    let audit_head_before = match spec.timeline {
        true => probe.chain_head().await,
        false => None,
    };
    let ran = execute(args, &spec, &probe).await?;
    let figures = match &ran.total.timeline {
        Some(timeline) => Some(
            budget::figures(&admin, &account, clients, timeline, &ran, audit_head_before).await?,
        ),
        None => None,
    };
    let mut result = run_result(args, clients, spec.connections, &ran, cpu_scope);
    result.budget = figures;
    Ok(result)
}

/// The whole run's share description, before it is split over processes.
fn part_spec(
    args: &BenchArgs,
    endpoints: &[String],
    clients: usize,
    account: Account,
    duration_s: f64,
) -> procs::PartSpec {
    procs::PartSpec {
        system: args.system,
        endpoints: endpoints.to_vec(),
        connections: args.connections.min(clients),
        coalesce: !args.no_coalesce,
        workload: args.workload,
        agents: args.agents.unwrap_or(100_000).max(1),
        account,
        first_worker: 0,
        clients,
        warmup_s: args.warmup,
        duration_s,
        timeline: args.budget.is_some() || args.budget_runs_out,
    }
}

/// What a run measured, merged over its processes.
pub struct Ran {
    pub total: WorkerStats,
    pub window: Window,
    /// CPU seconds of the client process(es) over the measured window.
    pub client_cpu_s: f64,
    /// CPU seconds of the named server processes over the window.
    pub servers_cpu_s: Option<f64>,
    /// Raft entries applied on the leader over the window.
    pub raft_entries: Option<u64>,
}

/// Runs `spec`: in this process, or split over `--processes` children.
pub async fn execute(
    args: &BenchArgs,
    spec: &procs::PartSpec,
    probe: &budget::Probe,
) -> anyhow::Result<Ran> {
    if args.processes > 1 {
        return procs::run_children(args.processes, spec, &args.server_pids, probe).await;
    }
    let drivers = procs::connect_part(spec).await?;
    let window = Window::starting(Instant::now() + Duration::from_millis(50), spec);
    let (due_times, pacer) = due_times(args, spec.clients, window)?;
    let part = tokio::spawn(run_part(spec.clone(), drivers, window, due_times));
    let sample = WindowSample::observe(window, &args.server_pids, probe).await;
    let mut total = part.await.context("a bench part panicked")?;
    if let Some(pacer) = pacer {
        let dropped = pacer
            .join()
            .map_err(|_| anyhow::anyhow!("the open-loop pacer panicked"))?;
        total.missed += dropped;
    }
    Ok(Ran {
        total,
        window,
        client_cpu_s: sample.self_cpu_s,
        servers_cpu_s: sample.servers_cpu_s,
        raft_entries: sample.raft_entries,
    })
}

/// CPU and Raft progress over a run's measured window, sampled at its two ends.
pub struct WindowSample {
    pub self_cpu_s: f64,
    pub servers_cpu_s: Option<f64>,
    pub raft_entries: Option<u64>,
}

impl WindowSample {
    pub async fn observe(window: Window, server_pids: &[u32], probe: &budget::Probe) -> Self {
        tokio::time::sleep_until(window.measure_from).await;
        let cpu_before = CpuSample::take(server_pids);
        let raft_before = probe.applied_index().await;
        tokio::time::sleep_until(window.measure_until).await;
        let cpu_after = CpuSample::take(server_pids);
        let raft_after = probe.applied_index().await;
        WindowSample {
            self_cpu_s: cpu_after.self_s - cpu_before.self_s,
            servers_cpu_s: match (cpu_before.servers_s, cpu_after.servers_s) {
                (Some(before), Some(after)) => Some(after - before),
                _ => None,
            },
            raft_entries: match (raft_before, raft_after) {
                (Some(before), Some(after)) => Some(after.saturating_sub(before)),
                _ => None,
            },
        }
    }
}

/// A three-node cluster of real nodes on loopback, each with its durable log on disk.
pub async fn start_embedded() -> anyhow::Result<(LocalCluster, tempfile::TempDir)> {
    // In $TMPDIR (or /tmp): point TMPDIR at a disk if /tmp is a tmpfs, where fsync is free.
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()
        .context("creating a data directory")?;
    let options = LocalClusterOptions::new(EMBEDDED_NODES, dir.path().into());
    let cluster = LocalCluster::start(options).await?;
    cluster.leader(LEADER_WAIT).await?;
    Ok((cluster, dir))
}

/// When a run starts sending, starts measuring, and stops.
#[derive(Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub measure_from: Instant,
    pub measure_until: Instant,
}

impl Window {
    pub fn starting(start: Instant, spec: &procs::PartSpec) -> Window {
        let measure_from = start + Duration::from_secs_f64(spec.warmup_s);
        Window {
            start,
            measure_from,
            measure_until: measure_from + Duration::from_secs_f64(spec.duration_s),
        }
    }

    /// Microseconds from the start to `at` (0 before it).
    pub fn offset_us(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }
}

/// What one bench worker drives, and against which keys.
#[derive(Clone)]
struct WorkerPlan {
    drivers: Arc<Vec<Driver>>,
    workload: Workload,
    agents: u64,
    account: Arc<Account>,
    window: Window,
    timeline: bool,
}

/// Runs one process's clients (workers `first_worker..first_worker + clients`) in `window`
/// and merges what they saw.
pub async fn run_part(
    spec: procs::PartSpec,
    drivers: Vec<Driver>,
    window: Window,
    due_times: Vec<Option<DueTimes>>,
) -> WorkerStats {
    let drivers = Arc::new(drivers);
    let plan = WorkerPlan {
        drivers: Arc::clone(&drivers),
        workload: spec.workload,
        agents: spec.agents,
        account: Arc::new(spec.account.clone()),
        window,
        timeline: spec.timeline,
    };
    let tasks: Vec<_> = due_times
        .into_iter()
        .enumerate()
        .map(|(i, due_times)| {
            tokio::spawn(bench_worker(plan.clone(), spec.first_worker + i, due_times))
        })
        .collect();
    let mut total = WorkerStats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(stats),
            Err(error) => {
                total.errors += 1;
                total.error_last = Some(format!("a bench worker panicked: {error}"));
            }
        }
    }
    for driver in drivers.iter() {
        driver.finish().await;
    }
    total
}

pub type DueTimes = tokio::sync::mpsc::Receiver<std::time::Instant>;
/// The open-loop pacer thread; it returns how many due times it dropped.
type Pacer = std::thread::JoinHandle<u64>;

/// Open loop: each worker's due times come from the pacer; closed loop: none.
fn due_times(
    args: &BenchArgs,
    clients: usize,
    window: Window,
) -> anyhow::Result<(Vec<Option<DueTimes>>, Option<Pacer>)> {
    match args.mode {
        Mode::Closed => Ok(((0..clients).map(|_| None).collect(), None)),
        Mode::Open => {
            let schedule = pacer::Schedule {
                start: window.start.into_std(),
                rate: args.rate.unwrap_or(0.0),
                until: window.measure_until.into_std(),
            };
            let (receivers, pacer) = pacer::start(schedule, clients)?;
            Ok((receivers.into_iter().map(Some).collect(), Some(pacer)))
        }
    }
}

/// One client: a reserve-then-commit pair at each due time (or back to back, closed
/// loop), counted only inside the measured window.
async fn bench_worker(plan: WorkerPlan, worker: usize, due_times: Option<DueTimes>) -> WorkerStats {
    let window = plan.window;
    let span_us = window.offset_us(window.measure_until);
    let mut client = BenchWorker {
        stats: WorkerStats {
            timeline: plan.timeline.then(|| Timeline::new(span_us)),
            ..WorkerStats::default()
        },
        plan,
        worker,
        state: WorkerState::default(),
    };
    client.run(due_times).await;
    client.stats.conflicts = client.state.conflicts;
    client.stats
}

struct BenchWorker {
    plan: WorkerPlan,
    worker: usize,
    state: WorkerState,
    stats: WorkerStats,
}

impl BenchWorker {
    async fn run(&mut self, mut due_times: Option<DueTimes>) {
        let Window {
            start,
            measure_from,
            measure_until,
        } = self.plan.window;
        let mut rng = StdRng::seed_from_u64(self.worker as u64);
        loop {
            let intended = match &mut due_times {
                None => Instant::now().max(start),
                Some(due_times) => match due_times.recv().await {
                    Some(due) => Instant::from_std(due),
                    None => break,
                },
            };
            if intended >= measure_until {
                break;
            }
            let now = Instant::now();
            if now >= measure_until {
                // Open loop, fallen behind: what is still due was never sent.
                self.stats.missed += 1;
                continue;
            }
            // Only a due time in the future (the start, closed loop) is slept for:
            // tokio's timer would otherwise round even a past deadline up to its next
            // millisecond tick.
            if intended > now {
                tokio::time::sleep_until(intended).await;
            }
            let key = Key::new(
                self.plan.workload,
                self.worker,
                rng.random_range(0..self.plan.agents),
            );
            self.pair(&key, intended, intended >= measure_from).await;
            // A pair decided inside a lease never waits on the network, so nothing would
            // hand the thread to the other clients and the lease's background settles: an
            // application does between calls, so the loop does too.
            tokio::task::yield_now().await;
        }
    }

    /// One reserve-then-commit pair; its latencies count when `measured`.
    async fn pair(&mut self, key: &Key, intended: Instant, measured: bool) {
        let plan = &self.plan;
        let driver = &plan.drivers[self.worker % plan.drivers.len()];
        let stats = &mut self.stats;
        let held = match driver
            .reserve(
                plan.workload,
                self.worker,
                &mut self.state,
                &plan.account,
                key,
            )
            .await
        {
            Ok(held) => held,
            Err(error) => {
                if let (OpError::Denied { by_budget: true }, Some(timeline)) =
                    (&error, &mut stats.timeline)
                {
                    timeline.denial(plan.window.offset_us(Instant::now()));
                }
                if measured {
                    count_error(stats, error);
                }
                return;
            }
        };
        let reserved = Instant::now();
        let result = driver.commit(&mut self.state, held).await;
        let committed = Instant::now();
        if let (Ok(()), Some(timeline)) = (&result, &mut stats.timeline) {
            let window = &plan.window;
            timeline.pair(window.offset_us(reserved), window.offset_us(committed));
        }
        if !measured {
            return;
        }
        stats.reserve.record(reserved - intended);
        match result {
            Ok(()) => {
                stats.commit.record(committed - reserved);
                stats.pairs += 1;
            }
            Err(error) => count_error(stats, error),
        }
    }
}

/// The run's label: `--label`, else the system's name (`tollgate-unary` with
/// `--no-coalesce`, `tollgate-leases` with `--leases`).
fn label(args: &BenchArgs) -> String {
    args.label.clone().unwrap_or_else(|| {
        let system = format!("{:?}", args.system).to_lowercase();
        match (args.system, args.no_coalesce, args.leases) {
            (System::Tollgate, _, true) => format!("{system}-leases"),
            (System::Tollgate, true, _) => format!("{system}-unary"),
            _ => system,
        }
    })
}

fn run_result(
    args: &BenchArgs,
    clients: usize,
    connections: usize,
    ran: &Ran,
    cpu_scope: &str,
) -> RunResult {
    let total = &ran.total;
    let pairs = total.pairs.max(1) as f64;
    let duration = args.duration.max(1e-9);
    RunResult {
        label: label(args),
        system: args.system,
        workload: args.workload,
        mode: args.mode,
        clients,
        connections,
        coalesce: args.system == System::Tollgate && !args.no_coalesce,
        duration_s: args.duration,
        offered_rate: args.rate.filter(|_| args.mode == Mode::Open),
        pairs: total.pairs,
        throughput_pairs_s: total.pairs as f64 / duration,
        denied: total.denied,
        errors: total.errors,
        missed: total.missed,
        conflicts: total.conflicts,
        error_last: total.error_last.clone(),
        reserve: total.reserve.summary(),
        commit: total.commit.summary(),
        cpu_client_us_per_pair: ran.client_cpu_s * 1e6 / pairs,
        cpu_servers_us_per_pair: ran.servers_cpu_s.map(|s| s * 1e6 / pairs),
        cpu_scope: cpu_scope.to_owned(),
        processes: args.processes,
        leases: args.leases,
        cpu_servers_cores: ran.servers_cpu_s.map(|s| s / duration),
        raft_entries_s: ran.raft_entries.map(|n| n as f64 / duration),
        budget: None,
    }
}

fn count_error(stats: &mut WorkerStats, error: OpError) {
    match error {
        OpError::Denied { .. } => stats.denied += 1,
        OpError::Failed(message) => {
            stats.errors += 1;
            stats.error_last = Some(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[tokio::test]
    async fn an_open_loop_rate_that_is_not_a_positive_bounded_number_is_refused() {
        for rate in ["0", "-5", "NaN", "inf", "1000001"] {
            let cli = Cli::try_parse_from(["bench", "--mode", "open", &format!("--rate={rate}")])
                .unwrap();
            let error = main(cli.bench).await.unwrap_err().to_string();
            assert!(error.contains("--rate"), "rate {rate}: {error}");
        }
    }

    #[tokio::test]
    async fn a_warmup_that_is_not_a_bounded_number_of_seconds_is_refused() {
        for warmup in ["-1", "NaN", "inf", "3601"] {
            let cli = Cli::try_parse_from(["bench", &format!("--warmup={warmup}")]).unwrap();
            let error = main(cli.bench).await.unwrap_err().to_string();
            assert!(error.contains("--warmup"), "warmup {warmup}: {error}");
        }
    }
}
