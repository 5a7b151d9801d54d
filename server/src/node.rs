//! What a node is: its configuration (`NodeConfig`) and the handle its services share
//! (`Node`). Starting one is `start.rs`; this module depends on no service, so the services
//! depend on it and never the other way round.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use crate::alerts::AlertWebhook;
use crate::auth::{Auth, KeyIndex};
use crate::clock::Clock;
use crate::raft::network::Partition;
use crate::raft::proposer::Proposer;
use crate::raft::state_machine::{read_applied, SharedApplied};
use crate::raft::{Member, NodeId, Raft};
use crate::tls::NodeTls;

/// Longest time between two ticks while the ledger holds live leases, whatever
/// `tick_interval` says: an unsettled lease is reclaimed (its slice charged, its freeze
/// answered) within this of its expiry. Leases last seconds, so a second-long tick would
/// be a large share of their life.
pub const LEASE_TICK_INTERVAL: Duration = Duration::from_millis(250);

/// How a node runs; built from flags, environment and a TOML file by `config`.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where the client gRPC server listens (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Where the peer listener (the `tollgate.v1.Raft` service, nothing else) listens.
    pub peer_listen: SocketAddr,
    /// The address clients reach this node at; defaults to this node's entry in `peers`,
    /// else the bound address.
    pub advertise: Option<String>,
    /// The address peers reach the peer listener at; defaults like `advertise`.
    pub peer_advertise: Option<String>,
    /// The initial voters, this node included, by id. Only used to bootstrap a new cluster.
    pub peers: BTreeMap<NodeId, Member>,
    /// Mutual TLS between nodes and TLS to clients; `None` is insecure mode (clear text).
    pub tls: Option<NodeTls>,
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
    /// Where the leader sends soft-threshold alerts; None: they are only audited.
    pub alerts: Option<AlertWebhook>,
    /// Where this node archives the audit trail continuously (`crate::archive`); None: no
    /// archiving but `tollgate audit archive`.
    pub audit_archive_dir: Option<PathBuf>,
    /// Retention of the audit trail on disk and the exactly-once horizon (`crate::trail`);
    /// its `dir` is always `<data_dir>/trail`.
    pub trail: tollgate_store::StoreConfig,
}

impl NodeConfig {
    /// A node with production defaults and its peer listener on a free port of the client
    /// listener's interface; callers set what differs.
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            id,
            listen,
            peer_listen: SocketAddr::new(listen.ip(), 0),
            advertise: None,
            peer_advertise: None,
            peers: BTreeMap::new(),
            tls: None,
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
            alerts: None,
            audit_archive_dir: None,
            trail: tollgate_store::StoreConfig::default(),
        }
    }
}

/// What the gRPC services share.
pub struct Node {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub applied: SharedApplied,
    /// The audit trail and the remembered answers on disk.
    pub trail: crate::trail::Trail,
    pub proposer: Proposer,
    pub auth: Auth,
    /// The live API keys, kept by the state machine; read by the authenticator.
    pub keys: Arc<KeyIndex>,
    /// How this node dials another node's listeners (TLS with its node certificate), `None`
    /// in insecure mode: the leader checks that a learner answers before adding it.
    pub dialer: Option<tonic::transport::ClientTlsConfig>,
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

    /// The authentication of this node's client services, for the HTTP listener's routes.
    pub fn authenticator(&self) -> crate::auth::Authenticator {
        crate::auth::Authenticator {
            auth: self.auth.clone(),
            keys: self.keys.clone(),
        }
    }

    /// Live leases in the applied ledger, over every tenant (a counter: one read).
    pub fn leases_live(&self) -> u64 {
        read_applied(&self.applied).ledger.stats().leases
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }
}
