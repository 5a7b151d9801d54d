//! A node's configuration from flags, environment variables and a TOML file, in that order of
//! precedence (clap reads flags and env; the file fills what both left unset).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::auth::Auth;
use crate::node::NodeConfig;
use crate::raft::NodeId;

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
    /// A file holding the bootstrap admin key (32 to 256 printable ASCII bytes; `tollgate
    /// key generate` makes one). The key itself may come from `TOLLGATE_ADMIN_KEY`, never
    /// from the command line.
    #[arg(long, env = "TOLLGATE_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Serve without a bootstrap admin key: authentication off, every caller an admin.
    /// For development only.
    #[arg(long, env = "TOLLGATE_INSECURE")]
    pub insecure: bool,
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
    admin_key_file: Option<PathBuf>,
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

/// Env var holding the bootstrap admin key itself (prefer a file: `TOLLGATE_ADMIN_KEY_FILE`).
pub const ADMIN_KEY_ENV: &str = "TOLLGATE_ADMIN_KEY";
/// Largest key file read: a key is at most 256 bytes, the rest is whitespace or a mistake.
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// Reads a key from `path`: its content without surrounding whitespace.
pub fn read_key_file(path: &Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading key file {}", path.display()))?
        .len();
    if len > KEY_FILE_BYTES_MAX {
        bail!(
            "key file {} is {len} bytes; a key file holds one key of at most 256 bytes",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// The credential half of a secure start: a bootstrap admin key from `key_file` or
/// `TOLLGATE_ADMIN_KEY` turns authentication on; without one, only `--insecure` starts.
fn resolve_auth(key_file: Option<PathBuf>, insecure: bool) -> anyhow::Result<Auth> {
    let key = match key_file {
        Some(path) => Some(read_key_file(&path)?),
        None => std::env::var(ADMIN_KEY_ENV)
            .ok()
            .filter(|key| !key.is_empty()),
    };
    match key {
        Some(key) => Auth::with_bootstrap_key(&key).map_err(|e| anyhow::anyhow!("{e}")),
        None if insecure => Ok(Auth::default()),
        None => bail!(
            "no bootstrap admin key: set --admin-key-file, TOLLGATE_ADMIN_KEY_FILE or \
             TOLLGATE_ADMIN_KEY (`tollgate key generate` makes one), or pass --insecure \
             to serve with authentication off"
        ),
    }
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
        let auth = resolve_auth(self.admin_key_file.or(file.admin_key_file), self.insecure)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(key_file: Option<PathBuf>, insecure: bool) -> ServeArgs {
        ServeArgs {
            id: Some(1),
            admin_key_file: key_file,
            insecure,
            ..ServeArgs::default()
        }
    }

    /// Serving needs a bootstrap admin key, or `--insecure` said out loud; a bad key file
    /// is refused with what is wrong, never with the key.
    #[test]
    fn serve_refuses_without_a_bootstrap_key_unless_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let error = args(None, false)
            .resolve()
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("--insecure"), "{error}");
        assert!(!args(None, true).resolve().unwrap().node.auth.enabled());

        let good = dir.path().join("admin.key");
        std::fs::write(&good, format!("{}\n", crate::auth::new_bootstrap_key())).unwrap();
        assert!(args(Some(good), false)
            .resolve()
            .unwrap()
            .node
            .auth
            .enabled());

        let short = dir.path().join("short.key");
        std::fs::write(&short, "hunter2").unwrap();
        let error = args(Some(short), true)
            .resolve()
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("32 to 256") && !error.contains("hunter2"),
            "{error}"
        );
        let missing = args(Some(dir.path().join("absent")), false).resolve();
        assert!(missing.is_err());
    }
}
