//! Real nodes in one process, on loopback: the cluster of `tollgate dev`, of the integration
//! tests and of the simulator. One helper, so that every one of them builds clusters alike.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::auth::Auth;
use crate::clock::Clock;
use crate::node::{Node, NodeConfig};
use crate::raft::network::Partition;
use crate::raft::{Member, NodeId};
use crate::start::RunningNode;
use crate::tls::NodeTls;

/// Most nodes a local cluster runs: enough for five voters and a learner or two.
pub const LOCAL_NODES_MAX: u64 = 7;
/// How long `stop` waits for a stopped node's tasks to let its trail's store go.
const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// With a `base_port`, node N's peer listener is on `base_port + PEER_PORT_OFFSET + N - 1`
/// (7101.. beside the client ports 7001..).
pub const PEER_PORT_OFFSET: u16 = 100;

#[derive(Clone, Debug)]
pub struct LocalClusterOptions {
    pub nodes: u64,
    pub data_dir: PathBuf,
    /// Client port of node 1, the others following, and peer ports `PEER_PORT_OFFSET`
    /// above; None picks free ports.
    pub base_port: Option<u16>,
    /// TLS of each node by id (nodes added later included); nodes without an entry run in
    /// insecure mode, as all do by default.
    pub tls: BTreeMap<NodeId, NodeTls>,
    /// Short heartbeats and elections, for tests that kill leaders.
    pub fast_elections: bool,
    pub clock: Clock,
    pub snapshot_after_entries: u64,
    pub log_entries_kept_after_snapshot: u64,
    pub tick_interval: Duration,
    pub auth: Auth,
    /// Shared by the nodes: isolate one to cut it off from the others.
    pub partition: Partition,
    /// Every node's alert webhook.
    pub alerts: Option<crate::alerts::AlertWebhook>,
    /// Each node archives its audit trail into `<this>/node-<id>` (`--audit-archive-dir`).
    pub audit_archive_dir: Option<PathBuf>,
    /// Every node's trail retention and exactly-once horizon (the directory is each node's).
    pub trail: tollgate_store::StoreConfig,
}

impl LocalClusterOptions {
    pub fn new(nodes: u64, data_dir: PathBuf) -> Self {
        let defaults = NodeConfig::new(0, ([127, 0, 0, 1], 0).into(), PathBuf::new());
        Self {
            nodes,
            data_dir,
            base_port: None,
            tls: BTreeMap::new(),
            fast_elections: false,
            clock: Clock::system(),
            snapshot_after_entries: defaults.snapshot_after_entries,
            log_entries_kept_after_snapshot: defaults.log_entries_kept_after_snapshot,
            tick_interval: defaults.tick_interval,
            auth: Auth::default(),
            partition: Partition::default(),
            alerts: None,
            audit_archive_dir: None,
            trail: defaults.trail,
        }
    }
}

pub struct LocalCluster {
    options: LocalClusterOptions,
    configs: BTreeMap<NodeId, NodeConfig>,
    running: BTreeMap<NodeId, RunningNode>,
}

/// Ports handed to nodes: below Linux's ephemeral range (32768-60999), from which the OS
/// picks both `bind(0)` ports and the source ports of outgoing connections, so a client's
/// connection can never take a port between the moment it is chosen here and the node's bind.
const NODE_PORTS: std::ops::Range<u16> = 20_000..32_000;
/// The next candidate, process-wide, so two clusters of one process never pick the same port;
/// it starts at a place of the range drawn from the process id, so processes rarely meet.
static NODE_PORT_NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A loopback port free now, for a node to bind (see `NODE_PORTS`).
fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::Ordering;
    let span = u32::from(NODE_PORTS.end - NODE_PORTS.start);
    let _ = NODE_PORT_NEXT.compare_exchange(
        0,
        std::process::id().wrapping_mul(7_919) % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NODE_PORT_NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = NODE_PORTS.start + u16::try_from(offset).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {NODE_PORTS:?}")
}

fn port_for(options: &LocalClusterOptions, id: NodeId, offset: u16) -> anyhow::Result<u16> {
    match options.base_port {
        Some(base) => u16::try_from(id - 1)
            .ok()
            .and_then(|index| base.checked_add(index)?.checked_add(offset))
            .context("port out of range"),
        None => free_port(),
    }
}

/// Node `id`'s addresses on loopback.
fn member_for(options: &LocalClusterOptions, id: NodeId) -> anyhow::Result<Member> {
    Ok(Member::new(
        format!("127.0.0.1:{}", port_for(options, id, 0)?),
        format!("127.0.0.1:{}", port_for(options, id, PEER_PORT_OFFSET)?),
    ))
}

impl LocalCluster {
    /// Starts `options.nodes` voters; node 1 initialises the cluster on first start.
    pub async fn start(options: LocalClusterOptions) -> anyhow::Result<Self> {
        if options.nodes == 0 || options.nodes > LOCAL_NODES_MAX {
            bail!(
                "a local cluster has 1 to {LOCAL_NODES_MAX} nodes, not {}",
                options.nodes
            );
        }
        let mut peers = BTreeMap::new();
        for id in 1..=options.nodes {
            peers.insert(id, member_for(&options, id)?);
        }
        let mut cluster = Self {
            options,
            configs: BTreeMap::new(),
            running: BTreeMap::new(),
        };
        for (id, member) in &peers {
            let mut config = cluster.config(*id, member)?;
            config.peers = peers.clone();
            cluster.configs.insert(*id, config);
        }
        for id in peers.keys() {
            cluster.restart(*id).await?;
        }
        Ok(cluster)
    }

    fn config(&self, id: NodeId, member: &Member) -> anyhow::Result<NodeConfig> {
        let listen: SocketAddr = member.addr.parse()?;
        let mut config =
            NodeConfig::new(id, listen, self.options.data_dir.join(format!("node-{id}")));
        config.peer_listen = member.peer_addr.parse()?;
        config.tls = self.options.tls.get(&id).cloned();
        config.clock = self.options.clock.clone();
        config.snapshot_after_entries = self.options.snapshot_after_entries;
        config.log_entries_kept_after_snapshot = self.options.log_entries_kept_after_snapshot;
        config.auth = self.options.auth.clone();
        config.partition = self.options.partition.clone();
        config.tick_interval = self.options.tick_interval;
        config.alerts = self.options.alerts.clone();
        config.trail = self.options.trail.clone();
        config.audit_archive_dir =
            (self.options.audit_archive_dir.as_ref()).map(|dir| dir.join(format!("node-{id}")));
        if self.options.fast_elections {
            config.heartbeat_interval = Duration::from_millis(50);
            config.election_timeout_min = Duration::from_millis(200);
            config.election_timeout_max = Duration::from_millis(400);
        }
        Ok(config)
    }

    /// Every node's address, in id order: the endpoints a client is given.
    pub fn endpoints(&self) -> Vec<String> {
        self.configs
            .values()
            .map(|c| c.listen.to_string())
            .collect()
    }

    pub fn addr(&self, id: NodeId) -> Option<String> {
        self.configs.get(&id).map(|c| c.listen.to_string())
    }

    /// Node `id`'s peer listener, `host:port`.
    pub fn peer_addr(&self, id: NodeId) -> Option<String> {
        self.configs.get(&id).map(|c| c.peer_listen.to_string())
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.configs.keys().copied().collect()
    }

    /// A node other than `id` (the lowest such id), e.g. a follower once `id` leads.
    pub fn other_than(&self, id: NodeId) -> Option<NodeId> {
        self.configs.keys().copied().find(|other| *other != id)
    }

    pub fn running_ids(&self) -> Vec<NodeId> {
        self.running.keys().copied().collect()
    }

    pub fn node(&self, id: NodeId) -> Option<&Arc<Node>> {
        self.running.get(&id).map(|running| &running.node)
    }

    /// Cuts the node off from every other node (it keeps running and serving clients).
    pub fn isolate(&self, id: NodeId) {
        self.options.partition.isolate(id);
    }

    pub fn heal(&self, id: NodeId) {
        self.options.partition.heal(id);
    }

    pub fn clock(&self) -> &Clock {
        &self.options.clock
    }

    /// Stops a node as a crash would, from the cluster's point of view: it stops answering.
    /// Its data stays, so `restart` brings it back with what it had acknowledged. Waits for
    /// its trail's store to close: the store locks its directory until its last handle
    /// drops, which the node's tasks do only once shutdown has aborted them.
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(running) = self.running.remove(&id) {
            let closed = running.node.trail.store().closed();
            running.shutdown().await;
            let waited =
                tokio::task::spawn_blocking(move || closed.wait(STORE_CLOSE_TIMEOUT)).await;
            if !matches!(waited, Ok(true)) {
                tracing::warn!(
                    node = id,
                    "the audit trail's store is still open {STORE_CLOSE_TIMEOUT:?} after stopping"
                );
            }
        }
    }

    /// Starts a stopped node (or a new one added with `add_node`) on its data directory.
    pub async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        if self.running.contains_key(&id) {
            return Ok(());
        }
        let config = self
            .configs
            .get(&id)
            .cloned()
            .with_context(|| format!("no node {id}"))?;
        let running = RunningNode::start(config).await?;
        self.running.insert(id, running);
        Ok(())
    }

    /// Starts a new, empty node that is not a member: join it with add-learner and promote
    /// it. Returns its addresses.
    pub async fn add_node(&mut self, id: NodeId) -> anyhow::Result<Member> {
        if self.configs.contains_key(&id) || id == 0 || id > LOCAL_NODES_MAX {
            bail!("node id {id} is taken or out of 1..={LOCAL_NODES_MAX}");
        }
        let member = member_for(&self.options, id)?;
        let config = self.config(id, &member)?;
        self.configs.insert(id, config);
        self.restart(id).await?;
        Ok(member)
    }

    /// The node that all running nodes agree leads, once they do.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<NodeId>> = self
                .running
                .values()
                .map(|r| r.node.raft.metrics().borrow().current_leader)
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                if self.running.contains_key(leader) && leaders.iter().all(|l| l == &Some(*leader))
                {
                    return Ok(*leader);
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no agreed leader within {timeout:?}: {leaders:?}");
            }
            // Polling raft metrics; an election has no event we could wait on across nodes.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(mut self) {
        for id in self.running_ids() {
            self.stop(id).await;
        }
    }
}
