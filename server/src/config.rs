//! A node's configuration from flags, environment variables and a TOML file, in that order of
//! precedence (clap reads flags and env; the file fills what both left unset).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::auth::Auth;
use crate::node::NodeConfig;
use crate::raft::NodeId;
use tollgate_ledger::TenantId;

/// Flags of `tollgate serve`; each also reads an environment variable.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// This node's id, unique in the cluster (1, 2, 3, ...).
    #[arg(long, env = "TOLLGATE_ID")]
    pub id: Option<NodeId>,
    /// Address to listen on for gRPC (clients and peers).
    #[arg(long, env = "TOLLGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address peers and clients reach this node at (default: the listen address).
    #[arg(long, env = "TOLLGATE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Initial voters, `ID=HOST:PORT` comma separated, this node included.
    #[arg(long, env = "TOLLGATE_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Where the Raft log and snapshots live.
    #[arg(long, env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the Prometheus metrics endpoint (`/metrics`).
    #[arg(long, env = "TOLLGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Admin token; setting it turns authentication on.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Tenant tokens, `TENANT=TOKEN` comma separated.
    #[arg(
        long,
        env = "TOLLGATE_TENANT_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub tenant_tokens: Vec<String>,
    /// A TOML file with the same settings (keys as the flags, with underscores).
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The TOML file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<NodeId>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    peers: Option<BTreeMap<String, String>>,
    data_dir: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    admin_token: Option<String>,
    tenant_tokens: Option<BTreeMap<String, String>>,
}

/// Settings beyond the node itself.
pub struct ServeConfig {
    pub node: NodeConfig,
    pub metrics_listen: Option<SocketAddr>,
}

fn parse_pairs(pairs: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("{what} entry {pair:?} is not KEY=VALUE"))
        })
        .collect()
}

fn parse_peers(pairs: Vec<(String, String)>) -> anyhow::Result<BTreeMap<NodeId, String>> {
    pairs
        .into_iter()
        .map(|(id, addr)| {
            let id = id
                .parse::<NodeId>()
                .with_context(|| format!("peer id {id:?} is not a number"))?;
            Ok((id, addr))
        })
        .collect()
}

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let Some(id) = self.id.or(file.id) else {
            bail!("node id missing: --id, TOLLGATE_ID or `id` in the config file");
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7001)));
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(format!("tollgate-data-{id}")));
        let peers = if self.peers.is_empty() {
            parse_peers(file.peers.unwrap_or_default().into_iter().collect())?
        } else {
            parse_peers(parse_pairs(&self.peers, "--peers")?)?
        };
        let tenant_tokens = if self.tenant_tokens.is_empty() {
            file.tenant_tokens.unwrap_or_default().into_iter().collect()
        } else {
            parse_pairs(&self.tenant_tokens, "--tenant-tokens")?
        };
        let tenant_tokens: BTreeMap<TenantId, String> = tenant_tokens
            .into_iter()
            .map(|(tenant, token)| {
                let tenant =
                    TenantId::new(tenant).map_err(|e| anyhow::anyhow!("tenant token: {e}"))?;
                Ok((tenant, token))
            })
            .collect::<anyhow::Result<_>>()?;
        let auth = match self.admin_token.or(file.admin_token) {
            Some(token) if !token.is_empty() => Auth::new(&token, &tenant_tokens),
            _ if !tenant_tokens.is_empty() => {
                bail!("tenant tokens are set but no admin token: set an admin token to turn authentication on")
            }
            _ => Auth::default(),
        };
        let mut node = NodeConfig::new(id, listen, data_dir);
        node.advertise = self.advertise.or(file.advertise);
        node.peers = peers;
        node.auth = auth;
        Ok(ServeConfig {
            node,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
        })
    }
}
