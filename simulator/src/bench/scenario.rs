//! `tollgate-sim bench --scenario snapshot`: the figures that need a million agents.
//!
//! 1. Memory per agent, in the ledger alone: the heap bytes that `N` agents cost beyond the
//!    same `N` records made by one agent (so the dedup table and audit trail, which any `N`
//!    calls fill alike, are not counted as agents' cost), and the all-in figure beside it.
//! 2. An embedded three-node durable cluster loaded with `N` agents through the client (one
//!    `Record` each); the process's resident memory per agent per replica.
//! 3. Snapshot built on the leader (triggered, timed until openraft reports it).
//! 4. A fourth, empty node added as a learner: timed until it has installed the snapshot and
//!    caught up with the leader, then until its trail on disk holds every record and
//!    remembered answer the leader's does (copied from its peers where the snapshot's
//!    ledger does not reach).
//! 5. That node restarted on its data directory, its full store included: timed until it
//!    has caught up again.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tollgate_client::{Amounts, Client, ClientConfig};
use tollgate_ledger::{
    AgentId, Amounts as LedgerAmounts, Command, Dimension, Ledger, LimitId, LimitKind, LimitSpec,
    RequestId, Scope, TenantId, ToolId, Window,
};
use tollgate_server::local_cluster::LocalCluster;

use super::{alloc, stats, systems, BenchArgs};

/// Agents the scenario loads unless `--agents` says otherwise.
pub const AGENTS_DEFAULT: u64 = 1_000_000;
/// Concurrent loaders of the cluster.
const LOADERS: usize = 256;
/// The node the scenario adds.
const NEW_NODE: u64 = 4;
/// Longest the scenario waits for a snapshot, an install or a restart.
const STEP_WAIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Default, Serialize)]
pub struct SnapshotResult {
    pub agents: u64,
    /// Heap bytes per agent beyond one agent making the same calls (counted allocator).
    pub ledger_bytes_per_agent: f64,
    /// All heap bytes of the ledger per agent, dedup table and audit trail included.
    pub ledger_bytes_per_agent_all_in: f64,
    /// Resident memory growth of this process while loading, per agent per replica
    /// (three nodes in one process; includes allocator slack, dedup and audit).
    pub cluster_rss_bytes_per_agent_per_replica: f64,
    pub load_s: f64,
    pub load_records_s: f64,
    pub snapshot_bytes: u64,
    pub snapshot_build_s: f64,
    pub snapshot_install_s: f64,
    pub snapshot_build_and_install_s: f64,
    /// From the learner's addition until its trail on disk is complete.
    pub trail_complete_s: f64,
    /// The leader's trail on disk: records with their indexes, and remembered answers.
    pub trail_records: u64,
    pub trail_bytes: u64,
    pub answers_bytes: u64,
    pub restart_s: f64,
}

fn id<T>(made: Result<T, tollgate_ledger::InvalidInput>) -> anyhow::Result<T> {
    made.map_err(|e| anyhow::anyhow!("{}", e.0))
}

/// Heap bytes a ledger grows by when `agents` records are applied, one per agent (or all
/// by the same agent when `one_agent`).
fn ledger_growth(agents: u64, one_agent: bool) -> anyhow::Result<i64> {
    let tenant = id(TenantId::new(systems::TENANT))?;
    let tool = id(ToolId::new("llm:bench"))?;
    let mut ledger = Ledger::new();
    let at_ms = 1_800_000_000_000;
    let setup = [
        Command::PutTenant {
            request_id: id(RequestId::new("setup-tenant"))?,
            tenant: tenant.clone(),
            policy: systems::bench_policy(false),
        },
        Command::PutLimit {
            request_id: id(RequestId::new("setup-limit"))?,
            tenant: tenant.clone(),
            limit: LimitSpec {
                id: id(LimitId::new("budget"))?,
                scope: Scope::EachAgent,
                dimension: Dimension::Cost,
                kind: LimitKind::Budget {
                    window: Window::Lifetime,
                    amount: systems::BUDGET_AMOUNT,
                },
                thresholds: Default::default(),
            },
        },
    ];
    for command in &setup {
        ledger.apply(at_ms, command);
    }
    alloc::start_counting();
    let before = alloc::live_bytes();
    for i in 0..agents {
        let agent = if one_agent { 0 } else { i };
        let command = Command::Record {
            request_id: id(RequestId::new(format!("r{i:09}")))?,
            tenant: tenant.clone(),
            agent: id(AgentId::new(format!("a{agent:09}")))?,
            tool: tool.clone(),
            actual: LedgerAmounts {
                tokens: systems::ACTUAL.tokens,
                cost_micros: systems::ACTUAL.cost_micros,
                calls: systems::ACTUAL.calls,
            },
            usage: None,
            session: None,
            offline: false,
        };
        // Records a millisecond apart: all within the dedup window, as in a busy minute.
        ledger.apply(at_ms + i / 1_000, &command);
    }
    let grown = alloc::live_bytes() - before;
    alloc::stop_counting();
    drop(ledger);
    Ok(grown)
}

pub async fn snapshot(args: &BenchArgs) -> anyhow::Result<bool> {
    let agents = args.agents.unwrap_or(AGENTS_DEFAULT).max(1);
    let mut result = SnapshotResult {
        agents,
        ..Default::default()
    };
    if !alloc::installed() {
        bail!("the counting allocator is not installed in this binary");
    }

    eprintln!("ledger memory: {agents} agents vs one agent making {agents} records...");
    let spread = ledger_growth(agents, false)?;
    let single = ledger_growth(agents, true)?;
    result.ledger_bytes_per_agent = (spread - single) as f64 / agents as f64;
    result.ledger_bytes_per_agent_all_in = spread as f64 / agents as f64;

    eprintln!("starting an embedded three-node durable cluster...");
    let (mut cluster, dir) = super::start_embedded().await?;
    let leader = load_agents(&cluster, agents, &mut result).await?;
    build_snapshot(&cluster, leader, dir.path(), &mut result).await?;
    install_on_new_node(&mut cluster, leader, &mut result).await?;
    restart_new_node(&mut cluster, leader, &mut result).await?;

    println!("{}", render(&result));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    cluster.shutdown().await;
    Ok(true)
}

/// Loads `agents` agents, one record each, and waits until every replica has applied them;
/// returns the leader.
async fn load_agents(
    cluster: &LocalCluster,
    agents: u64,
    result: &mut SnapshotResult,
) -> anyhow::Result<u64> {
    let mut config = ClientConfig::new(cluster.endpoints());
    config.deadline = Duration::from_secs(60);
    let client = Client::new(config)?;
    let driver = systems::Driver::Tollgate(client.clone());
    systems::setup(
        &driver,
        systems::Workload::Spread,
        &systems::Account::unlimited(),
    )
    .await?;

    eprintln!("loading {agents} agents (one record each, {LOADERS} loaders)...");
    let rss_before = stats::rss_self_bytes();
    let started = Instant::now();
    let tasks: Vec<_> = (0..LOADERS as u64)
        .map(|loader| tokio::spawn(load_share(client.clone(), loader, agents)))
        .collect();
    for task in tasks {
        task.await??;
    }
    result.load_s = started.elapsed().as_secs_f64();
    result.load_records_s = agents as f64 / result.load_s;
    let leader = cluster.leader(STEP_WAIT).await?;
    // Every replica has applied everything once the followers catch up; give them a moment.
    wait_caught_up(cluster, leader, &[1, 2, 3]).await?;
    let rss_after = stats::rss_self_bytes();
    result.cluster_rss_bytes_per_agent_per_replica =
        rss_after.saturating_sub(rss_before) as f64 / (agents as f64 * 3.0);
    eprintln!(
        "loaded in {:.1} s ({:.0} records/s)",
        result.load_s, result.load_records_s
    );
    Ok(leader)
}

/// One loader's share: agents `loader`, `loader + LOADERS`, ...
async fn load_share(client: Client, loader: u64, agents: u64) -> anyhow::Result<()> {
    let mut i = loader;
    while i < agents {
        client
            .record(
                systems::TENANT,
                &format!("a{i:09}"),
                "llm:bench",
                Amounts::new(90, 900, 1),
            )
            .await
            .with_context(|| format!("recording for agent {i}"))?;
        i += LOADERS as u64;
    }
    Ok(())
}

/// Triggers a snapshot on the leader and times it until openraft reports it built.
async fn build_snapshot(
    cluster: &LocalCluster,
    leader: u64,
    data_dir: &std::path::Path,
    result: &mut SnapshotResult,
) -> anyhow::Result<()> {
    eprintln!("building a snapshot on the leader (node {leader})...");
    let node = cluster.node(leader).context("leader gone")?.clone();
    let applied = last_applied(cluster, leader).unwrap_or(0);
    let started = Instant::now();
    node.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| anyhow::anyhow!("triggering a snapshot: {e}"))?;
    wait_for(|| {
        let metrics = node.raft.metrics();
        let snapshot = metrics.borrow().snapshot.map(|s| s.index).unwrap_or(0);
        snapshot >= applied
    })
    .await
    .context("the snapshot was not built")?;
    result.snapshot_build_s = started.elapsed().as_secs_f64();
    result.snapshot_bytes = std::fs::metadata(data_dir.join(format!("node-{leader}/snapshot.bin")))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(())
}

/// Adds an empty node as a learner, timed until it has installed the snapshot and caught up.
async fn install_on_new_node(
    cluster: &mut LocalCluster,
    leader: u64,
    result: &mut SnapshotResult,
) -> anyhow::Result<()> {
    eprintln!("adding node {NEW_NODE} as a learner: snapshot transfer and install...");
    let new = cluster.add_node(NEW_NODE).await?;
    let target = last_applied(cluster, leader).unwrap_or(0);
    let started = Instant::now();
    // One attempt that waits as long as the step: the server's add-learner blocks until the
    // learner has caught up, and each retry is a new membership entry, which restarts the
    // leader's replication streams and with them the snapshot transfer from its first byte.
    let mut admin_config = ClientConfig::new(cluster.endpoints());
    admin_config.deadline = STEP_WAIT;
    admin_config.attempt_timeout = STEP_WAIT;
    Client::new(admin_config)?
        .add_learner(NEW_NODE, &new.addr, &new.peer_addr)
        .await
        .context("adding the learner")?;
    wait_for(|| last_applied(cluster, NEW_NODE).unwrap_or(0) >= target)
        .await
        .context("the new node did not catch up")?;
    result.snapshot_install_s = started.elapsed().as_secs_f64();
    result.snapshot_build_and_install_s = result.snapshot_build_s + result.snapshot_install_s;
    let leader_trail = cluster.node(leader).context("leader gone")?.trail.clone();
    let wanted = leader_trail.store().state();
    wait_for(|| {
        cluster.node(NEW_NODE).is_some_and(|node| {
            let state = node.trail.store().state();
            state.missing.is_empty()
                && state.first_seq == wanted.first_seq
                && state.last_seq >= wanted.last_seq
                && !node.trail.answers_copying()
        })
    })
    .await
    .context("the new node's trail was not completed from its peers")?;
    result.trail_complete_s = started.elapsed().as_secs_f64();
    let (first, last) = (wanted.first_seq.unwrap_or(1), wanted.last_seq.unwrap_or(0));
    result.trail_records = last.saturating_add(1).saturating_sub(first);
    result.trail_bytes = wanted.audit_bytes;
    result.answers_bytes = wanted.answers_bytes;
    Ok(())
}

/// Restarts the new node on its data directory, timed until it has caught up again.
async fn restart_new_node(
    cluster: &mut LocalCluster,
    leader: u64,
    result: &mut SnapshotResult,
) -> anyhow::Result<()> {
    eprintln!("restarting node {NEW_NODE}...");
    cluster.stop(NEW_NODE).await;
    let target = last_applied(cluster, leader).unwrap_or(0);
    let started = Instant::now();
    cluster.restart(NEW_NODE).await?;
    wait_for(|| last_applied(cluster, NEW_NODE).unwrap_or(0) >= target)
        .await
        .context("the restarted node did not catch up")?;
    result.restart_s = started.elapsed().as_secs_f64();
    Ok(())
}

fn render(r: &SnapshotResult) -> String {
    let check = |ok: bool| if ok { "reached" } else { "NOT reached" };
    format!(
        "agents                                   {}\n\
         ledger bytes per agent (marginal)        {:.0}   goal <= 300: {}\n\
         ledger bytes per agent (all-in)          {:.0}\n\
         cluster RSS per agent per replica        {:.0}\n\
         load                                     {:.1} s ({:.0} records/s)\n\
         snapshot size                            {:.1} MB\n\
         snapshot build                           {:.2} s\n\
         snapshot transfer + install (new node)   {:.2} s\n\
         build + install                          {:.2} s   goal <= 10 s: {}\n\
         its trail complete (records, answers)    {:.2} s\n\
         leader's trail on disk                   {} records: {:.1} MB, answers {:.1} MB\n\
         restart of that node until caught up     {:.2} s   goal <= 5 s: {}",
        r.agents,
        r.ledger_bytes_per_agent,
        check(r.ledger_bytes_per_agent <= 300.0),
        r.ledger_bytes_per_agent_all_in,
        r.cluster_rss_bytes_per_agent_per_replica,
        r.load_s,
        r.load_records_s,
        r.snapshot_bytes as f64 / 1e6,
        r.snapshot_build_s,
        r.snapshot_install_s,
        r.snapshot_build_and_install_s,
        check(r.snapshot_build_and_install_s <= 10.0),
        r.trail_complete_s,
        r.trail_records,
        r.trail_bytes as f64 / 1e6,
        r.answers_bytes as f64 / 1e6,
        r.restart_s,
        check(r.restart_s <= 5.0),
    )
}

fn last_applied(cluster: &LocalCluster, id: u64) -> Option<u64> {
    let node = cluster.node(id)?;
    let metrics = node.raft.metrics();
    let applied = metrics.borrow().last_applied.map(|l| l.index);
    applied
}

async fn wait_caught_up(cluster: &LocalCluster, leader: u64, ids: &[u64]) -> anyhow::Result<()> {
    let target = last_applied(cluster, leader).unwrap_or(0);
    wait_for(|| {
        ids.iter()
            .all(|&id| last_applied(cluster, id).unwrap_or(0) >= target)
    })
    .await
}

/// Polls `done` until it holds; openraft's metrics are the only view of another node's
/// progress from outside it.
async fn wait_for(mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_WAIT;
    while !done() {
        if Instant::now() > deadline {
            bail!("not done within {STEP_WAIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}
