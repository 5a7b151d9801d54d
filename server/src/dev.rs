//! `tollgate dev`: three real nodes in one process on loopback, example tenants and limits, and
//! a short demo of what the cluster stops: what a new user runs first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tollgate_client::v1;
use tollgate_client::{Amounts, Client, ClientConfig, Error, ReserveRequest, Usage};

use crate::local_cluster::{LocalCluster, LocalClusterOptions};

/// Nodes of the dev cluster.
const DEV_NODES: u64 = 3;
/// How long the dev cluster may take to elect its first leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Calls the runaway agent of the demo attempts before the demo gives up on it.
const DEMO_RUNAWAY_CALLS_MAX: u32 = 1_000;
/// The port of node 1 unless `--port` says otherwise; the operator commands' default.
const DEV_PORT_DEFAULT: u16 = 7001;
/// The file that marks a data directory as created by `tollgate dev`, and so safe to wipe.
const DEV_MARKER_FILE: &str = ".tollgate-dev";
const DEV_MARKER_TEXT: &str = "created by `tollgate dev`; wiped at its next start\n";

#[derive(Clone, Debug, clap::Args)]
pub struct DevArgs {
    /// Where the three nodes keep their data. Wiped at start unless --keep-data, and only
    /// if `tollgate dev` created it: a directory holding other files is refused.
    #[arg(long, default_value = ".tollgate-dev")]
    pub data_dir: PathBuf,
    /// Keep the data of the previous run instead of starting afresh.
    #[arg(long)]
    pub keep_data: bool,
    /// Client port of node 1; nodes 2 and 3 listen on the next two, and the peer listeners
    /// 100 above (7101-7103 by default).
    #[arg(long, default_value_t = DEV_PORT_DEFAULT)]
    pub port: u16,
    /// The HTTP listener of the three nodes (one for the process): the web console at /ui
    /// and Prometheus metrics at /metrics.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub metrics_listen: SocketAddr,
    /// Skip the demo; just load the example tenants and serve.
    #[arg(long)]
    pub no_demo: bool,
    /// Exit after the demo instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_after_demo: bool,
    /// Export a trace span of each client RPC to this OTLP/gRPC collector
    /// (`http://127.0.0.1:4317`).
    #[arg(long, env = "TOLLGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    prepare_data_dir(&args.data_dir, args.keep_data)?;
    let mut options = LocalClusterOptions::new(DEV_NODES, args.data_dir.clone());
    options.base_port = Some(args.port);
    let cluster = LocalCluster::start(options).await?;
    if let Err(error) = spawn_http(&cluster, args.metrics_listen).await {
        cluster.shutdown().await;
        return Err(error);
    }
    for id in cluster.ids() {
        if let Some(node) = cluster.node(id) {
            crate::metrics::spawn_raft_gauges(node.clone());
            crate::metrics::tenants::spawn_tenant_gauges(
                node.clone(),
                crate::metrics::tenants::METRICS_TENANTS_DEFAULT,
            );
        }
    }
    let endpoints = cluster.endpoints();
    let client = Client::new(ClientConfig::new(endpoints.clone()))?;
    wait_for_leader(&client).await?;
    load_examples(&client).await?;
    let peers: Vec<String> = cluster
        .ids()
        .iter()
        .filter_map(|id| cluster.peer_addr(*id))
        .collect();
    println!(
        "tollgate dev: 3 nodes on {} (peers on {}; data in {}; console on http://{}/ui, metrics on /metrics)",
        endpoints.join(", "),
        peers.join(", "),
        args.data_dir.display(),
        args.metrics_listen
    );
    println!(
        "tollgate dev is INSECURE: no TLS and no credentials, on loopback only; \
         for a real cluster see `tollgate certs init` and `tollgate serve --help`"
    );
    if !args.no_demo {
        demo(&client).await?;
    }
    if !args.exit_after_demo {
        let cluster_flag = cluster_flag(args.port, &endpoints);
        println!(
            "serving; try `tollgate status{cluster_flag}` or \
             `tollgate usage{cluster_flag} --tenant acme`. Ctrl-C stops."
        );
        crate::start::shutdown_signal().await;
    }
    cluster.shutdown().await;
    Ok(())
}

/// One HTTP listener (`/metrics`, `/ui`) for the three nodes; the console reaches the
/// cluster through their client listeners (authentication is off in dev).
async fn spawn_http(cluster: &LocalCluster, addr: SocketAddr) -> anyhow::Result<()> {
    let first = cluster
        .ids()
        .first()
        .and_then(|id| cluster.node(*id).cloned());
    let node = first.context("the dev cluster has no node")?;
    let http = crate::http::HttpConfig {
        addr,
        tls: None,
        authenticator: node.authenticator(),
        endpoints: cluster.endpoints(),
    };
    crate::http::spawn(http).await?;
    Ok(())
}

/// The `--cluster` flag an operator command needs to reach this dev cluster: none on the
/// default ports (the commands' default), the nodes' addresses otherwise.
fn cluster_flag(port: u16, endpoints: &[String]) -> String {
    if port == DEV_PORT_DEFAULT {
        return String::new();
    }
    format!(" --cluster {}", endpoints.join(","))
}

/// Makes `dir` ready for the dev cluster. A directory is used (and, without `keep_data`,
/// wiped) only if `tollgate dev` created it (it holds `DEV_MARKER_FILE`) or it is empty:
/// `--data-dir` may name a path that holds a user's files, and those are never touched.
fn prepare_data_dir(dir: &Path, keep_data: bool) -> anyhow::Result<()> {
    let marker = dir.join(DEV_MARKER_FILE);
    if dir.exists() && !marker.is_file() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        anyhow::ensure!(
            empty,
            "{} holds files that `tollgate dev` did not create; choose another --data-dir",
            dir.display()
        );
    }
    if dir.exists() && !keep_data {
        std::fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&marker, DEV_MARKER_TEXT)
        .with_context(|| format!("writing {}", marker.display()))
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
        thresholds: None,
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
        repeat_window_ms: 600_000,
        velocity_factor: 10,
        velocity_window_ms: 60_000,
        velocity_dimension: Cost.into(),
        velocity_floor: 10_000_000,
        trip_cooldown_ms: 0,
        quotas: None,
        shape_floor: tollgate_ledger::SHAPE_FLOOR_DEFAULT,
        leases: false,
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
    // Workers may then report usage (model and tokens) and let the cluster price it.
    for price in crate::cli::default_prices() {
        client.put_price("acme", price).await?;
    }
    Ok(())
}

/// Three stories: normal calls, a loop cut off by repetition detection, an expensive agent cut
/// off by its budget; then the kill switch, and the audit trail verified.
async fn demo(client: &Client) -> anyhow::Result<()> {
    normal_calls(client).await?;
    loop_tripped(client).await?;
    budget_exhausted(client).await?;
    kill_switch(client).await?;
    audit_verified(client).await?;
    println!("\ndemo done.");
    Ok(())
}

async fn normal_calls(client: &Client) -> anyhow::Result<()> {
    println!(
        "\n1. support-bot makes three LLM calls, each reserved then committed with the usage \
         the model reported (priced by acme's price table):"
    );
    for i in 1..=3u64 {
        let reservation = client
            .reserve(
                ReserveRequest::new("acme", "support-bot", "llm:gpt-4o")
                    .tokens(2_000)
                    .cost_micros(30_000),
            )
            .await?;
        let applied = reservation.applied().map_or(0, |a| a.log_index);
        let used = Usage::new("gpt-4o-2024-08-06", 1_200 + i * 100, 300);
        let committed = reservation.commit_usage(used).await?;
        println!(
            "   call {i}: granted at log index {applied}, committed {} micro-USD",
            committed.cost_micros
        );
    }
    Ok(())
}

async fn loop_tripped(client: &Client) -> anyhow::Result<()> {
    println!("\n2. research-bot loops: the same search with the same arguments, over and over:");
    let request =
        ReserveRequest::new("acme", "research-bot", "search").fingerprint("search:q=latest+news");
    let (calls, refusal) = call_until_refused(client, request, Amounts::new(0, 1_000, 1)).await?;
    println!("   call {} refused: {refusal}", calls + 1);
    Ok(())
}

async fn budget_exhausted(client: &Client) -> anyhow::Result<()> {
    println!("\n3. batch-bot calls an expensive model ($0.30 a call) on a $1/day allowance:");
    let request = ReserveRequest::new("acme", "batch-bot", "llm:gpt-x")
        .tokens(1_000)
        .cost_micros(300_000);
    let (granted, refusal) =
        call_until_refused(client, request, Amounts::new(1_000, 300_000, 1)).await?;
    println!("   {granted} calls granted, then: {refusal}");
    Ok(())
}

/// Reserves `request` and commits `actual`, again and again, until the cluster refuses:
/// returns the calls granted and the refusal. A runaway that is never cut off is an error.
async fn call_until_refused(
    client: &Client,
    request: ReserveRequest,
    actual: Amounts,
) -> anyhow::Result<(u32, Error)> {
    for granted in 0..DEMO_RUNAWAY_CALLS_MAX {
        match client.reserve(request.clone()).await {
            Ok(reservation) => reservation.commit(actual).await?,
            Err(refusal) => return Ok((granted, refusal)),
        };
    }
    anyhow::bail!("the runaway was never cut off in {DEMO_RUNAWAY_CALLS_MAX} calls")
}

async fn kill_switch(client: &Client) -> anyhow::Result<()> {
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
    Ok(())
}

async fn audit_verified(client: &Client) -> anyhow::Result<()> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_holding_a_users_files_is_never_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let user_file = dir.path().join("notes.txt");
        std::fs::write(&user_file, "mine").unwrap();
        for keep_data in [false, true] {
            let refused = prepare_data_dir(dir.path(), keep_data).unwrap_err();
            assert!(refused.to_string().contains("did not create"), "{refused}");
            assert_eq!(std::fs::read_to_string(&user_file).unwrap(), "mine");
        }
    }

    #[test]
    fn a_directory_dev_created_is_wiped_unless_kept() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("dev");
        prepare_data_dir(&dir, false).unwrap();
        let node_file = dir.join("node-1");
        std::fs::write(&node_file, "state").unwrap();

        prepare_data_dir(&dir, true).unwrap();
        assert!(node_file.exists(), "--keep-data keeps the previous run");
        prepare_data_dir(&dir, false).unwrap();
        assert!(!node_file.exists(), "a fresh start wipes what dev created");
        assert!(dir.join(DEV_MARKER_FILE).is_file());
    }

    #[test]
    fn an_empty_directory_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        prepare_data_dir(dir.path(), false).unwrap();
        assert!(dir.path().join(DEV_MARKER_FILE).is_file());
    }
}
