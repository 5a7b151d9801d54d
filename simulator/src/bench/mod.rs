//! `tollgate-sim bench`: reserve-then-commit pairs from C concurrent clients for a fixed
//! time, against Tollgate (an embedded three-node durable cluster, or `--cluster`), etcd or
//! Redis, closed loop or open loop, on a hot or a spread workload; and the snapshot scenario
//! (memory per agent, snapshot build and install, restart with a million agents).
//!
//! Open loop sends at fixed intended times and measures each reserve from its intended send
//! time, not from when it was actually sent: a stalled system is charged for the requests
//! it delayed (no coordinated omission). The intended times are released by a pacer thread
//! (`pacer.rs`), not tokio's millisecond timer, so the harness's own lateness is not charged.

pub mod alloc;
mod pacer;
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

use stats::{CpuSample, LatencySummary, WorkerStats};
use systems::{Driver, Key, OpError, System, WorkerState, Workload};

/// Most concurrent clients one run drives (each is a task; bounds memory and sockets).
pub const CLIENTS_MAX: usize = 4_096;
/// Most connections one run opens per node.
pub const CONNECTIONS_MAX: usize = 64;
/// Longest measured run, and longest warm-up, in seconds.
pub const DURATION_S_MAX: f64 = 3_600.0;
/// Highest open-loop rate, in pairs per second: far above what any system here answers, and
/// low enough that the pacer's schedule of a longest run stays finite.
pub const RATE_MAX: f64 = 1_000_000.0;
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
    for &clients in &args.clients {
        if clients == 0 || clients > CLIENTS_MAX {
            bail!("--clients must be within 1..={CLIENTS_MAX}, not {clients}");
        }
    }
    if args.connections == 0 || args.connections > CONNECTIONS_MAX {
        bail!("--connections must be within 1..={CONNECTIONS_MAX}");
    }
    Ok(())
}

pub async fn main(args: BenchArgs) -> anyhow::Result<bool> {
    if let Some(Scenario::Snapshot) = args.scenario {
        return scenario::snapshot(&args).await;
    }
    check_args(&args)?;
    let agents = args.agents.unwrap_or(100_000).max(1);

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
    let cpu_scope = match (&embedded, args.server_pids.is_empty()) {
        (Some(_), _) => "this process: client and the three embedded nodes".to_owned(),
        (None, true) => "client only (no --server-pids given)".to_owned(),
        (None, false) => format!(
            "client process, and server pids {:?} separately",
            args.server_pids
        ),
    };

    let mut results = Vec::new();
    for &clients in &args.clients {
        let connections = args.connections.min(clients);
        let drivers = systems::connect(
            args.system,
            &endpoints,
            // An admin key for a --cluster with authentication on: TOLLGATE_API_KEY or
            // TOLLGATE_API_KEY_FILE.
            tollgate_client::api_key_from_env()?.as_deref(),
            connections,
            !args.no_coalesce,
        )
        .await?;
        systems::setup(&drivers[0], args.workload).await?;
        let result = run_once(&args, clients, drivers, agents, &cpu_scope).await?;
        eprintln!("{}", report::line(&result));
        results.push(result);
    }
    println!("{}", report::table(&results));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some((cluster, _dir)) = embedded {
        cluster.shutdown().await;
    }
    Ok(results.iter().all(|r| r.pairs > 0))
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
struct Window {
    start: Instant,
    measure_from: Instant,
    measure_until: Instant,
}

/// What one bench worker drives, and against which keys.
#[derive(Clone)]
struct WorkerPlan {
    drivers: Arc<Vec<Driver>>,
    workload: Workload,
    agents: u64,
    window: Window,
}

async fn run_once(
    args: &BenchArgs,
    clients: usize,
    drivers: Vec<Driver>,
    agents: u64,
    cpu_scope: &str,
) -> anyhow::Result<RunResult> {
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let window = Window {
        start,
        measure_from,
        measure_until: measure_from + Duration::from_secs_f64(args.duration),
    };
    let connections = drivers.len();
    let plan = WorkerPlan {
        drivers: Arc::new(drivers),
        workload: args.workload,
        agents,
        window,
    };
    let (due_times, pacer) = due_times(args, clients, window)?;
    let tasks: Vec<_> = due_times
        .into_iter()
        .enumerate()
        .map(|(worker, due_times)| tokio::spawn(bench_worker(plan.clone(), worker, due_times)))
        .collect();
    tokio::time::sleep_until(window.measure_from).await;
    let cpu_before = CpuSample::take(&args.server_pids);
    tokio::time::sleep_until(window.measure_until).await;
    let cpu_after = CpuSample::take(&args.server_pids);
    let mut total = WorkerStats::default();
    for task in tasks {
        total.merge(task.await.context("a bench worker panicked")?);
    }
    if let Some(pacer) = pacer {
        let dropped = pacer
            .join()
            .map_err(|_| anyhow::anyhow!("the open-loop pacer panicked"))?;
        total.missed += dropped;
    }
    let cpu = CpuPerPair::between(&cpu_before, &cpu_after, total.pairs);
    Ok(run_result(
        args,
        clients,
        connections,
        &total,
        cpu,
        cpu_scope,
    ))
}

type DueTimes = tokio::sync::mpsc::Receiver<std::time::Instant>;
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
    let mut client = BenchWorker {
        plan,
        worker,
        state: WorkerState::default(),
        stats: WorkerStats::default(),
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
        }
    }

    /// One reserve-then-commit pair; its latencies count when `measured`.
    async fn pair(&mut self, key: &Key, intended: Instant, measured: bool) {
        let driver = &self.plan.drivers[self.worker % self.plan.drivers.len()];
        let stats = &mut self.stats;
        let held = match driver
            .reserve(self.plan.workload, self.worker, &mut self.state, key)
            .await
        {
            Ok(held) => held,
            Err(error) => {
                if measured {
                    count_error(stats, error);
                }
                return;
            }
        };
        let reserved = Instant::now();
        let result = driver.commit(&mut self.state, held).await;
        let committed = Instant::now();
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

/// CPU microseconds per pair over the measured window.
struct CpuPerPair {
    client_us: f64,
    servers_us: Option<f64>,
}

impl CpuPerPair {
    fn between(before: &CpuSample, after: &CpuSample, pairs: u64) -> Self {
        let pairs = pairs.max(1) as f64;
        CpuPerPair {
            client_us: (after.self_s - before.self_s) * 1e6 / pairs,
            servers_us: match (before.servers_s, after.servers_s) {
                (Some(before), Some(after)) => Some((after - before) * 1e6 / pairs),
                _ => None,
            },
        }
    }
}

/// The run's label: `--label`, else the system's name (`tollgate-unary` with `--no-coalesce`).
fn label(args: &BenchArgs) -> String {
    args.label.clone().unwrap_or_else(|| {
        let system = format!("{:?}", args.system).to_lowercase();
        match (args.system, args.no_coalesce) {
            (System::Tollgate, true) => format!("{system}-unary"),
            _ => system,
        }
    })
}

fn run_result(
    args: &BenchArgs,
    clients: usize,
    connections: usize,
    total: &WorkerStats,
    cpu: CpuPerPair,
    cpu_scope: &str,
) -> RunResult {
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
        throughput_pairs_s: total.pairs as f64 / args.duration.max(1e-9),
        denied: total.denied,
        errors: total.errors,
        missed: total.missed,
        conflicts: total.conflicts,
        error_last: total.error_last.clone(),
        reserve: total.reserve.summary(),
        commit: total.commit.summary(),
        cpu_client_us_per_pair: cpu.client_us,
        cpu_servers_us_per_pair: cpu.servers_us,
        cpu_scope: cpu_scope.to_owned(),
    }
}

fn count_error(stats: &mut WorkerStats, error: OpError) {
    match error {
        OpError::Denied => stats.denied += 1,
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
