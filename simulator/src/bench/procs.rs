//! `--processes N`: the clients of a run split over N child processes of this binary, so
//! that client-side work (a lease's local decisions, the coalescer, the runtime) is spread
//! like N application processes would spread it, not funnelled through one.
//!
//! The protocol, one JSON line each way per step, on the child's stdin and stdout:
//! 1. the parent starts each child with `bench --worker-spec JSON` (its share: clients,
//!    first worker index, the tenant and budget, the window's lengths);
//! 2. the child connects and prints `ready`;
//! 3. once every child is ready, the parent writes the start time (Unix µs, a moment
//!    shortly ahead) to every child: the barrier;
//! 4. each child runs its clients from that moment and prints its raw results (counts,
//!    latency histograms as value/count pairs, its timeline, its CPU over the window);
//! 5. the parent merges them. A child's stderr is the parent's, for its errors.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use super::stats::{cpu_self_s, Latency, Timeline, WorkerStats};
use super::systems::{self, Account, Driver, System, Workload};
use super::{budget, Ran, Window, WindowSample};

/// How far ahead of the barrier the start is set: time for every child to read it.
const START_AHEAD: Duration = Duration::from_millis(200);
/// Longest a child may take to connect and say it is ready.
const READY_WAIT: Duration = Duration::from_secs(30);
/// Longest a child's line may be (its report holds two histograms and a timeline).
const LINE_BYTES_MAX: usize = 16 << 20;

/// One process's share of a run; the JSON a parent hands a child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartSpec {
    pub system: System,
    pub endpoints: Vec<String>,
    /// Drivers (connections, or Tollgate clients) this process opens.
    pub connections: usize,
    pub coalesce: bool,
    pub workload: Workload,
    pub agents: u64,
    pub account: Account,
    /// The global index of this share's first worker (it picks the agents).
    pub first_worker: usize,
    pub clients: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Keep a timeline of pairs and denials (budget runs).
    pub timeline: bool,
}

/// What a child hands back: its merged worker stats, raw.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    reserve: Vec<(u64, u64)>,
    commit: Vec<(u64, u64)>,
    pairs: u64,
    denied: u64,
    errors: u64,
    missed: u64,
    conflicts: u64,
    error_last: Option<String>,
    timeline: Option<Timeline>,
    /// This child's CPU seconds over the measured window.
    cpu_s: f64,
}

impl ChildReport {
    fn new(stats: WorkerStats, cpu_s: f64) -> ChildReport {
        ChildReport {
            reserve: stats.reserve.to_counts(),
            commit: stats.commit.to_counts(),
            pairs: stats.pairs,
            denied: stats.denied,
            errors: stats.errors,
            missed: stats.missed,
            conflicts: stats.conflicts,
            error_last: stats.error_last,
            timeline: stats.timeline,
            cpu_s,
        }
    }

    fn into_stats(self) -> WorkerStats {
        WorkerStats {
            reserve: Latency::from_counts(&self.reserve),
            commit: Latency::from_counts(&self.commit),
            pairs: self.pairs,
            denied: self.denied,
            errors: self.errors,
            missed: self.missed,
            conflicts: self.conflicts,
            error_last: self.error_last,
            timeline: self.timeline,
        }
    }
}

/// The drivers one share opens.
pub async fn connect_part(spec: &PartSpec) -> anyhow::Result<Vec<Driver>> {
    systems::connect(
        spec.system,
        &spec.endpoints,
        tollgate_client::api_key_from_env()?.as_deref(),
        spec.connections.clamp(1, spec.clients.max(1)),
        spec.coalesce,
    )
    .await
}

fn unix_us() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_micros()).unwrap_or(u64::MAX)
}

/// The local `Instant` of a Unix time in µs (every process reads the same wall clock).
fn instant_of_unix_us(at_us: u64) -> Instant {
    let now_us = unix_us();
    let now = Instant::now();
    if at_us >= now_us {
        now + Duration::from_micros(at_us - now_us)
    } else {
        now.checked_sub(Duration::from_micros(now_us - at_us))
            .unwrap_or(now)
    }
}

/// `spec` split into `processes` shares: clients as even as can be, connections per
/// process as given (at most one per client).
fn shares(spec: &PartSpec, processes: usize) -> Vec<PartSpec> {
    let mut first_worker = 0;
    (0..processes)
        .map(|i| {
            let clients = spec.clients / processes + usize::from(i < spec.clients % processes);
            let share = PartSpec {
                first_worker,
                clients,
                connections: spec.connections.min(clients),
                ..spec.clone()
            };
            first_worker += clients;
            share
        })
        .collect()
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

fn spawn_child(share: &PartSpec) -> anyhow::Result<Running> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut child = Command::new(exe)
        .arg("bench")
        .arg("--worker-spec")
        .arg(serde_json::to_string(share)?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a client process")?;
    let stdin = child.stdin.take().context("a child without stdin")?;
    let stdout = child.stdout.take().context("a child without stdout")?;
    Ok(Running {
        child,
        stdin,
        stdout: BufReader::new(stdout).lines(),
    })
}

async fn read_line(running: &mut Running, what: &str) -> anyhow::Result<String> {
    match running.stdout.next_line().await? {
        Some(line) if line.len() <= LINE_BYTES_MAX => Ok(line),
        Some(_) => bail!("a client process's {what} is longer than {LINE_BYTES_MAX} bytes"),
        None => bail!("a client process exited before its {what}"),
    }
}

/// Runs `spec` over `processes` children: spawn, wait until all are connected, start them
/// together, observe the window, merge their reports.
pub async fn run_children(
    processes: usize,
    spec: &PartSpec,
    server_pids: &[u32],
    probe: &budget::Probe,
) -> anyhow::Result<Ran> {
    let mut children = Vec::with_capacity(processes);
    for share in shares(spec, processes) {
        children.push(spawn_child(&share)?);
    }
    for running in &mut children {
        let line = tokio::time::timeout(READY_WAIT, read_line(running, "ready line"))
            .await
            .context("a client process did not get ready in time")??;
        if line != "ready" {
            bail!("a client process said {line:?} instead of ready");
        }
    }
    let start_us = unix_us() + START_AHEAD.as_micros() as u64;
    for running in &mut children {
        running
            .stdin
            .write_all(format!("{start_us}\n").as_bytes())
            .await
            .context("starting a client process")?;
        running.stdin.flush().await?;
    }
    let window = Window::starting(instant_of_unix_us(start_us), spec);
    let sample = WindowSample::observe(window, server_pids, probe).await;
    let mut total = WorkerStats::default();
    let mut client_cpu_s = 0.0;
    for mut running in children {
        let line = read_line(&mut running, "report").await?;
        let report: ChildReport =
            serde_json::from_str(&line).context("reading a client process's report")?;
        client_cpu_s += report.cpu_s;
        total.merge(report.into_stats());
        let status = running.child.wait().await?;
        if !status.success() {
            bail!("a client process exited with {status}");
        }
    }
    Ok(Ran {
        total,
        window,
        client_cpu_s,
        servers_cpu_s: sample.servers_cpu_s,
        raft_entries: sample.raft_entries,
    })
}

/// A child: connect, say ready, wait for the start, run the share, report.
pub async fn child_main(spec: &str) -> anyhow::Result<bool> {
    let spec: PartSpec = serde_json::from_str(spec).context("reading --worker-spec")?;
    let drivers = connect_part(&spec).await?;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let start_us: u64 = stdin
        .next_line()
        .await?
        .context("the parent closed stdin before the start")?
        .trim()
        .parse()
        .context("reading the start time")?;
    let window = Window::starting(instant_of_unix_us(start_us), &spec);
    let due_times = (0..spec.clients).map(|_| None).collect();
    let part = tokio::spawn(super::run_part(spec, drivers, window, due_times));
    tokio::time::sleep_until(window.measure_from).await;
    let cpu_before = cpu_self_s();
    tokio::time::sleep_until(window.measure_until).await;
    let cpu_s = cpu_self_s() - cpu_before;
    let stats = part.await.context("a bench part panicked")?;
    let report = serde_json::to_string(&ChildReport::new(stats, cpu_s))?;
    stdout.write_all(report.as_bytes()).await?;
    stdout.write_all(b"\n").await?;
    stdout.flush().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_clients_evenly_with_distinct_workers() {
        let spec = PartSpec {
            system: System::Redis,
            endpoints: vec!["127.0.0.1:1".into()],
            connections: 4,
            coalesce: true,
            workload: Workload::Hot,
            agents: 1,
            account: Account::unlimited(),
            first_worker: 0,
            clients: 66,
            warmup_s: 0.0,
            duration_s: 1.0,
            timeline: false,
        };
        let shares = shares(&spec, 8);
        let clients: Vec<usize> = shares.iter().map(|s| s.clients).collect();
        assert_eq!(clients, [9, 9, 8, 8, 8, 8, 8, 8]);
        let firsts: Vec<usize> = shares.iter().map(|s| s.first_worker).collect();
        assert_eq!(firsts, [0, 9, 18, 26, 34, 42, 50, 58]);
        assert!(shares.iter().all(|s| s.connections == 4));
    }
}
