//! `tollgate dev`: three real nodes in one process on loopback, example tenants and limits, and
//! a short demo of what the cluster stops. The README's first command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tollgate_client::v1;
use tollgate_client::{Amounts, Client, ClientConfig, Error, ReserveRequest};

use crate::local_cluster::{LocalCluster, LocalClusterOptions};

/// Nodes of the dev cluster.
const DEV_NODES: u64 = 3;
/// How long the dev cluster may take to elect its first leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Calls the runaway agent of the demo attempts before the demo gives up on it.
const DEMO_RUNAWAY_CALLS_MAX: u32 = 1_000;

#[derive(Clone, Debug, clap::Args)]
pub struct DevArgs {
    /// Where the three nodes keep their data (wiped at start unless --keep-data).
    #[arg(long, default_value = ".tollgate-dev")]
    pub data_dir: PathBuf,
    /// Keep the data of the previous run instead of starting afresh.
    #[arg(long)]
    pub keep_data: bool,
    /// Port of node 1; nodes 2 and 3 listen on the next two.
    #[arg(long, default_value_t = 7001)]
    pub port: u16,
    /// Prometheus metrics of the three nodes (one endpoint for the process).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub metrics_listen: SocketAddr,
    /// Skip the demo; just load the example tenants and serve.
    #[arg(long)]
    pub no_demo: bool,
    /// Exit after the demo instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_after_demo: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if !args.keep_data && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("wiping {}", args.data_dir.display()))?;
    }
    crate::metrics::install_exporter(args.metrics_listen)?;
    let mut options = LocalClusterOptions::new(DEV_NODES, args.data_dir.clone());
    options.base_port = Some(args.port);
    let cluster = LocalCluster::start(options).await?;
    for id in cluster.ids() {
        if let Some(node) = cluster.node(id) {
            crate::metrics::spawn_raft_gauges(node.clone());
        }
    }
    let endpoints = cluster.endpoints();
    let client = Client::new(ClientConfig::new(endpoints.clone()))?;
    wait_for_leader(&client).await?;
    load_examples(&client).await?;
    println!(
        "tollgate dev: 3 nodes on {} (data in {}, metrics on http://{}/metrics)",
        endpoints.join(", "),
        args.data_dir.display(),
        args.metrics_listen
    );
    if !args.no_demo {
        demo(&client).await?;
    }
    if !args.exit_after_demo {
        println!("serving; try `tollgate status` or `tollgate usage --tenant acme`. Ctrl-C stops.");
        crate::node::shutdown_signal().await;
    }
    cluster.shutdown().await;
    Ok(())
}

async fn wait_for_leader(client: &Client) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    loop {
        match client.list_tenants().await {
            Ok(_) => return Ok(()),
            Err(error) if started.elapsed() > LEADER_WAIT => {
                return Err(error).context("the dev cluster elected no leader")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn limit(
    id: &str,
    scope: v1::scope::Scope,
    dimension: v1::Dimension,
    kind: v1::limit::Kind,
) -> v1::Limit {
    v1::Limit {
        id: id.into(),
        scope: Some(v1::Scope { scope: Some(scope) }),
        dimension: dimension.into(),
        kind: Some(kind),
    }
}

fn budget(window: v1::Window, amount: u64) -> v1::limit::Kind {
    v1::limit::Kind::Budget(v1::Budget {
        window: window.into(),
        amount,
    })
}

/// The example tenant `acme`: what a small agent platform would set.
async fn load_examples(client: &Client) -> anyhow::Result<()> {
    use v1::scope::Scope;
    use v1::Dimension::{Calls, Concurrency, Cost, Tokens};
    let policy = v1::TenantPolicy {
        expiry: v1::ExpiryPolicy::Charge.into(),
        repeat_max: 5,
        repeat_window_ms: 60_000,
        velocity_factor: 0,
        velocity_window_ms: 60_000,
        velocity_dimension: Cost.into(),
        velocity_floor: 1_000_000,
        trip_cooldown_ms: 0,
    };
    client.put_tenant("acme", Some(policy)).await?;
    let empty = v1::Empty {};
    let limits = [
        // $50 a day for the whole tenant.
        limit(
            "tenant-daily-cost",
            Scope::Tenant(empty),
            Cost,
            budget(v1::Window::Day, 50_000_000),
        ),
        // Every agent: 200k tokens a day and 60 calls a minute, bursts of 10.
        limit(
            "agent-daily-tokens",
            Scope::EachAgent(empty),
            Tokens,
            budget(v1::Window::Day, 200_000),
        ),
        limit(
            "agent-call-rate",
            Scope::EachAgent(empty),
            Calls,
            v1::limit::Kind::Rate(v1::Rate {
                amount: 60,
                period_ms: 60_000,
                burst: 10,
            }),
        ),
        // The batch agent is on a $1 a day allowance of its own.
        limit(
            "batch-bot-daily-cost",
            Scope::Agent("batch-bot".into()),
            Cost,
            budget(v1::Window::Day, 1_000_000),
        ),
        // At most 8 LLM calls in flight over the whole tenant.
        limit(
            "llm-concurrency",
            Scope::ToolTenant("llm:gpt-x".into()),
            Concurrency,
            v1::limit::Kind::Concurrency(v1::Concurrency { max: 8 }),
        ),
    ];
    for limit in limits {
        client.put_limit("acme", limit).await?;
    }
    Ok(())
}

/// Three stories: normal calls, a loop cut off by repetition detection, an expensive agent cut
/// off by its budget; then the kill switch, and the audit trail verified.
async fn demo(client: &Client) -> anyhow::Result<()> {
    println!("\n1. support-bot makes three LLM calls, each reserved then committed:");
    for i in 1..=3u64 {
        let reservation = client
            .reserve(
                ReserveRequest::new("acme", "support-bot", "llm:gpt-x")
                    .tokens(2_000)
                    .cost_micros(30_000),
            )
            .await?;
        let applied = reservation.applied().map_or(0, |a| a.log_index);
        reservation
            .commit(Amounts::new(1_200 + i * 100, 18_000, 1))
            .await?;
        println!("   call {i}: granted at log index {applied}, committed");
    }

    println!("\n2. research-bot loops: the same search with the same arguments, over and over:");
    let mut calls = 0u32;
    let outcome = loop {
        calls += 1;
        let request = ReserveRequest::new("acme", "research-bot", "search")
            .fingerprint("search:q=latest+news");
        match client.reserve(request).await {
            Ok(reservation) => {
                reservation.commit(Amounts::new(0, 1_000, 1)).await?;
            }
            Err(error) => break error,
        }
        if calls >= DEMO_RUNAWAY_CALLS_MAX {
            anyhow::bail!("the runaway was never cut off");
        }
    };
    println!("   call {calls} refused: {outcome}");

    println!("\n3. batch-bot calls an expensive model ($0.30 a call) on a $1/day allowance:");
    let mut granted = 0u32;
    let outcome = loop {
        let request = ReserveRequest::new("acme", "batch-bot", "llm:gpt-x")
            .tokens(1_000)
            .cost_micros(300_000);
        match client.reserve(request).await {
            Ok(reservation) => {
                granted += 1;
                reservation.commit(Amounts::new(1_000, 300_000, 1)).await?;
            }
            Err(error) => break error,
        }
        if granted >= DEMO_RUNAWAY_CALLS_MAX {
            anyhow::bail!("the budget never held");
        }
    };
    println!("   {granted} calls granted, then: {outcome}");

    println!("\n4. an operator freezes support-bot (the kill switch):");
    client.freeze("acme", Some("support-bot")).await?;
    match client
        .reserve(ReserveRequest::new("acme", "support-bot", "llm:gpt-x").tokens(100))
        .await
    {
        Err(error @ Error::Frozen { .. }) => println!("   next call refused: {error}"),
        other => anyhow::bail!("a frozen agent was not refused: {other:?}"),
    }
    client.unfreeze("acme", Some("support-bot")).await?;
    println!("   unfrozen again");

    let verified = client.verify_audit().await?;
    println!(
        "\n5. audit trail: {} records verified, chain head {} ({})",
        verified.records_checked,
        verified.head_seq,
        hex::encode(&verified.head_hash[..verified.head_hash.len().min(8)])
    );
    anyhow::ensure!(
        verified.ok,
        "audit chain did not verify: {}",
        verified.error
    );
    println!("\ndemo done.");
    Ok(())
}
