//! Starting a node: opens its storage, starts openraft, the proposer, the tick and the gRPC
//! server, and bootstraps the cluster the first time; then stopping it. Nothing here decides
//! about spend.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_ledger::Command;

use crate::grpc;
use crate::node::{Node, NodeConfig, LEASE_TICK_INTERVAL};
use crate::raft::log_store::{check_data_format, LogStore};
use crate::raft::network::{NetworkFactory, RAFT_MESSAGE_BYTES_MAX};
use crate::raft::proposer::Proposer;
use crate::raft::state_machine::StateMachine;
use crate::raft::{Member, NodeId, Raft};
use crate::tls::NodeTls;

/// Largest snapshot chunk sent to a peer: a quarter of `RAFT_MESSAGE_BYTES_MAX`, leaving
/// room for the chunk's metadata and encoding.
const SNAPSHOT_CHUNK_BYTES: u64 = (RAFT_MESSAGE_BYTES_MAX / 4) as u64;

/// A started node; dropping it does not stop it, `shutdown` does.
pub struct RunningNode {
    pub node: Arc<Node>,
    addr: SocketAddr,
    peer_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The node's log and state machine, from its data directory (made if new).
async fn open_storage(config: &NodeConfig) -> anyhow::Result<(LogStore, StateMachine)> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    check_data_format(&config.data_dir)?;
    let log_store = LogStore::open(&config.data_dir.join("raft-log"))?;
    // Restoring a large snapshot and opening the trail take seconds: off the async runtime,
    // which other nodes of a local cluster share.
    let dir = config.data_dir.clone();
    let mut trail_config = config.trail.clone();
    trail_config.dir = dir.join("trail");
    let state_machine = tokio::task::spawn_blocking(move || {
        let trail = crate::trail::Trail::open(trail_config)
            .with_context(|| format!("opening the audit trail in {}", dir.display()))?;
        StateMachine::open(&dir, trail)
    })
    .await
    .context("opening the state machine")??;
    Ok((log_store, state_machine))
}

/// The Raft core over the node's storage, dialing peers with the node's TLS.
async fn start_raft(
    config: &NodeConfig,
    log_store: LogStore,
    state_machine: StateMachine,
) -> anyhow::Result<Raft> {
    let network = NetworkFactory {
        from: config.id,
        partition: config.partition.clone(),
        tls: config.tls.as_ref().map(NodeTls::dialer),
    };
    Raft::new(
        config.id,
        Arc::new(raft_config(config)?),
        network,
        log_store,
        state_machine,
    )
    .await
    .context("starting raft")
}

impl RunningNode {
    pub async fn start(config: NodeConfig) -> anyhow::Result<Self> {
        let (log_store, state_machine) = open_storage(&config).await?;
        let applied = state_machine.shared();
        let keys = state_machine.keys();
        let trail = state_machine.trail().clone();

        let tls = config.tls.as_ref();
        let client_server = crate::grpc::server(tls.map(NodeTls::client_server))
            .context("TLS of the client listener")?;
        let peer_server = crate::grpc::server(tls.map(NodeTls::peer_server))
            .context("TLS of the peer listener")?;
        let (listener, peer_listener) = bind(&config).await?;
        let (addr, peer_addr) = (listener.local_addr()?, peer_listener.local_addr()?);
        let member = own_member(&config, addr, peer_addr);

        let raft = start_raft(&config, log_store, state_machine).await?;
        let initialised = stored_cluster_or_stop(&raft, &config.peers).await?;

        let proposer = Proposer::start(
            raft.clone(),
            config.clock.clone(),
            applied.clone(),
            trail.clone(),
        );
        let node = Arc::new(Node {
            id: config.id,
            addr: member.addr.clone(),
            raft: raft.clone(),
            applied,
            trail,
            proposer,
            auth: config.auth.clone(),
            keys,
            dialer: tls.map(NodeTls::dialer),
        });

        let (stop, stopped) = watch::channel(false);
        let clients = grpc::serve_clients(node.clone(), listener, client_server, stopped.clone());
        let peers = grpc::serve_peers(
            node.clone(),
            peer_listener,
            peer_server,
            tls.is_some(),
            stopped.clone(),
        );
        let mut tasks = vec![tokio::spawn(clients), tokio::spawn(peers)];
        if let Some(webhook) = config.alerts.clone() {
            let alerts = crate::alerts::deliver(node.clone(), webhook, stopped.clone());
            tasks.push(tokio::spawn(alerts));
        }
        if let Some(dir) = config.audit_archive_dir.clone() {
            node.trail.purge_after_archive();
            let archive = crate::archive::archive_continuously(node.clone(), dir, stopped.clone());
            tasks.push(tokio::spawn(archive));
        }
        let purge = crate::trail::purge_continuously(node.clone(), stopped.clone());
        tasks.push(tokio::spawn(purge));
        let copy = crate::trail::copy::copy_continuously(node.clone(), stopped.clone());
        tasks.push(tokio::spawn(copy));
        tasks.push(tokio::spawn(tick(
            node.clone(),
            config.tick_interval,
            stopped,
        )));
        let mut running = Self {
            node,
            addr,
            peer_addr,
            stop,
            tasks,
        };
        if !initialised {
            running.bootstrap(&config, member);
        }
        tracing::info!(node = config.id, %addr, %peer_addr, tls = tls.is_some(), "node started");
        Ok(running)
    }

    /// Initialises a new cluster: only the lowest id among the peers does it, and only on
    /// empty storage (the caller checked). A node started without peers is joining an
    /// existing cluster (add-learner): it never founds a cluster of its own.
    fn bootstrap(&mut self, config: &NodeConfig, own: Member) {
        let lowest = config.peers.keys().next().copied();
        if lowest != Some(config.id) {
            return;
        }
        let mut members = config.peers.clone();
        members.insert(config.id, own);
        let node = self.node.clone();
        self.tasks.push(tokio::spawn(initialise(node, members)));
    }

    /// The client listener's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer listener's bound address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
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

/// `stored_cluster_check`, stopping Raft when the check fails: the data directory must be
/// free for the next start.
async fn stored_cluster_or_stop(
    raft: &Raft,
    peers: &BTreeMap<NodeId, Member>,
) -> anyhow::Result<bool> {
    let checked = stored_cluster_check(raft, peers).await;
    if checked.is_err() {
        if let Err(error) = raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown after a refused start");
        }
    }
    checked
}

/// Whether the storage already holds a cluster; if it does, `--peers` (when given) must
/// agree with the membership stored. A node with data never initialises again, whatever its
/// flags say: its membership is the one in its log, changed only by membership commands.
async fn stored_cluster_check(
    raft: &Raft,
    peers: &BTreeMap<NodeId, Member>,
) -> anyhow::Result<bool> {
    if !raft.is_initialized().await? {
        return Ok(false);
    }
    let stored = raft
        .with_raft_state(|state| state.membership_state.effective().membership().clone())
        .await?;
    let stored: BTreeMap<NodeId, Member> = stored
        .nodes()
        .map(|(id, member)| (*id, member.clone()))
        .collect();
    if let Some(mismatch) = peers_mismatch(peers, &stored) {
        anyhow::bail!(
            "--peers do not match the membership stored in this node's data: {mismatch}; \
             --peers {} but stored {}. Fix --peers (or start without --peers: a node with \
             data rejoins its cluster from what it stored)",
            members_text(peers),
            members_text(&stored)
        );
    }
    Ok(true)
}

/// Why `peers` cannot describe the cluster `stored`, if they cannot: a node both name at
/// different addresses, or no node in common (the data of another cluster). Nodes in only
/// one of them are fine: the cluster grew or shrank since it was founded with `peers`.
fn peers_mismatch(
    peers: &BTreeMap<NodeId, Member>,
    stored: &BTreeMap<NodeId, Member>,
) -> Option<String> {
    if peers.is_empty() {
        return None;
    }
    for (id, member) in peers {
        if let Some(kept) = stored.get(id) {
            if kept != member {
                return Some(format!(
                    "node {id} is {member} in --peers but {kept} in the stored membership"
                ));
            }
        }
    }
    if !peers.keys().any(|id| stored.contains_key(id)) {
        return Some("they name none of the stored members".to_owned());
    }
    None
}

/// `1=client/peer,2=client/peer`, the form of `--peers`.
fn members_text(members: &BTreeMap<NodeId, Member>) -> String {
    let entries: Vec<String> = members
        .iter()
        .map(|(id, member)| format!("{id}={member}"))
        .collect();
    entries.join(",")
}

/// Binds the client and the peer listener.
async fn bind(config: &NodeConfig) -> anyhow::Result<(TcpListener, TcpListener)> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the client listener {}", config.listen))?;
    let peer_listener = TcpListener::bind(config.peer_listen)
        .await
        .with_context(|| format!("binding the peer listener {}", config.peer_listen))?;
    Ok((listener, peer_listener))
}

/// This node as the membership records it: the advertised addresses, else its own entry in
/// `--peers`, else the bound addresses.
fn own_member(config: &NodeConfig, addr: SocketAddr, peer_addr: SocketAddr) -> Member {
    let listed = config.peers.get(&config.id);
    let addr = config
        .advertise
        .clone()
        .or_else(|| listed.map(|m| m.addr.clone()))
        .unwrap_or_else(|| addr.to_string());
    let peer_addr = config
        .peer_advertise
        .clone()
        .or_else(|| listed.map(|m| m.peer_addr.clone()))
        .unwrap_or_else(|| peer_addr.to_string());
    Member { addr, peer_addr }
}

/// openraft's settings for a node: its timers from `config`, and snapshot transfer sized for
/// a ledger of a million agents.
fn raft_config(config: &NodeConfig) -> anyhow::Result<openraft::Config> {
    openraft::Config {
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
        // openraft 0.9 gives one AppendEntries `heartbeat_interval` (100 ms) to be
        // serialized, sent, fsynced and answered, and sends the same range again when it
        // times out: at its default of 300 entries of up to BATCH_COMMANDS_MAX commands
        // (~14 MB) a follower that fell behind under load never catches up. Eight entries
        // (~400 KB) fit the interval on a loaded debug build.
        max_payload_entries: 8,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")
}

/// How long the founding node waits for the other initial voters to listen before it
/// starts the first election anyway (a majority suffices; the rest catch up when they come).
const PEERS_LISTEN_WAIT: Duration = Duration::from_secs(10);
/// How often it looks, and how long one look may take.
const PEERS_LISTEN_POLL: Duration = Duration::from_millis(100);

/// Starts the cluster once every other initial voter accepts connections (or
/// `PEERS_LISTEN_WAIT` has passed): the nodes of a new cluster start in any order, and a vote
/// request to a node that is not up yet is an error in openraft's log, not a state worth
/// reporting on a healthy start.
async fn initialise(node: Arc<Node>, members: BTreeMap<NodeId, Member>) {
    let started = tokio::time::Instant::now();
    let others: Vec<String> = members
        .iter()
        .filter(|(id, _)| **id != node.id)
        .map(|(_, member)| member.peer_addr.clone())
        .collect();
    while started.elapsed() < PEERS_LISTEN_WAIT && !all_listen(&others).await {
        tokio::time::sleep(PEERS_LISTEN_POLL).await;
    }
    match node.raft.initialize(members).await {
        Ok(()) => tracing::info!(node = node.id, "cluster initialised"),
        // Another start of this node got there first (its log is not empty): fine.
        Err(error) => tracing::info!(node = node.id, %error, "not initialising"),
    }
}

async fn all_listen(addresses: &[String]) -> bool {
    for address in addresses {
        let connect = tokio::net::TcpStream::connect(address.as_str());
        if !matches!(
            tokio::time::timeout(PEERS_LISTEN_POLL, connect).await,
            Ok(Ok(_))
        ) {
            return false;
        }
    }
    true
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The leader's heartbeat in the log: drives expiry and window resets when no one calls.
/// Every `interval`, and at least every [`LEASE_TICK_INTERVAL`] while the ledger holds live
/// leases, so that an unsettled one is reclaimed soon after its expiry; never faster
/// without leases. Whether there are any is looked at every `LEASE_TICK_INTERVAL` (a read
/// of the applied state, no proposal).
async fn tick(node: Arc<Node>, interval: Duration, mut stopped: watch::Receiver<bool>) {
    let mut last = tokio::time::Instant::now();
    loop {
        let regular = last + interval;
        let look = (tokio::time::Instant::now() + LEASE_TICK_INTERVAL).min(regular);
        tokio::select! {
            _ = tokio::time::sleep_until(look) => {}
            _ = stopped.changed() => return,
        }
        let now = tokio::time::Instant::now();
        if !node.is_leader() {
            last = now;
            continue;
        }
        let due = now >= regular || (now >= last + LEASE_TICK_INTERVAL && node.leases_live() > 0);
        if !due {
            continue;
        }
        last = now;
        if let Err(error) = node.proposer.propose(Command::Tick).await {
            tracing::debug!(node = node.id, %error, "tick not applied");
        }
    }
}

/// `tollgate serve`: one node until SIGINT or SIGTERM, with its Prometheus endpoint.
pub async fn serve_until_signal(config: crate::config::ServeConfig) -> anyhow::Result<()> {
    if let Some(warning) = config.insecure_warning() {
        tracing::warn!("{warning}");
    }
    if !config.node.auth.enabled() {
        tracing::warn!(
            "--insecure: authentication is OFF, every caller is an admin (fine for dev, never for production)"
        );
    }
    let tls = config.node.tls.clone();
    let running = RunningNode::start(config.node).await?;
    crate::metrics::spawn_raft_gauges(running.node.clone());
    if let Some(addr) = config.metrics_listen {
        // After the start: the console authenticates with the node's keys and dials its
        // client listener. A taken port still fails the start.
        let http = crate::http::HttpConfig {
            addr,
            tls,
            authenticator: running.node.authenticator(),
            endpoints: vec![running.node.addr.clone()],
        };
        if let Err(error) = crate::http::spawn(http).await {
            running.shutdown().await;
            return Err(error);
        }
        // Only with a listener: a pass over the ledger that no one would scrape is not
        // worth its CPU.
        crate::metrics::tenants::spawn_tenant_gauges(
            running.node.clone(),
            config.metrics_tenants_max,
        );
    }
    let failure = crate::raft::failure::raft_failure(running.node.raft.metrics());
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("stopping");
            running.shutdown().await;
            Ok(())
        }
        Some(fatal) = failure => {
            // A stopped core never applies another entry: exiting non-zero lets the
            // supervisor restart the node, which then catches up from its log and peers.
            tracing::error!(node = running.node.id, %fatal, "raft core failed: exiting");
            running.shutdown().await;
            Err(anyhow::anyhow!("raft core failed (storage or a bug): {fatal}"))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn members(entries: &[(NodeId, &str)]) -> BTreeMap<NodeId, Member> {
        entries
            .iter()
            .map(|(id, host)| {
                (
                    *id,
                    Member::new(format!("{host}:7001"), format!("{host}:7101")),
                )
            })
            .collect()
    }

    #[test]
    fn peers_must_agree_with_the_stored_membership() {
        let stored = members(&[(1, "a"), (2, "b"), (3, "c")]);
        let agree = [
            members(&[]),
            members(&[(1, "a"), (2, "b"), (3, "c")]),
            members(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]),
            members(&[(1, "a"), (2, "b")]),
        ];
        for peers in agree {
            assert_eq!(peers_mismatch(&peers, &stored), None, "{peers:?}");
        }
        let moved = members(&[(1, "a"), (2, "x"), (3, "c")]);
        let why = peers_mismatch(&moved, &stored).expect("node 2 moved");
        assert_eq!(
            why,
            "node 2 is x:7001/x:7101 in --peers but b:7001/b:7101 in the stored membership"
        );
        let other = members(&[(7, "a"), (8, "b")]);
        let why = peers_mismatch(&other, &stored).expect("another cluster's data");
        assert!(why.contains("none of the stored members"), "{why}");
    }
}
