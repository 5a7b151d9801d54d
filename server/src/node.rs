//! One Tollgate node: opens its storage, starts openraft, the proposer, the tick and the gRPC
//! server, and bootstraps the cluster the first time. Nothing here decides about spend.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::Auth;
use crate::clock::Clock;
use crate::raft::log_store::LogStore;
use crate::raft::network::{NetworkFactory, Partition, RAFT_MESSAGE_BYTES_MAX};
use crate::raft::proposer::Proposer;
use crate::raft::state_machine::{SharedApplied, StateMachine};
use crate::raft::{NodeId, Raft};
use tollgate_ledger::Command;

/// How a node runs; built from flags, environment and a TOML file by `config`.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where the gRPC server listens (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The address other nodes and clients reach this node at; defaults to the bound address.
    pub advertise: Option<String>,
    /// The initial voters, this node included, by id. Only used to bootstrap a new cluster.
    pub peers: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    pub auth: Auth,
    pub clock: Clock,
    /// How often the leader proposes a tick, which drives expiry and window resets.
    pub tick_interval: Duration,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and compact the log) after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Raft messages to or from the nodes in this set are dropped (tests and simulator only).
    pub partition: Partition,
    /// Entries kept in the log behind a snapshot, so that a briefly lagging follower catches
    /// up from the log rather than by a whole snapshot.
    pub log_entries_kept_after_snapshot: u64,
}

impl NodeConfig {
    /// A node with production defaults; callers set what differs.
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            id,
            listen,
            advertise: None,
            peers: BTreeMap::new(),
            data_dir,
            auth: Auth::default(),
            clock: Clock::system(),
            tick_interval: Duration::from_millis(1_000),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            snapshot_after_entries: 50_000,
            log_entries_kept_after_snapshot: 1_000,
            partition: Partition::default(),
        }
    }
}

/// What the gRPC services share.
pub struct Node {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub applied: SharedApplied,
    pub proposer: Proposer,
    pub auth: Auth,
}

impl Node {
    /// The leader's address, if this node knows who leads.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone())
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }
}

/// Largest snapshot chunk sent to a peer: a quarter of `RAFT_MESSAGE_BYTES_MAX`, leaving
/// room for the chunk's metadata and encoding.
const SNAPSHOT_CHUNK_BYTES: u64 = (RAFT_MESSAGE_BYTES_MAX / 4) as u64;

/// A started node; dropping it does not stop it, `shutdown` does.
pub struct RunningNode {
    pub node: Arc<Node>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    pub async fn start(config: NodeConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let log_store = LogStore::open(&config.data_dir.join("raft-log"))?;
        // Restoring a large snapshot takes seconds of CPU: off the async runtime, which other
        // nodes of a local cluster share.
        let dir = config.data_dir.clone();
        let state_machine = tokio::task::spawn_blocking(move || StateMachine::open(&dir))
            .await
            .context("opening the state machine")??;
        let applied = state_machine.shared();

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());

        let raft_config = openraft::Config {
            cluster_name: "tollgate".into(),
            heartbeat_interval: millis(config.heartbeat_interval),
            election_timeout_min: millis(config.election_timeout_min),
            election_timeout_max: millis(config.election_timeout_max),
            // A snapshot of a million agents is ~300 MB: chunks of a quarter of the largest
            // Raft message (not openraft's 3 MiB) make tens of round trips instead of a
            // hundred, and a chunk still decodes in tens of ms. The last chunk waits for the
            // install (decode, checks, fsync): seconds on a loaded machine, far longer than
            // the 200 ms default; a timeout makes the leader start the whole transfer again,
            // so the margin is wide.
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            install_snapshot_timeout: 30_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: config.log_entries_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .context("raft configuration")?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            NetworkFactory {
                from: config.id,
                partition: config.partition.clone(),
            },
            log_store,
            state_machine,
        )
        .await
        .context("starting raft")?;

        let proposer = Proposer::start(raft.clone(), config.clock.clone());
        let node = Arc::new(Node {
            id: config.id,
            addr: advertise.clone(),
            raft: raft.clone(),
            applied,
            proposer,
            auth: config.auth.clone(),
        });

        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(crate::grpc::serve(node.clone(), listener, stopped.clone()));
        let ticker = tokio::spawn(tick(node.clone(), config.tick_interval, stopped));
        let running = Self {
            node,
            addr,
            stop,
            tasks: vec![server, ticker],
        };
        running.bootstrap(&config, advertise).await?;
        tracing::info!(node = config.id, %addr, "node started");
        Ok(running)
    }

    /// Initialises a new cluster, once: only the lowest id among the peers does it, only if its
    /// own storage holds no cluster yet. A restarted node never re-initialises.
    async fn bootstrap(&self, config: &NodeConfig, advertise: String) -> anyhow::Result<()> {
        // A node started without peers is joining an existing cluster (add-learner): it must
        // never found a cluster of its own.
        let lowest = config.peers.keys().next().copied();
        if lowest != Some(config.id) || self.node.raft.is_initialized().await? {
            return Ok(());
        }
        let mut members: BTreeMap<NodeId, BasicNode> = config
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        members.insert(config.id, BasicNode::new(advertise));
        match self.node.raft.initialize(members).await {
            Ok(()) => tracing::info!(node = config.id, "cluster initialised"),
            // Another start of this node got there first (its log is not empty): fine.
            Err(error) => tracing::info!(node = config.id, %error, "not initialising"),
        }
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and stops Raft; the data directory can be opened again afterwards.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.node.raft.shutdown().await {
            tracing::warn!(node = self.node.id, %error, "raft shutdown");
        }
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The leader's heartbeat in the log: drives expiry and window resets when no one calls.
async fn tick(node: Arc<Node>, interval: Duration, mut stopped: watch::Receiver<bool>) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            _ = stopped.changed() => return,
        }
        if node.is_leader() {
            if let Err(error) = node.proposer.propose(Command::Tick).await {
                tracing::debug!(node = node.id, %error, "tick not applied");
            }
        }
    }
}

/// `tollgate serve`: one node until SIGINT or SIGTERM, with its Prometheus endpoint.
pub async fn serve_until_signal(config: crate::config::ServeConfig) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_listen {
        crate::metrics::install_exporter(addr)?;
    }
    if !config.node.auth.enabled() {
        tracing::warn!(
            "no admin token configured: authentication is OFF (fine for dev, not for production)"
        );
    }
    let running = RunningNode::start(config.node).await?;
    crate::metrics::spawn_raft_gauges(running.node.clone());
    shutdown_signal().await;
    tracing::info!("stopping");
    running.shutdown().await;
    Ok(())
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
